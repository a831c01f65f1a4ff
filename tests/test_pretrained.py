"""difflab.pretrained: tiny diffusers UNet2DModel pipelines (random weights) saved with save_pretrained and
loaded back as denoisers. difflab's ddim and dpm_solver_2m on them equal diffusers' own DDIMScheduler and
DPMSolverMultistepScheduler loops on the same noise and timesteps; an adapter module; every bad source."""

import json
import sys

import pytest
import torch

from difflab.parametrization import to_x0
from difflab.pretrained import inspect_pretrained, load_pretrained
from difflab.schedules import get_schedule
from difflab.solvers import get_solver

diffusers = pytest.importorskip("diffusers")

F64 = torch.float64
BETAS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


def tiny_unet(channels: int = 1, num_class_embeds: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    ).eval()


def save_ddim(folder, unet, **config) -> str:
    """A DDIMPipeline folder (model_index.json, unet/, scheduler/), as Hub repos are laid out."""
    scheduler = diffusers.DDIMScheduler(**{**BETAS, "set_alpha_to_one": True, **config})
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return str(folder)


def noise_for(D, batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *D.sample_shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def diffusers_loop(unet, scheduler, noise, steps, labels=None, **step_options):
    """diffusers' sampling loop (DDIMPipeline's): x = noise (init_noise_sigma = 1), one UNet call and one
    scheduler step per timestep; its last step returns the x0 prediction at the last timestep."""
    x = noise.clone()
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            out = unet(x, timestep, class_labels=labels, return_dict=False)[0]
            x = scheduler.step(out, timestep, x, **step_options, return_dict=False)[0]
    return x


def difflab_solve(D, solver, noise, timesteps, cond=None):
    """difflab's solver on the grid t_n = (n + 1)/N of diffusers' timesteps: K timesteps are K - 1 steps
    plus the final denoising D(x(t_K), t_K), the K-th evaluation, which is diffusers' last step (to
    abar = 1 in DDIM with set_alpha_to_one, to sigma = 0 in DPM-Solver with final_sigmas_type "zero").
    difflab starts at x = sigma(t_0) noise, diffusers at x = noise: the noise is divided by sigma(t_0)."""
    grid = D.schedule.t_from_timestep(timesteps.double())
    start = noise.double() / D.schedule.sigma(grid[:1])
    with torch.no_grad():
        return get_solver(solver)(D, D.schedule, start, None, grid=grid, cond=cond)


def in_float64(scheduler):
    """diffusers keeps alphas_cumprod in float32; the same product of the same betas in float64."""
    betas = torch.linspace(BETAS["beta_start"], BETAS["beta_end"], BETAS["num_train_timesteps"], dtype=F64)
    scheduler.alphas_cumprod = torch.cumprod(1 - betas, 0)
    return scheduler


def close(ours, theirs, rel):
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs.double(), rtol=rel, atol=rel * scale)


# -- the denoiser ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type, prediction", [("epsilon", "eps"), ("v_prediction", "v")])
def test_denoiser_feeds_the_fractional_timestep_and_converts_through_parametrization(
    tmp_path, prediction_type, prediction
):
    unet = tiny_unet(channels=3)
    D = load_pretrained(save_ddim(tmp_path, unet, prediction_type=prediction_type, clip_sample=False))
    assert (D.prediction, D.sample_shape, D.num_classes, D.null_label) == (prediction, (3, 8, 8), 0, None)
    assert D.clip_sample_range is None and D.schedule.params() == get_schedule("vp_discrete").params()
    x = noise_for(D)
    t = torch.tensor([0.5005, 0.1234567, 0.9], dtype=F64)  # timesteps 499.5, 122.4567, 899
    with torch.no_grad():
        out = unet(x.float(), torch.tensor([499.5, 122.4567, 899.0]), return_dict=False)[0]
        truncated = unet(x.float(), torch.tensor([499.0, 122.0, 899.0]), return_dict=False)[0]
        got = D(x, t)
    assert got.dtype == F64 and got.shape == x.shape
    torch.testing.assert_close(got, to_x0(prediction, out.double(), x, t, D.schedule), rtol=1e-6, atol=1e-6)
    # the test has power: integer timesteps give another output
    assert (out - truncated)[:2].abs().max() > 1e-3


