"""Per-level temperatures, L_in and the explicit instance term (issue 11 item 2).

Every value is checked against :func:`loop_loss`, a plain per-anchor Python loop in
float64 that shares no code with ``lightly_hmlc.loss``; gradients against the loop's
autograd gradients and, on the unmasked paths, with ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from torch import Tensor

from lightly_hmlc.loss import AHMLCLoss, GHMLCLoss, HMLCLoss, SupConLoss
from lightly_hmlc.models.modules import AttentionMaskHead
from tests.loss import naive
from tests.loss.test_checks import _SyncRecorder

BATCH, DIM, LEVELS, MEMORY = 5, 6, 3, 4
TEMPS = (0.5, 0.25, 0.1)

pytestmark = pytest.mark.usefixtures("one_thread")

FORMS = naive.LOSS_FORMS
FORM_IDS = [f"{loss_type}-{form}" for loss_type, form in FORMS]


# The plain reference: one Python loop per anchor, level and positive.


def _log_denominator(z: Tensor, i: int, t: float) -> Tensor:
    """log sum_{a != i} exp(z_i . z_a / t)."""
    others = torch.cat([z[:i], z[i + 1 :]])
    return torch.logsumexp(others @ z[i] / t, dim=0)


def loop_loss(
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    temps: tuple[float, ...],
    loss_type: str = "hmc",
    hce_form: str = "anchor_mean",
    supcon_form: str = "out",
    instance_weight: float = 0.0,
    masks: Tensor | None = None,
    memory: tuple[Tensor, Tensor] | None = None,
    memory_masks: Tensor | None = None,
    normalize_weights: bool = True,
) -> tuple[Tensor, list[Tensor], Tensor]:
    """``(loss, plain level means, instance term)``; memory rows are contrast rows only.

    Level ``l``'s features are ``normalize(normalize(z) * masks[:, l])`` (masks ``[1 |
    2B, L, D]``, memory masks ``[1 | K, L, D]``, default: the batch's shared masks) and
    its logits ``s / temps[l]``. The instance term is NT-Xent on the finest level's
    logits: anchor i's positive is the other view of its sample, never a memory row.
    """
    batch = out0.shape[0]
    z = F.normalize(torch.cat([out0, out1]), dim=1)
    rows = 2 * batch
    paths = labels.tolist() * 2
    num_levels = labels.shape[1]
    bank = None
    if memory is not None:
        bank = F.normalize(memory[0], dim=1)
        paths += memory[1].tolist()
    level_z = []
    for level in range(num_levels):
        batch_z = z if masks is None else F.normalize(z * masks[:, level], dim=1)
        if bank is not None:
            bank_masks = masks if memory_masks is None else memory_masks
            bank_z = bank if bank_masks is None else F.normalize(bank * bank_masks[:, level], dim=1)
            batch_z = torch.cat([batch_z, bank_z])
        level_z.append(batch_z)

    def pair(level: int, i: int, p: int) -> Tensor:
        zl, t = level_z[level], temps[level]
        return _log_denominator(zl, i, t) - zl[i] @ zl[p] / t

    constrained_means, plain_means = [], []
    zero = z.sum() * 0.0
    for level in range(num_levels):
        constrained_terms, plain_terms = [], []
        for i in range(rows):  # batch rows are the anchors
            positives = naive.positives_of(paths, i, level)
            if not positives:
                continue
            zl, t = level_z[level], temps[level]
            if supcon_form == "in":
                probability = torch.stack(
                    [torch.exp(zl[i] @ zl[p] / t - _log_denominator(zl, i, t)) for p in positives]
                ).mean()
                plain_terms.append(-torch.log(probability))
                constrained_terms.append(plain_terms[-1])
                continue
            losses, plain = [], []
            for p in positives:
                loss = plain_loss = pair(level, i, p)
                if loss_type != "hmc" and hce_form in ("pair", "same_pair"):
                    for finer in range(level + 1, num_levels):
                        for q in naive.positives_of(paths, i, finer):
                            if hce_form == "pair" or q == p:
                                loss = torch.maximum(loss, pair(finer, i, q))
                if loss_type != "hmc" and hce_form == "anchor_mean":
                    for finer in range(level + 1, num_levels):
                        if qs := naive.positives_of(paths, i, finer):
                            mean = torch.stack([pair(finer, i, q) for q in qs]).mean()
                            loss = torch.maximum(loss, mean)
                losses.append(loss)
                plain.append(plain_loss)
            constrained_terms.append(torch.stack(losses).mean())
            plain_terms.append(torch.stack(plain).mean())
        constrained_means.append(torch.stack(constrained_terms).mean() if plain_terms else zero)
        plain_means.append(torch.stack(plain_terms).mean() if plain_terms else zero)
    means = constrained_means
    if loss_type != "hmc" and hce_form == "batch_mean":
        means = [torch.stack(means[level:]).max() for level in range(num_levels)]
    if loss_type == "hce":
        weights, divisor = [1.0] * num_levels, float(num_levels)
    else:
        weights = naive.penalty_weights(num_levels, "exp")
        divisor = sum(weights) if normalize_weights else float(num_levels)
    finest = level_z[-1]
    instance = torch.stack(
        [
            _log_denominator(finest, i, temps[-1])
            - finest[i] @ finest[(i + batch) % rows] / temps[-1]
            for i in range(rows)
        ]
    ).mean()
    total = naive.weighted_sum(weights, means) + instance_weight * instance
    return total / (divisor + instance_weight), plain_means, instance


def _inputs(
    seed: int, batch: int = BATCH, unknown: float = 0.25, levels: int = LEVELS
) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(batch, DIM, generator=generator, dtype=torch.float64)
    out1 = torch.randn(batch, DIM, generator=generator, dtype=torch.float64)
    labels = naive.random_tree_labels(batch, [2, 2, 2][:levels], generator, unknown)
    return out0, out1, labels


def _setting(name: str, seed: int = 0) -> dict[str, Any]:
    """Masks and memory of a named setting (G-HMLC partition masks, A-HMLC soft masks)."""
    generator = torch.Generator().manual_seed(100 + seed)
    rows = 2 * BATCH
    partition = F.one_hot(torch.tensor([0, 1, 2, 0, 2, 1]), LEVELS).t().double().unsqueeze(0)
    memory = (
        torch.randn(MEMORY, DIM, generator=generator, dtype=torch.float64),
        naive.random_tree_labels(MEMORY, [2, 2, 2], generator, 0.25),
    )
    soft = torch.rand(rows, LEVELS, DIM, generator=generator, dtype=torch.float64)
    soft_memory = torch.rand(MEMORY, LEVELS, DIM, generator=generator, dtype=torch.float64)
    shared = torch.rand(1, LEVELS, DIM, generator=generator, dtype=torch.float64)
    settings: dict[str, dict[str, Any]] = {
        "plain": {},
        "partition": {"masks": partition},
        "soft_per_row": {"masks": soft},
        "soft_shared": {"masks": shared},
        "memory": {"memory": memory},
        "memory_partition": {"masks": partition, "memory": memory},
        "memory_soft_per_row": {"masks": soft, "memory": memory, "memory_masks": soft_memory},
    }
    return settings[name]


SETTINGS = [
    "plain",
    "partition",
    "soft_per_row",
    "soft_shared",
    "memory",
    "memory_partition",
    "memory_soft_per_row",
]


def _compare(
    loss_fn: HMLCLoss, setting: dict[str, Any], seed: int = 0, **loop_options: Any
) -> tuple[Tensor, Tensor]:
    """Asserts loss and gradients equal the loop's; returns ``(loss, level_losses)``."""
    out0, out1, labels = _inputs(seed)
    results = []
    for compute in ("ours", "loop"):
        z0, z1 = out0.clone().requires_grad_(True), out1.clone().requires_grad_(True)
        if compute == "ours":
            loss, level_losses = loss_fn(z0, z1, labels, return_level_losses=True, **setting)
        else:
            loss, _, _ = loop_loss(z0, z1, labels, **loop_options, **setting)
        results.append((loss, torch.autograd.grad(loss, [z0, z1])))
    (got, got_grads), (expected, expected_grads) = results
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-9, atol=1e-10)
    return got.detach(), level_losses


