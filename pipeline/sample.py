"""Stage `sample`: one solver under every trained schedule, at every step count of sample.steps
(adaptive solvers once, steps = 0). Also the solver's mean distance to each schedule's high-accuracy
reference from the same noise (`solver_error`, deterministic solvers only).

One process per solver, not per schedule x solver: every stage pays torch's import and DVC's
start-up once, and a changed solver option still re-runs only that solver's stage.

Writes OUT/ (default samples/SOLVER): SCHEDULE/steps_<K>.npz per step count (uint8 levels, nfe,
seconds per sample), SCHEDULE/grid_<K>.png and SCHEDULE/rows.json (steps, nfe, seconds_per_sample,
solver_error, n_samples, file, grid).
"""

from _common import (
    add_device,
    atomic_dir,
    load_cfg,
    parser,
    read_json,
    resolve_device,
    run,
    write_json,
)


def main(args):
    cfg = load_cfg(args)
    if args.solver not in cfg["solvers"]:
        raise ValueError(f"--solver {args.solver!r} is not in params solvers {cfg['solvers']}")
    from difflab.solvers import get_spec

    spec = get_spec(args.solver)
    options = spec.check_options(cfg["sample"]["options"][args.solver])
    meta = read_json(f"{args.data}/meta.json")
    device = resolve_device(args.device)
    with atomic_dir(args.out or f"samples/{args.solver}") as out:
        for schedule in cfg["schedules"]:
            rows = _sample_schedule(args, cfg, spec, options, schedule, meta, device, out / schedule)
            write_json(out / schedule / "rows.json", rows)


def _sample_schedule(args, cfg, spec, options, schedule, meta, device, out) -> list[dict]:
    """Every step count of one trained schedule: samples, grids and the rows describing them."""
    import numpy as np

    from difflab.metrics.solver_error import solver_error
    from difflab.sampling import conditioning, generate, load_samples, save_grid, save_samples
    from difflab.training import load_denoiser

    s = cfg["sample"]
    D = load_denoiser(f"{args.models}/{schedule}", device)
    reference = None
    if not spec.is_stochastic(options) and s["solver_error_samples"] > 0:
        reference = np.asarray(load_samples(f"{args.references}/{schedule}/reference.npz")["x"])
    n = s["n_samples"]
    cond = conditioning(D, n, s["guidance_scale"])
    out.mkdir(parents=True)
    rows = []
    for steps in [0] if spec.adaptive else s["steps"]:
        result = generate(
            D,
            D.schedule,
            spec.name,
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
        err = None if reference is None else solver_error(result.x[: len(reference)].numpy(), reference)
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
        print(f"{schedule} {spec.name} steps={steps}: nfe={result.nfe:.0f} error={err}")
    return rows


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--solver", required=True, help="one of the params' solvers")
    p.add_argument("--models", default="models", help="the train stages' folder (default: %(default)s)")
    p.add_argument(
        "--references", default="references", help="the reference stages' folder (default: %(default)s)"
    )
    p.add_argument(
        "--data", default="data/prepared", help="the prepare stage's folder (default: %(default)s)"
    )
    p.add_argument("--out", default=None, help="output folder (default: samples/SOLVER)")
    add_device(p)
    run(main, p.parse_args(), imports=("torch", "difflab.sampling", "difflab.training"), ranks=True)
