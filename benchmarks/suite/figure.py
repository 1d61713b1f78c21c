"""``comparison.png``: per-level accuracy per method, the picture of ``summary.md``.

One panel per level of the taxonomy (titled with the level's classes), one point per
method: its mean over the seeds; the baseline is drawn in black with a dashed line
across the panel. With at least 2 paired seeds, each other method has a whisker: the
95% interval of its paired difference against the baseline, drawn around its mean
(``baseline mean + [low, high]``), so a whisker that crosses the dashed line is no
difference, and one that stays clear of it is (marked ``*``, bold in ``summary.md``).
The numbers are those of :func:`paired.paired_table`, the rows of ``summary.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paired import Row

from lightly_hmlc import LabelHierarchy


def level_titles(hierarchy: LabelHierarchy, width: int = 34) -> list[str]:
    """A title per level from the taxonomy: the level, its number of classes, and as
    many of its class names as fit in ``width`` characters.

    Examples:
        >>> print(*level_titles(LabelHierarchy.cifar10(), width=30), sep="\\n")
        level 0 (2 classes)
        animal, vehicle
        level 1 (10 classes)
        airplane, automobile, ...
    """
    titles = []
    for level in range(hierarchy.num_levels):
        names = hierarchy.level_names(level)
        shown = ""
        for count, name in enumerate(names, start=1):
            candidate = f"{shown}, {name}" if shown else name
            rest = ", ..." if count < len(names) else ""
            if len(candidate + rest) > width and shown:
                shown += ", ..."
                break
            shown = candidate
        titles.append(f"level {level} ({len(names)} classes)\n{shown}")
    return titles


def draw_comparison(
    rows: Sequence[Row],
    metrics: Sequence[str],
    titles: Sequence[str],
    baseline: str | None,
    heading: str,
) -> Any:
    """The figure (a ``matplotlib.figure.Figure``) of ``rows``: one panel per metric.

    Args:
        rows: :func:`paired.paired_table`'s rows, the baseline first.
        metrics: The per-level metrics, one panel each (e.g. ``level0/linear_acc``).
        titles: The panels' titles (:func:`level_titles`).
        baseline: The baseline's name (drawn in black, dashed line); ``None``: no
            baseline, each method's mean only.
        heading: The figure's title.
    """
    from matplotlib.figure import Figure

    names = [row.variant for row in rows]
    figure = Figure(figsize=(max(6.0, 3.6 * len(metrics)), 4.2), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    colours = [f"C{i}" for i in range(10)]  # matplotlib's ten default colours
    whiskers = False
    for ax, metric, title in zip(axes, metrics, titles, strict=True):
        base_cell = rows[0].cells.get(metric) if baseline is not None else None
        if base_cell is not None:
            ax.axhline(base_cell.mean, color="black", linestyle="--", linewidth=0.8)
        for x, row in enumerate(rows):
            cell = row.cells.get(metric)
            if cell is None:
                continue
            is_base = row.variant == baseline
            shift = 0 if baseline is None else 1  # the baseline is black
            colour = "black" if is_base else colours[(x - shift) % len(colours)]
            d = cell.difference
            if d is not None and base_cell is not None:
                whiskers = True
                low, high = base_cell.mean + d.low, base_cell.mean + d.high
                yerr = [[cell.mean - low], [high - cell.mean]]
            else:
                yerr = None
            ax.errorbar(
                [x],
                [cell.mean],
                yerr=yerr,
                fmt="s" if is_base else "o",
                color=colour,
                capsize=4,
                markersize=7,
            )
            if d is not None and d.significant and base_cell is not None:
                top = base_cell.mean + d.high
                ax.annotate("*", (x, top), ha="center", va="bottom", fontsize=13, color=colour)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(
            [f"{n}\n(baseline)" if n == baseline else n for n in names],
            rotation=30 if len(names) > 4 else 0,
            ha="right" if len(names) > 4 else "center",
            fontsize=8,
        )
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.margins(y=0.25)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("linear-probe accuracy (%)")
    if whiskers:
        note = "whiskers: 95% CI of the paired difference to the baseline (dashed); * excludes 0"
    elif baseline is None:
        note = "means over the seeds; --baseline NAME adds paired intervals against NAME"
    else:
        note = "no whiskers: paired intervals need at least 2 seeds"
    figure.suptitle(f"{heading}\n{note}", fontsize=9)
    return figure


def write_comparison(
    rows: Sequence[Row],
    metrics: Sequence[str],
    titles: Sequence[str],
    baseline: str | None,
    heading: str,
    path: Path,
) -> Path:
    """Draws :func:`draw_comparison` into the PNG ``path``."""
    figure = draw_comparison(rows, metrics, titles, baseline, heading)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
