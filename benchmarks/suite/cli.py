"""The command line of the suite: presets, flags, and the checks of their values.

Every bad value ends as a :class:`datasets.UserError`, which ``main.py`` prints as one
line ``error: ...`` with exit code 2. Values are checked before any data is loaded.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Sequence
from typing import Any

import methods
import timm
from datasets import DATASETS, UserError
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Timer
from run import parse_options

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
    add("--methods", default="all", help=f"comma list of {methods.method_names()} or 'all'")
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
    add("--plots", action=argparse.BooleanOptionalAction, default=True, help="write the PNGs")
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
    if parse_options(args.sampler_option, "--sampler-option") and not args.hierarchical_sampler:
        raise UserError(
            "--sampler-option sets the HierarchicalBatchSampler: add --hierarchical-sampler, "
            "or drop the option."
        )


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


def parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError as error:
        raise UserError(f"--seeds must be a comma list of integers, got {value!r}.") from error
    if not seeds:
        raise UserError("--seeds is empty; give e.g. --seeds 0,1,2.")
    return seeds
