"""Real data: a short HMLC training beats a randomly initialised backbone on MNIST.

Needs ``mnist.npz`` in ``../shared/data/`` (relative to the repository root) or in the
folder named by ``LIGHTLY_HMLC_DATA_DIR``; skipped otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import main
import methods
import pytest
import pytorch_lightning as pl
from evaluate import evaluate_features, extract_features

REPO_ROOT = Path(__file__).resolve().parents[2]


def find_mnist() -> Path | None:
    candidates = [REPO_ROOT.parent / "shared" / "data" / "mnist.npz"]
    env = os.environ.get("LIGHTLY_HMLC_DATA_DIR")
    if env:
        candidates.insert(0, Path(env) / "mnist.npz")
    return next((path for path in candidates if path.is_file()), None)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_short_hmlc_training_beats_random_backbone(tmp_path: Path) -> None:
    mnist = find_mnist()
    if mnist is None:
        pytest.skip(
            "mnist.npz not found: put it in ../shared/data/ (next to the repository) or set "
            "LIGHTLY_HMLC_DATA_DIR to a folder that holds it."
        )
    args = main.parse_args(
        [
            "--dataset", "mnist",
            "--data-dir", str(mnist),
            "--input-size", "16",
            "--methods", "hmce",
            "--train-samples", "1500",
            "--test-samples", "500",
            "--batch-size", "128",
            "--epochs", "2",
            "--probe-epochs", "10",
            "--accelerator", "cpu",
            "--devices", "1",
            "--output-dir", str(tmp_path),
            "--no-plots",
            "--no-progress-bar",
        ]
    )  # fmt: skip
    [result] = main.run_suite(args)
    trained = result.metrics["eval"]

    # The same architecture and seed, untrained, through the same probe.
    bundle = main.build_dataset(args)
    pl.seed_everything(0)
    model = methods.create_method(
        "hmce", num_classes_per_level=bundle.hierarchy.num_classes_per_level, in_chans=1
    )
    random = evaluate_features(
        *extract_features(model.backbone, bundle.train_eval),
        *extract_features(model.backbone, bundle.test_eval),
        bundle.hierarchy,
        probe_epochs=10,
    )
    fine = bundle.hierarchy.num_levels - 1
    for level in range(bundle.hierarchy.num_levels):
        key = f"level{level}/linear_acc"
        assert trained[key] > random[key] + 0.1, (key, trained[key], random[key])
    assert trained[f"level{fine}/knn_acc"] > random[f"level{fine}/knn_acc"] + 0.1
