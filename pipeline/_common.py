"""What every stage script shares: argument parsing, one-line errors, atomic outputs.

Stage scripts import the heavy libraries (torch, the model code) only after parsing, so ``--help``
answers at once. Every output is built in a temporary folder under ``outputs/tmp`` (outside
anything DVC tracks) and renamed into place when complete: a stage killed mid-way leaves no
output at its declared path, so DVC has nothing partial to cache.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

_START = time.perf_counter()

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run as `python pipeline/x.py` without an installed package too


def parser(description: str, *, data: bool = False, device: bool = False) -> argparse.ArgumentParser:
    """``--params`` and, where the stage reads them, the prepare stage's folder and the torch device."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--params", default="params.yaml", help="the composed configuration (default: %(default)s)"
    )
    if data:
        p.add_argument(
            "--data", default="data/prepared", help="the prepare stage's folder (default: %(default)s)"
        )
    if device:
        p.add_argument("--device", default="auto", help="torch device; auto = cuda when available, else cpu")
    return p


def add_network_args(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    """The arguments of a per-network stage: a trained network (``--schedule``, ``--seed``) or a
    pretrained entry (``--pretrained NAME``) and, where the stage reads it, the network's folder
    (``load_network_cfg`` checks them against the params)."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--schedule", help="a trained network: one of the params' schedules")
    which.add_argument("--pretrained", help="a pretrained network: one of the params' pretrained names")
    p.add_argument("--seed", type=int, default=0, help="the trained network's seed (default: 0)")
    if model:
        p.add_argument(
            "--model", default=None, help="the network's folder (default: models/NETWORK/seed_SEED)"
        )


def load_network_cfg(args):
    """``(cfg, net)``: the params (``load_cfg``) and the network (``difflab.networks.NetworkId``) the
    arguments of ``add_network_args`` name."""
    from difflab.networks import find_network

    cfg = load_cfg(args)
    return cfg, find_network(cfg, schedule=args.schedule, seed=args.seed, pretrained=args.pretrained)


_RANK_DEVICE: str | None = None  # this rank's device when the stage runs as several ranks


def resolve_device(name: str) -> str:
    """``auto`` -> this rank's GPU under several ranks, else cuda when available, else cpu; sets the
    CPU threads (see ``cpu_threads``)."""
    import torch

    cpu_threads()
    if name != "auto":
        return name
    if _RANK_DEVICE is not None:
        return _RANK_DEVICE
    return "cuda" if torch.cuda.is_available() else "cpu"


NPROC_ENV = "DIFFLAB_NPROC"


def _launch_ranks() -> None:
    """Run this stage again as ``$DIFFLAB_NPROC`` ranks (e.g. 2 gloo ranks on CPU), else one per visible
    GPU, under ``torch.distributed.run`` and exit with its status; return where that is one rank."""
    import subprocess

    from difflab.distributed import visible_devices

    n = int(os.environ[NPROC_ENV]) if os.environ.get(NPROC_ENV) else visible_devices()
    if n < 1:
        raise ValueError(f"{NPROC_ENV}={n} must be an integer >= 1")
    if n == 1:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    print(f"[{Path(sys.argv[0]).stem}] {n} ranks: {' '.join(cmd[1:])} ...", flush=True)
    sys.exit(subprocess.run([*cmd, *sys.argv], check=False).returncode)


def _is_main_rank() -> bool:
    from difflab.distributed import is_main

    return is_main()


def cpu_threads() -> int:
    """Torch's CPU threads: ``$DIFFLAB_CPU_THREADS``, default the cores this process may use. DVC runs
    stages one at a time, and on an idle 2-core machine two threads made the quick experiment's
    training and sampling stages ~20% faster than one. Set ``DIFFLAB_CPU_THREADS=1`` when stages share
    the cores (``dvc queue start -j N``, other jobs): oversubscribed threads spin against each other
    and made a sampling stage 20x slower on a busy machine."""
    import torch

    n = int(os.environ.get("DIFFLAB_CPU_THREADS", len(os.sched_getaffinity(0))))
    torch.set_num_threads(max(n, 1))
    return n


def hand_off() -> None:
    """Under ``make repro`` ($DIFFLAB_WARM set): run this stage in a fork of the warm-start server
    (``warm.delegate``), which has the heavy libraries imported, and exit with its status; else
    return and run here."""
    if os.environ.get("DIFFLAB_WARM"):
        from warm import delegate

        delegate(os.environ["DIFFLAB_WARM"])


def run(main, args, imports: tuple[str, ...] = ("torch",), *, ranks: bool = False) -> None:
    """Hand the stage to the warm-start server where one runs (``hand_off``); else import the stage's
    heavy modules (timed), then call ``main(args)``; a user error (a bad value:
    ``ValueError``, ``ConfigError``; a missing file: ``FileNotFoundError``) becomes one line on stderr
    and exit status 2, with no traceback and no output written. Any other exception is a programming
    error and keeps its traceback. Prints the stage's wall and CPU time and, within them, its imports.

    ``ranks=True`` (stages that split their work by index): with several visible GPUs (or
    ``$DIFFLAB_NPROC``) the stage runs itself as that many ranks (``_launch_ranks``); every rank
    computes its share, rank 0 writes the outputs (the same files one process writes)."""
    global _RANK_DEVICE
    import importlib

    hand_off()
    start = time.perf_counter()
    for module in imports:
        importlib.import_module(module)
    import_seconds = time.perf_counter() - start
    from difflab import distributed

    try:
        if ranks and "RANK" not in os.environ:
            _launch_ranks()
        if ranks:  # under torch.distributed.run: join the process group, use this rank's device
            _RANK_DEVICE = distributed.init_from_env()
        main(args)
        if ranks:
            distributed.leave()
    except (ValueError, FileNotFoundError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    if not distributed.is_main():
        return
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    name = Path(sys.argv[0]).stem
    cpu = usage.ru_utime + usage.ru_stime
    print(
        f"[{name}] wall {time.perf_counter() - _START:.1f} s, cpu {cpu:.1f} s; "
        f"of the wall, importing {', '.join(imports)}: {import_seconds:.1f} s"
    )


def load_cfg(args) -> dict:
    """``--params`` read and validated. Validation imports every owner (Lightning among them: seconds
    on a small machine), so a params file validated once with this library's code is not validated
    again: the stamp ``outputs/tmp/validated-<content key>`` records it."""
    from difflab.config import load_params, validate

    cfg = load_params(args.params, check=False)
    stamp = _tmp_root() / f"validated-{content_key(cfg)}"
    if not stamp.exists():
        validate(cfg)
        stamp.touch()
    return cfg


def _tmp_root() -> Path:
    root = Path(os.environ.get("DIFFLAB_TMP", ROOT / "outputs" / "tmp"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _stale_prefix(final: Path) -> str:
    rel = os.path.relpath(final.resolve(), ROOT).replace(os.sep, "__")
    return f"{rel}.tmp-"


def _clear_target(final: Path, keep: Path | None = None) -> tuple[Path, str]:
    """Remove ``final`` and the stale work folders of the same target (all but ``keep``); return the
    work root and the target's work-folder prefix."""
    root = _tmp_root()
    prefix = _stale_prefix(final)
    for stale in root.glob(prefix + "*"):
        if stale != keep:
            shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    return root, prefix


def publish(work: Path, final: Path) -> None:
    """Make the finished ``work`` (a folder or a file) movable and rename it to ``final``, replacing
    what is there."""
    self_contained(work)
    if final.is_dir():
        shutil.rmtree(final)
    elif final.exists():
        final.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, final)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield an empty temporary folder; on success replace ``final`` with it (rename), on any error
    or kill leave ``final`` absent. Stale temporaries of the same target are removed first."""
    final = Path(final)
    if not _is_main_rank():  # other ranks compute their share; what they write here is discarded
        with tempfile.TemporaryDirectory(dir=_tmp_root()) as scratch:
            yield Path(scratch)
        return
    root, prefix = _clear_target(final)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield tmp
        publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def resumable_dir(final: str | os.PathLike, key: str):
    """Like ``atomic_dir``, but the work folder outlives a kill or an error so that the next run with
    the same ``key`` (a hash of everything the stage reads) resumes in it: training picks up its
    ``last.ckpt`` instead of starting over. Work folders of the same target under another key are
    stale and removed. ``final`` is absent until the work completes and is renamed into place."""
    final = Path(final)
    work = _tmp_root() / f"{_stale_prefix(final)}resume-{key}"
    _clear_target(final, keep=work)
    work.mkdir(parents=True, exist_ok=True)
    yield work
    publish(work, final)


def content_key(*parts) -> str:
    """A short hash of JSON-able ``parts`` and of the library's source (what a stage's result depends on)."""
    import hashlib

    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in sorted((ROOT / "src" / "difflab").rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def self_contained(folder: Path) -> None:
    """Make ``folder`` movable and hashable: symlinks that leave it (W&B points its run logs at its
    cache folder) are replaced by a copy of their target, or removed when dangling; absolute links
    inside it become relative."""
    folder = Path(folder).resolve()
    for link in [p for p in folder.rglob("*") if p.is_symlink()]:
        raw = os.readlink(link)
        target = (link.parent / raw).resolve()
        inside = target == folder or folder in target.parents
        if inside and os.path.isabs(raw):
            link.unlink()
            link.symlink_to(os.path.relpath(target, link.parent))
        elif not inside:
            link.unlink()
            if target.is_file():
                shutil.copy2(target, link)


def atomic_file(final: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``final`` atomically (``difflab.io.atomic_write``); rank 0 only."""
    from difflab.io import atomic_write

    if _is_main_rank():
        atomic_write(final, lambda tmp: tmp.write_text(text))
    return Path(final)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_file(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def scratch_dir(target: str | os.PathLike):
    """A temporary folder under ``outputs/tmp`` for building outputs that are then moved into
    place one by one; removed afterwards, whatever happens."""
    root = _tmp_root()
    prefix = _stale_prefix(Path(target))
    for stale in root.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
