"""The lab: paired-seed comparisons of method variants, with confidence intervals.

One experiment = one dataset, a list of variants, one baseline, seeds and a split:

    python benchmarks/lab/lab.py run --dataset mnist --split val --seeds 0-4 \\
        --variants supcon,hmce,hmce-uniform=hmce:layer_penalty=uniform --baseline supcon
    python benchmarks/lab/lab.py report runs/lab/mnist-val --baseline supcon
    # does the sampler move HMCE's gap to SupCon? (A - B) - (C - D) per seed, with its CI
    python benchmarks/lab/lab.py interaction runs/lab/mnist-val hmce-hs supcon-hs hmce supcon

Protocol (what makes the differences trustworthy):

- **Choose on validation, report on test.** ``--split val`` trains on the train split
  minus a validation part carved from it (stratified, fixed by ``--data-seed``) and
  probes on that part; ``--split test`` trains the same recipe and probes on the test
  split. Every choice is made on ``val``; ``test`` is run once, for the final table.
- **Paired seeds.** With a given seed the suite gives every method the same data order
  and the same augmentations, and the same initial backbone weights. The report shows,
  per metric, each variant's mean and the mean paired difference against the baseline
  with a 95% t-interval over the seeds (``mean +- t_{0.975, n-1} * sd / sqrt(n)``). A
  difference whose interval contains 0 is no difference.
- **Budgets.** ``--budget cpu`` is sized for the 2-core CPU machine (one run takes about
  a minute on an idle machine: ``resnet_tiny_cifar``, 3,000 training images, 3 epochs,
  probes on 2,000 evaluation images); ``--budget cpu-long`` doubles its images and epochs;
  ``--budget gpu`` is the documented GPU recipe (ResNet-18, full data, 100 epochs). All
  are in :data:`BUDGETS`, per dataset; a budget other than ``cpu`` names its folder.

Each run is one call of ``benchmarks/main.py`` (so every run also has the suite's full
records), in ``<output-dir>/<dataset>-<split>/<variant>/``. Finished runs are skipped and
interrupted ones resumed (``--resume auto``), so an experiment can be stopped and started
again at any time.

A variant is ``NAME=METHOD:KEY=VALUE:KEY=VALUE`` (or just a method name). Keys go to the
loss (``--loss-option``); ``head.KEY`` to the mask head (``--head-option``); ``suite.KEY``
to the suite's own flag ``--KEY`` (e.g. ``suite.temperature=0.2``; a switch takes ``true``,
as in ``suite.hierarchical-sampler=true``, and ``false`` leaves it out). Values are JSON when
they parse as JSON, else strings, so ``hmc-t=hmc:temperature=[0.2,0.1]`` gives the loss
per-level temperatures (coarse to fine), ``hmc-in=hmc:supcon_form=in`` the L_in form and
``hmc-inst=hmc:instance_weight=1.0`` the explicit instance term. A loss's ``temperature``
overrides ``suite.temperature`` (``--temperature``) for that loss; the suite flag still
sets the rest (e.g. SimCLR's NT-Xent).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# The suite's flags per (budget, dataset). ``{data}`` is the dataset's file or folder.
_CPU_COMMON = [
    "--backbone", "resnet_tiny_cifar", "--batch-size", "128", "--probe-epochs", "30",
    "--test-samples", "2000", "--no-progress-bar", "--no-plots",
]  # fmt: skip
_GPU_COMMON = [
    "--backbone", "resnet18_cifar", "--batch-size", "512", "--epochs", "100",
    "--probe-epochs", "100", "--precision", "bf16-mixed", "--num-workers", "8",
    "--no-progress-bar", "--no-plots",
]  # fmt: skip
_CPU: dict[str, list[str]] = {
    "mnist": ["--dataset", "mnist", "--data-dir", "{data}", "--train-samples", "3000",
              "--epochs", "3", *_CPU_COMMON],
    "cifar10": ["--dataset", "cifar10", "--data-dir", "{data}", "--train-samples", "3000",
                "--epochs", "3", *_CPU_COMMON],
    "cifar10-lt3": ["--dataset", "cifar10", "--data-dir", "{data}", "--hierarchy",
                    "{hierarchy}", "--epochs", "3", *_CPU_COMMON],
    "cifar10-mixed": ["--dataset", "cifar10", "--data-dir", "{data}", "--hierarchy",
                      "{hierarchy}", "--train-samples", "3000", "--epochs", "3",
                      *_CPU_COMMON],
    "shapes": ["--dataset", "shapes", "--train-samples", "3000", "--epochs", "6",
               *_CPU_COMMON],
}  # fmt: skip


def _scaled(flags: list[str], factor: int) -> list[str]:
    """``flags`` with ``--train-samples`` and ``--epochs`` multiplied by ``factor``.

    A dataset without ``--train-samples`` (the long-tailed set: all of it) keeps its size.
    """
    out = list(flags)
    for flag in ("--train-samples", "--epochs"):
        if flag in out:
            at = out.index(flag) + 1
            out[at] = str(int(out[at]) * factor)
    return out


BUDGETS: dict[str, dict[str, list[str]]] = {
    "cpu": _CPU,
    # Twice the ``cpu`` budget's training images and epochs (4x the steps; about 5
    # minutes of training a CIFAR-10 run on one core): the ``cpu`` budget's CIFAR-10 fine
    # probe (31.6 %) is close to the untrained backbone's (26 %; RESULTS.md, "cpu-long").
    "cpu-long": {name: _scaled(flags, 2) for name, flags in _CPU.items()},
    "gpu": {
        "mnist": ["--dataset", "mnist", "--data-dir", "{data}", *_GPU_COMMON],
        "cifar10": ["--dataset", "cifar10", "--data-dir", "{data}", *_GPU_COMMON],
        "cifar10-lt3": ["--dataset", "cifar10", "--data-dir", "{data}", "--hierarchy",
                        "{hierarchy}", *_GPU_COMMON],
        "cifar10-mixed": ["--dataset", "cifar10", "--data-dir", "{data}", "--hierarchy",
                          "{hierarchy}", *_GPU_COMMON],
        "shapes": ["--dataset", "shapes", "--train-samples", "20000", *_GPU_COMMON],
    },
}  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """A named method with loss, head and suite options."""

    name: str
    method: str
    loss_options: dict[str, Any] = field(default_factory=dict)
    head_options: dict[str, Any] = field(default_factory=dict)
    suite_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Variant:
        """Parses ``NAME=METHOD:KEY=VALUE:...`` or ``METHOD``."""
        name, _, spec = text.partition("=") if "=" in text.split(":")[0] else (text, "", text)
        method, *pairs = spec.split(":")
        if not name or not method:
            raise ValueError(f"Bad variant {text!r}: write NAME=METHOD:KEY=VALUE:... or METHOD.")
        loss: dict[str, Any] = {}
        head: dict[str, Any] = {}
        suite: dict[str, Any] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"Bad option {pair!r} in variant {text!r}: write KEY=VALUE.")
            target = loss
            for prefix, options in (("head.", head), ("suite.", suite)):
                if key.startswith(prefix):
                    key, target = key.removeprefix(prefix), options
            target[key] = _parse_value(raw)
        return cls(name, method, loss, head, suite)

    def suite_args(self) -> list[str]:
        """The suite flags that select this variant."""
        out = ["--methods", self.method]
        for key, value in self.loss_options.items():
            out += ["--loss-option", f"{key}={json.dumps(value)}"]
        for key, value in self.head_options.items():
            out += ["--head-option", f"{key}={json.dumps(value)}"]
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
    return [p for p in [*parts, current] if p]


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_seeds(text: str) -> list[int]:
    """``0-4`` or ``0,1,2``."""
    if "-" in text and "," not in text:
        low, high = (int(v) for v in text.split("-"))
        return list(range(low, high + 1))
    return [int(v) for v in text.split(",") if v]


def experiment_dir(output_dir: Path, dataset: str, split: str, budget: str = "cpu") -> Path:
    """Where one experiment's runs live: ``<dataset>-<split>``, with any budget but ``cpu``
    in the name (``cifar10-cpu-long-val``), so that budgets never mix their runs."""
    name = f"{dataset}-{split}" if budget == "cpu" else f"{dataset}-{budget}-{split}"
    return output_dir / name


def run_experiment(args: argparse.Namespace) -> Path:
    """Runs every (variant, seed) that has no metrics yet, one at a time."""
    variants = [Variant.parse(v) for v in split_variants(args.variants)]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"Variant names must be unique, got {names}.")
    base = experiment_dir(Path(args.output_dir), args.dataset, args.split, args.budget)
    template = BUDGETS[args.budget][args.dataset]
    data = args.data_dir or _default_data(args.dataset)
    common = [
        a.format(data=data, hierarchy=args.hierarchy or _default_hierarchy(args.dataset))
        for a in template
    ]
    common += ["--eval-split", args.split, "--val-fraction", str(args.val_fraction)]
    common += ["--data-seed", str(args.data_seed), *args.suite_args]
    for seed in parse_seeds(args.seeds):
        for variant in variants:  # seeds outermost: a cut-off experiment stays paired
            out = base / variant.name
            if _metrics_file(out, seed) is not None:
                continue
            command = [
                sys.executable, str(REPO_ROOT / "benchmarks" / "main.py"), *common,
                *variant.suite_args(), "--seeds", str(seed), "--output-dir", str(out),
                "--resume", "auto",
            ]  # fmt: skip
            print(f"[lab] {variant.name} seed {seed}: {' '.join(command[2:])}", flush=True)
            log = out / f"seed{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as handle:
                code = subprocess.call(
                    command, stdout=handle, stderr=subprocess.STDOUT, env=suite_environment()
                )
            if code != 0:
                raise RuntimeError(f"{variant.name} seed {seed} failed ({code}); see {log}.")
    (base / "lab.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    return base


def suite_environment() -> dict[str, str]:
    """The environment of a run: this checkout's ``lightly_hmlc`` first on the path.

    An editable install points at ONE checkout; without this, a run started from another
    worktree (a frozen copy for a long experiment, say) would import the package from
    the install's checkout, while its records name this checkout's commit.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return env