def test_clip_sample_clamps_x0_to_its_range(tmp_path):
    D = load_pretrained(save_ddim(tmp_path, tiny_unet(), clip_sample=True, clip_sample_range=0.5))
    assert D.clip_sample_range == 0.5
    x, t = 5 * noise_for(D), torch.full((3,), 0.2, dtype=F64)
    with torch.no_grad():
        x0 = D(x, t)
    assert x0.abs().max().item() == 0.5
    D.clip_sample_range = None
    with torch.no_grad():
        assert D(x, t).abs().max().item() > 0.5


# -- parity with diffusers' own loops ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("clip_sample", [False, True])
def test_ddim_equals_diffusers_ddim_scheduler(tmp_path, prediction_type, dtype, clip_sample):
    """eta = 0, set_alpha_to_one: 10 timesteps 900, ..., 0, the last step returning diffusers' x0 at
    timestep 0, which is difflab's final denoising. diffusers forms the next x from the raw eps unless
    use_clipped_model_output, difflab from D (the clamped x0): with clip_sample they agree with it."""
    unet = tiny_unet()
    folder = save_ddim(tmp_path, unet, prediction_type=prediction_type, clip_sample=clip_sample)
    D = load_pretrained(folder)
    D.net.to(dtype)
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    if dtype == F64:
        in_float64(scheduler)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == list(range(900, -1, -100))
    noise = noise_for(D)
    theirs = diffusers_loop(
        D.net, scheduler, noise.to(dtype), 10, eta=0.0, use_clipped_model_output=clip_sample
    )
    ours = difflab_solve(D, "ddim", noise, scheduler.timesteps)
    close(ours, theirs, 1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpm_solver_2m_equals_diffusers_dpm_solver_multistep(tmp_path, prediction_type):
    """DPM-Solver++(2M) (midpoint, lower_order_final): its first step first order, its last step to
    sigma = 0 (final_sigmas_type "zero") returning the x0 prediction at its last timestep, as difflab's
    final denoising does. diffusers' DPM scheduler has no clip_sample: the model is saved without it.
    float32 only: its step casts the state to float32 whatever the model's dtype."""
    unet = tiny_unet()
    folder = save_ddim(tmp_path, unet, prediction_type=prediction_type, clip_sample=False)
    D = load_pretrained(folder)
    scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(folder, subfolder="scheduler")
    config = scheduler.config
    assert (config.algorithm_type, config.solver_order, config.solver_type) == ("dpmsolver++", 2, "midpoint")
    assert config.final_sigmas_type == "zero" and config.lower_order_final
    scheduler.set_timesteps(10)
    noise = noise_for(D)
    theirs = diffusers_loop(D.net, scheduler, noise.float(), 10)
    ours = difflab_solve(D, "dpm_solver_2m", noise, scheduler.timesteps)
    close(ours, theirs, 1e-5)
    # the test has power: difflab's ddim on the same grid is another sampler
    assert (difflab_solve(D, "ddim", noise, scheduler.timesteps) - ours).abs().max() > 1e-3


def test_class_conditional_model(tmp_path):
    """num_class_embeds = 4: three classes and the null label 3 (the label table's last row, as in
    difflab's nets and DiT); cond=None is the null label; ddim equals diffusers' loop with the labels."""
    unet = tiny_unet(num_class_embeds=4)
    folder = tmp_path / "ddpm"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**BETAS)).save_pretrained(folder)
    D = load_pretrained(str(folder))
    assert (D.num_classes, D.null_label, D.clip_sample_range) == (3, 3, 1.0)  # DDPMScheduler's clip default
    x, t = noise_for(D), torch.full((3,), 0.3, dtype=F64)
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        assert torch.equal(D(x, t), D(x, t, torch.full((3,), 3)))
        assert (D(x, t, labels) - D(x, t)).abs().max() > 1e-4
        with pytest.raises(ValueError, match="outside 0..3"):
            D(x, t, torch.tensor([0, 4, 1]))
    config = diffusers.DDIMScheduler.load_config(folder, subfolder="scheduler")  # the DDPM scheduler's
    scheduler = diffusers.DDIMScheduler.from_config(config, set_alpha_to_one=True)
    scheduler.set_timesteps(8)
    theirs = diffusers_loop(
        D.net, scheduler, noise_for(D).float(), 8, labels=labels, use_clipped_model_output=True
    )
    ours = difflab_solve(D, "ddim", noise_for(D), scheduler.timesteps, cond=labels)
    close(ours, theirs, 1e-5)


