"""Weights for timm backbones from local files only: checkpoints and timm's caches."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import get_pretrained_cfg, load_state_dict
from torch import Tensor, nn

__all__ = ["find_cached_weights", "load_checkpoint"]


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Loads a local checkpoint into ``model`` in place, without its classifier keys.

    Read by timm's ``load_state_dict`` (``weights_only=True``, or safetensors). Missing
    and unexpected keys give a warning; differing shapes, or no key in common, raise.

    Examples:
        >>> import tempfile, pathlib, torch
        >>> from lightly_hmlc.models import create_backbone
        >>> model, _ = create_backbone("resnet_tiny_cifar")
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "weights.pth"
        >>> torch.save({"state_dict": model.state_dict()}, path)
        >>> load_checkpoint(create_backbone("resnet_tiny_cifar")[0], path)
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: '{path}'.")
    state_dict = _read_state_dict(path)
    classifiers = _classifier_names(model)
    state_dict = {
        k: v for k, v in state_dict.items() if not any(k.startswith(c + ".") for c in classifiers)
    }
    target = model.state_dict()
    matched = [k for k in state_dict if k in target]
    if not matched:
        raise ValueError(
            f"No key of checkpoint '{path}' matches {type(model).__name__}: checkpoint keys "
            f"start with {_preview(list(state_dict))}, model keys with {_preview(list(target))}. "
            "Was it saved from the same architecture?"
        )
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
        for k in matched
        if state_dict[k].shape != target[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"Checkpoint '{path}' does not fit the model ({len(mismatched)} shape mismatches: "
            f"{_preview(mismatched)}). Create the model with the checkpoint's in_chans and "
            "img_size, or adapt the checkpoint."
        )
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        warnings.warn(
            f"Loaded {len(matched)} tensors from '{path}'; {len(result.missing_keys)} model keys "
            f"are missing from it and keep their random initialisation "
            f"{_preview(result.missing_keys)}, {len(result.unexpected_keys)} checkpoint keys are "
            f"unused {_preview(result.unexpected_keys)}.",
            stacklevel=2,
        )


def find_cached_weights(name: str, cache_dir: str | os.PathLike[str] | None) -> str:
    """The path of timm's pretrained weights for ``name`` in the local HF or hub cache."""
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as err:
        arch = name.split(".", 1)[0]
        raise ValueError(f"{err} Available tags: {timm.list_pretrained(arch + '.*')}.") from err
    how_to = (
        "lightly_hmlc never downloads weights at run time. On a machine with internet, save "
        f"them with `torch.save(timm.create_model('{name}', pretrained=True).state_dict(), "
        f"'weights.pth')`, copy the file here and pass pretrained='/path/to/weights.pth' "
        "(or copy the filled Hugging Face cache, ~/.cache/huggingface, here)."
    )
    if cfg is None or not cfg.has_weights:
        raise ValueError(
            f"timm has no pretrained weights for '{name}'. Use pretrained=False, or pass a local "
            "checkpoint as pretrained='/path/to/weights.pth'."
        )

    looked: list[str] = []
    if cfg.hf_hub_id:
        found = _find_in_hf_cache(cfg.hf_hub_id, cfg.hf_hub_filename, cache_dir, looked)
        if found is not None:
            return found
    url = cfg.url[0] if isinstance(cfg.url, tuple) else cfg.url
    if url:
        filename = os.path.basename(urlparse(url).path)
        directory = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
        candidate = directory / filename
        looked.append(str(candidate))
        if candidate.is_file():
            return str(candidate)
    if cfg.file and Path(cfg.file).is_file():
        return str(cfg.file)
    raise FileNotFoundError(
        f"Pretrained weights for '{name}' are not in the local cache (looked for: "
        f"{', '.join(looked) or 'nothing to look for'}). {how_to}"
    )


def _find_in_hf_cache(
    hub_id: str, filename: str | None, cache_dir: str | os.PathLike[str] | None, looked: list[str]
) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id, _, revision = hub_id.partition("@")
    filename = filename or "pytorch_model.bin"
    names = [filename]
    # timm prefers a safetensors file next to a pickled one.
    if filename.endswith("pytorch_model.bin"):
        names.insert(0, filename[: -len("pytorch_model.bin")] + "model.safetensors")
    for candidate in names:
        looked.append(f"hf://{repo_id}/{candidate}")
        found = try_to_load_from_cache(
            repo_id,
            candidate,
            cache_dir=Path(cache_dir) if cache_dir else None,
            revision=revision or None,
        )
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    not_a_state_dict = ValueError(
        f"Checkpoint '{path}' is not a state dict (a mapping from names to tensors), nor a "
        "dict holding one under 'state_dict' or 'model'."
    )
    try:
        state_dict = load_state_dict(str(path), use_ema=False, weights_only=True)
    except AttributeError as err:  # timm calls .items() on what the file holds
        raise not_a_state_dict from err
    except Exception as err:  # torch.load and safetensors raise many types on a bad file
        raise ValueError(
            f"Could not read checkpoint '{path}' with timm's load_state_dict "
            f"(torch.load(weights_only=True) or safetensors): {err}. Save the plain state "
            "dict, torch.save(model.state_dict(), path), and try again."
        ) from err
    if not state_dict or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state_dict.items()
    ):
        raise not_a_state_dict
    return state_dict


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if classifier is None:
        return ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _preview(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"
