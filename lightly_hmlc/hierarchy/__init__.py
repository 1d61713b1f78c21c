"""Label hierarchies: the tree (:mod:`.tree`), its file formats (:mod:`.formats`) and the
built-in taxonomies (:mod:`.builtin`).
"""

from lightly_hmlc.hierarchy.builtin import BUILTIN, MODELNET40_GROUPS
from lightly_hmlc.hierarchy.formats import JSON_FORMAT
from lightly_hmlc.hierarchy.tree import LabelHierarchy

__all__ = ["BUILTIN", "JSON_FORMAT", "MODELNET40_GROUPS", "LabelHierarchy"]
