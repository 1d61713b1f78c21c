from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from evaluate import (
    evaluate_features,
    extract_features,
    format_metrics_table,
    knn_predict_levels,
    per_level_balanced_accuracy,
    plot_embeddings,
    plot_training_curves,
    train_linear_probe,
)
from lightly.utils.benchmarking import knn_predict
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from lightly_hmlc.hierarchy import LabelHierarchy
from lightly_hmlc.metrics import per_level_accuracy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST: dict[str, Any] = {
    "probe_epochs": 30,
    "probe_lr": 0.01,
    "probe_batch_size": 64,
    "knn_k": 5,
    "hdist_k": 2,
}


@pytest.fixture
def hierarchy() -> LabelHierarchy:
    # 3 coarse classes x 2 fine classes.
    return LabelHierarchy.from_nested({f"c{i}": [f"f{i}{j}" for j in range(2)] for i in range(3)})


def hierarchical_blobs(
    hierarchy: LabelHierarchy, n: int, noise: float, seed: int, dim: int = 16
) -> tuple[Tensor, Tensor]:
    """Features = coarse centre + smaller fine offset + noise; siblings lie closer."""
    generator = torch.Generator().manual_seed(123)
    coarse = 4 * torch.randn(hierarchy.num_classes_per_level[0], dim, generator=generator)
    fine = 1.5 * torch.randn(len(hierarchy.leaves), dim, generator=generator)
    generator.manual_seed(seed)
    leaf = torch.randint(0, len(hierarchy.leaves), (n,), generator=generator)
    paths = hierarchy.label_paths(leaf)
    features = coarse[paths[:, 0]] + fine[leaf] + noise * torch.randn(n, dim, generator=generator)
    return features, paths


def test_separable_features_reach_full_accuracy(hierarchy: LabelHierarchy) -> None:
    train = hierarchical_blobs(hierarchy, 300, noise=0.1, seed=0)
    test = hierarchical_blobs(hierarchy, 120, noise=0.1, seed=1)
    results = evaluate_features(*train, *test, hierarchy, **FAST)
    for level in range(2):
        assert results[f"level{level}/linear_acc"] == 1.0
        assert results[f"level{level}/balanced_linear_acc"] == 1.0
        assert results[f"level{level}/knn_acc"] == 1.0
        assert results[f"level{level}/nmi"] > 0.95
        assert results[f"hier/implied_acc_level{level}"] == 1.0
    assert results["hier/mistake_severity"] == 0.0
    # Top-1 is right (0) and the runner-up is the sibling (1): better mistakes.
    assert results["hier/hdist@2"] == pytest.approx(0.5)
    assert results["probe/train_seconds"] > 0
    assert all(math.isfinite(value) for value in results.values())


def test_random_features_are_near_chance(hierarchy: LabelHierarchy) -> None:
    generator = torch.Generator().manual_seed(0)
    leaf = torch.randint(0, 6, (1200,), generator=generator)
    paths = hierarchy.label_paths(leaf)
    features = torch.randn(1200, 16, generator=generator)
    results = evaluate_features(
        features[:600], paths[:600], features[600:], paths[600:], hierarchy, **FAST
    )
    for level, chance in enumerate([1 / 3, 1 / 6]):
        assert abs(results[f"level{level}/linear_acc"] - chance) < 0.1
        assert abs(results[f"level{level}/knn_acc"] - chance) < 0.1
        assert results[f"level{level}/nmi"] < 0.05
    # Random mistakes: 1 of the 5 wrong leaves is a sibling (height 1), 4 are not (2).
    assert results["hier/mistake_severity"] == pytest.approx(1.8, abs=0.1)


def test_reported_accuracy_is_the_final_probe_and_reproducible(hierarchy: LabelHierarchy) -> None:
    train = hierarchical_blobs(hierarchy, 300, noise=3.0, seed=0)
    test = hierarchical_blobs(hierarchy, 200, noise=3.0, seed=1)
    results = evaluate_features(*train, *test, hierarchy, **FAST, seed=3)
    # The reported number is exactly the accuracy of the last epoch's weights.
    threads = torch.get_num_threads()
    probe = train_linear_probe(*train, hierarchy, epochs=30, lr=0.01, batch_size=64, seed=3)
    assert torch.get_num_threads() == threads  # the probe's single thread is undone
    final = per_level_accuracy(probe.predict_paths(test[0], 2), test[1])
    for level in range(2):
        assert results[f"level{level}/linear_acc"] == float(final[level])
    # Balanced tree: the fine head is the leaf classifier; its implied fine accuracy is its own.
    assert results["hier/implied_acc_level1"] == results["level1/linear_acc"]
    again = evaluate_features(*train, *test, hierarchy, **FAST, seed=3)
    assert {k: v for k, v in again.items() if not k.endswith("seconds")} == {
        k: v for k, v in results.items() if not k.endswith("seconds")
    }
    # The seed matters (shuffling), so the comparison above is not vacuous.
    other = train_linear_probe(*train, hierarchy, epochs=30, lr=0.01, batch_size=64, seed=4)
    assert not torch.equal(other.linear.weight, probe.linear.weight)


