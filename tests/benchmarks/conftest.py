"""Makes the benchmark scripts importable: ``benchmarks/`` is a folder of scripts, not a package."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Headless plotting in tests.
os.environ.setdefault("MPLBACKEND", "Agg")

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS_DIR) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS_DIR))
