"""Pretrained denoisers: a diffusers checkpoint, a Hugging Face Hub id or a user adapter as a denoiser.

``load_pretrained(source)`` returns ``D(x, t, cond=None) ~ E[x0 | x_t = x]`` (x ``[B, C, H, W]``, t ``[B]``,
t = 0 data, t = 1 noise) with ``.schedule``, ``.prediction``, ``.num_classes``, ``.null_label``,
``.sample_shape`` and ``.net``. ``source`` is one of

- a folder written by diffusers: a pipeline (``model_index.json``, ``unet/``, ``scheduler/``, as Hub repos
  are laid out), or a ``UNet2DModel`` folder (``config.json``) holding a ``scheduler_config.json`` (or
  with one in a sibling ``scheduler/``). The scheduler config decides the schedule (``vp_discrete`` with
  its betas), the prediction type (``epsilon``, ``v_prediction``, ``sample``) and ``clip_sample``;
- a Hub id ``"org/name"`` (not an existing folder): diffusers' own download and cache
  (``DiffusionPipeline.download``), the cache first, so a cached model loads offline;
- ``"package.module:function"``: a function returning ``(denoiser, schedule)`` under difflab's
  conventions (EDM pickles and other frameworks go through such an adapter; ``device=...`` is passed
  to it when it takes that keyword).

diffusers is imported only when a diffusers source is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pathlib
import re
import warnings

import torch
from torch import Tensor, nn

from difflab.parametrization import to_x0
from difflab.schedules import Schedule, get_schedule
from difflab.schema import ConfigError, Field

# diffusers' prediction_type -> difflab's prediction name (parametrization.PREDICTIONS)
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_ADAPTER = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _diffusers(source: str):
    try:
        import diffusers
    except ImportError:
        raise ImportError(  # noqa: B904  (one line: the missing package is the whole story)
            f"{source}: loading a diffusers model needs the diffusers package (pip install diffusers)"
        )
    return diffusers


def _read_json(path: pathlib.Path, source: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{source}: cannot read {path.name} as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: {path.name} is not a JSON object")
    return data


# -- what a diffusers checkpoint says ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A diffusers checkpoint read from its config files alone (no weights).

    ``num_classes`` counts the class labels; the label table has ``num_classes + 1`` rows and the last,
    ``null_label = num_classes``, is the "no class" label (difflab's and DiT's layout; None: unconditional).
    ``clip_sample_range``: x0 is clamped to ``[-r, r]`` (None: no clamp).
    """

    source: str
    unet_dir: pathlib.Path
    schedule: Schedule
    prediction: str
    clip_sample_range: float | None
    sample_shape: tuple[int, int, int]
    num_classes: int
    null_label: int | None


def _describe(model, kind: str) -> dict:
    """What ``inspect_pretrained`` reports of a ``Checkpoint`` or an ``AdapterDenoiser`` (no clamp)."""
    fields = ("sample_shape", "num_classes", "null_label", "prediction")
    return {
        "source": model.source,
        "kind": kind,
        **{k: getattr(model, k) for k in fields},
        "clip_sample_range": getattr(model, "clip_sample_range", None),
        "schedule": model.schedule.params(),
    }


