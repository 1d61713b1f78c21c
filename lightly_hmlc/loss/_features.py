"""The checked inputs of every loss: label paths, L2-normalised rows and masks.

:func:`prepare_inputs` is the one entry of every loss: the checks of
:func:`validate_inputs`, the normalisation, the masks, and, under
``gather_distributed``, one error decision for all ranks.
"""

from __future__ import annotations

import torch
from lightly.utils import dist
from torch import Tensor

from lightly_hmlc.label_paths import check_label_paths
from lightly_hmlc.loss._batch import share_errors


def validate_inputs(
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    num_levels: int | None = None,
    check_values: bool = True,
    level_embeddings: bool = False,
) -> Tensor:
    """Checks the two views and the labels; returns labels as ``[B, L]`` int64.

    The labels are checked by :func:`~lightly_hmlc.label_paths.check_label_paths`, the
    package's one label-path check (``[B]`` class ids are one level). Shapes and dtypes
    are always checked (free); with ``check_values`` also the values (NaN/Inf
    embeddings, labels below -1), which synchronises the host with an accelerator.
    With ``level_embeddings`` the views may also be per-level embeddings ``[B, L, D]``.

    Raises:
        ValueError: Naming the problem (dimensions, batch sizes, dtype, depth, non-finite
            values, empty batch, labels below -1) and how to fix it.
    """
    for name, out in (("out0", out0), ("out1", out1)):
        if not isinstance(out, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(out).__name__}.")
        if out.dim() != 2 and not (level_embeddings and out.dim() == 3):
            shapes = "[batch_size, dim]"
            if level_embeddings:
                shapes += " or [batch_size, levels, dim]"
            raise ValueError(
                f"{name} must have shape {shapes}, got {tuple(out.shape)}. Flatten the "
                "projections (e.g. out.flatten(1)) before the loss."
            )
        if not out.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating point tensor, got {out.dtype}.")
    if out0.shape != out1.shape:
        raise ValueError(
            f"out0 and out1 must have the same shape (one row per sample and view), got "
            f"{tuple(out0.shape)} and {tuple(out1.shape)}."
        )
    if out0.shape[0] == 0:
        raise ValueError("The batch is empty: out0 and out1 have no rows.")
    if out0.shape[-1] == 0:
        raise ValueError("The embeddings have width 0.")
    paths = check_label_paths(
        labels,
        num_levels=num_levels,
        batch_size=out0.shape[0],
        allow_class_ids=True,
        check_values=check_values,
        configured_by="the loss",
        row_hint="pass one label path per sample, not per view (out0 and out1 have one "
        "row per sample each).",
    )
    if out0.dim() == 3 and out0.shape[1] != paths.shape[1]:
        raise ValueError(
            f"Per-level embeddings [B, L, D] need one embedding per level of the label "
            f"paths: got {out0.shape[1]} embeddings per sample for label paths of depth "
            f"{paths.shape[1]}. Check the head's num_levels against the hierarchy."
        )
    if check_values:
        check_finite(out0, out1)
    return paths.to(device=out0.device)


def check_finite(*embeddings: Tensor) -> None:
    """Raises a ValueError for NaN or Inf embeddings (a host-device synchronisation)."""
    finite = torch.stack([torch.isfinite(out).all() for out in embeddings]).all()
    if not bool(finite):
        raise ValueError(
            "The embeddings contain NaN or Inf. Check the model's outputs (e.g. a diverged "
            "training step or a too-large learning rate)."
        )


