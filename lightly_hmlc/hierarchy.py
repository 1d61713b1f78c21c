"""Label hierarchies: a rooted tree of named classes and the label paths it induces.

A :class:`LabelHierarchy` turns a fine class (a leaf of the tree) into its *label path*,
the integer row ``[coarse, ..., fine]`` that every loss of this package consumes. Leaves
that sit higher in the tree than the deepest leaf are padded with ``-1`` (unknown level).

The label path ``[B, L]`` is the only contract between datasets and losses: a loss never
sees class names and a dataset never sees a loss.
"""

from __future__ import annotations

import difflib
import json
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, SupportsIndex, cast

import torch
from torch import Tensor

JSON_FORMAT = "lightly_hmlc.hierarchy/v1"

__all__ = ["LabelHierarchy", "JSON_FORMAT"]


class LabelHierarchy:
    """A rooted tree of named classes, coarse to fine.

    Nodes without a parent form level 0 (the coarsest level, below an implicit root).
    A node's level is its depth. Within every level, class ids are assigned in sorted
    name order, which matches ``torchvision.datasets.ImageFolder`` and the official
    CIFAR label ids. Leaves are the fine classes; their ids (``leaf_id``) follow sorted
    leaf names, independently of depth.

    Args:
        parents: Mapping from every class name to its parent's name, or ``None`` for a
            top-level class. A parent that is never a key is added as a top-level class.

    Raises:
        ValueError: If the hierarchy is empty, has a cycle, or a name is not a
            non-empty string. The message names the offending node.

    Examples:
        >>> h = LabelHierarchy({"cat": "animal", "dog": "animal", "car": "vehicle"})
        >>> h.num_levels
        2
        >>> h.level_names(0)
        ['animal', 'vehicle']
        >>> h.label_paths(["dog", "car"]).tolist()
        [[0, 2], [1, 0]]
        >>> h.leaves
        ['car', 'cat', 'dog']
    """

    def __init__(self, parents: Mapping[str, str | None]) -> None:
        full: dict[str, str | None] = {}
        for child, parent in parents.items():
            _check_name(child)
            if parent is not None:
                _check_name(parent)
            full[child] = parent
        for parent in list(full.values()):
            if parent is not None and parent not in full:
                full[parent] = None
        if not full:
            raise ValueError(
                "The hierarchy is empty: give at least one class, e.g. {'cat': 'animal'}."
            )
        self._parent = full
        self._depth = {name: self._compute_depth(name) for name in full}
        children: dict[str, list[str]] = {name: [] for name in full}
        for child, parent in full.items():
            if parent is not None:
                children[parent].append(child)
        self._children = {name: sorted(kids) for name, kids in children.items()}
        num_levels = max(self._depth.values()) + 1
        self._levels: list[list[str]] = [[] for _ in range(num_levels)]
        for name in sorted(full):
            self._levels[self._depth[name]].append(name)
        self._ids = [{name: i for i, name in enumerate(names)} for names in self._levels]
        self._leaves = sorted(name for name, kids in self._children.items() if not kids)
        self._leaf_ids = {name: i for i, name in enumerate(self._leaves)}
        table = torch.full((len(self._leaves), num_levels), -1, dtype=torch.long)
        for i, leaf in enumerate(self._leaves):
            for level, node in enumerate(self.ancestors(leaf, include_self=True)):
                table[i, level] = self._ids[level][node]
        self._leaf_paths = table

    def _compute_depth(self, name: str) -> int:
        seen = [name]
        node = self._parent[name]
        while node is not None:
            if node in seen:
                cycle = " -> ".join([*seen[seen.index(node) :], node])
                raise ValueError(
                    f"The hierarchy has a cycle through {node!r} ({cycle}); every class "
                    "needs a chain of parents that ends at a top-level class."
                )
            seen.append(node)
            node = self._parent[node]
        return len(seen) - 1

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_edges(cls, edges: Iterable[tuple[str, str]]) -> LabelHierarchy:
        """Builds a hierarchy from ``(parent, child)`` pairs.

        Raises:
            ValueError: If a child has two different parents.

        Examples:
            >>> LabelHierarchy.from_edges([("animal", "cat"), ("animal", "dog")]).leaves
            ['cat', 'dog']
        """
        parents: dict[str, str | None] = {}
        for parent, child in edges:
            _check_name(parent)
            _check_name(child)
            if child == parent:
                raise ValueError(f"Class {child!r} is its own parent: remove that edge.")
            known = parents.get(child)
            if known is not None and known != parent:
                raise ValueError(
                    f"Class {child!r} has two parents, {known!r} and {parent!r}: a label "
                    "hierarchy is a tree, so keep one edge and rename the other class."
                )
            parents[child] = parent
            parents.setdefault(parent, None)
        return cls(parents)

    @classmethod
    def from_edge_list_file(cls, path: str | os.PathLike[str]) -> LabelHierarchy:
        """Reads an edge-list text file: one ``parent child`` pair per line.

        The format, exactly:

        - ``#`` starts a comment that runs to the end of the line, wherever it stands, so
          a class name cannot contain ``#``.
        - Names are separated by whitespace (spaces or tabs), so a name cannot contain a
          space. A line with three or more names is an error. For names with spaces or
          ``#`` (e.g. ``"sea lion"``), write a nested JSON dict instead and load it with
          :meth:`from_json` or :meth:`load` (``.json`` suffix).
        - Blank lines are ignored. A line with a single name declares a top-level class.
        - The file is read as UTF-8; a byte-order mark (as Notepad writes) is dropped.

        Raises:
            ValueError: If a line has more than two names, a class has two parents, or
                the file is not UTF-8 text (the message names the file).

        Examples:
            >>> import tempfile, pathlib
            >>> f = pathlib.Path(tempfile.mkdtemp()) / "tree.txt"
            >>> _ = f.write_text("# parent child\\nanimal cat\\nanimal dog\\n")
            >>> LabelHierarchy.from_edge_list_file(f).level_names(1)
            ['cat', 'dog']
        """
        edges: list[tuple[str, str]] = []
        roots: list[str] = []
        text = _read_text(path)
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) == 1:
                roots.append(parts[0])
            elif len(parts) == 2:
                edges.append((parts[0], parts[1]))
            else:
                raise ValueError(
                    f"{path}:{number}: expected 'parent child' (two names without spaces), "
                    f"got {raw.strip()!r}. For class names with spaces, write the hierarchy "
                    "as a nested JSON dict in a .json file instead."
                )
        hierarchy_parents = cls.from_edges(edges)._parent if edges else {}
        parents: dict[str, str | None] = dict(hierarchy_parents)
        for root in roots:
            if parents.get(root) is not None:
                raise ValueError(
                    f"{path}: {root!r} is declared top-level but also has parent "
                    f"{parents[root]!r}; remove one of the two lines."
                )
            parents[root] = None
        return cls(parents)

    @classmethod
    def from_nested(cls, tree: Mapping[str, Any] | Sequence[Any]) -> LabelHierarchy:
        """Builds a hierarchy from a nested dict.

        A value is a dict of children, a list of children (names or dicts), or
        ``None`` / ``{}`` / ``[]`` for a leaf.

        Examples:
            >>> h = LabelHierarchy.from_nested({"animal": ["cat", "dog"], "vehicle": {"car": None}})
            >>> h.label_paths(["car"]).tolist()
            [[1, 0]]
        """
        edges: list[tuple[str, str]] = []
        roots: list[str] = []

        def visit(parent: str | None, node: Any) -> None:
            if node is None:
                return
            if isinstance(node, str):
                items: Iterable[tuple[str, Any]] = [(node, None)]
            elif isinstance(node, Mapping):
                items = node.items()
            elif isinstance(node, list | tuple):
                for item in node:
                    visit(parent, item)
                return
            else:
                raise ValueError(
                    f"Unsupported node {node!r} under {parent!r}: use a dict, a list, a "
                    "class name, or None for a leaf."
                )
            for name, sub in items:
                _check_name(name)
                if parent is None:
                    roots.append(name)
                else:
                    edges.append((parent, name))
                visit(name, sub)

        visit(None, tree)
        parents: dict[str, str | None] = dict(cls.from_edges(edges)._parent) if edges else {}
        for root in roots:
            if parents.get(root) is not None:
                raise ValueError(
                    f"Class {root!r} appears at the top level and under {parents[root]!r}."
                )
            parents[root] = None
        return cls(parents)

    @classmethod
    def from_label_paths(cls, paths: Iterable[Sequence[str]]) -> LabelHierarchy:
        """Builds a hierarchy from label paths of names, coarse to fine.

        Examples:
            >>> h = LabelHierarchy.from_label_paths([["animal", "cat"], ["vehicle", "car"]])
            >>> h.parent("cat")
            'animal'
        """
        edges: list[tuple[str, str]] = []
        roots: list[str] = []
        for path in paths:
            names = [name for name in path if name is not None]
            if not names:
                raise ValueError("A label path is empty: give at least the top-level class.")
            roots.append(names[0])
            edges.extend(zip(names[:-1], names[1:], strict=True))
        parents: dict[str, str | None] = dict(cls.from_edges(edges)._parent) if edges else {}
        for root in roots:
            _check_name(root)
            if parents.get(root) is not None:
                raise ValueError(
                    f"Class {root!r} starts a label path but also has parent {parents[root]!r}."
                )
            parents[root] = None
        return cls(parents)

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> LabelHierarchy:
        """Reads the JSON written by :meth:`to_json`, or a plain nested dict in JSON.

        Accepts a JSON string or a path to a ``.json`` file. Files are read as UTF-8 and
        a byte-order mark is dropped. JSON is the format for class names that contain
        spaces or ``#``.

        Raises:
            ValueError: If the text is not valid JSON, an object has the same key twice
                (Python's ``json`` would silently keep the last one, dropping a subtree),
                or the file is not UTF-8 text.

        Examples:
            >>> LabelHierarchy.from_json('{"sea mammal": ["sea lion", "whale"]}').leaves
            ['sea lion', 'whale']
        """
        source = "JSON text"
        if isinstance(text_or_path, os.PathLike) or not str(text_or_path).lstrip(
            "\ufeff \t\r\n"
        ).startswith(("{", "[")):
            text = _read_text(text_or_path)
            source = str(text_or_path)
        else:
            text = str(text_or_path).removeprefix("\ufeff")
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{source} is not valid JSON: {error.msg} at line {error.lineno}, column "
                f"{error.colno}. Write a nested dict of classes, e.g. "
                '{"animal": ["cat", "dog"]}.'
            ) from error
        if isinstance(data, Mapping) and data.get("format") == JSON_FORMAT:
            parents = data.get("parents")
            if not isinstance(parents, Mapping):
                raise ValueError(f"JSON hierarchy of format {JSON_FORMAT} needs a 'parents' dict.")
            return cls(dict(parents))
        if isinstance(data, Mapping | list):
            return cls.from_nested(data)
        raise ValueError("A JSON hierarchy must be an object (nested dict of classes).")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabelHierarchy:
        """Reads a hierarchy file: ``.json`` as JSON, anything else as an edge list.

        Raises:
            FileNotFoundError: If the file does not exist.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Hierarchy file {str(path)!r} not found. Write one 'parent child' pair per "
                "line (an edge list) or a nested JSON dict, and pass its path."
            )
        if path.suffix.lower() == ".json":
            return cls.from_json(path)
        return cls.from_edge_list_file(path)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: the format tag and the child -> parent mapping."""
        return {
            "format": JSON_FORMAT,
            "parents": {name: self._parent[name] for name in sorted(self._parent)},
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Serialises losslessly to JSON; writes it to ``path`` when given.

        Examples:
            >>> h = LabelHierarchy({"cat": "animal"})
            >>> LabelHierarchy.from_json(h.to_json()) == h
            True
        """
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_nested(self) -> dict[str, Any]:
        """The tree as a nested dict (leaves map to ``None``)."""

        def build(name: str) -> Any:
            kids = self._children[name]
            return {kid: build(kid) for kid in kids} if kids else None

        return {name: build(name) for name in self._levels[0]}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelHierarchy) and self._parent == other._parent

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, v or "") for k, v in self._parent.items())))

    def __repr__(self) -> str:
        sizes = ", ".join(str(len(names)) for names in self._levels)
        return f"LabelHierarchy(num_levels={self.num_levels}, classes_per_level=[{sizes}])"

    # ------------------------------------------------------------------ queries
    @property
    def num_levels(self) -> int:
        """L, the number of levels (the length of every label path)."""
        return len(self._levels)

    @property
    def num_classes_per_level(self) -> list[int]:
        """The number of classes at each level, coarse to fine."""
        return [len(names) for names in self._levels]

    @property
    def leaves(self) -> list[str]:
        """The fine classes (leaves), sorted by name; their index is the leaf id."""
        return list(self._leaves)

    @property
    def classes(self) -> list[str]:
        """Every class name, sorted."""
        return sorted(self._parent)

    @property
    def leaf_paths(self) -> Tensor:
        """``[num_leaves, L]`` label path of every leaf, in leaf-id order."""
        return self._leaf_paths.clone()

    def level_names(self, level: int) -> list[str]:
        """The class names of one level, in id order."""
        self._check_level(level)
        return list(self._levels[level])

    def level_of(self, name: str) -> int:
        """The level (depth) of a class."""
        self._check_known([name])
        return self._depth[name]

    def parent(self, name: str) -> str | None:
        """The parent of a class, ``None`` for a top-level class."""
        self._check_known([name])
        return self._parent[name]

    def children(self, name: str) -> list[str]:
        """The children of a class, sorted."""
        self._check_known([name])
        return list(self._children[name])

    def ancestors(self, name: str, include_self: bool = False) -> list[str]:
        """The chain from the top-level class down to ``name``'s parent (or ``name``)."""
        self._check_known([name])
        chain = [name] if include_self else []
        node = self._parent[name]
        while node is not None:
            chain.append(node)
            node = self._parent[node]
        return chain[::-1]

    def name_to_id(self, name: str) -> tuple[int, int]:
        """``(level, id within level)`` of a class name."""
        self._check_known([name])
        level = self._depth[name]
        return level, self._ids[level][name]

    def id_to_name(self, level: int, class_id: int) -> str:
        """The name of class ``class_id`` at ``level``."""
        self._check_level(level)
        names = self._levels[level]
        if not 0 <= class_id < len(names):
            raise ValueError(
                f"Class id {class_id} is out of range for level {level}, which has "
                f"{len(names)} classes (ids 0..{len(names) - 1})."
            )
        return names[class_id]

    def leaf_id(self, name: str) -> int:
        """The leaf id of a fine class."""
        self._check_known([name])
        if name not in self._leaf_ids:
            raise ValueError(
                f"Class {name!r} is not a leaf (it has children {self._children[name]}); "
                "label paths start from fine classes."
            )
        return self._leaf_ids[name]

    def label_paths(self, fine: Sequence[int | str] | Tensor) -> Tensor:
        """Label paths ``[B, L]`` (coarse to fine, ``-1`` padded) of fine classes.

        Args:
            fine: Leaf ids (ints or an integer tensor) or leaf names.

        Examples:
            >>> h = LabelHierarchy({"cat": "animal", "animal": "thing", "rock": "thing"})
            >>> h.label_paths(["cat", "rock"]).tolist()
            [[0, 0, 0], [0, 1, -1]]
        """
        if not isinstance(fine, Tensor) and hasattr(fine, "__array__"):
            fine = torch.as_tensor(fine)  # numpy arrays of ids
        if isinstance(fine, Tensor):
            if fine.dtype.is_floating_point or fine.dtype == torch.bool:
                raise ValueError(f"Fine labels must be integers, got dtype {fine.dtype}.")
            ids = fine.long().reshape(-1)
        else:
            items = list(fine)
            if all(isinstance(item, str) for item in items):
                self._check_known([str(item) for item in items])
                ids = torch.tensor([self.leaf_id(str(item)) for item in items], dtype=torch.long)
            elif all(isinstance(item, int) or hasattr(item, "__index__") for item in items):
                ids = torch.tensor([operator.index(cast(SupportsIndex, item)) for item in items])
            else:
                raise ValueError("Give fine classes either all as names or all as integer ids.")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self._leaves)):
            bad = ids[(ids < 0) | (ids >= len(self._leaves))].unique().tolist()
            raise ValueError(
                f"Unknown fine class ids {bad[:10]}: this hierarchy has {len(self._leaves)} "
                f"leaves (ids 0..{len(self._leaves) - 1})."
            )
        table = self._leaf_paths.to(ids.device)
        return table[ids]

    def path_table(self, class_names: Sequence[str]) -> Tensor:
        """``[C, L]`` label paths for a dataset's own class list (its order kept).

        Use it to map a dataset's class index to a label path, whatever order the
        dataset uses: ``paths = table[target]``.

        Raises:
            ValueError: Listing dataset classes missing from the hierarchy, and
                classes that are not leaves.

        Examples:
            >>> h = LabelHierarchy({"cat": "animal", "car": "vehicle"})
            >>> h.path_table(["cat", "car"]).tolist()
            [[0, 1], [1, 0]]
        """
        names = list(class_names)
        missing = [name for name in names if name not in self._parent]
        not_leaves = [name for name in names if name in self._parent and self._children[name]]
        if missing or not_leaves:
            parts = []
            if missing:
                parts.append(
                    f"{len(missing)} dataset class(es) not in the hierarchy: {missing[:20]}"
                    + _suggest(missing[0], self._leaves)
                )
            if not_leaves:
                parts.append(f"class(es) that are inner nodes, not leaves: {not_leaves[:20]}")
            unused = sorted(set(self._leaves) - set(names))
            if unused:
                parts.append(f"hierarchy leaves with no dataset class: {unused[:20]}")
            raise ValueError(
                "The hierarchy does not match the dataset's classes: "
                + "; ".join(parts)
                + ". Fix the hierarchy file so that every dataset class is a leaf."
            )
        return self.label_paths(names)

    def lca_height(self, leaf_a: Tensor, leaf_b: Tensor) -> Tensor:
        """Height of the lowest common ancestor of pairs of leaves (elementwise).

        The height counts the levels between the leaves' level paths and their deepest
        shared prefix: 0 for the same class, ``L`` when the classes share nothing
        (their common ancestor is the implicit root).

        Examples:
            >>> h = LabelHierarchy({"cat": "animal", "dog": "animal", "car": "vehicle"})
            >>> ids = torch.tensor([h.leaf_id("cat")] * 3)
            >>> h.lca_height(ids, torch.tensor([h.leaf_id(n) for n in ["cat", "dog", "car"]])).tolist()
            [0, 1, 2]
        """
        paths_a = self.label_paths(leaf_a)
        paths_b = self.label_paths(leaf_b)
        agree = (paths_a == paths_b) & (paths_a >= 0)
        shared = torch.cumprod(agree.long(), dim=1).sum(dim=1)
        same = leaf_a.reshape(-1).to(shared.device) == leaf_b.reshape(-1).to(shared.device)
        height = self.num_levels - shared
        return torch.where(same, torch.zeros_like(height), height)

    # ------------------------------------------------------------------ built-ins
    @classmethod
    def cifar100(cls) -> LabelHierarchy:
        """CIFAR-100 with its official 20 superclasses and official class names.

        Fine ids equal the official ``fine_labels`` and coarse ids the official
        ``coarse_labels`` of the dataset files.

        Examples:
            >>> h = LabelHierarchy.cifar100()
            >>> h.num_classes_per_level
            [20, 100]
            >>> h.id_to_name(0, int(h.label_paths(["whale"])[0, 0]))
            'aquatic_mammals'
        """
        return cls.from_nested({coarse: list(fine) for coarse, fine in _CIFAR100.items()})

    @classmethod
    def cifar10(cls) -> LabelHierarchy:
        """CIFAR-10 grouped into ``vehicle`` (airplane, automobile, ship, truck) and
        ``animal`` (the other six). Fine ids equal CIFAR-10's official label ids.

        Examples:
            >>> LabelHierarchy.cifar10().label_paths([0, 3]).tolist()
            [[1, 0], [0, 3]]
        """
        return cls.from_nested(
            {
                "vehicle": ["airplane", "automobile", "ship", "truck"],
                "animal": ["bird", "cat", "deer", "dog", "frog", "horse"],
            }
        )

    @classmethod
    def mnist(cls) -> LabelHierarchy:
        """MNIST digits grouped by stroke shape (our documented choice).

        - ``loop``: 0, 6, 8, 9 (a closed loop);
        - ``straight``: 1, 4, 7 (straight strokes only);
        - ``curve``: 2, 3, 5 (open curves).

        Digit names are ``"0"`` .. ``"9"``, so leaf ids equal the digits.

        Examples:
            >>> LabelHierarchy.mnist().label_paths([0, 1, 2]).tolist()
            [[1, 0], [2, 1], [0, 2]]
        """
        return cls.from_nested(
            {"loop": ["0", "6", "8", "9"], "straight": ["1", "4", "7"], "curve": ["2", "3", "5"]}
        )

    # ------------------------------------------------------------------ helpers
    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.num_levels:
            raise ValueError(
                f"Level {level} does not exist: this hierarchy has levels 0..{self.num_levels - 1}."
            )

    def _check_known(self, names: Iterable[str]) -> None:
        unknown = [name for name in names if name not in self._parent]
        if unknown:
            raise ValueError(
                f"Unknown class name(s) {unknown[:10]}{_suggest(unknown[0], self.classes)}. "
                f"Known classes: {self.classes[:20]}{' ...' if len(self._parent) > 20 else ''}."
            )


def _read_text(path: str | os.PathLike[str]) -> str:
    # utf-8-sig drops a leading byte-order mark; with plain utf-8 it would stick to the
    # first class name and silently create a second top-level class.
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Hierarchy file {str(path)!r} is not UTF-8 text (byte {error.start}: "
            f"{error.reason}). Save it as UTF-8 (e.g. 'Save as... > Encoding: UTF-8' in "
            "your editor, or `iconv -f latin1 -t utf-8`) and load it again."
        ) from error


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(
                f"The JSON hierarchy has the key {key!r} twice in one object; JSON keeps "
                "only the last one, which would drop a subtree. Merge the two entries."
            )
        result[key] = value
    return result


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Class names must be non-empty strings, got {name!r}.")


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


# Official CIFAR-100 superclasses and their fine classes (the dataset's meta files).
_CIFAR100: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
