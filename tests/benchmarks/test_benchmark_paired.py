"""Does the hierarchy pay on my data? The suite's paired comparison on a generated
ImageFolder: summary.md with paired intervals (those of the lab's report, and of scipy),
comparison.png drawn from the same numbers, cost columns, and finished runs skipped."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import figure
import lab
import main
import paired
import pytest
from scipy import stats

from tests.benchmarks.suite_utils import TINY, make_image_folder

SEEDS = (0, 1, 2)
LEVELS = ("level0/linear_acc", "level1/linear_acc")


def _suite_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset", "imagefolder", "--data-dir", str(data),
        "--hierarchy", str(data / "taxonomy.txt"),
        "--methods", "supcon,hmce", "--seeds", "0,1,2", "--baseline", "supcon",
        "--output-dir", str(out), *TINY, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One paired suite (supcon and hmce, seeds 0-2), with the figure it drew."""
    data = tmp_path_factory.mktemp("data")
    make_image_folder(data)
    out = tmp_path_factory.mktemp("runs")
    drawn: list[Any] = []
    draw = figure.draw_comparison

    def keep(*args: Any, **kwargs: Any) -> Any:
        drawn.append(draw(*args, **kwargs))
        return drawn[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figure, "draw_comparison", keep)
        assert main.main(_suite_args(data, out)) == 0
    yield {"data": data, "out": out, "figure": drawn[-1]}


