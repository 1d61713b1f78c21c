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

The parts, one job each: ``datasets.py`` (the dataset table, the validation split,
the seeded two-view loader), ``methods.py`` (one LightningModule per method; every
loss of ``lightly_hmlc.registry`` is a method), ``run.py`` (one run: Trainer,
checkpoints, signals, resume checks, evaluation), ``records.py`` (run records and
environment), ``cli.py`` (presets and flags), ``evaluate.py`` (probes), ``compare.py``
(tables of finished runs). Presets (``--preset``) set defaults that explicit arguments
override; see ``PRESETS.md``.

Randomness: ``seed_everything(seed, workers=True)`` seeds the model; every sample's
augmentation is seeded by ``(seed, epoch, index)`` and every epoch's order by
``(seed, epoch)``, so every method of one seed sees the same batches, a run does not
depend on the number of data workers, and a run resumed from a checkpoint sees
exactly the batches of an uninterrupted run.

Exit codes: 0 done; 2 bad input, a damaged record, a run folder in use by another run
or a filesystem error (one line ``error: ...``; ``--traceback`` shows the traceback);
143 / 130 stopped by SIGTERM / SIGINT after saving a checkpoint (``--resume auto``
continues).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import compare
import methods
import pytorch_lightning as pl
import torch
from cli import PRESETS, build_parser, check_args, parse_args, parse_seeds, resolve_methods
from datasets import (
    DATASETS,
    DatasetBundle,
    EpochBatchSampler,
    SeededViews,
    TagEpoch,
    UserError,
    build_dataset,
    validation_split,
)
from run import (
    RunInterrupted,
    RunResult,
    build_model,
    parse_options,
    quiet_lightning,
    run_dir_of,
    run_one,
)
from run_files import RunFileError, os_error_line, write_text_atomic

__all__ = [
    "DATASETS",
    "PRESETS",
    "DatasetBundle",
    "EpochBatchSampler",
    "RunInterrupted",
    "RunResult",
    "SeededViews",
    "TagEpoch",
    "UserError",
    "build_dataset",
    "build_model",
    "build_parser",
    "check_args",
    "main",
    "parse_args",
    "parse_options",
    "resolve_methods",
    "run_dir_of",
    "run_suite",
    "validation_split",
]


def run_suite(
    args: argparse.Namespace, extra_callbacks: Sequence[pl.Callback] = ()
) -> list[RunResult]:
    """Runs every method and seed of ``args``; prints and returns the results (rank 0)."""
    check_args(args)
    names = resolve_methods(args.methods)
    seeds = parse_seeds(args.seeds)
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
        write_text_atomic(summary, table + "\n")
        print(f"\n{args.dataset}: {len(results)} runs, records under {summary.parent}\n")
        print(table)
    return results


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues an interrupted suite: the same, with --resume auto.

    Examples:
        >>> resume_command(["--methods", "hmce", "--overwrite", "--resume=x.ckpt"])
        'python benchmarks/main.py --methods hmce --resume auto'
    """
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not (arg == "--overwrite" or arg.startswith("--resume=")):
            kept.append(arg)
    return shlex.join(["python", "benchmarks/main.py", *kept, "--resume", "auto"])


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the suite (or ``compare``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare.main(argv[1:])
    args = parse_args(argv)
    quiet_lightning()
    if args.list_methods:
        print("\n".join(methods.method_names()))
        return 0
    try:
        if args.threads is not None:
            check_args(args)
            torch.set_num_threads(args.threads)
        run_suite(args)
    except (UserError, RunFileError, OSError) as error:
        if args.traceback:
            raise
        shown = os_error_line(error) if isinstance(error, OSError) else str(error)
        print(f"error: {shown}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:
        print(
            f"interrupted by {stop.signal_name} at step {stop.step}, checkpoint saved to "
            f"{stop.checkpoint}; continue with: {resume_command(argv)}",
            file=sys.stderr,
        )
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
