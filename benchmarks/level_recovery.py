"""Level recovery: how many levels do BIC and the DP-GMM read off a trained embedding?

For a finished suite run, rebuild the dataset exactly as the run did (same CLI flags),
project the training images with the trained backbone + projection head, accumulate the
label-prefix statistics of z / |z| (momentum 1: plain sums over the whole training set),
compute the per-dimension log Fisher descriptors (relevance="conditional", as the GMM head)
and estimate the number of components by BIC and by the DP-GMM, K_max = L + 2.

Usage: python benchmarks/level_recovery.py RUN_DIR [RUN_DIR ...]

The run's data flags are read from its ``config.json`` (earlier versions took them after
``--``, as in the RESULTS.md commands of the "Level estimate" section; the result is the
same).

Results and the exact runs are in benchmarks/RESULTS.md ("Level estimate").
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finished_run  # noqa: E402
import main as suite  # noqa: E402

from lightly_hmlc.models.modules import LabelPrefixStatistics  # noqa: E402
from lightly_hmlc.models.modules._fisher import fisher_descriptors  # noqa: E402
from lightly_hmlc.models.modules._level_estimate import estimate_components  # noqa: E402


def estimate_levels(run_dir: Path) -> str:
    """The BIC and DP-GMM level estimates of one finished run, as printable lines."""
    bundle = suite.build_dataset(finished_run.run_args(run_dir))
    model = finished_run.load_model(run_dir)
    method = model.method_name
    if model.projection_head is None:
        raise SystemExit(
            f"{run_dir}: method {method!r} has no projection head: nothing to estimate."
        )
    head = model.projection_head
    num_levels = bundle.hierarchy.num_levels
    stats: LabelPrefixStatistics | None = None
    with torch.no_grad():
        for x, paths in torch.utils.data.DataLoader(bundle.train_eval, batch_size=256):
            z = head(model(x))
            if stats is None:
                stats = LabelPrefixStatistics(
                    num_levels, z.shape[1], momentum=1.0, max_classes_per_level=4096
                )
            stats.update(torch.nn.functional.normalize(z.double(), dim=1), paths)
    assert stats is not None, "the training set is empty"
    stats.merge()
    desc = fisher_descriptors(
        stats.class_keys,
        stats.num_classes.tolist(),
        stats.class_count,
        stats.class_sum,
        stats.level_sumsq,
        relevance="conditional",
    )
    estimates = {}
    for name in ("bic", "dpgmm"):
        estimates[name] = estimate_components(
            desc,
            num_levels + 2,
            name,
            covariance_type="full",
            n_init=3,
            max_iter=100,
            tol=1e-3,
            reg_covar=1e-6,
            seed=0,
        )
    (bic_k, bics), (dp_k, weights) = estimates["bic"], estimates["dpgmm"]
    return "\n".join(
        [
            f"RESULT run={run_dir} method={method} L={num_levels} D={desc.shape[0]}"
            f" bic={bic_k} dpgmm={dp_k}",
            f"  bic scores {[round(v, 1) for v in bics.tolist()]}",
            f"  dp weights {[round(v, 3) for v in weights.tolist()]}",
            f"  mean log-Fisher per level {[round(v, 2) for v in desc.mean(0).tolist()]}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the level estimates of each run folder."""
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (.../seed<k>)")
    for run_dir in parser.parse_args(argv).runs:
        print(estimate_levels(run_dir), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
