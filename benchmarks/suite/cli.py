"""The command line of the suite: presets, flags, variants, and the checks of their values.

Every bad value ends as a :class:`datasets.UserError`, which ``main.py`` prints as one
line ``error: ...`` with exit code 2. Values are checked before any data is loaded.

``--methods`` takes methods or variants, ``NAME=METHOD:KEY=VALUE:KEY=VALUE``
(:class:`Variant`): keys go to the loss (``--loss-option``), ``head.KEY`` to the mask
head (``--head-option``), ``suite.KEY`` to the suite's own flag ``--KEY`` for that
variant (``suite.temperature=0.2``; a switch takes ``true``, as in
``suite.hierarchical-sampler=true``, and ``false`` leaves it out). Values are JSON when
they parse as JSON, else strings: ``hmce-t=hmce:temperature=[0.2,0.1]`` gives the loss
per-level temperatures (coarse to fine). A variant's runs go to
``<output-dir>/<dataset>/<NAME>/seed<k>``.

Presets: ``small`` (the defaults), the papers' recipes, and the lab's data sets at its
budgets (``mnist-cpu``, ``cifar10-lt3-gpu``, ...: :data:`LAB_DATASETS` x
:data:`BUDGETS`), which ``lab/lab.py run`` names for its ``--dataset`` and ``--budget``.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib.util
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import methods
import timm
from datasets import DATASETS, UserError
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Timer
from run import parse_options

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
HIERARCHIES = Path(__file__).resolve().parent / "hierarchies"

# The lab's data sets: the suite's values per data set, and the budgets that size them.
# ``cpu`` is sized for the 2-core CPU machine (one run takes about a minute on an idle
# machine: ``resnet_tiny_cifar``, 3,000 training images, 3 epochs, probes on 2,000
# evaluation images); ``cpu-long`` doubles its images and epochs (4x the steps: the
# ``cpu`` budget's CIFAR-10 fine probe, 31.6 %, is close to the untrained backbone's,
# 26 %; RESULTS.md, "cpu-long"); ``gpu`` is the documented GPU recipe (ResNet-18, full
# data, 100 epochs). The default data folders are where the lab keeps them.
LAB_DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"dataset": "mnist", "data_dir": str(SHARED_DATA / "mnist.npz")},
    "cifar10": {"dataset": "cifar10", "data_dir": str(REPO_ROOT / ".data" / "cifar10-jpeg")},
    # CIFAR-10 as a 3-level tree with imbalanced coarse classes (lab.py prepare-cifar10-lt3).
    "cifar10-lt3": {
        "dataset": "cifar10",
        "data_dir": str(REPO_ROOT / ".data" / "cifar10-lt3"),
        "hierarchy": str(REPO_ROOT / ".data" / "cifar10-lt3" / "hierarchy.txt"),
    },
    # CIFAR-10 under a coarse level that is not the visual one (suite/hierarchies/).
    "cifar10-mixed": {
        "dataset": "cifar10",
        "data_dir": str(REPO_ROOT / ".data" / "cifar10-jpeg"),
        "hierarchy": str(HIERARCHIES / "cifar10_mixed.txt"),
    },
    "shapes": {"dataset": "shapes"},
}
# Training images of the ``cpu`` budget per data set (the long-tailed set: all of it).
_CPU_TRAIN_SAMPLES = {"mnist": 3000, "cifar10": 3000, "cifar10-mixed": 3000, "shapes": 3000}
_CPU_EPOCHS = {"shapes": 6}
_QUIET = {"progress_bar": False, "plots": False}
BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "backbone": "resnet_tiny_cifar",
        "batch_size": 128,
        "probe_epochs": 30,
        "test_samples": 2000,
        **_QUIET,
    },
    "cpu-long": {
        "backbone": "resnet_tiny_cifar",
        "batch_size": 128,
        "probe_epochs": 30,
        "test_samples": 2000,
        **_QUIET,
    },
    "gpu": {
        "backbone": "resnet18_cifar",
        "batch_size": 512,
        "epochs": 100,
        "probe_epochs": 100,
        "precision": "bf16-mixed",
        "num_workers": 8,
        "train_samples": None,
        "test_samples": None,
        **_QUIET,
    },
}


def lab_preset(dataset: str, budget: str) -> dict[str, Any]:
    """The suite's values of one lab data set at one budget (the preset
    ``<dataset>-<budget>``).

    Examples:
        >>> lab_preset("mnist", "cpu-long")["epochs"], lab_preset("mnist", "cpu-long")["train_samples"]
        (6, 6000)
        >>> lab_preset("shapes", "gpu")["train_samples"], lab_preset("cifar10-lt3", "cpu")["train_samples"]
        (20000, None)
    """
    preset = {**LAB_DATASETS[dataset], **BUDGETS[budget]}
    if budget in ("cpu", "cpu-long"):
        factor = 2 if budget == "cpu-long" else 1
        samples = _CPU_TRAIN_SAMPLES.get(dataset)
        preset["train_samples"] = None if samples is None else samples * factor
        preset["epochs"] = _CPU_EPOCHS.get(dataset, 3) * factor
    elif dataset == "shapes":
        preset["train_samples"] = 20000  # generated: 20,000 is "full data"
    return preset


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
    # The lab's data sets at its budgets: ``mnist-cpu``, ``cifar10-lt3-gpu``, ...
    **{
        f"{dataset}-{budget}": lab_preset(dataset, budget)
        for dataset in LAB_DATASETS
        for budget in BUDGETS
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
    add(
        "--methods",
        default="all",
        help=f"comma list of {methods.method_names()} or 'all'; or of variants "
        "NAME=METHOD:KEY=VALUE:... (KEY to the loss, head.KEY to the mask head, suite.KEY "
        "to the flag --KEY)",
    )
    add(
        "--baseline",
        default=None,
        metavar="NAME",
        help="a method or variant of --methods: summary.md and comparison.png show every "
        "other's mean paired difference against it, with 95%% t-intervals over the seeds",
    )
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
    add(
        "--memory-bank",
        type=int,
        default=0,
        metavar="K",
        help="queue of the last K projections and label paths: extra contrast rows",
    )
    add(
        "--momentum-encoder",
        type=float,
        default=None,
        metavar="M",
        help="with --memory-bank: fill the queue from a momentum (EMA) copy of backbone and "
        "head, MoCo-style, momentum M in [0, 1), e.g. 0.99 (default: off)",
    )
    add("--dataset", default="shapes", help=f"one of {sorted(DATASETS)}")
    add("--data-dir", default=None, help="dataset folder or file (or $LIGHTLY_HMLC_DATA_DIR)")
    add("--hierarchy", default=None, help="hierarchy file: edge list or JSON")
    add(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refuse hierarchy leaves without data (--no-strict allows them)",
    )
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
    add(
        "--temperature",
        type=float,
        default=0.1,
        help="temperature of the contrastive losses; a loss's --loss-option temperature=... "
        "(a float, or a per-level list such as [0.2,0.1]) overrides it for that loss",
    )
    add("--proj-dim", type=int, default=128, help="projection head output width")
    add("--seeds", default="0", help="comma list or range, e.g. 0,1,2 or 0-4; each seed is one run")
    add("--data-seed", type=int, default=0, help="seed of subsets and synthetic data")
    add("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    add(
        "--compile",
        action="store_true",
        help="torch.compile the backbone, the projection head and the loss (with its head)",
    )
    add("--accelerator", default="auto")
    add("--devices", default="auto")
    add("--strategy", default="auto", help="e.g. ddp, ddp_spawn")
    add("--num-nodes", type=int, default=1)
    add("--num-workers", type=int, default=0)
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add("--deterministic", default="warn", choices=["true", "warn", "false"])
    add("--hierarchical-sampler", action="store_true", help="HierarchicalBatchSampler")
    add(
        "--sampler-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="HierarchicalBatchSampler argument (repeatable), e.g. top_level_shares=frequency",
    )
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
    add(
        "--checkpoint-every-n-steps",
        type=int,
        default=None,
        metavar="N",
        help="also write last.ckpt every N steps (default: every epoch only)",
    )
    add("--overwrite", action="store_true", help="replace existing runs")
    add("--max-time", default=None, help="stop training after DD:HH:MM:SS")
    add(
        "--progress-bar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on a terminal; else one line per epoch)",
    )
    add(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write each run's PNGs (embeddings, training curves); the suite's "
        "comparison.png is always written",
    )
    add(
        "--logger",
        default="csv",
        choices=["csv", "tensorboard"],
        help="the Trainer's logger under <run>/logs/ (tensorboard: the 'tensorboard' extra)",
    )
    add(
        "--traceback",
        action="store_true",
        help="show the traceback of bad-input and filesystem errors",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses ``argv``; the preset's values replace the defaults, explicit args win."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[known.preset])
    return parser.parse_args(argv)


# (flag attribute, lowest allowed value, inclusive?) of the numeric flags.
_LOWER_BOUNDS: tuple[tuple[str, float, bool], ...] = (
    ("epochs", 1, True),
    ("batch_size", 1, True),
    ("proj_dim", 1, True),
    ("input_size", 1, True),
    ("num_points", 1, True),
    ("num_views", 1, True),
    ("train_samples", 1, True),
    ("test_samples", 1, True),
    ("probe_epochs", 1, True),
    ("knn_k", 1, True),
    ("eval_batch_size", 1, True),
    ("num_workers", 0, True),
    ("memory_bank", 0, True),
    ("threads", 1, True),
    ("num_nodes", 1, True),
    ("checkpoint_every_n_steps", 1, True),
    ("temperature", 0, False),
    ("lr", 0, False),
    ("weight_decay", 0, True),
    ("warmup_epochs", 0, True),
)


def check_args(args: argparse.Namespace) -> None:
    """Refuses values that no run can use, before any data is loaded.

    Raises:
        UserError: Naming the flag, the value and what is allowed.
    """
    for name, low, inclusive in _LOWER_BOUNDS:
        value = getattr(args, name)
        if value is None:
            continue
        if not math.isfinite(value) or (value < low if inclusive else value <= low):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise UserError(
                f"--{name.replace('_', '-')} must be a finite number {bound}, got {value}."
            )
    if args.momentum_encoder is not None:
        if not 0 <= args.momentum_encoder < 1:  # also refuses nan
            raise UserError(
                f"--momentum-encoder must be in [0, 1), e.g. 0.99, got {args.momentum_encoder}."
            )
        if not args.memory_bank:
            raise UserError(
                "--momentum-encoder fills the memory bank's queue from a momentum copy of the "
                "encoder: it needs --memory-bank K (K > 0)."
            )
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
    if args.max_time is not None:
        try:
            Timer(duration=args.max_time)  # the Trainer's own parser of the value
        except MisconfigurationException as error:
            raise UserError(
                f"--max-time {args.max_time!r} is not a duration: give DD:HH:MM:SS, e.g. "
                "00:12:00:00 for 12 hours."
            ) from error
    if not timm.is_model(args.backbone):
        close = difflib.get_close_matches(args.backbone, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"--backbone {args.backbone!r} is not a timm model.{hint} See timm.list_models()."
        )
    if args.dataset not in DATASETS:
        raise UserError(f"Unknown --dataset {args.dataset!r}; choose one of {sorted(DATASETS)}.")
    parse_options(args.loss_option, "--loss-option")
    parse_options(args.head_option, "--head-option")
    if args.logger == "tensorboard" and not tensorboard_available():
        raise UserError(
            "--logger tensorboard needs the tensorboard package: install the extra, "
            'pip install -e ".[tensorboard]" (or pip install tensorboard), or use --logger csv.'
        )
    variants = resolve_variants(args.methods)
    parse_seeds(args.seeds)
    names = [v.name for v in variants]
    if args.baseline is not None and args.baseline not in names:
        raise UserError(f"--baseline {args.baseline!r} is not one of --methods {names}.")
    if parse_options(args.sampler_option, "--sampler-option") and not args.hierarchical_sampler:
        raise UserError(
            "--sampler-option sets the HierarchicalBatchSampler: add --hierarchical-sampler, "
            "or drop the option."
        )


def tensorboard_available() -> bool:
    """Whether Lightning's TensorBoardLogger can write event files here."""
    return any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX"))


