"""`pretrained: {NAME: SOURCE}` at `make params` (``config.validate``): every bad entry is one line
naming the entry, the source and what is wrong, before any stage runs; a good one becomes one more
network of the comparison (``difflab.networks``)."""

import copy
import json

import pytest

from difflab.config import ConfigError, compose, validate
from difflab.networks import NetworkId, find_network, network_ids
from test_pretrained import adapter_module, bad_sources, save_ddim, tiny_unet  # noqa: F401

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def base():
    return compose(["experiment=smoke"])  # digits: 1x8x8


def _with(base, pretrained, **sample):
    cfg = copy.deepcopy(base)
    cfg["pretrained"] = pretrained
    cfg["sample"].update(sample)
    return cfg


def test_a_good_entry_is_one_more_network(base, tmp_path):
    cfg = validate(_with(base, {"tiny": save_ddim(tmp_path / "tiny", tiny_unet())}))
    nets = network_ids(cfg)
    assert nets[-1] == NetworkId("tiny", 0, True) and len(nets) == len(cfg["schedules"]) + 1
    assert nets[-1].folder("evals") == "evals/tiny/seed_0"
    assert nets[-1].stage("evaluate") == "evaluate-pretrained@tiny"
    assert nets[0].stage("evaluate") == f"evaluate@{cfg['schedules'][0]}-0"
    assert find_network(cfg, pretrained="tiny") == nets[-1]
    with pytest.raises(ValueError, match="--pretrained 'other' is not in params pretrained"):
        find_network(cfg, pretrained="other")


def test_every_bad_source_is_one_line_at_make_params(base, tmp_path, adapter_module):  # noqa: F811
    for source, _, match in bad_sources(tmp_path):
        match = "must be a non-empty name" if source == "" else match  # the declared field's check
        with pytest.raises(ConfigError, match=match) as err:
            validate(_with(base, {"mine": source}))
        text = str(err.value)
        assert "\n" not in text and text.startswith("params: pretrained.mine=") and source in text, text


def test_a_sample_shape_unlike_the_data_is_rejected(base, tmp_path):
    folder = save_ddim(tmp_path / "rgb", tiny_unet(channels=3))
    with pytest.raises(ConfigError, match=r"sample shape \(3, 8, 8\) differs from the data's \(1, 8, 8\)"):
        validate(_with(base, {"rgb": folder}))


def test_guidance_needs_a_class_conditional_model(base, tmp_path):
    folder = save_ddim(tmp_path / "tiny", tiny_unet())
    cfg = _with(base, {"tiny": folder}, guidance_scales=[None])
    cfg["class_cond"]["num_classes"] = 10  # the trained networks could be guided; the pretrained one not
    cfg["sample"]["guidance_scales"] = [0.0, 2.0]
    with pytest.raises(ConfigError, match="needs a class-conditional model; this one is unconditional"):
        validate(cfg)


@pytest.mark.parametrize("name", ["vp_linear", "1st", "a/b", "a b"])
def test_names_must_be_folder_names_no_schedule_takes(base, tmp_path, name):
    folder = save_ddim(tmp_path / "tiny", tiny_unet())
    cfg = _with(base, {name: folder})
    cfg["schedules"] = ["vp_linear"]
    with pytest.raises(ConfigError, match="must start with a letter"):
        validate(cfg)


def test_no_network_at_all_is_rejected(base):
    cfg = _with(base, {})
    cfg["schedules"] = []
    with pytest.raises(ConfigError, match="name no network"):
        validate(cfg)


def test_pretrained_only_validates(base, tmp_path):
    cfg = _with(base, {"tiny": save_ddim(tmp_path / "tiny", tiny_unet())})
    cfg["schedules"] = []
    assert [n.model for n in network_ids(validate(cfg))] == ["tiny"]
    assert json.loads(json.dumps(cfg["pretrained"]))  # plain strings: DVC's foreach reads them
