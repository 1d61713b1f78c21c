"""Fast per-level SupCon terms on masked features (G-HMLC hard masks, A-HMLC soft masks).

The general path turns the normalised embeddings ``z`` and masks ``m`` into per-level
features ``normalize(z * m_h)`` of full width ``D`` and runs
:func:`~lightly_hmlc.loss._levels.anchor_level_losses` on them: one full-width
similarity matrix per level, and autograd's generic log-sum-exp. This module computes the
same terms (values and gradients equal within float rounding, see
``tests/loss/test_masked_fast.py``) with less work:

- **Shared 0/1 masks** (G-HMLC: nested by default, a partition with ``nested=False``,
  overlapping with ``assignment="threshold"``): one ``[1, L, D]`` set for all rows.
  Level ``h`` only sees its own ``d_h`` dimensions, so its similarity matrix is a matmul
  over those dimensions, renormalised by the per-level norms: ``normalize(z[:, dims_h])``.
  The L matmuls together cost ``sum_h d_h / D`` full-width matmuls: one for a partition,
  at most L for nested masks. Anything else (non-binary or per-row masks, masks that
  carry a gradient) takes the next path.
- **Any other masks** (A-HMLC's soft per-row masks): the per-level features are built
  directly in ``[L, N, D]`` layout and all levels go through ONE batched ``bmm``.

Both paths share :class:`_LevelLogSumExp`, the denominator ``log sum_{a != i} exp(s_ia)``
of every level with a hand-written backward: the exponentials computed in the forward
pass are kept and turned into ``d lse / d s`` in place, so each ``[N, N]`` matrix is
touched a few times instead of the ~10 passes of autograd's composite log-sum-exp,
self-exclusion and copy. When the anchors are the contrast rows (no memory, one process)
the exponentials are symmetric and the backward is one matmul per level. Positives enter
through per-group sums of the level features, as in the general path, so no level needs
an ``[N, N]`` positive mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.loss._levels import LevelGroups, widen
from lightly_hmlc.loss._temperature import (
    Temperature,
    level_temperature,
    scale_levels,
    smallest_temperature,
)

# With unit-norm features every logit lies in [-1/T, 1/T]. Shifting by the constant 1/T
# (instead of each row's maximum) saves a pass over the logits and never overflows; it is
# used only while the smallest shifted logit, -2/T, keeps exp() far from float32's
# underflow (e^-87), i.e. for T >= 1/30. Below that, each row's maximum is subtracted.
_MAX_FIXED_SHIFT_RANGE = 60.0


class _LevelLogSumExp(torch.autograd.Function):
    """``log sum_{a != anchor} exp(anchors_i . contrast_a)`` for every level and anchor.

    Inputs are ``anchors [G, Na, d]`` (already divided by the temperature), ``contrast
    [G, Nc, d]``, ``anchor_index [Na]`` (the anchor's own row in ``contrast``, excluded),
    ``shift``: a constant bound on every logit, or ``None`` to subtract each row's
    maximum, and ``symmetric``: the anchors are the contrast rows (times 1/T, in the same
    order) and the shift is constant. Returns ``[G, Na]``.

    With ``symmetric`` the saved exponentials ``P`` are a symmetric matrix (``s_ia =
    s_ai``, zero diagonal), so the two backward products ``diag(g) P c`` and
    ``P^T diag(g) a`` come from ONE matmul ``P [c, g * a]`` of twice the width: no pass to
    scale ``P`` and no product with a transposed ``[N, N]`` operand (benchmarks/RESULTS.md,
    "The symmetric backward").
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        anchors: Tensor,
        contrast: Tensor,
        anchor_index: Tensor,
        shift: float | None,
        symmetric: bool = False,
    ) -> Tensor:
        rows = torch.arange(anchors.shape[1], device=anchors.device)
        # A tensor value, not a Python scalar: no host-to-device copy.
        minus_inf = torch.full((), -math.inf, dtype=anchors.dtype, device=anchors.device)
        if shift is None:
            logits = torch.bmm(anchors, contrast.transpose(1, 2))
            logits[:, rows, anchor_index] = minus_inf  # an anchor is never its own negative
            offset = logits.amax(dim=2, keepdim=True)
            logits.sub_(offset)
            offset = offset.squeeze(2)
        else:
            # The shift is folded into the matmul: logits - shift in one pass.
            logits = torch.baddbmm(
                anchors.new_full((1, 1, 1), -shift), anchors, contrast.transpose(1, 2)
            )
            logits[:, rows, anchor_index] = minus_inf
            offset = anchors.new_full((1, 1), shift)
        probs = logits.exp_()  # in place: the logits are not needed any more
        total = probs.sum(dim=2)
        ctx.save_for_backward(anchors, contrast, probs, total)
        ctx.consumed = False
        ctx.symmetric = symmetric and shift is not None
        return total.log() + offset

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        if ctx.consumed:
            raise RuntimeError(
                "The masked level terms reuse their saved buffer in backward, so a second "
                "backward through the same loss (retain_graph=True) is not supported: "
                "compute the loss again instead."
            )
        anchors, contrast, probs, total = ctx.saved_tensors
        # d lse_i / d s_ia = exp(s_ia - lse_i) = P_ia * scale_i.
        scale = torch.where(total > 0, grad / total, torch.zeros_like(grad)).unsqueeze(2)
        if ctx.symmetric:
            # grad_anchors = diag(scale) P c and grad_contrast = P^T diag(scale) a, and
            # P^T = P: both from one product.
            width = contrast.shape[2]
            both = torch.bmm(probs, torch.cat([contrast, anchors * scale], dim=2))
            return both[..., :width] * scale, both[..., width:], None, None, None
        # The saved exponentials become the derivative in place.
        ctx.consumed = True
        weights = probs.mul_(scale)
        grad_anchors = torch.bmm(weights, contrast) if ctx.needs_input_grad[0] else None
        grad_contrast = (
            torch.bmm(weights.transpose(1, 2), anchors) if ctx.needs_input_grad[1] else None
        )
        return grad_anchors, grad_contrast, None, None, None


