"""Declared config schemas (difflab.schema): what a Field allows and says, the one-line errors of
check_section, the key check_built blames, and the declarations against the code that reads them."""

import inspect
import math

import pytest
import yaml

from difflab.schema import ConfigError, Field, check_built, check_section

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "field, good, bad, words",
    [
        (Field(int, low=1), [1, 7], [0, 1.5, True, "2", None], "an integer >= 1"),
        (
            Field(float, low=0, low_open=True),
            [1e-9, 3],
            [0, -1.0, math.inf, math.nan, False],
            "a finite number > 0",
        ),
        (Field(float, low=0, high=1, high_open=True), [0, 0.5], [1, 1.0, -0.1], "a finite number in [0, 1)"),
        (Field(float, high=2), [2, -5.0], [2.5], "a finite number <= 2"),
        (Field(int, low=0, nullable=True), [None, 0], [-1], "null or an integer >= 0"),
        (Field(bool), [True, False], [1, 0, "yes", None], "true or false"),
        (Field(str), ["a"], ["", 3, None], "a non-empty name"),
        (Field(choices=(-1, "auto")), [-1, "auto"], [1, "-1", True], "one of -1, 'auto'"),
        (Field(str, choices=("a", "b")), ["a"], ["c", None], "one of a, b"),
        (
            Field(list, item=Field(int)),
            [[1], [1, 2]],
            [[], [1, 1], [1, "a"], 1],
            "a non-empty list of distinct integers",
        ),
        (
            Field(list, item=Field(float, low=0), length=2),
            [[0, 0], [0.5, 0.1]],
            [[0.5], [0.5, -1]],
            "a list of 2 finite numbers >= 0",
        ),
        (
            Field(any_of=(Field(int, low=1), Field(choices=("auto",)))),
            [3, "auto"],
            [0, "all"],
            "an integer >= 1 or one of auto",
        ),
    ],
)
def test_field_accepts_what_it_says(field, good, bad, words):
    assert field.allowed() == words
    assert all(field.accepts(v) for v in good), good
    assert not any(field.accepts(v) for v in bad), bad


SECTION = {
    "steps": Field(list, item=Field(int, low=0, low_open=True)),
    "names": Field(list, item=Field(str, choices=("vp", "ve"), noun="schedule")),
    "rate": Field(float, low=0, low_open=True),
    "note": Field(str, optional=True),
    "sub": Field(dict, fields={"k": Field(bool)}),
}
GOOD = {"steps": [5, 10], "names": ["vp"], "rate": 0.1, "sub": {"k": True}}


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"steps": [5, 0]}, "params: s.steps holds 0; allowed: integers > 0"),
        ({"steps": [5, 5]}, "params: s.steps=[5, 5] lists 5 twice"),
        (
            {"steps": []},
            "params: s.steps=[] is not allowed; must be a non-empty list of distinct integers > 0",
        ),
        (
            {"names": ["vp", "flow"]},
            "params: s.names holds unknown schedule 'flow'; allowed: values among vp, ve",
        ),
        ({"rate": 0}, "params: s.rate=0 is not allowed; must be a finite number > 0"),
        ({"rat": 1}, "params: s.rat: unknown key 'rat'; allowed: steps, names, rate, note, sub"),
        ({"sub": {"k": 1}}, "params: s.sub.k=1 is not allowed; must be true or false"),
        ({"sub": {"k": True, "j": 1}}, "params: s.sub.j: unknown key 'j'; allowed: k"),
        ({"sub": [1]}, "params: s.sub=[1] is not allowed; must be a mapping"),
    ],
)
def test_check_section_names_the_key_the_value_and_what_is_allowed(edit, message):
    assert check_section(SECTION, dict(GOOD), "s") == GOOD
    assert check_section(SECTION, {**GOOD, "note": "n"}, "s")  # an optional key may be there or not
    with pytest.raises(ConfigError) as err:
        check_section(SECTION, {**GOOD, **edit}, "s")
    assert str(err.value) == message


def test_missing_keys_and_the_top_level():
    with pytest.raises(ConfigError, match=r"^params: missing key 's\.rate'$"):
        check_section(SECTION, {k: v for k, v in GOOD.items() if k != "rate"}, "s")
    with pytest.raises(
        ConfigError, match=r"^params: unknown key typo; allowed: steps, names, rate, note, sub$"
    ):
        check_section(SECTION, {**GOOD, "typo": 1}, "")
    with pytest.raises(ConfigError, match="^params: expected a mapping at the top level, got list$"):
        check_section(SECTION, [], "")


