"""Makes the benchmark scripts importable: ``benchmarks/`` holds folders of scripts
(``suite/``, ``lab/``, ``speed/``) and the entry ``main.py``, not packages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Headless plotting in tests.
os.environ.setdefault("MPLBACKEND", "Agg")

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
# The tests' ``import main``, ``import methods``, ``import lab``, ``import throughput``.
for folder in ("speed", "lab", "suite", ""):
    path = str(BENCHMARKS_DIR / folder) if folder else str(BENCHMARKS_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
