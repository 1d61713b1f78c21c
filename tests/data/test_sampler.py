import math
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from lightly_hmlc.data import HierarchicalBatchSampler, ShapesDataset


def random_three_level_table(n: int = 720, seed: int = 0) -> torch.Tensor:
    """3 coarse x 3 middle x 4 fine classes, samples drawn at random (unequal counts)."""
    g = torch.Generator().manual_seed(seed)
    fine = torch.randint(0, 36, (n,), generator=g)
    return torch.stack([fine // 12, fine // 4, fine], 1)


def children_count(paths: torch.Tensor) -> dict[tuple[int, ...], int]:
    """Number of distinct children of every prefix node present in the table."""
    kids: dict[tuple[int, ...], set[int]] = {}
    for row in paths.tolist():
        known = [v for v in row if v >= 0]
        for level in range(len(known) - 1):
            kids.setdefault(tuple(known[: level + 1]), set()).add(known[level + 1])
    return {node: len(k) for node, k in kids.items()}


def check_positives(paths: torch.Tensor, batch: list[int]) -> None:
    """Every anchor has a positive at every known level, and a same-parent-other-child one."""
    kids = children_count(paths)
    rows = paths[batch].tolist()
    for a, anchor in enumerate(rows):
        known = [v for v in anchor if v >= 0]
        for level in range(len(known)):
            prefix = known[: level + 1]
            same = [b for b, other in enumerate(rows) if b != a and other[: level + 1] == prefix]
            assert same, f"anchor {batch[a]} ({anchor}) has no positive at level {level}"
            if level + 1 < len(known) and kids[tuple(prefix)] >= 2:
                below = [b for b in same if rows[b][level + 1] != anchor[level + 1]]
                assert below, (
                    f"anchor {batch[a]} ({anchor}) has no positive that shares level {level} "
                    f"and differs at level {level + 1}"
                )


@pytest.mark.parametrize("batch_size", [24, 29, 64])
def test_every_anchor_has_positives_at_every_level(batch_size: int) -> None:
    paths = random_three_level_table()
    sampler = HierarchicalBatchSampler(paths, batch_size, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 720 // batch_size
    for batch in batches:
        assert len(batch) == batch_size
        assert len(set(batch)) == batch_size  # leaves are large: no repeats in a batch
        check_positives(paths, batch)


def test_larger_groups_and_uneven_tree_with_unknown_levels() -> None:
    g = torch.Generator().manual_seed(1)
    rows = []
    # An uneven tree: coarse 0 has 4 middles with 1..3 fines; coarse 1 stops at level 1
    # (fine unknown, -1); coarse 2 has a single middle with 5 fines.
    for mid, fines in enumerate([1, 2, 3, 3]):
        for f in range(fines):
            rows += [[0, mid, 10 * mid + f]] * int(torch.randint(8, 20, (1,), generator=g))
    rows += [[1, 4, -1]] * 30 + [[1, 5, -1]] * 25
    rows += [[2, 6, 40 + f] for f in range(5)] * 12
    paths = torch.tensor(rows)
    sampler = HierarchicalBatchSampler(paths, 48, samples_per_class=3, classes_per_parent=3, seed=0)
    for batch in sampler:
        assert len(batch) == 48
        check_positives(paths, batch)


def test_deterministic_for_seed_and_epoch() -> None:
    paths = random_three_level_table()
    a = list(HierarchicalBatchSampler(paths, 24, seed=7))
    b = list(HierarchicalBatchSampler(paths, 24, seed=7))
    assert a == b
    assert a != list(HierarchicalBatchSampler(paths, 24, seed=8))
    sampler = HierarchicalBatchSampler(paths, 24, seed=7)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != a
    assert epoch1 == list(sampler)  # iterating again repeats the epoch
    sampler.set_epoch(0)
    assert list(sampler) == a


def test_epoch_uses_most_samples_about_once() -> None:
    paths = random_three_level_table(n=960)
    used = Counter(i for batch in HierarchicalBatchSampler(paths, 32) for i in batch)
    assert sum(used.values()) == 960
    assert len(used) > 0.9 * 960
    assert max(used.values()) <= 2


@pytest.mark.parametrize("replicas", [2, 3])
def test_ddp_sharding(replicas: int) -> None:
    paths = random_three_level_table()
    full = list(HierarchicalBatchSampler(paths, 24, seed=5))
    shards = [
        list(HierarchicalBatchSampler(paths, 24, seed=5, num_replicas=replicas, rank=r))
        for r in range(replicas)
    ]
    per_rank = len(full) // replicas
    assert [len(s) for s in shards] == [per_rank] * replicas
    for r, shard in enumerate(shards):
        # Rank r gets every replicas-th batch of the common global sequence.
        assert shard == full[r::replicas][:per_rank]
    # Different ranks never get the same batch, and hardly share samples in an epoch.
    sets = [{i for batch in shard for i in batch} for shard in shards]
    for r in range(replicas):
        for q in range(r + 1, replicas):
            assert not any(b in shards[q] for b in shards[r])
            assert len(sets[r] & sets[q]) < 0.1 * len(sets[r])


def test_ddp_epochs_are_synchronised_by_set_epoch() -> None:
    paths = random_three_level_table()
    samplers = [HierarchicalBatchSampler(paths, 24, num_replicas=2, rank=r) for r in range(2)]
    for sampler in samplers:
        sampler.set_epoch(4)
    reference = HierarchicalBatchSampler(paths, 24)
    reference.set_epoch(4)
    full = list(reference)
    assert list(samplers[0]) == full[0::2][: len(samplers[0])]
    assert list(samplers[1]) == full[1::2][: len(samplers[1])]


@pytest.mark.parametrize(
    "n, batch_size, replicas, drop_last",
    [
        (720, 24, 1, True),
        (730, 24, 1, True),
        (730, 24, 1, False),
        (730, 24, 4, True),
        (730, 24, 4, False),
        (100, 8, 3, False),
    ],
)
def test_len(n: int, batch_size: int, replicas: int, drop_last: bool) -> None:
    paths = random_three_level_table(n=n)
    total = n // batch_size if drop_last else math.ceil(n / batch_size)
    expected = total // replicas if drop_last else math.ceil(total / replicas)
    for rank in range(replicas):
        sampler = HierarchicalBatchSampler(
            paths, batch_size, drop_last=drop_last, num_replicas=replicas, rank=rank
        )
        assert len(sampler) == expected
        batches = list(sampler)
        assert len(batches) == expected
        assert all(len(batch) == batch_size for batch in batches)


def test_batch_size_too_small() -> None:
    paths = random_three_level_table()
    # One group: 2 samples x 2 middles x 2 fines = 8.
    HierarchicalBatchSampler(paths, 8)
    with pytest.raises(ValueError, match=r"batch_size=7 is too small.*batch_size >= 8"):
        HierarchicalBatchSampler(paths, 7)
    with pytest.raises(ValueError, match=r"batch_size >= 27"):
        HierarchicalBatchSampler(paths, 16, samples_per_class=3, classes_per_parent=3)


def test_small_classes_with_repetition_or_skipped() -> None:
    # Leaf (0, 0) has a single sample; the others have plenty.
    paths = torch.tensor([[0, 0]] + [[0, 1]] * 20 + [[1, 2]] * 20 + [[1, 3]] * 20)
    with_small = [i for b in HierarchicalBatchSampler(paths, 8, seed=0) for i in b]
    assert 0 in with_small
    batches = list(HierarchicalBatchSampler(paths, 8, seed=0))
    batch = next(b for b in batches if 0 in b)
    assert batch.count(0) >= 2  # used with repetition: it still has a same-class partner
    skipped = HierarchicalBatchSampler(paths, 8, seed=0, skip_small_classes=True)
    assert skipped.num_samples == 60
    assert all(0 not in batch for batch in skipped)
    for batch in skipped:
        check_positives(paths[1:], [i - 1 for i in batch])


def test_class_balanced_option() -> None:
    # Ten coarse classes with two fine classes each; coarse 0 has 10x the samples.
    rows = [
        [c, 2 * c + f] for c in range(10) for f in range(2) for _ in range(200 if c == 0 else 20)
    ]
    paths = torch.tensor(rows)

    def coarse0_share(balanced: bool) -> float:
        sampler = HierarchicalBatchSampler(paths, 8, class_balanced=balanced, seed=0)
        labels = [int(paths[i, 0]) for batch in sampler for i in batch]
        return labels.count(0) / len(labels)

    # By default classes follow the data (coarse 0 holds 400 / 760 of the samples);
    # balanced draws give each coarse class about 1 / 10.
    assert coarse0_share(False) == pytest.approx(400 / 760, abs=0.1)
    assert coarse0_share(True) == pytest.approx(0.1, abs=0.05)


def long_tailed_two_level_table() -> torch.Tensor:
    """2 coarse classes of 2 fine classes each: 2 x 100 against 2 x 750 samples."""
    rows = [[0, f] for f in range(2) for _ in range(100)]
    rows += [[1, 2 + f] for f in range(2) for _ in range(750)]
    return torch.tensor(rows)


def test_equal_top_level_shares_oversample_the_small_coarse_class() -> None:
    paths = long_tailed_two_level_table()  # coarse 0: 200 of 1700 samples (12 %)
    sampler = HierarchicalBatchSampler(paths, 64, seed=0)
    used = Counter(i for batch in sampler for i in batch)
    coarse = [int(paths[i, 0]) for batch in sampler for i in batch]
    # Every batch is half coarse 0: each of its samples is used about 4 times an epoch.
    assert coarse.count(0) / len(coarse) == pytest.approx(0.5, abs=0.02)
    assert sum(used[i] for i in range(200)) / 200 > 3.5


@pytest.mark.parametrize("shuffle", [True, False])
def test_frequency_top_level_shares_follow_the_data(shuffle: bool) -> None:
    paths = long_tailed_two_level_table()
    sampler = HierarchicalBatchSampler(
        paths, 64, seed=0, shuffle=shuffle, top_level_shares="frequency"
    )
    batches = list(sampler)
    coarse = [int(paths[i, 0]) for batch in batches for i in batch]
    # One group of 4 per coarse class is guaranteed; the other 14 of a batch's 16 groups
    # follow the data, which holds 200 / 1700 of coarse 0 (drawn at random, or, without
    # shuffling, always the class with the most unused samples: the data's share).
    share = coarse.count(0) / len(coarse)
    assert 200 / 1700 - 0.02 <= share <= (1 + 14 * 200 / 1700) / 16 + 0.02
    # Each batch still holds both coarse classes (coarse negatives for every anchor) and
    # a positive at every level for every anchor.
    for batch in batches:
        assert {int(paths[i, 0]) for i in batch} == {0, 1}
        check_positives(paths, batch)
    used = Counter(i for batch in batches for i in batch)
    assert max(used.values()) <= 2  # about once an epoch, no sample used 4 times


def test_top_level_shares_is_checked() -> None:
    with pytest.raises(ValueError, match="top_level_shares must be one of"):
        HierarchicalBatchSampler(long_tailed_two_level_table(), 64, top_level_shares="even")


def test_no_shuffle_is_deterministic_round_robin() -> None:
    paths = random_three_level_table()
    a = HierarchicalBatchSampler(paths, 24, shuffle=False, seed=0)
    b = HierarchicalBatchSampler(paths, 24, shuffle=False, seed=9)
    b.set_epoch(3)
    assert list(a) == list(b)
    for batch in a:
        check_positives(paths, batch)


def test_flat_labels() -> None:
    labels = torch.arange(40) % 5
    sampler = HierarchicalBatchSampler(labels, 10, samples_per_class=2)
    for batch in sampler:
        counts = Counter(labels[batch].tolist())
        assert min(counts.values()) >= 2


@pytest.mark.parametrize(
    "paths, match",
    [
        (torch.tensor([[0, 1], [-1, 2]]), "known level after an unknown"),
        (torch.tensor([[0.0, 1.0]]), "integers"),
        (torch.tensor([[0, -2]]), "-1"),
        (torch.zeros(2, 2, 2, dtype=torch.long), r"label_paths must have shape \[B\] or \[B, L\]"),
        (torch.full((4, 2), -1), "No usable sample"),
    ],
)
def test_invalid_label_paths(paths: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HierarchicalBatchSampler(paths, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"samples_per_class": 1}, "samples_per_class"),
        ({"classes_per_parent": 1}, "classes_per_parent"),
        ({"num_replicas": 2, "rank": 2}, "rank"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 400}, "Too few samples"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    args = {"batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        HierarchicalBatchSampler(random_three_level_table(n=100), **args)


def test_with_dataloader_and_dataset_label_paths() -> None:
    ds = ShapesDataset(num_samples=96)
    sampler = HierarchicalBatchSampler(ds.label_paths, batch_size=16)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=lambda items: items)
    batches = list(loader)
    assert len(batches) == 6
    paths = torch.stack([path for _, path in batches[0]])
    assert paths.shape == (16, 3)
    first = next(iter(sampler))
    check_positives(ds.label_paths, first)
    assert torch.equal(paths, ds.label_paths[first])


def test_samples_whose_path_stops_at_an_inner_node_are_drawn() -> None:
    paths = []
    for coarse in range(2):
        paths += [[coarse, 2 * coarse]] * 4 + [[coarse, 2 * coarse + 1]] * 4 + [[coarse, -1]] * 8
    table = torch.tensor(paths)
    sampler = HierarchicalBatchSampler(table, batch_size=8, seed=0)
    drawn = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        drawn += [index for batch in sampler for index in batch]
    coarse_only = {i for i, path in enumerate(paths) if path[1] == -1}
    assert coarse_only & set(drawn), "samples labelled only at the coarse level were never drawn"
    assert len(set(drawn)) == len(paths)
