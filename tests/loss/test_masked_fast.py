"""The fast masked level terms equal the general path (values and gradients)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.loss import HMLCLoss, _masked_fast, hmlc
from lightly_hmlc.loss._features import apply_masks, normalize_features
from lightly_hmlc.loss._hce import pair_constrained_level_losses
from lightly_hmlc.loss._levels import anchor_level_losses, build_level_groups
from lightly_hmlc.loss._masked_fast import masked_level_losses, shared_mask_dims
from tests.loss import naive

BATCH, DIM, LEVELS = 10, 7, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _masks(kind: str, rows: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    if kind == "partition":
        level = torch.randint(0, LEVELS, (DIM,), generator=generator)
        level[:LEVELS] = torch.arange(LEVELS)  # every level owns a dimension
        return F.one_hot(level, LEVELS).t().to(dtype).unsqueeze(0)
    if kind == "partition_empty_level":  # level 1 owns nothing
        level = torch.tensor([0, 2, 0, 2, 2, 0, 0])
        return F.one_hot(level, LEVELS).t().to(dtype).unsqueeze(0)
    if kind == "nested":  # G-HMLC's default: level h sees the dims of levels 0..h
        level = torch.randint(0, LEVELS, (DIM,), generator=generator)
        level[:LEVELS] = torch.arange(LEVELS)
        own = F.one_hot(level, LEVELS).t().to(dtype)
        return own.cumsum(dim=0).unsqueeze(0)
    if kind == "overlapping":  # threshold assignment: a dimension may serve several levels
        masks = (torch.rand(1, LEVELS, DIM, generator=generator) > 0.4).to(dtype)
        masks[0, :, 0] = 1.0
        return masks
    if kind == "soft_shared":
        return torch.rand(1, LEVELS, DIM, generator=generator, dtype=dtype)
    if kind == "hard_per_row":
        return (torch.rand(rows, LEVELS, DIM, generator=generator) > 0.5).to(dtype)
    return torch.rand(rows, LEVELS, DIM, generator=generator, dtype=dtype)  # soft per row


def _general(
    anchors: Tensor,
    contrast: Tensor,
    index: Tensor,
    labels: Tensor,
    t: float,
    ma: Tensor,
    mc: Tensor,
) -> tuple[Tensor, Tensor]:
    level_a = F.normalize(anchors.unsqueeze(1) * ma, dim=2)
    level_c = level_a if anchors is contrast else F.normalize(contrast.unsqueeze(1) * mc, dim=2)
    return anchor_level_losses(level_a, level_c, index, build_level_groups(labels), t)


def _fast(
    anchors: Tensor,
    contrast: Tensor,
    index: Tensor,
    labels: Tensor,
    t: float,
    ma: Tensor,
    mc: Tensor,
) -> tuple[Tensor, Tensor]:
    return masked_level_losses(anchors, contrast, index, build_level_groups(labels), t, ma, mc)


def _run(
    compute: object, kind: str, temperature: float, dtype: torch.dtype, extra_rows: int, seed: int
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Per-anchor terms and gradients (of a random weighting) w.r.t. z and trainable masks."""
    generator = torch.Generator().manual_seed(seed)
    rows = 2 * BATCH
    z = torch.randn(rows + extra_rows, DIM, generator=generator, dtype=dtype, requires_grad=True)
    labels = naive.random_tree_labels(BATCH + extra_rows, [2, 2, 3], generator, unknown=0.3)
    labels = torch.cat([labels[:BATCH].repeat(2, 1), labels[BATCH:]])
    masks = _masks(kind, rows + extra_rows, generator, dtype)
    trainable = kind.startswith("soft")
    masks.requires_grad_(trainable)
    unit = F.normalize(z, dim=1)
    index = torch.arange(rows)
    if extra_rows:  # memory rows: contrast rows that are never anchors
        anchors = unit[:rows]
        anchor_masks = masks if masks.shape[0] == 1 else masks[:rows]
        loss, is_anchor = compute(anchors, unit, index, labels, temperature, anchor_masks, masks)  # type: ignore[operator]
    else:
        loss, is_anchor = compute(unit, unit, index, labels, temperature, masks, masks)  # type: ignore[operator]
    weights = torch.rand(loss.shape, generator=generator, dtype=dtype)
    inputs = [z, masks] if trainable else [z]
    grads = list(torch.autograd.grad((loss * weights).sum(), inputs))
    return loss.detach(), is_anchor, grads


