"""Registry of losses and mask heads by name, with third-party plugins.

``create_loss("hmce", temperature=0.1)`` and ``create_head("gmm-mask", ...)`` build the
components of the ``_builtin(...)`` table at the end of this module, imported on first
use, and those added by ``register_loss`` / ``register_head`` or by installed packages
through the entry-point groups ``lightly_hmlc.losses`` and ``lightly_hmlc.heads``::

    [project.entry-points."lightly_hmlc.losses"]
    my-loss = "my_package.losses:MyLoss"

Components registered in code shadow entry points of the same name, with a warning.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "UnknownComponentError",
    "component_parameters",
    "create_head",
    "create_loss",
    "list_components",
    "register_head",
    "register_loss",
]

LOSS_ENTRY_POINT_GROUP = "lightly_hmlc.losses"
HEAD_ENTRY_POINT_GROUP = "lightly_hmlc.heads"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")

F = TypeVar("F", bound=Callable[..., Any])


class UnknownComponentError(KeyError, ValueError):
    """Raised for a name that is not registered; a ``KeyError`` and a ``ValueError``."""

    def __str__(self) -> str:
        # KeyError would show the repr.
        return str(self.args[0]) if self.args else ""


@dataclass
class _Entry:
    target: Callable[..., Any] | str
    defaults: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    entry_point: metadata.EntryPoint | None = None


class _Registry:
    def __init__(self, kind: str, plural: str, group: str) -> None:
        self.kind = kind
        self.plural = plural
        self.group = group
        self._entries: dict[str, _Entry] = {}
        self._discovered = False

    def register(
        self,
        name: str,
        target: Callable[..., Any] | str,
        *,
        defaults: Mapping[str, Any] | None,
        overwrite: bool,
        origin: str,
    ) -> None:
        _check_name(name, self.kind)
        if isinstance(target, str):
            _split_import_string(target)
        elif not callable(target):
            raise TypeError(
                f"The factory of {self.kind} '{name}' must be callable or a 'module:attr' "
                f"string, got {type(target).__name__}."
            )
        current = self._entries.get(name)
        if current is not None and current.entry_point is None and not overwrite:
            raise ValueError(
                f"{self.kind.capitalize()} '{name}' is already registered ({current.origin}). "
                "Pick another name, or pass overwrite=True to replace it."
            )
        if current is not None and current.entry_point is not None:
            warnings.warn(
                f"{self.kind.capitalize()} '{name}' registered in code shadows the entry point "
                f"{_describe(current.entry_point)}.",
                stacklevel=4,
            )
        self._entries[name] = _Entry(target, dict(defaults or {}), origin)

    def create(self, name: str, kwargs: dict[str, Any]) -> nn.Module:
        entry = self._lookup(name)
        factory = self._resolve(name, entry)
        arguments = {**entry.defaults, **kwargs}
        signature = _signature(factory)
        if signature is not None:
            try:
                signature.bind(**arguments)
            except TypeError as error:
                raise TypeError(
                    f"create_{self.kind}('{name}') cannot build {getattr(factory, '__name__', factory)}: "
                    f"{error}. Its arguments are {signature}; pass the required ones as keywords."
                ) from error
        component = factory(**arguments)
        if not isinstance(component, nn.Module):
            raise TypeError(
                f"The factory of {self.kind} '{name}' ({entry.origin}) returned "
                f"{type(component).__name__}, expected an nn.Module."
            )
        return component

    def parameters(self, name: str) -> tuple[list[str], bool]:
        signature = _signature(self._resolve(name, self._lookup(name)))
        if signature is None:
            return [], True
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        named = [p.name for p in signature.parameters.values() if p.kind in kinds]
        variadic = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
        )
        return named, variadic

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        seen: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=self.group):
            where = _describe(ep)
            if not _NAME.fullmatch(ep.name):
                warnings.warn(
                    f"Ignoring entry point {where}: '{ep.name}' is not a valid {self.kind} name "
                    "(letters, digits, '-', '_', '.').",
                    stacklevel=4,
                )
                continue
            if ep.name in seen:
                if seen[ep.name].value != ep.value:
                    warnings.warn(
                        f"Two entry points name {self.kind} '{ep.name}': keeping "
                        f"{_describe(seen[ep.name])}, ignoring {where}.",
                        stacklevel=4,
                    )
                continue
            seen[ep.name] = ep
            current = self._entries.get(ep.name)
            if current is not None:
                warnings.warn(
                    f"Ignoring entry point {where}: {self.kind} '{ep.name}' is already "
                    f"registered ({current.origin}).",
                    stacklevel=4,
                )
                continue
            self._entries[ep.name] = _Entry(ep.value, origin=f"entry point {where}", entry_point=ep)

    def reset_discovery(self) -> None:
        self._entries = {k: v for k, v in self._entries.items() if v.entry_point is None}
        self._discovered = False

    def _lookup(self, name: str) -> _Entry:
        self.discover()
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownComponentError(
            f"Unknown {self.kind} '{name}'.{hint} Known {self.plural}: {', '.join(known)}. "
            f"Register one with register_{self.kind}(), or install a package providing the "
            f"'{self.group}' entry point."
        )

    def _resolve(self, name: str, entry: _Entry) -> Callable[..., Any]:
        if not isinstance(entry.target, str):
            return entry.target
        try:
            if entry.entry_point is not None:
                factory = entry.entry_point.load()
            else:
                factory = _import_string(entry.target)
        except Exception as err:
            raise ImportError(
                f"Could not load {self.kind} '{name}' from {entry.origin}: "
                f"{type(err).__name__}: {err}"
            ) from err
        if not callable(factory):
            raise TypeError(
                f"{self.kind.capitalize()} '{name}' ({entry.origin}) is not callable: "
                f"{type(factory).__name__}."
            )
        # Import once; later creations reuse the loaded factory.
        entry.target = factory
        return factory


_LOSSES = _Registry("loss", "losses", LOSS_ENTRY_POINT_GROUP)
_HEADS = _Registry("head", "heads", HEAD_ENTRY_POINT_GROUP)


def register_loss(
    name: str,
    factory: F | str | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Any:
    """Registers a loss under ``name``, as a decorator or with ``factory``.

    ``factory`` is a callable returning an ``nn.Module`` or an import string
    ``"module:attr"``; ``defaults`` are keyword arguments it gets unless overridden. A name
    already registered raises a ValueError unless ``overwrite``.

    Examples:
        >>> from torch import nn
        >>> @register_loss("doc-l1")
        ... class DocL1(nn.L1Loss):
        ...     pass
        >>> create_loss("doc-l1", reduction="sum").reduction
        'sum'
        >>> _ = _LOSSES._entries.pop("doc-l1")  # keep the registry clean
    """
    return _register(_LOSSES, name, factory, defaults, overwrite)


def register_head(
    name: str,
    factory: F | str | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Any:
    """Registers a mask head under ``name``: :func:`register_loss`, for heads."""
    return _register(_HEADS, name, factory, defaults, overwrite)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Creates the loss registered under ``name``; an :class:`UnknownComponentError` lists
    the known names and close matches.
    """
    return _LOSSES.create(name, kwargs)