def _default_data(dataset: str) -> str:
    return {
        "mnist": str(SHARED_DATA / "mnist.npz"),
        "cifar10": str(REPO_ROOT / ".data" / "cifar10-jpeg"),
        "cifar10-lt3": str(REPO_ROOT / ".data" / "cifar10-lt3"),
        "cifar10-mixed": str(REPO_ROOT / ".data" / "cifar10-jpeg"),
    }.get(dataset, "")


def _default_hierarchy(dataset: str) -> str:
    if dataset == "cifar10-mixed":
        return str(REPO_ROOT / "benchmarks" / "suite" / "hierarchies" / "cifar10_mixed.txt")
    return str(REPO_ROOT / ".data" / "cifar10-lt3" / "hierarchy.txt")


def _metrics_file(variant_dir: Path, seed: int) -> Path | None:
    found = sorted(variant_dir.glob(f"*/*/seed{seed}/metrics.json"))
    return found[0] if found else None


# ============================================================================ datasets
# CIFAR-10 as a 3-level tree whose coarse classes are imbalanced (issue: coarse-level
# imbalance): vehicles keep 100 training images per class, animals 500, so the coarse
# split is 400 : 3000. The test split stays whole and balanced.
CIFAR10_LT3_TREE = {
    "vehicle": {"air_water": ["airplane", "ship"], "road": ["automobile", "truck"]},
    "animal": {"mammal": ["cat", "deer", "dog", "horse"], "other_animal": ["bird", "frog"]},
}
CIFAR10_LT3_TRAIN_PER_CLASS = {"vehicle": 100, "animal": 500}


