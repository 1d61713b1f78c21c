"""Datasets of the benchmark suite, and the seeded two-view training loader.

A dataset is an entry of ``DATASETS``: a function of the parsed arguments that returns
a :class:`DatasetBundle`. Datasets with a ``lightly_hmlc.data`` loader and a train/test
split are rows of ``IMAGE_DATASETS`` (one builder for all); add a row, or an entry, to
benchmark your own data. Every builder goes through :func:`_bundle_from_splits`, which
carves the validation part out of the train split (``--val-fraction``) and picks the
evaluated split (``--eval-split``).

Randomness: every sample's augmentation is seeded by ``(seed, epoch, index)`` and every
epoch's order by ``(seed, epoch)`` (:class:`SeededViews`, :class:`TagEpoch`), so that
all methods of one seed see the same batches, a run does not depend on the number of
data workers, and a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightly.transforms import SimCLRTransform
from lightly.transforms.utils import IMAGENET_NORMALIZE
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import transforms as T

from lightly_hmlc import LabelHierarchy
from lightly_hmlc.data import Relabeled


class UserError(Exception):
    """Bad input: printed as one line ``error: ...`` (exit code 2), without a traceback."""


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

    ``mild=True`` is for datasets whose labels live in outline, fill and size (the
    synthetic shapes): crops keep at least 85% of the image (so the size classes
    survive), and there is no colour jitter and no grayscale (each shape family has its
    own, overlapping, hue: a hint that they would erase); flips stay. Small images get no Gaussian blur and half-strength colour jitter, as in
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


def _with_hierarchy(make: Callable[..., Any], args: argparse.Namespace) -> Callable[..., Any]:
    """Wraps a dataset factory so that ``--hierarchy`` (if given) relabels its datasets."""
    if args.hierarchy is None:
        return make
    hierarchy = LabelHierarchy.load(args.hierarchy)
    where = f"the --hierarchy file {args.hierarchy!r}"
    return lambda *a, **k: Relabeled(make(*a, **k), hierarchy, strict=args.strict, where=where)


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


@dataclass(frozen=True)
class ImageDataset:
    """A row of ``IMAGE_DATASETS``: a ``lightly_hmlc.data`` loader with a train/test split.

    Attributes:
        loader: Class name in ``lightly_hmlc.data``, called as
            ``loader(root, train=..., transform=..., **loader_kwargs)``.
        data_name: File or folder looked up under ``$LIGHTLY_HMLC_DATA_DIR``.
        input_size: Default ``--input-size``.
        normalize: Mean and std of the images.
        in_chans: Image channels.
        transform_kwargs: Arguments of :func:`image_transforms` (augmentation strength).
        loader_kwargs: Extra arguments of the loader.
    """

    loader: str
    data_name: str
    input_size: int
    normalize: dict[str, list[float]]
    in_chans: int = 3
    transform_kwargs: dict[str, Any] = field(default_factory=dict)
    loader_kwargs: dict[str, Any] = field(default_factory=dict)


IMAGE_DATASETS: dict[str, ImageDataset] = {
    # CIFAR-100 with its 20 superclasses (the python release, cifar-100-python/).
    "cifar100": ImageDataset("CIFAR100Hierarchical", "cifar100", 32, _CIFAR_NORMALIZE),
    # CIFAR-10 with a built-in 2-level hierarchy (python release or a JPEG tree).
    "cifar10": ImageDataset("CIFAR10Hierarchical", "cifar10", 32, _CIFAR_NORMALIZE),
    # MNIST digits (stroke-shape groups): not flip- or colour-invariant, so no flips, no
    # colour jitter or grayscale; crops keep at least half; small rotations (+-15 deg).
    "mnist": ImageDataset(
        "MNISTHierarchical",
        "mnist.npz",
        28,
        {"mean": [0.1307], "std": [0.3081]},
        in_chans=1,
        transform_kwargs=dict(
            flips=False,
            min_scale=0.5,
            cj_prob=0.0,
            random_gray_scale=0.0,
            rr_prob=0.5,
            rr_degrees=15.0,
        ),
        loader_kwargs={"image_mode": "L"},
    ),
}


def build_image_dataset(spec: ImageDataset, args: argparse.Namespace) -> DatasetBundle:
    """The one builder of every ``IMAGE_DATASETS`` row."""
    import lightly_hmlc.data

    loader = getattr(lightly_hmlc.data, spec.loader)
    root = _data_dir(args, spec.data_name)
    size = args.input_size or spec.input_size
    train_t, eval_t = image_transforms(size, spec.normalize, **spec.transform_kwargs)

    def make(train: bool, transform: Callable[[Any], Any]) -> Any:
        return loader(root, train=train, transform=transform, **spec.loader_kwargs)

    make = _with_hierarchy(make, args)
    return _bundle_from_splits(make, args, train_t, eval_t, size, in_chans=spec.in_chans)


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
        return HierarchicalImageFolder(split, hierarchy, transform=transform, strict=args.strict)

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
    **{name: functools.partial(build_image_dataset, spec) for name, spec in IMAGE_DATASETS.items()},
    "imagefolder": build_imagefolder,
    "modelnet40": build_modelnet40,
}


def build_dataset(args: argparse.Namespace) -> DatasetBundle:
    """Calls the ``DATASETS`` builder; missing or mismatching data becomes a UserError."""
    if args.dataset not in DATASETS:
        raise UserError(f"Unknown --dataset {args.dataset!r}; choose one of {sorted(DATASETS)}.")
    try:
        return DATASETS[args.dataset](args)
    except UserError:
        raise
    except (OSError, ValueError) as error:  # missing files, hierarchy mismatches
        # The loaders' advice names their argument; the CLI's is the flag.
        message = str(error).replace("pass strict=False", "pass --no-strict")
        raise UserError(f"Cannot load dataset {args.dataset!r}: {message}") from error
    except ImportError as error:
        raise UserError(
            f"Dataset {args.dataset!r} needs a loader that this installation of lightly_hmlc "
            f"lacks: {error}"
        ) from error


# ---------------------------------------------------------------------- data loading
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
    """Wraps a batch sampler: yields ``(epoch, index)`` pairs for :class:`SeededViews`.

    :meth:`skip` drops the first batches of one epoch: a run resumed from a checkpoint
    written inside an epoch continues with the batch after the last trained one.
    """

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches)

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

    def skip(self, epoch: int, batches: int) -> None:
        """The next iteration over ``epoch`` leaves out its first ``batches`` batches."""
        self._skip = (epoch, batches)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        skip = self._skip[1] if self._skip is not None and self._skip[0] == epoch else 0
        self._skip = None
        for position, batch in enumerate(self.batch_sampler):
            if position >= skip:  # skipped batches load no sample
                yield [(epoch, int(index)) for index in batch]


class ResumableLoader(DataLoader[Any]):
    """A DataLoader with Lightning's ``state_dict``/``load_state_dict`` (``_Stateful``).

    Lightning stores ``state_dict()`` in every checkpoint. Its position is the number of
    batches the trainer has finished in the epoch (from ``position``), not what the
    loader has prefetched. Lightning 2.6 does not call ``load_state_dict`` when the
    loader was created early (``estimated_stepping_batches`` in ``configure_optimizers``
    does), so :class:`SuiteDataModule` restores the same position itself.
    """

    def __init__(self, *args: Any, position: Callable[[], dict[str, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "batches": b}``: ``b`` batches of epoch ``e`` are trained."""
        return self._position()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Makes the next pass over the saved epoch start after its trained batches."""
        assert isinstance(self.batch_sampler, TagEpoch)
        self.batch_sampler.skip(int(state_dict["epoch"]), int(state_dict["batches"]))


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
    """The training loader; shards by rank itself (works with ddp and ddp_spawn).

    Its state in a checkpoint is the position inside the epoch, so that a run resumed
    from a checkpoint written inside an epoch skips the batches it has trained on.
    """

    def __init__(
        self,
        bundle: DatasetBundle,
        batch_size: int,
        num_workers: int,
        seed: int,
        hierarchical_sampler: bool,
        sampler_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.bundle = bundle
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.hierarchical_sampler = hierarchical_sampler
        self.sampler_options = dict(sampler_options or {})
        self._resume_position: dict[str, int] | None = None

    def position(self) -> dict[str, int]:
        """Where a resumed run starts: the epoch and how many of its batches are trained.

        An epoch that has ended (all batches, or stopped by ``should_stop``, e.g.
        ``--max-time``, which Lightning counts as a finished epoch) gives the next one.
        """
        trainer = self.trainer
        assert trainer is not None, "the DataModule is used by a Trainer"
        completed = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        if completed >= trainer.num_training_batches or trainer.should_stop:
            return {"epoch": int(trainer.current_epoch) + 1, "batches": 0}
        return {"epoch": int(trainer.current_epoch), "batches": completed}

    def state_dict(self) -> dict[str, Any]:
        """The position inside the epoch (saved in every checkpoint)."""
        return self.position() if self.trainer is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remembers the position; the next loader starts there."""
        self._resume_position = dict(state_dict) if state_dict else None

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
                **self.sampler_options,
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
        # On resume Lightning creates this loader (and, with workers, starts prefetching)
        # in configure_optimizers, before it restores the epoch counter, and keeps its
        # iterator for the resumed epoch: the epoch must come from the saved position.
        epoch = trainer.current_epoch
        if self._resume_position is not None:
            epoch = self._resume_position["epoch"]
            tagged.skip(epoch, self._resume_position["batches"])
            self._resume_position = None
        tagged.set_epoch(epoch)
        return ResumableLoader(
            SeededViews(self.bundle.train, self.seed),
            batch_sampler=tagged,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            position=self.position,
        )
