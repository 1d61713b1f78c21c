"""Runs every script in ``examples/`` as a user would, with its default (tiny) settings.

Each example runs in a subprocess from the repository root and must exit with code 0
and print its final loss as a finite number (plus, for some, a line proving that the
point of the example happened). A new example without a case here fails
``test_every_example_has_a_case``.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"
FINAL_LOSS = re.compile(r"final loss[^:\n]*: (\S+)")


@dataclass(frozen=True)
class Case:
    script: str
    args: tuple[str, ...] = ()
    # Further regular expressions that must match the output.
    expect: tuple[str, ...] = ()
    timeout: float = 240.0
    marks: tuple[pytest.MarkDecorator, ...] = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return "_".join([self.script, *self.args])


CASES: list[Case] = [
    Case(
        "lightly_simclr_to_hmlc.py",
        expect=(r"final loss \(hmce\)", r"per-level terms \(coarse -> fine\): \[\S+, \S+, \S+\]"),
    ),
    Case("lightly_simclr_to_hmlc.py", ("--loss", "simclr"), expect=(r"final loss \(simclr\)",)),
    Case(
        "g_hmlc_and_a_hmlc.py",
        expect=(
            r"G-HMLC, plain PyTorch loop",
            r"G-HMLC, LightningModule",
            r"A-HMLC, plain PyTorch loop",
            r"A-HMLC, LightningModule",
            r"GMM fitted: True, masks \(3, 32\)",
            r"attention masks \(32, 3, 32\)",
        ),
    ),
    Case(
        "timm_backbones.py",
        expect=(r"resnet18_cifar .* loss \S+", r"convnext_atto .* loss", r"vit_tiny_patch16_224"),
    ),
    Case(
        "custom_taxonomy.py",
        expect=(
            r"edge list and JSON give the same hierarchy: True",
            r"ValueError: .*'sparow'",
            r"ValueError: .*'mammal'",
            r"FileNotFoundError",
        ),
    ),
    Case("point_clouds.py", expect=(r"depth views \(\d+, \d+, 1, \d+, \d+\)",)),
    Case(
        "distributed.py",
        expect=(r"step 0: 2 ranks x \d+ samples; loss per rank with gather \[(\S+), \1\]",),
        timeout=400.0,
        marks=(pytest.mark.distributed,),
    ),
]


def _run(case: Case) -> str:
    env = dict(os.environ)
    # Small models on a shared machine: one thread per process avoids oversubscription,
    # which can make a step of a tiny CNN 30 times slower.
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / case.script), *case.args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=case.timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{case.id} exited with {result.returncode}:\n{output[-4000:]}"
    return output


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, marks=c.marks, id=c.id) for c in CASES])
def test_example_runs(case: Case) -> None:
    output = _run(case)
    losses = FINAL_LOSS.findall(output)
    assert losses, f"{case.id} printed no 'final loss: <value>' line:\n{output[-4000:]}"
    assert math.isfinite(float(losses[-1])), f"{case.id}: final loss {losses[-1]} is not finite"
    for pattern in case.expect:
        assert re.search(pattern, output), (
            f"{case.id}: no match for {pattern!r} in:\n{output[-4000:]}"
        )


def test_every_example_has_a_case() -> None:
    found = {path.name for path in EXAMPLES_DIR.glob("*.py")}
    tested = {case.script for case in CASES}
    assert found == tested, (
        f"examples without a test case: {sorted(found - tested)}; "
        f"cases without an example: {sorted(tested - found)}"
    )


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    missing = [c.script for c in CASES if f"examples/{c.script}" not in readme]
    assert not missing, f"examples/README.md does not mention {missing}"


def test_readme_diff_imports_resolve() -> None:
    # The SimCLR -> HMCE diff in examples/README.md imports from the package top level.
    readme = (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    imports = [line[1:] for line in readme.splitlines() if line.startswith("+from lightly_hmlc")]
    assert imports, "the README diff lost its import line"
    for line in imports:
        exec(line, {})
