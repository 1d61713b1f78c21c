from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lightly_hmlc import LabelHierarchy

# The fine -> coarse label array of the official CIFAR-100 release (the `coarse_labels`
# that accompany `fine_labels` in its train/test pickles), indexed by fine label id.
OFFICIAL_CIFAR100_COARSE_OF_FINE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]  # fmt: skip


def tree() -> LabelHierarchy:
    return LabelHierarchy.from_nested(
        {"animal": {"cat": ["tabby", "siamese"], "dog": None}, "vehicle": ["car", "ship"]}
    )


def test_cifar100_matches_the_official_coarse_labels() -> None:
    hierarchy = LabelHierarchy.cifar100()
    paths = hierarchy.label_paths(torch.arange(100))
    assert paths[:, 1].tolist() == list(range(100))
    assert paths[:, 0].tolist() == OFFICIAL_CIFAR100_COARSE_OF_FINE
    assert hierarchy.level_names(1)[:3] == ["apple", "aquarium_fish", "baby"]
    assert hierarchy.id_to_name(0, 9) == "large_man-made_outdoor_things"
    assert hierarchy.num_classes_per_level == [20, 100]


def test_cifar10_ids_follow_the_official_order() -> None:
    hierarchy = LabelHierarchy.cifar10()
    official = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert hierarchy.leaves == official
    coarse = [
        hierarchy.id_to_name(0, int(c)) for c in hierarchy.label_paths(torch.arange(10))[:, 0]
    ]
    assert coarse == ["vehicle", "vehicle"] + ["animal"] * 6 + ["vehicle", "vehicle"]


def test_leaves_at_different_depths_are_padded() -> None:
    hierarchy = tree()
    assert hierarchy.num_levels == 3
    paths = hierarchy.label_paths(["tabby", "dog", "ship"])
    assert paths.tolist() == [[0, 1, 1], [0, 2, -1], [1, 3, -1]]


def test_builders_agree(tmp_path: Path) -> None:
    expected = tree()
    edges = [
        ("animal", "cat"),
        ("cat", "tabby"),
        ("cat", "siamese"),
        ("animal", "dog"),
        ("vehicle", "car"),
        ("vehicle", "ship"),
    ]
    assert LabelHierarchy.from_edges(edges) == expected
    edge_file = tmp_path / "tree.txt"
    edge_file.write_text("# parent child\n" + "\n".join(f"{p} {c}" for p, c in edges) + "\n")
    assert LabelHierarchy.load(edge_file) == expected
    assert (
        LabelHierarchy.from_label_paths(
            [
                ["animal", "cat", "tabby"],
                ["animal", "cat", "siamese"],
                ["animal", "dog"],
                ["vehicle", "car"],
                ["vehicle", "ship"],
            ]
        )
        == expected
    )
    parents = {
        "tabby": "cat",
        "siamese": "cat",
        "cat": "animal",
        "dog": "animal",
        "car": "vehicle",
        "ship": "vehicle",
    }
    assert LabelHierarchy(parents) == expected
    nested_file = tmp_path / "tree.json"
    nested_file.write_text(json.dumps(expected.to_nested()))
    assert LabelHierarchy.load(nested_file) == expected


def test_json_round_trip_is_lossless(tmp_path: Path) -> None:
    for hierarchy in (tree(), LabelHierarchy.cifar100(), LabelHierarchy.mnist()):
        path = tmp_path / "h.json"
        hierarchy.to_json(path)
        loaded = LabelHierarchy.load(path)
        assert loaded == hierarchy
        assert torch.equal(loaded.leaf_paths, hierarchy.leaf_paths)
        assert [loaded.level_names(level) for level in range(loaded.num_levels)] == [
            hierarchy.level_names(level) for level in range(hierarchy.num_levels)
        ]


