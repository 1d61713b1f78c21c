"""Your own taxonomy: an ImageFolder tree plus a hierarchy file written by hand.

The images stay in the usual ImageFolder layout, one folder per fine class::

    root/cat/0001.png  root/dog/0002.png  root/eagle/...  root/car/...  root/boat/...

and a small text file says how the classes nest. Two formats are read by
``LabelHierarchy.load(path)``:

Edge list (any suffix but ``.json``): one ``parent child`` pair per line, ``#`` starts a
comment, a line with a single name declares a top-level class::

    # parent child
    animal mammal
    animal bird
    vehicle road_vehicle
    vehicle boat          # a leaf one level up: its label path ends in -1
    mammal cat
    mammal dog
    bird eagle
    bird sparrow
    road_vehicle car
    road_vehicle truck

JSON (``.json``): a nested dict; a list holds leaves, ``null`` marks a leaf::

    {"animal": {"mammal": ["cat", "dog"], "bird": ["eagle", "sparrow"]},
     "vehicle": {"road_vehicle": ["car", "truck"], "boat": null}}

Every class folder must be a leaf of the hierarchy; class ids within a level follow
sorted names, and the label path of a sample is ``[level 0, level 1, ...]`` (``-1`` for
a level its class does not reach). ``HierarchicalImageFolder(root, hierarchy,
transform)`` checks the folders against the file when it is built and returns
``(views, label_path)`` pairs that ``HMLCLoss`` consumes. The script writes such a tree
of generated images and both files (into a temporary folder by default), trains a few
steps with HMCE, and then shows the errors you get when the file and the folders
disagree.

Run (CPU, a few seconds)::

    python examples/custom_taxonomy.py                         # generated demo data
    python examples/custom_taxonomy.py --out-dir ./taxonomy_demo  # keep the files
    python examples/custom_taxonomy.py --root path/to/images --hierarchy path/to/tree.txt
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import DataLoader

from lightly_hmlc import HMLCLoss, LabelHierarchy, create_backbone
from lightly_hmlc.data import HierarchicalImageFolder

EDGE_LIST = """\
# parent child (one pair per line; '#' starts a comment)
animal mammal
animal bird
vehicle road_vehicle
vehicle boat          # a leaf one level up: its label path ends in -1
mammal cat
mammal dog
bird eagle
bird sparrow
road_vehicle car
road_vehicle truck
"""

NESTED = {
    "animal": {"mammal": ["cat", "dog"], "bird": ["eagle", "sparrow"]},
    "vehicle": {"road_vehicle": ["car", "truck"], "boat": None},
}

# Hue of each coarse class and shape of each middle class, so the images follow the tree.
_HUE = {"animal": 0.05, "vehicle": 0.6}
_SHAPE = {"mammal": "ellipse", "bird": "triangle", "road_vehicle": "rectangle", "boat": "chord"}


def write_image_folder(
    root: Path, hierarchy: LabelHierarchy, images_per_class: int, seed: int = 0
) -> None:
    """Writes ``root/<leaf>/<n>.png`` for every leaf: coloured shapes on noise."""
    rng = np.random.default_rng(seed)
    for leaf in hierarchy.leaves:
        path = hierarchy.ancestors(leaf, include_self=True)
        hue = _HUE.get(path[0], float(rng.uniform()))
        shape = _SHAPE.get(path[1] if len(path) > 1 else leaf, "ellipse")
        parent = hierarchy.parent(leaf)
        siblings = hierarchy.children(parent) if parent is not None else [leaf]
        size = 0.18 + 0.1 * siblings.index(leaf)  # siblings differ in size
        folder = root / leaf
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(images_per_class):
            write_image(folder / f"{n:04d}.png", hue, shape, size, rng)


def write_image(file: Path, hue: float, shape: str, size: float, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    colour = Image.new("HSV", (1, 1), (int(hue * 255) % 256, 200, 230)).convert("RGB")
    fill = colour.getpixel((0, 0))
    cx, cy = rng.uniform(12, 20, 2)
    r = 32 * (size + rng.uniform(0.0, 0.05))
    box = (cx - r, cy - r, cx + r, cy + r)
    draw = ImageDraw.Draw(image)
    if shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill)
    elif shape == "chord":
        draw.chord(box, 0, 180, fill=fill)
    else:
        draw.ellipse(box, fill=fill)
    image.save(file)


def describe(hierarchy: LabelHierarchy, classes: list[str]) -> None:
    """Prints the label path of every class folder, as ids and as names."""
    table = hierarchy.path_table(classes)
    print(hierarchy)
    for name, path in zip(classes, table.tolist(), strict=True):
        names = [hierarchy.id_to_name(level, i) if i >= 0 else "-" for level, i in enumerate(path)]
        print(f"  {name:<10} {str(path):<12} {' / '.join(names)}")


def train(root: Path, hierarchy: LabelHierarchy, args: argparse.Namespace) -> float:
    torch.manual_seed(args.seed)
    transform = SimCLRTransform(input_size=args.image_size, gaussian_blur=0.0)
    dataset = HierarchicalImageFolder(root, hierarchy, transform=transform)
    describe(hierarchy, dataset.classes)
    loader = DataLoader(
        dataset, batch_size=min(args.batch_size, len(dataset)), shuffle=True, drop_last=True
    )
    backbone, feature_dim = create_backbone(args.backbone)
    model = nn.Sequential(backbone, SimCLRProjectionHead(feature_dim, feature_dim, 32))
    criterion = HMLCLoss(loss_type="hmce", temperature=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = torch.tensor(math.nan)
    step = 0
    while step < args.steps:
        for (x0, x1), labels in loader:  # labels: [B, L] label paths
            loss = criterion(model(x0), model(x1), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            print(f"step {step}: loss {loss.item():.4f}")
            if step == args.steps:
                break
    print(f"final loss: {loss.item():.5f}")
    return float(loss.item())


def show_mismatches(work: Path, hierarchy: LabelHierarchy) -> None:
    """The errors you get when the hierarchy file and the folders disagree."""

    def attempt(title: str, build: Callable[[], object]) -> None:
        print(f"\n* {title}")
        try:
            build()
        except (ValueError, FileNotFoundError) as error:
            print(f"  {type(error).__name__}: {error}")
        else:
            print("  (no error)")

    # A folder whose name is not in the file (a typo).
    typo = work / "typo"
    write_image_folder(typo, hierarchy, images_per_class=1)
    (typo / "sparrow").rename(typo / "sparow")
    attempt(
        "A class folder missing from the hierarchy ('sparow' instead of 'sparrow'):",
        lambda: HierarchicalImageFolder(typo, hierarchy),
    )

    # A folder named after an inner node of the tree.
    inner = work / "inner"
    write_image_folder(inner, hierarchy, images_per_class=1)
    (inner / "cat").rename(inner / "mammal")
    attempt(
        "A class folder that is an inner node ('mammal'), not a leaf:",
        lambda: HierarchicalImageFolder(inner, hierarchy),
    )

    # A leaf of the file without a folder: an error, unless a subset is intended.
    subset = work / "subset"
    write_image_folder(subset, hierarchy, images_per_class=1)
    for image in (subset / "truck").iterdir():
        image.unlink()
    (subset / "truck").rmdir()
    attempt(
        "A leaf of the hierarchy ('truck') without a class folder:",
        lambda: HierarchicalImageFolder(subset, hierarchy),
    )
    attempt(
        "The same with strict=False (train on a subset of the leaves):",
        lambda: print(f"  {len(HierarchicalImageFolder(subset, hierarchy, strict=False))} images"),
    )

    two_parents = work / "two_parents.txt"
    two_parents.write_text("mammal cat\nbird cat\n", encoding="utf-8")
    attempt("A class with two parents in the edge list:", lambda: LabelHierarchy.load(two_parents))

    bad_line = work / "bad_line.txt"
    bad_line.write_text("animal mammal cat\n", encoding="utf-8")
    attempt("A line with three names:", lambda: LabelHierarchy.load(bad_line))

    cycle = work / "cycle.json"
    cycle.write_text(
        json.dumps({"format": "lightly_hmlc.hierarchy/v1", "parents": {"a": "b", "b": "a"}}),
        encoding="utf-8",
    )
    attempt("A cycle:", lambda: LabelHierarchy.load(cycle))

    attempt("A hierarchy file that does not exist:", lambda: LabelHierarchy.load(work / "nope.txt"))


def main(args: argparse.Namespace) -> float:
    if args.root is not None:  # the user's own data
        hierarchy = LabelHierarchy.load(args.hierarchy)
        return train(Path(args.root), hierarchy, args)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out_dir) if args.out_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        edge_file = work / "hierarchy.txt"
        json_file = work / "hierarchy.json"
        edge_file.write_text(EDGE_LIST, encoding="utf-8")
        json_file.write_text(json.dumps(NESTED, indent=2) + "\n", encoding="utf-8")
        hierarchy = LabelHierarchy.load(edge_file)
        same = hierarchy == LabelHierarchy.load(json_file)
        print(f"edge list and JSON give the same hierarchy: {same}")
        root = work / "images"
        write_image_folder(root, hierarchy, args.images_per_class, args.seed)
        print(f"wrote {root} ({len(hierarchy.leaves)} classes) and {edge_file.name}")
        loss = train(root, hierarchy, args)
        show_mismatches(work / "mismatch", hierarchy)
    return loss


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="Your ImageFolder root (one folder per fine class).")
    parser.add_argument("--hierarchy", help="Your hierarchy file (edge list, or .json).")
    parser.add_argument("--out-dir", help="Write the demo files here instead of a temp dir.")
    parser.add_argument("--images-per-class", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--backbone", default="resnet_tiny_cifar")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.root is None) != (args.hierarchy is None):
        parser.error("--root and --hierarchy go together: give both, or neither for the demo.")
    return args


if __name__ == "__main__":
    main(parse_args())