def test_a_new_section_is_one_declaration():
    """A ``pretrained: {NAME: SOURCE}`` section: free keys (names) each holding a source."""
    pretrained = {"pretrained": Field(dict, keys=Field(str, noun="name"), values=Field(str))}
    assert check_section(pretrained, {"pretrained": {"ddpm": "google/ddpm-cifar10-32"}}, "")
    with pytest.raises(
        ConfigError, match=r"^params: pretrained\.ddpm=3 is not allowed; must be a non-empty name$"
    ):
        check_section(pretrained, {"pretrained": {"ddpm": 3}}, "")
    with pytest.raises(ConfigError, match=r"^params: pretrained\.: unknown name ''"):
        check_section(pretrained, {"pretrained": {"": "x"}}, "")


def test_choices_are_read_when_checking():
    registry = {"a": 1}
    field = Field(list, item=Field(str, choices=lambda: tuple(registry), noun="thing"))
    assert not field.accepts(["b"])
    registry["b"] = 2  # registered after the declaration
    assert field.accepts(["a", "b"]) and field.allowed() == "a non-empty list of distinct values among a, b"


def test_check_built_blames_the_key_whose_default_passes():
    def build(p):  # a reader with defaults lo=0, hi=1 that needs lo < hi and hi <= 10
        lo, hi = p.get("lo", 0), p.get("hi", 1)
        if not lo < hi <= 10:
            raise ValueError(f"need lo < hi <= 10, got lo={lo}, hi={hi}")
        return hi - lo

    assert check_built(build, {"lo": 1, "hi": 3}, "x") == 2
    with pytest.raises(ConfigError) as err:
        check_built(build, {"lo": 0.5, "hi": 20}, "x", " here")
    assert str(err.value) == "params: x.hi=20 is not allowed here: need lo < hi <= 10, got lo=0.5, hi=20"
    with pytest.raises(ConfigError) as err:  # neither alone: the section
        check_built(build, {"lo": 20, "hi": 30}, "x")
    assert (
        str(err.value)
        == "params: x={'lo': 20, 'hi': 30} is not allowed: need lo < hi <= 10, got lo=20, hi=30"
    )


def _keywords(cls) -> set[str]:
    """A constructor's keyword parameters through its bases (what the declarations must match)."""
    keys = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            keys |= {k for k, p in inspect.signature(klass.__init__).parameters.items() if k != "self"}
    return keys - {"seed", "data_shape", "num_classes", "common", "args", "kwargs"}


def test_declared_fields_match_the_readers():
    from difflab.data.datamodules import DATAMODULES
    from difflab.nets import NET_FIELDS, NETS
    from difflab.training import TRAINER_FIELDS

    assert set(NET_FIELDS) == set(NETS)
    for name, cls in NETS.items():
        assert set(NET_FIELDS[name]) == _keywords(cls), name
    for name, cls in DATAMODULES.items():
        assert set(cls.fields) - {"num_classes"} == _keywords(cls), name
    for conf in ("cpu", "gpu"):  # conf/ holds every trainer value
        assert set(yaml.safe_load((ROOT / f"conf/trainer/{conf}.yaml").read_text())) == set(TRAINER_FIELDS)


def test_solver_options_are_checked_by_their_specs():
    """Every registered solver's options: the spec's defaults pass, and a bad value is one line naming
    the dotted key and what the spec's ``Option`` allows."""
    from difflab.sample_config import check_solver_options
    from difflab.solvers import SOLVERS, get_spec

    def cfg(name, options):
        return {"solvers": [name], "sample": {"options": {name: options}, "reference": {}}}

    for name in SOLVERS:
        spec = get_spec(name)
        check_solver_options(cfg(name, spec.defaults()))
        for key, opt in spec.options.items():
            with pytest.raises(ConfigError) as err:
                check_solver_options(cfg(name, {key: "x"}))
            assert (
                str(err.value)
                == f"params: sample.options.{name}.{key}='x' is not allowed; must be {opt.allowed()}"
            )
    with pytest.raises(
        ConfigError, match=r"^params: sample\.options\.ddim\.etaa: unknown option 'etaa'; allowed: eta$"
    ):
        check_solver_options(cfg("ddim", {"etaa": 0.5}))