def prepare_cifar10_lt3(source: Path, out: Path) -> Path:
    """Builds ``out/{train,test}/<class>/`` (symlinks into ``source``) and ``hierarchy.txt``.

    ``source`` is the extracted ``cifar10-jpeg`` folder. The training images kept are the
    first ones in file-name order, so the set is the same on every machine.
    """
    edges = []
    for root, groups in CIFAR10_LT3_TREE.items():
        for group, classes in groups.items():
            edges.append(f"{root} {group}")
            for name in classes:
                edges.append(f"{group} {name}")
                for split in ("train", "test"):
                    files = sorted((source / split / name).glob("*.jpg"))
                    if not files:
                        raise FileNotFoundError(f"No images in {source / split / name}.")
                    if split == "train":
                        files = files[: CIFAR10_LT3_TRAIN_PER_CLASS[root]]
                    target = out / split / name
                    target.mkdir(parents=True, exist_ok=True)
                    for file in files:
                        link = target / file.name
                        if not link.exists():
                            link.symlink_to(file.resolve())
    (out / "hierarchy.txt").write_text("\n".join(edges) + "\n")
    return out


# ============================================================================ statistics
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


def collect(
    base: Path, seeds: Sequence[int] | None = None
) -> dict[str, dict[int, dict[str, float]]]:
    """``{variant: {seed: flat eval metrics}}`` of an experiment's finished runs (of
    ``seeds`` only, if given)."""
    results: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted(base.glob("*/*/*/seed*/metrics.json")):
        variant = path.relative_to(base).parts[0]
        seed = int(path.parent.name.removeprefix("seed"))
        if seeds is not None and seed not in seeds:
            continue
        record = json.loads(path.read_text())
        flat = {k: v for k, v in record["eval"].items() if isinstance(v, int | float)}
        results.setdefault(variant, {})[seed] = flat
    return results


