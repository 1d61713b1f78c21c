"""Every benchmarked method trains, evaluates and writes its records (tiny shapes runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import main
import methods
import pytest
import torch

from tests.benchmarks.suite_utils import (  # noqa: F401
    LEVEL_KEYS,
    load_metrics,
    tiny_args,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", methods.method_names())
def test_every_method_trains_evaluates_and_writes_records(tmp_path: Path, method: str) -> None:
    results = main.run_suite(main.parse_args(tiny_args(tmp_path, "--methods", method)))
    assert [r.method for r in results] == [method]
    run_dir = tmp_path / "shapes" / method / "seed0"
    assert results[0].run_dir == run_dir
    for name in (
        "config.json",
        "environment.json",
        "metrics.json",
        "metrics.md",
        "embeddings.png",
        "training_curves.png",
        "checkpoints/last.ckpt",
    ):
        assert (run_dir / name).is_file(), name

    record = load_metrics(run_dir)
    assert record["run"] == {
        "dataset": "shapes",
        "method": method,
        "seed": 0,
        "backbone": "resnet_tiny_cifar",
        "epochs": 1,
        "global_step": 2,
        "name": method,
        "loss_options": {},
        "head_options": {},
    }
    for key in [*LEVEL_KEYS, "hier/mistake_severity", "hier/hdist@5"]:
        value = record["eval"][key]
        assert math.isfinite(value), key
    assert 0.0 <= record["eval"]["level0/linear_acc"] <= 1.0
    train = record["train"]
    assert train["train/samples"] == 64 and train["train/complete"] is True
    assert train["train/images_per_second"] > 0 and train["train/peak_memory_mb"] > 0

    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == method and config["batch_size"] == 32
    env = json.loads((run_dir / "environment.json").read_text())
    assert {"torch", "lightly", "timm", "pytorch_lightning", "lightly_hmlc"} <= set(env["packages"])
    assert "git_commit" in env and env["machine"]["cpu_count"] >= 1
    assert method in (run_dir / "metrics.md").read_text()

    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["method"] == method
    assert checkpoint["hyper_parameters"]["backbone"] == "resnet_tiny_cifar"
    state = checkpoint["state_dict"]
    if method == "a-hmlc":  # the attention head is a submodule of the loss and trained
        assert state["criterion.mask_head.bias2"].abs().sum() > 0
    if method == "g-hmlc":  # the GMM buffers are checkpointed, and the masks were fitted
        assert bool(state["criterion.mask_head.fitted"])
    if method == "ce":
        assert "classifier.weight" in state and not any(k.startswith("projection") for k in state)
    if method == "a-hmlc-tokens":  # the level queries are model parameters, trained
        assert state["level_pool.attention.latent"].shape == (1, 3, 64)
    # The identification score exists exactly for the methods with per-level features.
    per_level = method in ("g-hmlc", "a-hmlc", "a-hmlc-tokens", "masked-hmlc")
    assert ("ident/advantage_mean" in record["eval"]) == per_level
    assert (record["identification"]["matrix"] is not None) == per_level
    summary = (tmp_path / "shapes" / "summary.md").read_text()
    assert f"| {method} | 1 |" in summary


def test_history_has_one_value_per_epoch(tmp_path: Path) -> None:
    main.run_suite(main.parse_args(tiny_args(tmp_path, "--methods", "hmc", "--epochs", "2")))
    stats = json.loads((tmp_path / "shapes/hmc/seed0/train_stats.json").read_text())
    assert set(stats["history"]) >= {"train/loss", "train/loss_level0", "train/loss_level2"}
    assert all(len(values) == 2 for values in stats["history"].values())


def test_ce_fine_targets_handle_leaves_at_different_depths() -> None:
    model = cast(methods.CrossEntropy, methods.create_method("ce", num_classes_per_level=[2, 3]))
    labels = torch.tensor([[0, 2], [1, -1], [-1, -1]])
    # level-1 ids are offset by the 2 level-0 classes; an all-unknown path is ignored
    assert model.fine_targets(labels).tolist() == [4, 1, -100]


@pytest.mark.parametrize("method", ["a-hmlc", "g-hmlc"])
def test_masked_methods_train_with_the_package_chain_and_its_defaults(method: str) -> None:
    """The suite's G-HMLC / A-HMLC is the package's MaskedHMLCLoss on the registered head:
    the loss a user trains with (GHMLCLoss / AHMLCLoss), step for step."""
    from lightly_hmlc import AHMLCLoss, GHMLCLoss
    from lightly_hmlc.loss import MaskedHMLCLoss

    torch.manual_seed(0)
    kwargs = {"num_classes_per_level": [2, 4], "proj_dim": 8}
    if method == "g-hmlc":  # fit the GMM at once, so that its masks are not all ones
        kwargs.update(mask_warmup_steps=1, mask_refit_every=1)
    model = cast(methods.LabelPathMethod, methods.create_method(method, **kwargs))
    assert type(model.criterion) is MaskedHMLCLoss  # no chain of the suite's own
    assert model.mask_head is model.criterion.mask_head
    fit_at_once: dict[str, Any] = (
        {"warmup_steps": 1, "refit_every": 1} if method == "g-hmlc" else {}
    )
    convenience = (AHMLCLoss if method == "a-hmlc" else GHMLCLoss)(
        num_levels=2, dim=8, **fit_at_once
    )
    convenience.mask_head.load_state_dict(model.mask_head.state_dict())
    # The suite's method has the convenience loss's defaults, the margin included.
    assert model.criterion.hierarchy_margin == convenience.hierarchy_margin == 0.2
    without = methods.create_method(method, loss_options={"hierarchy_margin": 0.0}, **kwargs)
    assert without.criterion.hierarchy_margin == 0.0
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]] * 4)
    for _ in range(3):  # several steps: G-HMLC fits its masks from the statistics
        z0, z1 = torch.randn(16, 8), torch.randn(16, 8)
        ours, logs = model.compute_loss(torch.zeros(32, 4), z0, z1, labels)
        theirs = convenience(z0, z1, labels)
        assert torch.equal(ours, theirs), (ours, theirs)
    assert {"loss_level0", "loss_level1"} <= set(logs)
    if method == "g-hmlc":  # the masks compared were fitted ones
        assert bool(cast(Any, model.mask_head).fitted)
    if method == "a-hmlc":  # the attention head is optimised as a model parameter
        trainer_free = dict(model.named_parameters())
        assert any(name.startswith("criterion.mask_head.") for name in trainer_free)
        from lightly.models.utils import get_weight_decay_parameters

        decay, no_decay = get_weight_decay_parameters([model])
        ids = {id(p) for p in decay + no_decay}
        assert all(id(p) in ids for p in model.mask_head.parameters())


def test_a_hmlc_gradients_equal_the_readme_chain_to_rounding() -> None:
    """The suite's A-HMLC (the package's MaskedHMLCLoss) against the chain the README
    shows, ``HMLCLoss(...)(z0, z1, labels, masks=head(normalize(z), labels))`` plus the
    regulariser: the same loss, and gradients equal up to float rounding (the loss gives
    the head the rows it normalised itself, so autograd sums in another order). Over a
    training run such rounding grows: the Shapes run of A-HMLC moved by about a point."""
    import torch.nn.functional as F

    from lightly_hmlc import HMLCLoss

    torch.manual_seed(0)
    model = cast(
        methods.LabelPathMethod,
        methods.create_method("a-hmlc", num_classes_per_level=[2, 4], proj_dim=8),
    )
    from lightly_hmlc import AttentionMaskHead

    head = cast(AttentionMaskHead, model.mask_head)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]] * 4)
    z0 = torch.randn(16, 8, requires_grad=True)
    z1 = torch.randn(16, 8, requires_grad=True)
    ours, _ = model.compute_loss(torch.zeros(32, 4), z0, z1, labels)
    ours_grads = torch.autograd.grad(ours, [z0, z1, *head.parameters()])
    masks = head(F.normalize(torch.cat([z0, z1]), dim=1), labels.repeat(2, 1))
    readme = HMLCLoss("hmce", hierarchy_margin=0.2)(z0, z1, labels, masks=masks)
    readme = readme + head.regularization(masks)
    readme_grads = torch.autograd.grad(readme, [z0, z1, *head.parameters()])
    assert torch.allclose(ours, readme, atol=1e-6)
    for a, b in zip(ours_grads, readme_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["a-hmlc", "g-hmlc"])
def test_checkpoints_of_the_head_as_a_model_part_still_load(method: str) -> None:
    """Before the suite used the package's chain, the head was saved as ``mask_head.*``."""
    model = methods.create_method(method, num_classes_per_level=[2, 4], proj_dim=8)
    old_layout = {k.removeprefix("criterion."): v for k, v in model.state_dict().items()}
    assert any(k.startswith("mask_head.") for k in old_layout)
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": old_layout}
    fresh = methods.create_method(method, num_classes_per_level=[2, 4], proj_dim=8)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: every key found
    loaded = fresh.state_dict()
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):  # the GMM's unfitted tables hold NaN
            assert torch.equal(loaded[key].nan_to_num(), value.nan_to_num()), key
        else:  # extra state
            assert loaded[key] == value, key


