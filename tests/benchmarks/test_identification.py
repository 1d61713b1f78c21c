"""The identification score: what each level's own features carry (evaluate.py, run.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import lab
import main
import methods
import pytest
import torch
from evaluate import (
    format_metrics_table,
    identification_matrix,
    identification_metrics,
    plot_identification,
    split_levels,
)
from paired import report
from run import evaluate_run
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightly_hmlc.hierarchy import LabelHierarchy
from tests.benchmarks.suite_utils import load_metrics, tiny_args

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROBE: dict[str, Any] = {"probe_epochs": 30, "probe_lr": 0.01, "probe_batch_size": 64}


@pytest.fixture
def hierarchy() -> LabelHierarchy:
    # 2 coarse classes x 4 fine classes: a probe that knows only the coarse class guesses
    # the fine one at 1/4, one that knows only the index among siblings at 1/2.
    return LabelHierarchy.from_nested({f"c{i}": [f"f{i}{j}" for j in range(4)] for i in range(2)})


def sibling_index(hierarchy: LabelHierarchy, paths: Tensor) -> Tensor:
    """The fine class's index among its siblings (says nothing about the coarse class)."""
    table = hierarchy.leaf_paths
    index = torch.zeros(hierarchy.num_classes_per_level[1], dtype=torch.long)
    for coarse in range(hierarchy.num_classes_per_level[0]):
        children = sorted(int(f) for f in table[table[:, 0] == coarse, 1])
        for rank, fine in enumerate(children):
            index[fine] = rank
    return index[paths[:, 1]]


def level_codes(
    hierarchy: LabelHierarchy, n: int, seed: int, dim: int = 8, noise: float = 0.3
) -> tuple[Tensor, Tensor]:
    """Per-level features ``[n, 2, dim]``: level 0 a code of the coarse class, level 1 a
    code of the sibling index, each plus Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    leaf = torch.randint(0, len(hierarchy.leaves), (n,), generator=generator)
    paths = hierarchy.label_paths(leaf)
    codes = 3 * torch.eye(dim)
    level0 = codes[paths[:, 0]] + noise * torch.randn(n, dim, generator=generator)
    level1 = codes[sibling_index(hierarchy, paths)] + noise * torch.randn(
        n, dim, generator=generator
    )
    return torch.stack([level0, level1], dim=1), paths


def test_features_that_carry_only_their_own_level_get_a_positive_advantage(
    hierarchy: LabelHierarchy,
) -> None:
    train = level_codes(hierarchy, 400, seed=0)
    test = level_codes(hierarchy, 200, seed=1)
    matrix = identification_matrix(*train, *test, hierarchy, **PROBE)
    assert matrix.shape == (2, 2)
    # Own level read off its features; the other level at chance given what they hold.
    assert matrix[0, 0] > 0.97 and matrix[1, 1] > 0.4
    assert abs(float(matrix[1, 0]) - 0.5) < 0.15 and abs(float(matrix[0, 1]) - 0.25) < 0.12
    scores = identification_metrics(matrix)
    assert scores["ident/advantage_level0"] > 0.3
    assert scores["ident/advantage_level1"] > 0.1
    mean = (scores["ident/advantage_level0"] + scores["ident/advantage_level1"]) / 2
    assert scores["ident/advantage_mean"] == pytest.approx(mean)


def test_identical_features_at_both_levels_have_no_advantage(hierarchy: LabelHierarchy) -> None:
    def same_at_both(seed: int, n: int) -> tuple[Tensor, Tensor]:
        features, paths = level_codes(hierarchy, n, seed)
        mixed = features.flatten(1)  # both levels' information, the same at each level
        return torch.stack([mixed, mixed], dim=1), paths

    matrix = identification_matrix(*same_at_both(0, 400), *same_at_both(1, 200), hierarchy, **PROBE)
    assert matrix[0, 0] > 0.9  # the features do carry the labels
    scores = identification_metrics(matrix)
    for key in ("ident/advantage_level0", "ident/advantage_level1", "ident/advantage_mean"):
        assert abs(scores[key]) < 0.02, key


def test_a_single_level_is_undefined_not_zero() -> None:
    assert identification_metrics(torch.tensor([[0.8]])) == {}
    one = LabelHierarchy.from_nested({"a": [], "b": []})
    assert one.num_levels == 1


def test_bad_shapes_are_refused(hierarchy: LabelHierarchy) -> None:
    features, paths = level_codes(hierarchy, 20, seed=0)
    with pytest.raises(ValueError, match="levels"):
        split_levels(torch.zeros(4, 7), 2)
    with pytest.raises(ValueError, match=r"\[N, L, D\]"):
        identification_matrix(features[:, :1], paths, features, paths, hierarchy, probe_epochs=1)
    assert torch.equal(split_levels(features.flatten(1), 2), features)


def test_table_shows_the_advantages_in_percent_and_the_plot_is_written(tmp_path: Path) -> None:
    metrics = {"ident/advantage_level0": 0.5, "ident/advantage_mean": 0.25}
    table = format_metrics_table({"m": metrics}, ["coarse", "fine"])
    assert "coarse ident advantage (%)" in table and "mean ident advantage (%)" in table
    assert "| m | 50.00 | 25.00 |" in table
    plot_identification(torch.tensor([[0.9, 0.3], [0.5, 0.8]]), tmp_path / "ident.png")
    assert (tmp_path / "ident.png").read_bytes().startswith(PNG_MAGIC)


# ---------------------------------------------------------------------- through the run
class LevelImages(nn.Module):
    """Images ``[B, 1, 2, D]`` whose row ``l`` is level ``l``'s code; ``level_encoder``
    reads them as ``[B, 2, D]``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Flatten()
        self.rows = nn.Flatten(1, 2)

    def level_encoder(self) -> nn.Module | None:
        return self.rows


