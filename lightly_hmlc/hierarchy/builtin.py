"""The built-in taxonomies, all in one place, as plain nested dicts.

Every dataset of :mod:`lightly_hmlc.data` takes its default hierarchy from here, and
:meth:`LabelHierarchy.builtin <lightly_hmlc.hierarchy.LabelHierarchy.builtin>` (or the
``LabelHierarchy.cifar100()`` style shortcuts) builds the tree. The data is kept free of
the tree class so that it can be read, diffed and reused without importing torch code.

=============  ==============================================  =========================
name           levels (classes per level)                      source
=============  ==============================================  =========================
``cifar100``   20 superclasses -> 100 classes                  official dataset meta
``cifar10``    vehicle / animal -> 10 classes                  our grouping
``mnist``      loop / straight / curve -> 10 digits            our grouping
``shapes``     3 families -> 6 fills -> 12 sizes               :class:`ShapesDataset`
``modelnet40`` 6 groups -> 40 categories                       our grouping
=============  ==============================================  =========================

Examples:
    >>> sorted(BUILTIN)
    ['cifar10', 'cifar100', 'mnist', 'modelnet40', 'shapes']
    >>> BUILTIN["mnist"]["straight"]
    ('1', '4', '7')
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "BUILTIN",
    "CIFAR100_SUPERCLASSES",
    "CIFAR10_GROUPS",
    "MNIST_GROUPS",
    "MODELNET40_GROUPS",
    "SHAPE_FAMILIES",
    "SHAPE_FILLS",
    "SHAPE_SIZES",
]

#: Official CIFAR-100 superclasses and their fine classes (the dataset's meta files).
CIFAR100_SUPERCLASSES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
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
)

#: CIFAR-10 in two groups (our choice); the fine names are CIFAR-10's official ones.
CIFAR10_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "vehicle": ("airplane", "automobile", "ship", "truck"),
        "animal": ("bird", "cat", "deer", "dog", "frog", "horse"),
    }
)

#: MNIST digits grouped by stroke shape (our choice): a closed loop, straight strokes
#: only, or open curves. Digit names are "0".."9", so leaf ids equal the digits.
MNIST_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "loop": ("0", "6", "8", "9"),
        "straight": ("1", "4", "7"),
        "curve": ("2", "3", "5"),
    }
)

#: The three levels of the synthetic Shapes data: family, fill, size. A fine class is
#: ``<family>_<fill>_<size>``; the renderer in ``data/shapes.py`` reads these tuples.
SHAPE_FAMILIES: tuple[str, ...] = ("disc", "square", "triangle")
SHAPE_FILLS: tuple[str, ...] = ("hollow", "solid")
SHAPE_SIZES: tuple[str, ...] = ("large", "small")

#: Our coarse grouping of the 40 ModelNet40 categories (every category in one group).
MODELNET40_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # Pieces of furniture one sits, sleeps on or stores things in.
        "furniture": (
            "bed",
            "bench",
            "bookshelf",
            "chair",
            "desk",
            "dresser",
            "night_stand",
            "sofa",
            "stool",
            "table",
            "tv_stand",
            "wardrobe",
        ),
        # Vessels that hold something.
        "containers": ("bottle", "bowl", "cup", "flower_pot", "glass_box", "vase"),
        # Vehicles, electronics and appliances.
        "machines": (
            "airplane",
            "car",
            "keyboard",
            "laptop",
            "monitor",
            "radio",
            "range_hood",
            "xbox",
        ),
        # Parts and fixtures of buildings, and shelters.
        "architecture": (
            "bathtub",
            "curtain",
            "door",
            "mantel",
            "sink",
            "stairs",
            "tent",
            "toilet",
        ),
        # Musical instruments and other household objects.
        "instruments_and_objects": ("cone", "guitar", "lamp", "piano"),
        # People and plants.
        "living_things": ("person", "plant"),
    }
)


def _shapes() -> dict[str, Any]:
    return {
        family: {
            f"{family}_{fill}": tuple(f"{family}_{fill}_{size}" for size in SHAPE_SIZES)
            for fill in SHAPE_FILLS
        }
        for family in SHAPE_FAMILIES
    }


#: Every built-in taxonomy as a nested dict (the input of ``LabelHierarchy.from_nested``).
# Every table here is read-only (a mapping proxy of tuples), so that no caller can change
# a built-in taxonomy for everyone else in the process.
BUILTIN: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "cifar100": CIFAR100_SUPERCLASSES,
        "cifar10": CIFAR10_GROUPS,
        "mnist": MNIST_GROUPS,
        "shapes": MappingProxyType(_shapes()),
        "modelnet40": MODELNET40_GROUPS,
    }
)
