"""Label hierarchies: the tree, its file formats, and the built-in taxonomies.

- :mod:`~lightly_hmlc.hierarchy.tree`: :class:`LabelHierarchy`, a rooted tree of named
  classes and the label paths ``[B, L]`` it induces;
- :mod:`~lightly_hmlc.hierarchy.formats`: edge lists, nested dicts, label paths and JSON,
  read into (and written from) a child -> parent map;
- :mod:`~lightly_hmlc.hierarchy.builtin`: every built-in taxonomy (CIFAR-100, CIFAR-10,
  MNIST, Shapes, ModelNet40) as plain data, in one place.

Examples:
    >>> from lightly_hmlc.hierarchy import LabelHierarchy
    >>> LabelHierarchy.cifar100().num_classes_per_level
    [20, 100]
"""

from lightly_hmlc.hierarchy.builtin import BUILTIN, MODELNET40_GROUPS
from lightly_hmlc.hierarchy.formats import JSON_FORMAT
from lightly_hmlc.hierarchy.tree import LabelHierarchy

__all__ = ["BUILTIN", "JSON_FORMAT", "MODELNET40_GROUPS", "LabelHierarchy"]
