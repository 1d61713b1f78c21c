"""A batch sampler that gives every anchor positives at every level of a label hierarchy."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from lightly_hmlc.label_paths import check_label_paths

__all__ = ["HierarchicalBatchSampler", "TOP_LEVEL_SHARES"]

#: How a batch shares its groups among the top-level classes (``top_level_shares``).
TOP_LEVEL_SHARES = ("equal", "frequency")


class HierarchicalBatchSampler(Sampler[list[int]]):
    """Composes batches so that every anchor has positives at every level.

    In uniform random batches most fine-level anchors find no positive. This sampler builds
    every batch from groups, one per drawn top-level class: at every inner node of the
    label tree it draws ``classes_per_parent`` children, at every reached leaf it takes
    ``samples_per_class`` samples, and leaves already in the batch fill what groups leave.

    Classes are drawn by their unused samples this epoch (uniformly with
    ``class_balanced``); a batch's top-level classes are distinct until each has a group,
    then ``top_level_shares="equal"`` gives each the same share and ``"frequency"`` follows
    the data. ``shuffle=False`` is deterministic round-robin. An epoch has
    ``N // batch_size`` batches (``ceil`` without ``drop_last``); under DDP every rank
    computes the same batches from ``(seed, epoch)`` and keeps every ``num_replicas``-th.

    Examples:
        >>> paths = torch.tensor([[c, 2 * c + f] for c in range(2) for f in range(2)] * 4)
        >>> batch = next(iter(HierarchicalBatchSampler(paths, batch_size=8, seed=0)))
        >>> sorted(paths[batch, 1].tolist())
        [0, 0, 1, 1, 2, 2, 3, 3]
    """

    def __init__(
        self,
        label_paths: Tensor | np.ndarray | Sequence[Sequence[int]],
        batch_size: int,
        samples_per_class: int = 2,
        classes_per_parent: int = 2,
        drop_last: bool = True,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        class_balanced: bool = False,
        skip_small_classes: bool = False,
        top_level_shares: str = "equal",
    ) -> None:
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("samples_per_class", samples_per_class, 2),
            ("classes_per_parent", classes_per_parent, 2),
            ("num_replicas", num_replicas, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(
                f"rank must be an integer in 0..num_replicas - 1 = {num_replicas - 1}, "
                f"got {rank!r}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        if top_level_shares not in TOP_LEVEL_SHARES:
            raise ValueError(
                f"top_level_shares must be one of {TOP_LEVEL_SHARES}, got {top_level_shares!r}."
            )
        paths = _as_paths(label_paths)
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.classes_per_parent = classes_per_parent
        self.drop_last = drop_last
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.class_balanced = class_balanced
        self.skip_small_classes = skip_small_classes
        self.top_level_shares = top_level_shares
        self.epoch = 0
        self._tree = _Tree(paths, samples_per_class if skip_small_classes else 1)
        if self._tree.num_samples == 0:
            raise ValueError(
                "No usable sample: every label path is all -1"
                + (
                    f" or its class has fewer than samples_per_class={samples_per_class} "
                    "samples (skip_small_classes=True)"
                    if skip_small_classes
                    else ""
                )
                + "."
            )
        largest = self._tree.max_group_size(samples_per_class, classes_per_parent)
        if batch_size < largest:
            raise ValueError(
                f"batch_size={batch_size} is too small: one group (one top-level class, "
                f"{classes_per_parent} classes per parent at each of the "
                f"{self._tree.num_levels - 1} lower levels, {samples_per_class} samples per "
                f"class) needs up to {largest} samples. Use batch_size >= {largest}, or lower "
                "classes_per_parent or samples_per_class."
            )
        num = self._tree.num_samples
        total = num // batch_size if drop_last else math.ceil(num / batch_size)
        self._per_rank = total // num_replicas if drop_last else math.ceil(total / num_replicas)
        if self._per_rank == 0:
            raise ValueError(
                f"Too few samples: {num} usable samples make {total} batch(es) of "
                f"{batch_size}, fewer than num_replicas={num_replicas}; lower batch_size or "
                "pass drop_last=False."
            )

    @property
    def num_samples(self) -> int:
        return self._tree.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch; with ``shuffle=True`` each epoch has different batches."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._per_rank

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        state = _EpochState(
            self._tree,
            rng if self.shuffle else None,
            self.class_balanced,
            by_frequency=self.top_level_shares == "frequency",
        )
        total = self._per_rank * self.num_replicas
        for position in range(total):
            batch = state.compose(self.batch_size, self.samples_per_class, self.classes_per_parent)
            if position % self.num_replicas == self.rank:
                yield batch

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, "
            f"batch_size={self.batch_size}, samples_per_class={self.samples_per_class}, "
            f"classes_per_parent={self.classes_per_parent}, "
            f"top_level_shares={self.top_level_shares!r}, num_batches={len(self)}, "
            f"rank={self.rank}/{self.num_replicas})"
        )


def _as_paths(label_paths: Any) -> np.ndarray:
    # The sampler runs once per epoch on the host, so it can afford the value checks.
    tensor = check_label_paths(
        torch.as_tensor(label_paths),
        name="label_paths",
        allow_class_ids=True,
        check_values=True,
        known_prefix=True,
    )
    return tensor.cpu().numpy()


class _Tree:
    """The label tree: nodes are path prefixes, leaves hold sample indices."""

    def __init__(self, paths: np.ndarray, min_leaf_size: int) -> None:
        self.num_levels = paths.shape[1]
        known = (paths >= 0).sum(1)
        usable = np.nonzero(known > 0)[0]
        # Leaves: distinct truncated paths (the -1 padding keeps them distinct).
        keys, inverse = np.unique(paths[usable], axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(keys))
        members = np.split(usable[order], np.cumsum(counts)[:-1]) if len(keys) else []
        index_of: dict[tuple[int, ...], int] = {(): 0}
        self.children: list[list[int]] = [[]]
        self.parent: list[int] = [-1]
        self.members: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        for key, member in zip(keys.tolist(), members, strict=True):
            if len(member) < min_leaf_size:
                continue
            depth = sum(1 for value in key if value >= 0)
            parent = 0
            for level in range(depth):
                prefix = tuple(key[: level + 1])
                node = index_of.get(prefix)
                if node is None:
                    node = len(self.parent)
                    index_of[prefix] = node
                    self.parent.append(parent)
                    self.children.append([])
                    self.members.append(np.zeros(0, dtype=np.int64))
                    self.children[parent].append(node)
                parent = node
            self.members[parent] = member
        for node in range(len(self.parent)):
            if len(self.members[node]) and self.children[node]:
                # Samples whose path stops at an inner node get a leaf beside its children.
                leaf = len(self.parent)
                self.parent.append(node)
                self.children.append([])
                self.members.append(self.members[node])
                self.children[node].append(leaf)
                self.members[node] = np.zeros(0, dtype=np.int64)
        self.num_samples = int(sum(len(m) for m in self.members))
        # Subtree sizes, children before parents (nodes were created parents first).
        self.size = np.array([len(m) for m in self.members], dtype=np.int64)
        for node in range(len(self.parent) - 1, 0, -1):
            self.size[self.parent[node]] += self.size[node]

    def max_group_size(self, per_class: int, per_parent: int) -> int:
        def group(node: int) -> int:
            kids = self.children[node]
            if not kids:
                return per_class
            return sum(sorted((group(kid) for kid in kids), reverse=True)[:per_parent])

        return max((group(top) for top in self.children[0]), default=per_class)


class _EpochState:
    def __init__(
        self,
        tree: _Tree,
        rng: np.random.Generator | None,
        balanced: bool,
        by_frequency: bool = False,
    ) -> None:
        self.tree = tree
        self.rng = rng
        self.balanced = balanced
        self.by_frequency = by_frequency
        self.queues: dict[int, deque[int]] = {}
        # Unused samples under every node this epoch; all queues start full.
        self.remaining = tree.size.astype(np.float64)
        for leaf, members in enumerate(tree.members):
            if len(members):
                self.queues[leaf] = deque(self._order(members))
        self.pointer = [0] * len(tree.parent)
        self.used_tops: set[int] = set()

    def _order(self, members: np.ndarray) -> list[int]:
        return (self.rng.permutation(members) if self.rng is not None else members).tolist()

    def _choose(self, options: list[int], k: int, node: int) -> list[int]:
        if k >= len(options):
            return list(options)
        if self.rng is None:
            start = self.pointer[node]
            self.pointer[node] = (start + k) % len(options)
            return [options[(start + i) % len(options)] for i in range(k)]
        if self.balanced:
            weights = np.ones(len(options))
        else:
            # +1 keeps exhausted classes possible; they refill when drawn.
            weights = self.remaining[options] + 1.0
        if k == 1:
            cumulative = np.cumsum(weights)
            pick = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], "right"))
            return [options[min(pick, len(options) - 1)]]
        # Weighted sampling without replacement: the k largest Gumbel-perturbed log-weights.
        keys = np.log(weights) + self.rng.gumbel(size=len(options))
        picks = np.argpartition(-keys, k - 1)[:k]
        return [options[int(i)] for i in np.sort(picks)]

    def _frequent_top(self, tops: list[int]) -> int:
        # By unused samples; without randomness the one with the most (the first on ties).
        if self.rng is None:
            return max(tops, key=lambda top: self.remaining[top])
        (top,) = self._choose(tops, 1, 0)
        return top

    def _group(self, node: int, per_class: int, per_parent: int) -> list[int]:
        kids = self.tree.children[node]
        if not kids:
            return [node]
        leaves: list[int] = []
        for kid in self._choose(kids, per_parent, node):
            leaves.extend(self._group(kid, per_class, per_parent))
        return leaves

    def _take(self, leaf: int, count: int, taken: dict[int, list[int]]) -> None:
        members = self.tree.members[leaf]
        queue = self.queues[leaf]
        batch_taken = taken.setdefault(leaf, [])
        for _ in range(count):
            if not queue:
                fresh = self._order(members)
                # Samples already in this batch go last, so a refill adds no duplicate.
                seen = set(batch_taken)
                queue.extend([i for i in fresh if i not in seen] + [i for i in fresh if i in seen])
                self._update(leaf, len(members))
            batch_taken.append(queue.popleft())
            self._update(leaf, -1)

    def _update(self, leaf: int, delta: int) -> None:
        node = leaf
        while node >= 0:
            self.remaining[node] += delta
            node = self.tree.parent[node]

    def compose(self, batch_size: int, per_class: int, per_parent: int) -> list[int]:
        tops = self.tree.children[0]
        taken: dict[int, list[int]] = {}
        used = 0
        if self.rng is not None:
            # Distinct top-level classes within a batch; round-robin keeps its cycle instead.
            self.used_tops.clear()
        every_top_in = False  # has every top-level class a group in this batch?
        while True:
            fresh_tops = [top for top in tops if top not in self.used_tops]
            if not fresh_tops:
                self.used_tops.clear()
                fresh_tops = list(tops)
                every_top_in = True
            if every_top_in and self.by_frequency:
                top = self._frequent_top(tops)
            elif self.rng is None or len(fresh_tops) == 1:
                top = fresh_tops[0]  # round-robin: the unused classes in sorted order
            else:
                (top,) = self._choose(fresh_tops, 1, 0)
            leaves = self._group(top, per_class, per_parent)
            if used + per_class * len(leaves) > batch_size:
                break  # this top-level class is not marked used: it opens a later batch
            if not (every_top_in and self.by_frequency):
                self.used_tops.add(top)
            for leaf in leaves:
                self._take(leaf, per_class, taken)
            used += per_class * len(leaves)
        # Fill the rest with one more sample from leaves already in the batch.
        in_batch = list(taken)
        if self.rng is not None:
            in_batch = [in_batch[int(i)] for i in self.rng.permutation(len(in_batch))]
        position = 0
        while used < batch_size:
            self._take(in_batch[position % len(in_batch)], 1, taken)
            position += 1
            used += 1
        batch = [index for indices in taken.values() for index in indices]
        if self.rng is not None:
            batch = [batch[int(i)] for i in self.rng.permutation(len(batch))]
        return batch
