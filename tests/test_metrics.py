from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from lightly_hmlc.hierarchy import LabelHierarchy
from lightly_hmlc.metrics import (
    hierarchical_distance_at_k,
    implied_coarse_accuracy,
    leaf_ids_from_paths,
    mistake_severity,
    normalized_mutual_info,
    paths_from_fine_predictions,
    per_level_accuracy,
)


@pytest.fixture
def tree() -> LabelHierarchy:
    # Three levels; LCA heights: a-b 1, a-c 2, a-d 3, c-d 3.
    return LabelHierarchy.from_nested({"A": {"A1": ["a", "b"], "A2": ["c"]}, "B": {"B1": ["d"]}})


def ids(h: LabelHierarchy, names: str) -> torch.Tensor:
    return torch.tensor([h.leaf_id(n) for n in names.split()])


# ---------------------------------------------------------------------- accuracy
def test_per_level_accuracy_by_hand() -> None:
    pred = torch.tensor([[0, 1, 2], [1, 1, 0], [0, 0, 0], [1, 2, 3]])
    true = torch.tensor([[0, 1, 2], [0, 1, 0], [0, 1, -1], [-1, -1, 3]])
    # level 0: rows 0..2 known, 2 right; level 1: rows 0..2 known, 2 right; level 2: rows 0, 1, 3.
    expected = torch.tensor([2 / 3, 2 / 3, 3 / 3])
    torch.testing.assert_close(per_level_accuracy(pred, true), expected)


def test_per_level_accuracy_unknown_prediction_is_wrong() -> None:
    acc = per_level_accuracy(torch.tensor([[-1], [0]]), torch.tensor([[0], [0]]))
    assert acc.tolist() == [0.5]


def test_per_level_accuracy_level_without_labels_is_nan_with_warning() -> None:
    with pytest.warns(UserWarning, match=r"level\(s\) \[1\]"):
        acc = per_level_accuracy(torch.tensor([[0, 0]]), torch.tensor([[0, -1]]))
    assert acc[0] == 1.0 and math.isnan(acc[1])


@pytest.mark.parametrize(
    "pred, true",
    [
        (torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long)),
        (torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long)),
        (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)),
    ],
)
def test_per_level_accuracy_rejects_bad_input(pred: torch.Tensor, true: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        per_level_accuracy(pred, true)


def test_leaf_ids_from_paths_ragged() -> None:
    h = LabelHierarchy({"cat": "animal", "animal": "thing", "rock": "thing"})
    paths = torch.tensor([[0, 0, 0], [0, 1, -1], [0, 0, -1], [0, 5, 0], [-1, -1, -1], [0, 1, 0]])
    # cat, rock, incomplete, out of range, unknown, rock has no level 2.
    assert leaf_ids_from_paths(paths, h).tolist() == [
        h.leaf_id("cat"),
        h.leaf_id("rock"),
        -1,
        -1,
        -1,
        -1,
    ]


def test_leaf_ids_from_paths_round_trip(tree: LabelHierarchy) -> None:
    leaf = torch.tensor([3, 0, 2, 1, 1])
    assert leaf_ids_from_paths(tree.label_paths(leaf), tree).tolist() == leaf.tolist()
    with pytest.raises(ValueError, match="levels"):
        leaf_ids_from_paths(torch.zeros(2, 2, dtype=torch.long), tree)


def test_paths_from_fine_predictions_and_implied_accuracy(tree: LabelHierarchy) -> None:
    pred = ids(tree, "a b c d")
    paths = paths_from_fine_predictions(pred, tree)
    assert paths.tolist() == [tree.label_paths([n])[0].tolist() for n in "a b c d".split()]
    true = tree.label_paths(["a", "a", "a", "a"])
    # implied: level 0 A,A,A,B -> 3/4; level 1 A1,A1,A2,B1 -> 2/4; level 2 a,b,c,d -> 1/4.
    torch.testing.assert_close(
        implied_coarse_accuracy(pred, true, tree), torch.tensor([0.75, 0.5, 0.25])
    )
    with pytest.raises(ValueError, match="Unknown fine class"):
        paths_from_fine_predictions(torch.tensor([7]), tree)


# ---------------------------------------------------------------------- mistakes
def test_mistake_severity_by_hand(tree: LabelHierarchy) -> None:
    true = ids(tree, "a a a a b")
    pred = ids(tree, "a b c d b")
    assert mistake_severity(pred, true, tree) == pytest.approx((1 + 2 + 3) / 3)


def test_mistake_severity_ignores_unknown_and_has_no_nan(tree: LabelHierarchy) -> None:
    true = torch.tensor([tree.leaf_id("a"), -1, -1])
    pred = ids(tree, "a d c")
    assert mistake_severity(pred, true, tree) == 0.0
    assert (
        mistake_severity(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), tree)
        == 0.0
    )
    true = torch.tensor([tree.leaf_id("a"), -1, tree.leaf_id("d")])
    assert mistake_severity(pred, true, tree) == 3.0  # only the c for d counts


