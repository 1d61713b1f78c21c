"""The suite's command: every variant and seed of one invocation, then the summary.

``benchmarks/main.py`` is the entry; this module is its body, the one run loop of the
suite and the lab: :func:`run_suite` runs every (variant, seed) of the parsed arguments
(:func:`run.run_one` each), seeds outermost, so that a suite cut off after some seeds
still holds complete pairs. With ``--resume auto`` a finished run is skipped (its
records are read back) and an interrupted one continues from its checkpoint.

It then writes ``<output-dir>/<dataset>/summary.md`` and ``comparison.png`` over the
runs asked for: with ``--baseline``, every variant's mean and its mean paired difference
against the baseline with a 95% t-interval per level (``paired.py``, the lab's table);
without, mean ± std over seeds (``compare.py``). Both tables end with the cost: images
per second, training wall time and peak memory. :func:`main` turns errors into exit
codes and one line each.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import compare
import figure
import methods
import paired
import pytorch_lightning as pl
import torch
from cli import check_args, parse_args, parse_seeds, resolve_variants, variant_args
from datasets import DatasetBundle, UserError, build_dataset
from run import RunInterrupted, RunResult, quiet_lightning, run_one
from run_files import RunFileError, os_error_line, write_text_atomic

__all__ = ["main", "resume_command", "run_suite", "write_summary"]

# The flags that choose the data: a variant that sets one gets its own dataset.
DATA_FIELDS = (
    "dataset", "data_dir", "hierarchy", "strict", "input_size", "num_points", "num_views",
    "view_fuse", "train_samples", "test_samples", "eval_split", "val_fraction", "data_seed",
)  # fmt: skip


def run_suite(
    args: argparse.Namespace, extra_callbacks: Sequence[pl.Callback] = ()
) -> list[RunResult]:
    """Runs every variant and seed of ``args``; prints and returns the results (rank 0)."""
    check_args(args)
    quiet_lightning()
    variants = resolve_variants(args.methods)
    seeds = parse_seeds(args.seeds)
    if args.resume not in (None, "auto") and len(variants) * len(seeds) != 1:
        raise UserError(
            "--resume PATH continues one run: give one method and one seed, or use "
            "--resume auto to continue every run from its own last checkpoint."
        )
    per_variant = [variant_args(args, variant) for variant in variants]
    for variant, one in zip(variants, per_variant, strict=True):
        if variant.suite_options:  # a variant's own flags: checked as the suite's are
            check_args(one)
    bundles: dict[tuple[Any, ...], DatasetBundle] = {}

    def bundle_of(one: argparse.Namespace) -> DatasetBundle:
        key = tuple(getattr(one, name) for name in DATA_FIELDS)
        if key not in bundles:
            bundles[key] = build_dataset(one)
        return bundles[key]

    base_bundle = bundle_of(args)
    results: list[RunResult] = []
    for seed in seeds:  # seeds outermost: a suite cut off after some seeds stays paired
        for variant, one in zip(variants, per_variant, strict=True):
            result = run_one(one, bundle_of(one), variant.method, seed, extra_callbacks)
            if result is not None:
                results.append(result)
    if results:
        write_summary(args, [r.metrics for r in results], base_bundle)
    return results


def write_summary(
    args: argparse.Namespace, records: Sequence[dict[str, Any]], bundle: DatasetBundle
) -> Path:
    """Writes and prints ``summary.md`` and writes ``comparison.png`` of ``records``."""
    folder = Path(args.output_dir) / args.dataset
    runs = paired.runs_of(records)
    order = list(runs)
    metrics = paired.default_metrics(runs)
    split = records[0].get("split", {}).get("eval_split", args.eval_split)
    if args.baseline is not None:
        cost = [
            c for c in paired.COST_METRICS if any(c in m for r in runs.values() for m in r.values())
        ]
        rows = paired.paired_table(runs, args.baseline, metrics, cost, order)
        name = f"{args.dataset} ({split} split)"
        table = paired.format_paired_table(rows, name, args.baseline, metrics, cost)
    else:
        rows = paired.paired_table(runs, None, metrics, (), order)
        table = compare.format_table(compare.aggregate(records)) + "\n"
        table += (
            "\nCost: training images per second, training wall time, and peak memory (the "
            "process's peak RSS on the CPU, `torch.cuda.max_memory_allocated` on a GPU).\n"
        )
    summary = folder / "summary.md"
    write_text_atomic(summary, table)
    if metrics:
        seeds = max(len(row.seeds) for row in rows)
        heading = f"{args.dataset}, {split} split, {seeds} seed{'s' if seeds != 1 else ''}"
        if args.baseline is not None:
            heading += f", baseline {args.baseline}"
        titles = figure.level_titles(bundle.hierarchy)
        titles = [titles[int(m.split("/")[0].removeprefix("level"))] for m in metrics]
        figure.write_comparison(
            rows, metrics, titles, args.baseline, heading, folder / "comparison.png"
        )
    print(f"\n{args.dataset}: {len(records)} runs, records under {folder}\n")
    print(table)
    return summary


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
