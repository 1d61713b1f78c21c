"""How ``HierarchicalBatchSampler`` shares its batches among imbalanced coarse classes.

Builds the label paths of the long-tailed 3-level CIFAR-10 (``lab.py
prepare-cifar10-lt3``: 4 vehicle classes of 100 training images, 6 animal classes of 500,
vehicle > {air/water, road} > class, animal > {mammal, other} > class) without reading
any image, and prints, per ``top_level_shares`` rule, one epoch's vehicle share of the
batches' samples, the mean uses per image and epoch, and the share of animal images an
epoch never uses:

    python benchmarks/lab/sampler_shares.py [--batch-size 128] [--seed 0]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from lab import CIFAR10_LT3_TRAIN_PER_CLASS, CIFAR10_LT3_TREE

from lightly_hmlc.data import HierarchicalBatchSampler
from lightly_hmlc.data.sampler import TOP_LEVEL_SHARES


def lt3_label_paths() -> torch.Tensor:
    """``[N, 3]`` label paths of the long-tailed set, coarse to fine, vehicles first."""
    rows: list[list[int]] = []
    middle = leaf = 0
    for top, (root, groups) in enumerate(CIFAR10_LT3_TREE.items()):
        for classes in groups.values():
            for _ in classes:
                rows += [[top, middle, leaf]] * CIFAR10_LT3_TRAIN_PER_CLASS[root]
                leaf += 1
            middle += 1
    return torch.tensor(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = lt3_label_paths()
    vehicle = paths[:, 0] == 0
    print(
        "| top_level_shares | vehicle share of the samples | uses per vehicle image | "
        "uses per animal image | animal images unused |"
    )
    print("|---|---|---|---|---|")
    for rule in TOP_LEVEL_SHARES:
        sampler = HierarchicalBatchSampler(
            paths, args.batch_size, seed=args.seed, top_level_shares=rule
        )
        used = Counter(i for batch in sampler for i in batch)
        uses = torch.tensor([used[i] for i in range(len(paths))], dtype=torch.float64)
        share = uses[vehicle].sum() / uses.sum()
        unused = (uses[~vehicle] == 0).double().mean()
        print(
            f"| {rule} | {100 * share:.1f} % | {uses[vehicle].mean():.2f} | "
            f"{uses[~vehicle].mean():.2f} | {100 * unused:.1f} % |"
        )


if __name__ == "__main__":
    main()
