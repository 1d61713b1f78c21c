"""Paired-seed statistics: the one implementation of the suite's and the lab's intervals.

With a given seed the suite gives every method the same data order, the same
augmentations and the same initial backbone weights, so two methods' runs of one seed
are a pair. Per metric, a variant's row shows its mean over the seeds it shares with the
baseline and the mean paired difference against the baseline with a 95% t-interval
over those seeds (``mean +- t_{0.975, n-1} * sd / sqrt(n)``); bold where the interval
excludes 0. A difference whose interval contains 0 is no difference.

:func:`paired_table` computes the rows once; :func:`format_paired_table` writes them
(``summary.md`` of a suite with ``--baseline``, and ``lab.py report``), and
``figure.py`` draws the same rows (``comparison.png``). :func:`collect` reads the runs
of an output folder back, so a report can be made again from the records alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compare import flatten
from run_files import read_json_record

# variant -> seed -> flat metrics (the numbers of a record's ``train`` and ``eval``).
Runs = dict[str, dict[int, dict[str, float]]]

# The cost of a variant: mean over its seeds, shown after the per-level metrics.
COST_METRICS = ("train/images_per_second", "train/wall_seconds", "train/peak_memory_mb")
COST_TITLES = {
    "train/images_per_second": "images/s",
    "train/wall_seconds": "train wall s",
    "train/peak_memory_mb": "peak memory MB",
}


@dataclass(frozen=True)
class PairedDifference:
    """Mean paired difference of a metric against the baseline, with a 95% t-interval."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return self.low > 0 or self.high < 0


