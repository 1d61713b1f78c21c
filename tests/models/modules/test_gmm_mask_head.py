from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from torch import Tensor

from lightly_hmlc.models.modules.gmm_mask_head import (
    EMOptions,
    GMMFeatureMaskHead,
    fit_gaussian_mixture,
)
from tests.two_ranks import run_on_two_ranks

pytestmark = pytest.mark.usefixtures("one_thread")


D = 64
PLANTED = 32  # dims [0, 32) carry the coarse level, [32, 64) the fine level


def planted_batch(
    generator: torch.Generator,
    n: int = 96,
    fine_classes: tuple[int, ...] = tuple(range(12)),
    noise: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """4 coarse x 3 fine classes; coarse dims depend on the coarse label, fine dims on the fine."""
    means = torch.Generator().manual_seed(123)
    coarse_means = 2 * torch.randn(4, PLANTED, generator=means)
    fine_means = 2 * torch.randn(12, D - PLANTED, generator=means)
    choice = torch.tensor(fine_classes)[torch.randint(len(fine_classes), (n,), generator=generator)]
    coarse = choice // 3
    z = noise * torch.randn(n, D, generator=generator)
    z[:, :PLANTED] += coarse_means[coarse]
    z[:, PLANTED:] += fine_means[choice]
    return z, torch.stack([coarse, choice], dim=1)


def feed(head: GMMFeatureMaskHead, steps: int, seed: int = 0, **kwargs: object) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.empty(0)
    for _ in range(steps):
        z, labels = planted_batch(generator, **kwargs)  # type: ignore[arg-type]
        view = z + 0.1 * torch.randn(z.shape, generator=generator)
        masks = head(torch.cat([z, view]), labels.repeat(2, 1))
    return masks


def level_accuracy(masks: Tensor) -> float:
    correct = masks[0, :PLANTED].sum() + masks[1, PLANTED:].sum()
    return float(correct) / D


# --------------------------------------------------------------------------- EM


def mixture_data(seed: int, n: int, k: int, f: int, spread: float) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = spread * torch.randn(k, f, generator=g)
    scales = 0.5 + torch.rand(k, f, f, generator=g)
    assignment = torch.randint(k, (n,), generator=g)
    noise = torch.randn(n, 1, f, generator=g)
    return (noise @ scales[assignment]).squeeze(1) + centers[assignment]


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("k, f, n, spread", [(2, 2, 200, 3.0), (3, 3, 400, 1.5), (4, 2, 300, 1.0)])
def test_em_matches_sklearn_log_likelihood(
    covariance_type: str, k: int, f: int, n: int, spread: float
) -> None:
    from sklearn.mixture import GaussianMixture

    x = mixture_data(seed=k * 10 + f, n=n, k=k, f=f, spread=spread)
    ours = fit_gaussian_mixture(x, k, covariance_type=covariance_type, n_init=3, seed=0)  # type: ignore[arg-type]
    sk = GaussianMixture(k, covariance_type=covariance_type, n_init=3, random_state=0)
    sk.fit(x.double().numpy())
    sk_score = sk.score(x.double().numpy())
    assert float(ours.log_likelihood) >= sk_score - 1e-2
    # Our reported log-likelihood is the true mean log density of the returned parameters.
    assert float(ours.score_samples(x).mean()) == pytest.approx(float(ours.log_likelihood))
    # And sklearn agrees on the density of our parameters.
    sk_ours = GaussianMixture(k, covariance_type=covariance_type)
    sk_ours.weights_ = ours.weights.numpy() / ours.weights.numpy().sum()
    sk_ours.means_ = ours.means.numpy()
    sk_ours.covariances_ = ours.covariances.numpy()
    if covariance_type == "full":
        sk_ours.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(ours.covariances.numpy()))
    else:
        sk_ours.precisions_cholesky_ = 1.0 / np.sqrt(ours.covariances.numpy())
    assert sk_ours.score(x.double().numpy()) == pytest.approx(float(ours.log_likelihood), abs=1e-6)


