"""The class methods that build a :class:`~lightly_hmlc.hierarchy.LabelHierarchy`.

They bridge the tree to its file formats (:mod:`lightly_hmlc.hierarchy.formats`) and to
the built-in taxonomies (:mod:`lightly_hmlc.hierarchy.builtin`). They live in a base
class of their own so that ``tree.py`` holds only the tree and its queries; every method
is used as ``LabelHierarchy.from_edges(...)``, ``LabelHierarchy.cifar100()`` and so on.
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

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_edges(cls: type[_H], edges: Iterable[tuple[str, str]]) -> _H:
        """Builds a hierarchy from ``(parent, child)`` pairs.

        Raises:
            ValueError: If a child has two different parents.

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> LabelHierarchy.from_edges([("animal", "cat"), ("animal", "dog")]).leaves
            ['cat', 'dog']
        """
        return cls(formats.parents_from_edges(edges))

    @classmethod
    def from_edge_list_file(cls: type[_H], path: str | os.PathLike[str]) -> _H:
        """Reads an edge-list text file: one ``parent child`` pair per line.

        ``#`` starts a comment to the end of the line and names are separated by
        whitespace, so names cannot contain ``#`` or spaces: use JSON
        (:meth:`from_json`) for those. A single name on a line declares a top-level
        class. The file is read as UTF-8 and a byte-order mark is dropped. The full
        rules: :func:`lightly_hmlc.hierarchy.formats.read_edge_list`.

        Raises:
            ValueError: If a line has more than two names, a class has two parents, or
                the file is not UTF-8 text (the message names the file).

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> import tempfile, pathlib
            >>> f = pathlib.Path(tempfile.mkdtemp()) / "tree.txt"
            >>> _ = f.write_text("# parent child\\nanimal cat\\nanimal dog\\n")
            >>> LabelHierarchy.from_edge_list_file(f).level_names(1)
            ['cat', 'dog']
        """
        return cls(formats.read_edge_list(path))

    @classmethod
    def from_nested(cls: type[_H], tree: Mapping[str, Any] | Sequence[Any]) -> _H:
        """Builds a hierarchy from a nested dict.

        A value is a dict of children, a list of children (names or dicts), or
        ``None`` / ``{}`` / ``[]`` for a leaf.

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> h = LabelHierarchy.from_nested({"animal": ["cat", "dog"], "vehicle": {"car": None}})
            >>> h.label_paths(["car"]).tolist()
            [[1, 0]]
        """
        return cls(formats.parents_from_nested(tree))

    @classmethod
    def from_label_paths(cls: type[_H], paths: Iterable[Sequence[str]]) -> _H:
        """Builds a hierarchy from label paths of names, coarse to fine.

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> h = LabelHierarchy.from_label_paths([["animal", "cat"], ["vehicle", "car"]])
            >>> h.parent("cat")
            'animal'
        """
        return cls(formats.parents_from_label_paths(paths))

    @classmethod
    def from_json(cls: type[_H], text_or_path: str | os.PathLike[str]) -> _H:
        """Reads the JSON written by :meth:`to_json`, or a plain nested dict in JSON.

        Accepts a JSON string or a path to a ``.json`` file (read as UTF-8, a byte-order
        mark dropped). JSON is the format for class names with spaces or ``#``.

        Raises:
            ValueError: If the text is not valid JSON, an object has the same key twice
                (``json`` alone would keep the last one and drop a subtree), or the file
                is not UTF-8 text.

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> LabelHierarchy.from_json('{"sea mammal": ["sea lion", "whale"]}').leaves
            ['sea lion', 'whale']
        """
        return cls(formats.read_json(text_or_path))

    @classmethod
    def load(cls: type[_H], path: str | os.PathLike[str]) -> _H:
        """Reads a hierarchy file: ``.json`` as JSON, anything else as an edge list.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If the file is not UTF-8 or does not parse (names the file).
        """
        return cls(formats.load_parents(path))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: the format tag and the child -> parent mapping."""
        return formats.to_dict(self._parent)

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Serialises losslessly to JSON; writes it to ``path`` when given.

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> h = LabelHierarchy({"cat": "animal"})
            >>> LabelHierarchy.from_json(h.to_json()) == h
            True
        """
        return formats.to_json(self._parent, path)

    # ------------------------------------------------------------------ built-ins
    @classmethod
    def builtin(cls: type[_H], name: str) -> _H:
        """One of the built-in taxonomies of :mod:`lightly_hmlc.hierarchy.builtin` by name.

        Raises:
            ValueError: If ``name`` is not one of them (the message lists them).

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> LabelHierarchy.builtin("shapes").num_classes_per_level
            [3, 6, 12]
        """
        if name not in BUILTIN:
            raise ValueError(
                f"No built-in hierarchy {name!r}{_suggest(name)}; "
                f"choose one of {sorted(BUILTIN)} or load a file with LabelHierarchy.load."
            )
        return cls.from_nested(BUILTIN[name])

    @classmethod
    def cifar100(cls: type[_H]) -> _H:
        """CIFAR-100 with its official 20 superclasses and official class names.

        Fine ids equal the official ``fine_labels`` and coarse ids the official
        ``coarse_labels`` of the dataset files.

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> h = LabelHierarchy.cifar100()
            >>> h.num_classes_per_level
            [20, 100]
            >>> h.id_to_name(0, int(h.label_paths(["whale"])[0, 0]))
            'aquatic_mammals'
        """
        return cls.builtin("cifar100")

    @classmethod
    def cifar10(cls: type[_H]) -> _H:
        """CIFAR-10 grouped into ``vehicle`` (airplane, automobile, ship, truck) and
        ``animal`` (the other six). Fine ids equal CIFAR-10's official label ids.

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> LabelHierarchy.cifar10().label_paths([0, 3]).tolist()
            [[1, 0], [0, 3]]
        """
        return cls.builtin("cifar10")

    @classmethod
    def mnist(cls: type[_H]) -> _H:
        """MNIST digits grouped by stroke shape (our documented choice).

        ``loop``: 0, 6, 8, 9; ``straight``: 1, 4, 7; ``curve``: 2, 3, 5. Digit names
        are ``"0"`` .. ``"9"``, so leaf ids equal the digits.

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> LabelHierarchy.mnist().label_paths([0, 1, 2]).tolist()
            [[1, 0], [2, 1], [0, 2]]
        """
        return cls.builtin("mnist")

    @classmethod
    def shapes(cls: type[_H]) -> _H:
        """The 3 x 2 x 2 family / fill / size tree of :class:`~lightly_hmlc.data.ShapesDataset`.

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> LabelHierarchy.shapes().label_paths(["disc_solid_small"]).tolist()
            [[0, 1, 3]]
        """
        return cls.builtin("shapes")

    @classmethod
    def modelnet40(cls: type[_H]) -> _H:
        """Our 6 groups of the 40 ModelNet40 categories (``MODELNET40_GROUPS``).

        Examples:
            >>> from lightly_hmlc.hierarchy import LabelHierarchy
            >>> LabelHierarchy.modelnet40().num_classes_per_level
            [6, 40]
        """
        return cls.builtin("modelnet40")


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(BUILTIN), n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