KINDS = [
    "partition",
    "partition_empty_level",
    "nested",
    "overlapping",
    "soft_shared",
    "hard_per_row",
    "soft",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [0.1, 0.02])  # constant shift / row-maximum shift
@pytest.mark.parametrize("extra_rows", [0, 5])
def test_values_and_gradients_equal_the_general_path(
    kind: str, temperature: float, extra_rows: int
) -> None:
    expected = _run(_general, kind, temperature, torch.float64, extra_rows, seed=3)
    got = _run(_fast, kind, temperature, torch.float64, extra_rows, seed=3)
    torch.testing.assert_close(got[0], expected[0], atol=1e-10, rtol=0)
    assert torch.equal(got[1], expected[1])
    assert bool(expected[1].any()) and not bool(expected[1].all())  # anchors, -1 non-anchors
    for got_grad, expected_grad in zip(got[2], expected[2], strict=True):
        torch.testing.assert_close(got_grad, expected_grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", ["partition", "overlapping", "soft"])
def test_float32_level_means_and_gradients_within_1e_6(kind: str) -> None:
    """In float32 the per-level means agree within 1e-6 relative (a level term of ~12 has
    an ulp of ~1e-6), the gradients within 1e-6 absolute; float64 agrees to 1e-10 above."""

    def level_means(compute: object) -> tuple[Tensor, list[Tensor]]:
        generator = torch.Generator().manual_seed(5)
        z = torch.randn(2 * BATCH, DIM, generator=generator, requires_grad=True)
        labels = naive.random_tree_labels(BATCH, [2, 2, 3], generator, unknown=0.2).repeat(2, 1)
        masks = _masks(kind, 2 * BATCH, generator, torch.float32)
        unit = F.normalize(z, dim=1)
        loss, is_anchor = compute(unit, unit, torch.arange(2 * BATCH), labels, 0.1, masks, masks)  # type: ignore[operator]
        means = loss.sum(1) / is_anchor.sum(1).clamp(min=1)
        return means.detach(), list(torch.autograd.grad(means.sum(), [z]))

    expected, expected_grads = level_means(_general)
    got, got_grads = level_means(_fast)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_grads[0], expected_grads[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["partition", "nested", "overlapping"])
def test_shared_binary_masks_take_the_per_level_dims_path(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_full_width(*args: object) -> Tensor:
        raise AssertionError("shared 0/1 masks must not build full-width level features")

    monkeypatch.setattr(_masked_fast, "_level_major", no_full_width)
    _run(_fast, kind, 0.1, torch.float64, 0, seed=0)
    with pytest.raises(AssertionError, match="full-width"):
        _run(_fast, "soft_shared", 0.1, torch.float64, 0, seed=0)


def test_shared_mask_detection() -> None:
    masks = torch.tensor([[[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]])
    dims = shared_mask_dims(masks, 4)
    assert dims is not None and [d.tolist() for d in dims] == [[0, 2], [1, 3]]
    assert [d.tolist() for d in shared_mask_dims(masks[0], 4) or []] == [[0, 2], [1, 3]]
    nested = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]])
    assert [d.tolist() for d in shared_mask_dims(nested, 4) or []] == [[1], [0, 1, 3], [0, 1, 2, 3]]
    empty = masks.clone()
    empty[0, 0] = 0.0
    assert [d.tolist() for d in shared_mask_dims(empty, 4) or []] == [[], [1, 3]]
    assert shared_mask_dims(masks, 5) is None  # wrong width
    assert shared_mask_dims(masks.repeat(3, 1, 1), 4) is None  # per row
    assert shared_mask_dims(masks * 0.9 + (1 - masks) * 0.1, 4) is None  # soft
    assert shared_mask_dims(masks.clone().requires_grad_(True), 4) is None  # carries a gradient


def test_half_precision_inputs_are_computed_in_float32() -> None:
    generator = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(2 * BATCH, DIM, generator=generator), dim=1)
    labels = naive.random_tree_labels(BATCH, [2, 2, 3], generator).repeat(2, 1)
    masks = _masks("partition", 2 * BATCH, generator, torch.float32)
    groups = build_level_groups(labels)
    index = torch.arange(2 * BATCH)
    half = z.to(torch.bfloat16)
    loss, _ = masked_level_losses(half, half, index, groups, 0.1, masks, masks)
    assert loss.dtype == torch.float32
    expected, _ = masked_level_losses(half.float(), half.float(), index, groups, 0.1, masks, masks)
    torch.testing.assert_close(loss, expected)


