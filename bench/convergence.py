"""Converged PF-ODE FID against training steps, beside the real-data floor at the same sample count.

For each schedule, trains one network with difflab's training entry point (``difflab.training.train``,
as the train stage calls it) to the largest of ``--steps`` and snapshots the EMA weights at every
smaller step count on the way (``trainer.save_checkpoint``: Lightning's ``WeightAveraging`` puts the
average in the checkpoint's ``state_dict``). Without an lr decay (difflab's lr schedule is a warmup
only) and with an EMA that does not depend on ``max_steps``, the snapshot at step k is the network a
run with ``trainer.max_steps = k`` ends with. Each snapshot draws ``--n`` samples with rk45 at
rtol = atol = 1e-5 (the converged PF-ODE solution, ``difflab.sampling.generate``, the sample stage's
noise seed) and is scored with the project's FID (``difflab.metrics.fid.fid_kid``) on the prepare
stage's classifier features against the train split, 95% bootstrap interval.

The floor: FID of ``--n`` real images that no network or classifier trained on (the val and test
splits together: 360 digits) against the same reference, at the same ``n`` as the generated rows, so
both carry the same finite-sample bias (FID's bias falls like 1/n; Chong & Forsyth 2020). FID-infinity
(the same paper: the intercept of a line fit of FID against 1/n over subsets of n/2..n) is printed
beside both, with the line's value at the quick rows' 400 samples.

    DIFFLAB_CPU_THREADS=2 python bench/convergence.py --schedules vp_linear,vp_cosine,ve,flow \\
        --steps 500,1000,1500,2000,2500,3000 --n 360 --work /tmp/convergence [overrides, e.g. optim.lr=1e-3]

Overrides are Hydra overrides composed over ``experiment=quick`` (``difflab.config.compose``);
``trainer.max_steps`` is replaced by the largest of ``--steps``. Everything is written under ``--work``:
the prepare stage's outputs (``prepared-<key>/``, ``features-<key>/``), one training folder per
schedule and training config (``runs/``; re-running with the same config reuses its snapshots) and
``convergence.jsonl`` (one JSON line per measured row). Prints a markdown table. Weights & Biases is
off (``WANDB_MODE=disabled`` unless set); torch uses ``$DIFFLAB_CPU_THREADS`` threads (default 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RTOL = ATOL = 1e-5  # rk45's tolerances for the converged PF-ODE solution
FIT_SUBSETS = 25  # random subsets per sample count in the FID-infinity fit
QUICK_N = 400  # the quick experiment's samples per row


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def compose_cfg(overrides: list[str], max_steps: int) -> dict:
    """``experiment=quick`` composed with ``overrides``, ``trainer.max_steps = max_steps``, validated."""
    from difflab.config import compose, validate

    return validate(compose(["experiment=quick", *overrides, f"trainer.max_steps={max_steps}"]))


def prepare(cfg: dict, work: Path) -> tuple[Path, Path]:
    """Run ``pipeline/prepare.py`` once per data split and classifier (keyed by what it reads; the
    training batch size is not part of it); returns ``(prepared, features)``."""
    from difflab.config import write_params

    ev = cfg["evaluate"]
    split = {k: v for k, v in cfg["data"].items() if k not in ("batch_size", "num_workers")}
    key = _hash([cfg["seed"], split, ev["feature_extractor"], ev["classifier_epochs"]])
    prepared, features = work / f"prepared-{key}", work / f"features-{key}"
    if not (features / "floor.json").is_file():
        params = work / f"params-{key}.yaml"
        write_params(cfg, params)
        cmd = [sys.executable, str(ROOT / "pipeline" / "prepare.py"), "--params", str(params)]
        cmd += ["--out", str(prepared), "--features", str(features)]
        env = {**os.environ, "DIFFLAB_TMP": str(work / "tmp")}
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return prepared, features


class Scorer:
    """FID of uint8 images against the prepared train split on the prepared classifier's features."""

    def __init__(self, cfg: dict, prepared: Path, features: Path):
        import numpy as np
        import torch

        from difflab.images import levels_to_uint8_images
        from difflab.metrics.fid import extractor_weights, reference_statistics

        meta = json.loads((prepared / "meta.json").read_text())
        self.levels, self.shape = meta["levels"], tuple(meta["shape"])
        self.reference = levels_to_uint8_images(
            torch.from_numpy(np.load(prepared / "train_images.npy")), self.levels
        )
        self.classifier, self.cache = features / "classifier.pt", features / "fid_cache"
        self.seed, self.bootstrap = cfg["seed"], 200
        weights = extractor_weights("classifier", self.classifier, self.reference.shape[2:])
        stats, _, _ = reference_statistics(
            self.reference, feature_extractor="classifier", weights=weights, cache_dir=self.cache
        )
        self.mu, self.sigma = np.asarray(stats["mu"]), np.asarray(stats["sigma"])

    def score(self, images) -> dict:
        """``fid, fid_lo, fid_hi`` (``fid_kid``) and ``fid_inf, fid_at_quick`` (the 1/n line) of uint8
        images ``[n, C, H, W]``."""
        from difflab.metrics.fid import fid_kid

        s = fid_kid(
            images,
            self.reference,
            feature_extractor="classifier",
            extractor_path=self.classifier,
            cache_dir=self.cache,
            bootstrap=self.bootstrap,
            seed=self.seed,
            kid_subsets=10,
            keep_features=True,
        )
        out = {k: float(s[k]) for k in ("fid", "fid_lo", "fid_hi")}
        return out | self._fid_infinity(s["features"])

    def _fid_infinity(self, features) -> dict:
        """FID-infinity (Chong & Forsyth 2020): fit ``FID(m) = fid_inf + b / m`` over random subsets
        of ``m`` in ``[n/2, n]`` rows of ``features`` ``[n, d]``; its value at ``QUICK_N`` too. Each
        subset's FID is torch-fidelity's (float64 statistics), as ``fid_kid`` computes it."""
        import numpy as np
        import torch
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

        def fid(rows):
            stats = fid_features_to_statistics(features[rows].float())
            value = fid_statistics_to_metric(stats, {"mu": self.mu, "sigma": self.sigma}, verbose=False)
            return value["frechet_inception_distance"]

        n = features.shape[0]
        g = torch.Generator().manual_seed(self.seed)
        ms = np.linspace(n // 2, n, 5).astype(int)
        means = [
            float(
                np.mean(
                    [fid(torch.randperm(n, generator=g)[:m]) for _ in range(1 if m == n else FIT_SUBSETS)]
                )
            )
            for m in ms
        ]
        b, a = np.polyfit(1.0 / ms, means, 1)
        return {"fid_inf": float(a), "fid_at_quick": float(a + b / QUICK_N)}


def floor(cfg: dict, scorer: Scorer, n: int) -> dict:
    """The real-data floor at ``n``: ``n`` images of the val + test splits (a seeded permutation)."""
    import torch

    from difflab.data.datamodules import build_datamodule
    from difflab.images import levels_to_uint8_images

    dm = build_datamodule(cfg["data"], cfg["seed"])
    pool = torch.cat([dm.split("val")[0], dm.split("test")[0]])
    if n > len(pool):
        raise ValueError(f"--n {n} exceeds the {len(pool)} held-out real images (val + test)")
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg["seed"]))[:n]
    return scorer.score(levels_to_uint8_images(pool[pick], dm.levels))