def test_probe_ignores_unknown_targets(hierarchy: LabelHierarchy) -> None:
    features, paths = hierarchical_blobs(hierarchy, 300, noise=0.1, seed=0)
    corrupted = paths.clone()
    corrupted[::2, 1] = -1  # half the fine labels unknown
    probe = train_linear_probe(features, corrupted, hierarchy, epochs=30, lr=0.01, batch_size=64)
    assert math.isfinite(probe.final_loss)
    test = hierarchical_blobs(hierarchy, 100, noise=0.1, seed=1)
    assert per_level_accuracy(probe.predict_paths(test[0], 2), test[1]).tolist() == [1.0, 1.0]
    # A batch whose targets at a level are all unknown adds 0, not NaN.
    corrupted[:, 1] = -1
    probe = train_linear_probe(features, corrupted, hierarchy, epochs=2, batch_size=64)
    assert math.isfinite(probe.final_loss)
    assert torch.equal(probe.linear.weight[3:], torch.zeros_like(probe.linear.weight[3:]))


def test_ragged_hierarchy_gets_a_leaf_head() -> None:
    h = LabelHierarchy.from_nested({"animal": ["cat", "dog"], "rock": None, "car": None})
    generator = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(len(h.leaves), 8, generator=generator)
    leaf = torch.randint(0, len(h.leaves), (200,), generator=generator)
    features = centres[leaf] + 0.1 * torch.randn(200, 8, generator=generator)
    paths = h.label_paths(leaf)
    probe = train_linear_probe(features, paths, h, epochs=20, lr=0.01, batch_size=64)
    assert probe.head_sizes == [3, 2, 4] and probe.leaf_head == 2
    results = evaluate_features(
        features[:100], paths[:100], features[100:], paths[100:], h, **{**FAST, "hdist_k": 3}
    )
    assert results["level0/linear_acc"] == 1.0
    assert results["hier/implied_acc_level0"] == 1.0
    assert results["hier/mistake_severity"] == 0.0
    assert math.isfinite(results["hier/hdist@3"])


def test_knn_matches_lightly_and_skips_unknown_bank_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 8, generator=generator)
    labels = torch.randint(0, 4, (50, 1), generator=generator)
    queries = torch.randn(20, 8, generator=generator)
    ours = knn_predict_levels(bank, labels, queries, [4], k=7, temperature=0.1, chunk_size=6)
    expected = knn_predict(
        nn.functional.normalize(queries, dim=1),
        nn.functional.normalize(bank, dim=1).T,
        labels[:, 0],
        num_classes=4,
        knn_k=7,
        knn_t=0.1,
    )[:, 0]
    assert torch.equal(ours[:, 0], expected)
    # A bank sample with an unknown label never votes, however close it is.
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    paths = torch.tensor([[0, -1], [0, 1], [1, 0]])
    pred = knn_predict_levels(bank, paths, torch.tensor([[1.0, 0.0]]), [2, 2], k=1)
    assert pred.tolist() == [[0, 1]]


def test_bad_inputs_raise(hierarchy: LabelHierarchy) -> None:
    features, paths = hierarchical_blobs(hierarchy, 20, noise=0.1, seed=0)
    with pytest.raises(ValueError, match="hdist_k"):
        evaluate_features(features, paths, features, paths, hierarchy, hdist_k=7)
    with pytest.raises(ValueError, match="levels"):
        evaluate_features(features, paths[:, :1], features, paths, hierarchy)
    with pytest.raises(ValueError, match="dimension"):
        evaluate_features(features, paths, features[:, :3], paths, hierarchy)
    bad = paths.clone()
    bad[0, 1] = 6
    with pytest.raises(ValueError, match="outside"):
        evaluate_features(features, bad, features, paths, hierarchy)


def test_format_metrics_table() -> None:
    results = {
        "supcon": {
            "hier/mistake_severity": 1.25,
            "level1/linear_acc": 0.5,
            "level0/linear_acc": 0.75,
        },
        "hm|lc": {"level0/linear_acc": 0.8, "level0/nmi": 0.123456},
    }
    table = format_metrics_table(results, ["coarse", "fine"])
    lines = table.splitlines()
    assert lines[0] == (
        "| method | coarse linear acc (%) | coarse nmi (%) | fine linear acc (%) | mistake severity |"
    )
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| supcon | 75.00 | – | 50.00 | 1.250 |"
    assert lines[3] == "| hm\\|lc | 80.00 | 12.35 | – | – |"
    assert format_metrics_table(results).splitlines()[0].startswith("| method | L0 linear acc")


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_plot_embeddings_writes_png(tmp_path: Path, hierarchy: LabelHierarchy, method: str) -> None:
    features, paths = hierarchical_blobs(hierarchy, 80, noise=0.5, seed=0)
    paths[0, 1] = -1
    out = tmp_path / "sub" / "emb.png"
    plot_embeddings(features, paths, hierarchy, out, max_points=50, method=method)
    assert out.read_bytes().startswith(PNG_MAGIC) and out.stat().st_size > 1000