class NoLevels(LevelImages):
    def level_encoder(self) -> nn.Module | None:
        return None


def run_args(plots: bool) -> argparse.Namespace:
    return argparse.Namespace(
        accelerator="cpu",
        eval_batch_size=128,
        num_workers=0,
        progress_bar=False,
        probe_epochs=10,
        knn_k=5,
        epochs=1,
        dataset="codes",
        variant=None,
        run_name=None,
        backbone="flatten",
        loss_option=[],
        head_option=[],
        eval_split="test",
        plots=plots,
    )


def evaluate(model: nn.Module, hierarchy: LabelHierarchy, run_dir: Path) -> dict[str, Any]:
    def images(seed: int, n: int) -> TensorDataset:
        features, paths = level_codes(hierarchy, n, seed)
        return TensorDataset(features[:, None], paths)

    bundle = SimpleNamespace(
        hierarchy=hierarchy, train_eval=images(0, 240), test_eval=images(1, 96)
    )
    bundle.split = {"eval_split": "test"}
    run_dir.mkdir(parents=True)
    result = evaluate_run(
        run_args(plots=True),
        cast(Any, bundle),
        cast(Any, model),
        "fake",
        0,
        run_dir,
        cast(Any, SimpleNamespace(global_step=1)),
    )
    record: dict[str, Any] = json.loads((run_dir / "metrics.json").read_text())
    assert record == json.loads(json.dumps(result.metrics))
    return record


