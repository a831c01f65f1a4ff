"""Stage `train`: one denoiser per schedule (difflab.training.train), EMA weights to OUT/model.pt.

Writes OUT/ (default models/SCHEDULE): model.pt, last.ckpt, train_metrics.json and the offline
W&B training run (group = the experiment).
"""

from _common import atomic_dir, cpu_threads, load_cfg, parser, run


def main(args):
    cfg = load_cfg(args)
    if args.schedule not in cfg["schedules"]:
        raise ValueError(f"--schedule {args.schedule!r} is not in params schedules {cfg['schedules']}")
    from difflab.training import train

    cpu_threads()

    with atomic_dir(args.out or f"models/{args.schedule}") as out:
        metrics = train(cfg, args.schedule, out)
    shown = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    print(f"trained {args.schedule}: {shown}")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--schedule", required=True, help="one of the params' schedules")
    p.add_argument("--out", default=None, help="output folder (default: models/SCHEDULE)")
    run(main, p.parse_args())
