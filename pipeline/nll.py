"""Stage `nll`: bits/dim of one trained network (schedule x seed) on the held-out split (PF-ODE
likelihood).

Writes OUT (default evals/SCHEDULE/seed_SEED/nll.json): schedule, seed, bpd, bpd_se, n_images,
nfe_per_image, divergence.
"""

import json

from _common import (
    add_device,
    add_schedule_args,
    atomic_file,
    check_schedule,
    check_seed,
    load_cfg,
    model_dir,
    parser,
    read_json,
    resolve_device,
    run,
)


def main(args):
    cfg = load_cfg(args)
    check_schedule(cfg, args.schedule)
    check_seed(cfg, args.seed)
    ev = cfg["evaluate"]
    out = args.out or f"{model_dir(args.schedule, args.seed, 'evals')}/nll.json"
    if ev["nll_images"] == 0:
        record = {"schedule": args.schedule, "seed": args.seed, "bpd": None, "n_images": 0}
        atomic_file(out, json.dumps(record) + "\n")
        return
    import numpy as np
    import torch

    from difflab.metrics.nll import evaluate_bpd
    from difflab.training import load_denoiser

    meta = read_json(f"{args.data}/meta.json")
    images = torch.from_numpy(np.load(f"{args.data}/heldout_images.npy")[: ev["nll_images"]])
    device = resolve_device(args.device)
    D = load_denoiser(args.model or model_dir(args.schedule, args.seed), device)
    schedule = D.schedule  # the same alpha, sigma; only where the likelihood ODE starts may differ
    if ev.get("nll_t_min") is not None:
        from difflab.schedules import get_schedule

        params = {k: v for k, v in schedule.params().items() if k != "name"}
        schedule = get_schedule(schedule.name, **{**params, "t_min": ev["nll_t_min"]})
    result = evaluate_bpd(
        D,
        schedule,
        images,
        meta["levels"],
        divergence=ev["nll_divergence"],
        n_probes=ev["nll_probes"],
        batch_size=cfg["sample"]["batch_size"],
        seed=cfg["seed"],
        device=device,
    )
    record = {"schedule": args.schedule, "seed": args.seed, "n_images": len(images)}
    record["divergence"] = ev["nll_divergence"]
    record["t_min"] = schedule.t_min
    record.update({k: v for k, v in result.items() if isinstance(v, (int, float, str)) or v is None})
    atomic_file(out, json.dumps(record, indent=2) + "\n")
    print(f"{args.schedule} seed {args.seed}: {record.get('bpd')} bits/dim on {len(images)} held-out images")


if __name__ == "__main__":
    p = parser(__doc__)
    add_schedule_args(p)
    p.add_argument("--out", default=None)
    add_device(p)
    run(main, p.parse_args(), imports=("torch", "difflab.metrics.nll", "difflab.training"), ranks=True)
