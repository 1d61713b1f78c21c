"""Point clouds (ModelNet40) through multi-view depth images into a timm backbone, with HMCE.

The hierarchical losses only see embeddings and label paths, so 3D shapes need nothing
but an encoder. ``DepthViewEncoder`` (after SimpleView, Goyal et al., ICML 2021)
renders each cloud as depth images from the six faces of its bounding cube and runs
any timm image backbone on them; ``ModelNet40Hierarchical`` reads the standard HDF5
release (``modelnet40_ply_hdf5_2048``) with label paths ``[group, category]`` (6 groups
of the 40 categories, ``MODELNET40_GROUPS``); ``TwoViewPointCloudTransform`` makes the
two augmented views (rotation about the up axis, scaling, jitter, point dropout).

By default the script writes a tiny file in the official format to a temporary folder:
``ply_data_train0.h5`` (``data`` ``[N, 2048, 3] float32``, ``label`` ``[N, 1] uint8``)
and ``shape_names.txt``, with primitive shapes sampled as points and named after the
ModelNet40 categories they resemble (a cone, a bottle, a bowl, a cup, a table, a
wardrobe, a door, a tent), and trains on it for a few steps.

Run (CPU, a few seconds)::

    python examples/point_clouds.py
    python examples/point_clouds.py --save-views views.png     # look at the depth images
    python examples/point_clouds.py --root path/to/modelnet40_ply_hdf5_2048 \\
        --backbone resnet18_cifar --num-points 1024 --batch-size 32 --steps 1000
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
from lightly.models.modules import SimCLRProjectionHead
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightly_hmlc import DepthViewEncoder, HMLCLoss
from lightly_hmlc.data import ModelNet40Hierarchical, TwoViewPointCloudTransform

# The 40 categories in the label order of the official shape_names.txt.
MODELNET40_NAMES = (
    "airplane bathtub bed bench bookshelf bottle bowl car chair cone cup curtain desk door "
    "dresser flower_pot glass_box guitar keyboard lamp laptop mantel monitor night_stand "
    "person piano plant radio range_hood sink sofa stairs stool table tent toilet tv_stand "
    "vase wardrobe xbox"
).split()

Sampler = Callable[[int, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------- shapes
# Surface samplers, y up (as in the HDF5 release). Each returns [n, 3].


def _box(n: int, rng: np.random.Generator, size: tuple[float, float, float]) -> np.ndarray:
    """Points on the surface of an axis-aligned box centred at 0."""
    half = np.asarray(size) / 2
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]]).repeat(2)
    face = rng.choice(6, n, p=areas / areas.sum())
    points = rng.uniform(-half, half, (n, 3))
    axis = face // 2
    points[np.arange(n), axis] = np.where(face % 2 == 0, -1, 1) * half[axis]
    return points


def _cylinder(
    n: int, rng: np.random.Generator, radius: float, height: float, bottom: bool, top: bool
) -> np.ndarray:
    """Points on a cylinder around the y axis, from y = 0 to y = height."""
    side, cap = 2 * math.pi * radius * height, math.pi * radius**2
    weights = np.array([side, cap * bottom, cap * top])
    part = rng.choice(3, n, p=weights / weights.sum())
    angle = rng.uniform(0, 2 * math.pi, n)
    r = np.where(part == 0, radius, radius * np.sqrt(rng.uniform(0, 1, n)))
    y = np.where(part == 0, rng.uniform(0, height, n), np.where(part == 1, 0.0, height))
    return np.stack([r * np.cos(angle), y, r * np.sin(angle)], axis=1)


def _cone(n: int, rng: np.random.Generator) -> np.ndarray:
    radius, height = 0.5, 1.2
    side = math.pi * radius * math.hypot(radius, height)
    on_side = rng.uniform(0, side + math.pi * radius**2, n) < side
    t = np.sqrt(rng.uniform(0, 1, n))  # uniform on the lateral surface
    r = np.where(on_side, radius * t, radius * np.sqrt(rng.uniform(0, 1, n)))
    y = np.where(on_side, height * (1 - t), 0.0)
    angle = rng.uniform(0, 2 * math.pi, n)
    return np.stack([r * np.cos(angle), y, r * np.sin(angle)], axis=1)


def _bowl(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[:, 1] = -np.abs(v[:, 1]) * 0.6  # lower half, flattened
    return v


def _bottle(n: int, rng: np.random.Generator) -> np.ndarray:
    body = _cylinder(n, rng, 0.3, 1.0, bottom=True, top=True)
    neck = _cylinder(n, rng, 0.1, 0.4, bottom=False, top=True) + [0.0, 1.0, 0.0]
    return np.where((rng.uniform(0, 1, n) < 0.8)[:, None], body, neck)


def _table(n: int, rng: np.random.Generator) -> np.ndarray:
    top = _box(n, rng, (1.6, 0.08, 1.0)) + [0.0, 0.7, 0.0]
    legs = _cylinder(n, rng, 0.05, 0.7, bottom=False, top=False)
    corner = rng.integers(0, 4, n)
    legs[:, 0] += np.where(corner % 2 == 0, -0.7, 0.7)
    legs[:, 2] += np.where(corner < 2, -0.4, 0.4)
    return np.where((rng.uniform(0, 1, n) < 0.7)[:, None], top, legs)


def _tent(n: int, rng: np.random.Generator) -> np.ndarray:
    """A triangular prism: two slanted roof sides and two triangular ends."""
    u, v = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    roof = np.stack([np.where(v < 0.5, -1, 1) * (1 - u) * 0.6, u * 0.8, (v % 0.5) * 4 - 1], 1)
    x = rng.uniform(-0.6, 0.6, n)
    y = rng.uniform(0, 0.8, n)
    inside = y <= 0.8 * (1 - np.abs(x) / 0.6)
    y = np.where(inside, y, 0.8 - y)  # fold the outer corners into the triangle
    x = np.where(inside, x, np.sign(x) * 0.6 - x)
    end = np.stack([x, y, np.where(v < 0.5, -1.0, 1.0)], 1)
    return np.where((rng.uniform(0, 1, n) < 0.75)[:, None], roof, end)


SHAPES: dict[str, Sampler] = {
    "bottle": _bottle,
    "bowl": _bowl,
    "cone": _cone,
    "cup": lambda n, rng: _cylinder(n, rng, 0.4, 0.8, bottom=True, top=False),
    "door": lambda n, rng: _box(n, rng, (0.9, 2.0, 0.08)),
    "table": _table,
    "tent": _tent,
    "wardrobe": lambda n, rng: _box(n, rng, (1.2, 2.0, 0.6)),
}


def write_modelnet40_h5(folder: Path, clouds_per_class: int, seed: int) -> Path:
    """Writes ``ply_data_train0.h5`` and ``shape_names.txt`` in the official format."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data, labels = [], []
    for name, sample in SHAPES.items():
        for _ in range(clouds_per_class):
            points = sample(2048, rng) * rng.uniform(0.8, 1.2, 3)  # vary the proportions
            points = points - points.mean(0)
            points /= np.linalg.norm(points, axis=1).max()  # the release's unit sphere
            data.append(points.astype(np.float32))
            labels.append(MODELNET40_NAMES.index(name))
    order = rng.permutation(len(data))
    with h5py.File(folder / "ply_data_train0.h5", "w") as h5:
        h5.create_dataset("data", data=np.stack(data)[order])
        h5.create_dataset("label", data=np.asarray(labels, dtype=np.uint8)[order, None])
    (folder / "shape_names.txt").write_text("\n".join(MODELNET40_NAMES) + "\n", encoding="utf-8")
    (folder / "train_files.txt").write_text(
        f"data/{folder.name}/ply_data_train0.h5\n", encoding="utf-8"
    )
    return folder


