"""Benchmark suite: hierarchical contrastive learning methods on one dataset, many seeds.

Every method of ``METHODS`` pretrains the same backbone on the same two-view batches;
afterwards the frozen backbone's features are extracted once and probed at every level
of the label hierarchy (``evaluate.py``: linear probe, kNN, NMI, hierarchical metrics).
Each run writes ``<output-dir>/<dataset>/<method>/seed<k>/`` with ``config.json``,
``environment.json``, ``metrics.json``, ``metrics.md``, plots and checkpoints; the suite
ends with a per-level table of every method (mean ± std over seeds).

Usage::

    python benchmarks/main.py                     # all 8 methods on synthetic shapes, CPU
    python benchmarks/main.py --methods hmce,a-hmlc --seeds 0,1,2
    python benchmarks/main.py --preset cifar100-paper --data-dir data/cifar-100-python \\
        --accelerator gpu --devices 4 --strategy ddp --precision bf16-mixed
    python benchmarks/main.py --dataset imagefolder --data-dir /data/birds \\
        --hierarchy birds_tree.txt --backbone resnet50 --input-size 224
    python benchmarks/main.py --resume auto       # continue interrupted runs
    python benchmarks/main.py compare runs/shapes  # table of finished runs

A dataset is an entry of ``DATASETS``: a function of the parsed arguments that returns a
:class:`DatasetBundle`; add an entry to benchmark your own data. Presets (``--preset``)
set defaults that explicit arguments override; see ``PRESETS.md``.

Randomness: ``seed_everything(seed, workers=True)`` seeds the model; every sample's
augmentation is seeded by ``(seed, epoch, index)`` and every epoch's order by
``(seed, epoch)``, so a run does not depend on the number of data workers, and a run
resumed from a checkpoint sees exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import compare
import methods
import numpy as np
import pytorch_lightning as pl
import torch
from evaluate import (
    evaluate_features,
    extract_features,
    format_metrics_table,
    plot_embeddings,
    plot_training_curves,
)
from lightly.transforms import SimCLRTransform
from lightly.transforms.utils import IMAGENET_NORMALIZE
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import transforms as T

from lightly_hmlc import LabelHierarchy

REPO_ROOT = Path(__file__).resolve().parent.parent


class UserError(Exception):
    """Bad input: printed as one message (exit code 2), without a traceback."""


# ============================================================================ datasets
@dataclass
class DatasetBundle:
    """What a dataset builder returns.

    Attributes:
        train: Training samples ``([view0, view1], label_path)`` (a two-view transform).
        train_eval: The same training samples with the evaluation transform,
            ``(tensor, label_path)``; the probes train on their features.
        test_eval: Test samples with the evaluation transform.
        hierarchy: The label hierarchy of the label paths.
        input_size: Image size (or depth-view resolution) the backbone sees.
        in_chans: Image channels.
        encoder: ``"image"``, or ``"depth_views"`` for point clouds.
        encoder_kwargs: Extra ``DepthViewEncoder`` arguments for ``"depth_views"``.
        train_label_paths: ``[N, L]`` label paths of ``train`` (for
            ``--hierarchical-sampler``), if known without loading the samples.
    """

    train: Dataset[Any]
    train_eval: Dataset[Any]
    test_eval: Dataset[Any]
    hierarchy: LabelHierarchy
    input_size: int
    in_chans: int = 3
    encoder: str = "image"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    train_label_paths: Tensor | None = None
    split: dict[str, Any] = field(default_factory=dict)


def image_transforms(
    input_size: int,
    normalize: dict[str, list[float]],
    mild: bool = False,
    flips: bool = True,
    **simclr_kwargs: Any,
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """Lightly's ``SimCLRTransform`` for training and resize + normalise for evaluation.

    ``mild=True`` is for datasets whose labels live in colour and size (the synthetic
    shapes): crops keep at least 85% of the image (so the size classes survive), and
    there is no colour jitter and no grayscale (colour tells the coarse classes apart);
    flips stay. Small images get no Gaussian blur and half-strength colour jitter, as in
    Lightly's CIFAR-10 benchmark.
    """
    kwargs: dict[str, Any] = dict(
        input_size=input_size,
        gaussian_blur=0.0 if input_size <= 64 else 0.5,
        hf_prob=0.5 if flips else 0.0,
        normalize=normalize,
    )
    if input_size <= 64:
        kwargs.update(cj_strength=0.5)  # Lightly's setting for 32x32 CIFAR
    if mild:
        kwargs.update(min_scale=0.85, cj_prob=0.0, random_gray_scale=0.0)
    kwargs.update(simclr_kwargs)
    train = SimCLRTransform(**kwargs)
    # Small images are only resized; large ones resized by 8/7 and centre-cropped.
    resize = input_size if input_size <= 64 else int(input_size * 8 / 7)
    evaluation = T.Compose(
        [
            T.Resize(resize),
            T.CenterCrop(input_size),
            T.ToTensor(),
            T.Normalize(mean=normalize["mean"], std=normalize["std"]),
        ]
    )
    return train, evaluation


def subset_indices(total: int, size: int | None, seed: int = 0) -> list[int] | None:
    """A fixed random subset of ``size`` of ``range(total)`` (``None``: all samples)."""
    if size is None or size >= total:
        return None
    if size < 1:
        raise UserError(f"--train-samples/--test-samples must be >= 1, got {size}.")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=generator)[:size].tolist())


def validation_split(paths: Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Splits ``range(len(paths))`` into ``(validation, rest)``, stratified by fine class.

    The fine class of a sample is its whole label path. Every class gives
    ``fraction`` of its samples, rounded by largest remainder so that the validation
    part has exactly ``round(fraction * N)`` samples. The split depends only on
    ``paths``, ``fraction`` and ``seed`` (``--data-seed``), never on a training seed.

    Examples:
        >>> paths = torch.tensor([[0, 0]] * 10 + [[1, 1]] * 10)
        >>> val, rest = validation_split(paths, 0.2, seed=0)
        >>> len(val), len(rest), sorted(paths[val, 1].tolist())
        (4, 16, [0, 0, 1, 1])
    """
    total = len(paths)
    if fraction == 0:
        return [], list(range(total))
    num_val = round(fraction * total)
    if not 1 <= num_val < total:
        raise UserError(
            f"--val-fraction {fraction} of {total} training samples gives {num_val} "
            "validation samples; choose a fraction that leaves both parts non-empty."
        )
    _, strata_t = torch.unique(paths, dim=0, return_inverse=True)
    strata = strata_t.numpy()
    counts = np.bincount(strata)
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    # A stream of its own: the subsets of --train-samples use torch's generator.
    rng = np.random.default_rng([seed, 0x5A1])
    by_remainder = np.lexsort((rng.random(len(counts)), -(quota - take)))
    take[by_remainder[: num_val - int(take.sum())]] += 1
    order = rng.permutation(total)
    grouped = order[np.argsort(strata[order], kind="stable")]
    starts = np.cumsum(counts) - counts
    rank = np.empty(total, dtype=np.int64)
    rank[grouped] = np.arange(total) - starts[strata[grouped]]
    is_val = rank < take[strata]
    return np.flatnonzero(is_val).tolist(), np.flatnonzero(~is_val).tolist()


