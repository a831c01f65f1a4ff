"""Classifier-free guidance on the class-conditional mixture oracle, and the conditional metrics.

The oracle's conditional denoiser is exact, so what is measured is guidance itself (and solver
error): w = 0 is unconditional sampling, w = 1 is sampling the class's own sub-mixture, and the
Bayes classifier's accuracy on the requested class rises with w.
"""

import functools
import math

import pytest
import torch

from difflab import solvers as S
from difflab.data.toy import GaussianMixture
from difflab.metrics.conditional import (
    class_accuracy,
    classifier_ceiling,
    precision_recall,
    wilson_interval,
)
from difflab.parametrization import guided
from difflab.sampling import sample_generators
from difflab.schedules import get_schedule

F64 = torch.float64
SOLVER_STEPS = {
    "ddim": 40,
    "dpm_solver_2m": 20,
    "ddpm": 100,
}  # two ODE solvers and one stochastic (at 60 steps its bias shows)
SCALES = (0.0, 1.0, 2.0, 4.0)
N = 600  # 200 samples of each class
SEED = 3


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (zero iff equal laws)."""
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()


MEANS = torch.tensor([[-1.2, 0.0], [0.0, 1.2], [1.2, 0.0], [0.0, -1.2], [0.9, 0.9]], dtype=F64)
STDS = torch.tensor([0.55, 0.55, 0.55, 0.55, 0.4], dtype=F64)
WEIGHTS = torch.tensor([0.25, 0.15, 0.25, 0.2, 0.15], dtype=F64)
COMPONENT_LABELS = torch.tensor([0, 0, 1, 2, 2])  # classes of 2, 1 and 2 components, overlapping


def mixture() -> GaussianMixture:
    return GaussianMixture(MEANS, STDS, WEIGHTS, labels=COMPONENT_LABELS)


def class_mixture(c: int) -> GaussianMixture:
    """Class ``c``'s components as a mixture of their own: what w = 1 must sample."""
    own = COMPONENT_LABELS == c
    return GaussianMixture(MEANS[own], STDS[own], WEIGHTS[own])


SCHEDULE = get_schedule("vp_cosine")
LABELS = torch.arange(N) % 3


def run(solver: str, denoiser, rows: torch.Tensor, cond) -> torch.Tensor:
    """Samples of the rows ``rows`` of the fixed experiment: row i's noise and (for a stochastic
    solver) its generator depend on i alone, so a subset of rows reproduces the full run's."""
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(SEED), dtype=F64)[rows]
    gens = sample_generators(SEED, rows.tolist()) if S.get_spec(solver).stochastic else None
    return S.get_solver(solver)(
        denoiser, SCHEDULE, noise, SOLVER_STEPS[solver], grid="logsnr", generator=gens, cond=cond
    )


@functools.cache
def guided_samples(solver: str, scale: float) -> torch.Tensor:
    gm = mixture()
    return run(solver, guided(gm.denoiser(SCHEDULE), scale, gm.null_label), torch.arange(N), LABELS)


@pytest.mark.parametrize("solver", SOLVER_STEPS)
def test_guidance_zero_is_unconditional_sampling(solver):
    """D_u + 0 (D_c - D_u) = D_u: the same samples as the unconditional oracle, to 1e-12."""
    gm = mixture()
    D = gm.denoiser(SCHEDULE)
    rows = torch.arange(N)
    for uncond in (run(solver, D, rows, None), run(solver, D, rows, torch.full((N,), gm.null_label))):
        err = (guided_samples(solver, 0.0) - uncond).abs().max().item()
        assert err <= 1e-12, err
    # and the unlabelled mixture of the same components is the same unconditional oracle
    plain = GaussianMixture(MEANS, STDS, WEIGHTS).denoiser(SCHEDULE)
    assert (run(solver, plain, rows, None) - guided_samples(solver, 0.0)).abs().max().item() <= 1e-12