# 1. Per-level temperature.


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize(("loss_type", "hce_form"), FORMS, ids=FORM_IDS)
def test_per_level_temperature_matches_the_loop(
    loss_type: str, hce_form: str, setting: str
) -> None:
    loss_fn = HMLCLoss(loss_type, temperature=list(TEMPS), hce_form=hce_form)
    options: dict[str, Any] = {"temps": TEMPS, "loss_type": loss_type, "hce_form": hce_form}
    _compare(loss_fn, _setting(setting), **options)


@pytest.mark.parametrize("setting", ["plain", "partition", "soft_per_row", "soft_shared"])
@pytest.mark.parametrize(("loss_type", "hce_form"), [("hmc", "pair"), ("hmce", "pair")])
def test_a_temperature_below_one_thirtieth_takes_the_row_maximum_shift(
    loss_type: str, hce_form: str, setting: str
) -> None:
    """The fast masked log-sum-exp drops its constant shift below T = 1/30 (any level)."""
    temps = (0.5, 0.02, 0.2)
    loss_fn = HMLCLoss(loss_type, temperature=temps, hce_form=hce_form)
    _compare(loss_fn, _setting(setting), temps=temps, loss_type=loss_type, hce_form=hce_form)


@pytest.mark.parametrize(("loss_type", "hce_form"), FORMS, ids=FORM_IDS)
def test_equal_per_level_temperatures_equal_the_float(loss_type: str, hce_form: str) -> None:
    out0, out1, labels = _inputs(3)
    for setting in ("plain", "partition", "soft_per_row"):
        options = _setting(setting)
        one = HMLCLoss(loss_type, temperature=0.2, hce_form=hce_form)
        per_level = HMLCLoss(loss_type, temperature=[0.2] * LEVELS, hce_form=hce_form)
        torch.testing.assert_close(
            per_level(out0, out1, labels, **options),
            one(out0, out1, labels, **options),
            rtol=1e-12,
            atol=1e-12,
        )


