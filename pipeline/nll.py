"""Stage `nll`: bits/dim of one network (a trained one, schedule x seed, or a pretrained entry) on the
held-out split (PF-ODE likelihood).

Writes OUT (default evals/NETWORK/seed_SEED/nll.json): model, schedule, seed, bpd, bpd_se, n_images,
nfe_per_image, divergence.
"""

import json

from _common import add_network_args, atomic_file, load_network_cfg, parser, read_json, resolve_device, run


def main(args):
    cfg, net = load_network_cfg(args)
    ev = cfg["evaluate"]
    out = args.out or f"{net.folder('evals')}/nll.json"
    if ev["nll_images"] == 0:
        record = {"model": net.model, "seed": net.seed, "bpd": None, "n_images": 0}
        atomic_file(out, json.dumps(record) + "\n")
        return
    import numpy as np
    import torch

    from difflab.metrics.nll import evaluate_bpd
    from difflab.networks import load_network

    meta = read_json(f"{args.data}/meta.json")
    images = torch.from_numpy(np.load(f"{args.data}/heldout_images.npy")[: ev["nll_images"]])
    device = resolve_device(args.device)
    D = load_network(args.model or net.folder("models"), device)
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
    record = {"model": net.model, "schedule": schedule.name, "seed": net.seed, "n_images": len(images)}
    record |= {"divergence": ev["nll_divergence"], "t_min": schedule.t_min}
    record.update({k: v for k, v in result.items() if isinstance(v, (int, float, str)) or v is None})
    atomic_file(out, json.dumps(record, indent=2) + "\n")
    print(f"{net.model} seed {net.seed}: {record.get('bpd')} bits/dim on {len(images)} held-out images")


if __name__ == "__main__":
    p = parser(__doc__, data=True, device=True)
    add_network_args(p)
    p.add_argument("--out", default=None)
    run(main, p.parse_args(), imports=("torch", "difflab.metrics.nll", "difflab.networks"), ranks=True)
