"""Stage `reference`: a high-accuracy PF-ODE solution per schedule (rk45 at sample.reference's
tolerances) from the same noise as every solver's first `sample.solver_error_samples` samples, so
`solver_error` measures a solver's discretization error apart from the network's error.

Writes OUT/ (default references/SCHEDULE): reference.npz (float `x`, measured `nfe`).
"""

from _common import (
    add_device,
    add_schedule_args,
    atomic_dir,
    check_schedule,
    load_cfg,
    parser,
    read_json,
    resolve_device,
    run,
)


def main(args):
    cfg = load_cfg(args)
    check_schedule(cfg, args.schedule)
    s = cfg["sample"]
    meta = read_json(f"{args.data}/meta.json")
    n = min(s["solver_error_samples"], s["n_samples"])
    device = resolve_device(args.device)
    with atomic_dir(args.out or f"references/{args.schedule}") as out:
        if n > 0:
            from difflab.sampling import conditioning, generate, save_samples
            from difflab.training import load_denoiser

            D = load_denoiser(args.model or f"models/{args.schedule}", device)
            result = generate(
                D,
                D.schedule,
                "rk45",
                0,
                n,
                tuple(meta["shape"]),
                grid=s["grid"],
                seed=s["seed"],
                batch_size=s["batch_size"],
                device=device,
                **conditioning(D, n, s["guidance_scale"]),
                options=dict(s["reference"]),
            )
            save_samples(out / "reference.npz", result, levels=meta["levels"], save_x=True)
            print(f"reference {args.schedule}: {n} samples, {result.nfe:.0f} NFE")
        else:
            (out / "SKIPPED").write_text("sample.solver_error_samples = 0\n")


if __name__ == "__main__":
    p = parser(__doc__)
    add_schedule_args(p)
    p.add_argument("--out", default=None)
    add_device(p)
    run(main, p.parse_args(), imports=("torch", "difflab.sampling", "difflab.training"), ranks=True)