def paired_difference(values: Sequence[float], baseline: Sequence[float]) -> PairedDifference:
    """95% t-interval of ``mean(values - baseline)`` over paired seeds.

    Examples:
        >>> d = paired_difference([0.9, 0.8, 0.85], [0.8, 0.75, 0.79])
        >>> round(d.mean, 4), d.significant
        (0.07, True)
    """
    from scipy import stats

    if len(values) != len(baseline) or len(values) < 2:
        raise ValueError("A paired interval needs the same seeds for both, at least 2.")
    diffs = [a - b for a, b in zip(values, baseline, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n)


def is_fraction(metric: str) -> bool:
    """Accuracies, NMI and identification advantages (differences of accuracies) are
    reported in %; other metrics as they are.

    Examples:
        >>> is_fraction("level0/linear_acc"), is_fraction("train/wall_seconds")
        (True, False)
        >>> is_fraction("ident/advantage_mean")
        True
    """
    return (
        metric.endswith(("_acc", "/nmi"))
        or "implied_acc" in metric
        or metric.startswith("ident/advantage")
    )


def scale_of(metric: str) -> float:
    """100 for fractions (shown in %), else 1."""
    return 100.0 if is_fraction(metric) else 1.0


def digits_of(metric: str) -> int:
    """Decimals shown: 2 for %, 1 for speeds and times, 0 for MB, else 3."""
    if is_fraction(metric):
        return 2
    if metric.endswith(("_per_second", "_seconds")):
        return 1
    if metric.endswith("_mb"):
        return 0
    return 3


def default_metrics(runs: Runs) -> list[str]:
    """The per-level linear accuracies, coarse to fine.

    Examples:
        >>> default_metrics({"a": {0: {"level1/linear_acc": 1.0, "level0/linear_acc": 1.0}}})
        ['level0/linear_acc', 'level1/linear_acc']
    """
    keys = {k for seeds in runs.values() for m in seeds.values() for k in m}
    return sorted(k for k in keys if k.endswith("/linear_acc"))


def runs_of(records: Iterable[dict[str, Any]]) -> Runs:
    """``{variant: {seed: flat metrics}}`` of run records (``metrics.json`` contents),
    keyed by the run's name (the variant, or the method)."""
    runs: Runs = {}
    for record in records:
        run = record.get("run", {})
        name = str(run.get("name", run.get("method", "?")))
        runs.setdefault(name, {})[int(run.get("seed", 0))] = flatten(record)
    return runs


def collect(base: Path, seeds: Sequence[int] | None = None) -> Runs:
    """The runs of an output folder (of ``seeds`` only, if given), read back.

    ``base`` is a folder that the suite wrote (``<output-dir>`` or its ``<dataset>``
    folder: runs ``.../<variant>/seed<k>/metrics.json``); a run's variant is its record's
    name. Experiments of the lab before it ran on the suite kept each variant in its
    own suite output folder (``<variant>/<dataset>/<method>/seed<k>``); there the
    variant is the first folder.

    Raises:
        ValueError: If ``base`` holds runs of the validation and the test split, or two
            runs of one variant and seed (say, of two datasets): give a narrower folder.
    """
    runs: Runs = {}
    splits: set[str] = set()
    where: dict[tuple[str, int], Path] = {}
    for path in sorted(base.rglob("seed*/metrics.json")):
        seed_text = path.parent.name.removeprefix("seed")
        if not seed_text.isdigit():
            continue
        seed = int(seed_text)
        if seeds is not None and seed not in seeds:
            continue
        record = read_json_record(path, "Rerun that run with --resume auto to write it again.")
        parts = path.relative_to(base).parts
        if len(parts) == 5:  # <variant>/<dataset>/<method>/seed<k>/metrics.json
            variant = parts[0]
        else:
            variant = str(record.get("run", {}).get("name", path.parent.parent.name))
        if (variant, seed) in where:
            raise ValueError(
                f"Two runs of {variant!r} seed {seed} under {base}: {where[variant, seed]} and "
                f"{path.parent}. Give the folder of one dataset and split."
            )
        where[variant, seed] = path.parent
        splits.add(str(record.get("split", {}).get("eval_split", "test")))
        runs.setdefault(variant, {})[seed] = flatten(record)
    if len(splits) > 1:
        raise ValueError(
            f"{base} holds runs probed on the validation part and on the test split; a "
            "comparison pairs runs of one split: give the folder of one of them."
        )
    return runs


@dataclass(frozen=True)
class Cell:
    """One variant's value of one metric: the mean over its paired seeds (in % for
    fractions) and, for a variant that is not the baseline, its paired difference."""

    mean: float
    difference: PairedDifference | None = None


@dataclass(frozen=True)
class Row:
    """One variant: the seeds it shares with the baseline and its cells by metric."""

    variant: str
    seeds: tuple[int, ...]
    cells: dict[str, Cell | None]


def paired_table(
    runs: Runs,
    baseline: str | None,
    metrics: Sequence[str],
    cost: Sequence[str] = (),
    order: Sequence[str] | None = None,
) -> list[Row]:
    """Per variant (the baseline first): mean and paired difference of each metric over
    the seeds that variant shares with the baseline; ``cost`` metrics get means only.

    Args:
        runs: ``{variant: {seed: metrics}}`` (:func:`collect`, :func:`runs_of`).
        baseline: The variant every other is compared with; ``None``: no comparison,
            each variant's mean over all of its seeds.
        metrics: The compared metrics, e.g. ``level0/linear_acc``.
        cost: Metrics shown as means only (images/s, time, memory).
        order: The variants' order after the baseline (default: sorted by name).

    Raises:
        ValueError: If the baseline has no run.
    """
    if baseline is not None and baseline not in runs:
        raise ValueError(
            f"No finished run of the baseline {baseline!r}; the runs are of {sorted(runs)}."
        )
    others = [v for v in (order if order is not None else sorted(runs)) if v != baseline]
    first = [] if baseline is None else [baseline]
    rows = []
    for variant in [*first, *[v for v in others if v in runs]]:
        shared = runs[variant] if baseline is None else runs[baseline]
        seeds = tuple(sorted(set(runs[variant]) & set(shared)))
        cells: dict[str, Cell | None] = {}
        for metric in metrics:
            scale = scale_of(metric)
            values = [scale * runs[variant][s][metric] for s in seeds if metric in runs[variant][s]]
            if not values:
                cells[metric] = None
                continue
            mean = sum(values) / len(values)
            difference = None
            if baseline is not None and variant != baseline and len(values) >= 2:
                base_values = [
                    scale * runs[baseline][s][metric] for s in seeds if metric in runs[baseline][s]
                ]
                if len(values) == len(base_values):
                    difference = paired_difference(values, base_values)
            cells[metric] = Cell(mean, difference)
        for metric in cost:
            values = [runs[variant][s][metric] for s in seeds if metric in runs[variant][s]]
            cells[metric] = Cell(sum(values) / len(values)) if values else None
        rows.append(Row(variant, seeds, cells))
    return rows


def interval_text(d: PairedDifference, digits: int) -> str:
    """``+1.23 [+0.45, +2.01]``, bold when the interval excludes 0.

    Examples:
        >>> interval_text(PairedDifference(1.0, 0.5, 1.5, 3), 2)
        '**+1.00 [+0.50, +1.50]**'
    """
    mark = "**" if d.significant else ""
    return f"{mark}{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]{mark}"


def cell_text(metric: str, cell: Cell | None) -> str:
    """``mean`` or ``mean (difference [low, high])``; ``undefined`` where the variant's
    records hold no value (a metric undefined for it, e.g. the identification score of a
    method without per-level features), never 0."""
    if cell is None:
        return "undefined"
    digits = digits_of(metric)
    if cell.difference is None:
        return f"{cell.mean:.{digits}f}"
    return f"{cell.mean:.{digits}f} ({interval_text(cell.difference, digits)})"


def format_paired_table(
    rows: Sequence[Row], name: str, baseline: str, metrics: Sequence[str], cost: Sequence[str] = ()
) -> str:
    """The lab's table of :func:`paired_table`'s rows (markdown), with a one-line legend."""
    lines = [
        f"Experiment `{name}`, baseline `{baseline}`; accuracies in %, paired difference "
        "against the baseline as mean [95% CI] over the seeds both have (bold: the interval "
        "excludes 0); `undefined`: the variant's runs have no value of that metric.",
        "",
        "| variant | seeds | "
        + " | ".join([*metrics, *(COST_TITLES.get(c, c) for c in cost)])
        + " |",
        "|---|---|" + "---|" * (len(metrics) + len(cost)),
    ]
    for row in rows:
        cells = [cell_text(metric, row.cells.get(metric)) for metric in [*metrics, *cost]]
        lines.append(f"| {row.variant} | {len(row.seeds)} | " + " | ".join(cells) + " |")
    if cost:
        lines += [
            "",
            "Cost, mean over the seeds: training images per second, training wall time, and "
            "peak memory (the process's peak RSS on the CPU, `torch.cuda.max_memory_allocated` "
            "on a GPU).",
        ]
    return "\n".join(lines) + "\n"


def report(
    base: Path,
    baseline: str,
    metrics: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    cost: Sequence[str] = COST_METRICS,
) -> str:
    """The table of an output folder's runs: per variant and metric, mean and paired
    difference + CI (over ``seeds`` only, if given: one folder may hold several
    questions)."""
    runs = collect(base, seeds)
    if baseline not in runs:
        raise ValueError(f"No finished run of the baseline {baseline!r} in {base}.")
    chosen = list(metrics or default_metrics(runs))
    present = [c for c in cost if any(c in m for r in runs.values() for m in r.values())]
    rows = paired_table(runs, baseline, chosen, present)
    return format_paired_table(rows, base.name, baseline, chosen, present)


def interaction(
    base: Path,
    first: tuple[str, str],
    second: tuple[str, str],
    metrics: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> str:
    """Does a change move a gap? Per seed ``(a - b) - (c - d)``, mean and 95% t-interval.

    ``first = (a, b)`` and ``second = (c, d)``, e.g. ``("hmce-hs", "supcon-hs")`` and
    ``("hmce", "supcon")``: whether the sampler widens HMCE's gap to SupCon. Over the
    seeds all four variants have (of ``seeds``, if given).
    """
    runs = collect(base, seeds)
    names = [*first, *second]
    missing = [name for name in names if name not in runs]
    if missing:
        raise ValueError(f"No finished run of {missing} in {base}.")
    shared = sorted(set.intersection(*(set(runs[name]) for name in names)))
    chosen = list(metrics or default_metrics(runs))
    label = f"({first[0]} - {first[1]}) - ({second[0]} - {second[1]})"
    lines = [
        f"Experiment `{base.name}`: per seed {label}, in points for accuracies, as mean "
        f"[95% CI] over the {len(shared)} seeds all four have (bold: the interval excludes 0).",
        "",
        "| contrast | seeds | " + " | ".join(chosen) + " |",
        "|---|---|" + "---|" * len(chosen),
    ]
    cells = []
    for metric in chosen:
        scale = scale_of(metric)
        gap = [scale * (runs[first[0]][s][metric] - runs[first[1]][s][metric]) for s in shared]
        ref = [scale * (runs[second[0]][s][metric] - runs[second[1]][s][metric]) for s in shared]
        cells.append(interval_text(paired_difference(gap, ref), digits_of(metric)))
    lines.append(f"| {label} | {len(shared)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
