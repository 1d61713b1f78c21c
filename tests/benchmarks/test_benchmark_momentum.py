"""--momentum-encoder M: a MoCo-style EMA copy of backbone and head fills the memory bank."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import main
import methods
import pytest
import pytorch_lightning as pl
import run
import torch

from tests.benchmarks.suite_utils import load_metrics, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]] * 2)


def _model(method: str = "hmce", momentum: float = 0.9) -> methods.LabelPathMethod:
    torch.manual_seed(0)
    model = methods.create_method(
        method,
        num_classes_per_level=[2, 4],
        proj_dim=8,
        memory_bank_size=32,
        momentum_encoder=momentum,
    )
    assert isinstance(model, methods.LabelPathMethod)
    return model


def _batch() -> tuple[list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)], LABELS


def _online_and_copy(model: methods.LabelPathMethod) -> list[tuple[str, Any, Any]]:
    assert model.momentum_backbone is not None and model.momentum_projection_head is not None
    assert model.projection_head is not None
    pairs = []
    for prefix, online, ema in (
        ("backbone", model.backbone, model.momentum_backbone),
        ("projection_head", model.projection_head, model.momentum_projection_head),
    ):
        ema_params = dict(ema.named_parameters())
        for name, param in online.named_parameters():
            pairs.append((f"{prefix}.{name}", param, ema_params[name]))
    return pairs


def _move_online_weights(model: methods.LabelPathMethod) -> None:
    """Makes the online weights differ from the copy's (as after optimiser steps)."""
    with torch.no_grad():
        for _, online, _ in _online_and_copy(model):
            online.add_(torch.randn_like(online))


def test_each_step_moves_the_copy_to_m_old_plus_one_minus_m_online() -> None:
    model = _model(momentum=0.9)
    pairs = _online_and_copy(model)
    assert pairs and all(not ema.requires_grad for _, _, ema in pairs)
    assert all(torch.equal(online, ema) for _, online, ema in pairs)  # a copy at the start
    _move_online_weights(model)
    old = {name: ema.detach().clone() for name, _, ema in pairs}
    online_now = {name: online.detach().clone() for name, online, _ in pairs}
    with warnings.catch_warnings():  # self.log without a Trainer only warns
        warnings.simplefilter("ignore")
        model.training_step(_batch(), 0)
    for name, _, ema in pairs:
        expected = 0.9 * old[name] + (1 - 0.9) * online_now[name]
        assert torch.allclose(ema, expected, atol=1e-6), name
        assert not torch.allclose(ema, online_now[name]), name


def test_the_queue_holds_the_copy_s_keys_and_the_loss_trains_the_online_network() -> None:
    model = _model(method="a-hmlc", momentum=0.999)  # per-row masks: memory masks too
    _move_online_weights(model)  # the copy now lags the online network
    views, labels = _batch()
    copy_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("momentum_")
    }
    loss, _ = model.shared_step((views, labels))
    assert model.memory_bank is not None
    assert int(model.memory_bank.num_filled) == 8
    queued = model.memory_bank.features[:8].clone()
    assert torch.allclose(queued, model.momentum_keys(views[1]), atol=1e-6)
    _, _, z1 = model.encode_views(views)
    assert z1 is not None and not torch.allclose(queued, z1.detach(), atol=1e-3)
    # shared_step does not update the copy's weights (training_step does; its BatchNorm
    # statistics are its own), and the loss trains the online network only.
    params = dict(model.named_parameters())
    for name, value in copy_before.items():
        assert torch.equal(params[name], value), name
    loss.backward()
    assert model.backbone.conv1.weight.grad is not None  # type: ignore[union-attr]
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("momentum_"))
    # A second step contrasts against the queued keys (A-HMLC masks them with its head).
    second, _ = model.shared_step((views, labels))
    assert torch.isfinite(second) and int(model.memory_bank.num_filled) == 16


