"""A run's output is quiet and readable (issue 10): no Lightning advert or banner, no
deprecation warnings, one line per epoch when the output is not a terminal, and a summary
that shows the cost."""

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
    for banner in BANNERS:  # Lightning's INFO lines; its warnings and errors still show
        assert banner not in output, output
    header = (tmp_path / "shapes" / "summary.md").read_text().splitlines()[0]
    for column in ("images per second", "train wall (s)", "peak memory (MB)"):
        assert column in header, header
    assert "| images per second" in output  # the printed summary has them too


BANNERS = (
    "GPU available",
    "TPU available",
    "HPU available",
    "LOCAL_RANK",
    "Loading `train_dataloader`",
    "`Trainer.fit` stopped",
    "Seed set to",
)


def test_quiet_lightning_keeps_warnings_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from run import quiet_lightning

    quiet_lightning()
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with caplog.at_level(logging.DEBUG):  # what a harness that shows everything would show
        rank_zero.info("GPU available: False, used: False")
        rank_zero.warning("a warning")
        rank_zero.error("an error")
    shown = [record.getMessage() for record in caplog.records if record.name == rank_zero.name]
    assert shown == ["a warning", "an error"]