@pytest.mark.parametrize("method", ["hmce", "a-hmlc"])
def test_memory_bank_adds_the_queue_to_the_loss(method: str) -> None:
    torch.manual_seed(0)
    model = cast(
        methods.LabelPathMethod,
        methods.create_method(
            method, num_classes_per_level=[2, 4], proj_dim=8, memory_bank_size=32
        ),
    )
    plain = methods.create_method(method, num_classes_per_level=[2, 4], proj_dim=8)
    plain.load_state_dict(model.state_dict(), strict=False)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]] * 2)
    z0, z1 = torch.randn(8, 8), torch.randn(8, 8)
    first, _ = model.compute_loss(torch.zeros(16, 4), z0, z1, labels)  # the queue is empty
    assert torch.allclose(first, plain.compute_loss(torch.zeros(16, 4), z0, z1, labels)[0])
    second, _ = model.compute_loss(torch.zeros(16, 4), z0, z1, labels)  # 8 queued rows
    assert not torch.allclose(second, first)
    assert model.memory_bank is not None
    assert int(model.memory_bank.num_filled) == 16
    assert "memory_bank.features" in model.state_dict()  # checkpointed, resumes the queue


def test_memory_bank_in_the_suite_and_refused_without_a_label_path_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(tmp_path, "--methods", "g-hmlc", "--memory-bank", "48", "--no-plots")
    assert main.main(args) == 0
    state = torch.load(tmp_path / "shapes/g-hmlc/seed0/checkpoints/last.ckpt", weights_only=True)
    assert int(state["state_dict"]["memory_bank.num_filled"]) == 48
    assert main.main(tiny_args(tmp_path, "--methods", "simclr", "--memory-bank", "8")) == 2
    assert "memory_bank_size" in capsys.readouterr().err