@pytest.mark.parametrize("solver", SOLVER_STEPS)
def test_guidance_one_samples_the_class_sub_mixture(solver):
    """w = 1: each row follows class c's own sub-mixture oracle from the same noise (to 1e-10),
    and the samples of class c are as close to fresh draws of class c as fresh draws are."""
    gm = mixture()
    x = guided_samples(solver, 1.0)
    for c in range(3):
        rows = torch.nonzero(LABELS == c)[:, 0]
        own = run(solver, class_mixture(c).denoiser(SCHEDULE), rows, None)
        err = (x[rows] - own).abs().max().item()
        assert err <= 1e-10, (c, err)
        fresh = gm.sample(2000, torch.Generator().manual_seed(100 + c), labels=c)
        true_vs_true = [
            energy_distance(
                gm.sample(len(rows), torch.Generator().manual_seed(200 + 10 * c + r), labels=c), fresh
            )
            for r in range(10)
        ]
        ed = energy_distance(x[rows], fresh)
        others = [
            energy_distance(x[rows], gm.sample(2000, torch.Generator().manual_seed(1), labels=o))
            for o in range(3)
            if o != c
        ]
        assert ed < 2 * max(true_vs_true), (c, ed, true_vs_true)
        assert min(others) > 10 * max(true_vs_true), (c, others)


@pytest.mark.parametrize("solver", SOLVER_STEPS)
def test_class_accuracy_rises_with_guidance(solver):
    """Bayes-classifier accuracy on the requested class: about 1/3 at w = 0 (samples ignore the
    request), the balanced Bayes accuracy at w = 1, rising strictly through w = 2 and 4."""
    gm = mixture()
    acc = {w: class_accuracy(gm.class_log_posterior(guided_samples(solver, w)), LABELS) for w in SCALES}
    a = [acc[w]["accuracy"] for w in SCALES]
    assert all(lo < hi for lo, hi in zip(a, a[1:])), a
    assert acc[0.0]["accuracy_lo"] < 1 / 3 < acc[0.0]["accuracy_hi"], acc[0.0]
    # the exact target at w = 1: E_c P(argmax p(.|x) = c | x ~ p(x | c)) with classes balanced
    M = 300_000
    y = torch.arange(M) % 3
    bayes = class_accuracy(
        gm.class_log_posterior(gm.sample(M, torch.Generator().manual_seed(7), labels=y)), y
    )
    assert acc[1.0]["accuracy_lo"] < bayes["accuracy"] < acc[1.0]["accuracy_hi"], (acc[1.0], bayes)
    # the first two steps are far beyond the sampling noise
    assert (
        acc[0.0]["accuracy_hi"] < acc[1.0]["accuracy_lo"]
        and acc[1.0]["accuracy_hi"] < acc[2.0]["accuracy_lo"]
    )
    assert a[-1] > 0.97
    print(solver, {w: round(v, 4) for w, v in zip(SCALES, a)}, "bayes", round(bayes["accuracy"], 4))


