"""Every level's SupCon log-denominator, one similarity matrix at a time, in one buffer.

The only ``[Na, Nc]`` work of the losses is here: the similarities, their exponentials and
row sums. :class:`_LogDenominators` holds one ``[Na, Nc]`` matrix at a time, so peak memory
is O(N^2) whatever the number of levels: the last matrix's exponentials stay alive for the
backward (one matrix, e.g. SupCon or HMLC without masks, is never recomputed), the others
are recomputed there one at a time, into the same buffer, and the gradient is formed in
place (the softmax weights times the upstream gradient, plus the window's gradient).
Reusing one buffer matters on the CPU, where every fresh ``[Na, Nc]`` allocation is
page-faulted in again (at batch 2048 that costs about as much as the matmul writing it).

The hierarchy margin enters as weights on the exponentials: a contrast row outside the
anchor's coarse group counts ``exp(scale * k)`` times, ``k`` depending only on how many of
its levels are known (``outside[k][i, v_j]``); rows inside the group are corrected through
the anchor's window (``inside``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_ROW_BLOCK = 256  # rows of a [Na, Nc] product formed at a time


def _product(left: Tensor, right: Tensor, out: Tensor | None) -> Tensor:
    """``left @ right.t()``, into ``out`` when given (no fresh ``[Na, Nc]`` allocation)."""
    if out is None or torch.compiler.is_compiling():  # the compiler plans its own memory
        return left @ right.t()
    return torch.mm(left, right.t(), out=out)


def _similarities(
    anchors: Tensor, contrast: Tensor, anchor_index: Tensor, scale: float, out: Tensor | None
) -> Tensor:
    """``[Na, Nc]`` similarities / T with ``-inf`` on each anchor's own column."""
    logits = _product(anchors * scale, contrast, out)
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    logits[rows, anchor_index] = torch.full((), -math.inf, dtype=logits.dtype, device=logits.device)
    return logits


def _columns(
    features: Tensor, matrix: int, level_columns: tuple[tuple[int, int], ...] | None
) -> Tensor:
    """Matrix ``matrix``'s features ``[N, D]``, only its run of columns if given."""
    if level_columns is None:
        return features[matrix]
    start, stop = level_columns[matrix]
    return features[matrix, :, start:stop]


def _weighted_similarities(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    scale: float,
    log_weights: Tensor,
    classes: Tensor,
    out: Tensor | None,
) -> Tensor:
    """``[Na, Nc]`` similarities / T plus ``log_weights[i, known_j]``, from ONE matmul.

    The margin's weight of a column depends only on its known-level count, a one-hot
    ``classes [Nc, V]``: appending ``log_weights [Na, V]`` to the anchors and the classes
    to the contrast rows adds the log-weight in the same matmul, so ``exp`` of the result
    is the weighted exponential and no ``[Na, Nc]`` weight matrix is formed.
    """
    logits = _product(
        torch.cat([anchors * scale, log_weights], dim=1), torch.cat([contrast, classes], dim=1), out
    )
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    logits[rows, anchor_index] = torch.full((), -math.inf, dtype=logits.dtype, device=logits.device)
    return logits


def _plain_window(logits: Tensor, columns: Tensor, outside: Tensor, window_known: Tensor) -> Tensor:
    """``[Na, W]`` plain logits at the window columns of weighted ``logits``
    (``window_known = known[columns]``)."""
    log_weight = outside.log().gather(1, window_known)
    return logits.gather(1, columns) - log_weight


def _one_hot(known: Tensor, width: int, dtype: torch.dtype) -> Tensor:
    """``[Nc, width]`` one-hot of the known-level counts, by comparison (``F.one_hot``
    checks its values on the host)."""
    return (known.unsqueeze(1) == torch.arange(width, device=known.device)).to(dtype)


def _matrix_logits(
    anchors: Tensor,
    contrast: Tensor,
    matrix: int,
    level_columns: tuple[tuple[int, int], ...] | None,
    anchor_index: Tensor,
    scale: float,
    log_outside: Tensor | None,
    classes: Tensor | None,
    out: Tensor | None,
) -> Tensor:
    """Matrix ``matrix``'s ``[Na, Nc]`` logits, the anchors' own column ``-inf``; with
    ``log_outside`` (one output per matrix) its margin weights ride in the matmul. The
    forward and the recomputing backward both call this, writing into ``out`` if given."""
    rows = _columns(anchors, matrix, level_columns)
    contrast_rows = _columns(contrast, matrix, level_columns)
    if log_outside is None:
        return _similarities(rows, contrast_rows, anchor_index, scale, out)
    assert classes is not None
    return _weighted_similarities(
        rows, contrast_rows, anchor_index, scale, log_outside, classes, out
    )


