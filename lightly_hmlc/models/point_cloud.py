"""Point clouds as multi-view depth images, after SimpleView (Goyal et al., ICML 2021).

Each cloud is centred on its bounding-box centre and scaled into the unit sphere, then
projected orthographically for cameras on ``+z`` (front), ``+x``, ``-z``, ``-x`` (each
with ``+y`` up), ``+y`` (top) and ``-y`` (bottom). A pixel holds the nearness of the
closest point, 1 on the camera side of the sphere down to ``far_value`` on the far side;
the background is 0. An image backbone then applies to 3D shapes unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.models.backbones import create_backbone, feature_dim

__all__ = ["DepthViewEncoder", "render_depth_views", "view_frames"]

MAX_VIEWS = 6

# (direction towards the camera, image up) per view; right = up x direction.
_VIEWS = (
    ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),  # front
    ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # right
    ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),  # back
    ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # left
    ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # top
    ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),  # bottom
)


def view_frames(num_views: int = MAX_VIEWS) -> Tensor:
    """The camera frames [V, 3, 3]; rows are (right, up, towards the camera)."""
    _check_num_views(num_views)
    frames = []
    for direction, up in _VIEWS[:num_views]:
        d = torch.tensor(direction)
        u = torch.tensor(up)
        frames.append(torch.stack([torch.linalg.cross(u, d), u, d]))
    return torch.stack(frames)


@torch.no_grad()
def render_depth_views(
    points: Tensor,
    num_views: int = MAX_VIEWS,
    resolution: int = 32,
    *,
    splat: int = 1,
    far_value: float = 0.1,
    normalize: bool = True,
) -> Tensor:
    """Orthographic depth images [B, V, 1, H, W] of point clouds [B, N, 3], without gradient.

    ``splat`` (odd) grows each point into a patch by a max-pool; with ``normalize=False``
    the points must lie in ``[-1, 1]^3``.

    Examples:
        >>> points = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]])
        >>> render_depth_views(points, num_views=1, resolution=4)[0, 0, 0]  # front hides back
        tensor([[0., 0., 0., 0.],
                [0., 0., 0., 0.],
                [0., 0., 1., 0.],
                [0., 0., 0., 0.]])
    """
    _check_num_views(num_views)
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}.")
    if splat < 1 or splat % 2 == 0:
        raise ValueError(f"splat must be an odd int >= 1 (1 disables it), got {splat}.")
    if not 0.0 < far_value <= 1.0:
        raise ValueError(
            f"far_value must be in (0, 1] so that points differ from the background 0, "
            f"got {far_value}."
        )
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape [B, N, 3], got {tuple(points.shape)}.")
    if points.shape[1] == 0:
        raise ValueError("points must hold at least one point per cloud, got N = 0.")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}.")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or infinite values; remove or mask them first.")

    batch, num_points, _ = points.shape
    if normalize:
        centre = (points.amax(dim=1, keepdim=True) + points.amin(dim=1, keepdim=True)) / 2
        points = points - centre
        radius = points.norm(dim=-1).amax(dim=1).clamp_min(torch.finfo(points.dtype).tiny)
        points = points / radius[:, None, None]

    frames = view_frames(num_views).to(points)
    # Camera coordinates [B, V, N, 3]: (right, up, towards camera).
    cam = torch.einsum("bnk,vck->bvnc", points, frames)
    u, v, c = cam.unbind(dim=-1)

    # Nearness: 1 at c = 1 (camera side), far_value at c = -1; the z-buffer keeps the max.
    value = 1.0 - (1.0 - far_value) * (1.0 - c) / 2.0
    inside = (u.abs() <= 1) & (v.abs() <= 1) & (c.abs() <= 1)
    value = torch.where(inside, value, torch.zeros_like(value))

    col = ((u + 1.0) / 2.0 * resolution).floor().long().clamp_(0, resolution - 1)
    row = ((1.0 - v) / 2.0 * resolution).floor().long().clamp_(0, resolution - 1)
    image_index = torch.arange(batch * num_views, device=points.device).view(batch, num_views, 1)
    index = (image_index * resolution + row) * resolution + col

    images = torch.zeros(
        batch * num_views * resolution * resolution, dtype=points.dtype, device=points.device
    )
    images = images.scatter_reduce(
        0, index.reshape(-1), value.reshape(-1), reduce="amax", include_self=True
    )
    images = images.view(batch * num_views, 1, resolution, resolution)
    if splat > 1:
        images = F.max_pool2d(images, kernel_size=splat, stride=1, padding=splat // 2)
    return images.view(batch, num_views, 1, resolution, resolution)


class DepthViewEncoder(nn.Module):
    """Encodes point clouds by an image backbone on multi-view depth images (SimpleView [0]).

    Renders ``num_views`` depth images per cloud, repeats the depth channel to the
    backbone's ``in_chans``, runs the backbone (a timm name or a module) on all images at
    once and fuses the per-view features by ``"mean"``, ``"max"`` or ``"concat"``.
    ``backbone_dim`` is inferred by one forward pass if a module does not tell it.

    - [0] Goyal et al., ICML 2021, https://arxiv.org/abs/2106.05304

    Examples:
        >>> encoder = DepthViewEncoder("resnet_tiny_cifar", num_views=6, fuse="concat")
        >>> encoder.feature_dim, encoder.eval()(torch.rand(2, 128, 3)).shape
        (384, torch.Size([2, 384]))
    """

    def __init__(
        self,
        backbone: nn.Module | str,
        num_views: int = MAX_VIEWS,
        resolution: int = 32,
        in_chans: int | None = None,
        fuse: Literal["mean", "max", "concat"] = "mean",
        splat: int = 1,
        far_value: float = 0.1,
        backbone_dim: int | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        _check_num_views(num_views)
        if fuse not in ("mean", "max", "concat"):
            raise ValueError(f"fuse must be 'mean', 'max' or 'concat', got {fuse!r}.")
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}.")
        if in_chans is not None and in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}.")
        # Fail here rather than on the first batch.
        render_depth_views(torch.zeros(1, 1, 3), 1, 1, splat=splat, far_value=far_value)

        if isinstance(backbone, str):
            in_chans = 3 if in_chans is None else in_chans
            if "img_size" not in backbone_kwargs and _has_fixed_input_size(backbone):
                backbone_kwargs["img_size"] = resolution
            module, dim = create_backbone(backbone, in_chans=in_chans, **backbone_kwargs)
            if backbone_dim is not None and backbone_dim != dim:
                raise ValueError(f"backbone_dim={backbone_dim} but '{backbone}' gives {dim}.")
        elif isinstance(backbone, nn.Module):
            if backbone_kwargs:
                raise ValueError(
                    f"backbone_kwargs {sorted(backbone_kwargs)} only apply when backbone is a "
                    "timm name; configure the module before passing it."
                )
            module = backbone
            in_chans = in_chans if in_chans is not None else getattr(module, "in_chans", 3)
            dim = backbone_dim or _infer_dim(module, in_chans, resolution)
        else:
            raise TypeError(
                f"backbone must be a timm model name or an nn.Module, got {type(backbone)}."
            )

        self.backbone = module
        self.num_views = num_views
        self.resolution = resolution
        self.in_chans = int(in_chans)
        self.fuse = fuse
        self.splat = splat
        self.far_value = far_value
        self.backbone_dim = int(dim)
        self.feature_dim = self.backbone_dim * (num_views if fuse == "concat" else 1)

    def render(self, points: Tensor) -> Tensor:
        return render_depth_views(
            points, self.num_views, self.resolution, splat=self.splat, far_value=self.far_value
        )

    def forward(self, points: Tensor) -> Tensor:
        """Fused features [B, feature_dim] of point clouds [B, N, 3]."""
        views = self.render(points)
        batch = views.shape[0]
        images = views.expand(-1, -1, self.in_chans, -1, -1).reshape(
            batch * self.num_views, self.in_chans, self.resolution, self.resolution
        )
        features = self.backbone(images)
        if features.shape != (batch * self.num_views, self.backbone_dim):
            raise ValueError(
                f"The backbone returned {tuple(features.shape)}, expected pooled features "
                f"[{batch * self.num_views}, {self.backbone_dim}]; create it with num_classes=0."
            )
        features = features.view(batch, self.num_views, self.backbone_dim)
        if self.fuse == "mean":
            return features.mean(dim=1)
        if self.fuse == "max":
            return features.amax(dim=1)
        return features.reshape(batch, self.feature_dim)


def _check_num_views(num_views: int) -> None:
    if not 1 <= num_views <= MAX_VIEWS:
        raise ValueError(
            f"num_views must be between 1 and {MAX_VIEWS} (the faces of the bounding cube), "
            f"got {num_views}."
        )


def _has_fixed_input_size(name: str) -> bool:
    from timm.models import get_pretrained_cfg_value

    try:
        return bool(get_pretrained_cfg_value(name, "fixed_input_size"))
    except RuntimeError:
        return False


def _infer_dim(module: nn.Module, in_chans: int, resolution: int) -> int:
    try:
        return feature_dim(module)
    except ValueError:
        pass
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = module.training
    module.eval()  # a dummy batch must not move BatchNorm statistics
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, in_chans, resolution, resolution, device=device))
    finally:
        module.train(was_training)
    if out.ndim != 2:
        raise ValueError(
            f"The backbone returned {tuple(out.shape)} for one image, expected pooled features "
            "[1, F]; create it with num_classes=0 or pass backbone_dim."
        )
    return int(out.shape[1])
