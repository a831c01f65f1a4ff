"""Compose conf/ into params.yaml (what `dvc exp run -S ...` does), validating it first.

python pipeline/compose.py                       # the default (experiment=quick)
python pipeline/compose.py experiment=smoke      # any Hydra overrides
python pipeline/compose.py --check               # exit 1 if params.yaml differs from conf/
"""

from _common import parser, run


def main(args):
    from difflab.config import compose, load_params, validate, write_params

    cfg = validate(compose(args.overrides))
    if args.check:
        current = load_params(args.params, check=False)
        if current != cfg:
            keys = sorted(k for k in set(cfg) | set(current) if cfg.get(k) != current.get(k))
            raise ValueError(f"{args.params} differs from conf/ (keys: {', '.join(keys)}); run make params")
        print(f"{args.params} matches conf/ ({cfg['experiment']})")
        return
    write_params(cfg, args.params)
    print(f"wrote {args.params} (experiment={cfg['experiment']}, schedules={cfg['schedules']})")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=mnist seed=1")
    p.add_argument("--check", action="store_true", help="compare with params.yaml instead of writing it")
    run(main, p.parse_args())
