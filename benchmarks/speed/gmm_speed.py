"""GMM refit speed of GMMFeatureMaskHead (G-HMLC): our torch EM vs scikit-learn.

For each embedding width D and number of levels L, a GMMFeatureMaskHead is fed synthetic
hierarchical embeddings (every level owns D / L planted dimensions); its descriptors
(D points in R^L) are then fitted by ``fit_gaussian_mixture`` and by
``sklearn.mixture.GaussianMixture`` with the same number of components (full covariances),
n_init, max_iter, tol and reg_covar. The full ``head.refit()`` (merge statistics, compute
descriptors, fit, match levels, build masks) is timed as well.

Example:
    python benchmarks/speed/gmm_speed.py --dims 128 512 2048 --levels 2 3 4 5 --output gmm.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import sklearn
import torch
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits
from torch import Tensor

from lightly_hmlc.models.modules.gmm_mask_head import (
    EMOptions,
    GMMFeatureMaskHead,
    fit_gaussian_mixture,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--n-init", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--reg-covar", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is shown")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and BLAS threads (default: unchanged)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def synthetic_head(dim: int, levels: int, args: argparse.Namespace) -> GMMFeatureMaskHead:
    """A head whose statistics come from a binary hierarchy with planted dimensions."""
    device = torch.device(args.device)
    head = GMMFeatureMaskHead(
        levels,
        dim,
        warmup_steps=10**9,  # refits are triggered explicitly by the benchmark
        em_options=EMOptions(args.n_init, args.max_iter, args.tol, args.reg_covar, args.seed),
    ).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    leaves = 2**levels
    owner = torch.arange(dim) * levels // dim  # level that owns each dimension
    class_means = [
        torch.randn(2 ** (level + 1), dim, generator=generator) for level in range(levels)
    ]
    for _ in range(4):
        leaf = torch.randint(leaves, (512,), generator=generator)
        # Class at level l: the first l + 1 bits of the leaf index.
        labels = torch.stack([leaf >> (levels - 1 - level) for level in range(levels)], dim=1)
        z = torch.randn(512, dim, generator=generator)
        for level in range(levels):
            z[:, owner == level] += class_means[level][labels[:, level]][:, owner == level]
        head(z.to(device), labels.to(device))
    return head


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, Any]:
    result = fn()  # warm-up (allocations, lazy imports)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, result


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    rows = []
    for dim in args.dims:
        for levels in args.levels:
            head = synthetic_head(dim, levels, args)
            head.refit()
            descriptors: Tensor = head.descriptors
            x_np = descriptors.cpu().numpy()

            common = {
                "n_init": args.n_init,
                "max_iter": args.max_iter,
                "tol": args.tol,
                "reg_covar": args.reg_covar,
            }
            ours = functools.partial(
                fit_gaussian_mixture, descriptors, levels, seed=args.seed, **common
            )
            sklearn = functools.partial(
                GaussianMixture(levels, random_state=args.seed, **common).fit, x_np
            )
            ours_ms, fit = timed(ours, args.repeats, device)
            sk_ms, sk = timed(sklearn, args.repeats, device)
            refit_ms, _ = timed(head.refit, args.repeats, device)
            rows.append(
                {
                    "dims": dim,
                    "levels": levels,
                    "ours_ms": ours_ms,
                    "sklearn_ms": sk_ms,
                    "speedup": sk_ms / ours_ms,
                    "head_refit_ms": refit_ms,
                    "ours_log_likelihood": float(fit.log_likelihood),
                    "sklearn_log_likelihood": float(sk.score(x_np)),
                    "ours_n_iter": int(fit.n_iter),
                    "sklearn_n_iter": int(sk.n_iter_),
                }
            )
            print(f"done D={dim} L={levels}", flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| D | L | ours (ms) | sklearn (ms) | speed-up | head.refit() (ms) "
        "| log-lik ours | log-lik sklearn |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dims']} | {r['levels']} | {r['ours_ms']:.1f} | {r['sklearn_ms']:.1f} "
            f"| {r['speedup']:.2f}x | {r['head_refit_ms']:.1f} "
            f"| {r['ours_log_likelihood']:.4f} | {r['sklearn_log_likelihood']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.threads is not None:
            # sklearn is imported above: threadpoolctl only limits libraries already loaded.
            torch.set_num_threads(args.threads)
            stack.enter_context(threadpool_limits(limits=args.threads))
        rows = run(args)
    table = markdown(rows)
    print(table)
    if args.output is not None:
        meta = {
            "args": vars(args),
            "torch": torch.__version__,
            "sklearn": sklearn.__version__,
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        }
        with open(args.output, "w") as f:
            json.dump({"meta": meta, "results": rows, "markdown": table}, f, indent=2)


if __name__ == "__main__":
    main()
