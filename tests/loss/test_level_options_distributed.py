"""Two gloo ranks: per-level temperatures, L_in and the instance term under gather_distributed.

The instance term pairs each row with the other view of its sample through the loss
batch's sample ids; gathered from two ranks they must stay unique (rank r's samples are
``r * B ... r * B + B - 1``), or a row of rank 0 would take a row of rank 1 as a second
positive. Every rank's value and DDP-averaged gradient must equal the single-process
loss on the global batch, as for the other options (``test_distributed.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightly.loss import NTXentLoss

from lightly_hmlc.loss import HMLCLoss
from tests.loss import naive
from tests.two_ranks import WORLD_SIZE, run_on_two_ranks

LOCAL_BATCH = 5
MEMORY = 4

CONFIGS: list[dict[str, Any]] = [
    {"loss_type": "hmc", "instance_weight": 1.0},
    {"loss_type": "hmce", "temperature": [0.3, 0.15], "instance_weight": 0.5},
    {"loss_type": "hce", "temperature": [0.15, 0.3], "hce_form": "same_pair"},
    {"loss_type": "hmc", "temperature": [0.3, 0.15], "supcon_form": "in"},
    {
        "loss_type": "hmce",
        "hce_form": "batch_mean",
        "supcon_form": "in",
        "instance_weight": 2.0,
        "level_balance": "class",
    },
    {"loss_type": "hmce", "instance_weight": 1.0, "memory": True},
    {"loss_type": "hmce", "hce_form": "anchor_mean", "level_balance": "class", "memory": True},
]


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[Any, Any]]:
    generator = torch.Generator().manual_seed(0)
    size = WORLD_SIZE * LOCAL_BATCH
    out0 = torch.randn(size, 4, generator=generator, dtype=torch.float64)
    out1 = torch.randn(size, 4, generator=generator, dtype=torch.float64)
    labels = naive.random_tree_labels(size, [2, 2], generator, 0.25)
    # The same memory on every rank (a bank with gather_distributed holds the same rows).
    memory = (
        torch.randn(MEMORY, 4, generator=generator, dtype=torch.float64),
        naive.random_tree_labels(MEMORY, [2, 2], generator, 0.0),
    )
    return out0, out1, labels, memory


def _call(config: dict[str, Any], gather: bool, *inputs: Any) -> tuple[Any, Any]:
    options = {k: v for k, v in config.items() if k != "memory"}
    out0, out1, labels, memory = inputs
    loss_fn = HMLCLoss(gather_distributed=gather, **options)
    extra = {"memory": memory} if config.get("memory") else {}
    return loss_fn(out0, out1, labels, return_level_losses=True, **extra)  # type: ignore[no-any-return]


def _rank_results(rank: int) -> list[tuple[Any, ...]]:
    results = []
    for config in CONFIGS:
        out0, out1, labels, memory = _global_batch()
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local0 = out0[rows].clone().requires_grad_(True)
        local1 = out1[rows].clone().requires_grad_(True)
        loss, level_losses = _call(config, True, local0, local1, labels[rows], memory)
        loss.backward()
        results.append((loss.detach(), level_losses, local0.grad, local1.grad))
    return results


@pytest.mark.distributed
def test_gathered_options_equal_the_global_batch_loss(tmp_path: Path) -> None:
    per_rank = run_on_two_ranks(_rank_results, tmp_path)
    for index, config in enumerate(CONFIGS):
        out0, out1, labels, memory = _global_batch()
        out0.requires_grad_(True)
        out1.requires_grad_(True)
        expected, expected_levels = _call(config, False, out0, out1, labels, memory)
        grad0, grad1 = torch.autograd.grad(expected, [out0, out1])
        for rank in range(WORLD_SIZE):
            value, level_losses, local_grad0, local_grad1 = per_rank[rank][index]
            rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            torch.testing.assert_close(value, expected.detach(), msg=str(config))
            torch.testing.assert_close(level_losses, expected_levels, msg=str(config))
            torch.testing.assert_close(local_grad0 / WORLD_SIZE, grad0[rows], msg=str(config))
            torch.testing.assert_close(local_grad1 / WORLD_SIZE, grad1[rows], msg=str(config))
        if config.get("instance_weight") and not config.get("memory"):
            # The gathered instance term is NT-Xent on the global batch: ids did not clash.
            finest = config.get("temperature", [0.1])[-1]
            nt_xent = NTXentLoss(temperature=finest)(out0.detach(), out1.detach())
            for rank in range(WORLD_SIZE):
                torch.testing.assert_close(per_rank[rank][index][1][-1], nt_xent.double())