def create_head(name: str, **kwargs: Any) -> nn.Module:
    """Creates the mask head registered under ``name``: :func:`create_loss`, for heads.

    Examples:
        >>> type(create_head("attention-mask", num_levels=2, dim=16)).__name__
        'AttentionMaskHead'
    """
    return _HEADS.create(name, kwargs)


def component_parameters(kind: str, name: str) -> tuple[list[str], bool]:
    """``(names, variadic)``: the keyword parameters of a ``kind`` (``"loss"`` or ``"head"``)
    component's factory and whether it takes ``**kwargs``, so that a caller passes only
    the standard arguments a component names.
    """
    registries = {"loss": _LOSSES, "head": _HEADS}
    if kind not in registries:
        raise ValueError(f"kind must be 'loss' or 'head', got {kind!r}.")
    return registries[kind].parameters(name)


def list_components() -> dict[str, list[str]]:
    """The sorted names of all losses and heads, entry points included.

    Examples:
        >>> "hmce" in list_components()["losses"]
        True
    """
    return {"losses": _LOSSES.names(), "heads": _HEADS.names()}


def _reset_discovery() -> None:
    """Forgets discovered entry points, so the next lookup scans them again."""
    _LOSSES.reset_discovery()
    _HEADS.reset_discovery()


def _register(
    registry: _Registry,
    name: str,
    factory: F | str | None,
    defaults: Mapping[str, Any] | None,
    overwrite: bool,
) -> Any:
    if not isinstance(name, str):
        raise TypeError(
            f"register_{registry.kind} takes the component name first: use "
            f"@register_{registry.kind}('name') or register_{registry.kind}('name', factory)."
        )
    origin = "registered in code"
    if factory is not None:
        registry.register(name, factory, defaults=defaults, overwrite=overwrite, origin=origin)
        return factory

    def decorator(obj: F) -> F:
        module = getattr(obj, "__module__", "?")
        where = f"{origin}: {module}.{getattr(obj, '__qualname__', repr(obj))}"
        registry.register(name, obj, defaults=defaults, overwrite=overwrite, origin=where)
        return obj

    return decorator


def _check_name(name: str, kind: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"Invalid {kind} name {name!r}: use letters, digits, '-', '_' and '.', starting "
            "with a letter or digit."
        )


def _split_import_string(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"Import string {target!r} must have the form 'package.module:attr'.")
    return module, attr


def _import_string(target: str) -> Any:
    module_name, attr = _split_import_string(target)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _describe(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    source = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
    return f"'{ep.name} = {ep.value}' (group '{ep.group}', distribution {source})"


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature
        return None


def _builtin(registry: _Registry, name: str, target: str, **defaults: Any) -> None:
    registry.register(
        name, target, defaults=defaults, overwrite=False, origin=f"built-in: {target}"
    )


# The built-in components: the one table of them (the suite's methods derive from it).
_LOSS = "lightly_hmlc.loss."
_HEAD = "lightly_hmlc.models.modules."
_builtin(_LOSSES, "supcon", _LOSS + "supcon:SupConLoss")
for _loss_type in ("hmc", "hce", "hmce"):
    _builtin(_LOSSES, _loss_type, _LOSS + "hmlc:HMLCLoss", loss_type=_loss_type)
_builtin(_LOSSES, "g-hmlc", _LOSS + "masked:GHMLCLoss")
_builtin(_LOSSES, "a-hmlc", _LOSS + "masked:AHMLCLoss")
_builtin(_LOSSES, "masked-hmlc", _LOSS + "masked:RegisteredHeadHMLCLoss")
_builtin(_HEADS, "gmm-mask", _HEAD + "gmm_mask_head:GMMFeatureMaskHead")
_builtin(_HEADS, "attention-mask", _HEAD + "attention_mask_head:AttentionMaskHead")
_builtin(_HEADS, "block-mask", _HEAD + "block_mask_head:BlockMaskHead")