def test_em_recovers_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-10.0, 0.0], [0.0, 10.0], [10.0, 0.0]])
    x = torch.cat([c + torch.randn(100, 2, generator=g) for c in centers])
    fit = fit_gaussian_mixture(x, 3, seed=1)
    order = fit.means[:, 0].argsort()
    assert torch.allclose(fit.means[order].float(), centers, atol=0.4)
    assert torch.allclose(fit.weights, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(fit.responsibilities.sum(1), torch.ones(300, dtype=torch.float64))
    assert bool(fit.converged)
    assert 1 <= int(fit.n_iter) < 100
    assert fit.covariances.shape == (3, 2, 2)
    assert fit.n_parameters() == 3 * 3 + 3 * 2 + 2


def test_em_is_deterministic_for_a_seed() -> None:
    x = mixture_data(seed=3, n=300, k=4, f=3, spread=1.0)
    a = fit_gaussian_mixture(x, 4, n_init=2, seed=7, init="kmeans++")
    b = fit_gaussian_mixture(x, 4, n_init=2, seed=7, init="kmeans++")
    assert torch.equal(a.means, b.means)
    assert torch.equal(a.responsibilities, b.responsibilities)
    c = fit_gaussian_mixture(x, 4, n_init=1, seed=8, init="random", max_iter=3)
    d = fit_gaussian_mixture(x, 4, n_init=1, seed=9, init="random", max_iter=3)
    assert not torch.equal(c.means, d.means)


def test_em_restarts_keep_the_best() -> None:
    x = mixture_data(seed=5, n=300, k=5, f=2, spread=1.0)
    singles = [
        float(fit_gaussian_mixture(x, 5, n_init=1, seed=s, init="random").log_likelihood)
        for s in range(4)
    ]
    # The batched restarts use other random draws, so compare against a generous bound.
    batched = float(fit_gaussian_mixture(x, 5, n_init=4, seed=0, init="random").log_likelihood)
    assert batched >= min(singles) - 1e-9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": 500}, "n_components"),
        ({"n_components": 2, "covariance_type": "tied"}, "covariance_type"),
        ({"n_components": 2, "init": "foo"}, "init"),
        ({"n_components": 2, "n_init": 0}, "n_init"),
        ({"n_components": 2, "reg_covar": -1.0}, "reg_covar"),
    ],
)
def test_em_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_gaussian_mixture(torch.randn(10, 2), **kwargs)
    with pytest.raises(ValueError, match="shape"):
        fit_gaussian_mixture(torch.randn(10), 2)


# -------------------------------------------------------------------------- head


def test_masks_are_all_ones_before_the_first_fit() -> None:
    head = GMMFeatureMaskHead(2, D, warmup_steps=3, refit_every=2)
    masks = feed(head, 2)
    assert masks.shape == (1, 2, D)
    assert masks.dtype == torch.float32
    assert torch.equal(masks, torch.ones(1, 2, D))
    assert not bool(head.fitted)
    wide = head(torch.randn(4, D, dtype=torch.float64), None)
    assert wide.dtype == torch.float64


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"momentum": 1.0, "em_options": EMOptions(n_init=1)},
    ],
)
def test_planted_dimensions_are_assigned_to_their_level(options: dict) -> None:
    head = GMMFeatureMaskHead(2, D, warmup_steps=4, refit_every=100, nested=False, **options)
    masks = feed(head, 4)
    assert bool(head.fitted)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks.sum(1), torch.ones(1, D))  # a partition of the dimensions
    assert level_accuracy(head.masks) >= 0.95


def test_unfitted_head_is_not_better_than_chance() -> None:
    # Guards the accuracy test: all-ones masks count every dim once for each level.
    head = GMMFeatureMaskHead(2, D, warmup_steps=100)
    feed(head, 2)
    assert level_accuracy(head.masks) == 1.0 and head.masks.sum() == 2 * D
    swapped = head.masks.clone()
    swapped[0, :PLANTED] = 0
    swapped[1, PLANTED:] = 0
    assert level_accuracy(swapped) == 0.0