def test_per_level_temperatures_make_same_pair_bind_without_masks() -> None:
    """One temperature: same_pair equals hmc's terms without masks (a pair's loss is the
    same at every level); with one per level a pair's loss differs between levels."""
    out0, out1, labels = _inputs(4, batch=8, unknown=0.0)
    for temps, binds in ((0.2, False), ((0.1, 0.2, 0.4), True)):
        same_pair = HMLCLoss("hce", temperature=temps, hce_form="same_pair")(out0, out1, labels)
        uniform = HMLCLoss("hmc", temperature=temps, layer_penalty="uniform")
        plain = uniform(out0, out1, labels)
        assert bool(same_pair > plain + 1e-9) == binds
        if not binds:
            torch.testing.assert_close(same_pair, plain)


def test_per_level_temperature_in_the_masked_losses() -> None:
    """MaskedHMLCLoss subclasses take the option too (here A-HMLC's and G-HMLC's chain)."""
    out0, out1, labels = _inputs(5)
    torch.manual_seed(0)
    ahmlc = AHMLCLoss(num_levels=LEVELS, dim=DIM, temperature=TEMPS, hierarchy_margin=0).double()
    masks = ahmlc.mask_head(F.normalize(torch.cat([out0, out1]), dim=1), labels.repeat(2, 1))
    expected, _, _ = loop_loss(out0, out1, labels, TEMPS, "hmce", masks=masks)
    penalty = cast(AttentionMaskHead, ahmlc.mask_head).regularization(masks)
    torch.testing.assert_close(ahmlc(out0, out1, labels), expected + penalty)
    ghmlc = GHMLCLoss(num_levels=LEVELS, dim=DIM, temperature=list(TEMPS), hce_form="batch_mean")
    assert ghmlc.temperature == TEMPS
    assert ghmlc(out0.float(), out1.float(), labels).isfinite()


# 2. L_in.


