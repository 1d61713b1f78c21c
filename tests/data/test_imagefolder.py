from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightly_hmlc.data import HierarchicalImageFolder
from lightly_hmlc.hierarchy import LabelHierarchy

TREE = {
    "animal": {"mammal": ["cat", "dog"], "bird": ["crow"]},
    "vehicle": ["car", "bike"],
}


def make_tree(root: Path, classes: list[str], per_class: int = 2) -> None:
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 6), (c * 30, i * 40, 7)).save(folder / f"{i}.png")


def test_three_levels_and_padding(tmp_path: Path) -> None:
    make_tree(tmp_path, ["bike", "car", "cat", "crow", "dog"])
    h = LabelHierarchy.from_nested(TREE)
    ds = HierarchicalImageFolder(tmp_path, h)
    assert ds.classes == ["bike", "car", "cat", "crow", "dog"]
    assert len(ds) == 10 and ds.num_levels == 3
    assert torch.equal(ds.label_paths, h.path_table(ds.classes)[torch.tensor(ds.targets)])
    # "car" is a leaf at level 1: its level-2 entry is unknown.
    assert ds[2][1].tolist() == h.label_paths(["car"])[0].tolist()
    assert ds[2][1][-1] == -1
    image, path = ds[4]  # cat
    assert image.mode == "RGB" and image.size == (8, 6)
    assert np.asarray(image)[0, 0].tolist() == [60, 0, 7]
    assert path.tolist() == h.label_paths(["cat"])[0].tolist()


def test_hierarchy_from_edge_list_and_json(tmp_path: Path) -> None:
    make_tree(tmp_path / "images", ["cat", "dog"])
    edges = tmp_path / "tree.txt"
    edges.write_text("# parent child\nanimal cat\nanimal dog\n")
    json_file = tmp_path / "tree.json"
    json_file.write_text('{"animal": ["cat", "dog"]}')
    for hierarchy in (edges, json_file, str(edges)):
        ds = HierarchicalImageFolder(tmp_path / "images", hierarchy)
        assert ds.label_paths.tolist() == [[0, 0], [0, 0], [0, 1], [0, 1]]


def test_mismatch_lists_every_kind(tmp_path: Path) -> None:
    # "kat" is not in the hierarchy, "mammal" is an inner node, "bike"/"crow"/... lack folders.
    make_tree(tmp_path, ["car", "cat", "dog", "kat", "mammal"])
    with pytest.raises(ValueError) as info:
        HierarchicalImageFolder(tmp_path, LabelHierarchy.from_nested(TREE))
    message = str(info.value)
    assert "missing from the hierarchy: ['kat']" in message
    assert "'kat' -> 'cat'?" in message  # a suggestion
    assert "inner node(s) used as class folder: ['mammal']" in message
    assert "without a class folder: ['bike', 'crow']" in message
    assert "Fix:" in message and "strict=False" in message


def test_non_strict_allows_unused_leaves(tmp_path: Path) -> None:
    make_tree(tmp_path, ["cat", "dog"])
    h = LabelHierarchy.from_nested(TREE)
    with pytest.raises(ValueError, match="without a class folder"):
        HierarchicalImageFolder(tmp_path, h)
    ds = HierarchicalImageFolder(tmp_path, h, strict=False)
    assert (
        ds.label_paths[:, 2].tolist() == [h.name_to_id("cat")[1]] * 2 + [h.name_to_id("dog")[1]] * 2
    )


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    make_tree(tmp_path, ["cat", "dog"], per_class=1)
    bad = tmp_path / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ds = HierarchicalImageFolder(tmp_path, LabelHierarchy.from_nested({"animal": ["cat", "dog"]}))
    index = [path for path, _ in ds.samples].index(str(bad))
    ds[0]  # a good file still loads
    with pytest.raises(OSError, match=r"Cannot read image file .*broken\.jpg"):
        ds[index]


def test_custom_loader_errors_name_the_file(tmp_path: Path) -> None:
    make_tree(tmp_path, ["cat"], per_class=1)

    def loader(path: str) -> object:
        raise ValueError("decoder exploded")

    ds = HierarchicalImageFolder(tmp_path, LabelHierarchy({"cat": "animal"}), loader=loader)
    with pytest.raises(OSError, match=r"0\.png.*decoder exploded"):
        ds[0]


