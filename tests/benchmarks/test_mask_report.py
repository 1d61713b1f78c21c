"""The mask report: figures of known masks, and a report on a finished suite run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import main
import mask_report
import pytest
import torch

from tests.benchmarks.suite_utils import tiny_args


def test_a_constant_mask_is_full_width_and_the_same_at_every_level() -> None:
    figures = mask_report.summarize(torch.full((5, 2, 8), 0.5, dtype=torch.float64))
    assert figures["width"] == pytest.approx([1.0, 1.0])
    assert figures["mean"] == pytest.approx([0.5, 0.5])
    assert figures["level cosine"] == pytest.approx(1.0)
    assert figures["level gap"] == 0.0 and figures["sample spread"] == 0.0


def test_a_partition_has_the_width_of_its_dimensions_and_no_overlap() -> None:
    masks = torch.zeros(4, 2, 8, dtype=torch.float64)
    masks[:, 0, :2] = 1.0
    masks[:, 1, 2:] = 1.0
    figures = mask_report.summarize(masks)
    assert figures["width"] == pytest.approx([2 / 8, 6 / 8])
    assert figures["level cosine"] == 0.0 and figures["level gap"] == 1.0


def test_per_sample_masks_have_a_spread() -> None:
    masks = torch.rand(16, 3, 8, generator=torch.Generator().manual_seed(0)).double()
    assert cast(float, mask_report.summarize(masks)["sample spread"]) > 0.1


def test_the_report_reads_a_finished_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(tmp_path, "--methods", "a-hmlc", "--no-plots")
    assert main.main(args) == 0
    capsys.readouterr()
    run_dir = tmp_path / "shapes/a-hmlc/seed0"
    assert mask_report.main([str(run_dir)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{run_dir}: ") and '"level cosine"' in line
    # An untrained-length run starts from near-constant masks (init_std=1e-3).
    assert float(line.split('"level cosine": ')[1].split(",")[0]) > 0.9


def test_a_run_without_a_mask_head_is_refused(tmp_path: Path) -> None:
    assert main.main(tiny_args(tmp_path, "--methods", "hmce", "--no-plots")) == 0
    with pytest.raises(SystemExit, match="no mask head"):
        mask_report.main([str(tmp_path / "shapes/hmce/seed0")])


def test_nested_a_hmlc_reaches_the_head_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(tmp_path, "--methods", "a-hmlc", "--head-option", "nested=true", "--no-plots")
    assert main.main(args) == 0
    capsys.readouterr()
    assert mask_report.main([str(tmp_path / "shapes/a-hmlc/seed0")]) == 0
    figures = json.loads(capsys.readouterr().out.split(": ", 1)[1])
    # The finest of Shapes' 3 levels sees every dimension: mask 1; the coarser two start
    # near the sigmoid's 0.5.
    assert figures["mean"][2] == 1.0 and figures["width"][2] == 1.0
    assert figures["mean"][:2] == pytest.approx([0.5, 0.5], abs=0.01)