def _layout(folder: pathlib.Path, source: str) -> tuple[pathlib.Path, pathlib.Path]:
    """``(unet folder, scheduler config file)`` of a diffusers pipeline folder or UNet folder."""
    index_file = folder / "model_index.json"
    if index_file.is_file():
        index = _read_json(index_file, source)
        latent = [k for k in ("vae", "vqvae", "text_encoder") if index.get(k)]
        if latent:
            raise ValueError(
                f"{source}: a {index.get('_class_name', 'pipeline')} with {', '.join(latent)}; only "
                "pixel-space UNet2DModel pipelines (DDPMPipeline, DDIMPipeline and the like) are supported"
            )
        unet = index.get("unet")
        if not (isinstance(unet, list) and len(unet) == 2 and unet[1] == "UNet2DModel"):
            raise ValueError(f"{source}: model_index.json names unet={unet!r}; a UNet2DModel is needed")
        unet_dir, scheduler_file = folder / "unet", folder / "scheduler" / "scheduler_config.json"
        if not unet_dir.is_dir() and (folder / "config.json").is_file():  # early Hub repos: files at the root
            unet_dir, scheduler_file = folder, folder / "scheduler_config.json"
        for need in (unet_dir / "config.json", scheduler_file):
            if not need.is_file():
                raise ValueError(f"{source}: a diffusers pipeline folder without {need.relative_to(folder)}")
        return unet_dir, scheduler_file
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{source}: not a diffusers model folder (no model_index.json, no UNet2DModel config.json)"
        )
    name = _read_json(config_file, source).get("_class_name")
    if name != "UNet2DModel":
        raise ValueError(f"{source}: config.json is a {name!r}, not a UNet2DModel")
    for scheduler_file in (
        folder / "scheduler_config.json",
        folder.parent / "scheduler" / "scheduler_config.json",
    ):
        if scheduler_file.is_file():
            return folder, scheduler_file
    raise ValueError(
        f"{source}: a UNet2DModel folder without a scheduler_config.json (here or in ../scheduler/)"
    )


