"""HMLCLoss on per-level embeddings [B, L, D]: level h's term contrasts embedding h."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.loss import HMLCLoss
from lightly_hmlc.models.modules import HierarchicalMemoryBank
from tests.loss import naive
from tests.two_ranks import WORLD_SIZE, run_on_two_ranks

LOCAL_BATCH = 6


def _embeddings(seed: int, batch_size: int, dtype: torch.dtype = torch.float64) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(batch_size, 2, 5, generator=generator, dtype=dtype)
    out1 = torch.randn(batch_size, 2, 5, generator=generator, dtype=dtype)
    labels = naive.random_tree_labels(batch_size, [2, 2], generator, unknown=0.25)
    return out0, out1, labels


def _naive(
    out0: Tensor, out1: Tensor, labels: Tensor, loss_type: str, hce_form: str, margin: float
) -> Tensor:
    """The float64 loop, level h on ``normalize(cat([out0[:, h], out1[:, h]]))``."""
    num_levels = labels.shape[1]
    level_z = [naive.stacked_views(out0[:, h], out1[:, h]) for h in range(num_levels)]
    constrained = loss_type != "hmc" and hce_form == "anchor_mean"
    form = "anchor_mean" if constrained else "none"
    terms = naive.hce_pair_level_means(level_z, labels, 0.2, form, margin)
    if loss_type != "hmc" and hce_form == "batch_mean":
        terms = [torch.stack(terms[h:]).max() for h in range(num_levels)]
    if loss_type == "hce":
        return torch.stack(terms).mean()
    weights = naive.penalty_weights(num_levels, "exp")
    return naive.weighted_sum(weights, terms) / sum(weights)


@pytest.mark.parametrize("margin", [0.0, 0.3])
@pytest.mark.parametrize(("loss_type", "hce_form"), naive.LOSS_FORMS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_level_embeddings_match_the_float64_loop(
    loss_type: str, hce_form: str, margin: float, dtype: torch.dtype
) -> None:
    out0, out1, labels = _embeddings(0, 8, dtype)
    out0.requires_grad_(True)
    out1.requires_grad_(True)
    loss_fn = HMLCLoss(loss_type, temperature=0.2, hce_form=hce_form, hierarchy_margin=margin)
    ours = loss_fn(out0, out1, labels)
    expected = _naive(out0.double(), out1.double(), labels, loss_type, hce_form, margin)
    tolerance = (
        {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    )
    torch.testing.assert_close(ours.double(), expected, **tolerance)  # type: ignore[arg-type]
    grads = torch.autograd.grad(ours, [out0, out1])
    expected_grads = torch.autograd.grad(expected, [out0, out1])
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want.double(), **tolerance)  # type: ignore[arg-type]


def test_masks_are_one_way_to_make_level_embeddings() -> None:
    """``z * masks[:, h]`` as per-level embeddings gives the masked loss, gradients too."""
    generator = torch.Generator().manual_seed(1)
    z0 = torch.randn(8, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(8, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(16, 3, 6, generator=generator, dtype=torch.float64) + 0.1
    labels = naive.random_tree_labels(8, [2, 2, 2], generator, unknown=0.2)
    loss_fn = HMLCLoss("hmce", hierarchy_margin=0.2)
    masked = loss_fn(z0, z1, labels, masks=masks)
    unit = F.normalize(torch.cat([z0, z1]), dim=1).unsqueeze(1) * masks
    per_level = loss_fn(unit[:8], unit[8:], labels)
    torch.testing.assert_close(per_level, masked)
    for got, want in zip(
        torch.autograd.grad(per_level, [z0, z1]), torch.autograd.grad(masked, [z0, z1]), strict=True
    ):
        torch.testing.assert_close(got, want)


def test_memory_rows_are_per_level_too() -> None:
    """Memory rows [K, L, D] count as contrast rows of each level: the same as putting
    them in the batch's contrast set (checked through a bank and the float64 loop)."""
    out0, out1, labels = _embeddings(2, 6)
    bank = HierarchicalMemoryBank(size=8, dim=(2, 5), num_levels=2)
    loss_fn = HMLCLoss("hmc", temperature=0.2)
    bank(out1.detach(), labels)  # the queue now holds view 1 of the batch
    memory = bank(out1.detach(), labels, update=False)
    assert memory[0].shape == (6, 2, 5)
    got = loss_fn(out0, out1, labels, memory=memory)
    # Plain loop: anchors are the batch rows, contrast rows also include the memory.
    contrast = [
        torch.cat(
            [naive.stacked_views(out0[:, h], out1[:, h]), F.normalize(memory[0][:, h], dim=1)]
        )
        for h in range(2)
    ]
    paths = labels.tolist() * 2 + memory[1].tolist()
    terms = []
    for h in range(2):
        anchors = []
        for i in range(12):
            positives = naive.positives_of(paths, i, h)
            if not positives:
                continue
            others = [a for a in range(len(paths)) if a != i]
            log_den = torch.logsumexp(
                torch.stack([contrast[h][i] @ contrast[h][a] / 0.2 for a in others]), 0
            )
            anchors.append(
                -torch.stack(
                    [contrast[h][i] @ contrast[h][p] / 0.2 - log_den for p in positives]
                ).mean()
            )
        terms.append(torch.stack(anchors).mean())
    weights = naive.penalty_weights(2, "exp")
    torch.testing.assert_close(got, naive.weighted_sum(weights, terms) / sum(weights))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("depth", r"2 embeddings per sample for label paths of depth 3"),
        ("masks", r"masks were given with per-level embeddings"),
        ("memory", r"memory features must have shape \[K, 2, 5\]"),
        ("four_dims", r"must have shape \[batch_size, dim\] or \[batch_size, levels, dim\]"),
    ],
)
def test_wrong_level_embeddings_are_reported(call: str, message: str) -> None:
    out0, out1, labels = _embeddings(3, 4)
    loss_fn = HMLCLoss("hmce")
    with pytest.raises(ValueError, match=message):
        if call == "depth":
            loss_fn(out0, out1, torch.cat([labels, labels[:, :1]], dim=1))
        elif call == "masks":
            loss_fn(out0, out1, labels, masks=torch.ones(1, 2, 5, dtype=torch.float64))
        elif call == "memory":
            loss_fn(out0, out1, labels, memory=(torch.randn(3, 5), labels[:3]))
        else:
            loss_fn(out0[..., None], out1[..., None], labels)