def test_ids_and_names_round_trip_at_every_level() -> None:
    hierarchy = tree()
    for level in range(hierarchy.num_levels):
        for class_id, name in enumerate(hierarchy.level_names(level)):
            assert hierarchy.name_to_id(name) == (level, class_id)
            assert hierarchy.id_to_name(level, class_id) == name


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LabelHierarchy({}), "empty"),
        (lambda: LabelHierarchy({"a": "b", "b": "c", "c": "a"}), "cycle through 'a'"),
        (lambda: LabelHierarchy.from_edges([("x", "cat"), ("y", "cat")]), "'cat' has two parents"),
        (lambda: LabelHierarchy.from_edges([("x", "x")]), "'x' is its own parent"),
        (lambda: LabelHierarchy({"": "x"}), "non-empty strings"),
        (
            lambda: tree().label_paths(["tabbby"]),
            "Unknown class name.*'tabbby'.*did you mean 'tabby'",
        ),
        (lambda: tree().label_paths([7]), "Unknown fine class ids \\[7\\]"),
        (lambda: tree().label_paths(["cat"]), "'cat' is not a leaf"),
        (lambda: tree().id_to_name(0, 5), "out of range for level 0"),
        (lambda: tree().level_names(3), "Level 3 does not exist"),
        (lambda: tree().label_paths(torch.zeros(2)), "must be integers"),
    ],
)
def test_errors_name_the_problem(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_edge_list_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("animal cat dog\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 'parent child'"):
        LabelHierarchy.load(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        LabelHierarchy.load(tmp_path / "missing.txt")


def test_path_table_lists_mismatches() -> None:
    with pytest.raises(ValueError) as info:
        tree().path_table(["tabby", "siamese", "dgo", "cat"])
    message = str(info.value)
    assert "'dgo'" in message and "did you mean 'dog'" in message
    assert "inner nodes" in message and "'cat'" in message
    assert "no dataset class" in message


def test_lca_height() -> None:
    hierarchy = tree()
    ids = torch.tensor([hierarchy.leaf_id(n) for n in ["tabby", "tabby", "tabby", "tabby"]])
    others = torch.tensor([hierarchy.leaf_id(n) for n in ["tabby", "siamese", "dog", "car"]])
    assert hierarchy.lca_height(ids, others).tolist() == [0, 1, 2, 3]


def test_numpy_ids_are_accepted() -> None:
    import numpy as np

    hierarchy = tree()
    expected = hierarchy.label_paths([0, 3]).tolist()
    assert hierarchy.label_paths(np.array([0, 3])).tolist() == expected
    assert hierarchy.label_paths([np.int64(0), np.int64(3)]).tolist() == expected


# ---------------------------------------------------------------- taxonomy files (issue 9)
EDGE_TEXT = "# parent child\nanimal cat\nanimal dog\nvehicle car\n"
NESTED_JSON = '{"animal": ["cat", "dog"], "vehicle": ["car"]}'


@pytest.mark.parametrize(("name", "text"), [("tree.txt", EDGE_TEXT), ("tree.json", NESTED_JSON)])
def test_a_byte_order_mark_parses_like_the_same_file_without_one(
    tmp_path: Path, name: str, text: str
) -> None:
    plain = tmp_path / f"plain_{name}"
    plain.write_text(text, encoding="utf-8")
    bom = tmp_path / f"bom_{name}"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # what Notepad writes
    expected = LabelHierarchy.load(plain)
    loaded = LabelHierarchy.load(bom)
    assert loaded == expected
    assert loaded.level_names(0) == ["animal", "vehicle"]
    assert torch.equal(loaded.leaf_paths, expected.leaf_paths)


def test_a_bom_in_json_text_is_dropped() -> None:
    assert LabelHierarchy.from_json("\ufeff" + NESTED_JSON) == LabelHierarchy.from_json(NESTED_JSON)


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.json"])
def test_a_latin1_file_names_the_file_and_the_fix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    text = EDGE_TEXT + "animal caf\u00e9\n" if name.endswith(".txt") else '{"caf\u00e9": null}'
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=f"{name}.*not UTF-8.*Save it as UTF-8"):
        LabelHierarchy.load(path)


def test_duplicate_json_keys_are_an_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"animal": ["cat"], "vehicle": ["car"], "animal": ["dog"]}')
    with pytest.raises(ValueError, match="key 'animal' twice"):
        LabelHierarchy.load(path)
    with pytest.raises(ValueError, match="key 'cat' twice"):
        LabelHierarchy.from_json('{"animal": {"cat": null, "cat": {"tabby": null}}}')


