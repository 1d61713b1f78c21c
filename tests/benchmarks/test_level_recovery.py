"""The level-recovery script on a finished run, and the finished-run reader it uses."""

from __future__ import annotations

import re
from pathlib import Path

import finished_run
import level_recovery
import main
import pytest

from tests.benchmarks.suite_utils import tiny_args


def test_level_recovery_reads_a_finished_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main.main(tiny_args(tmp_path, "--methods", "hmce", "--no-plots")) == 0
    capsys.readouterr()
    run_dir = tmp_path / "shapes/hmce/seed0"
    assert level_recovery.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    found = re.search(r"method=hmce L=(\d+) D=(\d+) bic=(\d+) dpgmm=(\d+)", out)
    assert found is not None, out
    num_levels, _, bic, dpgmm = (int(g) for g in found.groups())
    assert num_levels == main.build_dataset(finished_run.run_args(run_dir)).hierarchy.num_levels
    # K_max = L + 2 components are tried.
    assert 1 <= bic <= num_levels + 2 and 1 <= dpgmm <= num_levels + 2


def test_a_folder_that_is_not_a_run_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no config.json"):
        level_recovery.main([str(tmp_path)])


def test_a_run_without_a_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="no checkpoints/last.ckpt"):
        finished_run.load_model(tmp_path)