def test_missing_root_and_hierarchy_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found.*one sub-folder per"):
        HierarchicalImageFolder(tmp_path / "missing", LabelHierarchy({"cat": "animal"}))
    make_tree(tmp_path / "images", ["cat"])
    with pytest.raises(FileNotFoundError, match="Hierarchy file"):
        HierarchicalImageFolder(tmp_path / "images", tmp_path / "no_tree.txt")


def test_empty_class_folder(tmp_path: Path) -> None:
    make_tree(tmp_path, ["cat"])
    (tmp_path / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No image files .* \['dog'\]"):
        HierarchicalImageFolder(tmp_path, LabelHierarchy.from_nested({"animal": ["cat", "dog"]}))


def test_nested_files_and_extensions(tmp_path: Path) -> None:
    make_tree(tmp_path, ["cat"])
    (tmp_path / "cat" / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "sub" / "x.JPG")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = HierarchicalImageFolder(tmp_path, LabelHierarchy({"cat": "animal"}), image_mode="L")
    assert len(ds) == 3
    assert ds[2][0].mode == "L"


def _single_image_folder(root: Path, pixels: np.ndarray, name: str) -> HierarchicalImageFolder:
    (root / "cat").mkdir(parents=True)
    Image.fromarray(pixels).save(root / "cat" / name)
    return HierarchicalImageFolder(root, LabelHierarchy({"cat": "animal"}))


def test_16_bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    pixels = np.array([[0, 128, 257, 1000], [32768, 40000, 65278, 65535]], dtype=np.uint16)
    ds = _single_image_folder(tmp_path, pixels, "depth.png")
    with Image.open(ds.samples[0][0]) as raw:
        assert raw.mode == "I;16"  # a real 16-bit file
    image = ds[0][0]
    assert image.mode == "RGB"
    expected = np.rint(pixels / 257).astype(np.uint8)  # 0..65535 -> 0..255
    assert expected.tolist() == [[0, 0, 1, 4], [128, 156, 254, 255]]
    assert np.array_equal(np.asarray(image), np.repeat(expected[..., None], 3, axis=2))
    ds.image_mode = "L"
    assert np.array_equal(np.asarray(ds[0][0]), expected)
    ds.image_mode = "I;16"  # a 16-bit mode asked for keeps the values
    assert np.array_equal(np.asarray(ds[0][0]), pixels)


def test_32_bit_integer_and_float_images_are_rescaled(tmp_path: Path) -> None:
    # int32 beyond 16 bits: stretched from its own minimum and maximum.
    wide = np.array([[-1000, 0], [100000, 200000]], dtype=np.int32)
    image = _single_image_folder(tmp_path / "int", wide, "x.tiff")[0][0]
    expected = np.rint((wide + 1000) * 255 / 201000)
    assert np.array_equal(np.asarray(image)[..., 0], expected)
    # float in 0..1: times 255.
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    image = _single_image_folder(tmp_path / "unit", unit, "x.tiff")[0][0]
    assert np.asarray(image)[..., 0].tolist() == [[0, 64], [128, 255]]
    # float outside 0..1: stretched.
    other = np.array([[-2.0, 0.0], [1.0, 3.0]], dtype=np.float32)
    image = _single_image_folder(tmp_path / "other", other, "x.tiff")[0][0]
    assert np.asarray(image)[..., 0].tolist() == [[0, 102], [153, 255]]
    broken = np.array([[0.0, np.nan]], dtype=np.float32)
    ds = _single_image_folder(tmp_path / "nan", broken, "x.tiff")
    with pytest.raises(OSError, match=r"x\.tiff.*NaN"):
        ds[0]


def test_decomposed_folder_names_match_a_composed_hierarchy(tmp_path: Path) -> None:
    make_tree(tmp_path, ["cafe\u0301", "tea"], per_class=1)  # as macOS names folders
    tree = tmp_path / "tree.txt"
    tree.write_text("drink caf\u00e9\ndrink tea\n", encoding="utf-8")
    ds = HierarchicalImageFolder(tmp_path / ".", tree)
    assert ds.classes == ["cafe\u0301", "tea"]
    assert ds.label_paths.tolist() == [[0, 0], [0, 1]]