def test_every_level_keeps_min_dims() -> None:
    # Only 2 dims carry fine information: the fine level still gets min_dims_per_level.
    g = torch.Generator().manual_seed(0)
    head = GMMFeatureMaskHead(2, 32, warmup_steps=2, min_dims_per_level=8, nested=False)
    for _ in range(2):
        fine = torch.randint(6, (64,), generator=g)
        labels = torch.stack([fine // 3, fine], 1)
        z = torch.randn(64, 32, generator=g)
        z[:, :30] += 3 * (labels[:, :1] - 0.5)
        z[:, 30:] += 3 * fine[:, None].float()
        masks = head(z, labels)
    counts = masks[0].sum(1)
    assert counts.min() >= 8
    assert torch.equal(masks.sum(1), torch.ones(1, 32))


def test_min_dims_moves_the_most_responsible_dims() -> None:
    from lightly_hmlc.models.modules._assignment import enforce_min_dims

    level_resp = torch.zeros(10, 3, dtype=torch.float64)
    level_resp[:, 0] = 0.85
    level_resp[4:6, 0] = 0.9  # level 0 keeps its two most responsible dims
    level_resp[:, 1] = torch.linspace(0.0, 0.09, 10)
    level_resp[:, 2] = 0.1 - level_resp[:, 1]
    level = enforce_min_dims(torch.zeros(10, dtype=torch.long), level_resp, 3, 2)
    assert torch.bincount(level, minlength=3).tolist() == [6, 2, 2]
    assert set(torch.nonzero(level == 1).flatten().tolist()) == {8, 9}
    assert set(torch.nonzero(level == 2).flatten().tolist()) == {0, 1}
    assert {4, 5} <= set(torch.nonzero(level == 0).flatten().tolist())
    # Already satisfied: nothing moves.
    unchanged = enforce_min_dims(level, level_resp, 3, 2)
    assert torch.equal(unchanged, level)


def test_refit_schedule() -> None:
    head = GMMFeatureMaskHead(2, D, warmup_steps=3, refit_every=2)
    generator = torch.Generator().manual_seed(0)
    fits = []
    for _ in range(8):
        z, labels = planted_batch(generator)
        head(z, labels)
        fits.append(head.last_fit)
    new_fit_at = [
        i + 1 for i in range(8) if fits[i] is not None and (i == 0 or fits[i] is not fits[i - 1])
    ]
    assert new_fit_at == [3, 5, 7]
    assert int(head.step) == 8
    # Without warm-up the first fit follows the first step.
    eager = GMMFeatureMaskHead(2, D, warmup_steps=0, refit_every=50)
    eager(*planted_batch(generator))
    assert bool(eager.fitted)


def test_eval_mode_and_missing_labels_change_nothing() -> None:
    head = GMMFeatureMaskHead(2, D, warmup_steps=1, refit_every=1)
    feed(head, 1)
    state = {k: v.clone() for k, v in head.state_dict().items() if isinstance(v, Tensor)}
    head.eval()
    feed(head, 3, seed=1)
    head.train()
    head(torch.randn(8, D), None)
    for key, value in head.state_dict().items():
        if isinstance(value, Tensor):
            torch.testing.assert_close(value, state[key], rtol=0, atol=0, equal_nan=True, msg=key)
    assert head.statistics.get_extra_state()["class_count"].sum() == 0


def test_a_call_under_inference_mode_is_evaluation_and_training_goes_on() -> None:
    # A train-mode call under torch.inference_mode() (e.g. a sanity check) used to store
    # inference tensors, and the next training step failed with PyTorch's "Inplace
    # update to inference tensor outside InferenceMode".
    head = GMMFeatureMaskHead(2, D, warmup_steps=2, refit_every=2)
    untouched = GMMFeatureMaskHead(2, D, warmup_steps=2, refit_every=2)
    with torch.inference_mode():
        assert torch.equal(feed(head, 1, seed=1), torch.ones(1, 2, D))
    # Training goes on as if that call had not happened.
    torch.testing.assert_close(feed(head, 4), feed(untouched, 4), rtol=0, atol=0)
    assert bool(head.fitted) and int(head.step) == 4
    torch.testing.assert_close(head.descriptors, untouched.descriptors, rtol=0, atol=0)
    before = head.statistics.get_extra_state()
    with torch.inference_mode():  # also after a fit: nothing changes
        feed(head, 2, seed=2)
    assert int(head.step) == 4
    after = head.statistics.get_extra_state()
    assert all(torch.equal(after[key], value) for key, value in before.items())


def test_masks_carry_no_gradient() -> None:
    head = GMMFeatureMaskHead(2, D, warmup_steps=1, nested=False)
    z, labels = planted_batch(torch.Generator().manual_seed(0))
    z.requires_grad_(True)
    masks = head(z, labels)
    assert not masks.requires_grad
    assert head.regularization(masks).item() == 0.0
    # The returned masks are a copy: refits never change tensors saved for backward.
    masks.zero_()
    assert head.masks.sum() == D


def test_statistics_ignore_unknown_labels_and_key_on_prefixes() -> None:
    head = GMMFeatureMaskHead(
        2, 4, momentum=1.0, warmup_steps=1000, max_classes_per_level=8, normalize_input=False
    )
    z = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    # Fine label 0 appears under coarse 0 and coarse 1: two different classes.
    labels = torch.tensor([[0, 0], [1, 0], [1, -1], [-1, 3], [0, 0]])
    head(z, labels)
    head.statistics.merge()
    assert head.num_classes.tolist() == [2, 2]
    assert head.class_keys[0, :2].tolist() == [[0, -1], [1, -1]]
    assert head.class_keys[1, :2].tolist() == [[0, 0], [1, 0]]
    assert head.class_count[0, :2].tolist() == [2.0, 2.0]
    assert head.class_count[1, :2].tolist() == [2.0, 1.0]
    assert torch.equal(head.class_sum[1, 0].float(), z[0] + z[4])
    assert torch.equal(head.level_sumsq[1].float(), (z[[0, 1, 4]] ** 2).sum(0))


def test_statistics_match_a_direct_group_by() -> None:
    g = torch.Generator().manual_seed(0)
    head = GMMFeatureMaskHead(
        3, 4, momentum=1.0, warmup_steps=1000, max_classes_per_level=64, normalize_input=False
    )
    batches = []
    for _ in range(3):
        labels = torch.randint(3, (40, 3), generator=g)
        labels[torch.rand(40, 3, generator=g) < 0.15] = -1
        batches.append((torch.randn(40, 4, generator=g), labels))
        head(*batches[-1])
    head.statistics.merge()
    z = torch.cat([b[0] for b in batches]).double()
    labels = torch.cat([b[1] for b in batches])
    for level in range(3):
        valid = (labels[:, : level + 1] >= 0).all(1)
        expected: dict[tuple[int, ...], tuple[int, Tensor]] = {}
        for row, x in zip(labels[valid, : level + 1].tolist(), z[valid], strict=True):
            count, total = expected.get(tuple(row), (0, 0))
            expected[tuple(row)] = (count + 1, total + x)
        n = int(head.num_classes[level])
        keys = [tuple(k[: level + 1]) for k in head.class_keys[level, :n].tolist()]
        assert keys == sorted(expected)
        assert (head.class_keys[level, :n, level + 1 :] == -1).all()
        for slot, key in enumerate(keys):
            assert head.class_count[level, slot].item() == expected[key][0]
            torch.testing.assert_close(head.class_sum[level, slot], expected[key][1])
        torch.testing.assert_close(head.level_sumsq[level], (z[valid] ** 2).sum(0))


def test_statistics_decay_with_momentum() -> None:
    head = GMMFeatureMaskHead(1, 4, momentum=0.5, warmup_steps=1000)
    labels = torch.zeros(2, 1, dtype=torch.long)
    head(torch.ones(2, 4), labels)
    head(torch.ones(2, 4), labels)
    head.statistics.merge()
    head(torch.ones(2, 4), labels)
    head.statistics.merge()
    assert head.class_count[0, 0].item() == pytest.approx(2 * 0.25 + 2 * 0.5 + 2)


def test_lazy_decay_stays_finite_over_long_runs() -> None:
    # 0.1 ** -320 overflows float64: the lazy weights must be renormalised on the way.
    head = GMMFeatureMaskHead(1, 4, momentum=0.1, warmup_steps=10**6, normalize_input=False)
    labels = torch.zeros(2, 1, dtype=torch.long)
    for _ in range(320):
        head(torch.ones(2, 4), labels)
    head.statistics.merge()
    expected = 2 / (1 - 0.1)  # 2 samples per step, geometric decay
    assert head.class_count[0, 0].item() == pytest.approx(expected)
    torch.testing.assert_close(
        head.class_sum[0, 0], torch.full((4,), expected, dtype=torch.float64)
    )


@pytest.mark.parametrize("relevance", ["conditional"])
def test_descriptors_are_log_fisher_ratios(relevance: Literal["conditional", "marginal"]) -> None:
    g = torch.Generator().manual_seed(0)
    fine = torch.randint(6, (200,), generator=g)
    labels = torch.stack([fine // 3, fine], 1)
    z = torch.randn(200, 5, generator=g) + fine[:, None] * torch.rand(5, generator=g)
    head = GMMFeatureMaskHead(
        2,
        5,
        momentum=1.0,
        warmup_steps=10,
        normalize_input=False,
    )
    head(z[:100], labels[:100])
    head(z[100:], labels[100:])
    head.statistics.merge()
    got = head.compute_descriptors()
    x = z.double().numpy()
    for level in range(2):
        classes = labels[:, level].numpy()
        parents = (
            labels[:, level - 1].numpy() if (level > 0 and relevance == "conditional") else None
        )
        between = np.zeros(5)
        within = np.zeros(5)
        for c in np.unique(classes):
            members = x[classes == c]
            center = (
                x[parents == parents[classes == c][0]].mean(0) if parents is not None else x.mean(0)
            )
            between += len(members) * (members.mean(0) - center) ** 2
            within += ((members - members.mean(0)) ** 2).sum(0)
        expected = np.log(np.clip(between / within, 1e-6, 1e6))
        np.testing.assert_allclose(got[:, level].numpy(), expected, rtol=1e-8, atol=1e-8)


def test_capacity_error_tells_the_user_to_raise_it() -> None:
    head = GMMFeatureMaskHead(2, 8, max_classes_per_level=3, warmup_steps=1)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
    with pytest.raises(ValueError, match="Raise max_classes_per_level"):
        head(torch.randn(4, 8), labels)
    ok = GMMFeatureMaskHead(2, 8, max_classes_per_level=4, warmup_steps=1, refit_every=1)
    ok(torch.randn(4, 8), labels)
    # Union over steps counts too: 2 new fine classes exceed the capacity.
    with pytest.raises(ValueError, match="max_classes_per_level=4"):
        ok(torch.randn(2, 8), torch.tensor([[2, 4], [2, 5]]))


def test_refit_without_statistics_raises() -> None:
    head = GMMFeatureMaskHead(2, 8)
    with pytest.raises(RuntimeError, match="training mode with labels"):
        head.refit()
    head(torch.randn(2, 8), torch.full((2, 2), -1))
    with pytest.raises(RuntimeError, match="labels"):
        head.refit()


def test_explicit_refit_and_determinism() -> None:
    heads = [
        GMMFeatureMaskHead(2, D, warmup_steps=1000, em_options=EMOptions(seed=3)) for _ in range(2)
    ]
    for head in heads:
        feed(head, 3, noise=2.0)
    first = heads[0].refit()
    assert torch.equal(first, heads[0].masks)
    assert torch.equal(first, heads[1].refit())
    assert torch.equal(heads[0].last_fit.means, heads[1].last_fit.means)  # type: ignore[union-attr]
    assert level_accuracy(first) >= 0.95


@pytest.mark.parametrize("saved_nested", [False, True])
def test_a_checkpoint_of_the_other_mask_form_is_refused(saved_nested: bool) -> None:
    # The default moved from partitions to nested masks: resuming a checkpoint with the
    # other form would switch form at the next refit, silently.
    head = GMMFeatureMaskHead(2, D, warmup_steps=2, nested=saved_nested)
    feed(head, 2)
    assert bool(head.fitted)
    other = GMMFeatureMaskHead(2, D, warmup_steps=2, nested=not saved_nested)
    with pytest.raises(ValueError, match=f"nested={saved_nested}"):
        other.load_state_dict(head.state_dict())
    same = GMMFeatureMaskHead(2, D, warmup_steps=2, nested=saved_nested)
    same.load_state_dict(head.state_dict())
    assert torch.equal(same.masks, head.masks)
    # An unfitted head's all-ones masks fit either form.
    GMMFeatureMaskHead(2, D, nested=not saved_nested).load_state_dict(
        GMMFeatureMaskHead(2, D, nested=saved_nested).state_dict()
    )


def test_state_dict_round_trip() -> None:
    head = GMMFeatureMaskHead(2, D, warmup_steps=2, refit_every=3, momentum=0.9)
    feed(head, 4)  # fit at step 2, pending statistics from steps 3 and 4
    state = head.state_dict()
    restored = GMMFeatureMaskHead(2, D, warmup_steps=2, refit_every=3, momentum=0.9)
    restored.load_state_dict(state)
    assert int(restored.step) == 4 and restored._host_step == 4
    assert bool(restored.fitted)
    z = torch.randn(3, D)
    assert torch.equal(restored(z), head(z))
    # Continuing both gives the same next fit (at step 5), pending statistics included.
    generator = torch.Generator().manual_seed(9)
    z, labels = planted_batch(generator, noise=3.0)
    torch.testing.assert_close(restored(z, labels), head(z, labels))
    torch.testing.assert_close(restored.descriptors, head.descriptors)
    assert int(restored.step) == 5


def test_half_precision_keeps_float64_statistics() -> None:
    head = GMMFeatureMaskHead(2, D, warmup_steps=2).half()
    assert head.class_sum.dtype == torch.float64
    assert head.masks.dtype == torch.float16
    masks = feed(head, 2)
    assert masks.dtype == torch.float32
    assert level_accuracy(head.masks.float()) >= 0.95


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_levels": 0, "dim": 8}, "num_levels"),
        ({"num_levels": 2, "dim": 0}, "dim"),
        ({"num_levels": 3, "dim": 8, "min_dims_per_level": 3}, "min_dims_per_level"),
        ({"num_levels": 2, "dim": 8, "momentum": 0.0}, "momentum"),
        ({"num_levels": 2, "dim": 8, "refit_every": 0}, "refit_every"),
        ({"num_levels": 2, "dim": 8, "max_classes_per_level": 1}, "max_classes_per_level"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GMMFeatureMaskHead(**kwargs)


@pytest.mark.parametrize(
    "z, labels, match",
    [
        (torch.randn(4), None, r"shape \[B, D\]"),
        (torch.randn(4, 7), None, "D=8"),
        (torch.randint(3, (4, 8)), None, "floating"),
        (torch.randn(4, 8), torch.zeros(4, 2), "integer"),
        (torch.randn(4, 8), torch.zeros(4, 3, dtype=torch.long), "L=2"),
        (torch.randn(4, 8), torch.zeros(2, 2, dtype=torch.long), "same batch size"),
    ],
)
def test_forward_rejects_bad_input(z: Tensor, labels: Tensor | None, match: str) -> None:
    head = GMMFeatureMaskHead(2, 8)
    with pytest.raises(ValueError, match=match):
        head(z, labels)


# ------------------------------------------------------------------- distributed


# Rank 0 only sees coarse classes 0-1, rank 1 only coarse classes 2-3.
_RANK_CLASSES = (tuple(range(6)), tuple(range(6, 12)))
_HEAD_KWARGS = {"warmup_steps": 3, "refit_every": 2, "momentum": 0.9}


def _rank_batches(rank: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(100 + rank)
    return [planted_batch(generator, n=48, fine_classes=_RANK_CLASSES[rank]) for _ in range(4)]


def _rank_state(rank: int) -> dict[str, Tensor]:
    head = GMMFeatureMaskHead(2, D, **_HEAD_KWARGS)  # type: ignore[arg-type]
    for z, labels in _rank_batches(rank):
        head(z, labels)
    return {
        k.removeprefix("statistics."): v
        for k, v in head.state_dict().items()
        if not k.endswith("_extra_state")
    }


@pytest.mark.distributed
def test_two_gloo_ranks_fit_identical_masks_on_the_union(tmp_path: Path) -> None:
    states = run_on_two_ranks(_rank_state, tmp_path)

    # One process fed the union of both ranks' batches; its only fit is at step 3 too.
    single = GMMFeatureMaskHead(2, D, **_HEAD_KWARGS)  # type: ignore[arg-type]
    for (z0, y0), (z1, y1) in list(zip(_rank_batches(0), _rank_batches(1), strict=True))[:3]:
        single(torch.cat([z0, z1]), torch.cat([y0, y1]))

    assert int(states[0]["step"]) == int(states[1]["step"]) == 4
    for name in ("masks", "descriptors", "class_keys", "class_count", "class_sum"):
        assert torch.equal(states[0][name], states[1][name]), name
    # Both ranks know all 4 coarse and 12 fine classes although each saw half of them.
    assert states[0]["num_classes"].tolist() == [4, 12]
    assert torch.equal(states[0]["masks"], single.masks)
    assert torch.equal(states[0]["class_keys"], single.class_keys)
    torch.testing.assert_close(states[0]["descriptors"], single.descriptors)
    # The merged statistics are those of the refit at step 3; step 4 waits in the pending
    # table (and its decay is applied at the next merge).
    torch.testing.assert_close(states[0]["class_count"], single.class_count)
    torch.testing.assert_close(states[0]["class_sum"], single.class_sum)
    torch.testing.assert_close(states[0]["level_sumsq"], single.level_sumsq)
    assert level_accuracy(states[0]["masks"]) >= 0.95


def test_casting_the_model_keeps_float64_statistics_exact() -> None:
    head = GMMFeatureMaskHead(num_levels=2, dim=16, momentum=1.0)
    head.class_count[0, 0] = 70000.0  # beyond float16's range
    head.class_sum[0, 0, 0] = 1.0 + 2.0**-30  # below bfloat16's precision
    head.half()
    assert head.class_count.dtype == torch.float64
    assert head.class_count[0, 0].item() == 70000.0
    assert head.class_sum[0, 0, 0].item() == 1.0 + 2.0**-30
    head.to(torch.bfloat16)
    assert head.class_sum[0, 0, 0].item() == 1.0 + 2.0**-30


# ---------------------------------------------------------------- the split parts


def _greedy_matching(component_means: Tensor) -> Tensor:
    """The matching used before linear_sum_assignment (above 8 levels): largest entry first."""
    scores = component_means.clone()
    levels = scores.shape[1]
    result = torch.empty(levels, dtype=torch.long)
    for _ in range(levels):
        comp, lev = divmod(int(scores.argmax()), levels)
        result[lev] = comp
        scores[comp, :] = -float("inf")
        scores[:, lev] = -float("inf")
    return result


def _total(component_means: Tensor, level_to_component: Tensor) -> float:
    levels = torch.arange(component_means.shape[1])
    return float(component_means[level_to_component, levels].sum())


def test_matching_is_exact_for_nine_levels_where_greedy_was_not() -> None:
    from lightly_hmlc.models.modules._assignment import match_components

    means = torch.eye(9, dtype=torch.float64)
    means[0, 0], means[0, 1], means[1, 0], means[1, 1] = 10.0, 9.0, 9.0, 0.0
    greedy = _greedy_matching(means)
    exact = match_components(means)
    assert _total(means, greedy) == 10.0 + 7  # took (0, 0) first, then (1, 1) = 0
    assert _total(means, exact) == 18.0 + 7  # (0, 1) and (1, 0), the rest on the diagonal
    assert sorted(exact.tolist()) == list(range(9))  # a permutation


@pytest.mark.parametrize("levels", [2, 3, 4, 5, 6])
def test_matching_equals_brute_force_on_random_costs(levels: int) -> None:
    import itertools

    from lightly_hmlc.models.modules._assignment import match_components

    g = torch.Generator().manual_seed(levels)
    for _ in range(5):
        means = torch.randn(levels, levels, generator=g, dtype=torch.float64)
        best = max(
            _total(means, torch.tensor(perm)) for perm in itertools.permutations(range(levels))
        )
        assert _total(means, match_components(means)) == pytest.approx(best, abs=1e-12)


def test_checkpoints_from_before_the_split_still_load() -> None:
    head = GMMFeatureMaskHead(2, D, warmup_steps=2, refit_every=3, momentum=0.9)
    feed(head, 4)
    legacy = {key.removeprefix("statistics."): value for key, value in head.state_dict().items()}
    assert "class_sum" in legacy and "_extra_state" in legacy
    restored = GMMFeatureMaskHead(2, D, warmup_steps=2, refit_every=3, momentum=0.9)
    restored.load_state_dict(legacy)  # strict: no missing or unexpected key
    for key, value in head.state_dict().items():
        if isinstance(value, Tensor):
            torch.testing.assert_close(restored.state_dict()[key], value, equal_nan=True)
    assert restored.statistics._since_merge == head.statistics._since_merge == 2
    z, labels = planted_batch(torch.Generator().manual_seed(9))
    torch.testing.assert_close(restored(z, labels), head(z, labels))
    torch.testing.assert_close(restored.class_sum, head.class_sum)


def test_normalize_input_gives_the_statistics_of_unit_vectors() -> None:
    # In the chain the head sees raw projections; before, the loss fed it normalised ones.
    raw = GMMFeatureMaskHead(2, D, warmup_steps=3, momentum=0.9)
    fed_unit = GMMFeatureMaskHead(2, D, warmup_steps=3, momentum=0.9, normalize_input=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        z, labels = planted_batch(generator)
        z = z * (1 + 10 * torch.rand(z.shape[0], 1, generator=generator))  # uneven norms
        raw(z, labels)
        fed_unit(torch.nn.functional.normalize(z, dim=1), labels)
    assert bool(raw.fitted) and bool(fed_unit.fitted)
    torch.testing.assert_close(raw.class_sum, fed_unit.class_sum, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(raw.level_sumsq, fed_unit.level_sumsq, rtol=1e-6, atol=1e-7)
    assert torch.equal(raw.masks, fed_unit.masks)
    assert level_accuracy(raw.masks) >= 0.95
    # Row norms reach the per-class sums of squares: unit rows give sumsq == count per level.
    total = raw.class_count[1, : int(raw.num_classes[1])].sum()
    torch.testing.assert_close(raw.level_sumsq[1].sum(), total)


def test_without_normalize_input_the_scale_of_z_counts() -> None:
    heads = [
        GMMFeatureMaskHead(1, 4, momentum=1.0, warmup_steps=10, normalize_input=n)
        for n in (True, False)
    ]
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(6, 1, dtype=torch.long)
    for head in heads:
        head(z, labels)
        head(5 * z, labels)
        head.statistics.merge()
    unit = torch.nn.functional.normalize(z.double(), dim=1)
    torch.testing.assert_close(heads[0].class_sum[0, 0], 2 * unit.sum(0))
    torch.testing.assert_close(heads[1].class_sum[0, 0], 6 * z.double().sum(0))


@pytest.mark.parametrize("assignment", ["argmax"])
def test_nested_masks_are_the_coarse_to_fine_union_of_the_partition(assignment: str) -> None:
    flat = GMMFeatureMaskHead(3, D, warmup_steps=3, nested=False)
    nested = GMMFeatureMaskHead(3, D, warmup_steps=3, nested=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        z, labels = planted_batch(generator, noise=2.0)
        labels = torch.cat([labels[:, :1] // 2, labels], 1)  # 2 > 4 > 12 classes
        flat(z, labels)
        nested(z, labels)
    assert torch.equal(nested.masks[0], flat.masks[0])  # the coarsest: only its own dims
    assert torch.equal(nested.masks[1], torch.maximum(flat.masks[0], flat.masks[1]))
    assert torch.equal(nested.masks[2], flat.masks.amax(0))
    if assignment == "argmax":
        assert torch.equal(nested.masks[2], torch.ones(D))  # the finest sees every dim
        assert (nested.masks.sum(1).diff() > 0).all()  # each finer level adds dims
    assert torch.equal(nested(z), nested.masks.unsqueeze(0))
