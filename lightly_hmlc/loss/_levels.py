"""The one place that turns label paths into per-level positives, denominators and terms.

Every loss of the package (``SupConLoss``, ``HMLCLoss``, the masked losses) is built from
these parts, so that a fix or a speed-up lands everywhere:

- :func:`build_level_groups`: label paths ``[N, L]`` -> prefix-group ids per level, from
  one lexicographic sort (coarser groups are unions of finer ones).
- :func:`level_statistics`: logits, log-denominators and positive sums of every anchor at
  every level, from ONE similarity matrix (or one per level for per-level features).
  Positives enter through per-group sums of embeddings,
  ``sum_{p in P_l(i)} z_i . z_p = z_i . (S_{g_l(i)} - z_i)``: no ``[N, N]`` positive mask;
  where the anchor's window of logits exists anyway (the anchor-mean bound, the margin),
  the positives' sum is read from the window instead.
- :func:`margin_weights`: the hierarchy margin's weights in the denominators.
- :func:`aggregate_levels`: the HMC / HCE / HMCE aggregation of the level terms.

Nothing here synchronises host and device: shapes never depend on the data, and
constants are made on the device in the embeddings' dtype.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from lightly_hmlc.loss._denominators import log_denominators

LOSS_TYPES = ("hmc", "hce", "hmce")


def check_temperature(value: object, name: str = "temperature") -> float:
    """``value`` as a float if it is a finite number > 0; else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number > 0, got {value!r}.")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(
            f"{name} must be > 0 and finite, got {value}: it divides the cosine "
            "similarities (0.1 is a common choice)."
        )
    return float(value)  # a plain float: no tensor (and no device) in the arithmetic


