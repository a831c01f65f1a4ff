"""Stage `sample`: one schedule x one solver at every step count of sample.steps (rk45: once,
adaptive). Also the solver's mean distance to the schedule's high-accuracy reference from the same
noise (`solver_error`, deterministic solvers only).

Writes OUT/ (default samples/SCHEDULE/SOLVER): steps_<K>.npz per step count (uint8 levels, nfe,
seconds per sample), grid_<K>.png, rows.json (steps, nfe, seconds_per_sample, solver_error,
n_samples, file). rk45's row has steps = 0 (adaptive) and its measured NFE.
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
    write_json,
)


def main(args):
    cfg = load_cfg(args)
    check_schedule(cfg, args.schedule)
    if args.solver not in cfg["solvers"]:
        raise ValueError(f"--solver {args.solver!r} is not in params solvers {cfg['solvers']}")
    import numpy as np

    from difflab.metrics.solver_error import solver_error
    from difflab.sampling import conditioning, generate, load_samples, save_grid, save_samples
    from difflab.solvers import get_spec
    from difflab.training import load_denoiser

    s = cfg["sample"]
    spec = get_spec(args.solver)
    options = spec.check_options(s["options"][args.solver])
    meta = read_json(f"{args.data}/meta.json")
    device = resolve_device(args.device)
    D = load_denoiser(args.model or f"models/{args.schedule}", device)
    reference = None
    ref_path = f"{args.reference or f'samples/{args.schedule}/reference'}/reference.npz"
    if not spec.is_stochastic(options) and s["solver_error_samples"] > 0:
        reference = load_samples(ref_path)["x"]
    n = s["n_samples"]
    cond = conditioning(D, n, s["guidance_scale"])
    rows = []
    with atomic_dir(args.out or f"samples/{args.schedule}/{args.solver}") as out:
        for steps in [0] if spec.adaptive else s["steps"]:
            result = generate(
                D,
                D.schedule,
                args.solver,
                steps,
                n,
                tuple(meta["shape"]),
                grid=s["grid"],
                seed=s["seed"],
                batch_size=s["batch_size"],
                device=device,
                **cond,
                options=options,
            )
            name = f"steps_{steps:03d}"
            images = save_samples(out / f"{name}.npz", result, levels=meta["levels"])
            save_grid(out / f"grid_{steps:03d}.png", images[:64], 8, levels=meta["levels"], min_side=256)
            err = None
            if reference is not None:
                m = len(reference)
                err = solver_error(result.x[:m].numpy(), np.asarray(reference))
            rows.append(
                {
                    "steps": steps,
                    "nfe": float(result.nfe),
                    "seconds_per_sample": float(result.seconds_per_sample),
                    "solver_error": err,
                    "n_samples": n,
                    "file": f"{name}.npz",
                    "grid": f"grid_{steps:03d}.png",
                }
            )
            print(f"{args.schedule} {args.solver} steps={steps}: nfe={result.nfe:.0f} error={err}")
        write_json(out / "rows.json", rows)


if __name__ == "__main__":
    p = parser(__doc__)
    add_schedule_args(p)
    p.add_argument("--solver", required=True, help="one of the params' solvers")
    p.add_argument("--reference", default=None, help="reference folder (default: samples/SCHEDULE/reference)")
    p.add_argument("--out", default=None)
    add_device(p)
    run(main, p.parse_args())
