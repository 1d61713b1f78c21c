"""The benchmarked methods: one LightningModule base and one small subclass per method.

Every method trains the same encoder (a timm backbone, or a point-cloud encoder around
one) on the same two-view batches ``([view0, view1], label_paths)``; only the objective
differs:

=========  =====================================================================
method     objective
=========  =====================================================================
``ce``     cross-entropy of a linear classifier on the backbone features, on the
           fine (deepest known) class of each label path; both views are used
``simclr`` Lightly's ``NTXentLoss`` on the projections; no labels [0]
``supcon`` ``SupConLoss``: positives share the whole label path [1]
``hmc``    ``HMLCLoss(loss_type="hmc")``, Zhang et al. [2]
``hce``    ``HMLCLoss(loss_type="hce")`` [2]
``hmce``   ``HMLCLoss(loss_type="hmce")`` [2]
``g-hmlc`` HMCE on hard per-level masks of the GMM head (``gmm-mask``), Ott et al. [3],
           with ``GHMLCLoss``' default hierarchy margin (0.2): the package's
           ``MaskedHMLCLoss`` chain
``a-hmlc`` HMCE on soft per-level masks of the attention head (``attention-mask``) [3],
           with ``AHMLCLoss``' default hierarchy margin (0.2): the same chain
``a-hmlc-  HMCE with margin 0.2 on per-level embeddings ``[B, L, D]``: the package's
tokens``   ``LevelAttentionPool`` over the backbone's tokens (one query per level),
           each level's pooled vector through the shared projection head
=========  =====================================================================

Every method but ``ce`` and ``simclr`` is a loss of ``lightly_hmlc.registry``, built by
``create_loss(name, ...)`` in :class:`LabelPathMethod`; :func:`method_names` is the one
table of methods (the CLI, ``throughput.py`` and the docs derive from it), so a loss
registered with ``register_loss`` (or an entry point) is a method with no change here.

The contrastive methods project the backbone features with Lightly's
``SimCLRProjectionHead`` (hidden width = feature width, output ``proj_dim``). G-HMLC and
A-HMLC train with the package's own chain, the loss a user trains with:
``MaskedHMLCLoss(create_head(...))``, which runs the head, the masked HMLC terms and the
head's regulariser (``GHMLCLoss`` and ``AHMLCLoss`` are this loss with their head). The
loss is a submodule of the model, and the head one of the loss (``self.mask_head`` is
``self.criterion.mask_head``), so A-HMLC's attention parameters are optimised as model
parameters and G-HMLC's statistics are checkpointed with the model.

Optimisation (shared): SGD with momentum 0.9 (or LARS, or AdamW), the learning rate
``lr * global_batch_size / 256`` (linear scaling), no weight decay on norm layers and
biases, linear warmup for ``warmup_epochs`` then cosine decay to 0.1% per step
(Lightly's ``CosineWarmupScheduler``).

- [0] SimCLR, Chen et al., ICML 2020, https://arxiv.org/abs/2002.05709
- [1] Supervised Contrastive Learning, Khosla et al., NeurIPS 2020
- [2] Use All The Labels, Zhang et al., CVPR 2022, https://arxiv.org/abs/2204.13207
- [3] Feature Identification for Hierarchical Contrastive Learning, Ott et al.,
  arXiv 2510.00837
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from level_pool import LevelAttentionPool
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.models.utils import (
    deactivate_requires_grad,
    get_weight_decay_parameters,
    update_momentum,
)
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from timm.models import get_pretrained_cfg_value
from torch import Tensor, nn

from lightly_hmlc import DepthViewEncoder, create_backbone
from lightly_hmlc.loss import AHMLCLoss, GHMLCLoss, MaskedHMLCLoss
from lightly_hmlc.models.modules import HierarchicalMemoryBank
from lightly_hmlc.registry import (
    component_parameters,
    create_head,
    create_loss,
    list_components,
)

OPTIMIZERS = ("sgd", "lars", "adamw")
ENCODERS = ("image", "depth_views")


class CheckpointMismatchError(ValueError):
    """A checkpoint was trained with another method, backbone or hierarchy."""


class HierarchicalMethod(pl.LightningModule):
    """Shared encoder, projection head, optimiser and logging of all benchmarked methods.

    Subclasses set ``method_name`` and implement :meth:`build_criterion` and
    :meth:`compute_loss`.

    Args:
        num_classes_per_level: Classes at each level of the hierarchy, coarse to fine.
        backbone: A ``timm`` model name (``create_backbone``), e.g. ``"resnet18_cifar"``.
        in_chans: Input channels of the images.
        img_size: Input size, used for backbones with a fixed input size (ViT).
        encoder: ``"image"`` (the backbone on images) or ``"depth_views"`` (point clouds
            rendered to depth images and encoded by the backbone, ``DepthViewEncoder``).
        encoder_kwargs: Extra arguments of ``DepthViewEncoder`` (``num_views``,
            ``resolution``, ``fuse``) for ``encoder="depth_views"``.
        proj_dim: Output width of the projection head.
        temperature: Temperature of the contrastive losses.
        optimizer: ``"sgd"``, ``"lars"`` or ``"adamw"``.
        lr: Learning rate for a global batch of 256; scaled linearly to ``batch_size``.
        batch_size: Global batch size (all devices together), for the scaling.
        weight_decay: Weight decay (not applied to norm layers and biases).
        momentum: Momentum of SGD and LARS.
        warmup_epochs: Epochs of linear warmup before the cosine decay.
        gather_distributed: Gather projections (and labels) from all ranks in the loss;
            set it when training on more than one process.
        mask_warmup_steps: G-HMLC: steps before the first GMM fit (default: the head's).
        mask_refit_every: G-HMLC: steps between GMM refits (default: the head's).

    Examples:
        >>> model = create_method("hmce", num_classes_per_level=[2, 4])
        >>> views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
        >>> loss, logs = model.shared_step((views, labels))
        >>> loss.shape, sorted(logs)
        (torch.Size([]), ['loss_level0', 'loss_level1'])
        >>> model(views[0]).shape  # the backbone features that evaluation probes
        torch.Size([4, 64])
    """

    # A class attribute of the baselines; LabelPathMethod sets it per instance.
    method_name: str = ""
    uses_projection_head: ClassVar[bool] = True

    def __init__(
        self,
        num_classes_per_level: Sequence[int],
        backbone: str = "resnet_tiny_cifar",
        in_chans: int = 3,
        img_size: int | None = None,
        encoder: str = "image",
        encoder_kwargs: dict[str, Any] | None = None,
        proj_dim: int = 128,
        temperature: float = 0.1,
        optimizer: str = "sgd",
        lr: float = 0.25,
        batch_size: int = 256,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_epochs: float = 10.0,
        gather_distributed: bool = False,
        mask_warmup_steps: int | None = None,
        mask_refit_every: int | None = None,
    ) -> None:
        super().__init__()
        if not self.method_name:
            raise TypeError("HierarchicalMethod is a base class: instantiate a method subclass.")
        levels = [int(n) for n in num_classes_per_level]
        if not levels or min(levels) < 1:
            raise ValueError(f"num_classes_per_level must list >= 1 class per level, got {levels}.")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}.")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}.")
        if not lr > 0 or not temperature > 0 or batch_size < 1:
            raise ValueError(
                f"lr, temperature and batch_size must be positive, got {lr}, "
                f"{temperature}, {batch_size}."
            )
        if warmup_epochs < 0 or weight_decay < 0:
            raise ValueError(
                f"warmup_epochs and weight_decay must be >= 0, got {warmup_epochs} and "
                f"{weight_decay}."
            )
        self.save_hyperparameters()
        # Not constructor arguments: saved so that a checkpoint names what produced it.
        self.hparams["method"] = self.method_name
        self.num_classes_per_level = levels
        self.num_levels = len(levels)
        self.backbone_name = backbone
        self.proj_dim = proj_dim
        self.temperature = temperature
        self.optimizer_name = optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.warmup_epochs = warmup_epochs
        self.gather_distributed = gather_distributed
        self.mask_warmup_steps = mask_warmup_steps
        self.mask_refit_every = mask_refit_every

        self.backbone, self.feature_dim = build_encoder(
            backbone,
            in_chans=in_chans,
            img_size=img_size,
            encoder=encoder,
            encoder_kwargs=encoder_kwargs,
        )
        self.projection_head: nn.Module | None = None
        if self.uses_projection_head:
            self.projection_head = SimCLRProjectionHead(
                input_dim=self.feature_dim, hidden_dim=self.feature_dim, output_dim=proj_dim
            )
        self.criterion = self.build_criterion()

    # ------------------------------------------------------------------ per method
    def build_criterion(self) -> nn.Module:
        """Returns the loss module (a submodule, so it is optimised and checkpointed)."""
        raise NotImplementedError

    def compute_loss(
        self, features: Tensor, z0: Tensor | None, z1: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns the loss and extra (detached) values to log.

        Args:
            features: Backbone features of both views, ``[2B, F]`` (view0 first).
            z0, z1: Projections of the two views ``[B, D]`` (``None`` without a head).
            labels: Label paths ``[B, L]``.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def forward(self, x: Tensor) -> Tensor:
        """Backbone features ``[B, F]``; what the evaluation probes."""
        features: Tensor = self.backbone(x)
        return features.flatten(start_dim=1)

    def level_encoder(self) -> nn.Module | None:
        """A module mapping images to the per-level embeddings ``[B, L, D]`` that the
        loss contrasts, for the feature-identification score; ``None`` (the default):
        this method has no per-level features."""
        return None

    def shared_step(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one batch ``([view0, view1, ...], label_paths)`` and values to log."""
        views, labels = self.check_batch(batch)
        features, z0, z1 = self.encode_views(views)
        return self.compute_loss(features, z0, z1, labels)

    def check_batch(self, batch: Any) -> tuple[Sequence[Tensor], Tensor]:
        """The views and label paths of a batch, or a ValueError saying what is wrong."""
        views, labels = batch[0], batch[1]
        if not isinstance(views, list | tuple) or len(views) < 2:
            raise ValueError(
                "Expected a batch ([view0, view1], label_paths) from a two-view transform "
                f"(e.g. Lightly's SimCLRTransform); got views of type {type(views).__name__}."
            )
        if labels.ndim != 2 or labels.shape[1] != self.num_levels:
            raise ValueError(
                f"Expected label paths [B, {self.num_levels}], got {tuple(labels.shape)}; pass "
                "target_transform=LabelPathTransform(hierarchy, dataset.classes)."
            )
        return views, labels

    def encode_views(self, views: Sequence[Tensor]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Backbone features ``[2B, F]`` of views 0 and 1, and their projections ``z0, z1``."""
        # One forward over both views: BatchNorm sees the whole two-view batch.
        features = self.forward(torch.cat([views[0], views[1]]))
        z0 = z1 = None
        if self.projection_head is not None:
            z0, z1 = self.projection_head(features).chunk(2)
        return features, z0, z1

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Computes and logs the loss (``train/loss``) and per-level terms."""
        loss, logs = self.shared_step(batch)
        batch_size = int(batch[1].shape[0])
        # sync_dist: the epoch means cover all ranks (the CE loss is rank-local).
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        for name, value in logs.items():
            self.log(
                f"train/{name}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=True,
            )
        return loss

    def configure_optimizers(self) -> Any:
        """The optimiser of ``optimizer`` with a per-step cosine warmup schedule."""
        lr = self.lr * self.batch_size / 256
        decay, no_decay = get_weight_decay_parameters([self])
        # Frozen parameters (a momentum encoder, updated by EMA) are not optimised.
        decay = [p for p in decay if p.requires_grad]
        no_decay = [p for p in no_decay if p.requires_grad]
        groups: list[dict[str, Any]] = [
            {"name": "decay", "params": decay},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
        ]
        optimizer: torch.optim.Optimizer
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(
                groups, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        elif self.optimizer_name == "lars":
            optimizer = LARS(groups, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=self.weight_decay)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        max_epochs = max(1, int(self.trainer.max_epochs or 1))
        warmup_steps = min(total_steps, round(total_steps * self.warmup_epochs / max_epochs))
        scheduler = CosineWarmupScheduler(
            optimizer, warmup_epochs=warmup_steps, max_epochs=total_steps
        )
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    def on_train_start(self) -> None:
        """Fits the schedule to this run's length: a resume with more ``--epochs`` restores
        the scheduler of the shorter run, whose cosine would end at the old last step."""
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        max_epochs = max(1, int(self.trainer.max_epochs or 1))
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, CosineWarmupScheduler) and scheduler.max_epochs != total_steps:
                scheduler.warmup_epochs = min(
                    total_steps, round(total_steps * self.warmup_epochs / max_epochs)
                )
                scheduler.max_epochs = total_steps

    # ------------------------------------------------------------------ checkpoints
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses a checkpoint of another method, backbone or hierarchy, naming both."""
        check_checkpoint_hparams(
            checkpoint.get("hyper_parameters", {}),
            method=self.method_name,
            backbone=self.backbone_name,
            num_classes_per_level=self.num_classes_per_level,
        )


def build_encoder(
    backbone: str,
    *,
    in_chans: int = 3,
    img_size: int | None = None,
    encoder: str = "image",
    encoder_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, int]:
    """Creates the encoder (image backbone or point-cloud depth-view encoder) and its width."""
    if encoder == "depth_views":
        module = DepthViewEncoder(backbone, **(encoder_kwargs or {}))
        return module, int(module.feature_dim)
    if encoder_kwargs:
        raise ValueError(
            f"encoder_kwargs {sorted(encoder_kwargs)} only apply to encoder='depth_views'."
        )
    kwargs: dict[str, Any] = {"in_chans": in_chans}
    if img_size is not None and _has_fixed_input_size(backbone):
        kwargs["img_size"] = img_size
    return create_backbone(backbone, **kwargs)


def _has_fixed_input_size(name: str) -> bool:
    try:
        return bool(get_pretrained_cfg_value(name, "fixed_input_size"))
    except RuntimeError:
        return False


def check_checkpoint_hparams(
    saved: Any,
    *,
    method: str,
    backbone: str,
    num_classes_per_level: Sequence[int] | None = None,
    source: str = "The checkpoint",
) -> None:
    """Raises :class:`CheckpointMismatchError` if a checkpoint does not fit this run.

    Args:
        saved: The checkpoint's ``hyper_parameters``.
        method, backbone: What this run trains.
        num_classes_per_level: This run's hierarchy, if it should be compared too.
        source: How to name the checkpoint in the message.
    """
    saved = dict(saved or {})
    saved_method = saved.get("method")
    saved_backbone = saved.get("backbone")
    if saved_method is None or saved_backbone is None:
        raise CheckpointMismatchError(
            f"{source} was not written by benchmarks/main.py (its hyperparameters name no "
            "method and backbone); resume only from this suite's checkpoints."
        )
    if saved_method != method or saved_backbone != backbone:
        raise CheckpointMismatchError(
            f"{source} was trained with method {saved_method!r} and backbone "
            f"{saved_backbone!r}, but this run asks for method {method!r} and backbone "
            f"{backbone!r}. Resume with --methods {saved_method} --backbone {saved_backbone}, "
            "or drop --resume to start a fresh run."
        )
    saved_levels = saved.get("num_classes_per_level")
    if num_classes_per_level is not None and saved_levels is not None:
        if [int(n) for n in saved_levels] != [int(n) for n in num_classes_per_level]:
            raise CheckpointMismatchError(
                f"{source} was trained on a hierarchy with classes per level "
                f"{list(saved_levels)}, but this run's dataset has "
                f"{list(num_classes_per_level)}. Use the same --dataset and --hierarchy, "
                "or drop --resume."
            )


# ---------------------------------------------------------------------- methods
class CrossEntropy(HierarchicalMethod):
    """Supervised baseline: a linear classifier on the backbone, fine-class cross-entropy.

    The fine class of a label path is its deepest known level; classes of different
    levels get distinct outputs, so hierarchies with leaves at several depths work.
    Both views are classified (the batch holds two augmentations of every image).
    """

    method_name = "ce"
    uses_projection_head = False

    def build_criterion(self) -> nn.Module:
        """A linear classifier over all classes of all levels, and cross-entropy."""
        offsets = torch.tensor([0, *self.num_classes_per_level[:-1]]).cumsum(0)
        self.register_buffer("level_offsets", offsets, persistent=False)
        self.classifier = nn.Linear(self.feature_dim, sum(self.num_classes_per_level))
        return nn.CrossEntropyLoss(ignore_index=-100)

    def fine_targets(self, labels: Tensor) -> Tensor:
        """Index of each path's deepest known class (``-100`` for an all-unknown path)."""
        depth = (labels >= 0).sum(dim=1) - 1
        level_offsets = self.get_buffer("level_offsets")
        ids = labels.gather(1, depth.clamp(min=0).unsqueeze(1)).squeeze(1)
        targets = level_offsets[depth.clamp(min=0)] + ids
        return torch.where(depth >= 0, targets, torch.full_like(targets, -100))

    def compute_loss(
        self, features: Tensor, z0: Tensor | None, z1: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy on both views; logs the training accuracy."""
        logits = self.classifier(features)
        targets = self.fine_targets(labels).repeat(2)
        loss: Tensor = self.criterion(logits, targets)
        valid = targets >= 0
        accuracy = (logits.argmax(1) == targets)[valid].float().mean()
        return loss, {"fine_acc": accuracy.detach()}


class SimCLR(HierarchicalMethod):
    """Self-supervised baseline: Lightly's ``NTXentLoss``; labels are ignored."""

    method_name = "simclr"

    def build_criterion(self) -> nn.Module:
        """Lightly's NT-Xent loss."""
        return NTXentLoss(
            temperature=self.temperature,
            gather_distributed=self.gather_distributed,
        )

    def compute_loss(
        self, features: Tensor, z0: Tensor | None, z1: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """NT-Xent of the two views' projections."""
        assert z0 is not None and z1 is not None
        loss: Tensor = self.criterion(z0, z1)
        return loss, {}


@dataclass(frozen=True)
class MaskedMethod:
    """A method of Ott et al. [3]: the package's ``MaskedHMLCLoss`` on a registered head.

    The loss is ``MaskedHMLCLoss(create_head(head, ...), ...)``, the chain that
    ``GHMLCLoss`` and ``AHMLCLoss`` are (they build the same loss around their head);
    the suite builds the head itself so that ``--head-option`` reaches the head even
    where a head and the loss share an argument name (A-HMLC's gate ``temperature``).
    ``loss_defaults`` are the loss options that the one-module loss of the same method
    (``GHMLCLoss``, ``AHMLCLoss``) has by default and ``MaskedHMLCLoss`` does not
    (``--loss-option`` overrides them).
    """

    head: str
    loss_defaults: dict[str, Any] = field(default_factory=dict)


MASKED_METHODS: dict[str, MaskedMethod] = {
    "g-hmlc": MaskedMethod("gmm-mask", {"hierarchy_margin": GHMLCLoss.default_hierarchy_margin}),
    "a-hmlc": MaskedMethod(
        "attention-mask", {"hierarchy_margin": AHMLCLoss.default_hierarchy_margin}
    ),
}


@dataclass(frozen=True)
class LevelPoolMethod:
    """A method on per-level embeddings: the lab's ``LevelAttentionPool`` over the
    backbone's tokens gives ``[2B, L, C]``, the shared projection head ``[2B, L, D]``, and
    the registered ``loss`` (with ``loss_defaults``) contrasts level ``h``'s embedding in
    level ``h``'s term. ``--head-option`` reaches the pool (``num_heads``, ``mlp_ratio``).
    """

    loss: str
    loss_defaults: dict[str, Any] = field(default_factory=dict)


LEVEL_POOL_METHODS: dict[str, LevelPoolMethod] = {
    "a-hmlc-tokens": LevelPoolMethod(
        "hmce", {"hierarchy_margin": AHMLCLoss.default_hierarchy_margin}
    ),
}


class _LevelEmbeddings(nn.Module):
    """Images to the per-level embeddings ``[B, L, D]`` that a method's loss contrasts."""

    def __init__(self, method: LabelPathMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, x: Tensor) -> Tensor:
        method = self.method
        assert method.projection_head is not None
        if method.level_pool is not None:
            return F.normalize(method.project_levels(method.tokens(x)), dim=-1)
        masked: Any = method.criterion.level_embeddings  # MaskedHMLCLoss's
        level_embeddings: Tensor = masked(method.projection_head(method(x)))
        return level_embeddings


# What the suite offers every registered loss and head; each gets the ones it names.
_SUITE_ARGUMENTS = ("temperature", "gather_distributed", "num_levels", "dim")


class LabelPathMethod(HierarchicalMethod):
    """Any loss of the registry: ``create_loss(method)(z0, z1, label_paths)``.

    The loss gets those of ``temperature``, ``gather_distributed``, ``num_levels`` and
    ``dim`` (the projection width) that its factory names (all of them if it takes
    ``**kwargs``), then ``loss_options``, which win: ``loss_options={"temperature":
    [0.2, 0.1]}`` overrides the suite's ``temperature`` (``--temperature``). A
    loss registered with :func:`lightly_hmlc.registry.register_loss` is therefore a
    method of the suite with no change here. Per-level terms are logged
    (``train/loss_level{l}``; an HMLC loss with ``instance_weight > 0`` returns its
    instance term last, as ``loss_level{L}``) when the loss returns them
    (``return_level_losses=True``,
    asked only of a loss whose ``forward`` names it).

    The methods of ``MASKED_METHODS`` (G-HMLC, A-HMLC) train with the package's chain
    of Ott et al. [3], ``MaskedHMLCLoss(create_head(head, ...))``: the loss runs the head
    on the L2-normalised ``cat([z0, z1])``, the masked HMLC terms and the head's
    ``regularization(masks)``, exactly as for a user of ``GHMLCLoss``/``AHMLCLoss``;
    nothing of the chain is written here. The head is a submodule of the loss
    (:attr:`mask_head`), so A-HMLC's attention parameters are optimised as model
    parameters and G-HMLC's statistics are checkpointed with the model.

    Args:
        method: The registered loss name, e.g. ``"hmce"``, or a ``MASKED_METHODS`` name.
        num_classes_per_level: Classes per level, coarse to fine.
        loss_options: Extra keyword arguments of the loss (``--loss-option``).
        head_options: Extra keyword arguments of the mask head (``--head-option``).
        memory_bank_size: K > 0: a ``HierarchicalMemoryBank`` of the last K projections
            of view 1 and their label paths (MoCo order: the queue before this batch),
            passed to the loss as ``memory=`` (extra contrast rows, never anchors). With
            per-row masks (A-HMLC) the head also masks the memory rows.
        momentum_encoder: M in ``[0, 1)`` (needs ``memory_bank_size``): the queue is filled
            by a momentum copy of backbone and projection head (MoCo, He et al. 2020)
            instead of the online ``z1``. Each training step first sets the copy's
            parameters to ``M * copy + (1 - M) * online`` (Lightly's ``update_momentum``),
            then enqueues the copy's projections of view 1 (no gradient, its BatchNorm on
            view 1 alone, as MoCo's key encoder). The loss still gets the online
            ``z0, z1``; A-HMLC's memory masks still come from the online head. The copy
            is a frozen submodule (``momentum_backbone``, ``momentum_projection_head``):
            checkpointed, moved with the model and left out of the optimiser. ``None``
            (default): no copy, the queue gets ``z1``.
        **kwargs: The arguments of :class:`HierarchicalMethod`.
    """

    memory_bank: HierarchicalMemoryBank | None
    momentum_backbone: nn.Module | None
    momentum_projection_head: nn.Module | None
    level_pool: LevelAttentionPool | None

    def __init__(
        self,
        method: str,
        num_classes_per_level: Sequence[int],
        loss_options: dict[str, Any] | None = None,
        head_options: dict[str, Any] | None = None,
        memory_bank_size: int = 0,
        momentum_encoder: float | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(memory_bank_size, bool) or memory_bank_size < 0:
            raise ValueError(f"memory_bank_size must be an int >= 0, got {memory_bank_size!r}.")
        if momentum_encoder is not None:
            if (
                isinstance(momentum_encoder, bool)
                or not isinstance(momentum_encoder, int | float)
                or not 0 <= momentum_encoder < 1  # also refuses NaN
            ):
                raise ValueError(
                    f"momentum_encoder must be a number in [0, 1) (e.g. 0.99) or None, got "
                    f"{momentum_encoder!r}."
                )
            if not memory_bank_size:
                raise ValueError(
                    "momentum_encoder fills the memory bank's queue: it needs memory_bank_size > 0."
                )
        self.memory_bank_size = int(memory_bank_size)
        self.momentum_encoder = None if momentum_encoder is None else float(momentum_encoder)
        self.method_name = method
        self.loss_options = dict(loss_options or {})
        self.head_options = dict(head_options or {})
        with_head = sorted([*MASKED_METHODS, *LEVEL_POOL_METHODS])
        if self.head_options and method not in with_head:
            raise ValueError(
                f"head options {sorted(self.head_options)} apply only to the methods with a "
                f"mask head or a level pool, {with_head}; method {method!r} has none."
            )
        if method in LEVEL_POOL_METHODS and momentum_encoder is not None:
            raise ValueError(
                f"method {method!r} contrasts per-level embeddings of the backbone's "
                "tokens; the momentum encoder fills the queue with pooled projections. "
                "Drop --momentum-encoder (a plain --memory-bank works)."
            )
        super().__init__(num_classes_per_level, **kwargs)
        self.momentum_backbone = self.momentum_projection_head = None
        if self.momentum_encoder is not None:
            self.momentum_backbone = copy.deepcopy(self.backbone)
            self.momentum_projection_head = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.momentum_backbone)
            deactivate_requires_grad(self.momentum_projection_head)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Updates the momentum encoder (if any), then the step of the base class."""
        if self.momentum_encoder is not None:
            assert self.momentum_backbone is not None and self.projection_head is not None
            assert self.momentum_projection_head is not None
            update_momentum(self.backbone, self.momentum_backbone, self.momentum_encoder)
            update_momentum(
                self.projection_head, self.momentum_projection_head, self.momentum_encoder
            )
        return super().training_step(batch, batch_idx)

    def shared_step(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The base step; with a momentum encoder its keys of view 1 fill the queue."""
        views, labels = self.check_batch(batch)
        keys = self.momentum_keys(views[1]) if self.momentum_encoder is not None else None
        features, z0, z1 = self.encode_views(views)
        return self.compute_loss(features, z0, z1, labels, keys=keys)

    @torch.no_grad()
    def momentum_keys(self, x: Tensor) -> Tensor:
        """The momentum copy's projections ``[B, D]`` of ``x`` (no gradient)."""
        if self.momentum_backbone is None or self.momentum_projection_head is None:
            raise RuntimeError("This method has no momentum encoder (momentum_encoder=None).")
        features = self.momentum_backbone(x).flatten(start_dim=1)
        keys: Tensor = self.momentum_projection_head(features)
        return keys

    @property
    def mask_head(self) -> nn.Module | None:
        """The loss's mask head (G-HMLC, A-HMLC, ``masked-hmlc``), else ``None``."""
        head = getattr(self.criterion, "mask_head", None)
        return head if isinstance(head, nn.Module) else None

    def encode_views(self, views: Sequence[Tensor]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The base class's features and projections; with a level pool the projections
        are per-level embeddings ``[B, L, D]`` of the backbone's tokens."""
        if self.level_pool is None:
            return super().encode_views(views)
        tokens = self.tokens(torch.cat([views[0], views[1]]))
        head: Any = self.backbone.forward_head  # timm's: the pooled features, no classifier
        features: Tensor = head(tokens, pre_logits=True).flatten(start_dim=1)
        z0, z1 = self.project_levels(tokens).chunk(2)
        return features, z0, z1

    def tokens(self, x: Tensor) -> Tensor:
        """The backbone's tokens of ``x``: timm's ``forward_features`` (before pooling)."""
        forward_features: Any = self.backbone.forward_features
        tokens: Tensor = forward_features(x)
        return tokens

    def project_levels(self, tokens: Tensor) -> Tensor:
        """Per-level embeddings ``[B, L, D]``: the level pool, then the shared projection."""
        assert self.level_pool is not None and self.projection_head is not None
        pooled = self.level_pool(tokens)  # [B, L, C]
        projected: Tensor = self.projection_head(pooled.flatten(0, 1))
        return projected.unflatten(0, pooled.shape[:2])

    def level_encoder(self) -> nn.Module | None:
        """Images to the embeddings ``[B, L, D]`` each level's term contrasts: the masked
        projections (G-HMLC, A-HMLC) or the level pool's (``a-hmlc-tokens``)."""
        if self.level_pool is None and not hasattr(self.criterion, "level_embeddings"):
            return None
        return _LevelEmbeddings(self)

    def _offered(self, names: Sequence[str], variadic: bool) -> dict[str, Any]:
        # A factory with **kwargs gets them all: it may forward them to a loss that
        # needs gather_distributed (else a DDP run would silently compute per rank).
        if variadic:
            names = [*names, *_SUITE_ARGUMENTS]
        offered = {
            "temperature": self.temperature,
            "gather_distributed": self.gather_distributed,
            "num_levels": self.num_levels,
            "dim": self.proj_dim,
        }
        return {key: offered[key] for key in _SUITE_ARGUMENTS if key in names}

    def build_criterion(self) -> nn.Module:
        """The registered loss (for G-HMLC and A-HMLC the package's ``MaskedHMLCLoss`` on
        the registered head) with the suite's arguments they name."""
        masked = MASKED_METHODS.get(self.method_name)
        pooled = LEVEL_POOL_METHODS.get(self.method_name)
        criterion: nn.Module
        self.level_pool = None
        if pooled is not None:
            if not hasattr(self.backbone, "forward_features"):
                raise ValueError(
                    f"method {self.method_name!r} pools the backbone's tokens: it needs a "
                    "timm image backbone with forward_features (not encoder='depth_views')."
                )
            self.level_pool = LevelAttentionPool(
                self.feature_dim, self.num_levels, **self.head_options
            )
            kwargs = {
                **self._offered(*component_parameters("loss", pooled.loss)),
                **pooled.loss_defaults,
                **self.loss_options,
            }
            criterion = create_loss(pooled.loss, **kwargs)
        elif masked is None:
            kwargs = {
                **self._offered(*component_parameters("loss", self.method_name)),
                **self.loss_options,
            }
            criterion = create_loss(self.method_name, **kwargs)
        else:
            head_kwargs = self._offered(*component_parameters("head", masked.head))
            head_kwargs.pop("temperature", None)  # a head's temperature is not the loss's
            if masked.head == "gmm-mask":
                if self.mask_warmup_steps is not None:
                    head_kwargs["warmup_steps"] = self.mask_warmup_steps
                if self.mask_refit_every is not None:
                    head_kwargs["refit_every"] = self.mask_refit_every
            head = create_head(masked.head, **{**head_kwargs, **self.head_options})
            loss_names = list(inspect.signature(MaskedHMLCLoss).parameters)
            kwargs = {**self._offered(loss_names, False), **masked.loss_defaults}
            criterion = MaskedHMLCLoss(head, **{**kwargs, **self.loss_options})
        try:
            forward = inspect.signature(criterion.forward).parameters
        except (TypeError, ValueError):  # no signature: ask for the loss only
            forward = {}  # type: ignore[assignment]
        self._level_kwargs = (
            {"return_level_losses": True} if "return_level_losses" in forward else {}
        )
        self.memory_bank = None
        if self.memory_bank_size:
            if "memory" not in forward:
                raise ValueError(
                    f"loss {self.method_name!r} takes no memory= rows, so it cannot use a "
                    "memory bank; drop --memory-bank."
                )
            self.memory_bank = HierarchicalMemoryBank(
                self.memory_bank_size,
                self.proj_dim if pooled is None else (self.num_levels, self.proj_dim),
                self.num_levels,
                gather_distributed=self.gather_distributed,
            )
        return criterion

    def compute_loss(
        self,
        features: Tensor,
        z0: Tensor | None,
        z1: Tensor | None,
        labels: Tensor,
        keys: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of the two views' projections, and its per-level terms if any.

        ``keys`` are the rows the memory bank enqueues (the momentum encoder's
        projections of view 1); ``None``: ``z1``.
        """
        extra: dict[str, Any] = dict(self._level_kwargs)
        assert z0 is not None and z1 is not None
        if self.memory_bank is not None:
            extra["memory"] = self.memory_bank((z1 if keys is None else keys).detach(), labels)
        return self._split_result(self.criterion(z0, z1, labels, **extra), {})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The base class's checks; a G-HMLC / A-HMLC checkpoint written before the suite
        used the package's chain kept the head at ``mask_head.*``: now the loss's."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if self.method_name in MASKED_METHODS and isinstance(state, dict):
            for key in [k for k in state if k.startswith("mask_head.")]:
                state[f"criterion.{key}"] = state.pop(key)

    @staticmethod
    def _split_result(result: Any, logs: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        # A loss without per-level terms returns only the loss.
        loss, level_losses = result if isinstance(result, tuple) else (result, None)
        if level_losses is not None:
            for level, value in enumerate(level_losses):
                logs[f"loss_level{level}"] = value.detach()
        return loss, logs


BASELINES: dict[str, type[HierarchicalMethod]] = {"ce": CrossEntropy, "simclr": SimCLR}
# The registry lists names sorted; the paper's methods come in this order first.
BUILTIN_ORDER = ("supcon", "hmc", "hce", "hmce", "g-hmlc", "a-hmlc")


def method_names() -> list[str]:
    """Every method of the suite: the baselines, then every registered loss.

    The one table of methods: the CLI choices, ``--methods all``, ``throughput.py``
    and the docs derive from it. Read at call time, so that a loss registered later
    (``register_loss``, or an installed plugin) is a method too.

    Examples:
        >>> method_names()[:8]
        ['ce', 'simclr', 'supcon', 'hmc', 'hce', 'hmce', 'g-hmlc', 'a-hmlc']
    """
    losses = list_components()["losses"]
    ordered = [name for name in BUILTIN_ORDER if name in losses]
    ordered += [*LEVEL_POOL_METHODS]
    ordered += [name for name in losses if name not in BUILTIN_ORDER]
    return [*BASELINES, *ordered]


def create_method(method: str, **kwargs: Any) -> HierarchicalMethod:
    """The LightningModule of ``method`` (a baseline or a registered loss).

    Examples:
        >>> model = create_method("hmce", num_classes_per_level=[2, 4])
        >>> model.method_name, type(model.criterion).__name__
        ('hmce', 'HMLCLoss')
    """
    # Checkpoints of before the backbone placement's removal record the kept placement.
    if kwargs.pop("mask_placement", "projection") != "projection":
        raise ValueError("mask_placement='backbone' was removed; only the projections are masked.")
    if method in BASELINES:
        for key in ("loss_options", "head_options", "memory_bank_size"):
            if kwargs.pop(key, None):
                raise ValueError(f"method {method!r} builds no registered loss: drop {key}.")
        if kwargs.pop("momentum_encoder", None) is not None:
            raise ValueError(
                f"method {method!r} has no memory bank to fill: drop momentum_encoder."
            )
        return BASELINES[method](**kwargs)
    if method not in method_names():
        raise ValueError(f"Unknown method {method!r}; choose from {method_names()}.")
    return LabelPathMethod(method, **kwargs)


def default_mask_schedule(total_steps: int) -> tuple[int, int]:
    """G-HMLC's ``(warmup_steps, refit_every)`` for a run of ``total_steps`` steps.

    The GMM head's defaults (100, 100) suit long runs; short runs fit after a fifth of
    training and refit ten times, so that the masks matter in a quick benchmark too.

    Examples:
        >>> default_mask_schedule(50), default_mask_schedule(100_000)
        ((10, 5), (100, 100))
    """
    warmup = min(100, max(1, total_steps // 5))
    refit = min(100, max(1, math.ceil(total_steps / 10)))
    return warmup, refit
