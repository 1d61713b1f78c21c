"""Readers and writers of label hierarchies; every reader returns a child -> parent map."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "JSON_FORMAT",
    "Parents",
    "load_parents",
    "parents_from_edges",
    "parents_from_label_paths",
    "parents_from_nested",
    "read_edge_list",
    "read_json",
    "to_dict",
    "to_json",
]

#: The format tag of the JSON that :func:`to_json` writes.
JSON_FORMAT = "lightly_hmlc.hierarchy/v1"

#: A child -> parent mapping; ``None`` marks a top-level class.
Parents = dict[str, str | None]


def parents_from_edges(edges: Iterable[tuple[str, str]]) -> Parents:
    """The parent map of ``(parent, child)`` pairs; a ValueError if a child has two parents."""
    parents: Parents = {}
    for raw_parent, raw_child in edges:
        parent, child = check_name(raw_parent), check_name(raw_child)
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
    return parents


def read_edge_list(path: str | os.PathLike[str]) -> Parents:
    """Reads an edge-list text file: one ``parent child`` pair per line.

    ``#`` starts a comment, names are separated by whitespace (use JSON for names with
    spaces or ``#``), and a single name declares a top-level class. Control and invisible
    characters are refused, and the message names the file and line.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "tree.txt"
        >>> _ = f.write_text("# parent child\\nanimal cat  # a comment\\nvehicle\\n")
        >>> read_edge_list(f)
        {'cat': 'animal', 'animal': None, 'vehicle': None}
    """
    edges: list[tuple[str, str]] = []
    roots: list[str] = []
    for number, raw in enumerate(_LINE_BREAK.split(read_text(path)), start=1):
        content = raw.split("#", 1)[0]
        refused = refused_character(content.replace("\t", " "))
        if refused is not None:
            raise ValueError(
                f"{path}:{number}: {refused} in {content.strip()!r}; class names cannot "
                "hold control or invisible characters. Delete it (an editor that shows "
                "invisible characters helps) and load the file again."
            )
        line = unicodedata.normalize("NFC", content).strip()
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
    parents = parents_from_edges(edges)
    for root in roots:
        if parents.get(root) is not None:
            raise ValueError(
                f"{path}: {root!r} is declared top-level but also has parent "
                f"{parents[root]!r}; remove one of the two lines."
            )
        parents[root] = None
    return parents


def parents_from_nested(tree: Mapping[str, Any] | Sequence[Any]) -> Parents:
    """The parent map of a nested dict: a value is a dict or list of children, or ``None``."""
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
        for raw_name, sub in items:
            name = check_name(raw_name)
            if parent is None:
                roots.append(name)
            else:
                edges.append((parent, name))
            visit(name, sub)

    visit(None, tree)
    parents = parents_from_edges(edges)
    for root in roots:
        if parents.get(root) is not None:
            raise ValueError(
                f"Class {root!r} appears at the top level and under {parents[root]!r}."
            )
        parents[root] = None
    return parents


def parents_from_label_paths(paths: Iterable[Sequence[str]]) -> Parents:
    """The parent map of label paths of names, coarse to fine."""
    edges: list[tuple[str, str]] = []
    roots: list[str] = []
    for path in paths:
        names = [check_name(name) for name in path if name is not None]
        if not names:
            raise ValueError("A label path is empty: give at least the top-level class.")
        roots.append(names[0])
        edges.extend(zip(names[:-1], names[1:], strict=True))
    parents = parents_from_edges(edges)
    for root in roots:
        if parents.get(root) is not None:
            raise ValueError(
                f"Class {root!r} starts a label path but also has parent {parents[root]!r}."
            )
        parents[root] = None
    return parents


def read_json(text_or_path: str | os.PathLike[str]) -> Parents:
    """The parent map of the JSON of :func:`to_json` or a nested dict in JSON (text or a
    file); a key twice in one object is refused, as ``json`` would drop a subtree.
    """
    source = "JSON text"
    if isinstance(text_or_path, os.PathLike) or not str(text_or_path).lstrip(
        "\ufeff \t\r\n"
    ).startswith(("{", "[")):
        text = read_text(text_or_path)
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
        return dict(parents)
    if isinstance(data, Mapping | list):
        return parents_from_nested(data)
    raise ValueError("A JSON hierarchy must be an object (nested dict of classes).")


def load_parents(path: str | os.PathLike[str]) -> Parents:
    """Reads a hierarchy file: ``.json`` as JSON, anything else as an edge list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Hierarchy file {str(path)!r} not found. Write one 'parent child' pair per "
            "line (an edge list) or a nested JSON dict, and pass its path."
        )
    if path.suffix.lower() == ".json":
        return read_json(path)
    return read_edge_list(path)


def to_dict(parents: Mapping[str, str | None]) -> dict[str, Any]:
    """The JSON-ready form: the format tag and the sorted child -> parent mapping."""
    return {"format": JSON_FORMAT, "parents": {name: parents[name] for name in sorted(parents)}}


def to_json(parents: Mapping[str, str | None], path: str | os.PathLike[str] | None = None) -> str:
    """Serialises a parent map losslessly to JSON; writes it (UTF-8) to ``path`` when given."""
    text = json.dumps(to_dict(parents), indent=2, ensure_ascii=False)
    if path is not None:
        Path(path).write_text(text + "\n", encoding="utf-8")
    return text


def read_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of a hierarchy file without a byte-order mark."""
    # utf-8-sig drops a byte-order mark, which would otherwise stick to the first name.
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Hierarchy file {str(path)!r} is not UTF-8 text (byte {error.start}: "
            f"{error.reason}). Save it as UTF-8 (e.g. 'Save as... > Encoding: UTF-8' in "
            "your editor, or `iconv -f latin1 -t utf-8`) and load it again."
        ) from error


def check_name(name: object) -> str:
    """``name`` in Unicode NFC, if it is a valid class name: a non-empty string without
    control, invisible format, separator or surrogate characters.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"Class names must be non-empty strings, got {name!r}.")
    refused = refused_character(name)
    if refused is not None:
        raise ValueError(
            f"Class name {name!r} has {refused}; class names cannot hold control or "
            "invisible characters: remove it."
        )
    return unicodedata.normalize("NFC", name)


#: Line ends of the text formats (``str.splitlines`` also breaks at \v, \f, \x85, ...).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

#: Unicode categories refused in names: control, format, surrogate, line/paragraph separator.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def refused_character(text: str) -> str | None:
    """The first character a class name cannot hold, as ``"U+200B ZERO WIDTH SPACE at
    position 3"``; None if there is none.
    """
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES:
            what = unicodedata.name(char, "" if category == "Cc" else "lone surrogate")
            what = what or "control character"
            return f"U+{ord(char):04X} {what} at position {position}"
    return None


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