def _maybe_subset(dataset: Dataset[Any], indices: list[int] | None) -> Dataset[Any]:
    return dataset if indices is None else Subset(dataset, indices)


def _label_paths(dataset: Any, indices: list[int] | None) -> Tensor | None:
    paths = getattr(dataset, "label_paths", None)
    if not isinstance(paths, Tensor):
        return None
    return paths if indices is None else paths[torch.as_tensor(indices)]


def _bundle_from_splits(
    make: Callable[..., Any],
    args: argparse.Namespace,
    train_transform: Callable[[Any], Any],
    eval_transform: Callable[[Any], Any] | None,
    input_size: int,
    in_chans: int = 3,
    **bundle_kwargs: Any,
) -> DatasetBundle:
    """Builds the datasets from ``make(train: bool, transform)``: split and subsets.

    The validation part (``--val-fraction`` of the train split, stratified, fixed by
    ``--data-seed``) is never trained on. The model trains on (a ``--train-samples``
    subset of) the rest; ``--eval-split val`` probes on the validation part,
    ``--eval-split test`` on (a ``--test-samples`` subset of) the test split.
    """
    train = make(True, train_transform)
    train_eval = make(True, eval_transform)
    paths = _label_paths(train, None)
    if paths is None and args.val_fraction > 0:
        raise UserError(
            "--val-fraction needs the label paths of the training set (a label_paths "
            "table, which every lightly_hmlc dataset has); pass --val-fraction 0."
        )
    val_idx, rest = (
        validation_split(paths, args.val_fraction, args.data_seed)
        if (paths is not None)
        else ([], list(range(len(train))))
    )
    picked = subset_indices(len(rest), args.train_samples, args.data_seed)
    train_idx = rest if picked is None else [rest[i] for i in picked]
    if args.eval_split == "val":
        picked = subset_indices(len(val_idx), args.test_samples, args.data_seed)
        evaluated: Dataset[Any] = Subset(
            train_eval, val_idx if picked is None else [val_idx[i] for i in picked]
        )
    else:
        test_eval = make(False, eval_transform)
        evaluated = _maybe_subset(
            test_eval, subset_indices(len(test_eval), args.test_samples, args.data_seed)
        )
    all_train = len(train_idx) == len(train)
    split = {
        "eval_split": args.eval_split,
        "val_fraction": args.val_fraction,
        "data_seed": args.data_seed,
        "train_split_size": len(train),
        "val_size": len(val_idx),
        "train_size": len(train_idx),
        "eval_size": len(evaluated),  # type: ignore[arg-type]
    }
    return DatasetBundle(
        train=train if all_train else Subset(train, train_idx),
        train_eval=train_eval if all_train else Subset(train_eval, train_idx),
        test_eval=evaluated,
        hierarchy=train.hierarchy,
        input_size=input_size,
        in_chans=in_chans,
        train_label_paths=_label_paths(train, None if all_train else train_idx),
        split=split,
        **bundle_kwargs,
    )


class Relabeled(Dataset[Any]):
    """A dataset's samples with the label paths of another hierarchy (``--hierarchy``).

    Works for every dataset with ``classes`` (fine class names) and ``targets`` (fine
    class index per sample). The hierarchy's leaves must be the dataset's classes.
    """

    def __init__(self, dataset: Any, hierarchy: LabelHierarchy) -> None:
        from lightly_hmlc.data import check_classes_match

        check_classes_match(dataset.classes, hierarchy, where="the --hierarchy file")
        self.dataset = dataset
        self.hierarchy = hierarchy
        self.classes = list(dataset.classes)
        table = hierarchy.path_table(self.classes)
        self.label_paths = table[torch.as_tensor(list(dataset.targets))]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Tensor]:
        sample = self.dataset[index][0]
        return sample, self.label_paths[index].clone()


