"""The class methods that build a :class:`~lightly_hmlc.hierarchy.LabelHierarchy` from the
file formats and the built-in taxonomies (a base class, so ``tree.py`` holds the tree).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from lightly_hmlc.hierarchy import formats
from lightly_hmlc.hierarchy.builtin import BUILTIN

_H = TypeVar("_H", bound="HierarchyConstructors")


class HierarchyConstructors:
    """Builders, file readers and writers, and built-in taxonomies of a label tree."""

    _parent: dict[str, str | None]

    def __init__(self, parents: Mapping[str, str | None]) -> None:
        raise NotImplementedError  # pragma: no cover - LabelHierarchy defines it

    @classmethod
    def from_edges(cls: type[_H], edges: Iterable[tuple[str, str]]) -> _H:
        """From ``(parent, child)`` pairs."""
        return cls(formats.parents_from_edges(edges))

    @classmethod
    def from_edge_list_file(cls: type[_H], path: str | os.PathLike[str]) -> _H:
        """From a text file of ``parent child`` lines (:func:`~.formats.read_edge_list`)."""
        return cls(formats.read_edge_list(path))

    @classmethod
    def from_nested(cls: type[_H], tree: Mapping[str, Any] | Sequence[Any]) -> _H:
        """From a nested dict: a value is a dict or list of children, or ``None`` for a leaf."""
        return cls(formats.parents_from_nested(tree))

    @classmethod
    def from_label_paths(cls: type[_H], paths: Iterable[Sequence[str]]) -> _H:
        """From label paths of names, coarse to fine."""
        return cls(formats.parents_from_label_paths(paths))

    @classmethod
    def from_json(cls: type[_H], text_or_path: str | os.PathLike[str]) -> _H:
        """From the JSON of :meth:`to_json` or a nested dict in JSON, as text or a file path."""
        return cls(formats.read_json(text_or_path))

    @classmethod
    def load(cls: type[_H], path: str | os.PathLike[str]) -> _H:
        """From a file: ``.json`` as JSON, anything else as an edge list."""
        return cls(formats.load_parents(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: the format tag and the child -> parent mapping."""
        return formats.to_dict(self._parent)

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Serialises losslessly to JSON; writes it to ``path`` when given."""
        return formats.to_json(self._parent, path)

    @classmethod
    def builtin(cls: type[_H], name: str) -> _H:
        """A built-in taxonomy of :mod:`~lightly_hmlc.hierarchy.builtin` by name."""
        if name not in BUILTIN:
            raise ValueError(
                f"No built-in hierarchy {name!r}{_suggest(name)}; "
                f"choose one of {sorted(BUILTIN)} or load a file with LabelHierarchy.load."
            )
        return cls.from_nested(BUILTIN[name])

    @classmethod
    def cifar100(cls: type[_H]) -> _H:
        """CIFAR-100's 20 official superclasses; ids equal the files' ``coarse_labels`` and
        ``fine_labels``.
        """
        return cls.builtin("cifar100")

    @classmethod
    def cifar10(cls: type[_H]) -> _H:
        """CIFAR-10 as ``vehicle`` (airplane, automobile, ship, truck) and ``animal``; fine ids
        equal CIFAR-10's label ids.
        """
        return cls.builtin("cifar10")

    @classmethod
    def mnist(cls: type[_H]) -> _H:
        """MNIST digits by stroke shape: ``loop``, ``straight`` and ``curve``."""
        return cls.builtin("mnist")

    @classmethod
    def shapes(cls: type[_H]) -> _H:
        """The family / fill / size tree of :class:`~lightly_hmlc.data.ShapesDataset`."""
        return cls.builtin("shapes")

    @classmethod
    def modelnet40(cls: type[_H]) -> _H:
        """Our 6 groups of the 40 ModelNet40 categories (``MODELNET40_GROUPS``)."""
        return cls.builtin("modelnet40")


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(BUILTIN), n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
