"""A loss registered with ``register_loss`` is a method of the suite, with no edit to
``benchmarks/`` (issue 10: one table of methods)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import main
import methods
import pytest
import torch
from torch import Tensor, nn

from lightly_hmlc import SupConLoss, register_loss
from lightly_hmlc.registry import _LOSSES
from tests.benchmarks.suite_utils import load_metrics, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")


class CoarseSupCon(nn.Module):
    """A user's loss: SupCon on the coarsest level only, with a scale option."""

    def __init__(self, temperature: float = 0.1, scale: float = 1.0) -> None:
        super().__init__()
        self.supcon = SupConLoss(temperature=temperature)
        self.scale = scale

    def forward(
        self, out0: Tensor, out1: Tensor, labels: Tensor, return_level_losses: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        loss = self.scale * self.supcon(out0, out1, labels[:, 0])
        return (loss, loss.detach().reshape(1)) if return_level_losses else loss


@pytest.fixture
def registered() -> Iterator[str]:
    register_loss("test-coarse-supcon", CoarseSupCon)
    try:
        yield "test-coarse-supcon"
    finally:
        _LOSSES._entries.pop("test-coarse-supcon")


def test_a_registered_loss_runs_in_the_suite(
    registered: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert registered in methods.method_names()
    assert main.main(["--list-methods"]) == 0 and registered in capsys.readouterr().out
    args = tiny_args(tmp_path, "--methods", registered, "--loss-option", "scale=2.5", "--no-plots")
    assert main.main(args) == 0
    run_dir = tmp_path / "shapes" / registered / "seed0"
    record = load_metrics(run_dir)
    assert record["run"]["method"] == registered and record["run"]["loss_options"] == {"scale": 2.5}
    assert 0.0 <= record["eval"]["level0/linear_acc"] <= 1.0
    stats = json.loads((run_dir / "train_stats.json").read_text())
    assert len(stats["history"]["train/loss_level0"]) == 1  # the per-level term it returned
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["method"] == registered
    model = methods.create_method(registered, num_classes_per_level=[3, 6, 12], temperature=0.3)
    assert isinstance(model.criterion, CoarseSupCon)
    assert model.criterion.supcon.temperature == pytest.approx(0.3)  # the suite's argument


def test_unregistered_losses_are_no_methods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main.main(tiny_args(tmp_path, "--methods", "test-coarse-supcon")) == 2
    assert "Unknown method" in capsys.readouterr().err


def test_the_docs_list_every_builtin_method() -> None:
    # The table in methods.py's docstring and PRESETS.md name the paper's methods, which
    # method_names() lists first (a plugin loss is listed by --list-methods only).
    presets = (Path(methods.__file__).parent / "PRESETS.md").read_text()
    paper = [*methods.BASELINES, *methods.BUILTIN_ORDER]
    assert methods.method_names()[: len(paper)] == paper
    for name in paper:
        assert f"``{name}``" in (methods.__doc__ or ""), name
        assert f"`{name}`" in presets, name


class KwargsLoss(nn.Module):
    """A loss whose factory takes **kwargs (it forwards them, e.g. to HMLCLoss)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.kwargs = kwargs


def test_a_factory_with_kwargs_gets_every_suite_argument() -> None:
    register_loss("test-kwargs-loss", KwargsLoss)
    try:
        model = methods.create_method(
            "test-kwargs-loss", num_classes_per_level=[2, 4], proj_dim=8, gather_distributed=True
        )
    finally:
        _LOSSES._entries.pop("test-kwargs-loss")
    assert model.criterion.kwargs == {
        "temperature": 0.1,
        "gather_distributed": True,
        "num_levels": 2,
        "dim": 8,
    }
