"""Run a test body on 2 gloo ranks on the CPU and collect what each rank returns.

The distributed tests all compare what the ranks computed with one process's global-batch
computation; this module holds the part they share: spawning the ranks, the process
group, passing the results back, and failing (never hanging) when a rank blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
# A blocked collective raises after this (instead of blocking CI); generous, as a loaded
# 2-core CI machine can be slow to start the second process.
GLOO_TIMEOUT = timedelta(seconds=240)
JOIN_DEADLINE_S = 400.0  # far above the gloo timeout


def _rank_main(rank: int, body: Callable[[int], Any], init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=GLOO_TIMEOUT,
    )
    try:
        torch.save(body(rank), Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def run_on_two_ranks(body: Callable[[int], Any], tmp_path: Path) -> list[Any]:
    """``[body(0), body(1)]``, each computed in its own process of one gloo group.

    Args:
        body: A module-level function (it is pickled by name) of the rank; what it
            returns must be what ``torch.load`` reads back (tensors, tuples, lists,
            numbers, strings).
        tmp_path: An empty folder for the group's init file and the results.

    Raises:
        pytest.fail.Exception: When the ranks have not finished after ``JOIN_DEADLINE_S``.
    """
    context = mp.spawn(
        _rank_main,
        args=(body, str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=False,
    )
    deadline = time.monotonic() + JOIN_DEADLINE_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the ranks did not finish: one of them blocked")
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