def _snapshot_callback(steps: list[int], folder: Path):
    """A Lightning callback writing ``folder/model_step<k>.pt`` (``load_denoiser``'s format: the EMA
    weights and the module's hparams) when ``k`` optimizer steps are done, for ``k`` in ``steps``, and
    recording the fit's wall and CPU seconds to each (its own saving time left out)."""
    import lightning.pytorch as pl
    import torch

    class Snapshots(pl.Callback):
        def __init__(self):
            self.seconds: dict[int, tuple[float, float]] = {}
            self._paused = (0.0, 0.0)

        def _now(self):
            return time.perf_counter() - self._paused[0], time.process_time() - self._paused[1]

        def on_train_start(self, trainer, pl_module):
            self._start = self._now()

        def _mark(self, k):
            wall, cpu = self._now()
            self.seconds[k] = (wall - self._start[0], cpu - self._start[1])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            k = trainer.global_step
            if k not in steps or k in self.seconds:
                return
            self._mark(k)
            t0, c0 = time.perf_counter(), time.process_time()
            tmp = folder / f"step{k}.ckpt"
            trainer.save_checkpoint(tmp)  # WeightAveraging stores the EMA weights as its state_dict
            ckpt = torch.load(tmp, map_location="cpu", weights_only=True)
            net = {name[4:]: v for name, v in ckpt["state_dict"].items() if name.startswith("net.")}
            hparams = json.loads(json.dumps(dict(ckpt["hyper_parameters"])))
            torch.save({"state_dict": net, "hparams": hparams}, folder / f"model_step{k}.pt")
            tmp.unlink()
            p = self._paused
            self._paused = (p[0] + time.perf_counter() - t0, p[1] + time.process_time() - c0)

        def on_train_end(self, trainer, pl_module):
            self._mark(trainer.global_step)

    return Snapshots()


