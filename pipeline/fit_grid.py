"""Stage `fit_grid`: one solver's fitted time grid (a ``gits`` or ``dmn`` entry of ``sample.fitted_grids``,
``difflab.solvers.fitted``) for every network and every step count of ``sample.steps``; the sample stage
of the same solver and grid reads them as explicit grids (``load_fitted``).

GITS's teacher starts from the noise of every row's first ``sample.solver_error_samples`` samples
(``sample.seed``, drawn as the reference and sample stages draw them), under the first guidance scale;
DMN reads only the network's schedule. A stochastic solver gets the grid fitted for ddim and an adaptive
one its grid's two ends (``fitted.grid_student``).

Writes OUT/ (default grids/SOLVER/GRID): MODEL/seed_SEED/grid.json (``fitted.write_fitted``).
"""

from pathlib import Path

from _common import atomic_dir, load_cfg, parser, read_json, resolve_device, run


def main(args):
    cfg = load_cfg(args)
    if args.solver not in cfg["solvers"]:
        raise ValueError(f"--solver {args.solver!r} is not in params solvers {cfg['solvers']}")
    fitted = cfg["sample"]["fitted_grids"]
    if args.grid not in fitted:
        raise ValueError(f"--grid {args.grid!r} is not in params sample.fitted_grids {fitted}")
    with atomic_dir(args.out or f"grids/{args.solver}/{args.grid}") as out:
        fit_networks(args, cfg, out)


def fit_networks(args, cfg, out: Path) -> None:
    """``grid.json`` of every network: ``fit_for_sampling`` at the sample stage's step counts."""
    from difflab.networks import load_network, network_ids
    from difflab.results import ADAPTIVE_STEPS
    from difflab.solvers import get_spec
    from difflab.solvers.fitted import fit_for_sampling, write_fitted

    s, device = cfg["sample"], resolve_device(args.device)
    options = s["options"][args.solver]
    steps = [ADAPTIVE_STEPS] if get_spec(args.solver).adaptive else s["steps"]
    noise = (
        fit_noise(cfg, read_json(f"{args.data}/meta.json")["shape"], device) if args.grid == "gits" else None
    )
    for net in network_ids(cfg):
        D = load_network(net.folder(args.models), device)
        teacher, labels = guided_teacher(D, s["guidance_scales"][0], noise)
        grids = fit_for_sampling(
            args.grid, teacher, D.schedule, args.solver, steps, noise, cond=labels, solver_options=options
        )
        path = net.folder(str(out)) + "/grid.json"
        write_fitted(path, args.grid, args.solver, grids, D.schedule, solver_options=options)
        print(f"fit_grid {args.grid} {args.solver} {net.model} seed {net.seed}: steps {sorted(grids)}")


def fit_noise(cfg, shape, device):
    """The initial noise of samples ``0..n-1`` (``n = min(sample.solver_error_samples, sample.n_samples)``),
    ``[n, *shape]``: sample i's from ``sample_generators(sample.seed, [i])``, as ``generate`` draws it."""
    import torch

    from difflab.sampling import sample_generators

    s = cfg["sample"]
    n = min(s["solver_error_samples"], s["n_samples"])
    if n == 0:
        raise ValueError("sample.solver_error_samples=0 leaves GITS's teacher no noise; allowed: >= 1")
    gens = sample_generators(s["seed"], range(n), device)
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device) for g in gens])


def guided_teacher(D, w, noise):
    """The denoiser sampled at guidance scale ``w`` and its labels for the samples of ``noise`` (as
    ``generate`` builds them); ``(D, None)`` unguided or without noise (DMN)."""
    from difflab.parametrization import guided
    from difflab.sampling import Conditioning

    cond = None if noise is None else Conditioning.balanced(D, len(noise), w)
    if cond is None:
        return D, None
    return guided(D, float(cond.guidance_scale), int(cond.null_label)), cond.labels.to(noise.device)


if __name__ == "__main__":
    p = parser(__doc__, data=True, device=True)
    p.add_argument("--solver", required=True, help="one of the params' solvers")
    p.add_argument("--grid", required=True, help="one of the params' sample.fitted_grids")
    p.add_argument("--models", default="models", help="the network folders (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: grids/SOLVER/GRID)")
    run(main, p.parse_args(), imports=("torch", "difflab.solvers"))
