"""timm backbones for hierarchical contrastive learning, and CIFAR-stem ResNets.

Importing this module registers with timm ``resnet18_cifar``, ``resnet34_cifar``,
``resnet50_cifar`` and the 64-feature ``resnet_tiny_cifar`` (tests and CPU runs): timm
ResNets whose stem is one 3x3 stride-1 convolution, as usual for 32x32 inputs (He et
al., CVPR 2016, Sec. 4.2), without pretrained weights.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
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
    """Creates a timm model without classifier; returns it and its feature width.

    ``name`` is any ``timm.create_model`` name, a CIFAR-stem model of this module, or
    ``"local-dir:/path"``. Weights are never downloaded: ``pretrained=True`` uses timm's
    weights only from the local cache, and a path loads a local checkpoint. ``img_size`` is
    for models with a fixed input size, such as ViT.

    Raises:
        ValueError: For an unknown name (close matches are suggested), a model without
            pretrained weights, or a checkpoint that does not fit.
        FileNotFoundError: For a missing checkpoint, or uncached weights with True.

    Examples:
        >>> import torch
        >>> model, dim = create_backbone("resnet_tiny_cifar")
        >>> dim, model(torch.zeros(2, 3, 32, 32)).shape
        (64, torch.Size([2, 64]))
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
    """The pooled feature width of a timm model: ``head_hidden_size``, else ``num_features``."""
    for attr in ("head_hidden_size", "num_features"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(
        f"{type(model).__name__} has neither head_hidden_size nor num_features; "
        "pass a timm model or give the feature width explicitly."
    )


class CifarResNet(ResNet):
    """timm ``ResNet`` with a CIFAR stem: one 3x3 stride-1 convolution, no max-pool.

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
_CIFAR_NAMES = ("resnet18_cifar", "resnet34_cifar", "resnet50_cifar", "resnet_tiny_cifar")
default_cfgs = generate_default_cfgs({name: _cifar_cfg() for name in _CIFAR_NAMES})


def _create_cifar_resnet(variant: str, pretrained: bool, **kwargs: Any) -> ResNet:
    model: ResNet = build_model_with_cfg(CifarResNet, variant, pretrained, **kwargs)
    return model


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 with a CIFAR stem, 512 features."""
    args = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return _create_cifar_resnet("resnet18_cifar", pretrained, **dict(args, **kwargs))


@register_model
def resnet34_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 with a CIFAR stem, 512 features."""
    args = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return _create_cifar_resnet("resnet34_cifar", pretrained, **dict(args, **kwargs))


@register_model
def resnet50_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 with a CIFAR stem, 2048 features."""
    args = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return _create_cifar_resnet("resnet50_cifar", pretrained, **dict(args, **kwargs))


@register_model
def resnet_tiny_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """One basic block per stage, 8 to 64 channels, 64 features (~77k parameters)."""
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
