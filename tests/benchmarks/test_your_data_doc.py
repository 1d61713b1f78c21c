"""docs/your-data.md's commands run as written, on a small generated ImageFolder.

The commands keep their flags; the test only points them at the generated data and a
temporary output folder, and appends the flags of a tiny run (tiny images, one epoch,
two seeds: the last value of a flag wins)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.suite_utils import TINY, make_image_folder

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "your-data.md"


def doc_commands() -> list[list[str]]:
    """The ``python benchmarks/...`` commands of the doc's bash blocks, as argv lists."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip().startswith("python benchmarks/"):
                commands.append(shlex.split(command))
    return commands


def test_the_doc_has_the_choose_report_and_table_commands() -> None:
    commands = doc_commands()
    suites = [c for c in commands if c[1] == "benchmarks/main.py"]
    assert [c[c.index("--eval-split") + 1] for c in suites] == ["val", "test"]
    assert all("--baseline" in c and "imagefolder" in c for c in suites)
    assert any(c[1] == "benchmarks/lab/lab.py" and "report" in c for c in commands)


@pytest.mark.slow
def test_the_docs_commands_run_on_small_data(tmp_path: Path) -> None:
    data = tmp_path / "my_images"
    make_image_folder(data, train_per_class=12, test_per_class=6)
    places = {
        "my_images": str(data),
        "my_taxonomy.txt": str(data / "taxonomy.txt"),
    }
    env = dict(os.environ, MPLBACKEND="Agg")
    for argv in doc_commands():
        argv = [places.get(a, a) for a in argv]
        argv = [str(tmp_path / a) if a.startswith("runs/") else a for a in argv]
        if argv[1] == "benchmarks/main.py":
            argv += [*TINY, "--seeds", "0,1"]
        choosing = "--eval-split" in argv and argv[argv.index("--eval-split") + 1] == "val"
        if choosing:  # choosing on val reads no test image: hide them
            (data / "test").rename(data / "hidden")
        done = subprocess.run(
            [sys.executable, *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        if choosing:
            (data / "hidden").rename(data / "test")
        assert done.returncode == 0, done.stdout + done.stderr
        if argv[1] == "benchmarks/lab/lab.py":  # the table again, from the records
            table = (tmp_path / "runs/my-val/imagefolder/summary.md").read_text()
            rows = [line for line in table.splitlines() if line.startswith("| ")]
            assert all(row in done.stdout for row in rows), done.stdout
    for split, methods in (("val", ["supcon", "hmce", "a-hmlc"]), ("test", ["supcon", "a-hmlc"])):
        folder = tmp_path / f"runs/my-{split}/imagefolder"
        summary = (folder / "summary.md").read_text()
        assert f"({split} split)" in summary and "| images/s | train wall s |" in summary
        rows = [line.split("|")[1].strip() for line in summary.splitlines() if line[:2] == "| "]
        assert rows == ["variant", *methods]
        assert (folder / "comparison.png").stat().st_size > 0
    record = (tmp_path / "runs/my-val/imagefolder/hmce/seed0/metrics.json").read_text()
    assert '"eval_split": "val"' in record
