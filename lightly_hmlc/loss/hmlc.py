"""The hierarchical multi-label contrastive losses HMC, HCE and HMCE."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightly_hmlc.loss._balance import check_level_balance, reduce_level_terms
from lightly_hmlc.loss._features import mask_batch, mask_levels, prepare_inputs
from lightly_hmlc.loss._gather import LossBatch, gather_for_loss
from lightly_hmlc.loss._hce import HCE_FORMS, margin_logits, pair_constrained_level_losses
from lightly_hmlc.loss._instance import add_instance_term, check_instance_weight, hmlc_weights
from lightly_hmlc.loss._levels import (
    LOSS_TYPES,
    LayerPenalty,
    LevelGroups,
    aggregate_levels,
    anchor_level_losses,
    build_level_groups,
    layer_penalties,
    resolve_layer_penalty,
)
from lightly_hmlc.loss._margin import check_hierarchy_margin, level_margin_bias
from lightly_hmlc.loss._masked_fast import (
    level_feature_losses,
    masked_level_losses,
    shared_mask_dims,
    shared_mask_logits,
)
from lightly_hmlc.loss._masked_pair import masked_pair_level_losses
from lightly_hmlc.loss._memory import memory_batch
from lightly_hmlc.loss._options import check_combination, describe_options
from lightly_hmlc.loss._reference import reference_level_terms
from lightly_hmlc.loss._supcon_in import check_supcon_form, in_batch_losses
from lightly_hmlc.loss._temperature import (
    check_level_count,
    check_temperature,
    check_temperatures,
    level_temperature,
)


class _HierarchicalLoss(nn.Module):
    """Options and level terms shared by :class:`HMLCLoss` and the masked losses.

    Stateless: no attribute changes on a call.
    """

    def __init__(
        self,
        loss_type: str = "hmce",
        temperature: float | Sequence[float] = 0.1,
        layer_penalty: str | Sequence[float] | LayerPenalty = "exp",
        num_levels: int | None = None,
        normalize_weights: bool = True,
        reference_compatible: bool = False,
        base_temperature: float = 0.07,
        gather_distributed: bool = False,
        hce_form: str | None = None,
        check_values: bool = True,
        level_balance: str = "none",
        supcon_form: str = "out",
        instance_weight: float = 0.0,
        hierarchy_margin: float = 0.0,
    ) -> None:
        super().__init__()
        if hce_form is not None and hce_form not in HCE_FORMS:
            raise ValueError(f"Unknown hce_form {hce_form!r}: use one of {list(HCE_FORMS)}.")
        if reference_compatible and hce_form not in (None, "batch_mean"):
            raise ValueError(
                "reference_compatible=True applies the hierarchy constraint to the batch-mean "
                f"level terms, as the reference code does, so hce_form={hce_form!r} would be "
                "ignored: leave hce_form unset (or 'batch_mean'), or use "
                "reference_compatible=False for the per-pair forms."
            )
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {loss_type!r}: use one of {list(LOSS_TYPES)}.")
        self.temperature = check_temperatures(temperature)
        base_temperature = check_temperature("base_temperature", base_temperature)
        if num_levels is not None and num_levels < 1:
            raise ValueError(f"num_levels must be >= 1 (or None), got {num_levels}.")
        self.supcon_form = check_supcon_form(supcon_form)
        self.instance_weight = check_instance_weight(instance_weight)
        self.hierarchy_margin = check_hierarchy_margin(hierarchy_margin)
        self.loss_type = loss_type
        self.layer_penalty = resolve_layer_penalty(layer_penalty)
        self.num_levels = num_levels
        self.normalize_weights = normalize_weights
        self.reference_compatible = reference_compatible
        self.base_temperature = float(base_temperature)
        self.gather_distributed = gather_distributed
        self.hce_form = hce_form or ("batch_mean" if reference_compatible else "anchor_mean")
        self.check_values = check_values
        self.level_balance = check_level_balance(level_balance, reference_compatible)
        check_combination(self)
        if num_levels is not None:
            layer_penalties(num_levels, self.layer_penalty)  # fail early on a bad penalty
            check_level_count(self.temperature, num_levels)

    def extra_repr(self) -> str:
        """The options the loss keeps, as ``print(loss)`` shows them."""
        return describe_options(self)

    def level_weights(
        self,
        num_levels: int,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor | None:
        """The weights of the level terms, coarse to fine (``None``: uniform mean).

        Made on ``device`` in ``dtype`` (the loss's), so that nothing is copied to the
        device per step and float64 inputs are weighted in float64. With
        ``instance_weight > 0`` the divisor includes the instance level's weight.
        """
        return hmlc_weights(self, num_levels, dtype, device)[0]

    def _prepare(
        self,
        out0: Tensor,
        out1: Tensor,
        labels: Tensor,
        masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Checked ``[2B, L]`` paths, normalised rows and checked masks; see prepare_inputs."""
        prepared = prepare_inputs(
            out0,
            out1,
            labels,
            self.num_levels,
            self.check_values,
            self.gather_distributed,
            masks,
        )
        check_level_count(self.temperature, prepared[0].shape[1])
        return prepared

    def _loss(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, level_losses)`` of rows ``[2B, D]`` or ``[2B, L, D]``, paths ``[2B, L]``."""
        return self._batch_loss(gather_for_loss(features, labels, self.gather_distributed))

    def _memory_loss(
        self,
        features: Tensor,
        labels: Tensor,
        masks: Tensor | None,
        memory: object,
        memory_masks: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """``_loss`` of normalised rows ``[2B, D]`` with checked masks and memory rows."""
        if self.reference_compatible:
            if memory is not None or memory_masks is not None:
                raise ValueError(
                    "reference_compatible=True takes no memory rows: the reference "
                    "implementation has no memory bank. Use the default mode with a memory."
                )
            if masks is not None:
                features = mask_levels(features, masks)
            return self._loss(features, labels)
        batch, shared_masks = memory_batch(
            features,
            labels,
            masks,
            memory,
            memory_masks,
            self.gather_distributed,
            self.check_values,
        )
        return self._batch_loss(batch, shared_masks)

    def _batch_loss(self, batch: LossBatch, masks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(loss, level_losses)`` of a loss batch; ``masks`` ``[1, L, D]`` still to apply."""
        dtype, device = batch.contrast.dtype, batch.contrast.device
        num_levels = batch.contrast_labels.shape[1]
        weights, instance = hmlc_weights(self, num_levels, dtype, device)
        if self.reference_compatible:
            assert isinstance(self.temperature, float)  # check_combination
            share = reference_level_terms(
                batch.contrast,
                batch.contrast_labels,
                batch.sample_index,
                self.temperature,
                self.base_temperature,
                self.check_values,
            )
            value = share.detach()
            loss = aggregate_levels(share, value, self.loss_type, weights)
        elif self.loss_type != "hmc" and self.hce_form != "batch_mean":
            constrained, unconstrained, is_anchor = self._pair_terms(batch, masks)
            # One reduction for both: the constrained terms carry the loss, the plain
            # SupCon terms are the reported level losses.
            share, value = reduce_level_terms(
                torch.cat([constrained, unconstrained]),
                torch.cat([is_anchor, is_anchor]),
                batch,
                self.level_balance,
            )
            loss = aggregate_levels(share[:num_levels], value[:num_levels], "hmc", weights)
            value = value[num_levels:]
        else:
            share, value = self._level_terms(batch, masks)
            loss = aggregate_levels(share, value, self.loss_type, weights)
        if instance is not None:  # not constrained, and bounds no label level
            finest = level_temperature(self.temperature, num_levels - 1)
            loss, value = add_instance_term(loss, value, instance, batch, masks, finest)
        return loss, value

    def _pair_terms(self, batch: LossBatch, masks: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-pair HiConE terms; masked rows take the fast masked forms.

        With the hierarchy margin every form takes the dense per-level path (O(L N^2)
        memory): the margin gives each level its own denominator also when the features
        are shared, and the masked fast paths have no offsets.
        """
        groups = build_level_groups(batch.contrast_labels)
        masked = masks is not None or batch.anchors.dim() == 3
        margin = self.hierarchy_margin > 0
        if masked and self.hce_form == "pair" and not margin:
            return masked_pair_level_losses(
                batch.anchors,
                batch.contrast,
                batch.anchor_index,
                groups,
                self.temperature,
                masks,
                self.check_values,
            )
        logits = log_denominator = None
        if masks is not None:  # same_pair / anchor_mean: every pair's level similarities
            dims = shared_mask_dims(masks, masks.shape[2]) if self.check_values else None
            if dims is not None and not margin:
                logits, log_denominator = shared_mask_logits(
                    batch.anchors, batch.contrast, batch.anchor_index, dims, self.temperature
                )
            else:
                batch = mask_batch(batch, masks)
        if margin:
            logits, log_denominator = margin_logits(
                batch.anchors,
                batch.contrast,
                batch.anchor_index,
                self.temperature,
                self._margin_bias(batch, groups),
            )
        return pair_constrained_level_losses(
            batch.anchors,
            batch.contrast,
            batch.anchor_index,
            groups,
            self.temperature,
            form=self.hce_form,
            logits=logits,
            log_denominator=log_denominator,
        )

    def _margin_bias(self, batch: LossBatch, groups: LevelGroups) -> Tensor:
        """``[L, Na, Nc]`` denominator offsets of the hierarchy margin (``_margin.py``)."""
        if groups.ids.shape[1] < 2:
            raise ValueError(
                f"hierarchy_margin={self.hierarchy_margin} needs label paths with L >= 2 "
                "levels (coarse to fine), got 1: with one level no negative lies on another "
                "branch. Pass the label paths, or use hierarchy_margin=0."
            )
        return level_margin_bias(
            groups,
            batch.anchor_index,
            self.hierarchy_margin,
            self.temperature,
            batch.contrast.dtype,
        )

    def _level_terms(self, batch: LossBatch, masks: Tensor | None) -> tuple[Tensor, Tensor]:
        """The L_out group-sum level terms (masked rows: the fast masked ones), or L_in."""
        args = (batch.anchor_index, build_level_groups(batch.contrast_labels), self.temperature)
        if self.hierarchy_margin > 0:  # the general path: the fast masked one has no offsets
            if masks is not None:
                batch = mask_batch(batch, masks)
            loss, is_anchor = anchor_level_losses(
                batch.anchors,
                batch.contrast,
                *args,
                denominator_bias=self._margin_bias(batch, args[1]),
            )
        elif self.supcon_form == "in":  # no fast masked path: shared masks are applied first
            loss, is_anchor = in_batch_losses(batch, masks, args[1], self.temperature)
        elif masks is None and batch.anchors.dim() == 2:
            loss, is_anchor = anchor_level_losses(batch.anchors, batch.contrast, *args)
        elif masks is None:
            loss, is_anchor = level_feature_losses(batch.anchors, batch.contrast, *args)
        else:
            loss, is_anchor = masked_level_losses(
                batch.anchors, batch.contrast, *args, masks, masks, self.check_values
            )
        return reduce_level_terms(loss, is_anchor, batch, self.level_balance)


class HMLCLoss(_HierarchicalLoss):
    """Hierarchical multi-label contrastive loss of Zhang et al. [0]: HMC, HCE and HMCE.

    Labels are label paths ``[B, L]``, coarse to fine (``-1`` = unknown level). At level
    ``l`` two samples are positives when their paths agree from the root down to ``l``;
    the instance level is implicit, because the other view of a sample is always a
    positive, so never append an instance-id column (``instance_weight > 0`` adds an
    explicit instance term as well). Every level gets a supervised contrastive term
    (SupCon's L_out form, or L_in) and the terms are aggregated:

    - ``hmc``: weighted by ``lambda_l = layer_penalty(1 / k)``, ``k = L - l`` counting from
      the finest level (k = 1), so an increasing penalty favours finer levels;
    - ``hce``: the hierarchy constraint (HiConE: pairs that share fewer labels may never
      cost less), then averaged;
    - ``hmce``: both.

    ``hce_form`` says where the constraint acts:

    - ``"anchor_mean"`` (default): inside the sum over positive pairs, as the paper's
      HiConE equation puts it, with ``L(l', i)`` read as the anchor's level term. The
      loss of anchor ``i``'s pair ``(i, p)`` at level ``l`` is raised to the anchor's
      largest finer level term,
      ``max(l_l(i, p), max_{l' finer} mean_{p' in P_l'(i)} l_l'(i, p'))``. On a
      class-clustered embedding this binds (same-class pairs in a coarse term that sit
      closer than the anchor's mean fine pair are raised), so ``hmce`` differs from
      ``hmc``. Chosen over ``"pair"`` on validation evidence (METHOD.md). Memory: a few
      ``[L, N, N]`` tensors (N rows of the batch, all ranks).
    - ``"pair"``: the same with ``L(l', i)`` read as the anchor's WORST finer pair,
      ``max(l_l(i, p), max_{l' finer} max_{p' in P_l'(i)} l_l'(i, p'))``: a stronger
      bound. Memory: O(N^2) without masks, a few ``[L, N, N]`` tensors with masks.
    - ``"same_pair"``: per pair, bounded by the SAME pair's losses at the finer levels
      where it is a positive. A pair's loss depends on the level only through per-level
      masks, so without masks this equals ``hmc``'s terms (with ``hce``'s weights);
      with masks it binds.
    - ``"batch_mean"``: on the batch-mean level terms, each raised to the largest term
      of the finer levels, as the reference code does. On a class-clustered embedding
      the coarse terms are already the larger ones, so this form rarely binds.

    The default follows the paper's formula: every anchor counts at every level and the
    level terms are averaged (``normalize_weights=True`` divides by ``sum(lambda)``, so
    one level gives exactly ``SupConLoss``; ``False`` divides by ``L`` as written in the
    paper, which only rescales the loss). One similarity matrix serves every level (one
    per level with per-level temperatures or masks), and positives of all levels come
    from one grouped pass over the label paths.

    ``reference_compatible=True`` reproduces the public reference implementation of the
    authors instead, given the same normalised features (the reference additionally
    needs an instance-id column, which this loss adds implicitly). It differs from the
    paper's formula in three ways: after each level (finest first) only one sample per
    distinct label prefix is kept for the coarser levels (anchors, positives and
    denominators; the first sample, in batch order, of the smallest label path under the
    prefix, because the reference re-orders the kept samples by label), each term is
    multiplied by ``temperature / base_temperature``, the constraint acts on the
    batch-mean terms (``hce_form="batch_mean"``), and the sum is divided by ``L + 1``
    (the label columns including the instance id) instead of being a weighted mean.
    ``-1`` labels are not supported in that mode.

    - [0] Use All The Labels: A Hierarchical Multi-Label Contrastive Learning Framework,
      Zhang et al., CVPR 2022, https://arxiv.org/abs/2204.13207

    Args:
        loss_type: ``"hmc"``, ``"hce"`` or ``"hmce"``.
        temperature: Scales the cosine similarities, ``> 0`` and finite: a float, or one
            per level, coarse to fine (level ``l``'s logits are ``s / T_l``; as many
            values as label levels, checked at each call; the instance term takes the
            finest level's). See ``_temperature.py``.
        layer_penalty: ``"exp"`` (default, as in the authors' training script),
            ``"pow2"`` (the reference implementation's default), ``"uniform"``, a
            callable mapping a float tensor of ``1 / k`` values to weights, or the
            weights themselves, coarse to fine (``[0.0, 1.0]``: the finest level only).
        num_levels: If given, labels must have exactly this many levels.
        normalize_weights: Divide by ``sum(lambda)`` (default) rather than by ``L``.
        reference_compatible: Reproduce the reference implementation (see above).
        base_temperature: The reference's base temperature (only used when
            ``reference_compatible``).
        gather_distributed: Gather embeddings AND labels from all ranks. The returned
            value equals the single-process loss on the global batch on every rank, and
            after DDP's gradient averaging so do the gradients. Every rank needs the
            same batch size.
        hce_form: Where ``hce``/``hmce`` apply the constraint: ``"anchor_mean"``
            (default), ``"pair"``, ``"same_pair"`` or ``"batch_mean"`` (see above).
            ``None`` is ``"anchor_mean"``, or ``"batch_mean"`` with
            ``reference_compatible=True``, which rejects the per-pair forms. Ignored for
            ``hmc``.
        check_values: Check values as well as shapes (default): NaN/Inf embeddings or
            masks, embeddings whose norm over- or underflows, labels below -1, bad
            penalty values, ``-1`` labels in ``reference_compatible`` mode, and, with
            ``gather_distributed``, the same error on every rank and equal batch sizes.
            These checks synchronise the host with an accelerator once per step;
            ``False`` skips them, so that ``forward`` never synchronises (see METHOD.md).
        level_balance: ``"none"`` (default): each level's term is the mean over its
            anchors. ``"class"`` (ours, our reading of the imbalanced coarse classes
            that Ott et al. model): the mean over the level's classes (label prefixes with an anchor)
            of the mean over each class's anchors, so a rare coarse class weighs as much
            as a frequent one; counts over the global batch, memory rows never count.
        supcon_form: ``"out"`` (default): each level's term is SupCon's L_out (Khosla et
            al., eq. 2); ``"in"``: L_in (eq. 3), ``-log`` of the positives' mean
            probability. ``"in"`` has no per-pair losses, so with ``hce``/``hmce`` it
            needs ``hce_form="batch_mean"`` (see ``_supcon_in.py``, ``_options.py``).
        instance_weight: ``w >= 0``. ``w > 0`` adds an instance level below the finest:
            NT-Xent with the other view as the only positive, on the finest level's
            logits; the loss is ``(sum_l lambda_l L_l + w L_inst) / (Z + w)`` with
            ``Z`` the divisor without it (``sum(lambda)`` or ``L``). It is not
            constrained and bounds no level; ``level_losses`` then ends with it (``[L +
            1]``). Memory rows are never its positives (see ``_instance.py``).
        hierarchy_margin: A cosine-similarity offset ``m >= 0`` (default 0, off; ours,
            docs/METHOD.md "The hierarchy margin"): in level ``l``'s denominator a row
            whose prefix differs from the anchor's at ``k`` levels coarser than ``l``
            counts as if its similarity were ``k * m`` higher, so it is pushed further
            away; positives' logits are unchanged and the coarsest term has no offset.
            The finest term is then :class:`SupConLoss` with the same margin. Needs
            ``L >= 2`` levels and the L_out form; every ``hce_form`` takes the dense
            per-level path (O(L N^2) memory) and the masked fast paths are not used.

    Raises:
        ValueError: For an unknown ``loss_type``, ``layer_penalty``, ``hce_form`` or
            ``supcon_form``, a temperature that is not finite and > 0 (or as many as the
            label levels, at the call), ``num_levels < 1``, an unknown ``level_balance``,
            a negative ``instance_weight``, a per-pair ``hce_form``,
            ``level_balance="class"``, per-level temperatures, ``supcon_form="in"`` or
            ``instance_weight > 0`` or ``hierarchy_margin > 0`` with
            ``reference_compatible=True``, ``supcon_form="in"`` with a per-pair form or
            with ``hierarchy_margin > 0``, or a negative or non-finite
            ``hierarchy_margin``; at the call, ``hierarchy_margin > 0`` with one level.

    Examples:
        >>> loss_fn = HMLCLoss(loss_type="hmce", temperature=0.1)
        >>> out0, out1 = torch.randn(6, 16), torch.randn(6, 16)
        >>> labels = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 2], [1, 2], [1, 3]])
        >>> loss = loss_fn(out0, out1, labels)
        >>> loss, level_losses = loss_fn(out0, out1, labels, return_level_losses=True)
        >>> level_losses.shape  # detached per-level terms, coarse to fine, for logging
        torch.Size([2])

        With as many anchors in every class, ``level_balance="class"`` changes nothing:

        >>> even = torch.tensor([[0, 0], [0, 0], [1, 1], [1, 1], [2, 2], [2, 2]])
        >>> balanced = HMLCLoss("hmce", level_balance="class")(out0, out1, even)
        >>> torch.allclose(balanced, loss_fn(out0, out1, even))
        True

        Per-level feature masks (G-HMLC / A-HMLC, Ott et al.) come from a mask head, a
        part of the model; all-ones masks give the unmasked loss:

        >>> masks = torch.ones(1, 2, 16)  # [1 | B | 2B, L, D]
        >>> torch.allclose(loss_fn(out0, out1, labels, masks=masks), loss)
        True

        Per-level temperatures (coarse to fine), L_in and an explicit instance term:

        >>> options = HMLCLoss("hmc", [0.2, 0.1], supcon_form="in", instance_weight=1.0)
        >>> options(out0, out1, labels, return_level_losses=True)[1].shape  # + instance
        torch.Size([3])
    """

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
            out0: ``[B, D]`` projections of the first view.
            out1: ``[B, D]`` projections of the second view.
            labels: ``[B, L]`` label paths, coarse to fine, ``-1`` for unknown
                (``[B]`` is one level).
            masks: Optional per-level feature masks from a mask head: ``[1, L, D]``
                (shared by all rows), ``[B, L, D]`` (per sample, both views) or
                ``[2B, L, D]`` (per row of ``cat([out0, out1])``). Level h's term is
                computed on ``normalize(normalize(z) * masks[:, h])``. Gradients flow
                through the masks. ``None`` (or all ones) is the unmasked loss.
            memory: Optional ``(features [K, D], labels [K, L])`` extra contrast rows,
                e.g. from :class:`~lightly_hmlc.models.modules.HierarchicalMemoryBank`:
                positives and negatives of the batch's anchors at every level, never
                anchors themselves (``-1`` labels allowed; ``K = 0`` is no memory).
            memory_masks: Masks of the memory rows, ``[1 | K, L, D]``; ``None`` reuses
                shared ``[1, L, D]`` masks (per-row masks need memory masks).
            return_level_losses: Also return the detached ``[L]`` per-level terms
                (coarse to fine, before the HCE constraint; ``[L + 1]``, the instance
                term last, with ``instance_weight > 0``), e.g. for logging.

        Returns:
            The scalar loss, or ``(loss, level_losses)`` with ``return_level_losses``.
        """
        # Masks are checked with the inputs (one error decision for all ranks) but
        # applied later: the fast masked level terms take the rows and masks apart.
        paths, features, masks = self._prepare(out0, out1, labels, masks)
        if masks is None and memory is None and memory_masks is None:
            loss, level_losses = self._loss(features, paths)
        else:
            loss, level_losses = self._memory_loss(features, paths, masks, memory, memory_masks)
        return (loss, level_losses) if return_level_losses else loss