def test_bare_unet_folder_with_a_scheduler_config(tmp_path):
    unet = tiny_unet()
    scheduler = diffusers.DDPMScheduler(
        **{**BETAS, "beta_schedule": "squaredcos_cap_v2"}, prediction_type="sample"
    )
    unet.save_pretrained(tmp_path / "bare")
    scheduler.save_pretrained(tmp_path / "bare")  # scheduler_config.json beside config.json
    D = load_pretrained(str(tmp_path / "bare"))
    assert D.prediction == "x0" and D.schedule.beta_schedule == "squaredcos_cap_v2"
    # a pipeline's unet/ finds its sibling scheduler/
    pipe = save_ddim(tmp_path / "pipe", unet, prediction_type="v_prediction")
    assert load_pretrained(f"{pipe}/unet").prediction == "v"
    x, t = noise_for(D), torch.full((3,), 0.4, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(
            D(x, t),
            unet(x.float(), torch.full((3,), 399.0), return_dict=False)[0].double().clamp(-1, 1),
            rtol=1e-6,
            atol=1e-6,
        )


def test_inspect_pretrained_reads_only_the_configs(tmp_path):
    folder = save_ddim(tmp_path, tiny_unet(channels=3, num_class_embeds=11), prediction_type="v_prediction")
    D = load_pretrained(folder)
    for weights in (tmp_path / "unet").glob("diffusion_pytorch_model.*"):
        weights.unlink()
    info = inspect_pretrained(folder)
    assert info == {
        "source": folder,
        "kind": "diffusers",
        "sample_shape": (3, 8, 8),
        "num_classes": 10,
        "null_label": 10,
        "prediction": "v",
        "clip_sample_range": 1.0,
        "schedule": D.schedule.params(),
    }
    with pytest.raises(ValueError, match="cannot load its UNet2DModel"):
        load_pretrained(folder)


def test_hub_id_loads_from_the_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "cache" / "models--someone--tiny-ddpm"
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_ddim(repo / "snapshots" / commit, tiny_unet(), prediction_type="epsilon")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    D = load_pretrained("someone/tiny-ddpm")
    assert D.prediction == "eps" and D.sample_shape == (1, 8, 8)
    with pytest.raises(FileNotFoundError, match="someone/absent: not in the Hugging Face cache") as err:
        load_pretrained("someone/absent")
    assert "\n" not in str(err.value)


# -- adapters -------------------------------------------------------------------------------------
ADAPTER = '''
import torch
from difflab.schedules import get_schedule


def load():
    """The exact denoiser of N(0, I) data under edm: E[x0 | x] = x / (1 + sigma^2), sigma = 80 t."""
    schedule = get_schedule("edm")

    def D(x, t, cond=None):
        return x / (1 + schedule.sigma(t) ** 2).view(-1, 1, 1, 1)

    D.sample_shape = (1, 4, 4)
    return D, schedule


def load_on(device):
    net = torch.nn.Linear(2, 2)
    net.num_classes = 5
    return Wrapped(net.to(device)), get_schedule("vp_linear")


class Wrapped(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, cond=None):
        return x


def wrong():
    return "not a denoiser"


def no_schedule():
    return (lambda x, t, cond=None: x), "edm"
'''


@pytest.fixture
def adapter_module(tmp_path, monkeypatch):
    (tmp_path / "my_adapter.py").write_text(ADAPTER)
    (tmp_path / "broken_adapter.py").write_text("import difflab_no_such_package\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_adapter"
    for name in ("my_adapter", "broken_adapter"):
        sys.modules.pop(name, None)


def test_adapter_module_function(adapter_module):
    D = load_pretrained(f"{adapter_module}:load")
    assert D.schedule.name == "edm" and D.sample_shape == (1, 4, 4)
    assert (D.prediction, D.num_classes, D.null_label) == ("x0", 0, None)
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    t = torch.tensor([0.5, 0.01], dtype=F64)
    torch.testing.assert_close(D(x, t), x / (1 + (80 * t) ** 2).view(-1, 1, 1, 1))
    # a function taking device= gets it; num_classes from its net, the null label num_classes
    E = load_pretrained(f"{adapter_module}:load_on", device="cpu")
    assert (E.num_classes, E.null_label, E.sample_shape) == (5, 5, None)
    info = inspect_pretrained(f"{adapter_module}:load")
    assert (info["kind"], info["sample_shape"], info["schedule"]) == (
        "adapter",
        (1, 4, 4),
        D.schedule.params(),
    )


# -- bad sources ----------------------------------------------------------------------------------
def bad_sources(tmp_path):
    not_model = tmp_path / "not_a_model"
    not_model.mkdir()
    (not_model / "notes.txt").write_text("hello")
    a_file = tmp_path / "weights.pt"
    a_file.write_text("")
    unet_only = tmp_path / "unet_only"
    tiny_unet().save_pretrained(unet_only)
    latent = tmp_path / "latent"
    latent.mkdir()
    (latent / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"], "vqvae": ["x", "VQModel"]}
        )
    )
    flow = tmp_path / "flow"
    save_ddim(flow, tiny_unet())
    config_file = flow / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "flow"}))
    return [
        (str(tmp_path / "missing" / "model"), FileNotFoundError, "no such folder"),
        (str(not_model), ValueError, "not a diffusers model folder"),
        (str(a_file), ValueError, "a file, not a diffusers model folder"),
        (str(unet_only), ValueError, "without a scheduler_config.json"),
        (str(latent), ValueError, "vqvae"),
        (str(flow), ValueError, "unknown prediction_type='flow'"),
        ("difflab_no_such_module:load", ImportError, "cannot import 'difflab_no_such_module'"),
        ("broken_adapter:load", ImportError, "cannot import 'broken_adapter'"),
        ("my_adapter:absent", ImportError, "has no function 'absent'"),
        ("my_adapter:wrong", ValueError, r"must return \(denoiser, schedule\)"),
        ("my_adapter:no_schedule", ValueError, "must be a difflab Schedule"),
        ("not a source", ValueError, "neither a folder"),
        ("", ValueError, "must be a folder"),
    ]


def test_every_bad_source_raises_one_line_naming_it(tmp_path, adapter_module):
    for source, error, match in bad_sources(tmp_path):
        with pytest.raises(error, match=match) as err:
            load_pretrained(source)
        assert "\n" not in str(err.value) and source in str(err.value), (source, str(err.value))
        with pytest.raises(error, match=match):
            inspect_pretrained(source)


def test_missing_diffusers_is_one_line(tmp_path, monkeypatch):
    folder = save_ddim(tmp_path, tiny_unet())
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(ImportError, match="needs the diffusers package") as err:
        load_pretrained(folder)
    assert folder in str(err.value)