class _LogDenominators(torch.autograd.Function):
    """``(log_denominator [K, Na], window_logits [M, Na, W])`` of M similarity matrices.

    Output level ``k`` reads matrix ``k`` when there are several (per-level features),
    else the one shared matrix.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        anchors: Tensor,
        contrast_rows: Tensor | None,
        anchor_index: Tensor,
        columns: Tensor,
        known: Tensor,
        outside: Tensor | None,
        inside: Tensor | None,
        num_outputs: int,
        inverse_temperature: float,
        level_columns: tuple[tuple[int, int], ...] | None,
    ) -> tuple[Tensor, Tensor]:
        # None: the anchors are the contrast rows (one rank, no memory), passed once.
        contrast = anchors if contrast_rows is None else contrast_rows
        num_matrices, num_anchors = anchors.shape[0], anchors.shape[1]
        folded = outside is not None and num_matrices == num_outputs
        classes = None if outside is None else _one_hot(known, outside.shape[2], anchors.dtype)
        window_known = known[columns] if folded else None
        shifts = anchors.new_empty(num_matrices, num_anchors)
        sums = anchors.new_empty(num_outputs, num_anchors)
        windows = anchors.new_empty(num_matrices, num_anchors, columns.shape[1])
        buffer = None  # one [Na, Nc] matrix for every level
        for matrix in range(num_matrices):
            # Folded: one output per matrix, its margin weights ride in the matmul.
            logits = buffer = _matrix_logits(
                anchors,
                contrast,
                matrix,
                level_columns,
                anchor_index,
                inverse_temperature,
                outside[matrix].log() if folded and outside is not None else None,
                classes,
                buffer,
            )
            # Never -inf: every row has another column.
            shift = logits.amax(dim=1).clamp(min=torch.finfo(logits.dtype).min)
            shifts[matrix] = shift
            if folded:
                assert outside is not None and inside is not None and window_known is not None
                plain = _plain_window(logits, columns, outside[matrix], window_known)
                windows[matrix] = plain
                sums[matrix] = logits.sub_(shift.unsqueeze(1)).exp_().sum(dim=1) + (
                    (plain - shift.unsqueeze(1)).exp() * inside[matrix]
                ).sum(dim=1)
                continue
            windows[matrix] = logits.gather(1, columns)
            exp = logits.sub_(shift.unsqueeze(1)).exp_()
            outputs = range(num_outputs) if num_matrices == 1 else [matrix]
            if outside is None or inside is None or classes is None:
                total = exp.sum(dim=1)
                for output in outputs:
                    sums[output] = total
            else:
                per_known = exp @ classes  # [Na, V]
                window_exp = exp.gather(1, columns)
                for output in outputs:
                    sums[output] = (per_known * outside[output]).sum(dim=1) + (
                        window_exp * inside[output]
                    ).sum(dim=1)
        source = torch.arange(num_outputs, device=anchors.device).clamp(max=num_matrices - 1)
        log_denominator = shifts[source] + sums.log()
        ctx.save_for_backward(
            anchors, contrast_rows, anchor_index, columns, known, shifts, sums, windows
        )
        ctx.outside, ctx.inside = outside, inside
        ctx.same_rows = contrast_rows is None
        ctx.inverse_temperature = inverse_temperature
        ctx.level_columns = level_columns
        # The buffer holds the last matrix's exp(logits - shift), weights folded in: its
        # backward needs nothing else. An attribute, not saved: the backward reuses it in
        # place (and a second backward, with retain_graph, recomputes).
        ctx.last_exp = buffer
        return log_denominator, windows

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_log: Tensor, grad_windows: Tensor) -> tuple[Tensor | None, ...]:
        anchors, contrast, anchor_index, columns, known, shifts, sums, windows = ctx.saved_tensors
        contrast = anchors if contrast is None else contrast
        outside, inside, scale = ctx.outside, ctx.inside, ctx.inverse_temperature
        level_columns = ctx.level_columns
        num_matrices = anchors.shape[0]
        folded = outside is not None and num_matrices == sums.shape[0]
        coefficient = grad_log / sums  # d log(sum) = d sum / sum
        classes = _one_hot(known, outside.shape[2], anchors.dtype) if folded else None
        # The same rows as anchors and contrast: one gradient, summed in the matmul.
        same_rows = ctx.same_rows
        # Zeros: the columns outside a level's run have no gradient.
        make = torch.empty_like if level_columns is None else torch.zeros_like
        grad_anchors = make(anchors)
        grad_contrast = None if same_rows else make(contrast)
        kept, ctx.last_exp = ctx.last_exp, None  # the forward's last matrix, used once
        buffer = kept
        for matrix in reversed(range(num_matrices)):  # the kept last matrix first
            # The outputs of this matrix (slices, not index lists: no host-to-device copy).
            outputs = slice(None) if num_matrices == 1 else slice(matrix, matrix + 1)
            shift = shifts[matrix].unsqueeze(1)
            if kept is not None and matrix == num_matrices - 1:
                exp = kept
            else:
                buffer = _matrix_logits(
                    anchors,
                    contrast,
                    matrix,
                    level_columns,
                    anchor_index,
                    scale,
                    outside[matrix].log() if folded else None,
                    classes,
                    buffer,
                )
                exp = buffer.sub_(shift).exp_()
            if folded:
                assert outside is not None and inside is not None
                share = coefficient[matrix].unsqueeze(1)
                # exp(logits) already carries the weights outside the window.
                grad = exp.mul_(share)
                window_exp = (windows[matrix] - shift).exp()
                grad.scatter_add_(
                    1, columns, window_exp * (share * inside[matrix]) + grad_windows[matrix]
                )
            else:
                window_grad = grad_windows[matrix]
                if outside is None or inside is None:
                    weight = coefficient[outputs].sum(dim=0)
                    grad = exp.mul_(weight.unsqueeze(1))
                else:
                    share = coefficient[outputs].unsqueeze(2)
                    table = (share * outside[outputs]).sum(dim=0)  # [Na, V]
                    correction = (share * inside[outputs]).sum(dim=0)  # [Na, W]
                    window_exp = exp.gather(1, columns)
                    # table[:, known] as a thin matmul with the one-hot classes (a gather
                    # of [Na, Nc] from a [Na, V] table is several times slower on the CPU),
                    # in blocks of rows: no second [Na, Nc] matrix.
                    classes_t = _one_hot(known, table.shape[1], table.dtype).t()
                    for start in range(0, exp.shape[0], _ROW_BLOCK):
                        block = slice(start, start + _ROW_BLOCK)
                        exp[block].mul_(table[block] @ classes_t)
                    grad = exp
                    window_grad = window_exp * correction + window_grad
                grad.scatter_add_(1, columns, window_grad)
            rows = _columns(anchors, matrix, level_columns)
            contrast_rows = _columns(contrast, matrix, level_columns)
            if grad_contrast is None:
                both = torch.addmm(grad.t() @ rows, grad, contrast_rows).mul_(scale)
                _columns(grad_anchors, matrix, level_columns).copy_(both)
            else:
                grad_rows = (grad @ contrast_rows).mul_(scale)
                _columns(grad_anchors, matrix, level_columns).copy_(grad_rows)
                grad_columns = (grad.t() @ rows).mul_(scale)
                _columns(grad_contrast, matrix, level_columns).copy_(grad_columns)
        return grad_anchors, grad_contrast, None, None, None, None, None, None, None, None


def log_denominators(
    anchors: Tensor,
    contrast: Tensor | None,
    anchor_index: Tensor,
    temperature: float,
    columns: Tensor,
    known: Tensor,
    num_outputs: int,
    outside: Tensor | None = None,
    inside: Tensor | None = None,
    level_columns: tuple[tuple[int, int], ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """``(log_denominator [K, Na], window_logits [M, Na, W])``.

    Args:
        anchors: ``[M, Na, D]`` features of M similarity matrices (1: shared by all levels).
        contrast: ``[M, Nc, D]``, containing the anchors; ``None``: the anchors themselves
            (their one gradient then carries both roles).
        anchor_index: ``[Na]`` position of each anchor among the contrast rows.
        temperature: Softmax temperature.
        columns: ``[Na, W]`` window columns whose logits to return (``W`` may be 0).
        known: ``[Nc]`` how many leading levels of each contrast row are known.
        num_outputs: K, the number of log-denominators per anchor (M, or any with M = 1).
        outside: Optional ``[K, Na, V]`` weight of a row by its known-level count.
        inside: Optional ``[K, Na, W]`` correction of the weights at the window columns.
        level_columns: Optional ``(start, stop)`` per matrix: its only feature columns
            that can be nonzero (shared hard masks), the only ones multiplied.
    """
    return _LogDenominators.apply(  # type: ignore[no-any-return]
        anchors,
        contrast,
        anchor_index,
        columns,
        known,
        outside,
        inside,
        num_outputs,
        1.0 / temperature,
        level_columns,
    )