def check_hierarchy_margin(value: object) -> float:
    """``value`` as a float if it is a finite number ``>= 0``; else a ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= float(value) < math.inf  # also refuses NaN
    ):
        raise ValueError(
            "hierarchy_margin must be finite and >= 0 (a cosine-similarity offset per "
            f"coarser level; 0 turns it off), got {value!r}."
        )
    return float(value)


def widen(features: Tensor) -> Tensor:
    """float16 / bfloat16 as float32 (others unchanged): logits and their log-sum-exps are
    always computed in float32 or wider, also under autocast."""
    return features.float() if features.dtype in (torch.float16, torch.bfloat16) else features


@dataclass(frozen=True)
class LevelGroups:
    """Prefix groups of label paths.

    Attributes:
        ids: ``[N, L]`` id of each row's label prefix at each level; rows with the same
            id at level ``l`` agree from the root down to ``l``.
        valid: ``[N, L]`` whether the prefix down to level ``l`` is fully known (no -1).
        num_groups: An upper bound on the ids (the number of rows: no data-dependent shape).
        order: ``[N]`` the rows in lexicographic order of their paths: every level's groups
            are contiguous runs in it (``None`` for groups not made here).
    """

    ids: Tensor
    valid: Tensor
    num_groups: int
    order: Tensor | None = None


def build_level_groups(labels: Tensor) -> LevelGroups:
    """Prefix-group ids of every level from one lexicographic sort of the full paths.

    Sorted lexicographically, rows that share a prefix are contiguous: a new group at
    level ``l`` starts where a path differs from the previous one in columns ``0..l``.

    Examples:
        >>> groups = build_level_groups(torch.tensor([[0, 1], [0, 2], [1, 3], [0, 1]]))
        >>> groups.ids.tolist()
        [[0, 0], [0, 1], [1, 2], [0, 0]]
    """
    num_rows, num_levels = labels.shape
    order = torch.arange(num_rows, device=labels.device)
    for level in range(num_levels - 1, -1, -1):  # stable sorts, last column first
        order = order[torch.sort(labels[order, level], stable=True).indices]
    sorted_paths = labels[order]
    new_group = torch.cumsum((sorted_paths[1:] != sorted_paths[:-1]).long(), dim=1) > 0
    sorted_ids = torch.cat(
        [new_group.new_zeros(1, num_levels, dtype=torch.long), new_group.long()], dim=0
    ).cumsum(dim=0)
    ids = torch.empty_like(sorted_ids).index_copy_(0, order, sorted_ids)
    valid = torch.cumprod((labels >= 0).long(), dim=1).bool()
    return LevelGroups(ids=ids, valid=valid, num_groups=num_rows, order=order)


def same_group(groups: LevelGroups, anchor_index: Tensor, level: int) -> Tensor:
    """``[Na, Nc]`` whether anchor and contrast row share a known prefix at ``level``
    (the anchor's own column included)."""
    ids, valid = groups.ids[:, level], groups.valid[:, level]
    same = ids[anchor_index].unsqueeze(1) == ids.unsqueeze(0)
    return same & valid[anchor_index].unsqueeze(1) & valid.unsqueeze(0)


@dataclass(frozen=True)
class PositiveWindows:
    """Every anchor's coarsest group as one window of columns in lexicographic order.

    In the lexicographic order of the label paths, an anchor's positives at every level
    are one contiguous run of columns inside its coarsest (level-0) group. So whatever
    only its positives need reads a window ``[Na, W]`` of the logits, ``W`` the largest
    coarse group, instead of ``[L, Na, Nc]``.

    Attributes:
        columns: ``[Na, W]`` contrast columns, starting at the anchor's level-0 group.
        members: ``[L, Na, W]`` bool: whether the column is in the anchor's known group at
            each level (its own column included).
        known_levels: ``[Nc]`` how many leading levels of each contrast row are known.
    """

    columns: Tensor
    members: Tensor
    known_levels: Tensor


@torch.compiler.disable  # read and rounded outside the graph, which sees the bucket only
def _window_width(coarse_sizes: Tensor, num_contrast: int, step: int = 32) -> int:
    """The largest coarse group's size (a host read), rounded up to a multiple of ``step``:
    torch.compile specialises its graph on the width, so a width that moved by one every
    batch would recompile at every batch."""
    return min(-(-max(int(coarse_sizes.max()), 1) // step) * step, num_contrast)


def positive_windows(groups: LevelGroups, anchor_index: Tensor, sync: bool) -> PositiveWindows:
    """The windows of ``groups``' anchors; ``sync`` reads the width from the device (a host
    synchronisation), else the window is the whole row (no data-dependent shape)."""
    assert groups.order is not None, "groups from build_level_groups carry their order"
    order = groups.order
    num_contrast = groups.ids.shape[0]
    sorted_ids = groups.ids[order].t().contiguous()  # [L, Nc], non-decreasing in every row
    anchor_ids = groups.ids[anchor_index].t().contiguous()  # [L, Na]
    anchor_valid = groups.valid[anchor_index].t()
    # Every level at once: the rows of a 2-D sorted sequence are searched row by row.
    starts = torch.searchsorted(sorted_ids, anchor_ids)
    sizes = torch.searchsorted(sorted_ids, anchor_ids, right=True) - starts
    sizes = torch.where(anchor_valid, sizes, torch.zeros_like(sizes))
    width = _window_width(sizes[0], num_contrast) if sync else num_contrast
    offsets = torch.arange(width, device=order.device)
    # order[start + offsets], clamped to the last column: rows of a strided view of the
    # padded order (copying whole rows is several times faster than an elementwise index).
    padded = torch.cat([order, order[-1:].expand(width)])
    columns = padded.unfold(0, width, 1)[starts[0]]
    first = (starts - starts[:1]).unsqueeze(2)  # [L, Na, 1]
    members = (offsets >= first) & (offsets < first + sizes.unsqueeze(2))
    return PositiveWindows(columns, members, groups.valid.sum(dim=1))


def margin_weights(
    windows: PositiveWindows,
    anchor_index: Tensor,
    scale: float,
    levels: range,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """The hierarchy margin as weights on the exponentials of each level's denominator.

    At level ``l`` a contrast row ``j`` counts ``exp(scale * k)`` times (``scale = margin /
    T``), ``k`` the number of levels coarser than ``l`` at which both prefixes are known
    and differ: ``k = max(0, min(l, v_i, v_j) - d_ij)``, ``v`` the known levels of a row
    and ``d_ij`` the levels the two paths share. Outside the anchor's coarse group
    ``d = 0``, so there ``k`` depends on ``v_j`` alone; inside it, on the window.

    ``dtype``: of the weights (default the windows'); the features' dtype, so that float64
    features get float64 weights.

    Returns:
        ``outside [K, Na, V]``, the weight of a row by its known-level count ``v``, and
        ``inside [K, Na, W]``, the correction at the window's columns in the anchor's
        coarse group, for the ``K`` levels asked.
    """
    known = windows.known_levels
    dtype = (
        torch.promote_types(torch.float32, torch.get_default_dtype()) if dtype is None else dtype
    )
    device = known.device
    width = windows.members.shape[0] + 1  # v and d in 0..L
    values = torch.arange(width, device=device)
    level = torch.arange(levels.start, levels.stop, levels.step, device=device).view(-1, 1, 1)
    power = torch.exp(values.to(dtype) * scale)  # exp(scale * k) for k in 0..L
    anchor_known = known[anchor_index].view(1, -1, 1)
    # A row outside the coarse group (d = 0): exp(scale * min(l, v_i, v_j)).
    outside = power[torch.minimum(torch.minimum(anchor_known, values), level)]  # [K, Na, V]
    # Inside it the correction depends only on (l, min(v_i, v_j), d_ij): a table of
    # [K, L + 1, L + 1] values read once per window column (d = 0 off the group).
    common = values.view(1, -1, 1)  # min(v_i, v_j)
    shared = values.view(1, 1, -1)  # d_ij
    bounded = torch.minimum(common, level)
    table = power[(bounded - shared).clamp(min=0)] - power[bounded]
    table = torch.where(shared > 0, table, torch.zeros_like(table)).flatten(1)
    window_common = torch.minimum(anchor_known[0], known[windows.columns])  # [Na, W]
    window_shared = windows.members.sum(dim=0)  # bool sums are int64
    index = window_common * width + window_shared
    inside = table.index_select(1, index.flatten()).view(-1, *index.shape)  # [K, Na, W]
    return outside, inside


@dataclass(frozen=True)
class LevelStatistics:
    """What every level's SupCon term is made of, per anchor.

    Attributes:
        log_denominator: ``[L, Na]`` log-sum-exp of each anchor's (offset) logits.
        mean_positive_logit: ``[L, Na]`` mean logit over the anchor's positives.
        positive_count: ``[L, Na]`` number of positives.
        is_anchor: ``[L, Na]`` known prefix and at least one positive.
        window_logits: ``[1 | L, Na, W]`` the logits at the positive windows' columns
            (``None`` without windows).
    """

    log_denominator: Tensor
    mean_positive_logit: Tensor
    positive_count: Tensor
    is_anchor: Tensor
    window_logits: Tensor | None = None

    def level_losses(self) -> Tensor:
        """``[L, Na]`` SupCon's L_out term of every anchor at every level (0 off anchors)."""
        loss = self.log_denominator - self.mean_positive_logit
        return torch.where(self.is_anchor, loss, torch.zeros_like(loss))


def level_statistics(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: float,
    windows: PositiveWindows | None = None,
    margin: tuple[float, range] | None = None,
    include_in_denominator: Tensor | None = None,
    same_levels: bool = False,
    level_columns: tuple[tuple[int, int], ...] | None = None,
) -> LevelStatistics:
    """The logits, log-denominators and positive means of every anchor at every level.

    For anchor ``i`` at level ``l`` with positives ``P_l(i)`` (rows in the same known
    prefix group, ``i`` excluded) SupCon's term (Khosla et al. 2020, L_out) is
    ``log sum_{a != i} exp(s_ia) - mean_{p in P_l(i)} s_ip`` with ``s = z z^T / T``.

    Args:
        anchors: ``[Na, D]`` (one matrix for every level) or ``[Na, L, D]`` (per-level
            features), L2-normalised.
        contrast: ``[Nc, D]`` or ``[Nc, L, D]``, containing the anchors.
        anchor_index: ``[Na]`` position of each anchor in ``contrast``.
        groups: Prefix groups of the contrast rows.
        temperature: Softmax temperature.
        windows: The anchors' positive windows, when the margin or the anchor-mean bound
            need them: the logits at their columns are then read once.
        margin: ``(margin / T, levels)``: the hierarchy margin's log-denominators of those
            levels (:func:`margin_weights`, needs ``windows``); default: plain.
        include_in_denominator: Optional ``[Nc, L]``: which rows enter level ``l``'s
            denominator (the reference implementation's row selection).
        same_levels: Per-level features that are equal at every level (shared masks
            with equal rows, e.g. a GMM head before its first fit): one similarity
            matrix, level 0's, serves every level's denominator.
        level_columns: ``(start, stop)`` per level of per-level features: the only
            columns where that level's features can be nonzero (shared hard masks).
    """
    # Autocast would run the similarity matmul in half precision: keep the logits float32.
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors, contrast = widen(anchors), widen(contrast)
        num_levels, num_anchors = groups.ids.shape[1], anchors.shape[0]
        device = anchors.device
        # [1 | L, N, D]: one similarity matrix for every level, or one per level.
        anchor_feats = anchors.unsqueeze(0) if anchors.dim() == 2 else anchors.transpose(0, 1)
        contrast_feats = contrast.unsqueeze(0) if contrast.dim() == 2 else contrast.transpose(0, 1)
        window_logits = None
        if include_in_denominator is not None:  # the reference's row selection
            logits = torch.bmm(anchor_feats / temperature, contrast_feats.transpose(1, 2))
            rows = torch.arange(num_anchors, device=device)
            logits[:, rows, anchor_index] = torch.full(
                (), -math.inf, dtype=logits.dtype, device=device
            )
            keep = include_in_denominator.t().unsqueeze(1)  # [L, 1, Nc]
            log_denominator = torch.logsumexp(logits.masked_fill(~keep, -math.inf), dim=2)
        else:
            outside = inside = None
            shared = same_levels and anchor_feats.shape[0] > 1
            matrix_anchors = anchor_feats[:1] if shared else anchor_feats
            matrix_contrast = contrast_feats[:1] if shared else contrast_feats
            num_outputs = matrix_anchors.shape[0]
            if margin is not None:
                assert windows is not None
                outside, inside = margin_weights(
                    windows, anchor_index, *margin, dtype=anchor_feats.dtype
                )
                num_outputs = outside.shape[0]
            columns = (
                windows.columns
                if windows is not None
                else torch.zeros(num_anchors, 0, dtype=torch.long, device=device)
            )
            matrix_anchors = matrix_anchors.contiguous()
            # The same rows (one rank, no memory): one copy, and one gradient buffer.
            same_rows = anchors is contrast
            log_denominator, window_logits = log_denominators(
                matrix_anchors,
                None if same_rows else matrix_contrast.contiguous(),
                anchor_index,
                temperature,
                columns,
                groups.valid.sum(dim=1) if windows is None else windows.known_levels,
                num_outputs,
                outside,
                inside,
                level_columns if matrix_anchors.shape[0] == num_levels > 1 else None,
            )
            window_logits = window_logits if windows is not None else None
        log_denominator = log_denominator.expand(num_levels, num_anchors)

        # Group sizes of the contrast rows, every level at once: ids offset per level.
        flat_ids = groups.ids.t() + torch.arange(num_levels, device=device).unsqueeze(1) * (
            groups.num_groups
        )  # [L, Nc]
        valid = groups.valid.t()
        # Unknown prefixes add into one spare row past the groups (it is never read).
        spare = num_levels * groups.num_groups
        add_ids = torch.where(valid, flat_ids, torch.full_like(flat_ids, spare)).flatten()
        counts = anchors.new_zeros(spare + 1)
        counts = counts.index_add(0, add_ids, valid.to(counts.dtype).flatten())
        anchor_ids = flat_ids[:, anchor_index]  # [L, Na]
        positive_count = counts[anchor_ids] - 1.0
        # Narrow windows of these very levels (not SupCon's whole-path classes): the
        # positives are the members, so sum their logits (own column -inf, no positive).
        if (
            window_logits is not None
            and windows is not None
            and windows.members.shape[0] == num_levels
            and windows.columns.shape[1] < groups.ids.shape[0]
        ):
            other = windows.columns != anchor_index.unsqueeze(1)  # [Na, W]
            positive_logit = _member_sums(window_logits, windows.members, other)
        else:
            ids = (add_ids, anchor_ids, anchor_index, spare)
            positive_logit = _group_dot(anchors, contrast, anchor_feats, contrast_feats, *ids)
            positive_logit = positive_logit / temperature
        return LevelStatistics(
            log_denominator=log_denominator,
            mean_positive_logit=positive_logit / positive_count.clamp(min=1.0),
            positive_count=positive_count,
            is_anchor=valid[:, anchor_index] & (positive_count > 0),
            window_logits=window_logits,
        )


def _member_sums(values: Tensor, members: Tensor, keep: Tensor) -> Tensor:
    """``[L, Na]`` sums of window values ``[1 | L, Na, W]`` over the bool ``members [L, Na,
    W]`` where ``keep [Na, W]``, one level at a time: autograd keeps only bool masks, no
    ``[L, Na, W]`` product (it would sit beside the ``[Na, Nc]`` matrix that the backward
    keeps)."""
    sums = []
    for level in range(members.shape[0]):
        row = values[min(level, values.shape[0] - 1)]
        sums.append(torch.where(members[level] & keep, row, 0.0).sum(dim=1))
    return torch.stack(sums)


def _group_dot(
    anchors: Tensor,
    contrast: Tensor,
    anchor_feats: Tensor,
    contrast_feats: Tensor,
    add_ids: Tensor,
    anchor_ids: Tensor,
    anchor_index: Tensor,
    spare: int,
) -> Tensor:
    """``[L, Na]`` each anchor's dot with its positives' sum, from per-level group sums
    (``add_ids [L * Nc]``: every contrast row's flat group, ``spare`` for unknown ones)."""
    num_levels = anchor_ids.shape[0]
    contrast_levels = contrast_feats.expand(num_levels, -1, -1)  # [L, Nc, D]
    sums = contrast_levels.new_zeros(spare + 1, contrast.shape[-1])
    sums = sums.index_add(0, add_ids, contrast_levels.flatten(0, 1))
    own_row = anchor_feats if anchors is contrast else contrast_levels[:, anchor_index]
    # z_i . (S - z_i) as two row dots (batched matmuls: no [L, Na, D] product).
    group_dot = torch.einsum(
        "lnd,lnd->ln", anchor_feats.expand(num_levels, -1, -1), sums[anchor_ids]
    )
    return group_dot - torch.einsum("lnd,lnd->ln", anchor_feats, own_row)


def aggregate_levels(share: Tensor, value: Tensor, loss_type: str, weights: Tensor) -> Tensor:
    """Combines the level terms (coarse to fine) into the HMC / HCE / HMCE loss.

    Args:
        share: ``[L]`` level terms carrying the gradient (see ``_batch.reduce_levels``).
        value: ``[L]`` detached global level terms; they decide the HCE maxima.
        loss_type: ``hmc`` (weighted mean), ``hce`` (each level at least as large as every
            finer level, the batch-mean hierarchy constraint) or ``hmce`` (both).
        weights: ``[L]`` level weights, summing to the divisor's inverse.

    Returns:
        The loss. Its value is the global-batch loss; its gradient is this rank's share.
    """
    num_levels = share.shape[0]
    if loss_type in ("hce", "hmce"):
        # Level l takes the largest term among itself and all finer levels.
        _, reversed_index = torch.cummax(value.flip(0), dim=0)
        source = (num_levels - 1 - reversed_index).flip(0)
        share, value = share[source], value[source]
    total_share = (weights * share).sum()
    total_value = (weights * value).sum()
    return total_share + (total_value - total_share).detach()