# --------------------------------------------------------------------------- model


class PointCloudModel(nn.Module):
    """Depth views -> timm backbone -> projection head."""

    def __init__(self, backbone: str, num_views: int, resolution: int, proj_dim: int) -> None:
        super().__init__()
        self.encoder = DepthViewEncoder(backbone, num_views=num_views, resolution=resolution)
        dim = self.encoder.feature_dim
        self.projection_head = SimCLRProjectionHead(dim, dim, proj_dim)

    def forward(self, points: Tensor) -> Tensor:
        z: Tensor = self.projection_head(self.encoder(points))
        return z


def save_views(views: Tensor, path: Path) -> None:
    """Saves ``[B, V, 1, H, W]`` depth images as a grid: one row per cloud."""
    rows = [torch.cat(list(cloud[:, 0]), dim=1) for cloud in views[:8]]
    grid = (torch.cat(rows, dim=0) * 255).clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2)).save(path)
    print(f"saved the depth views of {len(rows)} clouds to {path}")


def train(root: Path, args: argparse.Namespace) -> float:
    torch.manual_seed(args.seed)
    transform = TwoViewPointCloudTransform(num_points=args.num_points)
    dataset = ModelNet40Hierarchical(root, split="train", transform=transform)
    used = sorted({dataset.classes[i] for i in dataset.targets})
    print(f"{len(dataset)} clouds, categories {used}")
    for name in used:
        group = dataset.hierarchy.parent(name)
        print(f"  {name:<9} -> {group} / {name}")
    loader = DataLoader(
        dataset, batch_size=min(args.batch_size, len(dataset)), shuffle=True, drop_last=True
    )
    model = PointCloudModel(args.backbone, args.num_views, args.resolution, args.proj_dim)
    criterion = HMLCLoss(loss_type="hmce", temperature=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    (views0, _), _ = next(iter(loader))
    depth = model.encoder.render(views0)
    print(f"depth views {tuple(depth.shape)} per batch of {tuple(views0.shape)} points")
    if args.save_views:
        save_views(depth, Path(args.save_views))

    loss = torch.tensor(math.nan)
    step = 0
    while step < args.steps:
        for (x0, x1), labels in loader:  # x: [B, P, 3] points; labels: [B, 2] paths
            loss = criterion(model(x0), model(x1), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            print(f"step {step}: loss {loss.item():.4f}")
            if step == args.steps:
                break
    print(f"final loss: {loss.item():.5f}")
    return float(loss.item())


def main(args: argparse.Namespace) -> float:
    if args.root is not None:
        return train(Path(args.root), args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_modelnet40_h5(
            Path(tmp) / "modelnet40_ply_hdf5_2048", args.clouds_per_class, args.seed
        )
        print(f"wrote a tiny ModelNet40-format file to {folder}")
        return train(folder.parent, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="The extracted modelnet40_ply_hdf5_2048 folder.")
    parser.add_argument("--clouds-per-class", type=int, default=4)
    parser.add_argument("--num-points", type=int, default=512)
    parser.add_argument("--backbone", default="resnet_tiny_cifar")
    parser.add_argument("--num-views", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--proj-dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--save-views", help="Save a PNG of the depth images of one batch.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