def test_invalid_json_is_a_value_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"animal": ["cat",]}')
    with pytest.raises(ValueError, match="broken.json is not valid JSON.*line 1"):
        LabelHierarchy.load(path)


def test_edge_list_comments_and_names_with_spaces(tmp_path: Path) -> None:
    path = tmp_path / "tree.txt"
    path.write_text("animal cat  # a comment after a pair\n\tanimal\tdog\n#only a comment\n")
    assert LabelHierarchy.load(path).leaves == ["cat", "dog"]
    path.write_text("sea mammal sea lion\n")
    with pytest.raises(ValueError, match="tree.txt:1: .*names with spaces.*JSON"):
        LabelHierarchy.load(path)
    json_path = tmp_path / "tree.json"
    json_path.write_text('{"sea mammal": ["sea lion"]}')
    assert LabelHierarchy.load(json_path).leaves == ["sea lion"]


# ---------------------------------------------------------------- built-in taxonomies (issue 10)
def test_every_builtin_taxonomy_is_reachable_by_name_and_shortcut() -> None:
    from lightly_hmlc.data import ModelNet40Hierarchical, ShapesDataset
    from lightly_hmlc.hierarchy import BUILTIN

    shortcuts = {
        "cifar100": LabelHierarchy.cifar100,
        "cifar10": LabelHierarchy.cifar10,
        "mnist": LabelHierarchy.mnist,
        "shapes": LabelHierarchy.shapes,
        "modelnet40": LabelHierarchy.modelnet40,
    }
    assert set(BUILTIN) == set(shortcuts)
    sizes = {
        "cifar100": [20, 100],
        "cifar10": [2, 10],
        "mnist": [3, 10],
        "shapes": [3, 6, 12],
        "modelnet40": [6, 40],
    }
    for name, shortcut in shortcuts.items():
        assert LabelHierarchy.builtin(name) == shortcut()
        assert shortcut().num_classes_per_level == sizes[name]
    # The datasets take their default hierarchy from the same place.
    assert ShapesDataset.build_hierarchy() == LabelHierarchy.shapes()
    assert ModelNet40Hierarchical.build_hierarchy() == LabelHierarchy.modelnet40()
    assert LabelHierarchy.shapes().leaves == ShapesDataset(num_samples=12).classes


def test_unknown_builtin_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="'cifar1000'.*did you mean 'cifar100'.*modelnet40"):
        LabelHierarchy.builtin("cifar1000")


def test_builtin_tables_are_read_only() -> None:
    from lightly_hmlc.hierarchy import BUILTIN, MODELNET40_GROUPS

    with pytest.raises(TypeError):
        MODELNET40_GROUPS["extra"] = ("thing",)  # type: ignore[index]
    with pytest.raises(TypeError):
        BUILTIN["cifar10"]["vehicle"] = ("boat",)  # type: ignore[index]
    assert LabelHierarchy.modelnet40().num_classes_per_level == [6, 40]


def test_formats_module_gives_parent_maps(tmp_path: Path) -> None:
    from lightly_hmlc.hierarchy import formats

    parents = formats.parents_from_nested(tree().to_nested())
    assert LabelHierarchy(parents) == tree()
    path = tmp_path / "t.json"
    formats.to_json(parents, path)
    assert formats.load_parents(path) == tree().to_dict()["parents"]


