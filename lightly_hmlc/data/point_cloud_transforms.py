"""Random point-cloud augmentations and a two-view transform for contrastive learning."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PointCloudAugment", "TwoViewPointCloudTransform"]


class PointCloudAugment:
    """Random resampling, point dropout, rotation about the up axis, scaling and jitter.

    The usual PointNet-style augmentations, in this order: resample to ``num_points``, drop
    up to ``max_dropout`` of the points (refilled with copies of kept ones), rotate about
    ``up_axis`` (y in the ModelNet40 HDF5 release), scale each axis by a factor in
    ``scale``, and add Gaussian jitter clipped at ``jitter_clip``.

    Examples:
        >>> augment = PointCloudAugment(num_points=1024, generator=torch.Generator().manual_seed(0))
        >>> augment(torch.rand(2048, 3)).shape
        torch.Size([1024, 3])
    """

    def __init__(
        self,
        num_points: int | None = 1024,
        rotate: bool = True,
        up_axis: int = 1,
        scale: tuple[float, float] = (0.8, 1.25),
        jitter_sigma: float = 0.01,
        jitter_clip: float = 0.05,
        max_dropout: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        if num_points is not None and (isinstance(num_points, bool) or num_points < 1):
            raise ValueError(f"num_points must be a positive integer or None, got {num_points!r}.")
        if up_axis not in (0, 1, 2):
            raise ValueError(f"up_axis must be 0, 1 or 2 (x, y, z), got {up_axis!r}.")
        low, high = scale
        if not 0 < low <= high:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}.")
        if jitter_sigma < 0 or jitter_clip < 0:
            raise ValueError(
                f"jitter_sigma and jitter_clip must be >= 0, got {jitter_sigma}, {jitter_clip}."
            )
        if not 0 <= max_dropout < 1:
            raise ValueError(f"max_dropout must be in [0, 1), got {max_dropout!r}.")
        self.num_points = num_points
        self.rotate = rotate
        self.up_axis = up_axis
        self.scale = (float(low), float(high))
        self.jitter_sigma = float(jitter_sigma)
        self.jitter_clip = float(jitter_clip)
        self.max_dropout = float(max_dropout)
        self.generator = generator

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.generator)

    def __call__(self, cloud: Tensor | np.ndarray) -> Tensor:
        """Augments one cloud ``[P, 3]`` into a new float32 tensor ``[num_points, 3]``."""
        points = torch.as_tensor(cloud, dtype=torch.float32)
        if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] < 1:
            raise ValueError(
                f"Expected a point cloud of shape [P, 3] with P >= 1, got {tuple(points.shape)}."
            )
        count = points.shape[0]
        size = self.num_points or count
        if count >= size:
            index = torch.randperm(count, generator=self.generator)[:size]
        else:
            index = torch.randint(count, (size,), generator=self.generator)
        points = points[index]
        if self.max_dropout > 0:
            ratio = float(self._rand(1)) * self.max_dropout
            dropped = self._rand(size) < ratio
            dropped[0] = False  # keep at least one point to copy from
            kept = torch.nonzero(~dropped).squeeze(1)
            fill = kept[torch.randint(len(kept), (int(dropped.sum()),), generator=self.generator)]
            points[dropped] = points[fill]
        if self.rotate:
            angle = float(self._rand(1)) * 2 * math.pi
            c, s = math.cos(angle), math.sin(angle)
            a, b = [axis for axis in range(3) if axis != self.up_axis]
            rotation = torch.eye(3)
            rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
            points = points @ rotation.T
        low, high = self.scale
        if high > low or low != 1.0:
            points = points * (low + (high - low) * self._rand(1, 3))
        if self.jitter_sigma > 0:
            noise = torch.randn(points.shape, generator=self.generator) * self.jitter_sigma
            points = points + noise.clamp(-self.jitter_clip, self.jitter_clip)
        return points

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_points={self.num_points}, rotate={self.rotate}, "
            f"up_axis={self.up_axis}, scale={self.scale}, jitter_sigma={self.jitter_sigma}, "
            f"jitter_clip={self.jitter_clip}, max_dropout={self.max_dropout})"
        )


class TwoViewPointCloudTransform:
    """Two independently augmented views of a point cloud, as Lightly's multi-view transforms.

    Examples:
        >>> views = TwoViewPointCloudTransform(num_points=256)(torch.rand(1024, 3))
        >>> len(views), views[0].shape
        (2, torch.Size([256, 3]))
    """

    def __init__(
        self, view_transform: Callable[[Any], Any] | None = None, num_points: int | None = 1024
    ) -> None:
        self.view_transform = (
            view_transform if view_transform is not None else PointCloudAugment(num_points)
        )

    def __call__(self, cloud: Tensor | np.ndarray) -> list[Any]:
        return [self.view_transform(cloud), self.view_transform(cloud)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(view_transform={self.view_transform!r})"