def _with_hierarchy(make: Callable[..., Any], args: argparse.Namespace) -> Callable[..., Any]:
    """Wraps a dataset factory so that ``--hierarchy`` (if given) relabels its datasets."""
    if args.hierarchy is None:
        return make
    hierarchy = LabelHierarchy.load(args.hierarchy)
    return lambda *a, **k: Relabeled(make(*a, **k), hierarchy)


def _data_dir(args: argparse.Namespace, name: str) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir)
    env = os.environ.get("LIGHTLY_HMLC_DATA_DIR")
    if env:
        return Path(env) / name
    raise UserError(
        f"--dataset needs --data-dir: the folder (or file) holding the data, or set "
        f"LIGHTLY_HMLC_DATA_DIR to a folder that contains '{name}'."
    )


def build_shapes(args: argparse.Namespace) -> DatasetBundle:
    """Synthetic coloured shapes (3 levels: family, fill, size), generated in memory.

    ``--train-samples`` / ``--test-samples`` set how many images are generated. Images
    are 16x16 unless ``--input-size`` says otherwise: four times cheaper than the
    dataset's native 32x32, and the three levels stay learnable.
    """
    from lightly_hmlc.data import ShapesDataset

    size = args.input_size or 16
    train_t, eval_t = image_transforms(size, {"mean": [0.5] * 3, "std": [0.25] * 3}, mild=True)
    wanted = args.train_samples or 2000
    fraction = args.val_fraction
    sizes = {
        True: wanted + round(wanted * fraction / (1 - fraction)),
        False: args.test_samples or 1000,
    }

    def make(train: bool, transform: Callable[[Any], Any]) -> Any:
        return ShapesDataset(
            num_samples=sizes[train],
            image_size=size,
            seed=args.data_seed,
            split="train" if train else "test",
            transform=transform,
        )

    make = _with_hierarchy(make, args)
    # Generated exactly: the train split is the training set plus its validation part.
    return _bundle_from_splits(make, args, train_t, eval_t, size)


_CIFAR_NORMALIZE = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def build_cifar100(args: argparse.Namespace) -> DatasetBundle:
    """CIFAR-100 with its 20 superclasses (the python release, ``cifar-100-python/``)."""
    from lightly_hmlc.data import CIFAR100Hierarchical

    root = _data_dir(args, "cifar100")
    size = args.input_size or 32
    train_t, eval_t = image_transforms(size, _CIFAR_NORMALIZE)

    def make(train: bool, transform: Callable[[Any], Any]) -> Any:
        return CIFAR100Hierarchical(root, train=train, transform=transform)

    make = _with_hierarchy(make, args)

    return _bundle_from_splits(make, args, train_t, eval_t, size)


def build_cifar10(args: argparse.Namespace) -> DatasetBundle:
    """CIFAR-10 with a built-in 2-level hierarchy (python release or a JPEG tree)."""
    from lightly_hmlc.data import CIFAR10Hierarchical

    root = _data_dir(args, "cifar10")
    size = args.input_size or 32
    train_t, eval_t = image_transforms(size, _CIFAR_NORMALIZE)

    def make(train: bool, transform: Callable[[Any], Any]) -> Any:
        return CIFAR10Hierarchical(root, train=train, transform=transform)

    make = _with_hierarchy(make, args)

    return _bundle_from_splits(make, args, train_t, eval_t, size)


def build_mnist(args: argparse.Namespace) -> DatasetBundle:
    """MNIST digits (stroke-shape groups over digits); grey, milder augmentation.

    Digits are not flip- or colour-invariant: no flips, no colour jitter or grayscale,
    crops keep at least half of the image, small rotations (+-15 degrees).
    """
    from lightly_hmlc.data import MNISTHierarchical

    root = _data_dir(args, "mnist.npz")
    size = args.input_size or 28
    train_t, eval_t = image_transforms(
        size,
        {"mean": [0.1307], "std": [0.3081]},
        flips=False,
        min_scale=0.5,
        cj_prob=0.0,
        random_gray_scale=0.0,
        rr_prob=0.5,
        rr_degrees=15.0,
    )

    def make(train: bool, transform: Callable[[Any], Any]) -> Any:
        return MNISTHierarchical(root, train=train, transform=transform, image_mode="L")

    make = _with_hierarchy(make, args)

    return _bundle_from_splits(make, args, train_t, eval_t, size, in_chans=1)


def build_imagefolder(args: argparse.Namespace) -> DatasetBundle:
    """``<data-dir>/{train,test}/<class>/<image>`` with a hierarchy file (``--hierarchy``)."""
    if args.hierarchy is None:
        raise UserError(
            "--dataset imagefolder needs --hierarchy FILE: an edge list ('parent child' per "
            "line) or a JSON tree whose leaves are the class folder names."
        )
    from lightly_hmlc.data import HierarchicalImageFolder

    root = _data_dir(args, "imagefolder")
    size = args.input_size or 224
    train_t, eval_t = image_transforms(size, IMAGENET_NORMALIZE)
    hierarchy = LabelHierarchy.load(args.hierarchy)

    def make(train: bool, transform: Callable[[Any], Any]) -> Any:
        split = root / ("train" if train else "test")
        return HierarchicalImageFolder(split, hierarchy, transform=transform)

    return _bundle_from_splits(make, args, train_t, eval_t, size)


