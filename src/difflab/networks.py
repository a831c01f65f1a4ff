"""The networks a comparison samples: one per training schedule x training seed that difflab trains,
and one per ``pretrained`` entry (``NAME: SOURCE``, loaded by ``difflab.pretrained``).

Each network has a folder ``models/<model>/seed_<seed>/``: the train stage writes ``model.pt`` there,
the pretrained stage ``pretrained.json`` (and, for a diffusers model, a copy of it in ``model/``).
``model`` names the network in every output: its training schedule for a trained network, NAME for a
pretrained one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PRETRAINED_MANIFEST = "pretrained.json"


@dataclass(frozen=True)
class NetworkId:
    """A network of the comparison: its name, training seed and whether it is a pretrained entry."""

    model: str
    seed: int = 0
    pretrained: bool = False

    def folder(self, root: str = "models") -> str:
        """Its folder below ``root`` (``models``, ``references``, ``evals``, ``samples/<solver>/<grid>``)."""
        return f"{root}/{self.model}/seed_{self.seed}"

    def stage(self, name: str) -> str:
        """The DVC stage ``name`` of this network: ``evaluate@vp_linear-0`` for a trained network
        (dvc.yaml's matrix over schedules x seeds), ``evaluate-pretrained@NAME`` for a pretrained one."""
        return f"{name}-pretrained@{self.model}" if self.pretrained else f"{name}@{self.model}-{self.seed}"


def network_ids(cfg: dict) -> list[NetworkId]:
    """Every network of a composed config: the trained ones (``schedules`` x ``seeds``), then the
    ``pretrained`` entries (seed 0: one network each)."""
    trained = [NetworkId(s, seed) for s in cfg["schedules"] for seed in cfg["seeds"]]
    return trained + [NetworkId(name, 0, True) for name in cfg.get("pretrained") or {}]


def find_network(cfg: dict, *, schedule: str | None = None, seed: int = 0, pretrained: str | None = None):
    """The network a per-network stage names (``--schedule S --seed N`` or ``--pretrained NAME``), one
    of ``network_ids(cfg)``; anything else is a ``ValueError`` naming what the params allow."""
    if (schedule is None) == (pretrained is None):
        raise ValueError("name one network: --schedule (with --seed) or --pretrained, not both or neither")
    if pretrained is not None:
        if pretrained not in (names := list(cfg.get("pretrained") or {})):
            raise ValueError(f"--pretrained {pretrained!r} is not in params pretrained {names}")
        return NetworkId(pretrained, 0, True)
    if schedule not in cfg["schedules"]:
        raise ValueError(f"--schedule {schedule!r} is not in params schedules {cfg['schedules']}")
    if seed not in cfg["seeds"]:
        raise ValueError(f"--seed {seed!r} is not in params seeds {cfg['seeds']}")
    return NetworkId(schedule, seed)


def load_network(folder: str | Path, device="cpu"):
    """The denoiser of a network folder (``D(x, t, cond=None)`` with ``.schedule`` and
    ``.num_classes``): a trained network's ``model.pt`` or a pretrained entry's manifest."""
    folder = Path(folder)
    manifest = folder / PRETRAINED_MANIFEST
    if manifest.is_file():
        from difflab.pretrained import load_pretrained

        entry = json.loads(manifest.read_text())
        copied = folder / "model"
        return load_pretrained(str(copied) if copied.is_dir() else entry["source"], device=device)
    from difflab.training import load_denoiser

    return load_denoiser(folder, device)
