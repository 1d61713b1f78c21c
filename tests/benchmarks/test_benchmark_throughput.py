"""throughput.py times training steps of every method against SimCLR."""

from __future__ import annotations

from typing import cast

import pytest
import throughput

from lightly_hmlc.models.modules import HierarchicalMemoryBank


def test_throughput_table_has_every_method_and_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--backbone", "resnet_tiny_cifar",
        "--batch-size", "8",
        "--image-size", "8",
        "--levels", "2,4",
        "--warmup", "1",
        "--steps", "1",
        "--rounds", "1",
        "--device", "cpu",
    ]  # fmt: skip
    assert throughput.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert set(rows) >= {"simclr", "hmce", "g-hmlc", "g-hmlc (+refit)", "a-hmlc"}
    assert "| 1.000x |" in rows["simclr"]
    for row in rows.values():
        if row.startswith("| method"):
            continue
        images_per_second = float(row.split("|")[2])
        assert images_per_second > 0


def test_synthetic_paths_follow_a_balanced_tree() -> None:
    _, paths = throughput.synthetic_batch(64, [2, 4, 8], 4, 3)
    assert paths.shape == (64, 3)
    assert bool((paths[:, 0] == paths[:, 2] // 4).all()) and bool(
        (paths[:, 1] == paths[:, 2] // 2).all()
    )


def test_memory_bank_runs_time_steps_with_a_full_queue() -> None:
    args = throughput.build_parser().parse_args(
        ["--backbone", "resnet_tiny_cifar", "--batch-size", "8", "--image-size", "8",
         "--levels", "2,4", "--memory-bank", "20", "--device", "cpu"]
    )  # fmt: skip
    runner = throughput.StepRunner("supcon", args, throughput.torch.device("cpu"))
    bank = cast(HierarchicalMemoryBank | None, runner.model.memory_bank)
    assert bank is not None and bank.size == 20
    features, labels = bank(bank.features[:0], runner.batch[1][:0], update=False)
    assert features.shape == (20, bank.dim)  # full before the first timed step
    assert bool((labels >= 0).all())
    runner.step()
    assert throughput.StepRunner("simclr", args, throughput.torch.device("cpu")).model is not None