# ------------------------------------------------ names from files you did not write
@pytest.mark.parametrize(
    ("separator", "shown"),
    [("\x0b", "U+000B"), ("\x0c", "U+000C"), ("\x85", "U+0085"), ("\u2028", "U+2028")],
)
def test_edge_lists_break_lines_only_at_newlines(
    tmp_path: Path, separator: str, shown: str
) -> None:
    # str.splitlines would break here too and silently make "dog" a top-level class.
    path = tmp_path / "tree.txt"
    path.write_text(f"animal cat\nanimal{separator}dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"tree.txt:2: {shown} ")) as info:
        LabelHierarchy.load(path)
    assert "control or invisible" in str(info.value)
    path.write_bytes(b"animal cat\r\nanimal dog\rvehicle\tcar\n")  # CRLF, CR; tab separates
    assert LabelHierarchy.load(path).parent("dog") == "animal"
    assert LabelHierarchy.load(path).parent("car") == "vehicle"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("cat\u200b", "U+200B ZERO WIDTH SPACE"),
        ("c\u200dat", "U+200D ZERO WIDTH JOINER"),
        ("cat\u2060", "U+2060 WORD JOINER"),
        ("c\ufeffat", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
        ("ca\x00t", "U+0000 control character"),
        ("ca\x1bt", "U+001B control character"),
    ],
)
def test_invisible_and_control_characters_in_names_are_refused(
    tmp_path: Path, name: str, shown: str
) -> None:
    path = tmp_path / "tree.txt"
    path.write_text(f"# header\nanimal dog\nanimal {name}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"tree.txt:3: {shown} at position")):
        LabelHierarchy.load(path)
    for build in (
        lambda: LabelHierarchy.from_json(json.dumps({"animal": [name]})),
        lambda: LabelHierarchy.from_edges([("animal", name)]),
        lambda: LabelHierarchy({name: "animal"}),
        lambda: LabelHierarchy.from_label_paths([["animal", name]]),
    ):
        with pytest.raises(ValueError, match=re.escape(f"Class name {name!r} has {shown}")):
            build()
    # In JSON a tab is no separator: a name cannot hold it either.
    with pytest.raises(ValueError, match=re.escape("U+0009 control character")):
        LabelHierarchy.from_json('{"animal": ["sea\\tlion"]}')
    # A byte-order mark at the start of the file is still dropped.
    path.write_text("\ufeffanimal cat\n", encoding="utf-8")
    assert LabelHierarchy.load(path).level_names(0) == ["animal"]


def test_names_are_normalised_to_nfc(tmp_path: Path) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    path = tmp_path / "tree.txt"
    path.write_text(f"drink {composed}\ndrink {decomposed}\ndrink tea\n", encoding="utf-8")
    h = LabelHierarchy.load(path)
    assert h.leaves == [composed, "tea"]  # one class, not two that look the same
    assert LabelHierarchy.from_nested({"drink": [decomposed, "tea"]}) == h
    assert LabelHierarchy({decomposed: "drink", "tea": "drink"}) == h
    # Lookups take either spelling (folder names on macOS are decomposed).
    assert h.leaf_id(decomposed) == h.leaf_id(composed) == 0
    assert h.parent(decomposed) == "drink" and h.level_of(decomposed) == 1
    assert h.label_paths([decomposed]).tolist() == [[0, 0]]
    assert h.path_table([decomposed, "tea"]).tolist() == [[0, 0], [0, 1]]
    with pytest.raises(ValueError, match="two Unicode spellings"):
        LabelHierarchy({composed: "drink", decomposed: "food"})


def test_a_chain_thousands_of_levels_deep(tmp_path: Path) -> None:
    depth = 2000
    path = tmp_path / "chain.txt"
    path.write_text("".join(f"n{i} n{i + 1}\n" for i in range(depth - 1)), encoding="utf-8")
    h = LabelHierarchy.load(path)
    assert h.num_levels == depth and h.leaves == [f"n{depth - 1}"]
    assert h.level_of("n1234") == 1234 and h.ancestors("n3") == ["n0", "n1", "n2"]
    assert h.leaf_paths.tolist() == [[0] * depth]
    with path.open("a") as file:  # closing the chain into a loop
        file.write(f"n{depth - 1} n0\n")
    with pytest.raises(ValueError, match="has two parents|cycle"):
        LabelHierarchy.load(path)
    cycle = {f"n{i + 1}": f"n{i}" for i in range(depth - 1)} | {"n0": f"n{depth - 1}"}
    with pytest.raises(ValueError, match="cycle through"):
        LabelHierarchy(cycle)
