"""Helpers for the data tests: where the shared real data lies."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def find_shared_data_file(name: str) -> Path:
    """Path of a shared data file, or skips the test with a message saying where to put it.

    Looks in ``$LIGHTLY_HMLC_DATA_DIR`` first, then ``<repo>/../shared/data``.
    """
    candidates = []
    env = os.environ.get("LIGHTLY_HMLC_DATA_DIR")
    if env:
        candidates.append(Path(env) / name)
    candidates.append(REPO_ROOT.parent / "shared" / "data" / name)
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip(
        f"Real-data file {name!r} not found (looked in {[str(p) for p in candidates]}); "
        "set LIGHTLY_HMLC_DATA_DIR to the folder that holds it to run this test."
    )


@pytest.fixture
def shared_data_file() -> Callable[[str], Path]:
    """``shared_data_file(name)``: the path of a real-data file, or skip the test."""
    return find_shared_data_file
