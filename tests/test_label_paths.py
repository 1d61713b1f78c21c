from __future__ import annotations

import pytest
import torch

from lightly_hmlc.label_paths import check_label_paths
from lightly_hmlc.loss import HMLCLoss, SupConLoss
from lightly_hmlc.models.modules import BlockMaskHead


def test_valid_paths_come_back_as_int64_without_a_copy() -> None:
    paths = torch.tensor([[0, 3], [1, -1]])
    checked = check_label_paths(paths, num_levels=2, batch_size=2)
    assert checked.dtype == torch.int64 and checked.data_ptr() == paths.data_ptr()
    small = torch.tensor([[0, 3]], dtype=torch.int16)
    assert check_label_paths(small).dtype == torch.int64
    assert check_label_paths(small).tolist() == [[0, 3]]


def test_class_ids_become_one_level_paths_only_when_allowed() -> None:
    ids = torch.tensor([2, 5, 7])
    assert check_label_paths(ids, allow_class_ids=True).tolist() == [[2], [5], [7]]
    with pytest.raises(ValueError, match=r"shape \[B, L\]"):
        check_label_paths(ids)


@pytest.mark.parametrize(
    ("labels", "kwargs", "message"),
    [
        ([[0, 1]], {}, "must be a torch.Tensor.*torch.as_tensor"),
        (torch.tensor([[0.0, 1.0]]), {}, "must be integers.*labels.long()"),
        (torch.tensor([[True]]), {}, "must be integers"),
        (torch.zeros(2, 2, 2, dtype=torch.long), {}, r"shape \[B, L\]"),
        (torch.zeros(3, 0, dtype=torch.long), {}, "no level"),
        (torch.zeros(3, 2, dtype=torch.long), {"num_levels": 3}, "2 levels but 3"),
        (torch.zeros(3, 2, dtype=torch.long), {"batch_size": 4}, "3 rows but 4"),
        (torch.zeros(1, 2, dtype=torch.long), {"num_classes": [2, 2]}, "check_values=True"),
        (torch.tensor([[0, -2]]), {"check_values": True}, "below -1"),
        (
            torch.tensor([[0, 1], [1, 4]]),
            {"check_values": True, "num_classes": [2, 4]},
            "class id 4 at level 1, which has 4 classes",
        ),
        (
            torch.tensor([[0, 1], [-1, 2]]),
            {"check_values": True, "known_prefix": True},
            r"Row 1 .*known level after an unknown",
        ),
    ],
)
def test_errors_name_the_problem(labels: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_label_paths(labels, **kwargs)  # type: ignore[arg-type]


def test_the_name_appears_in_the_message() -> None:
    with pytest.raises(ValueError, match="^memory_labels must be integers"):
        check_label_paths(torch.zeros(2, 1), name="memory_labels")


def test_gaps_are_allowed_unless_asked_for() -> None:
    # The losses accept rows with a known level below an unknown one.
    row = torch.tensor([[-1, 2]])
    assert check_label_paths(row, check_values=True).tolist() == [[-1, 2]]


def test_the_default_check_never_reads_a_value() -> None:
    # A meta tensor has a shape and a dtype but no data: any read of a value raises. So
    # passing here proves the default check needs no host-device synchronisation.
    meta = torch.empty(8, 3, dtype=torch.long, device="meta")
    assert check_label_paths(meta, num_levels=3, batch_size=8).device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError)):
        check_label_paths(meta, check_values=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_synchronisation_on_cuda() -> None:
    labels = torch.randint(0, 4, (64, 3), device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        check_label_paths(labels, num_levels=3, batch_size=64)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(ValueError, match="below -1"):
        check_label_paths(labels - 5, check_values=True)


@pytest.mark.parametrize(
    "labels",
    [
        [[0, 1]] * 4,  # not a tensor
        torch.zeros(4, 2),  # not integers
        torch.zeros(4, 2, 1, dtype=torch.long),  # wrong shape
        torch.zeros(4, 0, dtype=torch.long),  # no level
    ],
)
def test_losses_and_mask_heads_give_the_same_label_errors(labels: object) -> None:
    # The losses' and the heads' label checks are check_label_paths: the same mistake
    # gives the same message everywhere, whoever finds it.
    with pytest.raises(ValueError) as expected:
        check_label_paths(labels)  # type: ignore[arg-type]
    z = torch.randn(4, 8)
    for check in (
        lambda: HMLCLoss()(z, z, labels),
        lambda: SupConLoss()(z, z, labels),
        lambda: BlockMaskHead(num_levels=2, dim=8)(z, labels),
    ):
        with pytest.raises(ValueError) as found:
            check()
        # Only the expected shape may name the depth the caller knows.
        assert str(found.value).split(" [B")[0] == str(expected.value).split(" [B")[0]


def test_a_wrong_depth_or_row_count_says_who_expects_what() -> None:
    z = torch.randn(4, 8)
    deep = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="3 levels but 2 are expected: the loss was configured"):
        HMLCLoss(num_levels=2)(z, z, deep)
    with pytest.raises(ValueError, match="3 levels but 2 are expected: the head was configured"):
        BlockMaskHead(num_levels=2, dim=8)(z, deep)
    with pytest.raises(ValueError, match="5 rows but 4 are expected: pass one label path per"):
        HMLCLoss()(z, z, torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"5 rows but 4 are expected: .*labels\.repeat\(2, 1\)"):
        BlockMaskHead(num_levels=2, dim=8)(z, torch.zeros(5, 2, dtype=torch.long))
