"""A run's output is quiet and readable (issue 10): no Lightning advert, no deprecation
warnings, and one line per epoch when the output is not a terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.suite_utils import tiny_args

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_run_in_a_pipe_prints_one_line_per_epoch_and_no_adverts(tmp_path: Path) -> None:
    args = [
        a
        for a in tiny_args(tmp_path, "--methods", "hmce", "--epochs", "2")
        if a != "--no-progress-bar"
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/main.py"), *args, "--threads", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "litlogger" not in output and "Tip:" not in output
    assert "deprecated" not in output.lower() and "Warning" not in output, output
    assert "\r" not in output  # no progress-bar redraws in a pipe
    epochs = re.findall(r"^hmce seed 0 epoch (\d)/2: loss [0-9.]+, step \d+", output, re.M)
    assert epochs == ["1", "2"], output
