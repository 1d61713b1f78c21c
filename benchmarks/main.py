"""Benchmark suite: hierarchical contrastive learning methods on one dataset, many seeds.

Every method of ``METHODS`` pretrains the same backbone on the same two-view batches;
afterwards the frozen backbone's features are extracted once and probed at every level
of the label hierarchy (``suite/evaluate.py``: linear probe, kNN, NMI, hierarchical
metrics). Each run writes ``<output-dir>/<dataset>/<method>/seed<k>/`` with
``config.json``, ``environment.json``, ``metrics.json``, ``metrics.md``, plots and
checkpoints; the suite ends with ``<output-dir>/<dataset>/summary.md``, a per-level
table of every method (mean ± std over seeds; with ``--baseline``, each method's mean
paired difference against the baseline with its 95% t-interval), with images/s, wall
time and peak memory, and ``comparison.png``, the same as a picture
(``docs/your-data.md``).

Usage::

    python benchmarks/main.py                     # all methods on synthetic shapes, CPU
    python benchmarks/main.py --methods hmce,a-hmlc --seeds 0,1,2
    python benchmarks/main.py --dataset imagefolder --data-dir D --hierarchy T \\
        --methods supcon,hmce,m2=hmce:hierarchy_margin=0.2 --baseline supcon \\
        --seeds 0-4 --eval-split val          # paired intervals against supcon
    python benchmarks/main.py --preset cifar100-paper --data-dir data/cifar-100-python \\
        --accelerator gpu --devices 4 --strategy ddp --precision bf16-mixed
    python benchmarks/main.py --dataset imagefolder --data-dir /data/birds \\
        --hierarchy birds_tree.txt --backbone resnet50 --input-size 224
    python benchmarks/main.py --resume auto       # continue interrupted runs
    python benchmarks/main.py compare runs/shapes  # table of finished runs

``benchmarks/`` holds one folder per job: ``suite/`` is this suite (``datasets.py``: the
dataset table, the validation split, the seeded two-view loader; ``methods.py``: one
LightningModule per method, every loss of ``lightly_hmlc.registry`` is a method;
``run.py``: one run, with Trainer, checkpoints, signals, resume checks and evaluation;
``experiment.py``: every run of one invocation and the summary; ``paired.py``: the
paired intervals; ``figure.py``: ``comparison.png``; ``records.py``: run
records and environment; ``cli.py``: presets and flags; ``evaluate.py``: probes;
``compare.py``: tables of finished runs); ``lab/`` the lab (``lab.py``) and the scripts
that analyse finished runs; ``speed/`` the speed and memory measurements. Presets
(``--preset``) set defaults that explicit arguments override; see
``suite/PRESETS.md``.

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

import sys
from pathlib import Path

# The suite's modules, and this checkout's package ahead of any installed copy (a run's
# records name this checkout's commit).
_BENCHMARKS = Path(__file__).resolve().parent
for _folder in (_BENCHMARKS.parent, _BENCHMARKS / "suite"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from cli import PRESETS, build_parser, check_args, parse_args, resolve_methods  # noqa: E402
from datasets import (  # noqa: E402
    DATASETS,
    DatasetBundle,
    EpochBatchSampler,
    SeededViews,
    TagEpoch,
    UserError,
    build_dataset,
    validation_split,
)
from experiment import main, resume_command, run_suite  # noqa: E402
from run import RunInterrupted, RunResult, build_model, parse_options, run_dir_of  # noqa: E402

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
    "resume_command",
    "run_dir_of",
    "run_suite",
    "validation_split",
]

if __name__ == "__main__":
    sys.exit(main())