def test_without_momentum_the_queue_still_gets_z1() -> None:
    torch.manual_seed(0)
    model = methods.create_method(
        "hmce", num_classes_per_level=[2, 4], proj_dim=8, memory_bank_size=32
    )
    assert isinstance(model, methods.LabelPathMethod) and model.momentum_backbone is None
    views, labels = _batch()
    model.shared_step((views, labels))
    _, _, z1 = model.encode_views(views)
    assert z1 is not None and model.memory_bank is not None
    assert torch.allclose(model.memory_bank.features[:8], z1.detach(), atol=1e-6)
    assert not any(k.startswith("momentum_") for k in model.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_bank_size": 0, "momentum_encoder": 0.9}, "needs memory_bank_size"),
        ({"memory_bank_size": 8, "momentum_encoder": 1.0}, r"\[0, 1\)"),
        ({"memory_bank_size": 8, "momentum_encoder": -0.1}, r"\[0, 1\)"),
        ({"memory_bank_size": 8, "momentum_encoder": float("nan")}, r"\[0, 1\)"),
        ({"memory_bank_size": 8, "momentum_encoder": True}, r"\[0, 1\)"),
    ],
)
def test_bad_momentum_values_are_refused_by_the_method(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        methods.create_method("hmce", num_classes_per_level=[2, 4], **kwargs)


@pytest.mark.parametrize("method", ["ce", "simclr"])
def test_baselines_refuse_a_momentum_encoder(method: str) -> None:
    with pytest.raises(ValueError, match="momentum_encoder"):
        methods.create_method(method, num_classes_per_level=[2, 4], momentum_encoder=0.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--momentum-encoder", "0.99"), "needs --memory-bank"),
        (("--memory-bank", "8", "--momentum-encoder", "1"), "[0, 1)"),
        (("--memory-bank", "8", "--momentum-encoder", "-0.5"), "[0, 1)"),
        (("--memory-bank", "8", "--momentum-encoder", "nan"), "[0, 1)"),
        (("--methods", "simclr", "--memory-bank", "8", "--momentum-encoder", "0.9"), "simclr"),
    ],
)
def test_bad_momentum_flags_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    assert main.main(tiny_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err


class CheckOptimizer(pl.Callback):
    """Records which parameters the optimiser holds."""

    def __init__(self) -> None:
        self.checked = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        assert isinstance(pl_module, methods.LabelPathMethod)
        assert pl_module.momentum_backbone is not None
        assert pl_module.momentum_projection_head is not None
        frozen = [
            *pl_module.momentum_backbone.parameters(),
            *pl_module.momentum_projection_head.parameters(),
        ]
        assert frozen and not any(id(p) in held for p in frozen)
        online = [p for n, p in pl_module.named_parameters() if not n.startswith("momentum_")]
        assert all(id(p) in held for p in online)
        self.checked = True


MOMENTUM_ARGS = ("--methods", "a-hmlc", "--memory-bank", "64", "--momentum-encoder", "0.99")


@pytest.fixture(scope="module")
def momentum_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("momentum")
    check = CheckOptimizer()
    args = main.parse_args(tiny_args(out, *MOMENTUM_ARGS, "--no-plots"))
    main.run_suite(args, extra_callbacks=[check])
    assert check.checked
    return out


def test_a_suite_run_with_a_momentum_encoder_trains_and_records_it(momentum_run: Path) -> None:
    run_dir = momentum_run / "shapes/a-hmlc/seed0"
    record = load_metrics(run_dir)
    assert record["run"]["global_step"] == 2 and record["train"]["train/complete"] is True
    assert 0.0 <= record["eval"]["level0/linear_acc"] <= 1.0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["momentum_encoder"] == 0.99 and config["memory_bank"] == 64
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["momentum_encoder"] == 0.99
    assert checkpoint["callbacks"]["RunRecorder"]["config"]["momentum_encoder"] == 0.99
    state = checkpoint["state_dict"]
    assert int(state["memory_bank.num_filled"]) == 64
    # The copy is checkpointed and trails the trained online weights.
    weight = "conv1.weight"
    assert f"momentum_backbone.{weight}" in state
    assert not torch.equal(state[f"momentum_backbone.{weight}"], state[f"backbone.{weight}"])
    assert any(k.startswith("momentum_projection_head.") for k in state)


class StopAfterFirstEpoch(pl.Callback):
    """Simulates an interruption: the run stops after one of its epochs."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def test_resume_refuses_a_changed_momentum_and_matches_an_uninterrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ("--methods", "hmce", "--memory-bank", "48", "--epochs", "2", "--no-plots")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main.run_suite(main.parse_args(tiny_args(straight, *common, "--momentum-encoder", "0.9")))
    first = main.parse_args(tiny_args(resumed, *common, "--momentum-encoder", "0.9"))
    main.run_suite(first, extra_callbacks=[StopAfterFirstEpoch()])

    for changed in (("--momentum-encoder", "0.99"), ()):
        assert main.main([*tiny_args(resumed, *common, *changed), "--resume", "auto"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "--momentum-encoder 0.9 -> " in err, err
    again = tiny_args(resumed, *common, "--momentum-encoder", "0.9", "--resume", "auto")
    assert main.main(again) == 0

    ckpt = "shapes/hmce/seed0/checkpoints/last.ckpt"
    a = torch.load(straight / ckpt, weights_only=True)
    b = torch.load(resumed / ckpt, weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    names = [k for k in a["state_dict"] if k.startswith(("momentum_", "memory_bank."))]
    assert any(k.startswith("momentum_backbone.") for k in names)
    for name in names:
        x, y = a["state_dict"][name], b["state_dict"][name]
        assert torch.allclose(x.double(), y.double(), atol=1e-6), name


def test_a_checkpoint_of_before_the_flag_resumes_with_the_flag_off() -> None:
    saved = {"memory_bank": 0, "lr": 0.5}
    run.check_resume_config(saved, {**saved, "momentum_encoder": None}, "Checkpoint 'x'")
    with pytest.raises(main.UserError, match=r"--momentum-encoder null -> 0\.99"):
        run.check_resume_config(saved, {**saved, "momentum_encoder": 0.99}, "Checkpoint 'x'")


def test_a_checkpoint_of_before_the_memory_bank_resumes_without_one() -> None:
    saved = {"lr": 0.5}
    current = {**saved, "memory_bank": 0, "momentum_encoder": None}
    run.check_resume_config(saved, current, "Checkpoint 'x'")
    with pytest.raises(main.UserError, match=r"--memory-bank 0 -> 4096"):
        run.check_resume_config(saved, {**current, "memory_bank": 4096}, "Checkpoint 'x'")
