"""Methods train under DDP with two CPU processes (gloo, ddp_spawn)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import main
import pytest
import torch

from tests.benchmarks.suite_utils import LEVEL_KEYS, load_metrics, tiny_args


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("method", "extra"),
    # a-hmlc-tokens: per-level embeddings gathered over ranks, a per-level queue of both
    [("hmce", []), ("a-hmlc-tokens", ["--memory-bank", "16"])],
)
def test_ddp_spawn_on_two_cpu_processes(tmp_path: Path, method: str, extra: list[str]) -> None:
    args = tiny_args(
        tmp_path, "--methods", method, "--strategy", "ddp_spawn", "--devices", "2", *extra
    )
    results = main.run_suite(main.parse_args(args))
    assert len(results) == 1
    run_dir = tmp_path / "shapes" / method / "seed0"
    stats = json.loads((run_dir / "train_stats.json").read_text())
    # 64 samples, global batch 32 = 16 per rank: 2 steps of 32 samples in all
    assert stats["world_size"] == 2 and stats["global_step"] == 2 and stats["samples"] == 64
    record = load_metrics(run_dir)
    assert all(math.isfinite(record["eval"][key]) for key in LEVEL_KEYS)
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["gather_distributed"] is True
