"""Resuming gives the uninterrupted run; checkpoints of another method or backbone are refused."""

from __future__ import annotations

import json
from pathlib import Path

import main
import methods
import pytest
import pytorch_lightning as pl
import torch

from tests.benchmarks.suite_utils import (  # noqa: F401
    LEVEL_KEYS,
    load_metrics,
    tiny_args,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class StopAfterFirstEpoch(pl.Callback):
    """Simulates an interruption: the run stops after one of its epochs."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def test_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    # g-hmlc: besides weights, optimiser and schedule, the GMM statistics must resume.
    common = ("--methods", "g-hmlc", "--epochs", "2", "--no-plots")
    straight = tmp_path / "straight"
    main.run_suite(main.parse_args(tiny_args(straight, *common)))

    resumed = tmp_path / "resumed"
    args = main.parse_args(tiny_args(resumed, *common))
    main.run_suite(args, extra_callbacks=[StopAfterFirstEpoch()])
    first = load_metrics(resumed / "shapes/g-hmlc/seed0")
    assert first["run"]["global_step"] == 2 and first["train"]["train/complete"] is False
    main.run_suite(main.parse_args(tiny_args(resumed, *common, "--resume", "auto")))

    a = load_metrics(straight / "shapes/g-hmlc/seed0")
    b = load_metrics(resumed / "shapes/g-hmlc/seed0")
    assert b["run"]["global_step"] == a["run"]["global_step"] == 4
    assert b["train"]["train/samples"] == a["train"]["train/samples"] == 128
    assert b["train"]["train/complete"] is True
    for key in [*LEVEL_KEYS, "hier/mistake_severity"]:
        assert b["eval"][key] == pytest.approx(a["eval"][key], abs=1e-6), key
    state_a = torch.load(straight / "shapes/g-hmlc/seed0/checkpoints/last.ckpt", weights_only=True)
    state_b = torch.load(resumed / "shapes/g-hmlc/seed0/checkpoints/last.ckpt", weights_only=True)
    for name, tensor in state_a["state_dict"].items():
        other = state_b["state_dict"][name]
        if isinstance(tensor, dict):  # the GMM head's extra state: its pending statistics
            assert tensor.keys() == other.keys(), name
            pairs = [(tensor[k], other[k]) for k in tensor]
        else:
            pairs = [(tensor, other)]
        for x, y in pairs:
            assert torch.allclose(x.double(), y.double(), atol=1e-6, equal_nan=True), name
    history_b = json.loads((resumed / "shapes/g-hmlc/seed0/train_stats.json").read_text())
    assert len(history_b["history"]["train/loss"]) == 2


@pytest.fixture(scope="module")
def hmce_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    main.run_suite(main.parse_args(tiny_args(out, "--methods", "hmce")))
    return out / "shapes/hmce/seed0/checkpoints/last.ckpt"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (("--methods", "supcon"), ["'hmce'", "'supcon'", "'resnet_tiny_cifar'"]),
        (
            ("--methods", "hmce", "--backbone", "resnet18_cifar"),
            ["'resnet_tiny_cifar'", "'resnet18_cifar'"],
        ),
    ],
)
def test_checkpoint_of_another_method_or_backbone_is_refused(
    tmp_path: Path,
    hmce_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    named: list[str],
) -> None:
    code = main.main(tiny_args(tmp_path, *extra, "--resume", str(hmce_checkpoint)))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    for name in named:
        assert name in err
    assert "method 'hmce' and backbone 'resnet_tiny_cifar'" in err


def test_lightning_module_refuses_checkpoint_of_another_method(hmce_checkpoint: Path) -> None:
    checkpoint = torch.load(hmce_checkpoint, weights_only=True)
    model = methods.create_method("supcon", num_classes_per_level=[3, 6, 12])
    with pytest.raises(methods.CheckpointMismatchError, match="'hmce'.*'supcon'"):
        model.on_load_checkpoint(checkpoint)
    other = methods.create_method("hmce", num_classes_per_level=[20, 100])
    with pytest.raises(methods.CheckpointMismatchError, match=r"\[3, 6, 12\].*\[20, 100\]"):
        other.on_load_checkpoint(checkpoint)
    methods.create_method("hmce", num_classes_per_level=[3, 6, 12]).on_load_checkpoint(checkpoint)


def test_existing_run_is_not_overwritten_silently(
    tmp_path: Path, hmce_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = hmce_checkpoint.parents[4]
    assert main.main(tiny_args(out, "--methods", "hmce")) == 2
    assert "--resume auto" in capsys.readouterr().err