def test_runs_that_recorded_the_removed_mask_placement_still_load_and_resume() -> None:
    import run

    # Checkpoints of before the backbone placement's removal record mask_placement.
    model = methods.create_method(
        "a-hmlc", num_classes_per_level=[2, 4], mask_placement="projection"
    )
    assert model.method_name == "a-hmlc"
    with pytest.raises(ValueError, match="was removed"):
        methods.create_method("g-hmlc", num_classes_per_level=[2, 4], mask_placement="backbone")
    saved = {"lr": 0.5, "mask_placement": "projection"}
    run.check_resume_config(saved, {"lr": 0.5}, "Checkpoint 'x'")
    with pytest.raises(main.UserError, match=r"--mask-placement \"backbone\" -> \"projection\""):
        run.check_resume_config({**saved, "mask_placement": "backbone"}, {"lr": 0.5}, "x")


@pytest.mark.slow
def test_the_suite_runs_compiled_and_keeps_the_checkpoint_keys(tmp_path: Path) -> None:
    # One masked method: it compiles the backbone, the projection head, the loss and its
    # head (compiling is slow: tens of seconds on the CPU).
    args = tiny_args(tmp_path, "--methods", "a-hmlc", "--no-plots", "--compile")
    assert main.main(args) == 0
    run_dir = tmp_path / "shapes" / "a-hmlc" / "seed0"
    record = load_metrics(run_dir)
    assert all(math.isfinite(record["eval"][key]) for key in LEVEL_KEYS)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)  # compiled in place


def test_token_attention_method_contrasts_per_level_embeddings_of_the_tokens() -> None:
    """``a-hmlc-tokens``: the level pool reads the backbone's feature map, the loss gets
    ``[B, L, D]`` (HMCE, margin 0.2), and a memory bank queues per-level rows."""
    from lightly_hmlc.loss import HMLCLoss

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"num_classes_per_level": [2, 4], "proj_dim": 8}
    model = cast(methods.LabelPathMethod, methods.create_method("a-hmlc-tokens", **kwargs))
    assert type(model.criterion) is HMLCLoss and model.criterion.hierarchy_margin == 0.2
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
    features, z0, z1 = model.encode_views(views)
    assert features.shape == (8, 64) and z0 is not None and z0.shape == (4, 2, 8)
    # The probed features are the backbone's own pooled features, as for every method.
    torch.testing.assert_close(features, model(torch.cat(views)))
    encoder = model.level_encoder()
    assert encoder is not None and encoder(views[0]).shape == (4, 2, 8)
    loss, logs = model.shared_step((views, labels))
    loss.backward()
    assert model.level_pool is not None
    assert model.level_pool.attention.latent.grad is not None
    assert sorted(logs) == ["loss_level0", "loss_level1"]
    banked = cast(
        methods.LabelPathMethod,
        methods.create_method("a-hmlc-tokens", memory_bank_size=8, **kwargs),
    )
    for _ in range(2):
        banked.shared_step((views, labels))
    assert banked.memory_bank is not None and banked.memory_bank.features.shape == (8, 2, 8)
    head = methods.create_method("a-hmlc-tokens", head_options={"num_heads": 4}, **kwargs)
    assert head.level_pool.attention.num_heads == 4  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="Drop --momentum-encoder"):
        methods.create_method("a-hmlc-tokens", memory_bank_size=8, momentum_encoder=0.9, **kwargs)
    assert methods.create_method("hmce", **kwargs).level_encoder() is None
