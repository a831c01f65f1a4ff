"""DDP on CPU: two gloo processes train with strategy="ddp"; both ranks end with the same weights and
one checkpoint set is written (slow: spawns two Python processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    torch.set_num_threads(1)
    from difflab.config import compose, validate
    from difflab.training import train
    out = sys.argv[1]
    # every section in full, as `make params` composes it: the smoke experiment plus overrides
    cfg = validate(compose([
        "experiment=smoke", "data=toy2d", "data.n=2048", "data.batch_size=64",
        "denoiser.width=32", "denoiser.emb_dim=16", "optim.lr=1e-3", "optim.warmup_steps=2",
        "ema.decay=0.9", "trainer.max_steps=12", "trainer.val_every_n_steps=6",
        "trainer.log_every_n_steps=3", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
    ]))
    cfg["experiment"] = "ddp-test"
    import lightning.pytorch as pl

    class Dump(pl.Callback):
        def on_train_end(self, trainer, module):  # before the EMA callback copies its weights in
            self.raw = {k: v.clone() for k, v in module.net.state_dict().items()}

        def on_fit_end(self, trainer, module):
            ema = {k: v.clone() for k, v in module.net.state_dict().items()}
            torch.save({"raw": self.raw, "ema": ema}, f"{out}.rank{trainer.global_rank}.pt")

    train(cfg, "vp_linear", out, callbacks=[Dump()])
    """
)


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(tmp_path):
    script = tmp_path / "run_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "run.rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "run.rank1.pt", weights_only=True)
    for kind in ("raw", "ema"):  # DDP keeps the ranks' weights (and so their EMAs) in step
        assert all(torch.equal(w0[kind][k], w1[kind][k]) for k in w0[kind]), kind
    assert any(not torch.equal(w0["raw"][k], w0["ema"][k]) for k in w0["raw"])
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["best.ckpt", "last.ckpt", "model.pt", "train_metrics.json"], names
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12
    metrics = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert metrics["steps"] == 12
