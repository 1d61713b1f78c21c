import math

import pytest
import torch
from torch import Tensor, nn

from lightly_hmlc.models.point_cloud import DepthViewEncoder, render_depth_views, view_frames

RES = 32


def cube_surface(points_per_side: int = 64) -> Tensor:
    """Points on the six faces of the cube [-1, 1]^3, shape [1, N, 3]."""
    t = torch.linspace(-1.0, 1.0, points_per_side)
    a, b = torch.meshgrid(t, t, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    one = torch.ones_like(a)
    faces = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            coords = [a, b]
            coords.insert(axis, sign * one)
            faces.append(torch.stack(coords, dim=-1))
    return torch.cat(faces)[None]


def square_plane(points_per_side: int = 64) -> Tensor:
    """Points filling the square [-1, 1]^2 in the plane z = 0, shape [1, N, 3]."""
    t = torch.linspace(-1.0, 1.0, points_per_side)
    x, y = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1), torch.zeros(x.numel())], dim=-1)[None]


def test_frames_are_rotations() -> None:
    frames = view_frames()
    assert frames.shape == (6, 3, 3)
    eye = torch.eye(3).expand(6, 3, 3)
    assert torch.allclose(frames @ frames.transpose(1, 2), eye)
    assert torch.allclose(torch.linalg.det(frames), torch.ones(6))  # no mirrored views
    # The towards-camera directions are the six distinct face normals.
    normals = {tuple(int(x) for x in f[2].tolist()) for f in frames}
    assert len(normals) == 6


def test_cube_renders_centred_square_in_every_view() -> None:
    views = render_depth_views(cube_surface(), num_views=6, resolution=RES)
    assert views.shape == (1, 6, 1, RES, RES)
    # Unit-sphere normalisation: the cube's half width becomes 1 / sqrt(3).
    half = 1 / math.sqrt(3)
    lo, hi = math.floor((1 - half) / 2 * RES), math.floor((1 + half) / 2 * RES)
    expected_mask = torch.zeros(RES, RES, dtype=torch.bool)
    expected_mask[lo : hi + 1, lo : hi + 1] = True
    # The face towards the camera is visible everywhere inside the square.
    near_value = 1 - 0.9 * (1 - half) / 2
    for v in range(6):
        image = views[0, v, 0]
        assert torch.equal(image > 0, expected_mask), v
        assert torch.allclose(image[expected_mask], torch.tensor(near_value), atol=1e-5), v


def test_plane_face_on_and_edge_on() -> None:
    views = render_depth_views(square_plane(), num_views=6, resolution=RES)[0, :, 0]
    # Unit-sphere normalisation: the half width becomes 1 / sqrt(2).
    half = 1 / math.sqrt(2)
    lo, hi = math.floor((1 - half) / 2 * RES), math.floor((1 + half) / 2 * RES)
    square = torch.zeros(RES, RES, dtype=torch.bool)
    square[lo : hi + 1, lo : hi + 1] = True
    # Front and back see the whole square at mid depth (c = 0 -> 1 - 0.9 / 2).
    for v in (0, 2):
        assert torch.equal(views[v] > 0, square), v
        assert torch.allclose(views[v][square], torch.tensor(0.55), atol=1e-5)
    # Right, left, top and bottom see it edge on: a line through the centre.
    for v, line_is_row in ((1, False), (3, False), (4, True), (5, True)):
        nonzero = views[v].nonzero()
        across, along = nonzero.T if line_is_row else nonzero.T.flip(0)
        assert across.unique().tolist() == [RES // 2], v
        assert along.tolist() == list(range(lo, hi + 1)), v


def test_orientation_of_front_and_top_views() -> None:
    # A cloud with an extra point on +x and one on +y: where do they land?
    points = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    front, _, _, _, top, _ = render_depth_views(points, resolution=8, normalize=False)[0, :, 0]
    assert front[4, 7] > 0  # +x: right edge
    assert front[0, 4] > 0  # +y: top edge
    assert top[4, 7] > 0  # seen from above, +x stays on the right
    assert top[4, 4] == 1.0  # +y is the nearest point for the top camera


def test_nearest_point_wins_regardless_of_order() -> None:
    near_then_far = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, -0.5]]])
    far_then_near = near_then_far.flip(1)
    for points in (near_then_far, far_then_near):
        image = render_depth_views(points, 1, 4, normalize=False)[0, 0, 0]
        assert image[2, 2] == pytest.approx(1 - 0.9 * 0.25)  # c = 0.5
        assert (image > 0).sum() == 1


def test_depth_value_range_and_background() -> None:
    torch.manual_seed(0)
    views = render_depth_views(torch.randn(4, 256, 3), resolution=16, far_value=0.2)
    nonzero = views[views > 0]
    assert nonzero.min() >= 0.2 - 1e-6
    assert nonzero.max() <= 1.0
    assert (views == 0).any()  # background stays 0
    # far_value itself: the farthest point of the sphere.
    far = render_depth_views(
        torch.tensor([[[0.0, 0.0, -1.0]]]), 1, 4, far_value=0.2, normalize=False
    )
    assert far.max() == pytest.approx(0.2)


def test_permutation_invariance() -> None:
    torch.manual_seed(1)
    points = torch.randn(3, 500, 3)
    shuffled = points[:, torch.randperm(500)]
    assert torch.equal(render_depth_views(points), render_depth_views(shuffled))