def build_modelnet40(args: argparse.Namespace) -> DatasetBundle:
    """ModelNet40 point clouds, encoded by the backbone on depth images (SimpleView)."""
    from lightly_hmlc.data import ModelNet40Hierarchical, TwoViewPointCloudTransform

    root = _data_dir(args, "modelnet40")
    hierarchy = None if args.hierarchy is None else LabelHierarchy.load(args.hierarchy)

    def make(train: bool, transform: Callable[[Any], Any] | None) -> Any:
        return ModelNet40Hierarchical(
            root,
            split="train" if train else "test",
            num_points=args.num_points,
            hierarchy=hierarchy,
            transform=transform,
        )

    resolution = args.input_size or 32
    encoder_kwargs = {"num_views": args.num_views, "resolution": resolution, "fuse": args.view_fuse}
    return _bundle_from_splits(
        make,
        args,
        TwoViewPointCloudTransform(num_points=args.num_points),
        None,
        resolution,
        encoder="depth_views",
        encoder_kwargs=encoder_kwargs,
    )


DATASETS: dict[str, Callable[[argparse.Namespace], DatasetBundle]] = {
    "shapes": build_shapes,
    "cifar100": build_cifar100,
    "cifar10": build_cifar10,
    "mnist": build_mnist,
    "imagefolder": build_imagefolder,
    "modelnet40": build_modelnet40,
}


