"""The lab's variant syntax, paired intervals, report, presets and long-tailed CIFAR-10."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import UserError
from lab import Variant, interaction, paired_difference, prepare_cifar10_lt3, report
from scipy import stats

from lightly_hmlc.hierarchy import LabelHierarchy


def test_variant_parse_routes_options() -> None:
    v = Variant.parse("hmce-u=hmce:layer_penalty=uniform:head.gate=softmax:suite.temperature=0.2")
    assert (v.name, v.method) == ("hmce-u", "hmce")
    assert v.loss_options == {"layer_penalty": "uniform"}
    assert v.head_options == {"gate": "softmax"}
    assert v.suite_options == {"temperature": 0.2}
    assert v.suite_args() == [
        "--methods", "hmce",
        "--loss-option", 'layer_penalty="uniform"',
        "--head-option", 'gate="softmax"',
        "--temperature", "0.2",
    ]  # fmt: skip
    assert Variant.parse("supcon") == Variant("supcon", "supcon")
    switch = Variant.parse("s=supcon:suite.hierarchical-sampler=true:suite.no-plots=false")
    assert switch.suite_args() == ["--methods", "supcon", "--hierarchical-sampler"]
    with pytest.raises(UserError, match="KEY=VALUE"):
        Variant.parse("x=hmce:oops")


def test_paired_difference_equals_scipy_paired_t_interval() -> None:
    a = [0.91, 0.88, 0.93, 0.90, 0.87]
    b = [0.89, 0.88, 0.90, 0.86, 0.88]
    d = paired_difference(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert d.low == pytest.approx(ci.low) and d.high == pytest.approx(ci.high)
    assert d.n == 5 and not d.significant  # the interval contains 0
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0, 2.0], [1.0])


def _write_run(base: Path, variant: str, seed: int, acc: float) -> None:
    run = base / variant / "mnist" / variant / f"seed{seed}"
    run.mkdir(parents=True)
    record = {"eval": {"level0/linear_acc": acc, "level1/linear_acc": acc / 2}}
    (run / "metrics.json").write_text(json.dumps(record))


def test_interaction_is_the_paired_interval_of_the_two_gaps(tmp_path: Path) -> None:
    accs = {  # seed: (a, b, c, d)
        0: (0.80, 0.85, 0.82, 0.83),
        1: (0.78, 0.86, 0.81, 0.84),
        2: (0.79, 0.84, 0.80, 0.82),
    }
    for seed, values in accs.items():
        for name, acc in zip("abcd", values, strict=True):
            _write_run(tmp_path, name, seed, acc)
    _write_run(tmp_path, "a", 9, 0.5)  # only one variant has seed 9: left out
    text = interaction(tmp_path, ("a", "b"), ("c", "d"), ["level0/linear_acc"])
    gaps = [100 * ((a - b) - (c - d)) for a, b, c, d in accs.values()]
    ci = stats.ttest_1samp(gaps, 0.0).confidence_interval(0.95)
    row = next(line for line in text.splitlines() if line.startswith("| (a - b) - (c - d)"))
    assert f"{sum(gaps) / 3:+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]" in row
    assert "| 3 |" in row and "**" in row  # -4, -5, -3 points: beyond the interval
    with pytest.raises(ValueError, match="No finished run"):
        interaction(tmp_path, ("a", "b"), ("c", "nope"))


def test_report_pairs_seeds_and_marks_significant(tmp_path: Path) -> None:
    for seed, (a, b) in enumerate([(0.80, 0.85), (0.82, 0.88), (0.81, 0.86)]):
        _write_run(tmp_path, "supcon", seed, a)
        _write_run(tmp_path, "hmce", seed, b)
    _write_run(tmp_path, "hmce", 7, 0.99)  # no baseline run for seed 7: not paired
    text = report(tmp_path, "supcon")
    row = next(line for line in text.splitlines() if line.startswith("| hmce"))
    assert "| 3 |" in row  # only the 3 paired seeds
    assert "**+5.33" in row  # level 0: +5.33 points, CI above 0
    with pytest.raises(ValueError, match="baseline"):
        report(tmp_path, "nope")
    only = report(tmp_path, "supcon", seeds=[0, 1])
    row = next(line for line in only.splitlines() if line.startswith("| hmce"))
    assert "| 2 |" in row and "+5.50" in row  # seeds 0 and 1: +5 and +6 points


def test_prepare_cifar10_lt3_builds_a_3_level_imbalanced_tree(tmp_path: Path) -> None:
    source = tmp_path / "cifar10-jpeg"
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
    for split in ("train", "test"):
        for name in [*names, "truck"]:
            folder = source / split / name
            folder.mkdir(parents=True)
            for i in range(600 if split == "train" else 3):
                (folder / f"{i:04d}.jpg").write_bytes(b"")
    out = prepare_cifar10_lt3(source, tmp_path / "lt3")
    hierarchy = LabelHierarchy.load(out / "hierarchy.txt")
    assert hierarchy.num_classes_per_level == [2, 4, 10]
    assert len(list((out / "train" / "truck").iterdir())) == 100
    assert len(list((out / "train" / "cat").iterdir())) == 500
    assert len(list((out / "test" / "cat").iterdir())) == 3


def test_variant_list_keeps_json_lists_whole() -> None:
    from lab import split_variants

    text = "supcon,aux=hmc:layer_penalty=[1.0,2.0]:hierarchy_margin=0.1,hmce"
    names = [Variant.parse(v).name for v in split_variants(text)]
    assert names == ["supcon", "aux", "hmce"]
    assert Variant.parse(split_variants(text)[1]).loss_options["layer_penalty"] == [1.0, 2.0]


def test_cifar10_mixed_pairs_every_class_with_a_class_of_the_other_kind() -> None:
    from cli import PRESETS
    from lab import BUDGETS, CIFAR10_LT3_TREE, LAB_DATASETS

    hierarchy = LabelHierarchy.load(LAB_DATASETS["cifar10-mixed"]["hierarchy"])
    cifar10 = LabelHierarchy.cifar10()
    assert hierarchy.num_classes_per_level == [5, 10]
    assert sorted(hierarchy.leaves) == sorted(cifar10.leaves)
    vehicles = {name for group in CIFAR10_LT3_TREE["vehicle"].values() for name in group}
    coarse_classes = [name for name in hierarchy.classes if hierarchy.level_of(name) == 0]
    assert len(coarse_classes) == 5
    for coarse in coarse_classes:
        members = hierarchy.children(coarse)
        assert len(members) == 2
        # No coarse class is two vehicles: the grouping is not the visual one.
        assert len(vehicles.intersection(members)) <= 1
    for budget in BUDGETS:
        assert PRESETS[f"cifar10-mixed-{budget}"]["hierarchy"].endswith("cifar10_mixed.txt")


def test_cpu_long_budget_doubles_size_and_epochs_and_keeps_its_own_folder(tmp_path: Path) -> None:
    from cli import PRESETS
    from lab import LAB_DATASETS, experiment_dir

    for dataset in LAB_DATASETS:
        short, long = PRESETS[f"{dataset}-cpu"], PRESETS[f"{dataset}-cpu-long"]
        assert long["epochs"] == 2 * short["epochs"]
        size = short["train_samples"]
        # The long-tailed set trains on all of its images under every budget.
        assert long["train_samples"] == (None if size is None else 2 * size)
        rest = {k: v for k, v in long.items() if k not in ("epochs", "train_samples")}
        assert rest == {k: v for k, v in short.items() if k not in ("epochs", "train_samples")}
    assert PRESETS["mnist-cpu"]["epochs"] == 3 and PRESETS["shapes-cpu"]["epochs"] == 6
    assert PRESETS["mnist-gpu"]["backbone"] == "resnet18_cifar"
    assert experiment_dir(tmp_path, "cifar10", "val") == tmp_path / "cifar10-val"
    assert (
        experiment_dir(tmp_path, "cifar10", "val", "cpu-long") == tmp_path / "cifar10-cpu-long-val"
    )


def test_lab_run_is_one_suite_command_with_the_preset(tmp_path: Path) -> None:
    from lab import build_parser, suite_argv

    args = build_parser().parse_args(
        ["run", "--dataset", "cifar10-lt3", "--variants", "supcon,hmce", "--baseline", "hmce",
         "--budget", "cpu-long", "--output-dir", str(tmp_path), "--", "--threads", "1"]
    )  # fmt: skip
    args.suite_args = [a for a in args.suite_args if a != "--"]
    argv = suite_argv(args)
    assert argv[:2] == ["--preset", "cifar10-lt3-cpu-long"]
    assert argv[argv.index("--output-dir") + 1] == str(tmp_path / "cifar10-lt3-cpu-long-val")
    assert ["--eval-split", "val"] == argv[
        argv.index("--eval-split") : argv.index("--eval-split") + 2
    ]
    assert argv[-4:] == ["--resume", "auto", "--threads", "1"]


def test_the_suite_imports_the_package_of_its_checkout(tmp_path: Path) -> None:
    """A run's records name its checkout's commit, so its package must be the one imported,
    from any folder and without PYTHONPATH (not an installed copy of another checkout).
    The lab's and the speed scripts' first lines are the same as main.py's."""
    import os
    import subprocess
    import sys

    from lab import REPO_ROOT

    code = (
        f"import runpy; runpy.run_path({str(REPO_ROOT / 'benchmarks' / 'main.py')!r}, "
        "run_name='imported'); import lightly_hmlc; print(lightly_hmlc.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert Path(out.stdout.strip()).resolve().is_relative_to(REPO_ROOT.resolve())