@dataclass(frozen=True)
class Variant:
    """A named method with loss, head and suite options (``NAME=METHOD:KEY=VALUE:...``)."""

    name: str
    method: str
    loss_options: dict[str, Any] = field(default_factory=dict)
    head_options: dict[str, Any] = field(default_factory=dict)
    suite_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Variant:
        """Parses ``NAME=METHOD:KEY=VALUE:...`` or ``METHOD``.

        Examples:
            >>> v = Variant.parse("hmce-u=hmce:layer_penalty=uniform:head.gate=softmax")
            >>> v.name, v.method, v.loss_options, v.head_options
            ('hmce-u', 'hmce', {'layer_penalty': 'uniform'}, {'gate': 'softmax'})
        """
        name, _, spec = text.partition("=") if "=" in text.split(":")[0] else (text, "", text)
        method, *pairs = spec.split(":")
        name, method = name.strip(), method.strip()
        if not name or not method:
            raise UserError(f"Bad variant {text!r}: write NAME=METHOD:KEY=VALUE:... or METHOD.")
        loss: dict[str, Any] = {}
        head: dict[str, Any] = {}
        suite: dict[str, Any] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep or not key:
                raise UserError(f"Bad option {pair!r} in variant {text!r}: write KEY=VALUE.")
            target = loss
            for prefix, options in (("head.", head), ("suite.", suite)):
                if key.startswith(prefix):
                    key, target = key.removeprefix(prefix), options
            target[key] = _parse_value(raw)
        return cls(name, method, loss, head, suite)

    def suite_args(self) -> list[str]:
        """The suite flags that select this variant (one method, its options)."""
        out = ["--methods", self.method]
        for key, value in self.loss_options.items():
            out += ["--loss-option", f"{key}={json.dumps(value)}"]
        for key, value in self.head_options.items():
            out += ["--head-option", f"{key}={json.dumps(value)}"]
        return out + self.suite_flags()

    def suite_flags(self) -> list[str]:
        """The ``suite.KEY`` options as flags: ``--KEY VALUE``, or ``--KEY`` for ``true``."""
        out: list[str] = []
        for key, value in self.suite_options.items():
            if isinstance(value, bool):  # a switch: ``suite.hierarchical-sampler=true``
                out += [f"--{key}"] if value else []
            else:
                out += [f"--{key}", str(value)]
        return out


