"""The hierarchical multi-label contrastive losses HMC, HCE and HMCE."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightly_hmlc.loss._batch import LossBatch, loss_batch, reads_shapes, reduce_levels
from lightly_hmlc.loss._features import prepare_inputs
from lightly_hmlc.loss._hce import anchor_mean_level_losses
from lightly_hmlc.loss._levels import (
    LOSS_TYPES,
    aggregate_levels,
    build_level_groups,
    check_hierarchy_margin,
    check_temperature,
    level_statistics,
    positive_windows,
)

HCE_FORMS = ("anchor_mean", "batch_mean")

LayerPenalty = Callable[[Tensor], Tensor]

_PENALTIES: dict[str, LayerPenalty] = {
    "exp": torch.exp,
    "pow2": lambda x: torch.pow(2.0, x),
    "uniform": torch.ones_like,
}


def resolve_layer_penalty(layer_penalty: str | Sequence[float] | LayerPenalty) -> LayerPenalty:
    """The penalty function of a name (``exp``, ``pow2``, ``uniform``), a callable, or the
    weights themselves, coarse to fine (``[0.5, 1.0]``: the finest level counts twice)."""
    if callable(layer_penalty):
        return layer_penalty
    if isinstance(layer_penalty, list | tuple):
        return functools.partial(_fixed_weights, [float(w) for w in layer_penalty])
    if layer_penalty not in _PENALTIES:
        raise ValueError(
            f"Unknown layer_penalty {layer_penalty!r}: use one of {sorted(_PENALTIES)}, a list "
            "of weights (coarse to fine) or a callable mapping a float tensor to one."
        )
    return _PENALTIES[layer_penalty]


def _fixed_weights(weights: list[float], k_inverse: Tensor) -> Tensor:
    return torch.tensor(weights, dtype=k_inverse.dtype, device=k_inverse.device)


def describe_layer_penalty(layer_penalty: LayerPenalty) -> str:
    """How a resolved penalty reads in a loss's repr: ``'exp'``, ``[0.5, 1.0]``, a name.

    Examples:
        >>> describe_layer_penalty(resolve_layer_penalty([0.5, 1.0]))
        '[0.5, 1.0]'
    """
    for name, penalty in _PENALTIES.items():
        if layer_penalty is penalty:
            return repr(name)
    if isinstance(layer_penalty, functools.partial) and layer_penalty.func is _fixed_weights:
        return repr(layer_penalty.args[0])
    return getattr(layer_penalty, "__name__", None) or repr(layer_penalty)


def layer_penalties(
    num_levels: int,
    layer_penalty: LayerPenalty,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    check: bool = True,
) -> Tensor:
    """lambda of every level, coarse to fine: ``layer_penalty(1 / k)`` with ``k = L - l``.

    ``k`` counts from the finest level (k = 1) up, as the reference implementation's
    layer index does, so an increasing penalty favours finer levels. ``check`` raises a
    ValueError for weights that are not finite, negative or all zero (a host sync).
    """
    k = torch.arange(num_levels, 0, -1, dtype=dtype, device=device)
    weights = layer_penalty(1.0 / k)
    if not isinstance(weights, Tensor) or weights.numel() != num_levels:
        raise ValueError(
            f"layer_penalty must map a [{num_levels}] tensor to a tensor of the same shape, "
            f"got {weights!r}."
        )
    weights = weights.to(dtype).reshape(-1)
    if not check:
        return weights
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(
            f"layer_penalty must map a [{num_levels}] tensor to finite values of the same "
            f"shape, got {weights.tolist()}."
        )
    if bool((weights < 0).any()):
        raise ValueError(f"layer_penalty gave negative weights {weights.tolist()}.")
    if not bool((weights > 0).any()):
        raise ValueError(
            f"layer_penalty gave all-zero weights {weights.tolist()}: the weighted mean of "
            "the level terms is undefined. Give at least one level a weight > 0."
        )
    return weights


class HMLCLoss(nn.Module):
    """Hierarchical multi-label contrastive loss of Zhang et al. [0]: HMC, HCE and HMCE.

    Labels are label paths ``[B, L]``, coarse to fine (``-1``: unknown). At level ``l``
    two samples are positives when their paths agree from the root down to ``l``; the
    other view of a sample is always a positive, so never append an instance-id column.
    Every level gets SupCon's L_out term and the terms are aggregated:

    - ``hmc``: weighted by ``lambda_l = layer_penalty(1 / k)``, ``k = L - l`` counting from
      the finest level, so an increasing penalty favours finer levels;
    - ``hce``: the hierarchy constraint (a pair that shares fewer labels never costs less
      than the anchor's finer terms), then averaged;
    - ``hmce``: both.

    With ``hce_form="anchor_mean"`` (default) the constraint acts inside the sum over
    positive pairs, as the paper's HiConE equation puts it, each pair's loss raised to the
    anchor's largest finer level term; ``"batch_mean"`` raises the batch-mean level terms
    instead, as the authors' code does (it rarely binds). Features may carry per-level
    masks (G-HMLC / A-HMLC of Ott et al. [1]): level ``h`` sees
    ``normalize(normalize(z) * masks[:, h])``, and all-ones masks give the unmasked loss.
    Or the views are per-level embeddings ``[B, L, D]`` (e.g. attention pooling with one
    query per level) and level ``h`` sees ``normalize(out[:, h])``.
    :class:`ReferenceHMLCLoss` reproduces the authors' code exactly.

    - [0] Use All The Labels: A Hierarchical Multi-Label Contrastive Learning Framework,
      Zhang et al., CVPR 2022, https://arxiv.org/abs/2204.13207
    - [1] Feature Identification for Hierarchical Contrastive Learning, Ott et al.,
      arXiv 2510.00837

    Args:
        loss_type: ``"hmc"``, ``"hce"`` or ``"hmce"``.
        temperature: Scales the cosine similarities, ``> 0``.
        layer_penalty: ``"exp"`` (default, the authors' training script), ``"pow2"`` (the
            reference code's default), ``"uniform"``, a callable mapping a float tensor of
            ``1 / k`` values to weights, or the weights themselves, coarse to fine.
        hce_form: Where ``hce`` / ``hmce`` apply the constraint (see above).
        hierarchy_margin: A cosine offset ``m >= 0`` (ours, ``docs/METHOD.md``): in level
            ``l``'s denominator a row on another branch at ``k`` coarser levels counts as
            if it were ``k * m`` more similar, so it is pushed further away. 0: off.
        num_levels: If given, labels must have exactly this many levels.
        gather_distributed: Gather embeddings and labels from all ranks: the value is the
            global batch's on every rank, and so are the gradients after DDP averages.
        check_values: Check values as well as shapes (NaN, norms, labels below -1, the
            same error on every rank). ``False`` skips those checks and their host
            synchronisations; it still reads what picks the shapes (the largest coarse
            group's size, shared hard masks' runs), except inside a ``torch.compile``
            graph, which then stays one graph (``fullgraph=True``) at a price: the
            anchor-mean bound and the margin read whole rows, 4-5x the time and 5-6x the
            memory at batch 1024 on the CPU.

    Examples:
        >>> loss_fn = HMLCLoss("hmce")
        >>> out0, out1 = torch.randn(6, 16), torch.randn(6, 16)
        >>> labels = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 2], [1, 2], [1, 3]])
        >>> loss, level_losses = loss_fn(out0, out1, labels, return_level_losses=True)
        >>> level_losses.shape  # detached SupCon terms, coarse to fine, for logging
        torch.Size([2])
        >>> masks = torch.ones(1, 2, 16)  # [1 | B | 2B, L, D] from a mask head
        >>> torch.allclose(loss_fn(out0, out1, labels, masks=masks), loss)
        True
        >>> per_level = out0[:, None].expand(6, 2, 16)  # [B, L, D]: the same at each level
        >>> torch.allclose(loss_fn(per_level, out1[:, None].expand(6, 2, 16), labels), loss)
        True
    """

    def __init__(
        self,
        loss_type: str = "hmce",
        temperature: float = 0.1,
        layer_penalty: str | Sequence[float] | LayerPenalty = "exp",
        hce_form: str = "anchor_mean",
        hierarchy_margin: float = 0.0,
        num_levels: int | None = None,
        gather_distributed: bool = False,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {loss_type!r}: use one of {list(LOSS_TYPES)}.")
        if hce_form not in HCE_FORMS:
            raise ValueError(f"Unknown hce_form {hce_form!r}: use one of {list(HCE_FORMS)}.")
        self.loss_type = loss_type
        self.temperature = check_temperature(temperature)
        self.layer_penalty = resolve_layer_penalty(layer_penalty)
        self.hce_form = hce_form
        self.hierarchy_margin = check_hierarchy_margin(hierarchy_margin)
        if num_levels is not None and num_levels < 1:
            raise ValueError(f"num_levels must be >= 1 (or None), got {num_levels}.")
        if num_levels is not None:  # fail early on a bad penalty
            layer_penalties(num_levels, self.layer_penalty)
        self.num_levels = num_levels
        self.gather_distributed = gather_distributed
        self.check_values = check_values

    def extra_repr(self) -> str:
        """The options, as ``print(loss)`` shows them."""
        return (
            f"loss_type={self.loss_type!r}, temperature={self.temperature}, "
            f"layer_penalty={describe_layer_penalty(self.layer_penalty)}, "
            f"hce_form={self.hce_form!r}, hierarchy_margin={self.hierarchy_margin}, "
            + (f"num_levels={self.num_levels}, " if self.num_levels is not None else "")
            + f"gather_distributed={self.gather_distributed}, check_values={self.check_values}"
        )

    def level_weights(
        self,
        num_levels: int,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The ``[L]`` weights of the level terms, coarse to fine, summing to 1:
        ``lambda / sum(lambda)`` (one level is exactly SupCon); ``hce`` weighs all alike."""
        if self.loss_type == "hce":
            return torch.full((num_levels,), 1.0 / num_levels, dtype=dtype, device=device)
        penalties = layer_penalties(
            num_levels, self.layer_penalty, dtype, device, check=self.check_values
        )
        return penalties / penalties.sum()

    def forward(
        self,
        out0: Tensor,
        out1: Tensor,
        labels: Tensor,
        masks: Tensor | None = None,
        memory: tuple[Tensor, Tensor] | None = None,
        memory_masks: Tensor | None = None,
        return_level_losses: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Computes the loss.

        Args:
            out0: ``[B, D]`` projections of the first view, or per-level embeddings
                ``[B, L, D]``: level ``h``'s term then contrasts ``out0[:, h]`` (e.g. from
                per-level projection heads, or attention pooling with one query per level).
            out1: The second view, of the same shape as ``out0``.
            labels: ``[B, L]`` label paths, coarse to fine, ``-1`` for unknown.
            masks: Optional per-level feature masks from a mask head: ``[1, L, D]``
                (shared), ``[B, L, D]`` (per sample) or ``[2B, L, D]`` (per row of
                ``cat([out0, out1])``). Gradients flow through soft masks. Masks are
                one way to make per-level embeddings: not with ``[B, L, D]`` views.
            memory: Optional ``(features [K, D], labels [K, L])`` extra contrast rows,
                e.g. from :class:`~lightly_hmlc.models.modules.HierarchicalMemoryBank`:
                positives and negatives at every level, never anchors. With per-level
                embeddings the memory rows are ``[K, L, D]``.
            memory_masks: Masks of the memory rows, ``[1 | K, L, D]``; ``None`` reuses
                shared ``[1, L, D]`` masks (per-row masks need memory masks).
            return_level_losses: Also return the detached ``[L]`` plain SupCon terms,
                coarse to fine, e.g. for logging.

        Returns:
            The scalar loss, or ``(loss, level_losses)`` with ``return_level_losses``.
        """
        paths, features, masks = prepare_inputs(
            out0,
            out1,
            labels,
            self.num_levels,
            self.check_values,
            self.gather_distributed,
            masks,
            level_embeddings=True,
        )
        batch = loss_batch(
            features,
            paths,
            masks,
            memory,
            memory_masks,
            self.gather_distributed,
            self.check_values,
        )
        loss, level_losses = self._batch_loss(batch)
        return (loss, level_losses) if return_level_losses else loss

    def _batch_loss(self, batch: LossBatch) -> tuple[Tensor, Tensor]:
        """``(loss, level_losses)`` of rows ``[N, D]`` or per-level features ``[N, L, D]``."""
        groups = build_level_groups(batch.contrast_labels)
        num_levels = groups.ids.shape[1]
        constrained = self.loss_type != "hmc" and self.hce_form == "anchor_mean"
        margin = self.hierarchy_margin > 0
        if margin and num_levels < 2:
            raise ValueError(
                f"hierarchy_margin={self.hierarchy_margin} needs label paths with L >= 2 "
                "levels (coarse to fine), got 1: with one level no negative lies on "
                "another branch. Pass the label paths, or use hierarchy_margin=0."
            )
        windows = None
        if constrained or margin:
            windows = positive_windows(
                groups, batch.anchor_index, sync=reads_shapes(self.check_values)
            )
        stats = level_statistics(
            batch.anchors,
            batch.contrast,
            batch.anchor_index,
            groups,
            self.temperature,
            windows,
            (self.hierarchy_margin / self.temperature, range(num_levels)) if margin else None,
            same_levels=batch.same_levels,
            level_columns=batch.level_columns,
        )
        plain = stats.level_losses()
        weights = self.level_weights(num_levels, plain.dtype, plain.device)
        if not constrained:
            share, value = reduce_levels(plain, stats.is_anchor, batch.distributed)
            return aggregate_levels(share, value, self.loss_type, weights), value
        # One reduction for both: the constrained terms carry the loss, the plain ones
        # are the reported level losses.
        assert windows is not None
        share, value = reduce_levels(
            torch.cat([anchor_mean_level_losses(stats, windows, plain), plain]),
            torch.cat([stats.is_anchor, stats.is_anchor]),
            batch.distributed,
        )
        loss = aggregate_levels(share[:num_levels], value[:num_levels], "hmc", weights)
        return loss, value[num_levels:]
