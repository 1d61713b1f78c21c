"""From a standard Lightly SimCLR pipeline to hierarchical (HMCE) training.

The script is Lightly's usual SimCLR recipe: ``SimCLRTransform`` for two views, a
torchvision ResNet-18 backbone, ``SimCLRProjectionHead`` and ``NTXentLoss``. Switching it
to the hierarchical multi-label contrastive loss of Zhang et al. (CVPR 2022,
https://arxiv.org/abs/2204.13207) changes two things, marked ``# HMLC:`` below:

1. the loss: ``HMLCLoss(loss_type="hmce")`` instead of ``NTXentLoss()``;
2. the batch: keep the label paths ``[B, L]`` (coarse to fine) that the dataset returns
   as targets and pass them to the loss.

Everything else (transform, backbone, projection head, optimiser, loop) stays as is.

Data: ``ShapesDataset``, generated in memory (nothing is downloaded); its target is
already a label path ``[family, fill, size]``. For a torchvision dataset, add a
``target_transform`` that turns the class index into the label path, for example::

    from lightly_hmlc import LabelHierarchy
    from lightly_hmlc.data import LabelPathTransform

    dataset = torchvision.datasets.CIFAR10(
        "datasets/cifar10", download=True, transform=transform,
        target_transform=LabelPathTransform(LabelHierarchy.cifar10()),
    )

``LabelPathTransform(hierarchy)`` maps class index ``i`` to the path of the ``i``-th leaf
in sorted name order, which is CIFAR-10's official order and ``ImageFolder``'s folder
order; pass ``class_names=dataset.classes`` for any other order.

Run (CPU, a few seconds)::

    python examples/lightly_simclr_to_hmlc.py               # HMCE (default)
    python examples/lightly_simclr_to_hmlc.py --loss simclr  # the plain SimCLR baseline
    python examples/lightly_simclr_to_hmlc.py --num-samples 2400 --epochs 10 --batch-size 256
"""

from __future__ import annotations

import argparse
import math

import torch
import torchvision
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightly_hmlc import HMLCLoss  # HMLC: the hierarchical loss
from lightly_hmlc.data import ShapesDataset


class SimCLR(nn.Module):
    """Backbone and projection head, exactly as for plain SimCLR."""

    def __init__(self, backbone: nn.Module, feature_dim: int = 512) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, 512, 128)

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x).flatten(start_dim=1)
        z: Tensor = self.projection_head(features)
        return z


def main(args: argparse.Namespace) -> float:
    """Trains for ``args.epochs`` epochs and returns the last loss."""
    torch.manual_seed(args.seed)
    resnet = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(resnet.children())[:-1])
    model = SimCLR(backbone)

    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0)
    dataset = ShapesDataset(num_samples=args.num_samples, transform=transform)
    dataloader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
    )

    if args.loss == "simclr":
        criterion: nn.Module = NTXentLoss()
    else:
        criterion = HMLCLoss(loss_type=args.loss, temperature=0.1)  # HMLC: the new loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)

    loss = torch.tensor(math.nan)
    per_level: Tensor | None = None
    for epoch in range(args.epochs):
        total_loss = 0.0
        for (x0, x1), labels in dataloader:  # HMLC: labels are label paths [B, L]
            z0 = model(x0)
            z1 = model(x1)
            if args.loss == "simclr":
                loss = criterion(z0, z1)
            else:
                # HMLC: pass the label paths; the per-level terms come back on request.
                loss, per_level = criterion(z0, z1, labels, return_level_losses=True)
            total_loss += loss.item()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        avg_loss = total_loss / max(1, len(dataloader))
        print(f"epoch: {epoch:>02}, loss: {avg_loss:.5f}")
    if per_level is not None:
        levels = ", ".join(f"{value:.4f}" for value in per_level.tolist())
        print(f"per-level terms (coarse -> fine): [{levels}]")
    print(f"final loss ({args.loss}): {loss.item():.5f}")
    return float(loss.item())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--loss",
        default="hmce",
        choices=["simclr", "hmce", "hmc", "hce"],
        help="simclr: NTXentLoss (no labels); hmce/hmc/hce: HMLCLoss (label paths).",
    )
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
