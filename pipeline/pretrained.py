"""Stage `pretrained`: one ``pretrained`` entry (NAME: SOURCE) as a network folder beside the trained
ones, so the reference, sample, evaluate and nll stages treat it as one more network
(``difflab.networks``).

Writes OUT/ (default models/NAME/seed_0): pretrained.json (the name, the source and what
``difflab.pretrained.inspect_pretrained`` reads: kind, sample shape, classes, prediction, schedule)
and, for a diffusers folder or a Hub id, a copy of the model in model/ that the later stages load.
The stage runs on every ``dvc repro`` (dvc.yaml: always_changed) and DVC hashes what it writes, so a
changed model re-runs the stages after it and an unchanged one re-runs nothing. An adapter
(``package.module:function``) is not copied: add its code to the stage's deps to track it.
"""

import shutil

from _common import atomic_dir, load_cfg, parser, run, write_json


def main(args):
    cfg = load_cfg(args)
    from difflab.networks import PRETRAINED_MANIFEST, find_network
    from difflab.pretrained import inspect_pretrained, model_folder

    net = find_network(cfg, pretrained=args.name)
    source = cfg["pretrained"][args.name]
    info = inspect_pretrained(source)
    folder = model_folder(source)
    with atomic_dir(args.out or net.folder("models")) as out:
        if folder is not None:
            shutil.copytree(folder, out / "model", ignore=shutil.ignore_patterns(".git", ".cache"))
        write_json(out / PRETRAINED_MANIFEST, {"name": args.name, **info})
    shape = info["sample_shape"]
    print(f"pretrained {args.name}: {info['kind']} {source} ({info['prediction']}, shape {shape})")


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--name", required=True, help="one of the params' pretrained names")
    p.add_argument("--out", default=None, help="output folder (default: models/NAME/seed_0)")
    run(main, p.parse_args(), imports=("torch", "difflab.pretrained"))