def test_batch_items_are_independent() -> None:
    torch.manual_seed(2)
    points = torch.randn(3, 100, 3)
    together = render_depth_views(points, resolution=16)
    for i in range(3):
        assert torch.equal(together[i], render_depth_views(points[i : i + 1], resolution=16)[0])


def test_normalisation_removes_translation_and_scale() -> None:
    torch.manual_seed(3)
    points = torch.randn(2, 300, 3)
    moved = points * 4.0 + torch.tensor([10.0, -3.0, 2.0])
    a, b = render_depth_views(points), render_depth_views(moved)
    # Only rounding at pixel boundaries may move a point.
    assert ((a > 0) != (b > 0)).float().mean() < 0.002
    both = (a > 0) & (b > 0)
    assert torch.isclose(a[both], b[both], atol=1e-4).float().mean() > 0.99


def test_without_normalisation_points_outside_are_dropped() -> None:
    points = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])
    image = render_depth_views(points, 1, 4, normalize=False)[0, 0, 0]
    assert (image > 0).sum() == 1 and image[2, 2] > 0


def test_splat_grows_points_and_keeps_nearest() -> None:
    points = torch.tensor([[[0.0, 0.0, 0.9], [0.3, 0.0, -0.9]]])
    plain = render_depth_views(points, 1, 16, normalize=False)[0, 0, 0]
    splat = render_depth_views(points, 1, 16, splat=3, normalize=False)[0, 0, 0]
    assert (plain > 0).sum() == 2
    assert (splat > 0).sum() > 9
    assert splat[7:10, 7:10].eq(plain.max()).all()  # 3x3 patch of the near point
    assert torch.equal(splat >= plain, torch.ones_like(plain, dtype=torch.bool))


def test_rendering_has_no_gradient() -> None:
    points = torch.randn(1, 10, 3, requires_grad=True)
    assert not render_depth_views(points).requires_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_views": 0}, "num_views"),
        ({"num_views": 7}, "num_views"),
        ({"resolution": 0}, "resolution"),
        ({"splat": 2}, "splat"),
        ({"far_value": 0.0}, "far_value"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_depth_views(torch.randn(1, 10, 3), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "points, match",
    [
        (torch.randn(10, 3), "shape"),
        (torch.randn(1, 10, 2), "shape"),
        (torch.randn(1, 0, 3), "N = 0"),
        (torch.ones(1, 10, 3, dtype=torch.long), "floating"),
        (torch.tensor([[[0.0, float("nan"), 0.0]]]), "NaN"),
    ],
)
def test_invalid_points(points: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_depth_views(points)


@pytest.mark.parametrize("fuse, factor", [("mean", 1), ("max", 1), ("concat", 6)])
def test_encoder_shapes(fuse: str, factor: int) -> None:
    encoder = DepthViewEncoder("resnet_tiny_cifar", fuse=fuse)  # type: ignore[arg-type]
    assert encoder.feature_dim == 64 * factor
    out = encoder.eval()(torch.randn(2, 200, 3))
    assert out.shape == (2, encoder.feature_dim)


def test_encoder_is_permutation_invariant_and_trains() -> None:
    torch.manual_seed(4)
    encoder = DepthViewEncoder("resnet_tiny_cifar", num_views=4, resolution=16)
    points = torch.randn(2, 300, 3)
    with torch.no_grad():
        encoder.eval()
        a = encoder(points)
        b = encoder(points[:, torch.randperm(300)])
    assert torch.allclose(a, b)
    encoder.train()
    encoder(points).sum().backward()
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None for g in grads)


def test_encoder_with_vit_name_sets_img_size() -> None:
    encoder = DepthViewEncoder("vit_tiny_patch16_224", num_views=2, resolution=32)
    assert encoder.feature_dim == 192
    assert encoder.eval()(torch.randn(1, 50, 3)).shape == (1, 192)


def test_encoder_with_module_infers_width() -> None:
    backbone = nn.Sequential(nn.Conv2d(1, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    encoder = DepthViewEncoder(backbone, num_views=3, resolution=8, in_chans=1, fuse="concat")
    assert encoder.backbone_dim == 5 and encoder.feature_dim == 15
    assert encoder(torch.randn(2, 40, 3)).shape == (2, 15)


def test_encoder_repeats_depth_to_in_chans() -> None:
    seen: list[Tensor] = []

    class Probe(nn.Module):
        num_features = 2

        def forward(self, x: Tensor) -> Tensor:
            seen.append(x)
            return x.mean(dim=(2, 3))[:, :2]

    encoder = DepthViewEncoder(Probe(), num_views=2, resolution=8, in_chans=3)
    points = torch.randn(4, 30, 3)
    encoder(points)
    (images,) = seen
    assert images.shape == (8, 3, 8, 8)
    views = encoder.render(points)  # [4, 2, 1, 8, 8], view-major within each cloud
    for channel in range(3):
        assert torch.equal(images[:, channel], views.reshape(8, 8, 8))


def test_encoder_rejects_unpooled_backbone() -> None:
    backbone = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="pooled features"):
        DepthViewEncoder(backbone, resolution=8)


def test_encoder_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="fuse"):
        DepthViewEncoder("resnet_tiny_cifar", fuse="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backbone_kwargs"):
        DepthViewEncoder(nn.Identity(), backbone_dim=3, pretrained=True)
    with pytest.raises(ValueError, match="splat"):
        DepthViewEncoder("resnet_tiny_cifar", splat=4)
