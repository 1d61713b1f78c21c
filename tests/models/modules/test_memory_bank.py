"""HierarchicalMemoryBank: FIFO order, MoCo semantics, labels, checkpoints, errors, 2 gloo ranks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from lightly_hmlc.models.modules import HierarchicalMemoryBank
from tests.two_ranks import WORLD_SIZE, run_on_two_ranks


def _batch(start: int, rows: int, dim: int = 3, levels: int = 2) -> tuple[torch.Tensor, ...]:
    """Rows whose features and labels encode their global position ``start + i``."""
    ids = torch.arange(start, start + rows)
    features = ids.unsqueeze(1).float().repeat(1, dim)
    labels = torch.stack([ids // 2, ids], dim=1)[:, :levels]
    return features, labels


def test_returns_queue_before_enqueue_oldest_first_and_only_filled_rows() -> None:
    bank = HierarchicalMemoryBank(size=5, dim=3, num_levels=2)
    seen: list[int] = []
    for step in range(6):
        features, labels = _batch(3 * step, 3)
        bank_features, bank_labels = bank(features, labels)
        expected = seen[-5:]  # the last K rows seen BEFORE this batch, oldest first
        assert bank_features[:, 0].tolist() == [float(i) for i in expected]
        assert bank_labels.tolist() == [[i // 2, i] for i in expected]
        seen.extend(range(3 * step, 3 * step + 3))


def test_returned_rows_are_detached_copies() -> None:
    bank = HierarchicalMemoryBank(size=4, dim=3, num_levels=2)
    features, labels = _batch(0, 2)
    bank(features.requires_grad_(True), labels)
    bank_features, bank_labels = bank(*_batch(2, 2))
    assert not bank_features.requires_grad
    bank(*_batch(4, 4))  # overwrites every stored row
    assert bank_features[:, 0].tolist() == [0.0, 1.0]  # what was returned did not change
    assert bank_labels.tolist() == [[0, 0], [0, 1]]


def test_batch_larger_than_queue_keeps_newest_rows() -> None:
    bank = HierarchicalMemoryBank(size=3, dim=3, num_levels=2)
    bank(*_batch(0, 2))
    bank(*_batch(2, 7))
    bank_features, _ = bank(*_batch(9, 1), update=False)
    assert bank_features[:, 0].tolist() == [6.0, 7.0, 8.0]


def test_update_false_leaves_the_queue_unchanged() -> None:
    bank = HierarchicalMemoryBank(size=4, dim=3, num_levels=2)
    bank(*_batch(0, 2))
    first = bank(*_batch(2, 2), update=False)
    second = bank(*_batch(4, 2), update=False)
    torch.testing.assert_close(first, second)
    assert int(bank.num_filled) == 2


def test_unknown_labels_are_stored_and_one_level_labels_may_be_1d() -> None:
    bank = HierarchicalMemoryBank(size=4, dim=2, num_levels=2)
    labels = torch.tensor([[0, -1], [-1, -1]])
    bank(torch.randn(2, 2), labels)
    assert bank(torch.randn(1, 2), labels[:1])[1].tolist() == labels.tolist()
    flat = HierarchicalMemoryBank(size=4, dim=2, num_levels=1)
    flat(torch.randn(2, 2), torch.tensor([3, -1]))
    assert flat(torch.randn(1, 2), torch.tensor([0]))[1].tolist() == [[3], [-1]]


def test_state_dict_round_trip_continues_the_same_queue() -> None:
    bank = HierarchicalMemoryBank(size=4, dim=3, num_levels=2)
    for step in range(3):
        bank(*_batch(3 * step, 3))
    restored = HierarchicalMemoryBank(size=4, dim=3, num_levels=2)
    restored.load_state_dict(bank.state_dict())
    # Also inside a model, as a Lightning checkpoint restores it.
    parent = torch.nn.ModuleDict({"bank": HierarchicalMemoryBank(size=4, dim=3, num_levels=2)})
    parent.load_state_dict({f"bank.{key}": value for key, value in bank.state_dict().items()})
    for step in range(3, 5):
        expected = bank(*_batch(3 * step, 3))
        torch.testing.assert_close(restored(*_batch(3 * step, 3)), expected)
        torch.testing.assert_close(parent["bank"](*_batch(3 * step, 3)), expected)


@pytest.mark.parametrize(
    ("num_filled", "ptr", "match"),
    [
        (6, 2, "num_filled=6 is outside 0..4"),  # returned rows 0..3, then 0..1 again
        (-1, 0, "num_filled=-1 is outside 0..4"),
        (4, 4, "ptr=4 is outside 0..3"),
        (2, 3, "ptr=3 differs from num_filled=2"),  # would return a never-written row
    ],
)
def test_inconsistent_counters_in_a_state_dict_are_refused(
    num_filled: int, ptr: int, match: str
) -> None:
    bank = HierarchicalMemoryBank(size=4, dim=3, num_levels=2)
    bank(*_batch(0, 3))
    state = bank.state_dict()
    state["num_filled"] = torch.tensor([num_filled])
    state["ptr"] = torch.tensor([ptr])
    restored = HierarchicalMemoryBank(size=4, dim=3, num_levels=2)
    parent = torch.nn.ModuleDict({"bank": HierarchicalMemoryBank(size=4, dim=3, num_levels=2)})
    with pytest.raises(ValueError, match=re.escape(match)):
        restored.load_state_dict(state)
    with pytest.raises(ValueError, match="memory bank's state_dict is inconsistent"):
        parent.load_state_dict({f"bank.{key}": value for key, value in state.items()})
    assert int(restored.num_filled) == 0 and restored._host_filled == 0  # nothing loaded
    assert restored(*_batch(3, 1))[0].shape == (0, 3)


def test_moves_and_casts_with_the_module_and_stores_in_its_dtype() -> None:
    bank = HierarchicalMemoryBank(size=4, dim=3, num_levels=2).to(torch.float64)
    bank(torch.randn(2, 3, dtype=torch.float32), _batch(0, 2)[1])
    bank_features, bank_labels = bank(*_batch(2, 1))
    assert bank_features.dtype == torch.float64 and bank_labels.dtype == torch.long
    reset = HierarchicalMemoryBank(size=4, dim=3, num_levels=2)
    reset(*_batch(0, 2))
    reset.reset()
    assert reset(*_batch(2, 1))[0].shape == (0, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0, "dim": 3, "num_levels": 2}, "size must be a positive int"),
        ({"size": 4, "dim": 0, "num_levels": 2}, "dim must be a positive int"),
        ({"size": 4, "dim": 3, "num_levels": True}, "num_levels must be a positive int"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HierarchicalMemoryBank(**kwargs)


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (torch.randn(2, 4), torch.zeros(2, 2, dtype=torch.long), r"shape \[batch_size, 3\]"),
        (torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long), "3 levels but 2 are expected"),
        (torch.randn(2, 3), torch.zeros(3, 2, dtype=torch.long), "3 rows but 2 are expected"),
        (torch.randn(2, 3), torch.zeros(2, 2, dtype=torch.complex64), "must be integers"),
        (torch.randn(2, 3), [[0, 0], [0, 1]], "labels must be a torch.Tensor"),
        (torch.randn(2, 3), torch.zeros(2, 2), "must be integers"),
        (torch.randn(2, 3), torch.full((2, 2), -2), "below -1"),
        (torch.full((2, 3), float("nan")), torch.zeros(2, 2, dtype=torch.long), "NaN"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), "floating"),
    ],
)
def test_bad_inputs_raise(features: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    bank = HierarchicalMemoryBank(size=4, dim=3, num_levels=2)
    with pytest.raises(ValueError, match=match):
        bank(features, labels)
    assert int(bank.num_filled) == 0  # nothing bad entered the queue


def _rank_queues(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    bank = HierarchicalMemoryBank(size=7, dim=3, num_levels=2, gather_distributed=True)
    # Global batch of 4 rows per step, 2 per rank.
    return [bank(*_batch(4 * step + 2 * rank, 2)) for step in range(4)]


@pytest.mark.distributed
def test_gathered_queues_are_identical_and_equal_the_global_queue(tmp_path: Path) -> None:
    per_rank = run_on_two_ranks(_rank_queues, tmp_path)
    single = HierarchicalMemoryBank(size=7, dim=3, num_levels=2)
    for step in range(4):
        expected = single(*_batch(4 * step, 4))  # one process seeing the global batch
        for rank in range(WORLD_SIZE):
            torch.testing.assert_close(per_rank[rank][step], expected)
    assert per_rank[0][3][0].shape == (7, 3)  # the queue did fill up


def test_without_value_checks_only_shapes_are_checked() -> None:
    bank = HierarchicalMemoryBank(size=4, dim=3, num_levels=2, check_values=False)
    bank(torch.full((1, 3), float("nan")), torch.full((1, 2), -5))  # values are not checked
    with pytest.raises(ValueError, match="3 levels but 2 are expected"):
        bank(torch.randn(1, 3), torch.zeros(1, 3, dtype=torch.long))
