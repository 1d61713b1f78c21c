"""benchmarks/speed/gpu_check.sh: its arguments and refusals (the full --dry-run takes minutes on
a shared 2-core machine, so it is run by hand: ``benchmarks/speed/gpu_check.sh --dry-run``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speed" / "gpu_check.sh"


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_script_parses_and_prints_its_usage(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
    result = _run("--help", tmp_path=tmp_path)
    assert result.returncode == 0
    assert "--dry-run" in result.stdout and "--reference-repo" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bogus",), "unknown argument --bogus"),
        ((), "pass --reference-repo"),  # a GPU run needs the reference clone
        (("--dry-run", "--reference-repo", "/nonexistent"), "no losses/losses.py under"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    result = _run(*args, tmp_path=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "loss_speed.md").exists()
