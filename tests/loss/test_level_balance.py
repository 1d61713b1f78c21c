"""level_balance="class": every level's term is the mean over its classes of the mean over
each class's anchors, checked against a plain per-anchor loop (issue 11 item 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.loss import HMLCLoss
from lightly_hmlc.loss.masked import GHMLCLoss, MaskedHMLCLoss
from tests.loss import naive
from tests.loss.test_checks import _SyncRecorder
from tests.two_ranks import WORLD_SIZE, run_on_two_ranks

BATCH, DIM, TEMPERATURE = 8, 6, 0.2

FORMS = naive.LOSS_FORMS


pytestmark = pytest.mark.usefixtures("one_thread")


# The plain reference: one Python loop per anchor, level and positive.


def positives_of(paths: list[list[int]], i: int, level: int) -> list[int]:
    prefix = paths[i][: level + 1]
    if any(value < 0 for value in prefix):
        return []
    return [j for j in range(len(paths)) if j != i and paths[j][: level + 1] == prefix]


def pair_loss(z: Tensor, i: int, p: int) -> Tensor:
    others = torch.stack([z[i] @ z[a] / TEMPERATURE for a in range(len(z)) if a != i])
    return torch.logsumexp(others, dim=0) - z[i] @ z[p] / TEMPERATURE


def level_means(
    level_z: list[Tensor],
    paths: list[list[int]],
    num_anchors: int,
    bound: str,
    balance: str,
) -> list[Tensor]:
    """Per-level terms. Rows ``>= num_anchors`` (memory) are contrast rows only.

    ``bound``: ``"none"`` (plain SupCon), ``"pair"`` (the anchor's worst finer pair),
    ``"same_pair"`` (the same pair at the finer levels where it is a positive) or
    ``"anchor_mean"`` (the anchor's largest finer mean pair loss).
    ``balance``: ``"none"`` (mean over anchors) or ``"class"`` (mean over the classes
    of the mean over each class's anchors).
    """
    num_levels = len(level_z)
    means = []
    for level in range(num_levels):
        by_class: dict[tuple[int, ...], list[Tensor]] = {}
        for i in range(num_anchors):
            positives = positives_of(paths, i, level)
            if not positives:
                continue
            finer = [
                pair_loss(level_z[f], i, q)
                for f in range(level + 1, num_levels)
                for q in positives_of(paths, i, f)
            ]
            if bound == "anchor_mean":
                finer = [
                    torch.stack([pair_loss(level_z[f], i, q) for q in qs]).mean()
                    for f in range(level + 1, num_levels)
                    if (qs := positives_of(paths, i, f))
                ]
            pair_terms = []
            for p in positives:
                loss = pair_loss(level_z[level], i, p)
                if bound == "same_pair":
                    finer = [
                        pair_loss(level_z[f], i, p)
                        for f in range(level + 1, num_levels)
                        if p in positives_of(paths, i, f)
                    ]
                for other in finer if bound != "none" else []:
                    loss = torch.maximum(loss, other)
                pair_terms.append(loss)
            term = torch.stack(pair_terms).mean()
            by_class.setdefault(tuple(paths[i][: level + 1]), []).append(term)
        if not by_class:
            means.append(level_z[0].sum() * 0.0)
        elif balance == "class":
            means.append(torch.stack([torch.stack(t).mean() for t in by_class.values()]).mean())
        else:
            means.append(torch.stack([t for terms in by_class.values() for t in terms]).mean())
    return means


def reference(
    level_z: list[Tensor],
    paths: list[list[int]],
    num_anchors: int,
    loss_type: str,
    hce_form: str,
    balance: str,
) -> tuple[Tensor, Tensor]:
    """``(loss, level_losses)`` of HMLCLoss, from :func:`level_means`."""
    num_levels = len(level_z)
    plain = level_means(level_z, paths, num_anchors, "none", balance)
    if loss_type == "hmc" or hce_form == "batch_mean":
        means = plain
    else:
        means = level_means(level_z, paths, num_anchors, hce_form, balance)
    if loss_type != "hmc" and hce_form == "batch_mean":
        means = [torch.stack(means[level:]).max() for level in range(num_levels)]
    if loss_type == "hce":
        loss = torch.stack(means).mean()
    else:
        weights = naive.penalty_weights(num_levels, "exp")
        loss = torch.stack([w * m for w, m in zip(weights, means, strict=True)]).sum()
        loss = loss / sum(weights)
    return loss, torch.stack(plain).detach()


def imbalanced_labels(size: int, generator: torch.Generator, unknown: float) -> Tensor:
    """3 levels; coarse class 1 is rare (one sample in five), 2 x 2 children each."""
    coarse = (torch.rand(size, generator=generator) < 0.2).long()
    coarse[0] = 1  # at least one sample (two anchors) of the rare class
    middle = coarse * 2 + torch.randint(0, 2, (size,), generator=generator)
    fine = middle * 2 + torch.randint(0, 2, (size,), generator=generator)
    labels = torch.stack([coarse, middle, fine], dim=1)
    if unknown > 0:  # unknown from some level down, never the rare sample 0
        drop = torch.rand(size, generator=generator) < unknown
        drop[0] = False
        start = torch.randint(0, 3, (size,), generator=generator)
        labels[drop.unsqueeze(1) & (torch.arange(3).unsqueeze(0) >= start.unsqueeze(1))] = -1
    return labels


def _data(seed: int = 0, unknown: float = 0.25) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
    out1 = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
    return out0, out1, imbalanced_labels(BATCH, generator, unknown)


def _check(
    got: tuple[Tensor, Tensor], expected: tuple[Tensor, Tensor], inputs: list[Tensor]
) -> None:
    """Values, level losses and gradients with respect to every input."""
    torch.testing.assert_close(got[0], expected[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-10, atol=1e-10)
    got_grads = torch.autograd.grad(got[0], inputs)
    expected_grads = torch.autograd.grad(expected[0], inputs)
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(("loss_type", "hce_form"), FORMS)
def test_class_balance_matches_the_per_anchor_loop(loss_type: str, hce_form: str) -> None:
    out0, out1, labels = _data()
    assert (labels == -1).any()  # -1 labels are part of the test
    out0.requires_grad_(True)
    out1.requires_grad_(True)
    loss_fn = HMLCLoss(loss_type, TEMPERATURE, hce_form=hce_form, level_balance="class")
    got = loss_fn(out0, out1, labels, return_level_losses=True)
    z = naive.stacked_views(out0, out1)
    expected = reference([z] * 3, labels.tolist() * 2, 2 * BATCH, loss_type, hce_form, "class")
    assert isinstance(got, tuple)
    _check(got, expected, [out0, out1])


@pytest.mark.parametrize("masks_kind", ["per_row", "partition"])
@pytest.mark.parametrize(("loss_type", "hce_form"), [FORMS[i] for i in (0, 2, 4, 5, 8)])
def test_class_balance_with_masks(loss_type: str, hce_form: str, masks_kind: str) -> None:
    out0, out1, labels = _data(seed=1)
    out0.requires_grad_(True)
    generator = torch.Generator().manual_seed(2)
    if masks_kind == "per_row":  # soft masks, one per row (A-HMLC): gradients flow
        masks = torch.sigmoid(torch.randn(2 * BATCH, 3, DIM, generator=generator)).double()
        masks.requires_grad_(True)
        inputs = [out0, masks]
    else:  # hard masks that partition the dims (G-HMLC): the partition fast path
        masks = torch.zeros(1, 3, DIM, dtype=torch.float64)
        for level in range(3):
            masks[0, level, 2 * level : 2 * level + 2] = 1.0
        inputs = [out0]
    loss_fn = HMLCLoss(loss_type, TEMPERATURE, hce_form=hce_form, level_balance="class")
    got = loss_fn(out0, out1, labels, masks=masks, return_level_losses=True)
    z = naive.stacked_views(out0, out1)
    level_z = [F.normalize(z * masks[:, level], dim=1) for level in range(3)]
    expected = reference(level_z, labels.tolist() * 2, 2 * BATCH, loss_type, hce_form, "class")
    assert isinstance(got, tuple)
    _check(got, expected, inputs)


@pytest.mark.parametrize(("loss_type", "hce_form"), [FORMS[i] for i in (0, 2, 6, 8)])
def test_memory_rows_are_no_anchors_and_count_for_no_class(loss_type: str, hce_form: str) -> None:
    out0, out1, labels = _data(seed=3)
    out0.requires_grad_(True)
    generator = torch.Generator().manual_seed(4)
    bank = F.normalize(torch.randn(7, DIM, generator=generator, dtype=torch.float64), dim=1)
    # Mostly rows of the frequent class, and a class that no batch row has: neither may
    # change any class's weight.
    bank_labels = torch.tensor(
        [[0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 0, 0], [1, 3, 7], [1, 3, 7], [-1, -1, -1]]
    )
    assert not (labels[:, 2] == 7).any()
    loss_fn = HMLCLoss(loss_type, TEMPERATURE, hce_form=hce_form, level_balance="class")
    got = loss_fn(out0, out1, labels, memory=(bank, bank_labels), return_level_losses=True)
    z = torch.cat([naive.stacked_views(out0, out1), bank])
    paths = labels.tolist() * 2 + bank_labels.tolist()
    expected = reference([z] * 3, paths, 2 * BATCH, loss_type, hce_form, "class")
    assert isinstance(got, tuple)
    _check(got, expected, [out0])


@pytest.mark.parametrize(("loss_type", "hce_form"), FORMS)
def test_none_is_the_default_exactly(loss_type: str, hce_form: str) -> None:
    out0, out1, labels = _data(seed=5)
    masks = torch.sigmoid(torch.randn(2 * BATCH, 3, DIM, dtype=torch.float64))
    for kwargs in ({}, {"masks": masks}):
        default = HMLCLoss(loss_type, hce_form=hce_form)
        explicit = HMLCLoss(loss_type, hce_form=hce_form, level_balance="none")
        a = default(out0, out1, labels, return_level_losses=True, **kwargs)
        b = explicit(out0, out1, labels, return_level_losses=True, **kwargs)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # And it is the plain mean over anchors of the per-anchor loop.
    z = naive.stacked_views(out0, out1)
    expected = reference([z] * 3, labels.tolist() * 2, 2 * BATCH, loss_type, hce_form, "none")
    torch.testing.assert_close(
        HMLCLoss(loss_type, TEMPERATURE, hce_form=hce_form)(out0, out1, labels), expected[0]
    )


@pytest.mark.parametrize(("loss_type", "hce_form"), FORMS)
def test_equal_class_sizes_give_the_plain_mean(loss_type: str, hce_form: str) -> None:
    generator = torch.Generator().manual_seed(6)
    out0 = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
    out1 = torch.randn(BATCH, DIM, generator=generator, dtype=torch.float64)
    # Two samples per fine class, four per middle class... at every level the same.
    labels = torch.tensor([[0, 0, 0], [0, 1, 2], [1, 2, 4], [1, 3, 6]]).repeat_interleave(2, 0)
    plain = HMLCLoss(loss_type, hce_form=hce_form)(out0, out1, labels, return_level_losses=True)
    balanced = HMLCLoss(loss_type, hce_form=hce_form, level_balance="class")(
        out0, out1, labels, return_level_losses=True
    )
    torch.testing.assert_close(balanced[0], plain[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(balanced[1], plain[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("loss_type", "hce_form"), FORMS)
def test_an_imbalanced_batch_gives_a_different_loss(loss_type: str, hce_form: str) -> None:
    out0, out1, _ = _data(seed=7)
    # Imbalanced at every level: coarse 6 / 2 samples, middle 5 / 1 / 2, fine 3 / 2 / 1 / 2.
    paths = [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 4]]
    labels = torch.tensor(paths).repeat_interleave(torch.tensor([3, 2, 1, 2]), dim=0)
    plain = HMLCLoss(loss_type, hce_form=hce_form)(out0, out1, labels, return_level_losses=True)
    balanced = HMLCLoss(loss_type, hce_form=hce_form, level_balance="class")(
        out0, out1, labels, return_level_losses=True
    )
    assert abs(float(balanced[0] - plain[0])) > 1e-3
    assert abs(float(balanced[1][0] - plain[1][0])) > 1e-3  # the coarse term moved


def test_the_masked_conveniences_pass_the_option_through() -> None:
    class OnesHead(nn.Module):
        def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
            return torch.ones(1, 3, z.shape[1], dtype=z.dtype)

    out0, out1, labels = _data(seed=8)
    masked = MaskedHMLCLoss(OnesHead(), level_balance="class")(out0, out1, labels)
    torch.testing.assert_close(masked, HMLCLoss(level_balance="class")(out0, out1, labels))
    assert not torch.allclose(masked, HMLCLoss()(out0, out1, labels))
    assert GHMLCLoss(num_levels=3, dim=DIM, level_balance="class").level_balance == "class"


def test_bad_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="reference_compatible=True averages over anchors"):
        HMLCLoss(reference_compatible=True, level_balance="class")
    with pytest.raises(ValueError, match="Unknown level_balance 'anchor'"):
        HMLCLoss(level_balance="anchor")
    with pytest.raises(ValueError, match="Unknown level_balance"):
        GHMLCLoss(num_levels=3, dim=DIM, level_balance="classes")
    HMLCLoss(reference_compatible=True, level_balance="none")  # allowed: today's mode


@pytest.mark.parametrize("loss_type", ["hmc", "hmce"])
def test_without_value_checks_class_balance_never_syncs(loss_type: str) -> None:
    out0, out1, labels = _data(seed=9, unknown=0.0)
    out0 = out0.float().requires_grad_(True)
    loss_fn = HMLCLoss(loss_type, level_balance="class", check_values=False)
    with _SyncRecorder() as recorder:
        loss = loss_fn(out0, out1.float(), labels)
        assert isinstance(loss, Tensor)
        loss.backward()
    assert recorder.syncs == []


# Two gloo ranks: counts over the GLOBAL batch, gradients averaged by DDP.

DIST_CONFIGS: list[dict[str, object]] = [
    {"loss_type": "hmc"},
    {"loss_type": "hmce"},
    {"loss_type": "hce", "hce_form": "batch_mean"},
    {"loss_type": "hmce", "hce_form": "same_pair", "masks": True, "memory": True},
]


def _global_inputs(config: dict[str, object]) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
    """The global batch (out0, out1, labels) and the masks / memory of ``config``."""
    out0, out1, _ = _data(seed=10)
    # Coarse classes of 7 and 1 samples, classes spanning both ranks, a -1 label.
    labels = torch.tensor(
        [[0, 0, 0], [1, 2, 4], [0, 0, 1], [0, 0, 0], [0, 1, 2], [0, 0, 0], [0, 0, -1], [0, 0, 1]]
    )
    extra: dict[str, Any] = {}
    if config.get("masks"):
        masks = torch.zeros(1, 3, DIM, dtype=torch.float64)
        masks[0, 0, :2] = masks[0, 1, :4] = masks[0, 2, :] = 1.0  # nested
        extra["masks"] = masks
    if config.get("memory"):
        generator = torch.Generator().manual_seed(11)
        bank = torch.randn(3, DIM, generator=generator, dtype=torch.float64)
        extra["memory"] = (bank, torch.tensor([[0, 0, 0], [1, 2, 4], [1, 3, 7]]))
    return out0, out1, labels, extra


def _dist_loss(config: dict[str, object], gather: bool, balance: str = "class") -> HMLCLoss:
    kwargs = {k: v for k, v in config.items() if k not in ("masks", "memory")}
    return HMLCLoss(
        temperature=TEMPERATURE,
        gather_distributed=gather,
        level_balance=balance,
        **kwargs,  # type: ignore[arg-type]
    )


def _rank_results(rank: int) -> list[tuple[Tensor, Tensor | None, Tensor | None]]:
    local = BATCH // WORLD_SIZE
    rows = slice(rank * local, (rank + 1) * local)
    results = []
    for config in DIST_CONFIGS:
        out0, out1, labels, extra = _global_inputs(config)
        out0 = out0[rows].clone().requires_grad_(True)
        out1 = out1[rows].clone().requires_grad_(True)
        loss = _dist_loss(config, gather=True)(out0, out1, labels[rows], **extra)
        assert isinstance(loss, Tensor)
        loss.backward()
        results.append((loss.detach(), out0.grad, out1.grad))
    return results


@pytest.mark.distributed
def test_gathered_class_balance_equals_the_global_batch_loss(tmp_path: Path) -> None:
    per_rank = run_on_two_ranks(_rank_results, tmp_path)
    local = BATCH // WORLD_SIZE
    for index, config in enumerate(DIST_CONFIGS):
        out0, out1, labels, extra = _global_inputs(config)
        out0.requires_grad_(True)
        out1.requires_grad_(True)
        expected = _dist_loss(config, gather=False)(out0, out1, labels, **extra)
        assert isinstance(expected, Tensor)
        plain = _dist_loss(config, gather=False, balance="none")(out0, out1, labels, **extra)
        assert isinstance(plain, Tensor)
        # The balance matters on this batch, so the check below can fail.
        assert abs(float(expected.detach() - plain.detach())) > 1e-3
        grad0, grad1 = torch.autograd.grad(expected, [out0, out1])
        for rank in range(WORLD_SIZE):
            value, local_grad0, local_grad1 = per_rank[rank][index]
            rows = slice(rank * local, (rank + 1) * local)
            torch.testing.assert_close(value, expected.detach(), msg=str(config))
            torch.testing.assert_close(local_grad0 / WORLD_SIZE, grad0[rows], msg=str(config))
            torch.testing.assert_close(local_grad1 / WORLD_SIZE, grad1[rows], msg=str(config))
