"""CONTRIBUTING.md lists every file that loads a user-chosen path with something that could run code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Loaders that can run code: pickle (torch.load, pickle, np.load with pickles), yaml, eval.
CODE_RUNNING_LOAD = re.compile(
    r"torch\.load\(|\bpickle\.(load|loads|Unpickler)\b|allow_pickle\s*=|"
    r"\byaml\.(unsafe_)?load\(|(?<![.\w])eval\("
)


def _section() -> str:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    match = re.search(r"## Files that could run code when loaded\n(.*?)\n## ", text, re.DOTALL)
    assert match, "CONTRIBUTING.md has no section 'Files that could run code when loaded'"
    return match.group(1)


def test_every_code_running_load_is_listed_with_its_reason() -> None:
    section = _section()
    found = sorted(
        str(path.relative_to(ROOT))
        for folder in ("lightly_hmlc", "benchmarks", "examples")
        for path in (ROOT / folder).rglob("*.py")
        if CODE_RUNNING_LOAD.search(path.read_text(encoding="utf-8"))
    )
    assert found, "the pattern finds nothing: it is out of date"
    assert [f for f in found if f"`{f}`" not in section] == []


def test_no_checkpoint_is_loaded_with_pickle() -> None:
    for folder in ("lightly_hmlc", "benchmarks", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text(encoding="utf-8").splitlines():
                if "torch.load(" in line or ".fit(" in line:
                    assert "weights_only=False" not in line, f"{path}: {line.strip()}"