def _scheduler_config(path: pathlib.Path, source: str) -> dict:
    """The scheduler config with its class's defaults filled in (diffusers' ``from_config``)."""
    diffusers = _diffusers(source)
    raw = _read_json(path, source)
    cls = getattr(diffusers, str(raw.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{source}: scheduler {raw.get('_class_name')!r} is not a diffusers scheduler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys of another scheduler class are ignored, as diffusers does
        config = dict(cls.from_config(raw).config)
    if "beta_schedule" not in config or "num_train_timesteps" not in config:
        raise ValueError(
            f"{source}: scheduler {cls.__name__} has no DDPM betas (beta_schedule, num_train_timesteps); "
            "only discrete VP schedules are supported"
        )
    return config


def _schedule_from(config: dict, source: str) -> Schedule:
    """``vp_discrete`` with the scheduler config's betas."""
    if config.get("trained_betas") is not None:
        raise ValueError(
            f"{source}: trained_betas (an explicit beta list) is not supported; give beta_schedule"
        )
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(
            f"{source}: rescale_betas_zero_snr=True (zero terminal SNR) has no finite log-SNR at t = 1"
        )
    try:
        return get_schedule(
            "vp_discrete",
            num_train_timesteps=config["num_train_timesteps"],
            beta_start=config["beta_start"],
            beta_end=config["beta_end"],
            beta_schedule=config["beta_schedule"],
        )
    except ValueError as e:
        raise ValueError(f"{source}: scheduler config: {e}") from None


def _read_checkpoint(folder: pathlib.Path, source: str) -> Checkpoint:
    unet_dir, scheduler_file = _layout(folder, source)
    config = _scheduler_config(scheduler_file, source)
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in DIFFUSERS_PREDICTIONS:
        raise ValueError(
            f"{source}: unknown prediction_type={prediction_type!r}; "
            f"allowed: {', '.join(DIFFUSERS_PREDICTIONS)}"
        )
    if config.get("thresholding"):
        warnings.warn(
            f"{source}: dynamic thresholding (thresholding=True) is a sampler choice; not applied",
            stacklevel=3,
        )
    clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample") else None
    unet = _read_json(unet_dir / "config.json", source)
    if unet.get("time_embedding_type", "positional") != "positional":
        raise ValueError(
            f"{source}: time_embedding_type={unet['time_embedding_type']!r}; fractional timesteps need "
            "'positional'"
        )
    if unet.get("class_embed_type") is not None:
        raise ValueError(
            f"{source}: class_embed_type={unet['class_embed_type']!r}; only class labels are supported"
        )
    size = unet.get("sample_size")
    size = [size, size] if isinstance(size, int) else size
    channels = unet.get("in_channels", 3)
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(
            f"{source}: the UNet config's sample_size={unet.get('sample_size')!r} is not an image size"
        )
    if unet.get("out_channels", 3) not in (channels, 2 * channels):
        raise ValueError(
            f"{source}: out_channels={unet.get('out_channels')} must be in_channels={channels} (or twice it, "
            "with a learned variance)"
        )
    embeds = unet.get("num_class_embeds")
    if embeds is not None and (not isinstance(embeds, int) or embeds < 2):
        raise ValueError(
            f"{source}: num_class_embeds={embeds!r} must be an integer >= 2 (classes + null label)"
        )
    return Checkpoint(
        source=source,
        unet_dir=unet_dir,
        schedule=_schedule_from(config, source),
        prediction=DIFFUSERS_PREDICTIONS[prediction_type],
        clip_sample_range=clip,
        sample_shape=(channels, size[0], size[1]),
        num_classes=0 if embeds is None else embeds - 1,
        null_label=None if embeds is None else embeds - 1,
    )


# -- the denoisers --------------------------------------------------------------------------------
class PretrainedDenoiser(nn.Module):
    """``D(x, t, cond) = E[x0 | x_t = x]`` from a diffusers ``UNet2DModel`` trained on ``vp_discrete``.

    ``out = net(x, schedule.timestep(t), class_labels)``: x itself (DDPM's ``x_t = sqrt(abar) x0 +
    sqrt(1 - abar) eps`` is the VP marginal) at the fractional timestep, a float tensor; the first ``C``
    channels where the UNet also predicts a variance, as diffusers' DDPM scheduler splits them.
    ``x0 = to_x0(prediction, out, x, t)``, clamped to ``[-clip_sample_range, clip_sample_range]`` where
    the scheduler config sets ``clip_sample`` (diffusers' DDPM and DDIM schedulers clamp their x0
    prediction). Labels ``cond`` ``[B]`` in ``0..num_classes`` (``num_classes`` = the null label);
    ``cond=None`` on a class-conditional UNet is the null label, and an unconditional UNet ignores
    labels. Shapes: x ``[B, C, H, W]``, t ``[B]``; the UNet runs in its own dtype and D is returned in
    the dtype of x.
    """

    def __init__(self, net: nn.Module, checkpoint: Checkpoint):
        super().__init__()
        self.net, self.checkpoint = net, checkpoint
        self.schedule, self.prediction = checkpoint.schedule, checkpoint.prediction
        self.num_classes, self.null_label = checkpoint.num_classes, checkpoint.null_label
        self.sample_shape, self.clip_sample_range = checkpoint.sample_shape, checkpoint.clip_sample_range
        self.source = checkpoint.source

    def extra_repr(self) -> str:
        return f"source={self.source!r}, schedule={self.schedule!r}, prediction={self.prediction!r}"

    def labels(self, cond: Tensor | None, batch: int, device) -> Tensor | None:
        """The UNet's ``class_labels`` ``[B]`` (None for an unconditional UNet)."""
        if self.null_label is None:
            return None
        if cond is None:
            return torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        labels = torch.as_tensor(cond, device=device).long().expand(batch)
        if labels.min() < 0 or labels.max() > self.null_label:
            raise ValueError(
                f"class labels {labels.unique().tolist()} outside 0..{self.null_label} "
                f"({self.null_label} = the null label)"
            )
        return labels

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        param = next(self.net.parameters())
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])  # [B]
        # float timesteps: UNet2DModel turns a Python number into an integer tensor
        timestep = self.schedule.timestep(t).to(param.dtype)
        out = self.net(
            x.to(param.dtype), timestep, self.labels(cond, x.shape[0], x.device), return_dict=False
        )[0]
        x0 = to_x0(self.prediction, out[:, : x.shape[1]].to(x.dtype), x, t, self.schedule)
        if self.clip_sample_range is not None:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0


