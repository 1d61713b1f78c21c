"""Shared arguments of the benchmark-suite tests: tiny runs on synthetic shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LEVEL_KEYS = [f"level{lvl}/{m}" for lvl in range(3) for m in ("linear_acc", "knn_acc", "nmi")]


def tiny_args(output_dir: Path, *extra: str) -> list[str]:
    """Shapes at 16x16, 64 train / 48 test images, two steps of 32 images, 1 epoch."""
    return [
        "--dataset", "shapes",
        "--input-size", "16",
        "--train-samples", "64",
        "--test-samples", "48",
        "--batch-size", "32",
        "--epochs", "1",
        "--probe-epochs", "2",
        "--accelerator", "cpu",
        "--devices", "1",
        "--output-dir", str(output_dir),
        "--no-progress-bar",
        *extra,
    ]  # fmt: skip


def load_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json."""
    record: dict[str, Any] = json.loads((run_dir / "metrics.json").read_text())
    return record
