"""Level recovery: how many levels do BIC and the DP-GMM read off a trained embedding?

For a finished suite run, rebuild the dataset exactly as the run did (same CLI flags),
project the training images with the trained backbone + projection head, accumulate the
label-prefix statistics of z / |z| (momentum 1: plain sums over the whole training set),
compute the per-dimension log Fisher descriptors (relevance="conditional", as the GMM head)
and estimate the number of components by BIC and by the DP-GMM, K_max = L + 2.

Usage: python benchmarks/level_recovery.py RUN_DIR -- <the main.py flags of that run>

Results and the exact runs are in benchmarks/RESULTS.md ("Level estimate").
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import main as suite  # noqa: E402
import methods  # noqa: E402

from lightly_hmlc.models.modules import LabelPrefixStatistics  # noqa: E402
from lightly_hmlc.models.modules._fisher import fisher_descriptors  # noqa: E402
from lightly_hmlc.models.modules._level_estimate import estimate_components  # noqa: E402


def main() -> None:
    """Prints the BIC and DP-GMM level estimates of one finished run."""
    torch.set_num_threads(1)
    run_dir = Path(sys.argv[1])
    args = suite.parse_args(sys.argv[sys.argv.index("--") + 1 :])
    bundle = suite.build_dataset(args)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    hparams = dict(ckpt["hyper_parameters"])
    method = hparams.pop("method", None) or run_dir.parent.name.split("-")[0]
    model = methods.create_method(method, **hparams)
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    model.eval()
    if model.projection_head is None:
        raise SystemExit(f"method {method!r} has no projection head: nothing to estimate.")
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
    print(
        f"RESULT run={run_dir} method={method} L={num_levels} D={desc.shape[0]} bic={bic_k} dpgmm={dp_k}"
    )
    print("  bic scores", [round(v, 1) for v in bics.tolist()])
    print("  dp weights", [round(v, 3) for v in weights.tolist()])
    print("  mean log-Fisher per level", [round(v, 2) for v in desc.mean(0).tolist()])
    print("  missing/unexpected keys", len(missing), len(unexpected))


if __name__ == "__main__":
    main()
