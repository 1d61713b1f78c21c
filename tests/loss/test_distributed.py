"""Two gloo ranks on the CPU: gathered losses equal the single-process global-batch loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightly_hmlc.loss import HMLCLoss, ReferenceHMLCLoss, SupConLoss
from tests.loss import naive
from tests.two_ranks import WORLD_SIZE, run_on_two_ranks

LOCAL_BATCH = 6

CONFIGS: list[tuple[str, dict[str, object]]] = [
    ("supcon", {}),
    ("supcon", {"paths": True}),
    ("supcon", {"paths": True, "hierarchy_margin": 0.3}),
    ("hmlc", {"loss_type": "hmc"}),
    ("hmlc", {"loss_type": "hce"}),
    ("hmlc", {"loss_type": "hmce"}),
    ("hmlc", {"loss_type": "hmce", "hce_form": "batch_mean"}),
    ("hmlc", {"loss_type": "hmce", "hierarchy_margin": 0.3}),
    ("reference", {"loss_type": "hmce"}),
]


def _make_loss(kind: str, kwargs: dict[str, object], gather: bool) -> nn.Module:
    if kind == "supcon":
        margin = float(kwargs.get("hierarchy_margin", 0.0))  # type: ignore[arg-type]
        return SupConLoss(temperature=0.2, gather_distributed=gather, hierarchy_margin=margin)
    kwargs = {k: v for k, v in kwargs.items() if k != "paths"}
    if kind == "reference":
        return ReferenceHMLCLoss(temperature=0.2, gather_distributed=gather, **kwargs)  # type: ignore[arg-type]
    return HMLCLoss(temperature=0.2, gather_distributed=gather, **kwargs)  # type: ignore[arg-type]


def _uses_paths(kind: str, kwargs: dict[str, object]) -> bool:
    return kind != "supcon" or bool(kwargs.get("paths"))


def _global_batch(unknown: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = WORLD_SIZE * LOCAL_BATCH
    out0 = torch.randn(size, 5, generator=generator, dtype=torch.float64)
    out1 = torch.randn(size, 5, generator=generator, dtype=torch.float64)
    labels = naive.random_tree_labels(size, [2, 2], generator, unknown)
    return out0, out1, labels


def _rank_results(rank: int) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    results = []
    for index, (kind, kwargs) in enumerate(CONFIGS):
        unknown = 0.0 if kind == "reference" else 0.25
        out0, out1, labels = _global_batch(unknown)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local0 = out0[rows].clone().requires_grad_(True)
        local1 = out1[rows].clone().requires_grad_(True)
        local_labels = labels[rows] if _uses_paths(kind, kwargs) else labels[rows, -1]
        loss = _make_loss(kind, kwargs, gather=True)(local0, local1, local_labels)
        loss.backward()
        assert local0.grad is not None and local1.grad is not None
        results.append((index, loss.detach(), local0.grad, local1.grad))
    return results


@pytest.mark.distributed
def test_gathered_loss_equals_global_batch_loss(tmp_path: Path) -> None:
    per_rank = run_on_two_ranks(_rank_results, tmp_path)
    for index, (kind, kwargs) in enumerate(CONFIGS):
        unknown = 0.0 if kind == "reference" else 0.25
        out0, out1, labels = _global_batch(unknown)
        out0.requires_grad_(True)
        out1.requires_grad_(True)
        global_labels = labels if _uses_paths(kind, kwargs) else labels[:, -1]
        expected = _make_loss(kind, kwargs, gather=False)(out0, out1, global_labels)
        grad0, grad1 = torch.autograd.grad(expected, [out0, out1])
        for rank in range(WORLD_SIZE):
            got_index, value, local_grad0, local_grad1 = per_rank[rank][index]
            assert got_index == index
            rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            # Every rank reports the global-batch value.
            torch.testing.assert_close(value, expected.detach(), msg=f"{kind} {kwargs}")
            # DDP averages gradients over ranks: the averaged gradient is the global one.
            torch.testing.assert_close(
                local_grad0 / WORLD_SIZE, grad0[rows], msg=f"{kind} {kwargs}"
            )
            torch.testing.assert_close(
                local_grad1 / WORLD_SIZE, grad1[rows], msg=f"{kind} {kwargs}"
            )


# A data error on one rank: every rank raises the same ValueError, and none hangs.

ERROR_CASES: list[tuple[str, int, str]] = [
    # (what goes wrong, on which rank, a piece of the message every rank must show)
    ("nan", 1, "rank 1 of 2: The embeddings contain NaN or Inf"),
    ("label_below_minus_one", 0, "rank 0 of 2: labels contain values below -1"),
    ("wrong_depth", 1, "rank 1 of 2: labels has 3 levels"),
    ("overflow", 0, "rank 0 of 2: 1 embedding row(s) cannot be L2-normalised"),
    ("batch_size", 1, "same batch size on every rank, got [6, 5]"),
]


def _rank_errors(rank: int) -> tuple[list[str], torch.Tensor]:
    messages = []
    for kind, bad_rank, _ in ERROR_CASES:
        out0, out1, labels = _global_batch(0.0)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local0, local1 = out0[rows].float().clone(), out1[rows].float().clone()
        local_labels = labels[rows].clone()
        if rank == bad_rank:
            if kind == "nan":
                local0[2, 1] = float("nan")
            elif kind == "label_below_minus_one":
                local_labels[0, 1] = -3
            elif kind == "wrong_depth":
                local_labels = torch.cat([local_labels, local_labels[:, :1]], dim=1)
            elif kind == "overflow":
                local0[1] = 1e30
            else:
                local0, local1, local_labels = local0[:-1], local1[:-1], local_labels[:-1]
        loss_fn = HMLCLoss("hmce", num_levels=2, gather_distributed=True)
        try:
            loss_fn(local0, local1, local_labels)
            messages.append("no error")
        except ValueError as error:
            messages.append(str(error))
    # Still in step after all of them: one more good call works on both ranks.
    out0, out1, labels = _global_batch(0.0)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    value = HMLCLoss("hmce", gather_distributed=True)(out0[rows], out1[rows], labels[rows])
    return messages, value


@pytest.mark.distributed
def test_a_data_error_on_one_rank_is_raised_on_every_rank(tmp_path: Path) -> None:
    results = run_on_two_ranks(_rank_errors, tmp_path)
    for index, (kind, _, expected) in enumerate(ERROR_CASES):
        messages = [messages[index] for messages, _ in results]
        assert messages[0] == messages[1], f"{kind}: ranks raised different errors {messages}"
        assert expected in messages[0], f"{kind}: {messages[0]}"
    out0, out1, labels = _global_batch(0.0)
    expected_value = HMLCLoss("hmce")(out0, out1, labels)
    for _, value in results:
        torch.testing.assert_close(value, expected_value)
