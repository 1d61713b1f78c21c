"""G-HMLC and A-HMLC: per-level feature masks in front of the HMLC loss.

Ott et al. (https://arxiv.org/abs/2510.00837) compute each level's contrastive term of
HMLC (Zhang et al., CVPR 2022) on a masked copy of the embedding, ``normalize(z * m_h)``,
so that every level of the hierarchy can use its own features. The mask head is a part
of the model, like a Lightly projection head, and the loss takes its masks::

    z0, z1 = model(x0), model(x1)                     # projections [B, D]
    z = torch.cat([z0, z1])                           # [2B, D], view 0 then view 1
    masks = mask_head(z, labels.repeat(2, 1))         # [2B | 1, L, D]
    loss = criterion(z0, z1, labels, masks=masks)     # HMLCLoss("hmce", hierarchy_margin=0.2)
    loss = loss + mask_head.regularization(masks)     # the head's own term

- G-HMLC (``GMMFeatureMaskHead``): hard 0/1 masks ``[1, L, D]``. A Gaussian mixture,
  refitted every few steps from running per-level class statistics, assigns every
  embedding dimension to one level. The masks are a buffer, ``mask_head.masks``
  ``[L, D]``; before the first fit they are all ones (plain HMLC).
- A-HMLC (``AttentionMaskHead``): soft masks in (0, 1) ``[2B, L, D]`` from one small
  attention MLP per level, trained jointly with the network: its parameters are the
  model's, so the optimiser gets them with ``model.parameters()``.

``GHMLCLoss`` and ``AHMLCLoss`` are one-line conveniences that own such a head and run the
same chain, with the hierarchy margin of 0.2 that they default to (chosen on validation;
docs/METHOD.md, "The hierarchy margin"); the LightningModule below uses them.

The script trains each method twice, with the explicit chain in a plain PyTorch loop and
with the convenience loss in a LightningModule (CPU, a few steps), and prints the masks
it reads back. To show a fit within a few steps it refits the GMM every 2 steps; for real
runs keep the head's defaults (``warmup_steps=100, refit_every=100``), so that each fit
sees enough batches.

Run (CPU, a few seconds)::

    python examples/g_hmlc_and_a_hmlc.py
    python examples/g_hmlc_and_a_hmlc.py --method a-hmlc --steps 50 --num-samples 1200
"""

from __future__ import annotations

import argparse
import math
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightly_hmlc import (
    AHMLCLoss,
    AttentionMaskHead,
    GHMLCLoss,
    GMMFeatureMaskHead,
    HMLCLoss,
    MaskedHMLCLoss,
    create_backbone,
)
from lightly_hmlc.data import ShapesDataset

NUM_LEVELS = 3  # ShapesDataset: family -> fill -> size


def make_head(method: str, dim: int, refit_every: int) -> nn.Module:
    """The mask head; ``dim`` is the width of the projections."""
    if method == "g-hmlc":
        # Fit the GMM after `refit_every` steps, then every `refit_every` steps.
        return GMMFeatureMaskHead(
            num_levels=NUM_LEVELS, dim=dim, warmup_steps=refit_every, refit_every=refit_every
        )
    return AttentionMaskHead(num_levels=NUM_LEVELS, dim=dim, separation_weight=0.1)


def make_convenience_loss(method: str, dim: int, refit_every: int) -> MaskedHMLCLoss:
    """The same head and loss in one module (for one-line use)."""
    if method == "g-hmlc":
        return GHMLCLoss(
            num_levels=NUM_LEVELS,
            dim=dim,
            temperature=0.1,
            warmup_steps=refit_every,
            refit_every=refit_every,
        )
    return AHMLCLoss(num_levels=NUM_LEVELS, dim=dim, temperature=0.1, separation_weight=0.1)


class Encoder(nn.Module):
    """A timm backbone and a Lightly projection head."""

    def __init__(self, backbone: str, proj_dim: int) -> None:
        super().__init__()
        self.backbone, feature_dim = create_backbone(backbone)
        self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, proj_dim)

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.projection_head(self.backbone(x))
        return z


class MaskedModel(nn.Module):
    """Backbone -> projection head -> mask head: the mask head is a model part."""

    def __init__(self, backbone: str, proj_dim: int, method: str, refit_every: int) -> None:
        super().__init__()
        self.encoder = Encoder(backbone, proj_dim)
        self.mask_head = make_head(method, proj_dim, refit_every)

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.encoder(x)
        return z

    def masks(self, z: Tensor, labels: Tensor) -> Tensor:
        """Per-level masks of the rows of ``z`` (both views stacked)."""
        # The heads see the directions of z, as the loss does (it normalises z first).
        masks: Tensor = self.mask_head(F.normalize(z, dim=1), labels)
        return masks


