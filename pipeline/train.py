"""Stage `train`: one denoiser per schedule x training seed (difflab.training.train), EMA weights to
OUT/model.pt.

Writes OUT/ (default models/SCHEDULE/seed_SEED): model.pt, last.ckpt, train_metrics.json (with the loss
curves the report judges convergence by) and the offline W&B training run (group = the experiment). A
run killed mid-way resumes from its last.ckpt the next time (the work folder under outputs/tmp is keyed
by the params this stage reads and the code).
"""

from _common import content_key, cpu_threads, load_cfg, parser, resumable_dir, run

# the params the train stage declares in dvc.yaml
TRAIN_KEYS = ("seed", "data", "denoiser", "loss", "optim", "ema", "class_cond", "trainer", "wandb")


def main(args):
    cfg = load_cfg(args)
    from difflab.networks import find_network

    net = find_network(cfg, schedule=args.schedule, seed=args.seed)
    from difflab.training import train

    cpu_threads()
    read = {k: cfg.get(k) for k in TRAIN_KEYS} | {"schedule": cfg["schedule"][args.schedule]}
    key = content_key(args.schedule, args.seed, read)
    with resumable_dir(args.out or net.folder("models"), key) as out:
        metrics = train(cfg, args.schedule, out, seed=args.seed)
    shown = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    print(f"trained {args.schedule} seed {args.seed}: {shown}")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--schedule", required=True, help="one of the params' schedules")
    p.add_argument("--seed", type=int, default=0, help="one of the params' training seeds (default: 0)")
    p.add_argument("--out", default=None, help="output folder (default: models/SCHEDULE/seed_SEED)")
    run(main, p.parse_args())
