"""Stage `sample`: one solver on one time grid, for every network (the trained ones, schedule x seed,
and the pretrained entries: ``difflab.networks.network_ids``), every sampling-time schedule
(``sample.schedules``), every guidance scale and every step count of ``sample.steps`` (adaptive solvers
once, steps = 0), with each row's solver error and, for schedule-invariant solvers, its invariance
error (``difflab.sweep``). One process per solver x grid (dvc.yaml says why).

With ``--converged-sde``, stage `converged`: every network's converged reverse-SDE solution
(``sample.converged_sde``: a stochastic solver at many steps, logsnr grid), the partner of its SDE rows.

Writes OUT/ (default samples/SOLVER/GRID, samples/_converged): MODEL/seed_SEED/<stem>.npz per row
(uint8 levels, requested labels when guided, nfe, seconds per sample; <stem> = ``Row.stem``), <stem>.png and
rows.json (the rows, ``Row.to_dict``).
"""

from _common import atomic_dir, load_cfg, parser, read_json, resolve_device, run, write_json


def main(args):
    cfg = load_cfg(args)
    solver, grid, steps = _what(args, cfg)
    from difflab.networks import network_ids
    from difflab.sweep import CONVERGED_SDE, load_network_for, sweep_network

    sweep = _sweep(args, cfg, solver, grid, steps)
    default = f"samples/{CONVERGED_SDE}" if args.converged_sde else f"samples/{solver}/{grid}"
    with atomic_dir(args.out or default) as out:
        for net_id in network_ids(cfg):
            folder = out / net_id.model / f"seed_{net_id.seed}"
            folder.mkdir(parents=True)
            net = load_network_for(cfg, net_id, sweep, models=args.models, references=args.references)
            rows = sweep_network(net, sweep, folder)
            write_json(folder / "rows.json", [r.to_dict() for r in rows])


def _what(args, cfg) -> tuple[str, str, tuple | None]:
    """The solver, grid and step counts of this stage: ``--solver``/``--grid`` from the params' lists
    (the sample.steps), or with ``--converged-sde`` the ``sample.converged_sde`` solve on the logsnr
    grid."""
    if args.converged_sde:
        section = cfg["sample"]["converged_sde"]
        return section["solver"], "logsnr", (section["steps"],)
    if args.solver not in cfg["solvers"]:
        raise ValueError(f"--solver {args.solver!r} is not in params solvers {cfg['solvers']}")
    grids = [*cfg["sample"]["grids"], *cfg["sample"]["fitted_grids"]]
    grid = args.grid or grids[0]
    if grid not in grids:
        raise ValueError(f"--grid {grid!r} is not in params sample.grids or sample.fitted_grids {grids}")
    return args.solver, grid, None


def _sweep(args, cfg, solver: str, grid: str, steps: tuple | None):
    from difflab.sampling import Draw
    from difflab.solvers import get_spec
    from difflab.sweep import Sweep

    s, meta = cfg["sample"], read_json(f"{args.data}/meta.json")
    spec = get_spec(solver)
    draw = Draw(s["n_samples"], tuple(meta["shape"]), s["seed"], s["batch_size"], resolve_device(args.device))
    return Sweep(
        spec,
        spec.check_options(s["options"].get(solver, {})),
        grid,
        steps or tuple(s["steps"]),
        tuple(s["guidance_scales"]),
        draw,
        levels=meta["levels"],
        invariance_samples=0 if steps else s["invariance_samples"],
    )


if __name__ == "__main__":
    p = parser(__doc__, data=True, device=True)
    p.add_argument("--solver", default=None, help="one of the params' solvers")
    p.add_argument(
        "--converged-sde",
        action="store_true",
        help="sample every network with params sample.converged_sde instead (out: samples/_converged)",
    )
    p.add_argument(
        "--grid",
        default=None,
        help="one of the params' sample.grids or sample.fitted_grids (default: the first)",
    )
    p.add_argument("--models", default="models", help="the train stages' folder (default: %(default)s)")
    p.add_argument(
        "--references", default="references", help="the reference stages' folder (default: %(default)s)"
    )
    p.add_argument("--out", default=None, help="output folder (default: samples/SOLVER/GRID)")
    run(main, p.parse_args(), imports=("torch", "difflab.sweep", "difflab.training"), ranks=True)
