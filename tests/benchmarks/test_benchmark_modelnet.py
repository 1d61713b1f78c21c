"""Point clouds: the suite trains a depth-view encoder on a tiny fake ModelNet40 release."""

from __future__ import annotations

import math
from pathlib import Path

import main
import numpy as np
import pytest
import torch

from tests.benchmarks.suite_utils import LEVEL_KEYS, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_modelnet40(root: Path, per_class: int = 2, points: int = 64) -> Path:
    """The HDF5 layout of modelnet40_ply_hdf5_2048 with random clouds, ``per_class`` each."""
    h5py = pytest.importorskip("h5py")
    from lightly_hmlc.data import MODELNET40_GROUPS

    names = sorted(name for group in MODELNET40_GROUPS.values() for name in group)
    folder = root / "modelnet40_ply_hdf5_2048"
    folder.mkdir(parents=True)
    (folder / "shape_names.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        labels = np.repeat(np.arange(len(names)), per_class)[:, None].astype(np.uint8)
        # Each class is a differently stretched blob, so there is something to learn.
        scale = 0.2 + labels[:, :, None] / len(names)
        data = (rng.normal(size=(len(labels), points, 3)) * scale).astype(np.float32)
        with h5py.File(folder / f"ply_data_{split}0.h5", "w") as h5:
            h5["data"] = data
            h5["label"] = labels
    return root


def test_modelnet40_trains_through_depth_views(tmp_path: Path) -> None:
    root = fake_modelnet40(tmp_path / "data")
    args = tiny_args(
        tmp_path / "runs",
        "--dataset", "modelnet40",
        "--data-dir", str(root),
        "--num-points", "64",
        "--num-views", "2",
        "--train-samples", "64",
        "--methods", "hmce",
        "--no-plots",
    )  # fmt: skip
    [result] = main.run_suite(main.parse_args(args))
    record = result.metrics
    assert all(math.isfinite(record["eval"][key]) for key in LEVEL_KEYS[:6])
    checkpoint = torch.load(result.run_dir / "checkpoints/last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["encoder"] == "depth_views"
    assert hparams["encoder_kwargs"] == {"num_views": 2, "resolution": 16, "fuse": "mean"}
    assert hparams["num_classes_per_level"] == [6, 40]
