"""compare.py gathers run records into mean ± std over seeds per method."""

from __future__ import annotations

import json
from pathlib import Path

import compare
import main
import pytest


def write_run(root: Path, method: str, seed: int, acc: float, severity: float) -> None:
    run_dir = root / "shapes" / method / f"seed{seed}"
    run_dir.mkdir(parents=True)
    record = {
        "run": {"dataset": "shapes", "method": method, "seed": seed},
        "train": {"train/images_per_second": 100.0 + seed, "train/complete": True},
        "eval": {
            "level0/linear_acc": acc,
            "level0/knn_acc": acc / 2,
            "level0/nmi": 0.5,
            "hier/mistake_severity": severity,
            "hier/hdist@5": 1.0,
        },
    }
    (run_dir / "metrics.json").write_text(json.dumps(record))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for seed, acc in enumerate([0.50, 0.60, 0.70]):
        write_run(tmp_path, "hmce", seed, acc, severity=1.0 + seed)
    write_run(tmp_path, "simclr", 0, 0.40, severity=2.0)
    return tmp_path


def test_aggregate_groups_seeds_by_dataset_and_method(runs: Path) -> None:
    groups = compare.aggregate(compare.find_records([runs]))
    assert set(groups) == {("shapes", "hmce"), ("shapes", "simclr")}
    assert sorted(groups[("shapes", "hmce")]["level0/linear_acc"]) == [0.5, 0.6, 0.7]
    assert "train/complete" not in groups[("shapes", "hmce")]  # booleans are not averaged


def test_table_shows_mean_and_sample_std(runs: Path) -> None:
    table = compare.format_table(compare.aggregate(compare.find_records([runs])))
    lines = table.splitlines()
    assert lines[0].startswith("| method | seeds | L0 linear acc (%) | L0 knn acc (%) |")
    hmce = next(line for line in lines if line.startswith("| hmce"))
    # linear acc 50/60/70 %: mean 60, sample std 10; severity 1/2/3: mean 2, std 1
    assert "| hmce | 3 | 60.00 ± 10.00 | 30.00 ± 5.00 | 2.000 ± 1.000 | 1.000 ± 0.000 |" in hmce
    simclr = next(line for line in lines if line.startswith("| simclr"))
    assert "| simclr | 1 | 40.00 | 20.00 |" in simclr  # one seed: no std


def test_runs_can_be_named_one_by_one_and_metrics_chosen(runs: Path) -> None:
    records = compare.find_records([runs / "shapes/hmce/seed0", runs / "shapes/hmce/seed2"])
    table = compare.format_table(compare.aggregate(records), ["level0/nmi"])
    assert table.splitlines()[-1] == "| hmce | 2 | 50.00 ± 0.00 |"


def test_cli_through_main_prints_and_writes_the_table(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "table.md"
    assert main.main(["compare", str(runs), "--metrics", "all", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images per second" in printed and "60.00 ± 10.00" in printed
    assert out.read_text().strip() == printed.strip()


def test_missing_run_folder_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert compare.main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty")]) == 2
    assert "No metrics.json" in capsys.readouterr().err
