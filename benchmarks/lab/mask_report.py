"""Mask report: what did the mask head of a finished G-HMLC / A-HMLC run learn?

For each run folder (``.../<dataset>/<method>/seed<k>``), rebuild the run's evaluation
set from its ``config.json`` (the split it was probed on), load ``last.ckpt``, and compute
the masks of every evaluation sample exactly as training did (on the projections). It
prints, per run:

- ``width``: per level, the mean over samples of the mask's participation ratio
  ``(sum_d m_d)^2 / (D sum_d m_d^2)``: 1 for a constant mask, ``k / D`` for a 0/1 mask
  of k dimensions;
- ``mean``: per level, the mean mask value;
- ``level cosine``: the cosine similarity between the levels' mean masks (coarse vs
  finest); 1 means the levels weight the dimensions alike;
- ``level gap``: the mean over samples and dimensions of ``|m_coarse - m_finest|``;
- ``sample spread``: the mean over dimensions of the masks' standard deviation over
  samples (0 for a shared mask): how much the masks depend on the input.

A mask head that identifies per-level features gives level cosines well below 1 and a
level gap well above 0. Results are in RESULTS.md ("What the mask heads learn").

Usage: python benchmarks/lab/mask_report.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

# The suite's modules (``benchmarks/suite``), and this checkout's package.
_BENCHMARKS = Path(__file__).resolve().parents[1]
for _folder in (_BENCHMARKS.parent, _BENCHMARKS / "suite"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
import finished_run  # noqa: E402
import methods  # noqa: E402
from datasets import build_dataset  # noqa: E402


def load_mask_model(run_dir: Path) -> methods.LabelPathMethod:
    """The run's trained model (eval mode), or a SystemExit if it has no mask head."""
    model = finished_run.load_model(run_dir)
    if not isinstance(model, methods.LabelPathMethod) or model.mask_head is None:
        raise SystemExit(f"{run_dir}: the method has no mask head to report on.")
    return model


@torch.no_grad()
def run_masks(model: methods.LabelPathMethod, dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """``[N, L, D]`` masks of every sample, computed as in training (no labels: the GMM
    head's statistics are not updated)."""
    assert model.mask_head is not None and model.projection_head is not None
    out = []
    for x, _ in torch.utils.data.DataLoader(dataset, batch_size=256):
        features = model(x)
        rows = model.projection_head(features)
        masks = model.mask_head(F.normalize(rows, dim=1))
        out.append(masks.expand(x.shape[0], -1, -1))
    return torch.cat(out).double()


def summarize(masks: torch.Tensor) -> dict[str, list[float] | float]:
    """The figures of the module docstring, from ``[N, L, D]`` masks."""
    dim = masks.shape[2]
    width = masks.sum(2) ** 2 / (dim * (masks**2).sum(2)).clamp(min=1e-12)
    level_means = masks.mean(0)  # [L, D]
    cosine = F.cosine_similarity(level_means[0], level_means[-1], dim=0)
    return {
        "width": width.mean(0).tolist(),
        "mean": masks.mean((0, 2)).tolist(),
        "level cosine": float(cosine),
        "level gap": float((masks[:, 0] - masks[:, -1]).abs().mean()),
        "sample spread": float(masks.std(0).mean()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Prints one line of figures per run folder."""
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (.../seed<k>)")
    for run_dir in parser.parse_args(argv).runs:
        bundle = build_dataset(finished_run.run_args(run_dir))
        model = load_mask_model(run_dir)
        figures = summarize(run_masks(model, bundle.test_eval))
        shown = {
            k: [round(v, 3) for v in f] if isinstance(f, list) else round(f, 3)
            for k, f in figures.items()
        }
        print(f"{run_dir}: {json.dumps(shown)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