def _rank_results(rank: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    results = []
    for margin in (0.0, 0.3):
        out0, out1, labels = _embeddings(4, WORLD_SIZE * LOCAL_BATCH)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local0 = out0[rows].clone().requires_grad_(True)
        local1 = out1[rows].clone().requires_grad_(True)
        loss_fn = HMLCLoss(
            "hmce", temperature=0.2, hierarchy_margin=margin, gather_distributed=True
        )
        loss = loss_fn(local0, local1, labels[rows])
        loss.backward()
        assert local0.grad is not None and local1.grad is not None
        results.append((loss.detach(), local0.grad, local1.grad))
    return results


@pytest.mark.distributed
def test_gathered_level_embeddings_equal_the_global_batch(tmp_path: Path) -> None:
    per_rank = run_on_two_ranks(_rank_results, tmp_path)
    for index, margin in enumerate((0.0, 0.3)):
        out0, out1, labels = _embeddings(4, WORLD_SIZE * LOCAL_BATCH)
        out0.requires_grad_(True)
        out1.requires_grad_(True)
        expected = _naive(out0, out1, labels, "hmce", "anchor_mean", margin)
        grad0, grad1 = torch.autograd.grad(expected, [out0, out1])
        for rank in range(WORLD_SIZE):
            value, local_grad0, local_grad1 = per_rank[rank][index]
            rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            torch.testing.assert_close(value, expected.detach())
            torch.testing.assert_close(local_grad0 / WORLD_SIZE, grad0[rows])
            torch.testing.assert_close(local_grad1 / WORLD_SIZE, grad1[rows])