def make_dataloader(args: argparse.Namespace) -> DataLoader:
    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0)
    dataset = ShapesDataset(num_samples=args.num_samples, seed=args.seed, transform=transform)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)


def show_masks(head: nn.Module, z: Tensor) -> None:
    """Prints the masks a trained head holds, level by level (coarse -> fine)."""
    if isinstance(head, GMMFeatureMaskHead):  # G-HMLC
        masks = head.masks  # [L, D] hard 0/1 masks, identical for all samples
        print(f"  GMM fitted: {bool(head.fitted)}, masks {tuple(masks.shape)}")
        for level, mask in enumerate(masks):
            dims = mask.nonzero().flatten().tolist()
            more = " ..." if len(dims) > 12 else ""
            print(f"  level {level}: {len(dims):>2} dims {dims[:12]}{more}")
    else:  # A-HMLC
        head.eval()
        with torch.no_grad():
            masks = head(F.normalize(z, dim=1))  # [B, L, D] soft masks, one per sample
        head.train()
        # The heads start near a constant mask (plain HMLC) and drift apart with training.
        print(f"  attention masks {tuple(masks.shape)}")
        for level in range(masks.shape[1]):
            mean = masks[:, level].mean(0)
            top = mean.topk(5).indices.tolist()
            print(
                f"  level {level}: mean {mean.mean():.3f}, range [{mean.min():.3f}, "
                f"{mean.max():.3f}], top dims {top}"
            )


def train_plain(args: argparse.Namespace, method: str) -> float:
    """A plain PyTorch loop with the explicit chain: head, then loss with ``masks=``."""
    torch.manual_seed(args.seed)
    model = MaskedModel(args.backbone, args.proj_dim, method, args.refit_every)
    # Stateless, no parameters; the margin is what GHMLCLoss and AHMLCLoss default to.
    criterion = HMLCLoss(loss_type="hmce", temperature=0.1, hierarchy_margin=0.2)
    # A-HMLC's attention heads are part of the model: model.parameters() includes them.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = make_dataloader(args)
    loss = torch.tensor(math.nan)
    step = 0
    while step < args.steps:
        for (x0, x1), labels in loader:
            z0, z1 = model(x0), model(x1)
            masks = model.masks(torch.cat([z0, z1]), labels.repeat(2, 1))
            loss = criterion(z0, z1, labels, masks=masks)
            loss = loss + model.mask_head.regularization(masks)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            print(f"  step {step}: loss {loss.item():.4f}, masks {tuple(masks.shape)}")
            if step == args.steps:
                break
    with torch.no_grad():
        (x0, _), _ = next(iter(loader))
        z = model.eval()(x0)
    show_masks(model.mask_head, z)
    return float(loss.item())


class HierarchicalModule(pl.LightningModule):
    """The same model as a LightningModule with the one-line convenience loss.

    The convenience loss owns the head and is a submodule, so ``self.parameters()``
    includes A-HMLC's heads and the GMM masks are saved in checkpoints."""

    def __init__(self, backbone: str, proj_dim: int, method: str, refit_every: int) -> None:
        super().__init__()
        self.encoder = Encoder(backbone, proj_dim)
        self.criterion = make_convenience_loss(method, proj_dim, refit_every)
        self.last_loss = math.nan

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.encoder(x)
        return z

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        (x0, x1), labels = batch
        loss: Tensor = self.criterion(self(x0), self(x1), labels)
        self.log("train_loss", loss, prog_bar=True)
        self.last_loss = loss.item()
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def train_lightning(args: argparse.Namespace, method: str) -> float:
    torch.manual_seed(args.seed)
    module = HierarchicalModule(args.backbone, args.proj_dim, method, args.refit_every)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, make_dataloader(args))
    print(f"  {trainer.global_step} steps, loss {module.last_loss:.4f}")
    with torch.no_grad():
        (x0, _), _ = next(iter(make_dataloader(args)))
        z = module.eval()(x0)
    show_masks(module.criterion.mask_head, z)
    return module.last_loss


def main(args: argparse.Namespace) -> float:
    methods = ["g-hmlc", "a-hmlc"] if args.method == "both" else [args.method]
    loss = math.nan
    for method in methods:
        print(f"{method.upper()}, plain PyTorch loop:")
        loss = train_plain(args, method)
        print(f"{method.upper()}, LightningModule:")
        loss = train_lightning(args, method)
    print(f"final loss: {loss:.5f}")
    return loss


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="both", choices=["both", "g-hmlc", "a-hmlc"])
    parser.add_argument("--backbone", default="resnet_tiny_cifar")
    parser.add_argument("--proj-dim", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--refit-every", type=int, default=2, help="G-HMLC: steps between fits.")
    parser.add_argument("--num-samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    # Tiny CPU runs: Lightning's hints about workers and logging intervals do not apply.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*log_every_n_steps.*")
    main(parse_args())