def test_a_run_with_per_level_features_records_plots_and_tables_the_score(
    hierarchy: LabelHierarchy, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    record = evaluate(LevelImages(), hierarchy, run_dir)
    scores = record["eval"]
    assert scores["ident/advantage_level0"] > 0.2 and scores["ident/advantage_level1"] > 0.05
    assert scores["ident/advantage_mean"] > 0
    matrix = record["identification"]["matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    # Every value of "eval" stays a number: the matrix lives beside it.
    assert all(isinstance(value, int | float) for value in scores.values())
    text = (run_dir / "metrics.md").read_text()
    assert "mean ident advantage (%)" in text and "features of level / predicted level" in text
    assert (run_dir / "identification.png").read_bytes().startswith(PNG_MAGIC)


def test_a_run_without_per_level_features_is_undefined_and_the_report_says_so(
    hierarchy: LabelHierarchy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = evaluate(NoLevels(), hierarchy, tmp_path / "run")
    assert not any(key.startswith("ident/") for key in record["eval"])
    assert record["identification"] == {"matrix": None, "undefined": "no per-level features"}
    assert (
        "Identification score: undefined (no per-level features)"
        in (tmp_path / "run" / "metrics.md").read_text()
    )
    assert not (tmp_path / "run" / "identification.png").exists()

    # The lab's report over seeds: the score with paired intervals where both variants
    # have it, "undefined" (not 0, not a crash) where a variant has none.
    base = tmp_path / "experiment"
    for seed, (a, b) in enumerate([(0.30, 0.20), (0.35, 0.22), (0.28, 0.21)]):
        for variant, advantage in (("hmlc", a), ("hmlc-b", b), ("supcon", None)):
            folder = base / variant / f"seed{seed}"
            folder.mkdir(parents=True)
            scores = {"level0/linear_acc": 0.8 + seed / 100}
            ident: dict[str, Any] = {"matrix": None, "undefined": "no per-level features"}
            if advantage is not None:
                scores["ident/advantage_mean"] = advantage
                ident = {"matrix": [[0.9, 0.1], [0.2, 0.8]]}
            record = {
                "run": {"name": variant, "seed": seed},
                "eval": scores,
                "identification": ident,
            }
            (folder / "metrics.json").write_text(json.dumps(record))
    metrics = ["level0/linear_acc", "ident/advantage_mean"]
    table = report(base, "hmlc", metrics)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert rows["hmlc"].endswith("| 31.00 |")  # the mean, in percent
    assert "| 21.00 (**-10.00 [-17.45, -2.55]**) |" in rows["hmlc-b"]  # paired, with its CI
    assert rows["supcon"].endswith("| undefined |")
    # Against a baseline without the score: the variants' means, no interval, no crash.
    against_supcon = report(base, "supcon", metrics).splitlines()
    assert against_supcon[-1].startswith("| hmlc-b |") and against_supcon[-1].endswith("| 21.00 |")
    assert (
        lab.main(["report", str(base), "--baseline", "hmlc", "--metrics", ",".join(metrics)]) == 0
    )
    assert "| undefined |" in capsys.readouterr().out


class Levels(nn.Module):
    """A stand-in per-level encoder of a suite model: the backbone's features, level
    ``l``'s copy scaled by ``l + 1``, ``[B, L, F]``."""

    def __init__(self, backbone: nn.Module, num_levels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_levels = num_levels

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x).flatten(1)
        return torch.stack([(level + 1) * features for level in range(self.num_levels)], dim=1)


@pytest.mark.usefixtures("one_thread")
def test_the_suite_cli_records_the_score_of_a_model_with_level_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def level_encoder(self: methods.HierarchicalMethod) -> nn.Module:
        return Levels(self.backbone, self.num_levels)

    # supcon has no per-level features of its own: LabelPathMethod's says None.
    monkeypatch.setattr(methods.LabelPathMethod, "level_encoder", level_encoder)
    assert main.main(tiny_args(tmp_path, "--methods", "supcon", "--plots")) == 0
    run_dir = tmp_path / "shapes" / "supcon" / "seed0"
    record = load_metrics(run_dir)
    num_levels = len(record["identification"]["matrix"])
    assert num_levels >= 2
    for level in range(num_levels):
        assert isinstance(record["eval"][f"ident/advantage_level{level}"], float)
    assert "ident/advantage_mean" in record["eval"]
    assert (run_dir / "identification.png").read_bytes().startswith(PNG_MAGIC)