def default_metrics(results: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    """The per-level linear accuracies, coarse to fine."""
    keys = {k for runs in results.values() for m in runs.values() for k in m}
    return sorted(k for k in keys if k.endswith("/linear_acc"))


def _is_fraction(metric: str) -> bool:
    """Accuracies and NMI are reported in %; other metrics as they are."""
    return metric.endswith(("_acc", "/nmi")) or "implied_acc" in metric


def _interval_text(d: PairedDifference, digits: int) -> str:
    """``+1.23 [+0.45, +2.01]``, bold when the interval excludes 0."""
    mark = "**" if d.significant else ""
    return f"{mark}{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]{mark}"


def report(
    base: Path,
    baseline: str,
    metrics: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> str:
    """The experiment's table: per variant and metric, mean and paired difference + CI
    (over ``seeds`` only, if given: one experiment folder may hold several questions)."""
    results = collect(base, seeds)
    if baseline not in results:
        raise ValueError(f"No finished run of the baseline {baseline!r} in {base}.")
    metrics = list(metrics or default_metrics(results))
    lines = [
        f"Experiment `{base.name}`, baseline `{baseline}`; accuracies in %, paired "
        "difference against the baseline as mean [95% CI] over the seeds both have "
        "(bold: the interval excludes 0).",
        "",
        "| variant | seeds | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for variant, runs in sorted(results.items(), key=lambda kv: (kv[0] != baseline, kv[0])):
        seeds = sorted(set(runs) & set(results[baseline]))
        cells = []
        for metric in metrics:
            scale = 100.0 if _is_fraction(metric) else 1.0
            values = [scale * runs[s][metric] for s in seeds if metric in runs[s]]
            if not values:
                cells.append("-")
                continue
            mean = sum(values) / len(values)
            if variant == baseline or len(values) < 2:
                cells.append(f"{mean:.{2 if scale == 100.0 else 3}f}")
                continue
            base_values = [scale * results[baseline][s][metric] for s in seeds]
            if len(values) != len(base_values):
                cells.append(f"{mean:.2f}")
                continue
            digits = 2 if scale == 100.0 else 3
            difference = _interval_text(paired_difference(values, base_values), digits)
            cells.append(f"{mean:.{digits}f} ({difference})")
        lines.append(f"| {variant} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    results = collect(base, seeds)
    names = [*first, *second]
    missing = [name for name in names if name not in results]
    if missing:
        raise ValueError(f"No finished run of {missing} in {base}.")
    seeds = sorted(set.intersection(*(set(results[name]) for name in names)))
    metrics = list(metrics or default_metrics(results))
    label = f"({first[0]} - {first[1]}) - ({second[0]} - {second[1]})"
    lines = [
        f"Experiment `{base.name}`: per seed {label}, in points for accuracies, as mean "
        f"[95% CI] over the {len(seeds)} seeds all four have (bold: the interval excludes 0).",
        "",
        "| contrast | seeds | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    cells = []
    for metric in metrics:
        scale = 100.0 if _is_fraction(metric) else 1.0
        gap = [scale * (results[first[0]][s][metric] - results[first[1]][s][metric]) for s in seeds]
        ref = [
            scale * (results[second[0]][s][metric] - results[second[1]][s][metric]) for s in seeds
        ]
        cells.append(_interval_text(paired_difference(gap, ref), 2 if scale == 100.0 else 3))
    lines.append(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ============================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    """``run``, ``prepare-cifar10-lt3``, ``report`` and ``interaction``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate every (variant, seed)")
    run.add_argument("--dataset", required=True, choices=sorted(BUDGETS["cpu"]))
    run.add_argument("--variants", required=True, help="comma list of variants")
    run.add_argument("--baseline", required=True, help="the variant to compare against")
    run.add_argument("--seeds", default="0-4")
    run.add_argument("--split", default="val", choices=["val", "test"])
    run.add_argument("--val-fraction", type=float, default=0.1)
    run.add_argument("--data-seed", type=int, default=0)
    run.add_argument("--budget", default="cpu", choices=sorted(BUDGETS))
    run.add_argument("--data-dir", default=None)
    run.add_argument("--hierarchy", default=None)
    run.add_argument("--output-dir", default=str(REPO_ROOT / "runs" / "lab"))
    run.add_argument("suite_args", nargs=argparse.REMAINDER, help="after --: suite flags")
    prep = sub.add_parser("prepare-cifar10-lt3", help="build the 3-level long-tailed CIFAR-10")
    prep.add_argument("--source", default=str(REPO_ROOT / ".data" / "cifar10-jpeg"))
    prep.add_argument("--out", default=str(REPO_ROOT / ".data" / "cifar10-lt3"))
    rep = sub.add_parser("report", help="print an experiment's table")
    rep.add_argument("experiment", help="an experiment folder, e.g. runs/lab/mnist-val")
    rep.add_argument("--baseline", required=True)
    rep.add_argument("--metrics", default=None, help="comma list (default: linear accuracies)")
    rep.add_argument("--seeds", default=None, help="only these seeds, e.g. 40-44 (default: all)")
    both = sub.add_parser(
        "interaction", help="does a change move a gap: (A - B) - (C - D) per seed, with its CI"
    )
    both.add_argument("experiment", help="an experiment folder, e.g. runs/lab/mnist-val")
    both.add_argument("variants", nargs=4, metavar="A B C D")
    both.add_argument("--metrics", default=None, help="comma list (default: linear accuracies)")
    both.add_argument("--seeds", default=None, help="only these seeds, e.g. 40-44 (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs or reports an experiment."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        args.suite_args = [a for a in args.suite_args if a != "--"]
        base = run_experiment(args)
        print(report(base, args.baseline))
        return 0
    if args.command == "prepare-cifar10-lt3":
        print(prepare_cifar10_lt3(Path(args.source), Path(args.out)))
        return 0
    metrics = args.metrics.split(",") if args.metrics else None
    seeds = parse_seeds(args.seeds) if args.seeds else None
    if args.command == "interaction":
        a, b, c, d = args.variants
        print(interaction(Path(args.experiment), (a, b), (c, d), metrics, seeds))
        return 0
    print(report(Path(args.experiment), args.baseline, metrics, seeds))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
