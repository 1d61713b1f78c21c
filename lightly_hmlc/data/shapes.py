"""A synthetic three-level image dataset, generated in memory from a seed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from lightly_hmlc.data._base import HierarchicalDataset
from lightly_hmlc.hierarchy import LabelHierarchy
from lightly_hmlc.hierarchy.builtin import SHAPE_FAMILIES as _SHAPES

__all__ = ["ShapesDataset"]

# Centre hue of each family (red, green, blue); an image's hue is within +-_HUE_SPREAD.
_HUES = {"disc": 0.0, "square": 0.33, "triangle": 0.62}
_HUE_SPREAD = 0.22
# Radius of a large shape (fraction of the image size); the jitter makes the sizes overlap.
_LARGE_RADIUS = 0.30
_SMALL_FACTOR = 0.8
_SCALE_JITTER = (0.86, 1.14)
_HOLE_FACTOR = (0.45, 0.70)  # hole radius of a hollow shape, as a fraction of its radius
_PIXEL_NOISE = 0.10
_CHUNK = 2048  # images rendered at once: bounds the float32 work arrays to a few MB


class ShapesDataset(HierarchicalDataset):
    """Coloured shapes with a three-level hierarchy: family, fill, size.

    The package's built-in dataset, generated from a seed in memory. A fine class is
    ``<family>_<fill>_<size>``: the family (disc, square, triangle) is told by the outline,
    the fill (hollow, solid) moderately, the size (large, small, overlapping) only subtly.
    Position, rotation, colour, background and noise vary per image, so no level is solved
    by one trivial cue. Classes are balanced; the train and test splits share no image.

    Examples:
        >>> ds = ShapesDataset(num_samples=24, seed=0)
        >>> image, path = ds[0]
        >>> image.size, path.tolist(), ds.classes[ds.targets[0]]
        ((32, 32), [1, 3, 6], 'square_solid_large')
    """

    def __init__(
        self,
        num_samples: int = 2400,
        image_size: int = 32,
        seed: int = 0,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Tensor], Any] | None = None,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(
                f"image_size must be an integer >= 8 (pixels), got {image_size!r}; "
                "resize larger in the transform instead."
            )
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        hierarchy = self.build_hierarchy()
        classes = hierarchy.leaves
        stream = np.random.SeedSequence([seed, 0 if split == "train" else 1])
        rng = np.random.default_rng(stream)
        labels = rng.permutation(np.arange(num_samples) % len(classes))
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.data = _render(labels, classes, image_size, rng)
        super().__init__(classes, labels, hierarchy, transform, target_transform)

    @staticmethod
    def build_hierarchy() -> LabelHierarchy:
        return LabelHierarchy.shapes()

    def load_sample(self, index: int) -> Image.Image:
        """The PIL image of sample ``index``."""
        return Image.fromarray(self.data[index])

    def extra_repr(self) -> str:
        """Split, seed and image size."""
        return f"split={self.split!r}, seed={self.seed}, image_size={self.image_size}"


def _render(
    labels: np.ndarray, classes: list[str], size: int, rng: np.random.Generator
) -> np.ndarray:
    """Draws the images of ``labels`` (indices into ``classes``), chunk by chunk."""
    parts = [name.split("_") for name in classes]
    shape_of = np.array([_SHAPES.index(p[0]) for p in parts])
    hollow_of = np.array([p[1] == "hollow" for p in parts])
    small_of = np.array([p[2] == "small" for p in parts])
    hue_of = np.array([_HUES[p[0]] for p in parts])
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for start in range(0, len(labels), _CHUNK):
        chunk = labels[start : start + _CHUNK]
        out[start : start + len(chunk)] = _render_chunk(
            shape_of[chunk], hollow_of[chunk], small_of[chunk], hue_of[chunk], size, rng
        )
    return out


def _render_chunk(
    shape: np.ndarray,
    hollow: np.ndarray,
    small: np.ndarray,
    hue: np.ndarray,
    size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    n = len(shape)
    radius = size * _LARGE_RADIUS * np.where(small, _SMALL_FACTOR, 1.0)
    radius = radius * rng.uniform(*_SCALE_JITTER, n)
    centre = size / 2 + rng.uniform(-0.12, 0.12, (n, 2)) * size
    angle = np.deg2rad(rng.uniform(-20.0, 20.0, n))
    coords = np.arange(size, dtype=np.float32) + 0.5
    # Pixel coordinates relative to each shape's centre, rotated into the shape's frame.
    dx = coords[None, None, :] - centre[:, 0, None, None].astype(np.float32)
    dy = coords[None, :, None] - centre[:, 1, None, None].astype(np.float32)
    cos = np.cos(angle).astype(np.float32)[:, None, None]
    sin = np.sin(angle).astype(np.float32)[:, None, None]
    u = cos * dx + sin * dy
    v = -sin * dx + cos * dy
    r = radius.astype(np.float32)[:, None, None]
    outer = _distance(shape, u, v, r)
    hole = rng.uniform(*_HOLE_FACTOR, n).astype(np.float32)[:, None, None]
    inner = _distance(shape, u, v, r * hole)
    # Signed distance in pixels (negative inside); a hollow shape removes the inner part.
    dist = np.where(hollow[:, None, None], np.maximum(outer, -inner), outer)
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # one-pixel anti-aliased edge

    fg = _hsv_to_rgb(
        (hue + rng.uniform(-_HUE_SPREAD, _HUE_SPREAD, n)) % 1.0,
        rng.uniform(0.45, 0.95, n),
        rng.uniform(0.55, 1.0, n),
    ).astype(np.float32)
    grey = rng.uniform(0.05, 0.55, (n, 1))
    bg = np.clip(grey + rng.uniform(-0.05, 0.05, (n, 3)), 0.0, 1.0).astype(np.float32)
    image = bg[:, None, None, :] * (1 - alpha) + fg[:, None, None, :] * alpha
    image += rng.normal(0.0, _PIXEL_NOISE, image.shape).astype(np.float32)
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _distance(shape: np.ndarray, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Approximate signed distance (pixels) to a shape of the area of a disc of radius r."""
    disc = np.sqrt(u * u + v * v) - r
    # Half-side of the square with the disc's area: sqrt(pi) / 2 * r.
    square = np.maximum(np.abs(u), np.abs(v)) - 0.8862 * r
    # Equilateral triangle pointing up with the disc's area: 3 sqrt(3) a^2 = pi r^2.
    a = 0.7776 * r
    s3 = np.float32(np.sqrt(3.0) / 2)
    triangle = np.maximum(np.maximum(-v, s3 * u + 0.5 * v), -s3 * u + 0.5 * v) - a
    return np.where(
        (shape == 0)[:, None, None], disc, np.where((shape == 1)[:, None, None], square, triangle)
    )


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB of arrays [n]; returns [n, 3] in [0, 1]."""
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    table = np.stack(
        [
            np.stack([v, t, p], 1),
            np.stack([q, v, p], 1),
            np.stack([p, v, t], 1),
            np.stack([p, q, v], 1),
            np.stack([t, p, v], 1),
            np.stack([v, p, q], 1),
        ],
        0,
    )
    return table[i, np.arange(len(h))]
