from __future__ import annotations

from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.loss import HMLCLoss
from lightly_hmlc.loss.masked import AHMLCLoss, GHMLCLoss, MaskedHMLCLoss
from lightly_hmlc.models.modules import AttentionMaskHead, GMMFeatureMaskHead
from tests.loss import naive


class FixedMaskHead(nn.Module):
    """Returns the same masks for every sample; optionally trainable."""

    def __init__(self, masks: Tensor, trainable: bool = False) -> None:
        super().__init__()
        self.masks = nn.Parameter(masks.clone(), requires_grad=trainable)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.masks.unsqueeze(0)

    def regularization(self, masks: Tensor) -> Tensor:
        return masks.new_zeros(())


def _inputs(seed: int = 0, batch_size: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(batch_size, 6, generator=generator, dtype=torch.float64)
    out1 = torch.randn(batch_size, 6, generator=generator, dtype=torch.float64)
    return out0, out1, naive.random_tree_labels(batch_size, [2, 3], generator, unknown=0.2)


def _naive_masked(
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    masks: Tensor,
    loss_type: str,
    temperature: float,
    hce_form: str = "anchor_mean",
) -> Tensor:
    """Level h's naive term on normalize(normalize(z) * masks[:, h]); masks [2B, L, D]."""
    z = torch.cat([F.normalize(out0, dim=1), F.normalize(out1, dim=1)])
    batch_size = out0.shape[0]
    num_levels = labels.shape[1]
    level_z = [F.normalize(z * masks[:, level], dim=1) for level in range(num_levels)]
    if loss_type != "hmc" and hce_form != "batch_mean":
        level_terms = naive.hce_pair_level_means(level_z, labels, temperature, hce_form)
    else:
        level_terms = [
            naive.level_means(zl[:batch_size], zl[batch_size:], labels, temperature)[level]
            for level, zl in enumerate(level_z)
        ]
    if loss_type in ("hce", "hmce") and hce_form == "batch_mean":
        level_terms = [torch.stack(level_terms[level:]).max() for level in range(num_levels)]
    if loss_type == "hce":
        return torch.stack(level_terms).mean()
    weights = naive.penalty_weights(num_levels, "exp")
    return naive.weighted_sum(weights, level_terms) / sum(weights)


@pytest.mark.parametrize(("loss_type", "hce_form"), naive.LOSS_FORMS)
@pytest.mark.parametrize("rows", ["shared", "per_sample", "per_row"])
def test_masks_argument_matches_naive_per_level_masking(
    loss_type: str, hce_form: str, rows: str
) -> None:
    out0, out1, labels = _inputs(1, batch_size=8)
    generator = torch.Generator().manual_seed(5)
    count = {"shared": 1, "per_sample": 8, "per_row": 16}[rows]
    masks = torch.rand(count, 2, 6, generator=generator, dtype=torch.float64) + 0.1
    masks.requires_grad_(True)
    loss_fn = HMLCLoss(loss_type, temperature=0.3, hce_form=hce_form)
    ours = loss_fn(out0, out1, labels, masks=masks)
    full = masks.expand(16, -1, -1) if count == 1 else masks.repeat(16 // count, 1, 1)
    expected = _naive_masked(out0, out1, labels, full, loss_type, 0.3, hce_form)
    torch.testing.assert_close(ours.double(), expected)
    (grad,) = torch.autograd.grad(ours, [masks])
    (expected_grad,) = torch.autograd.grad(expected, [masks])
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize(("loss_type", "hce_form"), naive.LOSS_FORMS)
@pytest.mark.parametrize("form", ["nested", "partition", "runs_impossible"])
def test_shared_hard_masks_match_naive_per_level_masking(
    loss_type: str, hce_form: str, form: str
) -> None:
    # Shared 0/1 masks multiply only each level's columns (reordered into one run).
    out0, out1, labels = _inputs(3, batch_size=8)
    out0.requires_grad_(True)
    out1.requires_grad_(True)
    rows = {
        "nested": [[0, 1, 0, 0, 1, 0], [1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1]],
        "partition": [[0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 1]],
        "runs_impossible": [[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [1, 0, 1, 1, 1, 1]],
    }[form]
    masks = torch.tensor([rows], dtype=torch.float64)
    generator = torch.Generator().manual_seed(4)
    labels = naive.random_tree_labels(8, [2, 2, 2], generator, unknown=0.2)
    loss_fn = HMLCLoss(loss_type, temperature=0.3, hce_form=hce_form)
    ours = loss_fn(out0, out1, labels, masks=masks)
    expected = _naive_masked(out0, out1, labels, masks.expand(16, -1, -1), loss_type, 0.3, hce_form)
    naive.assert_value_and_gradients_close(ours, expected, [out0, out1])


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
def test_all_ones_masks_equal_no_masks(loss_type: str) -> None:
    out0, out1, labels = _inputs()
    loss_fn = HMLCLoss(loss_type)
    expected = loss_fn(out0, out1, labels)
    for count in (1, 10, 20):
        ones = torch.ones(count, 2, 6, dtype=torch.float64)
        torch.testing.assert_close(loss_fn(out0, out1, labels, masks=ones), expected)
    masked = MaskedHMLCLoss(FixedMaskHead(torch.ones(2, 6)), loss_type=loss_type)
    torch.testing.assert_close(masked(out0, out1, labels), expected)


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
def test_convenience_equals_the_chain(loss_type: str) -> None:
    out0, out1, labels = _inputs(2)
    torch.manual_seed(0)
    head = AttentionMaskHead(num_levels=2, dim=6, init_std=0.5, separation_weight=0.3).double()
    masked = MaskedHMLCLoss(head, loss_type=loss_type, temperature=0.2)
    got, got_levels = masked(out0, out1, labels, return_level_losses=True)
    z = torch.cat([out0, out1])
    masks = head(F.normalize(z, dim=1), labels.repeat(2, 1))
    assert masks.shape == (20, 2, 6)
    chain, chain_levels = HMLCLoss(loss_type, temperature=0.2)(
        out0, out1, labels, masks=masks, return_level_losses=True
    )
    torch.testing.assert_close(got, chain + head.regularization(masks))
    torch.testing.assert_close(got_levels, chain_levels)
    assert head.regularization(masks) > 0  # the regulariser really is part of the sum


def test_gradients_flow_through_soft_masks() -> None:
    out0, out1, labels = _inputs(2)
    masks = (torch.rand(20, 2, 6, dtype=torch.float64) + 0.5).requires_grad_(True)
    HMLCLoss()(out0, out1, labels, masks=masks).backward()
    assert masks.grad is not None and masks.grad.abs().sum() > 0
    soft = FixedMaskHead(torch.rand(2, 6, dtype=torch.float64) + 0.5, trainable=True)
    MaskedHMLCLoss(soft)(out0, out1, labels).backward()
    assert soft.masks.grad is not None and soft.masks.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        (torch.ones(3, 2, 6), r"masks has shape \(3, 2, 6\); expected \[1 \| 10 \| 20, 2, 6\]"),
        (torch.ones(1, 3, 6), r"masks has shape \(1, 3, 6\)"),
        (torch.ones(1, 2, 5), r"masks has shape \(1, 2, 5\)"),
        (torch.ones(2, 6), r"masks has shape \(2, 6\)"),
        (torch.ones(1, 2, 6, dtype=torch.long), "floating point tensor"),
    ],
)
def test_wrong_masks_are_reported(masks: Tensor, message: str) -> None:
    out0, out1, labels = _inputs()
    with pytest.raises(ValueError, match=message):
        HMLCLoss()(out0, out1, labels, masks=masks)


@pytest.mark.parametrize("with_memory", [False, True])
def test_masks_are_checked_once_per_call(
    monkeypatch: pytest.MonkeyPatch, with_memory: bool
) -> None:
    from lightly_hmlc.loss import _features, hmlc

    calls = []
    check_masks = _features.check_masks

    def counting_check_masks(*args: object, **kwargs: object) -> Tensor:
        calls.append(args)
        return check_masks(*args, **kwargs)  # type: ignore[arg-type]

    # Wherever the loss module might call it from.
    monkeypatch.setattr(_features, "check_masks", counting_check_masks)
    monkeypatch.setattr(hmlc, "check_masks", counting_check_masks, raising=False)
    out0, out1, labels = _inputs()
    memory = (torch.randn(3, 6, dtype=torch.float64), labels[:3]) if with_memory else None
    HMLCLoss()(out0, out1, labels, masks=torch.rand(1, 2, 6, dtype=torch.float64), memory=memory)
    assert len(calls) == 1


def test_wrong_head_output_is_reported() -> None:
    out0, out1, labels = _inputs()
    with pytest.raises(ValueError, match="mask head's output has shape"):
        MaskedHMLCLoss(FixedMaskHead(torch.ones(3, 6)))(out0, out1, labels)


def test_mask_head_must_be_a_module() -> None:
    with pytest.raises(ValueError, match="must be an nn.Module"):
        MaskedHMLCLoss(lambda z, labels: z)  # type: ignore[arg-type]


def test_ghmlc_trains_masks_and_passes_no_gradient_through_them() -> None:
    out0, out1, labels = _inputs(3)
    out0 = out0.float().requires_grad_(True)
    loss_fn = GHMLCLoss(num_levels=2, dim=6, refit_every=1, warmup_steps=0)
    loss, level_losses = loss_fn(out0, out1.float(), labels, return_level_losses=True)
    loss.backward()
    assert torch.isfinite(loss) and level_losses.shape == (2,)
    assert bool(loss_fn.mask_head.fitted)
    masks = cast(GMMFeatureMaskHead, loss_fn.mask_head).masks
    assert not masks.requires_grad and not torch.equal(masks, torch.ones_like(masks))
    assert out0.grad is not None and torch.isfinite(out0.grad).all()


def test_ahmlc_head_gets_gradients() -> None:
    out0, out1, labels = _inputs(4)
    loss_fn = AHMLCLoss(num_levels=2, dim=6)
    loss_fn(out0.float(), out1.float(), labels).backward()
    grads = [p.grad for p in loss_fn.parameters()]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_repr_shows_the_loss_settings_and_the_head() -> None:
    text = repr(AHMLCLoss(num_levels=2, dim=8, loss_type="hce", gate="softmax"))
    assert text.startswith("AHMLCLoss(\n  loss_type='hce', temperature=0.1, layer_penalty='exp'")
    assert "num_levels=2" in text
    assert (
        "(mask_head): AttentionMaskHead(num_levels=2, dim=8, hidden_dim=8, gate='softmax'" in text
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("loss_type", ["hmce", "hmc"])
def test_ghmlc_without_value_checks_gives_a_zero_row_a_zero_gradient(
    loss_type: str, dtype: torch.dtype
) -> None:
    # Normalised twice (the batch, then each masked level), a zero row's gradient was
    # scaled by 1 / eps twice: about 1e23 in float32, Inf in float16.
    generator = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.arange(16) % 2, torch.arange(16) % 4], dim=1)
    loss_fn = GHMLCLoss(
        num_levels=2, dim=8, loss_type=loss_type, check_values=False, warmup_steps=1
    )
    loss_fn(
        torch.randn(16, 8, generator=generator), torch.randn(16, 8, generator=generator), labels
    )
    masks = cast(GMMFeatureMaskHead, loss_fn.mask_head).masks
    assert not torch.equal(masks, torch.ones_like(masks))  # fitted: the masked path runs
    rest = torch.randn(15, 8, generator=generator).to(dtype).requires_grad_(True)
    out1 = torch.randn(16, 8, generator=generator).to(dtype)
    out0 = torch.cat([torch.zeros(1, 8, dtype=dtype), rest.detach()]).requires_grad_(True)
    loss_fn.eval()  # the same masks for both calls
    loss_fn(out0, out1, labels).backward()
    assert out0.grad is not None and torch.isfinite(out0.grad).all()
    assert torch.equal(out0.grad[0], torch.zeros(8, dtype=dtype))
    # The other rows get the gradient they get when the zero row is a constant.
    loss_fn(torch.cat([torch.zeros(1, 8, dtype=dtype), rest]), out1, labels).backward()
    assert rest.grad is not None
    torch.testing.assert_close(out0.grad[1:], rest.grad)