IN_FORMS = [("hmc", "pair"), ("hce", "batch_mean"), ("hmce", "batch_mean")]


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize(("loss_type", "hce_form"), IN_FORMS, ids=["hmc", "hce", "hmce"])
@pytest.mark.parametrize("temps", [(0.2, 0.2, 0.2), TEMPS], ids=["one-T", "per-level-T"])
def test_l_in_matches_the_loop(
    loss_type: str, hce_form: str, setting: str, temps: tuple[float, ...]
) -> None:
    temperature: Any = temps[0] if len(set(temps)) == 1 else temps
    loss_fn = HMLCLoss(loss_type, temperature=temperature, hce_form=hce_form, supcon_form="in")
    options: dict[str, Any] = {
        "temps": temps,
        "loss_type": loss_type,
        "hce_form": hce_form,
        "supcon_form": "in",
    }
    _compare(loss_fn, _setting(setting), **options)


def test_l_in_is_at_most_l_out_and_equal_with_one_positive() -> None:
    out0, out1, labels = _inputs(6, batch=8, unknown=0.0)
    _, level_in = HMLCLoss("hmc", supcon_form="in")(out0, out1, labels, return_level_losses=True)
    _, level_out = HMLCLoss("hmc")(out0, out1, labels, return_level_losses=True)
    assert bool((level_in <= level_out + 1e-12).all()) and bool((level_in < level_out).any())
    # Unique paths: every anchor's only positive at every level is its other view.
    unique = torch.arange(8).unsqueeze(1).repeat(1, 2)
    torch.testing.assert_close(
        HMLCLoss("hmc", supcon_form="in")(out0, out1, unique), HMLCLoss("hmc")(out0, out1, unique)
    )


def test_supcon_l_in_matches_the_loop_and_hmlc_with_one_level() -> None:
    out0, out1, labels = _inputs(7, batch=8)
    fine = labels[:, -1]
    for memory in (None, (torch.randn(3, DIM, dtype=torch.float64), torch.tensor([0, -1, 5]))):
        z0, z1 = out0.clone().requires_grad_(True), out1.clone().requires_grad_(True)
        ours = SupConLoss(temperature=0.3, supcon_form="in")(z0, z1, fine, memory=memory)
        loop_memory = None if memory is None else (memory[0], memory[1].unsqueeze(1))
        expected, _, _ = loop_loss(
            z0, z1, fine.unsqueeze(1), (0.3,), supcon_form="in", memory=loop_memory
        )
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
        for got, want in zip(
            torch.autograd.grad(ours, [z0, z1]),
            torch.autograd.grad(expected, [z0, z1]),
            strict=True,
        ):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    one_level = HMLCLoss("hmc", temperature=0.3, supcon_form="in")(out0, out1, fine)
    torch.testing.assert_close(
        one_level, SupConLoss(temperature=0.3, supcon_form="in")(out0, out1, fine)
    )
    assert "supcon_form='in'" in repr(SupConLoss(supcon_form="in"))


def test_l_in_with_class_balance_and_a_masked_loss() -> None:
    """L_in's anchor terms go through the same reductions (class balance) as L_out's."""
    out0, out1, labels = _inputs(8, batch=8, unknown=0.0)
    # As many anchors in every class of every level.
    even = torch.tensor([[0, 0, 0]] * 2 + [[0, 1, 1]] * 2 + [[1, 2, 2]] * 2 + [[1, 3, 3]] * 2)
    for paths, equal in ((even, True), (labels, None)):
        balanced = HMLCLoss("hmc", supcon_form="in", level_balance="class")(out0, out1, paths)
        mean = HMLCLoss("hmc", supcon_form="in")(out0, out1, paths)
        if equal:
            torch.testing.assert_close(balanced, mean)
        assert balanced.isfinite()
    ghmlc = GHMLCLoss(
        num_levels=LEVELS, dim=DIM, loss_type="hmc", supcon_form="in", hierarchy_margin=0
    )
    assert ghmlc(out0.float(), out1.float(), labels).isfinite()


