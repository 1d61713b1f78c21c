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


# A 2-level taxonomy of the generated ImageFolder: coarse shape family > fine class.
TAXONOMY = "round disc\nround ring\nangular square\nangular cross\n"


def make_image_folder(root: Path, train_per_class: int = 16, test_per_class: int = 8) -> Path:
    """``root/{train,test}/<class>/*.png``: 16x16 drawings of 4 classes under 2 coarse
    ones (``TAXONOMY``, written to ``root/taxonomy.txt``, whose path is returned); each
    image has its own position, size and colour, seeded by its index."""
    import random

    from PIL import Image, ImageDraw

    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for class_id, name in enumerate(["disc", "ring", "square", "cross"]):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                rng = random.Random(f"{split}-{class_id}-{index}")
                image = Image.new("RGB", (16, 16), tuple(rng.randrange(0, 60) for _ in range(3)))
                draw = ImageDraw.Draw(image)
                r, cx, cy = rng.randrange(4, 7), rng.randrange(6, 10), rng.randrange(6, 10)
                box = (cx - r, cy - r, cx + r, cy + r)
                colour = tuple(rng.randrange(150, 256) for _ in range(3))
                if name == "disc":
                    draw.ellipse(box, fill=colour)
                elif name == "ring":
                    draw.ellipse(box, outline=colour, width=2)
                elif name == "square":
                    draw.rectangle(box, fill=colour)
                else:
                    draw.line((box[0], cy, box[2], cy), fill=colour, width=2)
                    draw.line((cx, box[1], cx, box[3]), fill=colour, width=2)
                image.save(folder / f"{index:03d}.png")
    taxonomy = root / "taxonomy.txt"
    taxonomy.write_text(TAXONOMY)
    return taxonomy


# The flags that make a run tiny (appended last: argparse keeps the last value).
TINY = [
    "--input-size", "16",
    "--batch-size", "16",
    "--epochs", "1",
    "--probe-epochs", "2",
    "--accelerator", "cpu",
    "--devices", "1",
    "--no-progress-bar",
    "--threads", "1",
]  # fmt: skip
