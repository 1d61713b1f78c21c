from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightly_hmlc.loss import AHMLCLoss, HMLCLoss, ReferenceHMLCLoss, SupConLoss
from tests.loss import naive


def _inputs(
    seed: int,
    batch_size: int = 10,
    dim: int = 6,
    branching: tuple[int, ...] = (2, 2, 2),
    unknown: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(batch_size, dim, generator=generator, dtype=torch.float64)
    out1 = torch.randn(batch_size, dim, generator=generator, dtype=torch.float64)
    labels = naive.random_tree_labels(batch_size, list(branching), generator, unknown)
    return out0, out1, labels


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
@pytest.mark.parametrize("penalty", ["exp", "pow2"])
@pytest.mark.parametrize("unknown", [0.0, 0.3])
def test_value_and_gradients_match_naive(loss_type: str, penalty: str, unknown: float) -> None:
    for seed in range(2):
        out0, out1, labels = _inputs(seed, unknown=unknown)
        out0.requires_grad_(True)
        out1.requires_grad_(True)
        loss_fn = HMLCLoss(
            loss_type,
            temperature=0.3,
            layer_penalty=penalty,
            hce_form="batch_mean",
        )
        ours = loss_fn(out0, out1, labels)
        grads = torch.autograd.grad(ours, [out0, out1])
        expected = naive.hmlc(out0, out1, labels, loss_type, 0.3, penalty, True, "batch_mean")
        expected_grads = torch.autograd.grad(expected, [out0, out1])
        torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", [None, "anchor_mean"])  # None: the default
@pytest.mark.parametrize("loss_type", ["hce", "hmce"])
@pytest.mark.parametrize("unknown", [0.0, 0.3])
def test_per_pair_hce_matches_naive_pair_loop(
    loss_type: str, unknown: float, form: str | None
) -> None:
    out0, out1, labels = _inputs(11, batch_size=8, unknown=unknown)
    out0.requires_grad_(True)
    out1.requires_grad_(True)
    ours, level_losses = HMLCLoss(loss_type, temperature=0.3, hce_form=form or "anchor_mean")(
        out0, out1, labels, return_level_losses=True
    )
    expected = naive.hmlc(out0, out1, labels, loss_type, 0.3, "exp", True, form or "anchor_mean")
    torch.testing.assert_close(ours.double(), expected)
    for got, want in zip(
        torch.autograd.grad(ours, [out0, out1]),
        torch.autograd.grad(expected, [out0, out1]),
        strict=True,
    ):
        torch.testing.assert_close(got.double(), want)
    # The reported level losses are the plain SupCon terms, before the constraint.
    plain = torch.stack(naive.level_means(out0, out1, labels, 0.3))
    torch.testing.assert_close(level_losses.double(), plain.detach())


def _clustered(seed: int, batch_size: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class centroid + noise: coarse classes far apart, fine classes closer together."""
    generator = torch.Generator().manual_seed(seed)
    labels = naive.random_tree_labels(batch_size, [2, 3], generator)
    coarse_centres = 4.0 * torch.randn(6, 16, generator=generator, dtype=torch.float64)
    fine_offsets = 1.0 * torch.randn(6, 16, generator=generator, dtype=torch.float64)
    centres = coarse_centres[labels[:, 0]] + fine_offsets[labels[:, 1]]

    def view() -> torch.Tensor:
        return centres + 0.3 * torch.randn(batch_size, 16, generator=generator).double()

    return view(), view(), labels


def test_anchor_mean_bound_binds_on_a_clustered_embedding() -> None:
    out0, out1, labels = _clustered(0)
    hmc = HMLCLoss("hmc")(out0, out1, labels)
    anchor_mean, level_losses = HMLCLoss("hmce")(out0, out1, labels, return_level_losses=True)
    batch_mean = HMLCLoss("hmce", hce_form="batch_mean")(out0, out1, labels)
    # The batch-mean constraint never binds here: the coarse term is the larger one...
    assert level_losses[0] > level_losses[1]
    torch.testing.assert_close(batch_mean, hmc)
    # ...but per pair it does: coarse positives closer than the anchor's mean fine pair
    # are raised.
    assert hmc + 1e-4 < anchor_mean
    expected = naive.hmlc(out0, out1, labels, "hmce", 0.1, "exp", True, "anchor_mean")
    torch.testing.assert_close(anchor_mean, expected)


def test_hce_form_validation() -> None:
    with pytest.raises(ValueError, match="Unknown hce_form"):
        HMLCLoss("hce", hce_form="pair")
    assert HMLCLoss("hce").hce_form == "anchor_mean"


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
@pytest.mark.parametrize("penalty", ["exp", "pow2"])
def test_reference_compatible_matches_reference_algorithm(loss_type: str, penalty: str) -> None:
    for seed in range(3):
        out0, out1, labels = _inputs(seed, batch_size=12, branching=(2, 3, 2))
        out0.requires_grad_(True)
        loss_fn = ReferenceHMLCLoss(loss_type, temperature=0.1, layer_penalty=penalty)
        ours = loss_fn(out0, out1, labels)
        expected = naive.reference_algorithm(out0, out1, labels, loss_type, 0.1, penalty)
        torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)
        (grad,) = torch.autograd.grad(ours, [out0])
        (expected_grad,) = torch.autograd.grad(expected, [out0])
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-5)


def test_reference_mode_differs_from_paper_formula() -> None:
    out0, out1, labels = _inputs(0, batch_size=12)
    paper = HMLCLoss("hmce")(out0, out1, labels)
    reference = ReferenceHMLCLoss("hmce")(out0, out1, labels)
    assert not torch.allclose(paper, reference)


def test_reference_mode_rejects_unknown_labels() -> None:
    out0, out1, labels = _inputs(0, unknown=0.5)
    assert (labels < 0).any()
    with pytest.raises(ValueError, match="does not support -1"):
        ReferenceHMLCLoss()(out0, out1, labels)


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
def test_one_level_equals_supcon(loss_type: str) -> None:
    out0, out1, labels = _inputs(3, batch_size=16, branching=(4,))
    hmlc = HMLCLoss(loss_type, temperature=0.2)(out0, out1, labels)
    supcon = SupConLoss(temperature=0.2)(out0, out1, labels[:, 0])
    torch.testing.assert_close(hmlc, supcon)


def test_unknown_everywhere_gives_zero_not_nan() -> None:
    out0 = torch.randn(4, 3, requires_grad=True)
    out1 = torch.randn(4, 3)
    labels = torch.full((4, 2), -1)
    loss = HMLCLoss("hmce")(out0, out1, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert out0.grad is not None and torch.isfinite(out0.grad).all()


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
def test_level_losses_are_per_level_means(loss_type: str) -> None:
    out0, out1, labels = _inputs(5)
    loss_fn = HMLCLoss(loss_type, temperature=0.3)
    loss, level_losses = loss_fn(out0, out1, labels, return_level_losses=True)
    expected = torch.stack(naive.level_means(out0, out1, labels, 0.3))
    torch.testing.assert_close(level_losses.double(), expected)
    assert not level_losses.requires_grad
    torch.testing.assert_close(loss, loss_fn(out0, out1, labels))


def test_losses_keep_no_per_call_state() -> None:
    out0, out1, labels = _inputs(6)

    def snapshot(module: torch.nn.Module) -> dict[str, object]:
        # Copies the module's dicts (buffers, submodules, ...) so that a change shows.
        return {k: dict(v) if isinstance(v, dict) else v for k, v in vars(module).items()}

    for loss_fn in (HMLCLoss("hmce"), SupConLoss()):
        before = snapshot(loss_fn)
        loss_fn(out0, out1, labels)
        loss_fn(out0, out1, labels, return_level_losses=True)
        assert snapshot(loss_fn) == before


def test_supcon_level_losses_have_one_level() -> None:
    out0, out1, labels = _inputs(6)
    loss, level_losses = SupConLoss(temperature=0.3)(
        out0, out1, labels[:, -1], return_level_losses=True
    )
    assert level_losses.shape == (1,)
    torch.testing.assert_close(level_losses[0], loss.detach())


def test_hce_never_lets_a_coarser_level_cost_less() -> None:
    out0, out1, labels = _inputs(7)
    hce = HMLCLoss("hce", temperature=0.3)(out0, out1, labels)
    levels = naive.level_means(out0, out1, labels, 0.3)
    assert hce.item() >= torch.stack(levels).mean().item() - 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_is_finite_and_close_to_float32(dtype: torch.dtype) -> None:
    out0, out1, labels = _inputs(1, batch_size=64, dim=32)
    reference = HMLCLoss("hmce")(out0.float(), out1.float(), labels)
    with torch.autocast("cpu", dtype=dtype):
        low = HMLCLoss("hmce")(out0.to(dtype), out1.to(dtype), labels)
    assert low.dtype == torch.float32
    assert torch.isfinite(low)
    torch.testing.assert_close(low, reference, rtol=2e-2, atol=2e-2)


def test_autocast_keeps_the_logits_in_float32() -> None:
    out0, out1, labels = _inputs(2, batch_size=32, dim=16)
    out0, out1 = out0.bfloat16(), out1.bfloat16()
    plain = HMLCLoss("hmce")(out0.float(), out1.float(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = HMLCLoss("hmce")(out0, out1, labels)
    # Same rounded inputs, so float32 logits give the float32 result exactly.
    torch.testing.assert_close(autocast, plain, rtol=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), loss_type=st.sampled_from(["hmc", "hce", "hmce"]))
def test_invariant_to_batch_permutation_and_relabelling(seed: int, loss_type: str) -> None:
    out0, out1, labels = _inputs(seed, batch_size=9, unknown=0.2)
    loss_fn = HMLCLoss(loss_type)
    expected = loss_fn(out0, out1, labels)
    generator = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(9, generator=generator)
    torch.testing.assert_close(loss_fn(out0[order], out1[order], labels[order]), expected)
    relabelled = labels.clone()
    for level in range(labels.shape[1]):
        mapping = torch.randperm(int(labels.max()) + 1, generator=generator) + 100
        known = labels[:, level] >= 0
        relabelled[known, level] = mapping[labels[known, level]]
    torch.testing.assert_close(loss_fn(out0, out1, relabelled), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": "hxx"}, "Unknown loss_type"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"num_levels": 0}, "num_levels must be >= 1"),
        ({"layer_penalty": "cubic"}, "Unknown layer_penalty"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HMLCLoss(**kwargs)  # type: ignore[arg-type]


def test_bad_penalty_callable_is_rejected() -> None:
    with pytest.raises(ValueError, match="finite values"):
        HMLCLoss(num_levels=2, layer_penalty=lambda x: x / 0.0)


@pytest.mark.parametrize(
    ("out0", "out1", "labels", "message"),
    [
        (  # read as per-level embeddings [B, L, D]: 3 levels for label paths of 2
            torch.randn(4, 3, 2),
            torch.randn(4, 3, 2),
            torch.zeros(4, 2, dtype=torch.long),
            "got 3 embeddings per sample for label paths of depth 2",
        ),
        (
            torch.randn(4, 3, 2, 1),
            torch.randn(4, 3, 2, 1),
            torch.zeros(4, 2, dtype=torch.long),
            "must have shape \\[batch_size, dim\\] or \\[batch_size, levels, dim\\]",
        ),
        (torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, 2, dtype=torch.long), "same shape"),
        (
            torch.randn(4, 3),
            torch.randn(4, 3),
            torch.zeros(5, 2, dtype=torch.long),
            "labels has 5 rows",
        ),
        (torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4, 2), "labels must be integers"),
        (
            torch.randn(4, 3),
            torch.randn(4, 3),
            torch.zeros(4, 3, dtype=torch.long),
            "configured with num_levels=2",
        ),
        (
            torch.full((4, 3), float("nan")),
            torch.randn(4, 3),
            torch.zeros(4, 2, dtype=torch.long),
            "NaN or Inf",
        ),
        (torch.randn(0, 3), torch.randn(0, 3), torch.zeros(0, 2, dtype=torch.long), "empty"),
        (torch.randn(4, 3), torch.randn(4, 3), torch.full((4, 2), -2), "below -1"),
        (
            torch.randn(4, 3),
            torch.randn(4, 3),
            torch.zeros(4, 2, 1, dtype=torch.long),
            "labels must have shape",
        ),
        (
            torch.ones(4, 3, dtype=torch.long),
            torch.ones(4, 3, dtype=torch.long),
            torch.zeros(4, 2, dtype=torch.long),
            "floating point",
        ),
    ],
)
def test_bad_input_messages(
    out0: torch.Tensor, out1: torch.Tensor, labels: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        HMLCLoss(num_levels=2)(out0, out1, labels)


def test_repr_names_the_settings() -> None:
    text = repr(
        HMLCLoss(
            "hmc",
            temperature=0.2,
            layer_penalty="pow2",
            num_levels=3,
            gather_distributed=True,
            hce_form="batch_mean",
            check_values=False,
        )
    )
    assert text == (
        "HMLCLoss(loss_type='hmc', temperature=0.2, layer_penalty='pow2', "
        "hce_form='batch_mean', hierarchy_margin=0.0, num_levels=3, "
        "gather_distributed=True, check_values=False)"
    )
    reference = repr(ReferenceHMLCLoss(base_temperature=0.5))
    assert reference.endswith("base_temperature=0.5)")


def test_repr_shows_a_penalty_by_name_weights_or_function_name() -> None:
    assert "layer_penalty='exp'," in repr(HMLCLoss())
    assert "layer_penalty=[0.5, 1.0]," in repr(HMLCLoss(layer_penalty=(0.5, 1)))

    def linear(k_inverse: torch.Tensor) -> torch.Tensor:
        return k_inverse

    assert "layer_penalty=linear," in repr(HMLCLoss(layer_penalty=linear))


@pytest.mark.parametrize(
    "make",
    [
        lambda: SupConLoss(),
        lambda: HMLCLoss("hmce"),
        lambda: HMLCLoss("hmce", hierarchy_margin=0.2),
        lambda: HMLCLoss("hmc"),
        lambda: AHMLCLoss(3, 6).double(),
    ],
    ids=["supcon", "hmce", "hmce-margin", "hmc", "a-hmlc"],
)
def test_a_second_backward_gives_the_same_gradients(make) -> None:  # type: ignore[no-untyped-def]
    # The forward keeps its last similarity matrix for the backward, which uses it in place:
    # a second backward (retain_graph) must recompute it, not read the spent one.
    out0, out1, labels = _inputs(3, batch_size=12)
    out0.requires_grad_(True)
    loss = make()(out0, out1, labels)
    (first,) = torch.autograd.grad(loss, out0, retain_graph=True)
    (second,) = torch.autograd.grad(loss, out0)
    torch.testing.assert_close(second, first, rtol=1e-12, atol=1e-12)
