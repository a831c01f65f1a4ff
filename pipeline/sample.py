"""Stage `sample`: one solver on one time grid, for every network (schedule x seed), every
sampling-time schedule (``sample.schedules``), every guidance scale and every step count of
``sample.steps`` (adaptive solvers once, steps = 0), with each row's solver error and, for
schedule-invariant solvers, its invariance error (``difflab.sweep``).

One process per solver x grid: a changed solver option or a new grid re-runs only its stages, and
every stage pays torch's import and DVC's start-up once.

Writes OUT/ (default samples/SOLVER/GRID): SCHEDULE/seed_SEED/<stem>.npz per row (uint8 levels,
requested labels when guided, nfe, seconds per sample; <stem> = ``Row.stem``), <stem>.png and
rows.json (the rows, ``Row.to_dict``).
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
    from difflab.sweep import sweep_network

    sweep = _sweep(args, cfg)
    with atomic_dir(args.out or f"samples/{args.solver}/{args.grid}") as out:
        for schedule in cfg["schedules"]:
            for seed in cfg["seeds"]:
                folder = out / schedule / f"seed_{seed}"
                folder.mkdir(parents=True)
                rows = sweep_network(_network(args, cfg, sweep, schedule, seed), sweep, folder)
                write_json(folder / "rows.json", [r.to_dict() for r in rows])


def _sweep(args, cfg):
    from difflab.sampling import Draw
    from difflab.solvers import get_spec
    from difflab.sweep import Sweep

    s, meta = cfg["sample"], read_json(f"{args.data}/meta.json")
    spec = get_spec(args.solver)
    draw = Draw(s["n_samples"], tuple(meta["shape"]), s["seed"], s["batch_size"], resolve_device(args.device))
    return Sweep(
        spec,
        spec.check_options(s["options"][args.solver]),
        args.grid,
        tuple(s["steps"]),
        tuple(s["guidance_scales"]),
        draw,
        levels=meta["levels"],
        invariance_samples=s["invariance_samples"],
    )


def _network(args, cfg, sweep, schedule: str, seed: int):
    from difflab.sweep import Network, invariance_schedules, load_references, sampling_schedules
    from difflab.training import load_denoiser

    targets = sampling_schedules(cfg, schedule)
    check = sweep.spec.schedule_invariant and sweep.invariance_samples > 0
    redraw = invariance_schedules(cfg, schedule) if check and len(targets) < 2 else None
    wants_reference = (
        not sweep.spec.is_stochastic(sweep.options) and cfg["sample"]["solver_error_samples"] > 0
    )
    references = (
        load_references(model_dir(schedule, seed, args.references), schedule, sweep.guidance_scales)
        if wants_reference
        else {}
    )
    D = load_denoiser(model_dir(schedule, seed, args.models), sweep.draw.device)
    return Network(schedule, schedule, seed, D, targets, redraw, references)


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
    run(main, p.parse_args(), imports=("torch", "difflab.sweep", "difflab.training"), ranks=True)