class AdapterDenoiser(nn.Module):
    """An adapter's ``D(x, t, cond)`` with the attributes every loaded denoiser has.

    Read from the adapter's denoiser where it has them: ``prediction`` (default "x0", what D returns),
    ``num_classes`` (default 0, or its ``net.num_classes``), ``null_label`` (default ``num_classes``,
    difflab's layout; None when unconditional), ``sample_shape`` (default None: unknown) and ``net``
    (default D itself).
    """

    def __init__(self, denoiser, schedule: Schedule, source: str):
        super().__init__()
        self.denoiser, self.schedule, self.source = denoiser, schedule, source
        self.net = getattr(denoiser, "net", denoiser)
        self.prediction = getattr(denoiser, "prediction", "x0")
        self.num_classes = int(getattr(denoiser, "num_classes", getattr(self.net, "num_classes", 0)) or 0)
        self.null_label = getattr(denoiser, "null_label", self.num_classes if self.num_classes else None)
        shape = getattr(denoiser, "sample_shape", None)
        self.sample_shape = None if shape is None else tuple(int(s) for s in shape)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.denoiser(x, t) if cond is None else self.denoiser(x, t, cond)


# -- sources --------------------------------------------------------------------------------------
def _resolve(source) -> tuple[str, str | pathlib.Path]:
    """``("folder", path)``, ``("hub", id)`` or ``("adapter", "module:function")``."""
    if not isinstance(source, (str, pathlib.Path)) or not str(source).strip():
        raise ValueError(
            f"pretrained source {source!r} must be a folder, a Hub id 'org/name' or 'package.module:function'"
        )
    text = str(source)
    path = pathlib.Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{text}: a file, not a diffusers model folder")
        return "folder", path
    if _ADAPTER.match(text):
        return "adapter", text
    if _HUB_ID.match(text) and not text.startswith("."):
        return "hub", text
    if "/" in text or "\\" in text or text.startswith((".", "~")):
        raise FileNotFoundError(f"{text}: no such folder")
    raise ValueError(
        f"pretrained source {text!r} is neither a folder, a Hub id 'org/name' nor 'package.module:function'"
    )


def _hub_folder(repo_id: str) -> pathlib.Path:
    """The cached snapshot of ``repo_id`` (downloaded by diffusers when it is not cached yet)."""
    pipeline = _diffusers(repo_id).DiffusionPipeline
    try:
        return pathlib.Path(pipeline.download(repo_id, local_files_only=True))
    except Exception:  # not cached (any of huggingface_hub's errors): download
        pass
    try:
        return pathlib.Path(pipeline.download(repo_id))
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise FileNotFoundError(
            f"{repo_id}: not in the Hugging Face cache and not downloadable (offline?): {first[:200]}"
        ) from None


def _load_adapter(source: str, device) -> AdapterDenoiser:
    module_name, function_name = source.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ImportError(f"{source}: cannot import {module_name!r} ({type(e).__name__}: {e})") from None
    fn = getattr(module, function_name, None)
    if not callable(fn):
        raise ImportError(f"{source}: module {module_name!r} has no function {function_name!r}")
    takes_device = "device" in inspect.signature(fn).parameters
    result = fn(device=device) if takes_device else fn()
    if not (isinstance(result, tuple) and len(result) == 2 and callable(result[0])):
        raise ValueError(f"{source}: must return (denoiser, schedule), got {type(result).__name__}")
    denoiser, schedule = result
    if not isinstance(schedule, Schedule):
        raise ValueError(f"{source}: the second value returned must be a difflab Schedule, got {schedule!r}")
    if isinstance(denoiser, nn.Module) and not takes_device:
        denoiser = denoiser.to(device)
    return AdapterDenoiser(denoiser, schedule, source)


def model_folder(source) -> pathlib.Path | None:
    """The local folder holding a diffusers ``source`` (the folder itself, or a Hub id's cached
    snapshot, downloaded when not cached); None for an adapter, which loads what it loads."""
    kind, where = _resolve(source)
    if kind == "adapter":
        return None
    return _hub_folder(where) if kind == "hub" else pathlib.Path(where)