def shared_mask_dims(masks: Tensor, dim: int) -> list[Tensor] | None:
    """The dimensions of every level if ``masks`` are one shared 0/1 set, else ``None``.

    Shared 0/1 masks are one ``[1, L, D]`` (or ``[L, D]``) set for all rows that carries
    no gradient. Level ``h`` then sees exactly its dimensions ``dims_h`` (the 1s of
    ``m_h``, in increasing order), and ``normalize(z * m_h)`` is ``normalize(z[:, dims_h])``
    on them: a partition (G-HMLC with ``nested=False``), nested masks (G-HMLC's default)
    or overlapping threshold masks alike. The check costs O(L D log D) and one host
    synchronisation.

    Examples:
        >>> masks = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
        >>> [dims.tolist() for dims in shared_mask_dims(masks, 3)]
        [[0, 2], [1]]
        >>> nested = torch.tensor([[[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]])
        >>> [dims.tolist() for dims in shared_mask_dims(nested, 3)]
        [[0, 2], [0, 1, 2]]
        >>> shared_mask_dims(torch.full((1, 2, 3), 0.5), 3) is None  # soft masks
        True
    """
    if masks.dim() == 3:
        if masks.shape[0] != 1:
            return None
        masks = masks[0]
    if masks.dim() != 2 or masks.shape[1] != dim or masks.requires_grad:
        return None
    ones = masks == 1
    is_binary = (ones | (masks == 0)).all()
    # Stable descending sort: each level's 1s first, in increasing dimension order.
    order = torch.argsort(ones.to(torch.uint8), dim=1, descending=True, stable=True)
    counts = ones.sum(dim=1)
    # One host synchronisation for the check and the level widths together.
    host = torch.cat([is_binary.long().view(1), counts]).tolist()
    if not host[0]:
        return None
    return [order[level, :width] for level, width in enumerate(host[1:])]