# 3. The explicit instance term.


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: HMLCLoss("hmc", **kw),
        lambda **kw: HMLCLoss("hmce", **kw),
        lambda **kw: HMLCLoss("hce", hce_form="same_pair", **kw),
        lambda **kw: HMLCLoss("hmce", hce_form="batch_mean", **kw),
        lambda **kw: HMLCLoss("hmce", temperature=list(TEMPS), **kw),
        lambda **kw: HMLCLoss("hmce", reference_compatible=True, **kw),
    ],
)
def test_instance_weight_zero_is_today_bit_for_bit(make: Any) -> None:
    out0, out1, labels = _inputs(9, unknown=0.0)
    results = []
    for loss_fn in (make(), make(instance_weight=0.0)):
        z0, z1 = out0.clone().requires_grad_(True), out1.clone().requires_grad_(True)
        loss, level_losses = loss_fn(z0, z1, labels, return_level_losses=True)
        results.append((loss, level_losses, torch.autograd.grad(loss, [z0, z1])))
    (loss_a, levels_a, grads_a), (loss_b, levels_b, grads_b) = results
    assert torch.equal(loss_a, loss_b) and torch.equal(levels_a, levels_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    assert levels_a.shape == (LEVELS,)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize(
    ("loss_type", "hce_form", "supcon_form"),
    [
        ("hmc", "pair", "out"),
        ("hmce", "pair", "out"),
        ("hce", "same_pair", "out"),
        ("hce", "batch_mean", "out"),
        ("hmce", "batch_mean", "in"),
    ],
)
def test_instance_term_matches_the_loop(
    loss_type: str, hce_form: str, supcon_form: str, setting: str
) -> None:
    loss_fn = HMLCLoss(
        loss_type,
        temperature=TEMPS,
        hce_form=hce_form,
        supcon_form=supcon_form,
        instance_weight=0.7,
    )
    options: dict[str, Any] = {
        "temps": TEMPS,
        "loss_type": loss_type,
        "hce_form": hce_form,
        "supcon_form": supcon_form,
        "instance_weight": 0.7,
    }
    _, level_losses = _compare(loss_fn, _setting(setting), **options)
    out0, out1, labels = _inputs(0)
    _, plain_means, instance = loop_loss(out0, out1, labels, **options, **_setting(setting))
    torch.testing.assert_close(level_losses, torch.stack([*plain_means, instance]))


def test_instance_term_is_lightly_nt_xent_on_the_finest_level() -> None:
    out0, out1, labels = _inputs(10, batch=8)
    for temps in (0.2, (0.5, 0.3, 0.15)):
        finest = temps if isinstance(temps, float) else temps[-1]
        _, level_losses = HMLCLoss("hmce", temperature=temps, instance_weight=1.0)(
            out0, out1, labels, return_level_losses=True
        )
        expected = NTXentLoss(temperature=finest)(out0, out1)
        torch.testing.assert_close(level_losses[-1], expected.to(level_losses.dtype))


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
@pytest.mark.parametrize("hce_form", ["pair", "batch_mean"])
@pytest.mark.parametrize("normalize_weights", [True, False])
def test_instance_term_enters_the_normalisation_as_one_more_weighted_level(
    loss_type: str, hce_form: str, normalize_weights: bool
) -> None:
    """``(Z * loss_0 + w L_inst) / (Z + w)``, Z = sum(lambda) or L (hce: L), and the label
    levels (their HCE constraint included) are computed exactly as without it."""
    out0, out1, labels = _inputs(11, batch=8)
    kwargs: dict[str, Any] = {"hce_form": hce_form, "normalize_weights": normalize_weights}
    base, base_levels = HMLCLoss(loss_type, **kwargs)(out0, out1, labels, return_level_losses=True)
    weight = 2.5
    loss, levels = HMLCLoss(loss_type, instance_weight=weight, **kwargs)(
        out0, out1, labels, return_level_losses=True
    )
    penalties = naive.penalty_weights(LEVELS, "exp")
    if loss_type == "hce" or not normalize_weights:
        divisor = float(LEVELS)
    else:
        divisor = sum(penalties)
    torch.testing.assert_close(levels[:LEVELS], base_levels, rtol=0, atol=0)
    expected = (divisor * base + weight * levels[-1]) / (divisor + weight)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_memory_rows_are_never_instance_positives() -> None:
    """A memory row that duplicates a batch row is a negative of its instance, not a
    second positive: the term equals the loop's, which pairs only the two views."""
    out0, out1, labels = _inputs(12, unknown=0.0)
    memory = (torch.cat([out1[:2], torch.randn(2, DIM, dtype=torch.float64)]), labels[:4])
    _, levels = HMLCLoss("hmc", instance_weight=1.0)(
        out0, out1, labels, memory=memory, return_level_losses=True
    )
    _, _, instance = loop_loss(out0, out1, labels, (0.1,) * LEVELS, memory=memory)
    torch.testing.assert_close(levels[-1], instance)
    no_memory = HMLCLoss("hmc", instance_weight=1.0)(out0, out1, labels, return_level_losses=True)
    assert bool(levels[-1] > no_memory[1][-1])  # more negatives, never more positives


def test_instance_term_in_the_masked_losses_uses_the_finest_masks() -> None:
    out0, out1, labels = _inputs(13)
    torch.manual_seed(1)
    ahmlc = AHMLCLoss(
        num_levels=LEVELS, dim=DIM, loss_type="hmc", instance_weight=0.5, hierarchy_margin=0
    ).double()
    masks = ahmlc.mask_head(F.normalize(torch.cat([out0, out1]), dim=1), labels.repeat(2, 1))
    expected, _, _ = loop_loss(out0, out1, labels, (0.1,) * 3, masks=masks, instance_weight=0.5)
    penalty = cast(AttentionMaskHead, ahmlc.mask_head).regularization(masks)
    torch.testing.assert_close(ahmlc(out0, out1, labels), expected + penalty)
    assert "instance_weight=0.5" in repr(ahmlc)


# Gradients: torch.autograd.gradcheck on small float64 inputs (the unmasked new paths;
# the fast masked log-sum-exp reuses its buffer, so it cannot be differentiated twice,
# and its gradients are compared with the loop's above).


@pytest.mark.parametrize(
    "options",
    [
        {"loss_type": "hmc", "temperature": (0.5, 0.2)},
        {"loss_type": "hmce", "temperature": (0.5, 0.2)},
        {"loss_type": "hce", "temperature": (0.2, 0.5), "hce_form": "same_pair"},
        {"loss_type": "hmce", "temperature": (0.5, 0.2), "hce_form": "batch_mean"},
        {"loss_type": "hmc", "supcon_form": "in"},
        {"loss_type": "hmce", "supcon_form": "in", "hce_form": "batch_mean"},
        {"loss_type": "hmc", "instance_weight": 1.0},
        {"loss_type": "hmce", "instance_weight": 0.5, "temperature": (0.3, 0.2)},
    ],
    ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()),
)
def test_gradcheck_of_the_new_paths(options: dict[str, Any]) -> None:
    generator = torch.Generator().manual_seed(14)
    out0 = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 0], [0, 1], [0, 1], [1, 2]])
    loss_fn = HMLCLoss(**options)
    memory = (torch.randn(2, 3, generator=generator, dtype=torch.float64), labels[1:3])
    assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, b, labels), (out0, out1))
    assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, b, labels, memory=memory), (out0, out1))


