""":class:`LabelHierarchy`: a tree of named classes and the label paths ``[B, L]`` it gives."""

from __future__ import annotations

import difflib
import operator
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, SupportsIndex, cast

import numpy as np
import torch
from torch import Tensor

from lightly_hmlc.hierarchy.constructors import HierarchyConstructors
from lightly_hmlc.hierarchy.formats import check_name

__all__ = ["LabelHierarchy"]


class LabelHierarchy(HierarchyConstructors):
    """A rooted tree of named classes, coarse to fine.

    Nodes without a parent form level 0; a node's level is its depth. Within a level,
    class ids follow sorted names (as torchvision's ImageFolder and the official CIFAR ids
    do); leaf ids follow sorted leaf names. A leaf's label path, ``[coarse, ..., fine]``,
    is padded with ``-1`` below its depth. Names are stored in Unicode NFC.

    Args:
        parents: Every class name mapped to its parent's name, or ``None`` for a top-level
            class. A parent that is never a key becomes a top-level class.

    Examples:
        >>> h = LabelHierarchy({"cat": "animal", "dog": "animal", "car": "vehicle"})
        >>> h.level_names(0), h.leaves
        (['animal', 'vehicle'], ['car', 'cat', 'dog'])
        >>> h.label_paths(["dog", "car"]).tolist()
        [[0, 2], [1, 0]]
    """

    def __init__(self, parents: Mapping[str, str | None]) -> None:
        full: dict[str, str | None] = {}
        for raw_child, raw_parent in parents.items():
            # Names are stored in Unicode NFC; two spellings of one name are one class.
            child = check_name(raw_child)
            parent = None if raw_parent is None else check_name(raw_parent)
            if child in full and full[child] != parent:
                raise ValueError(
                    f"Class {child!r} is given twice, in two Unicode spellings of the same "
                    f"name, with parents {full[child]!r} and {parent!r}: keep one entry."
                )
            full[child] = parent
        for parent in list(full.values()):
            if parent is not None and parent not in full:
                full[parent] = None
        if not full:
            raise ValueError(
                "The hierarchy is empty: give at least one class, e.g. {'cat': 'animal'}."
            )
        self._parent = full
        self._depth = _depths(full)
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

    def to_nested(self) -> dict[str, Any]:

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
        name = self._known(name)
        return self._depth[name]

    def parent(self, name: str) -> str | None:
        """The parent of a class, ``None`` for a top-level class."""
        name = self._known(name)
        return self._parent[name]

    def children(self, name: str) -> list[str]:
        """The children of a class, sorted."""
        name = self._known(name)
        return list(self._children[name])

    def ancestors(self, name: str, include_self: bool = False) -> list[str]:
        """The chain from the top-level class down to ``name``'s parent (or ``name``)."""
        name = self._known(name)
        chain = [name] if include_self else []
        node = self._parent[name]
        while node is not None:
            chain.append(node)
            node = self._parent[node]
        return chain[::-1]

    def name_to_id(self, name: str) -> tuple[int, int]:
        """``(level, id within level)`` of a class name."""
        name = self._known(name)
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
        name = self._known(name)
        if name not in self._leaf_ids:
            raise ValueError(
                f"Class {name!r} is not a leaf (it has children {self._children[name]}); "
                "label paths start from fine classes."
            )
        return self._leaf_ids[name]

    def label_paths(self, fine: Sequence[int | str] | Tensor | np.ndarray) -> Tensor:
        """Label paths ``[B, L]`` of fine classes, given as leaf ids or leaf names."""
        if not isinstance(fine, Tensor) and hasattr(fine, "__array__"):
            fine = torch.as_tensor(fine)  # numpy arrays of ids
        if isinstance(fine, Tensor):
            if fine.dtype.is_floating_point or fine.dtype == torch.bool:
                raise ValueError(f"Fine labels must be integers, got dtype {fine.dtype}.")
            ids = fine.long().reshape(-1)
        else:
            items = list(fine)
            if all(isinstance(item, str) for item in items):
                names = self._check_known([str(item) for item in items])
                ids = torch.tensor([self.leaf_id(name) for name in names], dtype=torch.long)
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
        """``[C, L]`` label paths of a dataset's own class list, in its order: ``table[target]``."""
        names = [_nfc(name) for name in class_names]
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
        """Height of the lowest common ancestor of pairs of leaf ids: 0 for the same class, ``L``
        for classes that share only the implicit root.
        """
        paths_a = self.label_paths(leaf_a)
        paths_b = self.label_paths(leaf_b)
        agree = (paths_a == paths_b) & (paths_a >= 0)
        shared = torch.cumprod(agree.long(), dim=1).sum(dim=1)
        same = leaf_a.reshape(-1).to(shared.device) == leaf_b.reshape(-1).to(shared.device)
        height = self.num_levels - shared
        return torch.where(same, torch.zeros_like(height), height)

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.num_levels:
            raise ValueError(
                f"Level {level} does not exist: this hierarchy has levels 0..{self.num_levels - 1}."
            )

    def _known(self, name: str) -> str:
        """``name`` in NFC; a ValueError if it is unknown."""
        return self._check_known([name])[0]

    def _check_known(self, names: Iterable[str]) -> list[str]:
        stored = [_nfc(name) for name in names]
        unknown = [name for name in stored if name not in self._parent]
        if unknown:
            raise ValueError(
                f"Unknown class name(s) {unknown[:10]}{_suggest(unknown[0], self.classes)}. "
                f"Known classes: {self.classes[:20]}{' ...' if len(self._parent) > 20 else ''}."
            )
        return stored


def _nfc(name: str) -> str:
    # Lookups accept either spelling of a name, as the tree stores them in NFC.
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _depths(parents: Mapping[str, str | None]) -> dict[str, int]:
    """The depth of every node; a ValueError naming a cycle."""
    depth: dict[str, int] = {}
    for start in parents:
        chain: list[str] = []  # nodes of unknown depth, from ``start`` upwards
        on_chain: set[str] = set()
        node: str | None = start
        while node is not None and node not in depth:
            if node in on_chain:
                cycle = " -> ".join([*chain[chain.index(node) :], node])
                raise ValueError(
                    f"The hierarchy has a cycle through {node!r} ({cycle}); every class "
                    "needs a chain of parents that ends at a top-level class."
                )
            chain.append(node)
            on_chain.add(node)
            node = parents[node]
        known = -1 if node is None else depth[node]
        for steps, name in enumerate(reversed(chain), start=1):
            depth[name] = known + steps
    return depth