def train_snapshots(cfg: dict, schedule: str, steps: list[int], work: Path) -> dict:
    """Train ``schedule`` to ``max(steps)`` (``difflab.training.train``) with snapshots at ``steps``;
    returns ``{k: {"model": path, "wall": s, "cpu": s}}`` and, under ``"train"``, the whole call's
    wall and CPU seconds. Reuses a finished run of the same training config that has every snapshot."""
    from difflab.training import train

    read = {k: cfg[k] for k in ("seed", "data", "denoiser", "loss", "optim", "ema", "class_cond")}
    trainer = {k: v for k, v in cfg["trainer"].items() if k != "max_steps"}
    folder = work / "runs" / f"{schedule}-{_hash([read, trainer, cfg['schedule'][schedule]])}"
    record = folder / f"seconds-{max(steps)}.json"
    if record.is_file():
        done = {int(k) if k.isdigit() else k: v for k, v in json.loads(record.read_text()).items()}
        if all(k in done for k in steps):
            return done
    run = folder / f"run-{max(steps)}"
    shutil.rmtree(run, ignore_errors=True)  # train() would resume from a finished run's last.ckpt
    folder.mkdir(parents=True, exist_ok=True)
    callback = _snapshot_callback(steps, folder)
    t0, c0 = time.perf_counter(), time.process_time()
    metrics = train(cfg, schedule, run, callbacks=[callback])
    total = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "params": metrics["params"]}
    if metrics["steps"] != max(steps):
        raise RuntimeError(f"{schedule}: trained {metrics['steps']} steps, not {max(steps)}")
    (run / "model.pt").replace(folder / f"model_step{max(steps)}.pt")
    out = {
        k: {"model": str(folder / f"model_step{k}.pt"), "wall": w, "cpu": c}
        for k, (w, c) in callback.seconds.items()
    }
    out["train"] = total
    record.write_text(json.dumps(out, indent=2) + "\n")
    return out


def converged_fid(model: str, cfg: dict, scorer: Scorer, n: int) -> dict:
    """rk45 (rtol = atol = 1e-5) samples of the network in ``model``, scored."""
    from difflab.images import levels_to_uint8_images, to_levels
    from difflab.results import ADAPTIVE_STEPS
    from difflab.sampling import Draw, generate
    from difflab.training import load_denoiser

    D = load_denoiser(model)
    s = cfg["sample"]
    draw = Draw(n, scorer.shape, s["seed"], s["batch_size"])
    t0 = time.perf_counter()
    result = generate(D, D.schedule, "rk45", ADAPTIVE_STEPS, draw, options={"rtol": RTOL, "atol": ATOL})
    sample_s = time.perf_counter() - t0
    images = levels_to_uint8_images(to_levels(result.x, scorer.levels), scorer.levels)
    return scorer.score(images) | {"nfe": float(result.nfe), "sample_s": sample_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides over experiment=quick")
    p.add_argument("--schedules", default="vp_linear,vp_cosine,ve,flow")
    p.add_argument("--steps", default="500,1000,2000,3000", help="training-step checkpoints")
    p.add_argument("--n", type=int, default=360, help="samples per FID, real and generated")
    p.add_argument("--work", default="/tmp/convergence", help="output folder")
    p.add_argument("--label", default=None, help="name of this setting in the table (default: overrides)")
    args = p.parse_args(argv)

    import torch

    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(int(os.environ.get("DIFFLAB_CPU_THREADS", 2)))
    steps = sorted({int(s) for s in args.steps.split(",")})
    if not steps or steps[0] < 1:
        raise ValueError(f"--steps {args.steps!r} must be positive integers")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = compose_cfg(args.overrides, steps[-1])
    label = args.label or (" ".join(args.overrides) or "quick")
    scorer = Scorer(cfg, *prepare(cfg, work))
    fl = floor(cfg, scorer, args.n)
    print(
        f"floor at n={args.n} (val+test real digits vs train): {fl['fid']:.2f} "
        f"[{fl['fid_lo']:.2f}, {fl['fid_hi']:.2f}]; FID-inf {fl['fid_inf']:.2f}, "
        f"at {QUICK_N} {fl['fid_at_quick']:.2f}",
        flush=True,
    )
    head = (
        "| setting | schedule | steps | fit wall s | fit CPU s | converged FID [95%] | NFE "
        f"| floor at n={args.n} | ratio | FID-inf (floor) | at {QUICK_N} (floor) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for schedule in args.schedules.split(","):
        trained = train_snapshots(cfg, schedule, steps, work)
        t = trained["train"]
        print(f"{schedule}: train() {t['wall']:.1f} s wall, {t['cpu']:.1f} s CPU, {t['params']} params")
        for k in steps:
            r = converged_fid(trained[k]["model"], cfg, scorer, args.n)
            row = {"label": label, "schedule": schedule, "steps": k, "n": args.n, "floor": fl}
            row |= {"fit_wall": trained[k]["wall"], "fit_cpu": trained[k]["cpu"], "train": t, **r}
            with open(work / "convergence.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            line = (
                f"| {label} | {schedule} | {k} | {trained[k]['wall']:.1f} | {trained[k]['cpu']:.1f} "
                f"| {r['fid']:.2f} [{r['fid_lo']:.2f}, {r['fid_hi']:.2f}] | {r['nfe']:.0f} "
                f"| {fl['fid']:.2f} [{fl['fid_lo']:.2f}, {fl['fid_hi']:.2f}] | {r['fid'] / fl['fid']:.2f} "
                f"| {r['fid_inf']:.2f} ({fl['fid_inf']:.2f}) "
                f"| {r['fid_at_quick']:.2f} ({fl['fid_at_quick']:.2f}) |"
            )
            lines.append(line)
            print(line, flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
