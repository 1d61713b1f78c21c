"""The lab: paired-seed comparisons of method variants on its data sets, over the suite.

One experiment = one data set, a list of variants, one baseline, seeds and a split:

    python benchmarks/lab/lab.py run --dataset mnist --split val --seeds 0-4 \\
        --variants supcon,hmce,hmce-uniform=hmce:layer_penalty=uniform --baseline supcon
    python benchmarks/lab/lab.py report runs/lab/mnist-val --baseline supcon
    # does the sampler move HMCE's gap to SupCon? (A - B) - (C - D) per seed, with its CI
    python benchmarks/lab/lab.py interaction runs/lab/mnist-val hmce-hs supcon-hs hmce supcon

The lab is a thin layer of presets over the suite: ``run`` is one call of the suite
(``benchmarks/main.py``) with the preset ``<dataset>-<budget>`` (``suite/cli.py``,
e.g. ``mnist-cpu``), ``--methods <variants> --baseline ... --eval-split <split>
--resume auto``, into ``<output-dir>/<dataset>-<split>/`` (with any budget but ``cpu``
in the name: ``cifar10-cpu-long-val``, so that budgets never mix their runs). The run
loop (seeds outermost, finished runs skipped, interrupted ones resumed) and the
statistics (``suite/paired.py``) are the suite's, so ``python benchmarks/main.py
--preset mnist-cpu --methods supcon,hmce --baseline supcon --seeds 0-4 --eval-split val``
is the same experiment. An experiment can be stopped and started again at any time.

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
- **Budgets.** ``--budget cpu`` is sized for the 2-core CPU machine, ``cpu-long``
  doubles its images and epochs, ``gpu`` is the documented GPU recipe; the values are
  the suite's presets (``suite/cli.py``: ``LAB_DATASETS``, ``BUDGETS``).

A variant is ``NAME=METHOD:KEY=VALUE:KEY=VALUE`` (or just a method name), as in the
suite's ``--methods``: keys go to the loss (``--loss-option``); ``head.KEY`` to the mask
head (``--head-option``); ``suite.KEY`` to the suite's own flag ``--KEY`` for that variant
(e.g. ``suite.temperature=0.2``; a switch takes ``true``, as in
``suite.hierarchical-sampler=true``, and ``false`` leaves it out). Values are JSON when
they parse as JSON, else strings, so ``hmc-t=hmc:temperature=[0.2,0.1]`` gives the loss
per-level temperatures (coarse to fine). A loss's ``temperature`` overrides
``suite.temperature`` (``--temperature``) for that loss; the suite flag still sets the
rest (e.g. SimCLR's NT-Xent).

Experiments run before the lab ran on the suite (one suite output folder per variant,
``<variant>/<dataset>/<method>/seed<k>``) are still read by ``report`` and
``interaction``; ``run`` writes the suite's layout, ``<dataset>/<variant>/seed<k>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# The suite's modules (``benchmarks/suite``), and this checkout's package.
_BENCHMARKS = Path(__file__).resolve().parents[1]
for _folder in (_BENCHMARKS.parent, _BENCHMARKS / "suite"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
import experiment  # noqa: E402
from cli import (  # noqa: E402
    BUDGETS,
    LAB_DATASETS,
    Variant,
    parse_seeds,
    split_variants,
)
from paired import PairedDifference, interaction, paired_difference, report  # noqa: E402

REPO_ROOT = _BENCHMARKS.parent

__all__ = [
    "BUDGETS",
    "CIFAR10_LT3_TRAIN_PER_CLASS",
    "CIFAR10_LT3_TREE",
    "LAB_DATASETS",
    "PairedDifference",
    "Variant",
    "experiment_dir",
    "interaction",
    "main",
    "paired_difference",
    "parse_seeds",
    "prepare_cifar10_lt3",
    "report",
    "run_experiment",
    "split_variants",
    "suite_argv",
]


def experiment_dir(output_dir: Path, dataset: str, split: str, budget: str = "cpu") -> Path:
    """Where one experiment's runs live: ``<dataset>-<split>``, with any budget but ``cpu``
    in the name (``cifar10-cpu-long-val``), so that budgets never mix their runs."""
    name = f"{dataset}-{split}" if budget == "cpu" else f"{dataset}-{budget}-{split}"
    return output_dir / name


def suite_argv(args: argparse.Namespace) -> list[str]:
    """The suite's command line of a lab experiment (``benchmarks/main.py`` flags)."""
    base = experiment_dir(Path(args.output_dir), args.dataset, args.split, args.budget)
    argv = ["--preset", f"{args.dataset}-{args.budget}"]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.hierarchy:
        argv += ["--hierarchy", args.hierarchy]
    argv += ["--methods", args.variants, "--baseline", args.baseline, "--seeds", args.seeds]
    argv += ["--eval-split", args.split, "--val-fraction", str(args.val_fraction)]
    argv += ["--data-seed", str(args.data_seed), "--output-dir", str(base), "--resume", "auto"]
    return [*argv, *args.suite_args]


def run_experiment(args: argparse.Namespace) -> Path:
    """Runs every (variant, seed) of the experiment that has not finished: the suite.

    Raises:
        RuntimeError: If the suite stopped with an error (it printed the reason).
    """
    base = experiment_dir(Path(args.output_dir), args.dataset, args.split, args.budget)
    argv = suite_argv(args)
    print(f"[lab] python benchmarks/main.py {' '.join(argv)}", flush=True)
    code = experiment.main(argv)
    if code != 0:
        raise RuntimeError(f"The suite stopped with exit code {code}; see its output above.")
    (base / "lab.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    return base


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


# ============================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    """``run``, ``prepare-cifar10-lt3``, ``report`` and ``interaction``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate every (variant, seed)")
    run.add_argument("--dataset", required=True, choices=sorted(LAB_DATASETS))
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
        try:
            run_experiment(args)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
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