# ============================================================================ data loading
class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches of this rank's shard; the order depends only on (seed, epoch).

    Drops the incomplete last batch, so that every rank has the same batch size (the
    distributed losses need it).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.num_samples // self.num_replicas) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator)
        shard = order[self.rank :: self.num_replicas][: self.num_samples // self.num_replicas]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield shard[start : start + self.batch_size].tolist()


class TagEpoch(Sampler[list[tuple[int, int]]]):
    """Wraps a batch sampler: yields ``(epoch, index)`` pairs for :class:`SeededViews`."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.epoch = 0

    @property
    def sampler(self) -> TagEpoch:
        """Itself: Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler`` only
        (never on the batch sampler), so without it every epoch would repeat epoch 0."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Forwards the epoch to the wrapped sampler and tags the next batches with it."""
        self.epoch = epoch
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        for batch in self.batch_sampler:
            yield [(epoch, int(index)) for index in batch]


class SeededViews(Dataset[Any]):
    """Loads ``dataset[index]`` with all RNGs seeded by ``(seed, epoch, index)``.

    The random augmentation of a sample is then a function of the run's seed, the epoch
    and the index only; the caller's RNG states are restored afterwards.
    """

    def __init__(self, dataset: Dataset[Any], seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = _mix(self.seed, epoch, index)
        # Only the CPU generator: torch.manual_seed would also seed every GPU (slow).
        torch_state, py_state = torch.get_rng_state(), random.getstate()
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)  # not restored: saving numpy's state costs 0.1 ms
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(py_state)


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (a tuple of ints hashes the same in every process)."""
    return hash(tuple(int(v) for v in values)) & (2**63 - 1)


class SuiteDataModule(pl.LightningDataModule):
    """The training loader; shards by rank itself (works with ddp and ddp_spawn)."""

    def __init__(
        self,
        bundle: DatasetBundle,
        batch_size: int,
        num_workers: int,
        seed: int,
        hierarchical_sampler: bool,
    ) -> None:
        super().__init__()
        self.bundle = bundle
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.hierarchical_sampler = hierarchical_sampler

    def train_dataloader(self) -> DataLoader[Any]:
        """Seeded per-epoch batches of ``batch_size / world_size`` samples per rank."""
        trainer = self.trainer
        assert trainer is not None, "the DataModule is used by a Trainer"
        world, rank = trainer.world_size, trainer.global_rank
        per_device = self.batch_size // world
        batch_sampler: Any
        if self.hierarchical_sampler:
            from lightly_hmlc.data import HierarchicalBatchSampler

            assert self.bundle.train_label_paths is not None
            batch_sampler = HierarchicalBatchSampler(
                self.bundle.train_label_paths,
                per_device,
                num_replicas=world,
                rank=rank,
                seed=self.seed,
            )
        else:
            batch_sampler = EpochBatchSampler(
                len(self.bundle.train),  # type: ignore[arg-type]
                per_device,
                seed=self.seed,
                num_replicas=world,
                rank=rank,
            )
        tagged = TagEpoch(batch_sampler)
        # On resume Lightning creates the iterator before it sets the epoch.
        tagged.set_epoch(trainer.current_epoch)
        return DataLoader(
            SeededViews(self.bundle.train, self.seed),
            batch_sampler=tagged,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )


# ============================================================================ records
class RunRecorder(pl.Callback):
    """Per-epoch loss history, training time and samples (all kept in checkpoints).

    Rank 0 writes ``train_stats.json`` at the end of training, which the process that
    evaluates reads back (so that it works with ``ddp_spawn`` too). Times and samples
    add up over resumed invocations. ``images_per_second`` counts source images (each
    gives two augmented views) per second of the training epochs (checkpointing
    excluded), over all devices.
    """

    def __init__(self, run_dir: Path, global_batch_size: int) -> None:
        self.run_dir = run_dir
        self.global_batch_size = global_batch_size
        self.history: dict[str, list[float]] = {}
        self.totals = {"wall_seconds": 0.0, "epoch_seconds": 0.0, "samples": 0}
        self._previous = dict(self.totals)
        self._start = self._epoch_start = 0.0
        self._start_step = 0

    @property
    def state_key(self) -> str:
        """One recorder per trainer."""
        return "RunRecorder"

    def state_dict(self) -> dict[str, Any]:
        """The loss history and totals, so that a resumed run reports all epochs."""
        return {"history": self.history, "totals": self.totals}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the loss history and totals."""
        self.history = {k: list(v) for k, v in state_dict.get("history", {}).items()}
        self.totals.update(state_dict.get("totals", {}))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Starts the clocks and resets the CUDA peak-memory counter."""
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._previous = dict(self.totals)
        self._start = time.perf_counter()
        self._start_step = trainer.global_step

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Times the epoch (excluding checkpointing at its end)."""
        self._synchronize(pl_module)
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Records the epoch's mean logged values (``train/*``) and the totals."""
        self._synchronize(pl_module)
        now = time.perf_counter()
        self.totals["epoch_seconds"] += now - self._epoch_start
        self._update_totals(trainer, now)
        metrics = trainer.callback_metrics
        for key, value in sorted(metrics.items()):
            # A value logged on step and epoch appears as key, key_step and key_epoch.
            if not key.startswith("train/") or key.endswith("_step") or f"{key}_epoch" in metrics:
                continue
            self.history.setdefault(key.removesuffix("_epoch"), []).append(float(value))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Writes ``train_stats.json`` (rank 0)."""
        self._synchronize(pl_module)
        self._update_totals(trainer, time.perf_counter())
        if pl_module.device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
            peak_kind = "cuda_max_memory_allocated"
        else:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            peak_kind = "process_max_rss"
        seconds = self.totals["epoch_seconds"]
        stats = {
            **self.totals,
            "images_per_second": self.totals["samples"] / seconds if seconds else 0.0,
            "peak_memory_mb": peak_mb,
            "peak_memory_kind": peak_kind,
            "epochs_completed": trainer.current_epoch,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "history": self.history,
        }
        if trainer.is_global_zero:
            _write_json(self.run_dir / "train_stats.json", stats)

    def _update_totals(self, trainer: pl.Trainer, now: float) -> None:
        steps = trainer.global_step - self._start_step
        self.totals["wall_seconds"] = self._previous["wall_seconds"] + now - self._start
        self.totals["samples"] = int(self._previous["samples"]) + steps * self.global_batch_size

    @staticmethod
    def _synchronize(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)


def environment_info(seed: int) -> dict[str, Any]:
    """Package versions, Python, seed, git commit and machine of this run."""
    versions: dict[str, str | None] = {}
    for package in ("torch", "torchvision", "lightly", "timm", "pytorch_lightning", "lightly_hmlc"):
        try:
            versions[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            module = sys.modules.get(package)
            versions[package] = getattr(module, "__version__", None)
    machine: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_num_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
    }
    return {
        "packages": versions,
        "python": platform.python_version(),
        "seed": seed,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if (status := _git("status", "--porcelain")) is None else bool(status),
        "machine": machine,
    }


def _git(*command: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# ============================================================================ one run
@dataclass
class RunResult:
    """What one (method, seed) run produced (rank 0 only)."""

    method: str
    seed: int
    run_dir: Path
    metrics: dict[str, Any]


def run_label(args: argparse.Namespace, method: str) -> str:
    """The run's name: the method, and ``--run-name`` as a suffix (``hmce-tau0.2``)."""
    return method if not args.run_name else f"{method}-{args.run_name}"


def run_dir_of(args: argparse.Namespace, method: str, seed: int) -> Path:
    """``<output-dir>/<dataset>/<method>[-<run-name>]/seed<k>``."""
    return Path(args.output_dir) / args.dataset / run_label(args, method) / f"seed{seed}"


def _resume_checkpoint(args: argparse.Namespace, run_dir: Path) -> str | None:
    if args.resume is None:
        return None
    if args.resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    return str(args.resume)


def run_one(
    args: argparse.Namespace,
    bundle: DatasetBundle,
    method: str,
    seed: int,
    extra_callbacks: Sequence[pl.Callback] = (),
) -> RunResult | None:
    """Trains ``method`` with ``seed``, evaluates it and writes the run's records.

    Returns ``None`` on ranks other than 0.
    """
    run_dir = run_dir_of(args, method, seed)
    ckpt_path = _resume_checkpoint(args, run_dir)
    if ckpt_path is None and (run_dir / "checkpoints").exists() and not args.overwrite:
        raise UserError(
            f"{run_dir} already holds a run. Pass --resume auto to continue (or re-evaluate) "
            "it, --overwrite to replace it, or another --output-dir."
        )
    if ckpt_path is not None:
        try:
            methods.check_checkpoint_file(
                ckpt_path,
                method=method,
                backbone=args.backbone,
                num_classes_per_level=bundle.hierarchy.num_classes_per_level,
            )
        except (FileNotFoundError, methods.CheckpointMismatchError) as error:
            raise UserError(str(error)) from error
    elif args.overwrite:
        for stale in ("checkpoints/last.ckpt", "train_stats.json", "metrics.json"):
            (run_dir / stale).unlink(missing_ok=True)

    pl.seed_everything(seed, workers=True)
    recorder = RunRecorder(run_dir, args.batch_size)
    callbacks: list[pl.Callback] = [
        *extra_callbacks,
        recorder,
        ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0),
    ]
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        max_time=_parse_max_time(args.max_time),
        accelerator=args.accelerator,
        devices=_parse_devices(args.devices),
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        deterministic=_parse_deterministic(args.deterministic),
        callbacks=callbacks,
        # logs/version_<n>/metrics.csv: a resumed invocation adds a version.
        logger=CSVLogger(save_dir=run_dir, name="logs"),
        default_root_dir=run_dir,
        use_distributed_sampler=False,  # SuiteDataModule shards by rank itself
        enable_progress_bar=args.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    world = trainer.world_size
    if args.batch_size % world != 0:
        raise UserError(
            f"--batch-size {args.batch_size} is the global batch size; it must be divisible "
            f"by the number of processes ({world})."
        )
    per_rank_samples = len(bundle.train) // world  # type: ignore[arg-type]
    steps_per_epoch = per_rank_samples // (args.batch_size // world)
    if steps_per_epoch < 1:
        raise UserError(
            f"The training set has {len(bundle.train)} samples, fewer than one batch of "  # type: ignore[arg-type]
            f"--batch-size {args.batch_size}; lower --batch-size or raise --train-samples."
        )
    if args.hierarchical_sampler:
        _check_hierarchical_sampler(bundle, args.batch_size // world, world)
    mask_warmup, mask_refit = methods.default_mask_schedule(steps_per_epoch * args.epochs)
    model = build_model(
        args,
        method,
        num_classes_per_level=bundle.hierarchy.num_classes_per_level,
        backbone=args.backbone,
        in_chans=bundle.in_chans,
        img_size=bundle.input_size,
        encoder=bundle.encoder,
        encoder_kwargs=bundle.encoder_kwargs or None,
        proj_dim=args.proj_dim,
        temperature=args.temperature,
        optimizer=args.optimizer,
        lr=args.lr,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        gather_distributed=world > 1,
        mask_warmup_steps=mask_warmup,
        mask_refit_every=mask_refit,
    )
    if world > 1 and trainer.strategy.root_device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    datamodule = SuiteDataModule(
        bundle, args.batch_size, args.num_workers, seed, args.hierarchical_sampler
    )
    if trainer.is_global_zero:
        config = dict(vars(args), method=method, seed=seed, run_dir=str(run_dir))
        config.update(world_size=world, resumed_from=ckpt_path)
        _write_json(run_dir / "config.json", config)
        _write_json(run_dir / "environment.json", environment_info(seed))
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except OSError as error:  # an unreadable file, raised by the dataset
        raise UserError(_last_line(error)) from error
    if not trainer.is_global_zero:
        return None
    return evaluate_run(args, bundle, model, method, seed, run_dir, trainer)


def build_model(args: argparse.Namespace, method: str, **kwargs: Any) -> methods.HierarchicalMethod:
    """The method's LightningModule with ``--loss-option``/``--head-option``; bad options
    become a UserError naming the flag."""
    loss_options = parse_options(args.loss_option, "--loss-option")
    head_options = parse_options(args.head_option, "--head-option")
    if loss_options or head_options:
        kwargs.update(loss_options=loss_options, head_options=head_options)
    try:
        return methods.create_method(method, **kwargs)
    except (TypeError, ValueError) as error:
        given = [*args.loss_option, *args.head_option]
        options = f" (options {given})" if given else ""
        raise UserError(f"Cannot build method {method!r}{options}: {error}") from error


def parse_options(values: Sequence[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings to a dict; VALUE is JSON if it parses, else a string.

    Examples:
        >>> parse_options(["temperature=0.2", "layer_penalty=exp", "x=[1, 2]"], "--loss-option")
        {'temperature': 0.2, 'layer_penalty': 'exp', 'x': [1, 2]}
    """
    options: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"{flag} takes KEY=VALUE with a Python name as KEY, got {value!r}.")
        if key in options:
            raise UserError(f"{flag} {key} is given twice; give each key once.")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def _check_hierarchical_sampler(bundle: DatasetBundle, per_device: int, world: int) -> None:
    """Builds the sampler once here, so that a bad setting fails before training."""
    if bundle.train_label_paths is None:
        raise UserError(
            "--hierarchical-sampler needs the label paths of the training set: give the "
            "dataset a label_paths table (every lightly_hmlc dataset has one)."
        )
    from lightly_hmlc.data import HierarchicalBatchSampler

    try:
        HierarchicalBatchSampler(bundle.train_label_paths, per_device, num_replicas=world)
    except ValueError as error:
        raise UserError(f"--hierarchical-sampler: {error}") from error


def evaluate_run(
    args: argparse.Namespace,
    bundle: DatasetBundle,
    model: methods.HierarchicalMethod,
    method: str,
    seed: int,
    run_dir: Path,
    trainer: pl.Trainer,
) -> RunResult:
    """Probes the frozen backbone and writes metrics.json, metrics.md and the plots."""
    stats_path = run_dir / "train_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    history = stats.pop("history", {})
    device = "cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu"
    begin = time.perf_counter()
    try:
        train_x, train_y = extract_features(
            model.backbone, bundle.train_eval, args.eval_batch_size, args.num_workers, device
        )
        test_x, test_y = extract_features(
            model.backbone, bundle.test_eval, args.eval_batch_size, args.num_workers, device
        )
    except OSError as error:
        raise UserError(_last_line(error)) from error
    extract_seconds = time.perf_counter() - begin
    results = evaluate_features(
        train_x,
        train_y,
        test_x,
        test_y,
        bundle.hierarchy,
        probe_epochs=args.probe_epochs,
        knn_k=min(args.knn_k, len(train_x)),
        hdist_k=min(5, len(bundle.hierarchy.leaves)),
        seed=seed,
        device=device,
    )
    train = {f"train/{key}": value for key, value in stats.items()}
    train["train/complete"] = int(stats.get("epochs_completed", 0)) >= args.epochs
    record: dict[str, Any] = {
        "run": {
            "dataset": args.dataset,
            "method": method,
            "name": run_label(args, method),
            "seed": seed,
            "backbone": args.backbone,
            "epochs": args.epochs,
            "global_step": trainer.global_step,
            "loss_options": parse_options(args.loss_option, "--loss-option"),
            "head_options": parse_options(args.head_option, "--head-option"),
        },
        "split": bundle.split,
        "train": train,
        "eval": {"eval/extract_seconds": extract_seconds, **results},
    }
    _write_json(run_dir / "metrics.json", record)
    title = (
        f"# {run_label(args, method)} on {args.dataset} ({args.eval_split} split), seed {seed}, "
        f"backbone {args.backbone}\n\n"
    )
    training = (
        f"\n\nTraining: {stats.get('wall_seconds', 0.0):.1f} s, "
        f"{stats.get('images_per_second', 0.0):.1f} images/s, "
        f"{stats.get('epochs_completed', 0)}/{args.epochs} epochs, peak memory "
        f"{stats.get('peak_memory_mb', 0.0):.0f} MB ({stats.get('peak_memory_kind', '?')}).\n"
    )
    table = format_metrics_table({method: results})
    (run_dir / "metrics.md").write_text(title + table + training)
    if args.plots:
        plot_embeddings(test_x, test_y, bundle.hierarchy, run_dir / "embeddings.png", seed=seed)
        if any(history.values()):
            plot_training_curves(history, run_dir / "training_curves.png")
    return RunResult(method, seed, run_dir, record)


def _last_line(error: BaseException) -> str:
    text = str(error).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker
        text = text.splitlines()[-1]
    return text


def _parse_devices(value: str) -> int | str | list[int]:
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    try:
        return int(value)
    except ValueError:
        return value


def _parse_deterministic(value: str) -> bool | Literal["warn"]:
    if value == "warn":
        return "warn"
    return value == "true"


def _parse_max_time(value: str | None) -> dict[str, int] | None:
    """``DD:HH:MM:SS``, ``HH:MM:SS`` or minutes."""
    if value is None:
        return None
    parts = [int(p) for p in value.split(":")]
    if len(parts) == 1:
        return {"minutes": parts[0]}
    parts = [0] * (4 - len(parts)) + parts
    return dict(zip(("days", "hours", "minutes", "seconds"), parts, strict=True))


# ============================================================================ suite
def run_suite(
    args: argparse.Namespace, extra_callbacks: Sequence[pl.Callback] = ()
) -> list[RunResult]:
    """Runs every method and seed of ``args``; prints and returns the results (rank 0)."""
    check_args(args)
    names = resolve_methods(args.methods)
    seeds = _parse_seeds(args.seeds)
    if args.resume not in (None, "auto") and len(names) * len(seeds) != 1:
        raise UserError(
            "--resume PATH continues one run: give one method and one seed, or use "
            "--resume auto to continue every run from its own last checkpoint."
        )
    bundle = build_dataset(args)
    results: list[RunResult] = []
    for method in names:
        for seed in seeds:
            result = run_one(args, bundle, method, seed, extra_callbacks)
            if result is not None:
                results.append(result)
    if results:
        table = compare.format_table(compare.aggregate([r.metrics for r in results]))
        summary = Path(args.output_dir) / args.dataset / "summary.md"
        summary.write_text(table + "\n")
        print(f"\n{args.dataset}: {len(results)} runs, records under {summary.parent}\n")
        print(table)
    return results


def check_args(args: argparse.Namespace) -> None:
    """Refuses values that no run can use, before any data is loaded."""
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {args.val_fraction}.")
    if args.eval_split == "val" and args.val_fraction == 0:
        raise UserError("--eval-split val needs a validation part: give --val-fraction > 0.")
    if args.run_name is not None and not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9_.=+-]*", args.run_name
    ):
        raise UserError(
            f"--run-name {args.run_name!r} names a folder: use letters, digits and '_.=+-'."
        )
    parse_options(args.loss_option, "--loss-option")
    parse_options(args.head_option, "--head-option")


def build_dataset(args: argparse.Namespace) -> DatasetBundle:
    """Calls the ``DATASETS`` builder; missing or mismatching data becomes a UserError."""
    if args.dataset not in DATASETS:
        raise UserError(f"Unknown --dataset {args.dataset!r}; choose one of {sorted(DATASETS)}.")
    try:
        return DATASETS[args.dataset](args)
    except UserError:
        raise
    except (OSError, ValueError) as error:  # missing files, hierarchy mismatches
        raise UserError(f"Cannot load dataset {args.dataset!r}: {error}") from error
    except ImportError as error:
        raise UserError(
            f"Dataset {args.dataset!r} needs a loader that this installation of lightly_hmlc "
            f"lacks: {error}"
        ) from error


def resolve_methods(value: str) -> list[str]:
    """``all`` or a comma list of ``METHODS`` names."""
    known = methods.method_names()
    if value.strip() == "all":
        return known
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise UserError(f"Unknown method(s) {unknown}; choose from {known} or 'all'.")
    return names


def _parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError as error:
        raise UserError(f"--seeds must be a comma list of integers, got {value!r}.") from error
    if not seeds:
        raise UserError("--seeds is empty; give e.g. --seeds 0,1,2.")
    return seeds


# ============================================================================ CLI
PRESETS: dict[str, dict[str, Any]] = {
    # The parser defaults: all methods on synthetic shapes in a few CPU minutes.
    "small": {},
    # See PRESETS.md: the targets, and which values are our guesses.
    "cifar100-paper": {
        "dataset": "cifar100",
        "backbone": "resnet50_cifar",
        "epochs": 500,
        "batch_size": 512,
        "lr": 0.25,  # 0.5 at batch 512 (linear scaling from 256)
        "temperature": 0.1,
        "optimizer": "sgd",
        "weight_decay": 1e-4,
        "warmup_epochs": 10.0,
        "probe_epochs": 100,
        "train_samples": None,
        "test_samples": None,
        "num_workers": 8,
    },
    "modelnet40-paper": {
        "dataset": "modelnet40",
        "backbone": "resnet18",
        "input_size": 64,
        "num_views": 6,
        "view_fuse": "concat",
        "num_points": 1024,
        "epochs": 250,
        "batch_size": 512,
        "lr": 0.25,
        "temperature": 0.1,
        "optimizer": "sgd",
        "weight_decay": 1e-4,
        "warmup_epochs": 10.0,
        "probe_epochs": 100,
        "train_samples": None,
        "test_samples": None,
        "num_workers": 8,
    },
}


def build_parser() -> argparse.ArgumentParser:
    """The command line (defaults = the ``small`` preset)."""
    p = argparse.ArgumentParser(
        description="Benchmark hierarchical contrastive learning methods.",
        epilog="python benchmarks/main.py compare RUN_DIRS... aggregates finished runs.",
    )
    add = p.add_argument
    add("--preset", default="small", choices=sorted(PRESETS), help="defaults to start from")
    add("--methods", default="all", help="comma list of methods or 'all' (see --list-methods)")
    add("--list-methods", action="store_true", help="print the methods (baselines and losses)")
    add("--run-name", default=None, help="suffix of the run folder: <method>-<run-name>")
    add(
        "--loss-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loss argument (repeatable); VALUE is JSON, else a string",
    )
    add(
        "--head-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="mask-head argument of g-hmlc / a-hmlc (repeatable)",
    )
    add("--dataset", default="shapes", help=f"one of {sorted(DATASETS)}")
    add("--data-dir", default=None, help="dataset folder or file (or $LIGHTLY_HMLC_DATA_DIR)")
    add("--hierarchy", default=None, help="hierarchy file: edge list or JSON")
    add("--backbone", default="resnet_tiny_cifar", help="timm model name")
    add("--input-size", type=int, default=None, help="image size / depth-view resolution")
    add("--num-points", type=int, default=1024, help="points per cloud (modelnet40)")
    add("--num-views", type=int, default=6, help="depth views per cloud (modelnet40)")
    add("--view-fuse", default="mean", choices=["mean", "max", "concat"])
    add("--epochs", type=int, default=6)
    add("--batch-size", type=int, default=128, help="global batch size (all devices)")
    add("--optimizer", default="sgd", choices=list(methods.OPTIMIZERS))
    add("--lr", type=float, default=0.5, help="learning rate at batch 256, scaled linearly")
    add("--weight-decay", type=float, default=5e-4)
    add("--warmup-epochs", type=float, default=1.0)
    add("--temperature", type=float, default=0.1)
    add("--proj-dim", type=int, default=128, help="projection head output width")
    add("--seeds", default="0", help="comma list; each seed is one run")
    add("--data-seed", type=int, default=0, help="seed of subsets and synthetic data")
    add("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    add("--accelerator", default="auto")
    add("--devices", default="auto")
    add("--strategy", default="auto", help="e.g. ddp, ddp_spawn")
    add("--num-nodes", type=int, default=1)
    add("--num-workers", type=int, default=0)
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add("--deterministic", default="warn", choices=["true", "warn", "false"])
    add("--hierarchical-sampler", action="store_true", help="HierarchicalBatchSampler")
    add("--train-samples", type=int, default=None, help="random training subset size")
    add("--test-samples", type=int, default=None, help="random subset of the evaluated split")
    add(
        "--eval-split",
        default="test",
        choices=["test", "val"],
        help="probe on the test split, or on the validation part of train",
    )
    add(
        "--val-fraction",
        type=float,
        default=0.1,
        help="part of train held out as validation (never trained on); 0: none",
    )
    add("--probe-epochs", type=int, default=30)
    add("--knn-k", type=int, default=20)
    add("--eval-batch-size", type=int, default=256)
    add("--output-dir", default="runs")
    add("--resume", default=None, help="checkpoint path, or 'auto' (each run's last.ckpt)")
    add("--overwrite", action="store_true", help="replace existing runs")
    add("--max-time", default=None, help="stop training after DD:HH:MM:SS (or minutes)")
    add("--progress-bar", action=argparse.BooleanOptionalAction, default=True)
    add("--plots", action=argparse.BooleanOptionalAction, default=True, help="write the PNGs")
    add("--traceback", action="store_true", help="show the traceback of bad-input errors")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses ``argv``; the preset's values replace the defaults, explicit args win."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[known.preset])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the suite (or ``compare``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare.main(argv[1:])
    args = parse_args(argv)
    if args.list_methods:
        print("\n".join(methods.method_names()))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        run_suite(args)
    except UserError as error:
        if args.traceback:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