def check_masks(
    features: Tensor,
    masks: Tensor,
    num_levels: int,
    source: str = "masks",
    check_values: bool = True,
) -> Tensor:
    """Checked masks ``[1 | 2B, L, D]`` in the features' dtype (``[B]`` masks repeated).

    Args:
        features: ``[2B, D]`` L2-normalised rows of ``cat([out0, out1])``.
        masks: ``[1, L, D]`` (shared by all rows), ``[B, L, D]`` (per sample, used for
            both views) or ``[2B, L, D]`` (per row of ``cat([out0, out1])``).
        num_levels: L, the depth of the label paths.
        source: How the error message names the masks.
        check_values: Also reject NaN/Inf masks (a host-device synchronisation).

    Raises:
        ValueError: If ``masks`` is not a floating point tensor of one of those shapes,
            or (with ``check_values``) holds NaN or Inf.
    """
    rows, dim = features.shape
    if not isinstance(masks, Tensor):
        raise ValueError(f"{source} must be a torch.Tensor, got {type(masks).__name__}.")
    if not masks.dtype.is_floating_point:
        raise ValueError(
            f"{source} must be a floating point tensor, got {masks.dtype}: convert hard "
            "masks with masks.float()."
        )
    if (
        masks.dim() != 3
        or tuple(masks.shape[1:]) != (num_levels, dim)
        or masks.shape[0] not in (1, rows // 2, rows)
    ):
        raise ValueError(
            f"{source} has shape {tuple(masks.shape)}; expected [1 | {rows // 2} | {rows}, "
            f"{num_levels}, {dim}] (shared | per sample | per row of cat([out0, out1]), "
            "levels, dim). Check the head's num_levels and dim against the labels and the "
            "projection width."
        )
    if check_values and not bool(torch.isfinite(masks).all()):
        raise ValueError(
            f"{source} contain NaN or Inf: check the mask head (e.g. a diverged attention "
            "head, or a gate temperature that is too small)."
        )
    if masks.shape[0] == rows // 2 and rows // 2 != 1:
        masks = masks.repeat(2, 1, 1)  # one mask per sample serves both of its views
    return masks.to(device=features.device, dtype=features.dtype)


# F.normalize's default: rows with a smaller norm are not scaled to unit length.
_NORM_EPS = 1e-12


def normalize_features(out0: Tensor, out1: Tensor, check_values: bool = True) -> Tensor:
    """Both views stacked, L2-normalised, in float32 or wider (also under autocast).

    Rows ``[B, D]`` give ``[2B, D]``; per-level embeddings ``[B, L, D]`` give
    ``[2B, L, D]``, each level's embedding normalised on its own.

    With ``check_values``, a row whose norm cannot be computed in that dtype (its
    squared norm overflows to Inf, or underflows below F.normalize's eps of 1e-12, which
    includes an all-zero row) raises a ValueError: such a row would otherwise become a
    zero or Inf-scaled vector and give a constant loss with no error. Without the
    checks, a row with a norm below the eps becomes a zero row with zero gradient.
    """
    dtype = torch.promote_types(out0.dtype, torch.float32)
    with torch.autocast(device_type=out0.device.type, enabled=False):
        features = torch.cat([out0, out1], dim=0).to(dtype)
        norms = torch.linalg.vector_norm(features, dim=-1, keepdim=True)
        if check_values:
            check_norms(norms, dtype)
        # The same arithmetic as F.normalize, reusing the norms; but a row below the eps
        # is zeroed with its gradient, not scaled by 1 / eps: a masked level normalises
        # again, which made a zero row's gradient about 1 / eps**2 (~1e23, Inf in fp16).
        return (features / norms.clamp_min(_NORM_EPS)).masked_fill(norms < _NORM_EPS, 0)


def check_norms(norms: Tensor, dtype: torch.dtype) -> None:
    """Raises a ValueError if a row's norm is Inf or below 1e-12 (a host-device sync)."""
    ok = torch.isfinite(norms) & (norms >= _NORM_EPS)
    if not bool(ok.all()):
        bad = int((~ok).sum())
        why = "Inf (it overflows)" if bool(torch.isinf(norms).any()) else "zero or below 1e-12"
        raise ValueError(
            f"{bad} embedding row(s) cannot be L2-normalised in {dtype}: their norm is "
            f"{why}. Check the model's outputs (a diverged or collapsed projection); for "
            "legitimately huge or tiny values, rescale them or pass float64."
        )


def prepare_inputs(
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    num_levels: int | None,
    check_values: bool,
    gather_distributed: bool,
    masks: Tensor | None = None,
    level_embeddings: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The one entry of every loss: checked ``[2B, L]`` labels, the rows and the masks.

    ``level_embeddings``: the loss also takes per-level embeddings ``[B, L, D]`` (one
    embedding per level of the label paths), returned normalised as ``[2B, L, D]``.

    Returns the labels of both views, the L2-normalised rows ``[2B, D]`` and the masks
    as :func:`check_masks` returns them (``None`` without masks), checked here with the
    inputs (one error decision for all ranks) and applied with the memory rows.

    With ``gather_distributed`` on several ranks and ``check_values``, a data error found
    on any rank is raised on every rank with the same message (see
    :func:`~lightly_hmlc.loss._batch.share_errors`), before any other collective. With
    ``check_values=False`` nothing is exchanged: shape errors are still raised, but only
    by the rank that finds them.
    """
    if not (check_values and gather_distributed and dist.world_size() > 1):
        return _prepare_local(out0, out1, labels, num_levels, check_values, masks, level_embeddings)
    rows = 2 * out0.shape[0] if isinstance(out0, Tensor) and out0.dim() >= 1 else 0
    device = out0.device if isinstance(out0, Tensor) else torch.device("cpu")
    try:
        prepared = _prepare_local(
            out0, out1, labels, num_levels, check_values, masks, level_embeddings
        )
    except ValueError as error:
        share_errors(str(error), rows, device)  # raises on every rank
        raise
    share_errors(None, rows, device)
    return prepared


def _prepare_local(
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    num_levels: int | None,
    check_values: bool,
    masks: Tensor | None,
    level_embeddings: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    paths = validate_inputs(out0, out1, labels, num_levels, check_values, level_embeddings)
    paths = paths.repeat(2, 1)
    features = normalize_features(out0, out1, check_values)
    if masks is not None and features.dim() == 3:
        raise ValueError(
            "masks were given with per-level embeddings [B, L, D]: masks make per-level "
            "embeddings from projections [B, D], so pass either the projections and the "
            "masks, or the per-level embeddings without masks."
        )
    if masks is not None:
        masks = check_masks(features, masks, paths.shape[1], check_values=check_values)
    return paths, features, masks
