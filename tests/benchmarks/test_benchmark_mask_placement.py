"""Masks on the backbone features (``mask_placement="backbone"``): each level's term on its
own projection of its masked features, checked against plain per-anchor loops."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import main
import methods
import pytest
import run
import torch
import torch.nn.functional as F

from tests.benchmarks.suite_utils import tiny_args
from tests.loss.naive import hce_pair_level_means, penalty_weights, weighted_sum

LABELS = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]] * 4)


def backbone_masked(method: str, **kwargs: object) -> methods.LabelPathMethod:
    torch.manual_seed(0)
    if method == "g-hmlc":  # fit the GMM at once, so that its masks are not all ones
        kwargs = {"mask_warmup_steps": 1, "mask_refit_every": 1, **kwargs}
    model = methods.create_method(
        method, num_classes_per_level=[2, 4], proj_dim=8, mask_placement="backbone", **kwargs
    )
    return cast(methods.LabelPathMethod, model)  # a masked method is a LabelPathMethod


def captured_masks(model: methods.LabelPathMethod) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    assert model.mask_head is not None
    model.mask_head.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    return seen


@pytest.mark.parametrize("method", ["a-hmlc", "g-hmlc"])
def test_each_level_s_term_is_on_its_own_projection_of_the_masked_backbone_features(
    method: str,
) -> None:
    model = backbone_masked(method)
    assert model.mask_head is not None and model.mask_head.dim == model.feature_dim
    assert model.projection_head is not None
    seen = captured_masks(model)
    for _ in range(3):  # G-HMLC fits its masks from the statistics of the first steps
        features = torch.randn(32, model.feature_dim)
        loss, logs = model.compute_loss(features, None, None, LABELS)
    masks = seen[-1].expand(32, -1, -1)
    if method == "g-hmlc":  # fitted hard masks, nested: the finest level sees them all
        assert bool(model.mask_head.fitted)
        assert set(seen[-1].unique().tolist()) == {0.0, 1.0}
        assert torch.equal(seen[-1][0, 1], torch.ones(model.feature_dim))
        assert bool((seen[-1][0, 0] <= seen[-1][0, 1]).all())
    level_z = [
        F.normalize(model.projection_head(features * masks[:, level]), dim=1).double()
        for level in range(2)
    ]
    # The methods' default hierarchy margin (0.2) acts in the level terms here too.
    means = hce_pair_level_means(level_z, LABELS, 0.1, "anchor_mean", margin=0.2)
    weights = penalty_weights(2, "exp")
    expected = weighted_sum(weights, means) / sum(weights)
    regularization = logs.get("mask_regularization", torch.zeros(()))
    assert torch.allclose(loss.double() - regularization.double(), expected, atol=1e-5)
    assert {"loss_level0", "loss_level1"} <= set(logs)


def test_a_coarse_term_moves_only_the_backbone_features_of_its_mask() -> None:
    # G-HMLC's hard masks with the fine level weighted 0: the loss is the coarse term.
    model = backbone_masked("g-hmlc", loss_options={"loss_type": "hmc", "layer_penalty": [1, 0]})
    seen = captured_masks(model)
    for _ in range(3):
        features = torch.randn(32, model.feature_dim, requires_grad=True)
        loss, _ = model.compute_loss(features, None, None, LABELS)
    (grad,) = torch.autograd.grad(loss, features)
    coarse = seen[-1][0, 0].bool()
    assert 0 < int(coarse.sum()) < model.feature_dim
    # Float rounding of the fine term (weight 0) leaves ~1e-8 outside; a leak through
    # shared BatchNorm statistics was ~1e-2.
    assert grad[:, ~coarse].abs().max() < 1e-6 * grad[:, coarse].abs().max()


def test_a_hmlc_on_the_backbone_trains_the_head_and_the_backbone() -> None:
    model = backbone_masked("a-hmlc")
    views = [torch.randn(16, 3, 16, 16), torch.randn(16, 3, 16, 16)]
    loss, _ = model.shared_step((views, LABELS))
    loss.backward()
    assert model.mask_head is not None
    for part in (model.mask_head, model.backbone, model.projection_head):
        assert part is not None
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        ("hmce", {}, "applies only to the methods with one"),
        ("a-hmlc", {"memory_bank_size": 8}, "drop the memory bank"),
        ("supcon", {}, "applies only to the methods with one"),
        ("ce", {}, "no mask head to place"),
        ("simclr", {}, "no mask head to place"),
    ],
)
def test_a_placement_without_a_head_or_with_a_memory_bank_is_refused(
    method: str, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        methods.create_method(
            method, num_classes_per_level=[2, 4], mask_placement="backbone", **kwargs
        )
    with pytest.raises(ValueError, match="mask_placement must be one of"):
        methods.create_method("a-hmlc", num_classes_per_level=[2, 4], mask_placement="input")


def test_the_suite_flag_trains_a_run_and_an_older_checkpoint_resumes_with_it_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(tmp_path, "--methods", "g-hmlc", "--mask-placement", "backbone", "--no-plots")
    assert main.main(args) == 0
    state = torch.load(tmp_path / "shapes/g-hmlc/seed0/checkpoints/last.ckpt", weights_only=True)
    assert state["hyper_parameters"]["mask_placement"] == "backbone"
    assert main.main(tiny_args(tmp_path, "--methods", "hmce", "--mask-placement", "backbone")) == 2
    assert "mask_placement" in capsys.readouterr().err
    saved = {"lr": 0.5}
    run.check_resume_config(saved, {**saved, "mask_placement": "projection"}, "Checkpoint 'x'")
    with pytest.raises(main.UserError, match=r"--mask-placement \"projection\" -> \"backbone\""):
        run.check_resume_config(saved, {**saved, "mask_placement": "backbone"}, "Checkpoint 'x'")