# -- class_accuracy ------------------------------------------------------------------------------
def test_wilson_interval_known_values():
    from scipy.stats import binomtest

    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    for x, n in ((8, 10), (0, 10), (10, 10), (1, 3), (517, 600), (3, 1000)):
        ref = binomtest(x, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(x, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    for bad in ((11, 10), (-1, 10), (1.5, 10), (0, 0), (True, 10)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_class_accuracy_from_logits_and_predictions():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    predictions = labels.clone()
    predictions[[1, 4]] = 0  # 8 of 10 right
    logits = torch.nn.functional.one_hot(predictions, 3).double() * 5 - 1
    for out in (class_accuracy(logits, labels), class_accuracy(predictions, labels, num_classes=3)):
        assert out["accuracy"] == 0.8 and out["accuracy_count"] == 8 and out["n"] == 10
        assert (round(out["accuracy_lo"], 4), round(out["accuracy_hi"], 4)) == (0.4902, 0.9433)
    assert class_accuracy(predictions, labels) == class_accuracy(logits, labels)
    assert classifier_ceiling(logits, labels) == class_accuracy(logits, labels)


def test_class_accuracy_bad_input():
    labels = torch.tensor([0, 1, 2])
    logits = torch.zeros(3, 3)
    cases = [
        (torch.zeros(4, 3), labels, "agree"),  # shape mismatch
        (torch.zeros(3), labels, "integer"),  # float predictions
        (logits, torch.tensor([0, 1, 3]), "out of range|allowed 0..2"),  # the null label is no class
        (logits, torch.tensor([0, -1, 2]), "allowed 0..2"),
        (torch.tensor([0, 1, 5]), labels, "allowed 0..2"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "no samples"),
        (logits, labels.double(), "integer"),
        (torch.full((3, 3), float("nan")), labels, "finite"),
    ]
    for scores, lab, match in cases:
        with pytest.raises(ValueError, match=match):
            class_accuracy(scores, lab, num_classes=3 if scores.ndim == 1 else None)
    with pytest.raises(ValueError, match="num_classes"):
        class_accuracy(logits, labels, num_classes=4)


# -- precision / recall --------------------------------------------------------------------------
def features(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)) + shift


def test_precision_recall_same_and_shifted_distribution():
    ref = features(600, 0)
    same = precision_recall(features(500, 1), ref)
    shifted = precision_recall(features(500, 2, shift=1.0), ref)
    assert same["precision"] > 0.85 and same["recall"] > 0.85, same
    assert shifted["precision"] < same["precision_lo"] and shifted["recall"] < same["recall_lo"], shifted
    for out in (same, shifted):
        assert out["n_generated"] == 500 and out["n_reference"] == 600 and out["k"] == 3
        assert out["precision_count"] == round(out["precision"] * 500)
        assert out["precision_lo"] < out["precision"] < out["precision_hi"]
        assert (out["recall_lo"], out["recall_hi"]) == wilson_interval(out["recall_count"], 600)
    # a sample set is entirely inside its own manifold
    own = precision_recall(ref, ref)
    assert own["precision"] == 1.0 and own["recall"] == 1.0 and own["precision_hi"] == 1.0


def test_precision_recall_equals_torch_fidelity_calculate_metrics():
    """The same numbers as ``torch_fidelity.calculate_metrics(prc=True)`` fed the features through
    an identity feature extractor, for the default k and another one."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    class IdentityFeatures(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)

        def forward(self, x):
            return (x,)

        @staticmethod
        def get_provided_features_list():
            return ("features",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "features"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 8)

    class Rows(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    name = "difflab-test-identity"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, IdentityFeatures)
    gen, ref = features(300, 3, shift=0.4), features(400, 4)
    for k, save_cpu_ram in ((3, False), (5, True)):
        tf = torch_fidelity.calculate_metrics(
            input1=Rows(gen),
            input2=Rows(ref),
            feature_extractor=name,
            prc=True,
            prc_neighborhood=k,
            cuda=False,
            cache=False,
            save_cpu_ram=True,
            verbose=False,
            batch_size=128,
        )
        ours = precision_recall(gen, ref, k=k, save_cpu_ram=save_cpu_ram)
        assert ours["precision"] == tf["precision"] and ours["recall"] == tf["recall"], (ours, tf)
        assert ours["f_score"] == pytest.approx(tf["f_score"], abs=1e-12)
        assert 0.2 < ours["precision"] < 0.95  # not a degenerate comparison


def test_precision_recall_bad_input():
    ref = features(50, 0)
    cases = [
        (features(50, 1)[:, :4], ref, {}, "feature dimension"),
        (features(3, 1), ref, {}, "at least 4"),
        (torch.zeros(0, 8), ref, {}, "at least"),
        (features(50, 1)[:, 0], ref, {}, r"\[n, F\]"),
        (features(50, 1).long(), ref, {}, "floating-point"),
        (features(50, 1) * float("nan"), ref, {}, "finite"),
        (features(50, 1), ref, {"k": 0}, "k=0"),
    ]
    for gen, r, kw, match in cases:
        with pytest.raises(ValueError, match=match):
            precision_recall(gen, r, **kw)


def test_one_guided_call_evaluates_both_branches():
    """Guidance costs one batched call of twice the rows (the null label's rows second)."""
    gm = mixture()
    seen = []
    D = gm.denoiser(SCHEDULE)

    def spy(x, t, cond=None):
        seen.append(cond.clone())
        return D(x, t, cond)

    x = torch.randn(6, 2, dtype=F64)
    t = torch.full((6,), 0.5, dtype=F64)
    out = guided(spy, 2.5, gm.null_label)(x, t, LABELS[:6])
    assert len(seen) == 1 and torch.equal(seen[0][6:], torch.full((6,), 3))
    expected = D(x, t, None) + 2.5 * (D(x, t, LABELS[:6]) - D(x, t, None))
    assert torch.allclose(out, expected, rtol=0, atol=1e-14)
    assert math.isfinite(out.sum().item())
