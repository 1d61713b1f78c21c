"""The same hierarchical training with a ResNet, a ConvNeXt and a ViT, chosen by name.

``create_backbone(name)`` wraps ``timm.create_model(name, num_classes=0)`` and returns
the model together with its feature width, so the projection head always fits. Any
timm name works; this package adds CIFAR-stem ResNets for 32x32 images
(``resnet18_cifar``, ``resnet34_cifar``, ``resnet50_cifar``, ``resnet_tiny_cifar``).
Models with a fixed input size, such as ViTs, take ``img_size``: with ``img_size=32``
a ViT with 16x16 patches sees only 2x2 patches, so for real 32x32 training also pass
``patch_size=4`` (``--patch-size 4``: 8x8 patches; the weights then differ from the
pretrained model's, so train from scratch).

Nothing is downloaded: ``pretrained=True`` only uses weights already in the local
timm/Hugging Face cache, and ``pretrained="/path/to/weights.pth"`` loads a local file.

Run (CPU, one or two steps per backbone)::

    python examples/timm_backbones.py
    python examples/timm_backbones.py --backbones resnet50_cifar convnext_nano \\
        vit_small_patch16_224 --steps 100
    python examples/timm_backbones.py --backbones vit_tiny_patch16_224 --patch-size 4
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import timm
import torch
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightly_hmlc import HMLCLoss, create_backbone
from lightly_hmlc.data import ShapesDataset

DEFAULT_BACKBONES = ["resnet18_cifar", "convnext_atto", "vit_tiny_patch16_224"]


class Model(nn.Module):
    """Any timm backbone followed by a Lightly projection head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, proj_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, proj_dim)

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.projection_head(self.backbone(x))
        return z


def build(name: str, image_size: int, patch_size: int | None) -> tuple[nn.Module, int]:
    """Creates the backbone; models with a fixed input size get ``img_size``."""
    kwargs: dict[str, Any] = {}
    try:
        fixed_input_size = bool(timm.get_pretrained_cfg_value(name, "fixed_input_size"))
    except RuntimeError:  # a name timm resolves outside its registry, e.g. local-dir:
        fixed_input_size = False
    if fixed_input_size:
        kwargs["img_size"] = image_size
        if patch_size is not None:
            kwargs["patch_size"] = patch_size
    return create_backbone(name, **kwargs)


def train(name: str, loader: DataLoader, args: argparse.Namespace) -> float:
    torch.manual_seed(args.seed)
    backbone, feature_dim = build(name, args.image_size, args.patch_size)
    model = Model(backbone, feature_dim, args.proj_dim)
    criterion = HMLCLoss(loss_type="hmce", temperature=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    params = sum(p.numel() for p in backbone.parameters()) / 1e6
    start = time.perf_counter()
    loss = torch.tensor(math.nan)
    step = 0
    while step < args.steps:
        for (x0, x1), labels in loader:
            loss = criterion(model(x0), model(x1), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == args.steps:
                break
    seconds = (time.perf_counter() - start) / args.steps
    print(
        f"{name:<24} features {feature_dim:>4}  params {params:6.2f}M  "
        f"{seconds:6.2f} s/step  loss {loss.item():.4f}"
    )
    return float(loss.item())


def main(args: argparse.Namespace) -> float:
    transform = SimCLRTransform(input_size=args.image_size, gaussian_blur=0.0)
    dataset = ShapesDataset(num_samples=args.num_samples, seed=args.seed, transform=transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)
    losses = [train(name, loader, args) for name in args.backbones]
    print(f"final loss: {losses[-1]:.5f}")
    return losses[-1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=None, help="ViT patch size.")
    parser.add_argument("--proj-dim", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