def _rows(summary: str) -> dict[str, list[str]]:
    """The table's cells by variant."""
    rows = {}
    for line in summary.splitlines():
        if line.startswith("| ") and not line.startswith(("| variant", "|---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _header(summary: str) -> list[str]:
    line = next(line for line in summary.splitlines() if line.startswith("| variant"))
    return [c.strip() for c in line.strip("|").split("|")]


NUMBER = r"[+-]?\d+\.\d+"
CELL = re.compile(rf"^({NUMBER}) \(\**({NUMBER}) \[({NUMBER}), ({NUMBER})\]\**\)$")


def test_summary_has_each_levels_mean_and_paired_interval_as_the_lab_reports(
    suite: dict[str, Any],
) -> None:
    folder = suite["out"] / "imagefolder"
    summary = (folder / "summary.md").read_text()
    header = _header(summary)
    assert header[:4] == ["variant", "seeds", *LEVELS]
    assert header[4:] == ["images/s", "train wall s", "peak memory MB"]  # the cost
    rows = _rows(summary)
    assert list(rows) == ["supcon", "hmce"] and rows["hmce"][0] == "3"
    # The lab's report of the same runs: the same table, cell for cell.
    reported = lab.report(folder, "supcon")
    assert _rows(reported) == rows
    # And the intervals are scipy's paired t-intervals of the runs' records.
    records = {
        (name, seed): json.loads((folder / name / f"seed{seed}/metrics.json").read_text())
        for name in ("supcon", "hmce")
        for seed in SEEDS
    }
    for column, metric in enumerate(LEVELS, start=1):
        ours = [100 * records["hmce", s]["eval"][metric] for s in SEEDS]
        base = [100 * records["supcon", s]["eval"][metric] for s in SEEDS]
        match = CELL.match(rows["hmce"][column])
        assert match, rows["hmce"][column]
        mean, diff, low, high = (float(v) for v in match.groups())
        assert mean == pytest.approx(sum(ours) / 3, abs=0.006)
        assert diff == pytest.approx((sum(ours) - sum(base)) / 3, abs=0.006)
        if ours != base:
            ci = stats.ttest_rel(ours, base).confidence_interval(0.95)
            assert (low, high) == (
                pytest.approx(ci.low, abs=0.006),
                pytest.approx(ci.high, abs=0.006),
            )
        bold = "**" in rows["hmce"][column]
        assert bold == (low > 0 or high < 0)
        assert float(rows["supcon"][column]) == pytest.approx(sum(base) / 3, abs=0.006)
    for cell in rows["hmce"][3:]:
        assert float(cell) > 0  # images/s, wall seconds, peak MB


def test_comparison_png_is_written_and_draws_the_summarys_numbers(suite: dict[str, Any]) -> None:
    import matplotlib.image

    folder = suite["out"] / "imagefolder"
    png = folder / "comparison.png"
    assert matplotlib.image.imread(str(png)).shape[0] > 100  # a PNG, read back
    rows = _rows((folder / "summary.md").read_text())
    axes = suite["figure"].axes
    assert len(axes) == 2  # one panel per level
    assert axes[0].get_title().startswith("level 0 (2 classes)\nangular, round")
    assert axes[1].get_title().startswith("level 1 (4 classes)")
    for column, ax in enumerate(axes, start=1):
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["supcon\n(baseline)", "hmce"]
        base_mean = float(rows["supcon"][column])
        supcon, hmce = ax.containers
        assert supcon.lines[0].get_ydata()[0] == pytest.approx(base_mean, abs=0.006)
        match = CELL.match(rows["hmce"][column])
        assert match
        mean, _, low, high = (float(v) for v in match.groups())
        assert hmce.lines[0].get_ydata()[0] == pytest.approx(mean, abs=0.006)
        # The whisker: the paired interval around hmce's mean, baseline mean + [low, high].
        (segment,) = hmce.lines[2][0].get_segments()
        ends = sorted(float(y) for _, y in segment)
        assert ends == [
            pytest.approx(base_mean + low, abs=0.012),
            pytest.approx(base_mean + high, abs=0.012),
        ]
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert dashed and dashed[0].get_ydata()[0] == pytest.approx(base_mean, abs=0.006)


def test_without_a_baseline_the_figure_has_means_only() -> None:
    runs = {name: {0: {"level0/linear_acc": acc}} for name, acc in [("a", 0.5), ("b", 0.7)]}
    rows = paired.paired_table(runs, None, ["level0/linear_acc"], (), ["a", "b"])
    assert [row.cells["level0/linear_acc"] for row in rows] == [
        paired.Cell(50.0),
        paired.Cell(70.0),
    ]
    drawn = figure.draw_comparison(rows, ["level0/linear_acc"], ["level 0"], None, "t")
    (ax,) = drawn.axes
    assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert all(not c.lines[2] for c in ax.containers)  # no whiskers


def test_a_rerun_skips_the_finished_runs_and_writes_the_same_summary(
    suite: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = suite["out"] / "imagefolder"
    before = (folder / "summary.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/seed*/metrics.json")}
    assert len(stamps) == 6
    assert main.main(_suite_args(suite["data"], suite["out"], "--resume", "auto")) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 6
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained or probed
    assert (folder / "summary.md").read_text() == before


def test_the_statistics_are_written_once() -> None:
    """The lab's report, interval and table are the suite's (suite/paired.py)."""
    assert lab.report is paired.report and lab.paired_difference is paired.paired_difference
    assert lab.interaction is paired.interaction
    source = Path(lab.__file__).read_text()
    assert "stats.t" not in source and "subprocess" not in source


def test_variants_set_loss_head_and_suite_options_per_run(tmp_path: Path) -> None:
    """``NAME=METHOD:KEY=VALUE`` as in the lab: each variant's options reach its runs only."""
    import cli

    args = main.parse_args(["--methods", "supcon,m=hmce:hierarchy_margin=0.2:suite.lr=0.1"])
    variants = cli.resolve_variants(args.methods)
    assert [v.name for v in variants] == ["supcon", "m"]
    plain, margin = (cli.variant_args(args, v) for v in variants)
    assert plain.loss_option == [] and plain.lr == 0.5 and plain.methods == "supcon"
    assert margin.loss_option == ["hierarchy_margin=0.2"] and margin.lr == 0.1
    assert margin.variant == "m" and margin.methods == "hmce" and args.lr == 0.5
    with pytest.raises(main.UserError, match="not a flag"):
        cli.variant_args(args, cli.Variant.parse("x=hmce:suite.nope=1"))
    with pytest.raises(main.UserError, match="--baseline 'nope' is not one of"):
        main.check_args(main.parse_args(["--methods", "supcon,hmce", "--baseline", "nope"]))
    assert cli.parse_seeds("0-4") == [0, 1, 2, 3, 4]


def test_the_lab_runs_the_suite_with_its_preset(tmp_path: Path) -> None:
    """``lab.py run --dataset shapes`` is the suite with the preset ``shapes-cpu``."""
    tiny = ["--train-samples", "64", "--test-samples", "32", *TINY]
    code = lab.main(
        [
            "run", "--dataset", "shapes", "--variants", "supcon,hm=hmce:hierarchy_margin=0.2",
            "--baseline", "supcon", "--seeds", "0-1", "--split", "val",
            "--output-dir", str(tmp_path), "--", *tiny,
        ]
    )  # fmt: skip
    assert code == 0
    base = tmp_path / "shapes-val"
    summary = (base / "shapes" / "summary.md").read_text()
    assert "(val split)" in summary and _rows(summary) == _rows(lab.report(base, "supcon"))
    config = json.loads((base / "shapes/hm/seed1/config.json").read_text())
    assert config["preset"] == "shapes-cpu" and config["eval_split"] == "val"
    assert config["loss_option"] == ["hierarchy_margin=0.2"] and config["epochs"] == 1
    assert (base / "lab.json").is_file()


def test_logger_tensorboard_writes_event_files(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    args = ["--methods", "hmce", "--train-samples", "32", "--test-samples", "16", *TINY]
    assert main.main([*args, "--logger", "tensorboard", "--output-dir", str(tmp_path)]) == 0
    events = list((tmp_path / "shapes/hmce/seed0/logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert not list((tmp_path / "shapes/hmce/seed0/logs").rglob("metrics.csv"))


def test_logger_tensorboard_without_the_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cli

    monkeypatch.setattr(cli, "tensorboard_available", lambda: False)
    args = ["--methods", "hmce", "--logger", "tensorboard", "--output-dir", str(tmp_path)]
    assert main.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --logger tensorboard needs") and err.count("\n") == 1
    assert '".[tensorboard]"' in err
    assert not (tmp_path / "shapes").exists()  # refused before any data or run
