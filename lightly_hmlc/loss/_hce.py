"""HiConE inside the sum over positive pairs: the hierarchy constraint of Zhang et al.

Zhang et al. (CVPR 2022, https://arxiv.org/abs/2204.13207) raise the loss of anchor
``i``'s pair ``(i, p)`` at level ``l`` to the anchor's loss at the finer levels. We read
that loss as the anchor's finer level term (the mean of its pair losses there; our
choice, ``docs/METHOD.md``):

``L_l(i, p) = max( l_l(i, p), c_l(i) )``,  ``c_l(i) = max_{l' finer, i an anchor} mean_{p'
in P_l'(i)} l_l'(i, p')``

with ``l_l(i, p) = log D_l(i) - s_l(i, p)`` the SupCon pair loss. An anchor without a
finer level where it has positives is not constrained.

Since ``max(l, c) = l + relu(c - l)`` and ``c_l(i) - l_l(i, p) = s_l(i, p) - t_l(i)``
with ``t_l(i) = log D_l(i) - c_l(i)``, the constrained term is the plain one plus
``mean_{p in P_l(i)} relu(s_l(i, p) - t_l(i))``. Only positives enter that sum, and in
the lexicographic order of the label paths an anchor's positives at every level are one
contiguous run of columns: so the sum reads a window of the logits ``[Na, W]``, ``W``
the largest coarse group, instead of ``[L, Na, Nc]`` pair losses. The bound ``c`` is
differentiable (it is the finer levels' own terms).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lightly_hmlc.loss._levels import LevelStatistics, PositiveWindows


def anchor_mean_level_losses(
    stats: LevelStatistics, windows: PositiveWindows, plain: Tensor
) -> Tensor:
    """``[L, Na]`` constrained level term of every anchor (0 where it is not an anchor).

    Args:
        stats: The level statistics of the batch (``_levels.level_statistics``).
        windows: The anchors' positive windows (``_levels.positive_windows``).
        plain: ``stats.level_losses()``, the unconstrained terms (computed once by the
            caller, which also reports them).
    """
    num_levels = plain.shape[0]
    if num_levels == 1:  # nothing finer bounds the only level
        return plain
    no_bound = torch.full((), -torch.inf, dtype=plain.dtype, device=plain.device)
    # c_l(i): the largest term over the finer levels where i is an anchor.
    level_bound = torch.where(stats.is_anchor, plain, no_bound)
    finer_max = torch.cummax(level_bound.flip(0), dim=0).values.flip(0)  # levels >= l
    has_bound = torch.isfinite(finer_max[1:]) & stats.is_anchor[:-1]  # [L - 1, Na]
    # Where there is no bound, any finite threshold serves: the relu term is dropped.
    bound = torch.where(has_bound, finer_max[1:], torch.zeros_like(finer_max[1:]))
    threshold = stats.log_denominator[:-1] - bound  # [L - 1, Na]

    window = stats.window_logits  # [1 | L, Na, W]
    assert window is not None, "level_statistics(..., windows=windows)"
    # Every level but the finest; the anchor's own column is -inf: its relu is 0.
    level_window = window[:-1] if window.shape[0] > 1 else window
    lift = _PositiveExcess.apply(level_window, threshold, windows.members[:-1])
    lift = lift / stats.positive_count[:-1].clamp(min=1.0)
    lift = torch.where(has_bound, lift, torch.zeros_like(lift))
    return plain + torch.cat([lift, torch.zeros_like(lift[:1])])


class _PositiveExcess(torch.autograd.Function):
    """``[K, Na]`` sums ``sum_w relu(window[k] - threshold[k]) * members[k]`` over the
    window, one level at a time: only the inputs are saved and each level's gradient is
    one ``[Na, W]`` matrix, so the backward stays small beside the ``[Na, Nc]`` matrix that
    the log-denominators keep for theirs."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, window: Tensor, threshold: Tensor, members: Tensor
    ) -> Tensor:
        sums = threshold.new_empty(threshold.shape)
        for level in range(threshold.shape[0]):
            excess = (window[min(level, window.shape[0] - 1)] - threshold[level, :, None]).relu_()
            sums[level] = excess.masked_fill_(~members[level], 0.0).sum(dim=1)
        ctx.save_for_backward(window, threshold, members)
        return sums

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        window, threshold, members = ctx.saved_tensors
        grad_window = torch.zeros_like(window)
        grad_threshold = torch.empty_like(threshold)
        for level in range(threshold.shape[0]):
            row = min(level, window.shape[0] - 1)
            active = (window[row] > threshold[level, :, None]) & members[level]  # relu' = 1
            level_grad = active.to(grad.dtype).mul_(grad[level, :, None])
            grad_window[row] += level_grad
            grad_threshold[level] = -level_grad.sum(dim=1)
        return grad_window, grad_threshold, None
