"""The suite's command: every method and seed of one invocation, then the summary.

``benchmarks/main.py`` is the entry; this module is its body: :func:`run_suite` runs
every (method, seed) of the parsed arguments (:func:`run.run_one` each) and writes the
summary table, :func:`main` turns errors into exit codes and one line each.
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
from cli import check_args, parse_args, parse_seeds, resolve_methods
from datasets import UserError, build_dataset
from run import RunInterrupted, RunResult, quiet_lightning, run_one
from run_files import RunFileError, os_error_line, write_text_atomic

__all__ = ["main", "resume_command", "run_suite"]


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
