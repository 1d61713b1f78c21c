"""timm backbones for hierarchical contrastive learning.

``create_backbone`` is a thin factory over ``timm.create_model`` that returns a
model producing pooled features ``[B, F]`` together with ``F``. Any timm name
works (ResNet, ConvNeXt, ViT, ...).

Importing this module also registers CIFAR-stem ResNets with timm, so that
``timm.create_model("resnet18_cifar")`` works afterwards. They replace the
ImageNet stem (7x7 stride-2 convolution and max-pool) by a single 3x3 stride-1
convolution, as is usual for 32x32 inputs (He et al., CVPR 2016, Sec. 4.2), so a
32x32 image keeps a 4x4 final feature map instead of 1x1:

==================== ======================== ======== =================
name                 blocks, channels         F        use
==================== ======================== ======== =================
``resnet18_cifar``   basic 2-2-2-2, 64..512   512      CIFAR benchmarks
``resnet34_cifar``   basic 3-4-6-3, 64..512   512
``resnet50_cifar``   bottleneck 3-4-6-3       2048
``resnet_tiny_cifar`` basic 1-1-1-1, 8..64    64       tests, CPU runs
==================== ======================== ======== =================

They are timm ``ResNet`` instances, so ``num_classes=0``, ``head_hidden_size``,
``forward_features`` and ``features_only=True`` keep timm's contract. No
pretrained weights exist for them.

Pretrained weights are never downloaded here: ``pretrained=True`` only uses
weights already in the local Hugging Face or torch hub cache, and fails at once
otherwise; ``pretrained="/path/to/weights.pth"`` loads a local checkpoint.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import timm
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
)
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from lightly_hmlc.models._weights import find_cached_weights, load_checkpoint

__all__ = ["CifarResNet", "create_backbone", "feature_dim", "load_checkpoint"]

# Model-name prefixes that timm resolves outside its registry.
_LOCAL_DIR_PREFIX = "local-dir:"
_HUB_PREFIXES = ("hf-hub:", "hf_hub:")

_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def create_backbone(
    name: str,
    *,
    pretrained: bool | str | os.PathLike[str] = False,
    in_chans: int = 3,
    img_size: int | None = None,
    **timm_kwargs: Any,
) -> tuple[nn.Module, int]:
    """Creates a timm model without classifier and returns it with its feature width.

    Args:
        name: Any ``timm.create_model`` name, with or without a pretrained tag
            (``"resnet18"``, ``"resnet18.tv_in1k"``, ``"convnext_atto"``,
            ``"vit_tiny_patch16_224"``), one of the CIFAR-stem models of this module
            (``"resnet18_cifar"``), or ``"local-dir:/path/to/model_folder"``.
        pretrained: ``False`` for random initialisation. A path to a local
            checkpoint (``.pth``, ``.pt``, ``.bin`` or ``.safetensors``; a state dict,
            or a dict holding it under ``"state_dict"`` or ``"model"``) loads it,
            dropping the classifier keys. ``True`` loads timm's pretrained weights
            only if they are already in the local cache; it never downloads.
        in_chans: Number of input channels.
        img_size: Input size, for models with a fixed input size such as ViT
            (``img_size=32`` for a ViT on 32x32 images). Leave ``None`` for
            convolutional networks.
        **timm_kwargs: Passed on to ``timm.create_model`` (``drop_path_rate``,
            ``global_pool``, ``cache_dir``, ...).

    Returns:
        ``(model, num_features)``: ``model(x)`` maps ``[B, in_chans, H, W]`` to
        pooled features ``[B, num_features]``.

    Raises:
        ValueError: For an unknown model name (close matches are suggested), a
            model without pretrained weights, or a checkpoint that does not fit.
        FileNotFoundError: If a checkpoint path does not exist, or if
            ``pretrained=True`` and the weights are not in the local cache.

    Examples:
        >>> import torch
        >>> model, dim = create_backbone("resnet_tiny_cifar")
        >>> dim
        64
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 64])
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty timm model name, got {name!r}.")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}.")
    if img_size is not None and img_size < 1:
        raise ValueError(f"img_size must be a positive int or None, got {img_size}.")
    if "num_classes" in timm_kwargs:
        raise ValueError(
            "create_backbone always builds the model without classifier (num_classes=0); "
            "use timm.create_model directly for a classifier."
        )
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise TypeError(
            f"pretrained must be a bool or a path to a checkpoint, got {type(pretrained).__name__}."
        )
    _check_name(name)

    kwargs: dict[str, Any] = dict(num_classes=0, in_chans=in_chans, **timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size

    if pretrained is True and not name.startswith(_LOCAL_DIR_PREFIX):
        weights = find_cached_weights(name, cache_dir=timm_kwargs.get("cache_dir"))
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, file=weights)
        model = _create(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    else:
        model = _create(name, pretrained=pretrained is True, **kwargs)
        if isinstance(pretrained, (str, os.PathLike)):
            load_checkpoint(model, pretrained)
    return model, feature_dim(model)


def feature_dim(model: nn.Module) -> int:
    """Returns the width of the pooled features of a timm model without classifier.

    Reads timm's ``head_hidden_size`` and falls back to ``num_features``.

    Examples:
        >>> model, _ = create_backbone("resnet_tiny_cifar")
        >>> feature_dim(model)
        64
    """
    for attr in ("head_hidden_size", "num_features"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(
        f"{type(model).__name__} has neither head_hidden_size nor num_features; "
        "pass a timm model or give the feature width explicitly."
    )


class CifarResNet(ResNet):
    """timm ``ResNet`` with a CIFAR stem: one 3x3 stride-1 convolution and no max-pool.

    Takes the arguments of ``timm.models.resnet.ResNet``. The stem width equals
    the width of the first stage, ``channels[0]`` (64 for ResNet-18/34/50).
    ``feature_info`` reductions are 1, 1, 2, 4, 8 (stem, stage 1 to 4).

    Examples:
        >>> import timm, torch
        >>> model = timm.create_model("resnet18_cifar", num_classes=0)
        >>> model.forward_features(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 512, 4, 4])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        channels = kwargs.get("channels", (64, 128, 256, 512))
        # A "deep" stem of width w yields 2w stem channels; pick w so the stem
        # matches stage 1, then swap the three stride-2 convs for one stride-1 conv.
        kwargs.update(stem_type="deep", stem_width=max(1, channels[0] // 2))
        super().__init__(*args, **kwargs)
        bn1: Any = self.bn1
        stem = nn.Conv2d(
            self.in_chans,
            int(bn1.num_features),
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            device=bn1.weight.device,
            dtype=bn1.weight.dtype,
        )
        nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
        # timm types conv1 and maxpool after its deep-stem branch.
        self.conv1 = stem  # type: ignore[assignment]
        self.maxpool = nn.Identity()  # type: ignore[assignment]
        # The stem no longer halves, and the max-pool no longer halves again.
        infos: list[dict[str, Any]] = self.feature_info
        infos[0]["reduction"] = 1
        for info in infos[1:]:
            info["reduction"] = max(1, int(info["reduction"]) // 4)


def _cifar_cfg() -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (4, 4),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": _CIFAR10_MEAN,
        "std": _CIFAR10_STD,
        "first_conv": "conv1",
        "classifier": "fc",
    }


# timm's register_model reads pretrained cfgs from this module-level name.
default_cfgs = generate_default_cfgs(
    {
        "resnet18_cifar": _cifar_cfg(),
        "resnet34_cifar": _cifar_cfg(),
        "resnet50_cifar": _cifar_cfg(),
        "resnet_tiny_cifar": _cifar_cfg(),
    }
)


def _create_cifar_resnet(variant: str, pretrained: bool, **kwargs: Any) -> ResNet:
    model: ResNet = build_model_with_cfg(CifarResNet, variant, pretrained, **kwargs)
    return model


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 with a CIFAR stem (3x3 stride-1 conv, no max-pool), 512 features."""
    args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_cifar_resnet("resnet18_cifar", pretrained, **dict(args, **kwargs))


@register_model
def resnet34_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 with a CIFAR stem (3x3 stride-1 conv, no max-pool), 512 features."""
    args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_cifar_resnet("resnet34_cifar", pretrained, **dict(args, **kwargs))


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 with a CIFAR stem (3x3 stride-1 conv, no max-pool), 2048 features."""
    args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_cifar_resnet("resnet50_cifar", pretrained, **dict(args, **kwargs))


@register_model
def resnet_tiny_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Tiny 4-stage ResNet with a CIFAR stem (one basic block per stage, 8 to 64 channels).

    About 77k parameters and 64 features: for tests and CPU benchmarks.
    """
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))
    return _create_cifar_resnet("resnet_tiny_cifar", pretrained, **dict(args, **kwargs))


def _check_name(name: str) -> None:
    if name.startswith(_HUB_PREFIXES):
        raise ValueError(
            f"'{name}' would be fetched from the Hugging Face Hub, which lightly_hmlc never does "
            "at run time. Download the model folder on a machine with internet and use "
            "'local-dir:/path/to/folder', or create the architecture by its timm name and pass "
            "pretrained='/path/to/weights.pth'."
        )
    if name.startswith(_LOCAL_DIR_PREFIX) or timm.is_model(name):
        return
    arch = name.split(".", 1)[0]
    matches = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean one of {matches}?" if matches else ""
    raise ValueError(
        f"Unknown backbone '{name}'.{hint} Any name of timm.list_models() works, and "
        "'resnet18_cifar', 'resnet34_cifar', 'resnet50_cifar', 'resnet_tiny_cifar' for 32x32 "
        "images."
    )


def _create(name: str, **kwargs: Any) -> nn.Module:
    try:
        model: nn.Module = timm.create_model(name, **kwargs)
    except TypeError as err:
        if "img_size" in kwargs and "img_size" in str(err):
            raise ValueError(
                f"'{name}' takes no img_size; only models with a fixed input size (such as ViT) "
                "do. Leave img_size=None for convolutional networks."
            ) from err
        raise
    except RuntimeError as err:
        if "Invalid pretrained tag" in str(err):
            arch = name.split(".", 1)[0]
            raise ValueError(f"{err} Available tags: {timm.list_pretrained(arch + '.*')}.") from err
        raise
    return model