def test_hierarchical_distance_by_hand(tree: LabelHierarchy) -> None:
    topk = torch.stack([ids(tree, "a b d"), ids(tree, "a c d"), ids(tree, "d d d")])
    true = torch.tensor([tree.leaf_id("a"), tree.leaf_id("c"), -1])
    assert hierarchical_distance_at_k(topk, true, tree) == pytest.approx(
        (0 + 1 + 3 + 2 + 0 + 3) / 6
    )


def test_hierarchical_distance_at_1_is_severity_times_error(tree: LabelHierarchy) -> None:
    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (200,), generator=generator)
    true = torch.randint(0, 4, (200,), generator=generator)
    error = float((pred != true).float().mean())
    hdist = hierarchical_distance_at_k(pred[:, None], true, tree)
    assert hdist == pytest.approx(mistake_severity(pred, true, tree) * error)


def test_hierarchical_distance_without_labels_warns(tree: LabelHierarchy) -> None:
    with pytest.warns(UserWarning, match="NaN"):
        assert math.isnan(
            hierarchical_distance_at_k(
                torch.zeros(2, 1, dtype=torch.long), torch.tensor([-1, -1]), tree
            )
        )
    with pytest.raises(ValueError, match=r"\[N, k\]"):
        hierarchical_distance_at_k(
            torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), tree
        )
    with pytest.raises(ValueError, match="integer"):
        mistake_severity(torch.zeros(2), torch.zeros(2, dtype=torch.long), tree)


# ---------------------------------------------------------------------- NMI
@pytest.mark.parametrize("seed", range(6))
def test_nmi_matches_sklearn(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    n = int(torch.randint(5, 300, (1,), generator=generator))
    labels = torch.randint(0, 1 + seed * 3, (n,), generator=generator)
    clusters = torch.randint(0, 2 + seed, (n,), generator=generator) * 7 - 3  # arbitrary ids
    if seed % 2:
        clusters = torch.where(torch.rand(n, generator=generator) < 0.6, labels, clusters)
    expected = normalized_mutual_info_score(labels.numpy(), clusters.numpy())
    assert normalized_mutual_info(clusters, labels) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize(
    "clusters, labels",
    [
        ([0, 0, 0], [1, 1, 1]),
        ([0, 1, 2], [0, 0, 0]),
        ([0, 1, 2, 3], [3, 2, 1, 0]),
        ([0, 1], [5, 5]),
    ],
)
def test_nmi_edge_cases_match_sklearn(clusters: list[int], labels: list[int]) -> None:
    expected = normalized_mutual_info_score(labels, clusters)
    assert normalized_mutual_info(torch.tensor(clusters), torch.tensor(labels)) == pytest.approx(
        expected
    )


def test_nmi_ignores_unknown_labels() -> None:
    clusters = torch.tensor([0, 0, 1, 1, 2, 0])
    labels = torch.tensor([0, 0, 1, 1, -1, -1])
    assert normalized_mutual_info(clusters, labels) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        normalized_mutual_info(clusters, labels[:3])
