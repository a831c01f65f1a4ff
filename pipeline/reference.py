"""Stage `reference`: a high-accuracy PF-ODE solution per network (a trained one, schedule x seed, or
a pretrained entry) and guidance scale (rk45 at sample.reference's tolerances) from the same noise
as every solver's first `sample.solver_error_samples` samples, so `solver_error` measures a solver's
discretization error apart from the network's error. With ``sample.schedules`` it integrates the
log-SNR range the rows share (the PF-ODE's solution in EDM's variables does not depend on the
schedule).

Writes OUT/ (default references/NETWORK/seed_SEED): <stem>.npz per guidance scale (float `x`,
measured `nfe`; <stem> = the rk45 ``Row.stem`` under SCHEDULE).
"""

from _common import add_network_args, atomic_dir, load_network_cfg, parser, read_json, resolve_device, run


def main(args):
    cfg, net = load_network_cfg(args)
    s = cfg["sample"]
    meta = read_json(f"{args.data}/meta.json")
    n = min(s["solver_error_samples"], s["n_samples"])
    device = resolve_device(args.device)
    with atomic_dir(args.out or net.folder("references")) as out:
        if n == 0:
            (out / "SKIPPED").write_text("sample.solver_error_samples = 0\n")
            return
        from difflab.images import save_samples
        from difflab.networks import load_network
        from difflab.results import ADAPTIVE_STEPS
        from difflab.sampling import Conditioning, Draw, generate
        from difflab.sweep import reference_row, sampling_schedules

        D = load_network(args.model or net.folder("models"), device)
        shared = next(iter(sampling_schedules(cfg, D.schedule).values())).log_snr_range()
        schedule = D.schedule.with_log_snr_range(*shared)
        draw = Draw(n, tuple(meta["shape"]), s["seed"], s["batch_size"], device)
        for w in s["guidance_scales"]:
            cond = Conditioning.balanced(D, n, w)
            result = generate(D, schedule, "rk45", ADAPTIVE_STEPS, draw, cond=cond, options=s["reference"])
            stem = reference_row(net.model, D.schedule.name, w).stem
            save_samples(out / f"{stem}.npz", result, levels=meta["levels"], save_x=True)
            print(f"reference {net.model} seed {net.seed} w={w}: {n} samples, {result.nfe:.0f} NFE")


if __name__ == "__main__":
    p = parser(__doc__, data=True, device=True)
    add_network_args(p)
    p.add_argument("--out", default=None)
    run(main, p.parse_args(), imports=("torch", "difflab.sweep", "difflab.networks"), ranks=True)
