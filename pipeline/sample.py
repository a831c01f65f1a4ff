"""Stage `sample`: one solver on one time grid, for every trained network (schedule x seed), every
sampling-time schedule (``sample.schedules``: the network reparametrized to it), every guidance scale
and every step count of ``sample.steps`` (adaptive solvers once, steps = 0). Also each row's mean
distance to the network's high-accuracy reference from the same noise (``solver_error``,
deterministic solvers only) and, for schedule-invariant solvers, ``invariance_error``: the largest
difference of the row's first ``sample.invariance_samples`` samples from those under every other
schedule (the other sampling schedules' rows; with one sampling schedule, redrawn under every schedule
of the config, over their common log-SNR range, at the first step count).

One process per solver x grid: a changed solver option or a new grid re-runs only its stages, and
every stage pays torch's import and DVC's start-up once.

Writes OUT/ (default samples/SOLVER/GRID): SCHEDULE/seed_SEED/<stem>.npz per row (uint8 levels,
requested labels when guided, nfe, seconds per sample; <stem> = sampling.row_stem), <stem>.png and
rows.json (schedule, seed, sample_schedule, grid, guidance_scale, steps, nfe, seconds_per_sample,
solver_error, invariance_error, n_samples, file, png).
"""

from _common import (
    add_device,
    atomic_dir,
    load_cfg,
    model_dir,
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
    args.grid = args.grid or cfg["sample"]["grids"][0]
    if args.grid not in cfg["sample"]["grids"]:
        raise ValueError(f"--grid {args.grid!r} is not in params sample.grids {cfg['sample']['grids']}")
    from difflab.solvers import get_spec

    spec = get_spec(args.solver)
    options = spec.check_options(cfg["sample"]["options"][args.solver])
    meta = read_json(f"{args.data}/meta.json")
    device = resolve_device(args.device)
    with atomic_dir(args.out or f"samples/{args.solver}/{args.grid}") as out:
        for schedule in cfg["schedules"]:
            for seed in cfg["seeds"]:
                folder = out / schedule / f"seed_{seed}"
                folder.mkdir(parents=True)
                rows = _sample_model(args, cfg, spec, options, schedule, seed, meta, device, folder)
                write_json(folder / "rows.json", rows)


def _sample_model(args, cfg, spec, options, schedule, seed, meta, device, out) -> list[dict]:
    """Every row of one trained network: samples, grids and the rows describing them."""
    import numpy as np

    from difflab.metrics.solver_error import solver_error
    from difflab.sampling import (
        conditioning,
        invariance_schedules,
        load_samples,
        row_stem,
        sampling_schedules,
        save_grid,
        save_samples,
    )
    from difflab.training import load_denoiser

    s = cfg["sample"]
    D = load_denoiser(model_dir(schedule, seed, args.models), device)
    targets = sampling_schedules(cfg, schedule)
    n_check = min(s["invariance_samples"], s["n_samples"]) if spec.schedule_invariant else 0
    redraw = invariance_schedules(cfg, schedule) if n_check and len(targets) < 2 else None
    rows = []
    for w in s["guidance_scales"]:
        cond = conditioning(D, s["n_samples"], w)
        reference = None
        if not spec.is_stochastic(options) and s["solver_error_samples"] > 0:
            path = f"{model_dir(schedule, seed, args.references)}/{row_stem(schedule, w, 0)}.npz"
            reference = np.asarray(load_samples(path)["x"])
        for steps in [0] if spec.adaptive else s["steps"]:
            firsts = {}
            for name, target in targets.items():
                result = _draw(args, cfg, spec, options, D, target, steps, s["n_samples"], meta, device, cond)
                stem = row_stem(name, w, steps)
                images = save_samples(out / f"{stem}.npz", result, levels=meta["levels"])
                save_grid(out / f"{stem}.png", images[:64], 8, levels=meta["levels"], min_side=256)
                err = (
                    None if reference is None else solver_error(result.x[: len(reference)].numpy(), reference)
                )
                firsts[name] = result.x[:n_check]
                rows.append(
                    {
                        "schedule": schedule,
                        "seed": seed,
                        "sample_schedule": name,
                        "grid": args.grid,
                        "guidance_scale": w,
                        "steps": steps,
                        "nfe": float(result.nfe),
                        "seconds_per_sample": float(result.seconds_per_sample),
                        "solver_error": err,
                        "invariance_error": None,
                        "n_samples": s["n_samples"],
                        "file": f"{stem}.npz",
                        "png": f"{stem}.png",
                    }
                )
                print(
                    f"{schedule} seed {seed} -> {name} {spec.name} {args.grid} w={w} steps={steps}: "
                    f"nfe={result.nfe:.0f} error={err}"
                )
            # redrawn at the first step count only (the invariance does not depend on it; the redraws
            # of small batches cost as much per step as a full row)
            if n_check and (redraw is None or steps == ([0] if spec.adaptive else s["steps"])[0]):
                pool = firsts  # every sampling schedule's first samples, or redrawn under every schedule
                if redraw is not None:
                    cond_n = conditioning(D, n_check, w)
                    pool = {
                        name: _draw(
                            args, cfg, spec, options, D, target, steps, n_check, meta, device, cond_n
                        ).x
                        for name, target in redraw.items()
                    }
                for row in rows[-len(targets) :]:
                    x = pool[row["sample_schedule"]]
                    others = [v for name, v in pool.items() if name != row["sample_schedule"]]
                    row["invariance_error"] = (
                        max(float((v - x).abs().max()) for v in others) if others else None
                    )
    return rows


def _draw(args, cfg, spec, options, D, target, steps, n, meta, device, cond):
    """``n`` samples of the network ``D`` served under ``target`` (``reparametrize``) with the solver."""
    from difflab.parametrization import reparametrize
    from difflab.sampling import generate

    s = cfg["sample"]
    return generate(
        reparametrize(D, D.schedule, target),
        target,
        spec.name,
        steps,
        n,
        tuple(meta["shape"]),
        grid=args.grid,
        seed=s["seed"],
        batch_size=s["batch_size"],
        device=device,
        **cond,
        options=options,
    )


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--solver", required=True, help="one of the params' solvers")
    p.add_argument("--grid", default=None, help="one of the params' sample.grids (default: the first)")
    p.add_argument("--models", default="models", help="the train stages' folder (default: %(default)s)")
    p.add_argument(
        "--references", default="references", help="the reference stages' folder (default: %(default)s)"
    )
    p.add_argument(
        "--data", default="data/prepared", help="the prepare stage's folder (default: %(default)s)"
    )
    p.add_argument("--out", default=None, help="output folder (default: samples/SOLVER/GRID)")
    add_device(p)
    run(main, p.parse_args(), imports=("torch", "difflab.sampling", "difflab.training"), ranks=True)