def test_second_backward_raises_instead_of_a_wrong_gradient() -> None:
    """Anchors that are not the contrast rows (here: memory rows) take the backward that
    turns its saved exponentials into the derivative in place, so it refuses a second
    pass instead of returning a wrong gradient."""
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(2 * BATCH + 4, DIM, generator=generator, requires_grad=True)
    labels = naive.random_tree_labels(BATCH + 4, [2, 2, 3], generator)
    labels = torch.cat([labels[:BATCH].repeat(2, 1), labels[BATCH:]])
    masks = _masks("partition", 1, generator, torch.float32)
    unit = F.normalize(z, dim=1)
    anchors = unit[: 2 * BATCH]
    groups = build_level_groups(labels)
    loss, _ = masked_level_losses(anchors, unit, torch.arange(2 * BATCH), groups, 0.1, masks, masks)
    loss.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.sum().backward()


@pytest.mark.parametrize("kind", ["partition", "nested", "soft"])
def test_symmetric_backward_allows_a_second_pass(kind: str) -> None:
    """When the anchors are the contrast rows the backward only reads its saved
    exponentials (one product with ``[c, g * a]``), so a second pass repeats the
    gradient exactly."""
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(2 * BATCH, DIM, generator=generator, requires_grad=True)
    labels = naive.random_tree_labels(BATCH, [2, 2, 3], generator).repeat(2, 1)
    masks = _masks(kind, 2 * BATCH, generator, torch.float32)
    unit = F.normalize(z, dim=1)
    loss, _ = masked_level_losses(
        unit, unit, torch.arange(2 * BATCH), build_level_groups(labels), 0.1, masks, masks
    )
    (first,) = torch.autograd.grad(loss.sum(), [z], retain_graph=True)
    (second,) = torch.autograd.grad(loss.sum(), [z])
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    "loss_type, hce_form",
    [
        ("hmce", "pair"),
        ("hce", "pair"),
        ("hmce", "same_pair"),
        ("hmce", "anchor_mean"),
        ("hmce", "batch_mean"),
        ("hmc", None),
    ],
)
@pytest.mark.parametrize("kind", ["partition", "nested", "overlapping", "soft"])
def test_losses_with_masks_equal_the_general_path(
    loss_type: str, hce_form: str | None, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HMLCLoss(masks=...) (fast paths, per-pair HiConE included) == per-level features."""
    generator = torch.Generator().manual_seed(11)
    out0 = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
    out1 = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
    labels = naive.random_tree_labels(BATCH, [2, 2, 3], generator, unknown=0.2)
    masks = _masks(kind, 2 * BATCH, generator, torch.float64)
    loss_fn = HMLCLoss(loss_type, temperature=0.2, hce_form=hce_form)

    def fast(z0: Tensor, z1: Tensor) -> Tensor:
        return loss_fn(z0, z1, labels, masks=masks)  # type: ignore[no-any-return]

    def dense_pair(
        anchors: Tensor, contrast: Tensor, index: Tensor, groups: Any, t: float, *rest: Any
    ) -> Any:  # noqa: E501
        return pair_constrained_level_losses(anchors, contrast, index, groups, t)

    def general(z0: Tensor, z1: Tensor) -> Tensor:
        # Per-level features through the dense per-pair form and the general group sums.
        z = normalize_features(z0, z1)
        with monkeypatch.context() as patch:
            patch.setattr(hmlc, "masked_pair_level_losses", dense_pair)
            patch.setattr(hmlc, "level_feature_losses", anchor_level_losses)
            return loss_fn._loss(apply_masks(z, masks, LEVELS), labels.repeat(2, 1))[0]

    results = []
    for compute in (fast, general):
        z0, z1 = out0.clone().requires_grad_(True), out1.clone().requires_grad_(True)
        loss = compute(z0, z1)
        results.append((loss.detach(), torch.autograd.grad(loss, [z0, z1])))
    (got, got_grads), (expected, expected_grads) = results
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, atol=1e-10, rtol=0)