def inspect_pretrained(source) -> dict:
    """What ``load_pretrained(source)`` would give, from the config files alone (no weights):
    ``sample_shape``, ``num_classes``, ``null_label``, ``prediction``, ``clip_sample_range`` and
    ``schedule`` (its ``params()``). An adapter is called (its function loads what it loads).
    Bad sources raise as ``load_pretrained`` does."""
    kind, where = _resolve(source)
    if kind == "adapter":
        return _describe(_load_adapter(where, "cpu"), "adapter")
    return _describe(_read_checkpoint(model_folder(source), str(source)), "diffusers")


def load_pretrained(source, *, device="cpu") -> PretrainedDenoiser | AdapterDenoiser:
    """The denoiser of ``source`` (see the module docstring), in eval mode on ``device``.

    Errors, each one line naming the source: ``FileNotFoundError`` (no such folder; a Hub id neither
    cached nor downloadable), ``ValueError`` (a folder that is not a supported diffusers model, an
    unknown ``prediction_type``, a source of no known form), ``ImportError`` (an adapter that does not
    import, or diffusers missing).
    """
    kind, where = _resolve(source)
    if kind == "adapter":
        return _load_adapter(where, device).eval()
    checkpoint = _read_checkpoint(model_folder(source), str(source))
    diffusers = _diffusers(str(source))
    try:
        net = diffusers.UNet2DModel.from_pretrained(checkpoint.unet_dir)
    except Exception as e:
        raise ValueError(f"{source}: cannot load its UNet2DModel ({type(e).__name__}: {e})") from None
    net = net.to(device).eval().requires_grad_(False)  # gradients still flow to x (exact divergence)
    return PretrainedDenoiser(net, checkpoint).eval()


# -- the config section ---------------------------------------------------------------------------
_NAME = re.compile(r"^[A-Za-z][\w.-]*$")
PRETRAINED_FIELD = Field(
    dict,
    keys=Field(str),
    values=Field(str),
    doc="NAME: SOURCE (a diffusers folder, a Hub id or 'package.module:function'); each is one more "
    "network of the comparison (its own stage, models/NAME/seed_0)",
)


def check_pretrained(cfg: dict) -> None:
    """Every ``pretrained`` entry, before any work: a name usable as a folder and stage name that no
    trained schedule takes, a source ``inspect_pretrained`` reads (a missing folder, a source of no
    known form, an unknown ``prediction_type``: its one line), the data's sample shape, and a class-
    conditional model where ``sample.guidance_scales`` guides."""
    from difflab.data.datamodules import check_data

    entries = cfg.get("pretrained") or {}
    data_shape = None
    scales = cfg["sample"]["guidance_scales"]
    for name, source in entries.items():
        where = f"params: pretrained.{name}"
        if not _NAME.match(name) or name in cfg["schedules"]:
            raise ConfigError(
                f"{where}: the name {name!r} must start with a letter, hold only letters, digits, "
                f"'_', '.', '-', and not be a trained schedule ({', '.join(cfg['schedules'])})"
            )
        try:
            info = inspect_pretrained(source)
        except (ValueError, FileNotFoundError, ImportError) as e:
            raise ConfigError(f"{where}={source!r}: {e}") from None
        data_shape = data_shape or tuple(check_data(cfg["data"])[0])
        shape = info["sample_shape"]
        if shape is not None and tuple(shape) != data_shape:
            raise ConfigError(
                f"{where}={source!r}: the model's sample shape {tuple(shape)} differs from the data's "
                f"{data_shape} (data.name={cfg['data']['name']!r})"
            )
        if any(w is not None for w in scales) and not info["num_classes"]:
            raise ConfigError(
                f"{where}={source!r}: sample.guidance_scales={scales} needs a class-conditional model; "
                "this one is unconditional (allowed: [null])"
            )
