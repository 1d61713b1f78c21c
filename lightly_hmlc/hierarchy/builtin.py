"""The built-in taxonomies as read-only nested dicts; ``LabelHierarchy.builtin(name)`` (or
``LabelHierarchy.cifar100()``, ...) builds the tree.
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

#: MNIST digits by stroke shape (our choice); names "0".."9", so leaf ids are the digits.
MNIST_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"loop": ("0", "6", "8", "9"), "straight": ("1", "4", "7"), "curve": ("2", "3", "5")}
)

#: The levels of the Shapes data; a fine class is ``<family>_<fill>_<size>``.
SHAPE_FAMILIES: tuple[str, ...] = ("disc", "square", "triangle")
SHAPE_FILLS: tuple[str, ...] = ("hollow", "solid")
SHAPE_SIZES: tuple[str, ...] = ("large", "small")

#: Our coarse grouping of the 40 ModelNet40 categories (every category in one group).
# fmt: off
MODELNET40_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "furniture": (
            "bed", "bench", "bookshelf", "chair", "desk", "dresser", "night_stand", "sofa",
            "stool", "table", "tv_stand", "wardrobe",
        ),
        "containers": ("bottle", "bowl", "cup", "flower_pot", "glass_box", "vase"),
        "machines": (
            "airplane", "car", "keyboard", "laptop", "monitor", "radio", "range_hood", "xbox",
        ),
        "architecture": (
            "bathtub", "curtain", "door", "mantel", "sink", "stairs", "tent", "toilet",
        ),
        "instruments_and_objects": ("cone", "guitar", "lamp", "piano"),
        "living_things": ("person", "plant"),
    }
)
# fmt: on


def _shapes() -> dict[str, Any]:
    return {
        family: {
            f"{family}_{fill}": tuple(f"{family}_{fill}_{size}" for size in SHAPE_SIZES)
            for fill in SHAPE_FILLS
        }
        for family in SHAPE_FAMILIES
    }


#: Every built-in taxonomy as a read-only nested dict (for ``LabelHierarchy.from_nested``).
BUILTIN: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "cifar100": CIFAR100_SUPERCLASSES,
        "cifar10": CIFAR10_GROUPS,
        "mnist": MNIST_GROUPS,
        "shapes": MappingProxyType(_shapes()),
        "modelnet40": MODELNET40_GROUPS,
    }
)
