"""Gathers benchmark runs into one markdown table: mean ± std over seeds per method.

Reads the ``metrics.json`` written by ``main.py`` for every run found under the given
folders (a run folder, a method folder, a dataset folder or a whole output folder).
Runs of the same dataset and method (different seeds) form one row; the standard
deviation is the sample standard deviation (``n - 1``) and is left out for one seed.

Usage::

    python benchmarks/suite/compare.py runs/shapes
    python benchmarks/suite/compare.py runs/cifar100/hmce runs/cifar100/supcon --metrics all
    python benchmarks/main.py compare runs --output table.md
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from run_files import RunFileError, os_error_line, read_json_record, write_text_atomic

Aggregated = dict[tuple[str, str], dict[str, list[float]]]

_LEVEL_KEY = re.compile(r"^level(\d+)/(.+)$")
_DEFAULT_LEVEL_METRICS = ("linear_acc", "knn_acc")
# The cost columns come last: speed, training wall time, peak memory.
_DEFAULT_EXTRA = (
    "hier/mistake_severity",
    "train/images_per_second",
    "train/wall_seconds",
    "train/peak_memory_mb",
)
_TITLES = {"train/wall_seconds": "train wall (s)", "train/peak_memory_mb": "peak memory (MB)"}


def find_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Loads every ``metrics.json`` at or below ``paths``, in sorted path order.

    Raises:
        FileNotFoundError: If a path does not exist or holds no run.
        RunFileError: If a ``metrics.json`` is truncated or not JSON.
    """
    records: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.name == "metrics.json":
            files = [path]
        elif path.is_dir():
            files = sorted(path.rglob("metrics.json"))
        else:
            raise FileNotFoundError(f"{str(path)!r} does not exist.")
        if not files:
            raise FileNotFoundError(
                f"No metrics.json under {str(path)!r}: give folders written by "
                "benchmarks/main.py (<output-dir>/<dataset>/<method>/seed<k>)."
            )
        for file in files:
            fix = "Rerun that run with --resume auto to write it again, or delete its folder."
            records.append(read_json_record(file, fix))
    return records


def flatten(record: dict[str, Any]) -> dict[str, float]:
    """The numeric values of a record's ``train`` and ``eval`` sections."""
    values: dict[str, float] = {}
    for section in ("train", "eval"):
        for key, value in record.get(section, {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values[key] = float(value)
    return values


def aggregate(records: Iterable[dict[str, Any]]) -> Aggregated:
    """Groups the records by ``(dataset, method)``: metric -> values over seeds.

    Examples:
        >>> runs = [{"run": {"dataset": "d", "method": "m", "seed": s},
        ...          "eval": {"level0/linear_acc": a}} for s, a in [(0, 0.5), (1, 0.7)]]
        >>> aggregate(runs)[("d", "m")]["level0/linear_acc"]
        [0.5, 0.7]
    """
    groups: Aggregated = {}
    for record in records:
        run = record.get("run", {})
        # A --run-name variant is its own row; so is a run probed on the validation part.
        name = str(run.get("name", run.get("method", "?")))
        if record.get("split", {}).get("eval_split") == "val":
            name += " (val)"
        key = (str(run.get("dataset", "?")), name)
        group = groups.setdefault(key, {})
        for name, value in flatten(record).items():
            group.setdefault(name, []).append(value)
    return groups


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value).

    Examples:
        >>> mean_std([1.0, 3.0])
        (2.0, 1.4142135623730951)
        >>> mean_std([1.0])
        (1.0, None)
    """
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def default_metrics(groups: Aggregated) -> list[str]:
    """Linear and kNN accuracy of every level, mistake severity, hdist@k, and the cost:
    images/s, training wall time, peak memory."""
    keys = {name for metrics in groups.values() for name in metrics}
    levels = sorted(
        {int(m.group(1)) for k in keys if (m := _LEVEL_KEY.match(k))},
    )
    chosen = [
        f"level{level}/{metric}"
        for level in levels
        for metric in _DEFAULT_LEVEL_METRICS
        if f"level{level}/{metric}" in keys
    ]
    chosen += [k for k in _DEFAULT_EXTRA[:1] if k in keys]
    chosen += sorted(k for k in keys if k.startswith("hier/hdist@"))
    chosen += [k for k in _DEFAULT_EXTRA[1:] if k in keys]
    return chosen


def _title(key: str) -> str:
    if key in _TITLES:
        return _TITLES[key]
    match = _LEVEL_KEY.match(key)
    if match:
        title = f"L{match.group(1)} {match.group(2).replace('_', ' ')}"
    else:
        title = key.split("/", 1)[-1].replace("_", " ")
    return title + (" (%)" if _is_fraction(key) else "")


def _is_fraction(key: str) -> bool:
    return (
        key.endswith("_acc")
        or key.endswith("/nmi")
        or "/implied_acc" in key
        or key.startswith("ident/advantage")
    )


def _cell(key: str, values: list[float] | None) -> str:
    if not values:
        return "–"
    scale = 100.0 if _is_fraction(key) else 1.0
    digits = 2 if _is_fraction(key) else (1 if "per_second" in key or "seconds" in key else 3)
    digits = 0 if key.endswith("_mb") else digits
    mean, std = mean_std([v * scale for v in values])
    if math.isnan(mean):
        return "nan"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(groups: Aggregated, metrics: Sequence[str] | None = None) -> str:
    """A markdown table, one row per (dataset, method), cells ``mean ± std``.

    Args:
        groups: From :func:`aggregate`.
        metrics: Metric keys to show (default :func:`default_metrics`); ``["all"]``
            shows every metric found.

    Examples:
        >>> runs = [{"run": {"dataset": "d", "method": "m", "seed": s},
        ...          "eval": {"level0/linear_acc": a}} for s, a in [(0, 0.5), (1, 0.7)]]
        >>> print(format_table(aggregate(runs)))
        | method | seeds | L0 linear acc (%) |
        |---|---|---|
        | m | 2 | 60.00 ± 14.14 |
    """
    if metrics is None:
        keys = default_metrics(groups)
    elif list(metrics) == ["all"]:
        keys = sorted({name for values in groups.values() for name in values})
    else:
        keys = list(metrics)
    datasets = {dataset for dataset, _ in groups}
    head = (["dataset"] if len(datasets) > 1 else []) + ["method", "seeds"]
    lines = [
        "| " + " | ".join(head + [_title(k) for k in keys]) + " |",
        "|" + "---|" * (len(head) + len(keys)),
    ]
    for (dataset, method), values in groups.items():
        seeds = max((len(v) for v in values.values()), default=0)
        cells = ([dataset] if len(datasets) > 1 else []) + [method, str(seeds)]
        cells += [_cell(k, values.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: prints (and optionally writes) the table of the given runs."""
    parser = argparse.ArgumentParser(description="Mean ± std over seeds of benchmark runs.")
    parser.add_argument("runs", nargs="+", help="run folders or folders holding runs")
    parser.add_argument(
        "--metrics", default=None, help="comma list of metric keys, or 'all' (default: main ones)"
    )
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--traceback", action="store_true", help="show the traceback of errors")
    args = parser.parse_args(argv)
    try:
        records = find_records(args.runs)
        metrics = None if args.metrics is None else [m.strip() for m in args.metrics.split(",")]
        table = format_table(aggregate(records), metrics)
        print(table)
        if args.output:
            write_text_atomic(Path(args.output), table + "\n")
    except (RunFileError, OSError) as error:
        if args.traceback:
            raise
        shown = os_error_line(error) if isinstance(error, OSError) else str(error)
        print(f"error: {shown}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