def test_plot_training_curves_writes_png(tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    plot_training_curves({"train_loss": [3.0, 2.0, 1.5], "lr": [0.1, 0.05, 0.0], "empty": []}, out)
    assert out.read_bytes().startswith(PNG_MAGIC) and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="no values"):
        plot_training_curves({"train_loss": []}, tmp_path / "none.png")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.drop(torch.relu(self.norm(self.conv(x)))))  # [B, 4, 2, 2]


def test_extract_features_shapes_and_restores_modes() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    assert model.norm.running_mean is not None
    model.norm.running_mean.uniform_()
    images = torch.randn(10, 3, 8, 8)
    paths = torch.randint(0, 3, (10, 2))
    model.train()
    model.pool.eval()  # a mixed state must come back as it was
    modes = {name: module.training for name, module in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, labels = extract_features(model, TensorDataset(images, paths), batch_size=4)
    assert features.shape == (10, 16) and features.dtype == torch.float32
    assert labels.dtype == torch.int64 and torch.equal(labels, paths)
    assert {name: module.training for name, module in model.named_modules()} == modes
    # Eval mode: BatchNorm statistics untouched, no dropout, full float32 precision.
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(features, model(images).flatten(1))


class ListPaths(Dataset):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int) -> tuple[Tensor, list[int]]:
        return torch.full((3, 8, 8), float(index)), [index % 2, index]


def test_extract_features_accepts_paths_as_lists() -> None:
    _, labels = extract_features(TinyNet(), ListPaths(), batch_size=2)
    assert labels.tolist() == [[i % 2, i] for i in range(5)]


class IntLabels(Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return torch.randn(3, 8, 8), index


def test_extract_features_rejects_class_indices_and_empty_data() -> None:
    with pytest.raises(ValueError, match="LabelPathTransform"):
        extract_features(TinyNet(), IntLabels())
    empty = TensorDataset(torch.empty(0, 3, 8, 8), torch.empty(0, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        extract_features(TinyNet(), empty)


def test_separation_metrics_reward_clustered_features() -> None:
    from evaluate import separation_metrics

    torch.manual_seed(0)
    paths = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]]).repeat(50, 1)
    # Tree-shaped centres: fine classes close to their coarse class's centre.
    coarse = torch.randn(2, 8) * 3
    centres = coarse[torch.tensor([0, 0, 1, 1])] + torch.randn(4, 8)
    clustered = centres[paths[:, 1]] + 0.1 * torch.randn(200, 8)
    noise = torch.randn(200, 8)
    good, bad = separation_metrics(clustered, paths, 0), separation_metrics(noise, paths, 0)
    for key in ("level0/explained_var", "level1/fisher_ratio", "level1/silhouette", "hier/cpcc"):
        assert good[key] > bad[key], key
    # A single level has no CPCC: the key is left out, not NaN.
    assert "hier/cpcc" not in separation_metrics(clustered, paths[:, 1:], 0)


def balanced_accuracy_by_hand(pred: list[int], true: list[int]) -> float:
    """Mean over the classes present (true label >= 0) of the share of them predicted right."""
    recalls = []
    for cls in sorted({t for t in true if t >= 0}):
        members = [p for p, t in zip(pred, true, strict=True) if t == cls]
        recalls.append(sum(p == cls for p in members) / len(members))
    return sum(recalls) / len(recalls)


def test_balanced_accuracy_weighs_every_class_present_equally() -> None:
    generator = torch.Generator().manual_seed(0)
    # Imbalanced truth at level 0 (two thirds class 0), unknown labels at level 1, and a
    # predictor biased towards class 1, so that the classes' recalls differ.
    true = torch.stack(
        [torch.randint(0, 3, (200,), generator=generator) ** 2 // 4,
         torch.randint(-1, 6, (200,), generator=generator)], dim=1
    )  # fmt: skip
    pred = torch.where(torch.rand(200, 2, generator=generator) < 0.7, true.clamp(min=0), 1)
    got = per_level_balanced_accuracy(pred, true)
    for level in range(2):
        want = balanced_accuracy_by_hand(pred[:, level].tolist(), true[:, level].tolist())
        assert got[level] == pytest.approx(want)
    plain = per_level_accuracy(pred, true)
    assert got[0] != pytest.approx(float(plain[0]))  # the imbalance shows


def test_balanced_accuracy_of_a_level_without_known_labels_is_nan() -> None:
    true = torch.tensor([[0, -1], [1, -1]])
    got = per_level_balanced_accuracy(true.clamp(min=0), true)
    assert got[0] == 1.0 and math.isnan(got[1])