def test_the_new_paths_never_sync_without_value_checks() -> None:
    out0, out1, labels = _inputs(15, unknown=0.0)
    out0 = out0.float().requires_grad_(True)
    for loss_fn in (
        HMLCLoss("hmc", TEMPS, supcon_form="in", instance_weight=1.0, check_values=False),
        HMLCLoss("hmce", TEMPS, instance_weight=1.0, check_values=False),
        HMLCLoss("hce", TEMPS, hce_form="same_pair", check_values=False),
        AHMLCLoss(num_levels=LEVELS, dim=DIM, temperature=TEMPS, check_values=False),
    ):
        with _SyncRecorder() as recorder:
            loss_fn(out0, out1.float(), labels).backward()
        assert recorder.syncs == [], type(loss_fn).__name__


def test_repr_shows_the_options_only_when_set() -> None:
    text = repr(HMLCLoss("hmc", temperature=[0.2, 0.1], supcon_form="in", instance_weight=1.0))
    assert "temperature=(0.2, 0.1)," in text
    assert text.endswith("check_values=True, supcon_form='in', instance_weight=1.0)")
    assert "supcon_form" not in repr(HMLCLoss()) and "instance_weight" not in repr(HMLCLoss())


# Every bad input: a ValueError that names the problem.


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: HMLCLoss(temperature=[]), "temperature is an empty sequence"),
        (lambda: HMLCLoss(temperature=[0.1, -1.0]), r"temperature\[1\] must be > 0 and finite"),
        (lambda: HMLCLoss(temperature=[0.1, math.nan]), r"temperature\[1\] must be > 0"),
        (
            lambda: HMLCLoss(temperature=[0.1, "0.2"]),  # type: ignore[list-item]  # wrong on purpose
            r"temperature\[1\] must be a number",
        ),
        (lambda: HMLCLoss(temperature=[0.1, True]), r"temperature\[1\] must be a number"),
        (
            lambda: HMLCLoss(temperature="0.1"),  # type: ignore[arg-type]  # wrong on purpose
            "a number > 0 or a list of them",
        ),
        (
            lambda: HMLCLoss(temperature=torch.tensor(0.1)),  # type: ignore[arg-type]  # wrong on purpose
            "a number > 0 or a list of them",
        ),
        (
            lambda: HMLCLoss(temperature=[0.2, 0.1], num_levels=3),
            r"temperature has 2 values \(one per level\) but the labels have 3 level\(s\): "
            "give 3 temperatures",
        ),
        (
            lambda: GHMLCLoss(num_levels=3, dim=4, temperature=[0.2, 0.1]),
            "temperature has 2 values",
        ),
        (
            lambda: HMLCLoss(temperature=[0.2, 0.1], reference_compatible=True),
            r"reference_compatible=True .*temperature=\[0.2, 0.1\] is not part of it",
        ),
        (
            lambda: HMLCLoss(supcon_form="in", reference_compatible=True),
            "supcon_form='in' is not part of it",
        ),
        (
            lambda: HMLCLoss(instance_weight=1.0, reference_compatible=True),
            "instance_weight=1.0 is not part of it",
        ),
        (lambda: HMLCLoss(supcon_form="inside"), "Unknown supcon_form 'inside'"),
        (lambda: SupConLoss(supcon_form="IN"), "Unknown supcon_form 'IN'"),
        (lambda: HMLCLoss("hmce", supcon_form="in"), "L_in has no per-pair losses"),
        (lambda: HMLCLoss("hce", supcon_form="in"), "hce_form='anchor_mean'"),
        (
            lambda: HMLCLoss("hmce", hce_form="same_pair", supcon_form="in"),
            "hce_form='same_pair': the per-pair hierarchy constraint",
        ),
        (
            lambda: AHMLCLoss(num_levels=2, dim=4, supcon_form="in", hierarchy_margin=0),
            "no per-pair losses",
        ),
        (lambda: HMLCLoss(instance_weight=-0.5), "instance_weight must be a finite number >= 0"),
        (lambda: HMLCLoss(instance_weight=math.inf), "instance_weight must be a finite"),
        (lambda: HMLCLoss(instance_weight=math.nan), "instance_weight must be a finite"),
        (lambda: HMLCLoss(instance_weight=True), "instance_weight must be a finite"),
        (
            lambda: HMLCLoss(instance_weight="1"),  # type: ignore[arg-type]  # wrong on purpose
            "instance_weight must be a finite",
        ),
    ],
)
def test_bad_options_are_clear_errors(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_a_temperature_count_that_differs_from_the_labels_fails_at_the_call() -> None:
    out0, out1, labels = _inputs(16)
    loss_fn = HMLCLoss(temperature=[0.2, 0.1])
    for bad in (labels, labels[:, 0]):  # 3 levels, and [B] class ids (1 level)
        levels = 1 if bad.dim() == 1 else bad.shape[1]
        with pytest.raises(ValueError, match=f"2 values .* labels have {levels} level"):
            loss_fn(out0, out1, bad)
    masked = GHMLCLoss(num_levels=LEVELS, dim=DIM, temperature=TEMPS)
    with pytest.raises(ValueError, match="labels has 2 levels"):  # num_levels decides first
        masked(out0, out1, labels[:, :2])
    assert loss_fn(out0, out1, labels[:, :2]).isfinite()
