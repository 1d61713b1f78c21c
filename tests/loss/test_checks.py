"""float64 end to end, bad values, and the forward pass without host-device syncs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightly_hmlc.loss import AHMLCLoss, GHMLCLoss, HMLCLoss, ReferenceHMLCLoss, SupConLoss
from tests.loss import naive


def _inputs(
    seed: int, batch_size: int = 8, dtype: torch.dtype = torch.float64, unknown: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(batch_size, 5, generator=generator, dtype=torch.float64).to(dtype)
    out1 = torch.randn(batch_size, 5, generator=generator, dtype=torch.float64).to(dtype)
    return out0, out1, naive.random_tree_labels(batch_size, [2, 2, 2], generator, unknown)


# float64 throughout: agreement with a float64 per-anchor loop to 1e-12.

FLOAT64: dict[str, Any] = {"rtol": 0.0, "atol": 1e-12}


def test_supcon_float64_matches_the_float64_reference_to_1e_12() -> None:
    out0, out1, labels = _inputs(0)
    out0.requires_grad_(True)
    ours = SupConLoss(temperature=0.2)(out0, out1, labels[:, -1])
    expected = naive.supcon(out0, out1, labels[:, -1], 0.2)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected, **FLOAT64)
    (grad,) = torch.autograd.grad(ours, [out0])
    (expected_grad,) = torch.autograd.grad(expected, [out0])
    torch.testing.assert_close(grad, expected_grad, **FLOAT64)


@pytest.mark.parametrize(
    ("loss_type", "hce_form", "penalty"),
    [
        ("hmc", "anchor_mean", "exp"),
        ("hmc", "anchor_mean", "pow2"),
        ("hce", "anchor_mean", "exp"),
        ("hmce", "anchor_mean", "exp"),
        ("hce", "batch_mean", "exp"),
        ("hmce", "batch_mean", "pow2"),
    ],
)
def test_hmlc_float64_matches_the_float64_reference_to_1e_12(
    loss_type: str, hce_form: str, penalty: str
) -> None:
    out0, out1, labels = _inputs(1)
    out0.requires_grad_(True)
    loss_fn = HMLCLoss(loss_type, temperature=0.3, layer_penalty=penalty, hce_form=hce_form)
    ours = loss_fn(out0, out1, labels)
    expected = naive.hmlc(out0, out1, labels, loss_type, 0.3, penalty, True, hce_form)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected, **FLOAT64)
    (grad,) = torch.autograd.grad(ours, [out0])
    (expected_grad,) = torch.autograd.grad(expected, [out0])
    torch.testing.assert_close(grad, expected_grad, **FLOAT64)


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
def test_reference_mode_float64_matches_the_reference_algorithm_to_1e_12(loss_type: str) -> None:
    out0, out1, labels = _inputs(2, unknown=0.0)
    ours = ReferenceHMLCLoss(loss_type, layer_penalty="pow2")(out0, out1, labels)
    expected = naive.reference_algorithm(out0, out1, labels, loss_type, 0.1, "pow2")
    torch.testing.assert_close(ours, expected, **FLOAT64)


# Bad values: a clear ValueError, never NaN or a silently constant loss.


@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0, 0.0])
def test_temperature_must_be_finite_and_positive(value: float) -> None:
    for make in (
        lambda: HMLCLoss(temperature=value),
        lambda: ReferenceHMLCLoss(base_temperature=value),
        lambda: SupConLoss(temperature=value),
        lambda: GHMLCLoss(num_levels=2, dim=4, temperature=value),
    ):
        with pytest.raises(ValueError, match="must be > 0 and finite"):
            make()


def test_all_zero_layer_penalty_is_rejected_not_nan() -> None:
    def zeros(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    with pytest.raises(ValueError, match="all-zero weights"):
        HMLCLoss("hmc", layer_penalty=zeros, num_levels=3)
    out0, out1, labels = _inputs(3)
    with pytest.raises(ValueError, match="all-zero weights"):
        HMLCLoss("hmce", layer_penalty=zeros)(out0, out1, labels)


@pytest.mark.parametrize(
    ("scale", "message"),
    [(1e20, "norm is Inf"), (1e-25, "zero or below 1e-12"), (0.0, "zero or below 1e-12")],
)
def test_float32_rows_that_cannot_be_normalised_are_rejected(scale: float, message: str) -> None:
    out0, out1, labels = _inputs(4, dtype=torch.float32)
    out0 = out0.clone()
    out0[2] = out0[2] * scale if scale else 0.0
    for loss_fn in (HMLCLoss("hmce"), SupConLoss(), AHMLCLoss(num_levels=3, dim=5)):
        with pytest.raises(
            ValueError, match=f"cannot be L2-normalised in torch.float32.*{message}"
        ):
            loss_fn(out0, out1, labels)


def test_float64_normalises_what_float32_cannot() -> None:
    out0, out1, labels = _inputs(5)
    expected = HMLCLoss("hmce")(out0, out1, labels)
    # 1e20 squared overflows float32 but not float64: the direction is what counts.
    torch.testing.assert_close(HMLCLoss("hmce")(out0 * 1e20, out1, labels), expected)


def test_nan_masks_are_rejected() -> None:
    out0, out1, labels = _inputs(6)
    masks = torch.ones(1, 3, 5, dtype=torch.float64)
    masks[0, 1, 2] = math.nan
    with pytest.raises(ValueError, match="masks contain NaN or Inf"):
        HMLCLoss()(out0, out1, labels, masks=masks)


# check_values=False: shapes are still checked, values are not; the host reads only what
# picks the shapes, and nothing where no value can be read (a torch.compile graph).

# Ops that make the host wait for an accelerator: reading a value, or shapes that
# depend on values. torch.tensor(data) stands for a host-to-device copy.
_SYNCING = {
    "aten::_local_scalar_dense",
    "aten::item",
    "aten::is_nonzero",
    "aten::equal",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::lift_fresh",
}


class _SyncRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Any = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = func._schema.name
        indices = args[1] if name in ("aten::index", "aten::index_put_") else ()
        if name in _SYNCING or any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()
        ):
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "make",
    [
        lambda: SupConLoss(check_values=False),
        lambda: HMLCLoss("hmc", check_values=False),
        lambda: HMLCLoss("hmce", check_values=False),
        lambda: HMLCLoss("hmce", hce_form="batch_mean", check_values=False),
        lambda: ReferenceHMLCLoss("hmce", check_values=False),
        lambda: AHMLCLoss(num_levels=3, dim=5, check_values=False),
    ],
)
def test_without_value_checks_nothing_syncs_inside_a_compiled_graph(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As torch.compile traces it (tests/loss/test_compile.py runs the real graph).
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    loss_fn = make()
    out0, out1, labels = _inputs(7, dtype=torch.float32, unknown=0.0)
    out0.requires_grad_(True)
    if isinstance(loss_fn, SupConLoss):
        labels = labels[:, -1]
    recorder = _SyncRecorder()
    with recorder:
        loss = loss_fn(out0, out1, labels)
        loss.backward()
    assert recorder.syncs == []
    # The recorder does see a sync when one happens.
    with _SyncRecorder() as checked:
        HMLCLoss("hmce")(out0, out1, labels if labels.dim() == 2 else labels[:, None])
    assert "aten::_local_scalar_dense" in checked.syncs


@pytest.mark.parametrize(
    ("make", "reads"),
    [
        (lambda: SupConLoss(check_values=False), 0),
        (lambda: HMLCLoss("hmc", check_values=False), 0),
        (lambda: HMLCLoss("hmce", check_values=False), 1),  # the largest coarse group
        (lambda: HMLCLoss("hmce", hierarchy_margin=0.2, check_values=False), 1),
        (lambda: AHMLCLoss(num_levels=3, dim=5, check_values=False), 1),  # soft masks
    ],
)
def test_without_value_checks_eager_reads_only_what_picks_the_shapes(make: Any, reads: int) -> None:
    # Whole-row windows instead would cost several times the time and memory.
    loss_fn = make()
    out0, out1, labels = _inputs(7, dtype=torch.float32, unknown=0.0)
    out0.requires_grad_(True)
    if isinstance(loss_fn, SupConLoss):
        labels = labels[:, -1]
    with _SyncRecorder() as recorder:
        loss_fn(out0, out1, labels).backward()
    assert recorder.syncs == ["aten::_local_scalar_dense"] * reads


def test_without_value_checks_shapes_are_still_checked() -> None:
    out0, out1, labels = _inputs(8)
    with pytest.raises(ValueError, match="labels has 7 rows"):
        HMLCLoss(check_values=False)(out0, out1, labels[:7])
    with pytest.raises(ValueError, match="masks has shape"):
        HMLCLoss(check_values=False)(out0, out1, labels, masks=torch.ones(2, 3, 5))
    nan = out0.clone()
    nan[0, 0] = math.nan
    assert torch.isnan(HMLCLoss(check_values=False)(nan, out1, labels))  # as documented