def split_variants(text: str) -> list[str]:
    """Splits a comma list of variants, keeping commas inside JSON brackets.

    Examples:
        >>> split_variants("supcon,w=hmc:layer_penalty=[1.0,2.0],hmce")
        ['supcon', 'w=hmc:layer_penalty=[1.0,2.0]', 'hmce']
    """
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p.strip() for p in [*parts, current] if p.strip()]


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def resolve_variants(value: str) -> list[Variant]:
    """``all`` or a comma list of methods and variants (``NAME=METHOD:KEY=VALUE:...``).

    Raises:
        UserError: For an unknown method, a bad variant or a name given twice.
    """
    known = methods.method_names()
    if value.strip() == "all":
        return [Variant(name, name) for name in known]
    variants = [Variant.parse(text) for text in split_variants(value)]
    unknown = [v.method for v in variants if v.method not in known]
    if unknown or not variants:
        raise UserError(f"Unknown method(s) {unknown}; choose from {known} or 'all'.")
    names = [v.name for v in variants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--methods names {twice} more than once; give each variant its own name.")
    return variants


def variant_args(args: argparse.Namespace, variant: Variant) -> argparse.Namespace:
    """The suite arguments of one variant: ``args`` with its method, options and flags.

    A plain method (``hmce``) leaves ``args`` as they are. A variant's loss and head
    options win over ``--loss-option`` / ``--head-option`` of the same key, its
    ``suite.KEY`` over the flag ``--KEY``; its name names its runs (``variant``).

    Raises:
        UserError: For a ``suite.KEY`` that is not a flag of the suite, or a bad value.
    """
    out = copy.copy(args)
    out.methods = variant.method
    out.baseline = None  # one run compares with nothing
    if variant.name != variant.method:
        out.variant = variant.name
    for flag, given, extra in (
        ("--loss-option", "loss_option", variant.loss_options),
        ("--head-option", "head_option", variant.head_options),
    ):
        if extra:
            merged = {**parse_options(getattr(args, given), flag), **extra}
            setattr(out, given, [f"{k}={json.dumps(v)}" for k, v in merged.items()])
    flags = variant.suite_flags()
    if flags:
        parser = build_parser()
        known = {o for action in parser._actions for o in action.option_strings}
        bad = [f for f in flags if f.startswith("--") and f not in known]
        if bad or any(f in ("--methods", "--seeds", "--baseline", "--preset") for f in flags):
            raise UserError(
                f"Variant {variant.name!r}: suite.{(bad or flags)[0].removeprefix('--')} is not "
                "a flag a variant may set; see python benchmarks/main.py --help."
            )
        try:
            parser.parse_args(flags, namespace=out)
        except SystemExit as error:
            raise UserError(
                f"Variant {variant.name!r}: bad suite option in {' '.join(flags)!r}."
            ) from error
    return out


def resolve_methods(value: str) -> list[str]:
    """The method of each variant of ``all`` or a comma list (see :func:`resolve_variants`)."""
    return [variant.method for variant in resolve_variants(value)]


def parse_seeds(value: str) -> list[int]:
    """A comma list of seeds and ranges.

    Examples:
        >>> parse_seeds("0-4"), parse_seeds("0,1,2"), parse_seeds("3, 7-8")
        ([0, 1, 2, 3, 4], [0, 1, 2], [3, 7, 8])
    """
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            low, dash, high = part.partition("-")
            if dash and low:
                seeds += list(range(int(low), int(high) + 1))
            else:
                seeds.append(int(part))
    except ValueError as error:
        raise UserError(
            f"--seeds must be a comma list of integers or ranges (0,1,2 or 0-4), got {value!r}."
        ) from error
    if not seeds:
        raise UserError("--seeds is empty; give e.g. --seeds 0,1,2.")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {value!r} names a seed twice.")
    return seeds