def masked_level_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
    anchor_masks: Tensor,
    contrast_masks: Tensor,
    allow_sync: bool = True,
) -> tuple[Tensor, Tensor]:
    """The SupCon term of every anchor at every level, on masked features.

    Equal to ``anchor_level_losses(normalize(anchors[:, None] * anchor_masks),
    normalize(contrast[:, None] * contrast_masks), ...)``, with the fast paths of the
    module docstring.

    Args:
        anchors: ``[Na, D]`` L2-normalised embeddings of the anchors.
        contrast: ``[Nc, D]`` L2-normalised embeddings of the contrast rows (containing
            the anchors at ``anchor_index``; pass the same tensor as ``anchors`` when
            every contrast row is an anchor).
        anchor_index: ``[Na]`` position of each anchor in ``contrast``.
        groups: Prefix groups of the contrast rows.
        temperature: Softmax temperature: a float, or one per level (coarse to fine).
        anchor_masks: ``[1 | Na, L, D]`` masks of the anchors.
        contrast_masks: ``[1 | Nc, L, D]`` masks of the contrast rows (the same tensor as
            ``anchor_masks`` when they are shared or the rows are the same).
        allow_sync: Look for shared 0/1 masks (one host synchronisation). ``False``
            (the losses' ``check_values=False``) always takes the batched path, which
            never synchronises.

    Returns:
        ``(loss, is_anchor)``, both ``[L, Na]``, as ``anchor_level_losses``.
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        log_denominator, level_features = level_inputs(
            anchors, contrast, anchor_index, temperature, anchor_masks, contrast_masks, allow_sync
        )
        return _add_positives(log_denominator, level_features, anchor_index, groups, temperature)


def level_inputs(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    temperature: Temperature,
    anchor_masks: Tensor | None = None,
    contrast_masks: Tensor | None = None,
    allow_sync: bool = True,
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """``[L, Na]`` log-denominators and every level's ``(anchor, contrast)`` features.

    Either ``[N, D]`` rows with masks (the per-level dimensions when the masks are one
    shared 0/1 set, else one batched computation), or ``[N, L, D]`` per-level features
    without masks (batched).
    """
    anchors, contrast = widen(anchors), widen(contrast)
    same_rows = anchors is contrast
    shift = _shift(temperature)
    if anchor_masks is None or contrast_masks is None:
        a_all = anchors.transpose(0, 1).contiguous()
        c_all = a_all if same_rows else contrast.transpose(0, 1).contiguous()
    else:
        anchor_masks = anchor_masks.to(anchors.dtype)
        contrast_masks = anchor_masks if same_rows else contrast_masks.to(contrast.dtype)
        dims = None
        if allow_sync and anchor_masks.shape[0] == 1 and contrast_masks.shape[0] == 1:
            if same_rows or torch.equal(anchor_masks, contrast_masks):
                dims = shared_mask_dims(anchor_masks, anchors.shape[1])
        if dims is not None:
            level_features = []
            for level_dims in dims:
                # Renormalising the level's own dimensions == normalize(z * m_h).
                a = F.normalize(anchors[:, level_dims], dim=1)
                c = a if same_rows else F.normalize(contrast[:, level_dims], dim=1)
                level_features.append((a, c))
            denominators = [
                _LevelLogSumExp.apply(
                    (a / level_temperature(temperature, level)).unsqueeze(0),
                    c.unsqueeze(0),
                    anchor_index,
                    shift,
                    same_rows,
                )
                for level, (a, c) in enumerate(level_features)
            ]
            return torch.cat(denominators, dim=0), level_features
        a_all = _level_major(anchors, anchor_masks)
        c_all = a_all if same_rows else _level_major(contrast, contrast_masks)
    log_denominator = _LevelLogSumExp.apply(
        scale_levels(a_all, temperature), c_all, anchor_index, shift, same_rows
    )
    return log_denominator, list(zip(a_all.unbind(0), c_all.unbind(0), strict=True))


def shared_mask_logits(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    dims: list[Tensor],
    temperature: Temperature,
) -> tuple[Tensor, Tensor]:
    """Level similarities / temperature ``[L, Na, Nc]`` of shared 0/1 masks, and their
    log-denominators ``[L, Na, 1]`` (the anchor's own column excluded).

    For the per-pair HiConE form, which needs every pair's level similarity. Level ``h``
    is ``normalize(z[:, dims_h])``, i.e. ``normalize(z * m_h)`` on its own dimensions, so
    the L matmuls together cost ``sum_h d_h / D`` full-width matmuls; the denominators come from
    :class:`_LevelLogSumExp` (one more such set of matmuls, but fewer passes over the
    ``[L, N, N]`` logits than a copy and autograd's log-sum-exp).
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        same_rows = anchors is contrast
        anchors, contrast = widen(anchors), widen(contrast)
        shift = _shift(temperature)
        logits, denominators = [], []
        for level, level_dims in enumerate(dims):
            a = F.normalize(anchors[:, level_dims], dim=1)
            c = a if same_rows else F.normalize(contrast[:, level_dims], dim=1)
            scaled = a / level_temperature(temperature, level)
            logits.append(scaled @ c.t())
            denominators.append(
                _LevelLogSumExp.apply(
                    scaled.unsqueeze(0), c.unsqueeze(0), anchor_index, shift, same_rows
                )
            )
        return torch.stack(logits), torch.cat(denominators).unsqueeze(2)


def level_feature_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
) -> tuple[Tensor, Tensor]:
    """The general path's ``anchor_level_losses`` on ``[N, L, D]`` level features, faster.

    For level features that were built (and e.g. gathered from all ranks) already:
    ``anchors [Na, L, D]`` and ``contrast [Nc, L, D]``, L2-normalised per level (pass the
    same tensor when every contrast row is an anchor). All levels run in one ``bmm``.
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        log_denominator, level_features = level_inputs(anchors, contrast, anchor_index, temperature)
        return _add_positives(log_denominator, level_features, anchor_index, groups, temperature)


def _shift(temperature: Temperature) -> float | None:
    """The constant shift ``1 / T`` (the smallest ``T`` of any level) while it is safe."""
    smallest = smallest_temperature(temperature)
    return 1.0 / smallest if 2.0 / smallest <= _MAX_FIXED_SHIFT_RANGE else None


def _level_major(features: Tensor, masks: Tensor) -> Tensor:
    """``normalize(features * masks[:, h])`` of every level, contiguous ``[L, N, D]``."""
    level_masks = masks.transpose(0, 1)  # [L, 1 | N, D]
    masked = (features.unsqueeze(0) * level_masks).contiguous()
    return F.normalize(masked, dim=2)


def _add_positives(
    log_denominator: Tensor,
    level_features: list[tuple[Tensor, Tensor]],
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
) -> tuple[Tensor, Tensor]:
    """Turns the ``[L, Na]`` denominators into the per-anchor terms (see ``_levels``)."""
    device = log_denominator.device
    valid = groups.valid
    positive_dots, positive_counts = [], []
    for level, (a, c) in enumerate(level_features):
        ids = groups.ids[:, level]
        # Unknown prefixes add zero rows (no boolean indexing: that would synchronise).
        weight = valid[:, level].to(c.dtype)
        sums = torch.zeros(groups.num_groups, c.shape[1], dtype=c.dtype, device=device)
        sums = sums.index_add(0, ids, c * weight.unsqueeze(1))
        counts = torch.zeros(groups.num_groups, dtype=c.dtype, device=device)
        counts = counts.index_add(0, ids, weight)
        anchor_ids = groups.ids[anchor_index, level]
        own = c[anchor_index] if a is not c else a
        positive_dots.append((a * (sums[anchor_ids] - own)).sum(dim=1))
        positive_counts.append(counts[anchor_ids] - 1.0)
    positive_dot = torch.stack(positive_dots)
    positive_count = torch.stack(positive_counts)
    is_anchor = valid[anchor_index].t() & (positive_count > 0)
    if isinstance(temperature, float):
        mean_positive_logit = positive_dot / (temperature * positive_count.clamp(min=1.0))
    else:
        mean_positive_logit = scale_levels(positive_dot, temperature) / positive_count.clamp(
            min=1.0
        )
    loss = torch.where(
        is_anchor, log_denominator - mean_positive_logit, torch.zeros_like(mean_positive_logit)
    )
    return loss, is_anchor
