"""G-HMLC and A-HMLC: HMLC level terms computed on per-level feature masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.loss._batch import check_memory, loss_batch, mask_levels
from lightly_hmlc.loss._features import check_masks, prepare_inputs
from lightly_hmlc.loss.hmlc import HMLCLoss, LayerPenalty


class MaskedHMLCLoss(HMLCLoss):
    """HMLC with a feature-mask head in front of the level terms (Ott et al. [0]).

    A convenience for one-line use: the loss owns ``mask_head`` and runs the chain

    ``masks = mask_head(z, labels.repeat(2, 1))`` on ``z = normalize(cat([out0, out1]))``,
    ``loss = HMLCLoss(...)(out0, out1, labels, masks=masks) + mask_head.regularization(masks)``.

    Level ``h``'s supervised contrastive term is computed on ``normalize(z * m_h)``; the
    terms are aggregated exactly as in :class:`HMLCLoss` (``hmc``, ``hce`` or ``hmce``).
    With all-ones masks the loss equals :class:`HMLCLoss`. Gradients flow through soft
    masks; hard masks pass none. Any ``nn.Module`` following the mask-head contract works
    (``forward(z, labels) -> [2B | 1, L, D]`` and optionally
    ``regularization(masks) -> scalar``), so a new head needs no change here. The head
    gets the L2-normalised projections, so the GMM head's statistics do not depend on
    the scale of ``z``. In a model of your own, call the head and pass ``masks=`` to
    :class:`HMLCLoss` instead: the chain is the same.

    The head is a submodule: a trainable head (A-HMLC) must be in the optimizer, e.g.
    keep the loss as an attribute of the LightningModule or pass
    ``loss_fn.parameters()`` to the optimizer. The loss itself keeps no per-call state.

    - [0] Feature Identification for Hierarchical Contrastive Learning, Ott et al.,
      arXiv 2510.00837

    Args:
        mask_head: The module that produces the per-level masks.
        loss_type, temperature, layer_penalty, hce_form, hierarchy_margin,
        num_levels, gather_distributed, check_values: As in :class:`HMLCLoss`.

    Examples:
        >>> import torch
        >>> from lightly_hmlc.loss import HMLCLoss
        >>> class OnesHead(nn.Module):
        ...     def forward(self, z, labels=None):
        ...         return torch.ones(1, 2, z.shape[1])
        ...     def regularization(self, masks):
        ...         return masks.new_zeros(())
        >>> loss_fn = MaskedHMLCLoss(OnesHead(), loss_type="hmce")
        >>> out0, out1 = torch.randn(4, 8), torch.randn(4, 8)
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
        >>> torch.allclose(loss_fn(out0, out1, labels), HMLCLoss("hmce")(out0, out1, labels))
        True
    """

    def __init__(
        self,
        mask_head: nn.Module,
        loss_type: str = "hmce",
        temperature: float = 0.1,
        layer_penalty: str | Sequence[float] | LayerPenalty = "exp",
        hce_form: str = "anchor_mean",
        hierarchy_margin: float = 0.0,
        num_levels: int | None = None,
        gather_distributed: bool = False,
        check_values: bool = True,
    ) -> None:
        super().__init__(
            loss_type=loss_type,
            temperature=temperature,
            layer_penalty=layer_penalty,
            hce_form=hce_form,
            hierarchy_margin=hierarchy_margin,
            num_levels=num_levels,
            gather_distributed=gather_distributed,
            check_values=check_values,
        )
        if not isinstance(mask_head, nn.Module):
            raise ValueError(
                f"mask_head must be an nn.Module, got {type(mask_head).__name__}: see "
                "lightly_hmlc.models.modules.FeatureMaskHead for the contract."
            )
        self.mask_head = mask_head

    def forward(  # type: ignore[override]  # the head makes the masks
        self,
        out0: Tensor,
        out1: Tensor,
        labels: Tensor,
        memory: tuple[Tensor, Tensor] | None = None,
        memory_masks: Tensor | None = None,
        return_level_losses: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Runs the head on both views and computes the masked loss plus its regulariser.

        Args:
            out0: ``[B, D]`` projections of the first view.
            out1: ``[B, D]`` projections of the second view.
            labels: ``[B, L]`` label paths, coarse to fine, ``-1`` for unknown.
            memory: Optional ``(features [K, D], labels [K, L])`` extra contrast rows
                (see :class:`HMLCLoss`).
            memory_masks: Masks of the memory rows; ``None`` uses shared masks as they
                are and, for per-row masks, runs the head on the memory rows (without
                labels, so the head's statistics see only the batch).
            return_level_losses: Also return the detached ``[L]`` per-level terms.

        Returns:
            The scalar loss, or ``(loss, level_losses)`` with ``return_level_losses``.
        """
        paths, features, _ = prepare_inputs(
            out0, out1, labels, self.num_levels, self.check_values, self.gather_distributed
        )
        num_levels = paths.shape[1]
        masks = self.mask_head(features, paths)
        checked = check_masks(
            features, masks, num_levels, "The mask head's output", self.check_values
        )
        bank = check_memory(memory, features, num_levels, self.check_values)
        if bank is not None and memory_masks is None and checked.shape[0] > 1:
            # Per-row masks: the memory rows get theirs from the same head.
            memory_masks = self.mask_head(bank[0])
        batch = loss_batch(
            features,
            paths,
            checked,
            memory if bank is None else bank,  # validated once per call
            memory_masks,
            self.gather_distributed,
            self.check_values,
        )
        loss, level_losses = self._batch_loss(batch)
        regularize = getattr(self.mask_head, "regularization", None)
        if callable(regularize):
            loss = loss + regularize(masks)
        return (loss, level_losses) if return_level_losses else loss

    def level_embeddings(self, z: Tensor) -> Tensor:
        """The per-level embeddings ``[B, L, D]`` that the level terms contrast for
        projections ``z`` [B, D]: ``normalize(normalize(z) * masks[:, h])`` with the
        head's masks of ``z`` (no labels), e.g. to probe what each level's features carry.
        """
        features = F.normalize(z, dim=-1)
        return mask_levels(features, self.mask_head(features))


class _HeadBuildingLoss(MaskedHMLCLoss):
    """A masked loss that builds its own head from ``num_levels``, ``dim`` and options.

    ``hierarchy_margin=None`` takes the class's ``default_hierarchy_margin``: 0.2 for
    G-HMLC and A-HMLC, chosen on validation (``docs/METHOD.md``), 0 for other heads.
    """

    default_hierarchy_margin: float = 0.0

    def __init__(
        self,
        num_levels: int,
        dim: int,
        loss_type: str = "hmce",
        temperature: float = 0.1,
        layer_penalty: str | Sequence[float] | LayerPenalty = "exp",
        hce_form: str = "anchor_mean",
        hierarchy_margin: float | None = None,
        gather_distributed: bool = False,
        check_values: bool = True,
        **head_kwargs: Any,
    ) -> None:
        if hierarchy_margin is None:
            hierarchy_margin = self.default_hierarchy_margin
        super().__init__(
            self._build_head(num_levels=num_levels, dim=dim, **head_kwargs),
            loss_type=loss_type,
            temperature=temperature,
            layer_penalty=layer_penalty,
            hce_form=hce_form,
            hierarchy_margin=hierarchy_margin,
            num_levels=num_levels,
            gather_distributed=gather_distributed,
            check_values=check_values,
        )

    @staticmethod
    def _build_head(num_levels: int, dim: int, **head_kwargs: Any) -> nn.Module:
        raise NotImplementedError


class GHMLCLoss(_HeadBuildingLoss):
    """G-HMLC: HMLC on hard per-level masks picked by a Gaussian mixture (Ott et al.).

    Builds a :class:`~lightly_hmlc.models.modules.GMMFeatureMaskHead` and composes it
    with the HMLC level terms; see :class:`MaskedHMLCLoss`.

    Args:
        num_levels: L, the depth of the label paths.
        dim: D, the width of the projections.
        loss_type, temperature, layer_penalty, hce_form, num_levels,
        gather_distributed, check_values: As in :class:`HMLCLoss`.
        hierarchy_margin: As in :class:`HMLCLoss`, but on by default: ``None`` means
            0.2, the margin chosen on validation (``docs/METHOD.md``). 0 turns it off.
        **head_kwargs: Passed to ``GMMFeatureMaskHead`` (e.g. ``refit_every``).

    Examples:
        >>> import torch
        >>> loss_fn = GHMLCLoss(num_levels=2, dim=8)
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
        >>> loss, level_losses = loss_fn(
        ...     torch.randn(4, 8), torch.randn(4, 8), labels, return_level_losses=True
        ... )
        >>> loss_fn.mask_head.masks.shape, level_losses.shape
        (torch.Size([2, 8]), torch.Size([2]))
    """

    default_hierarchy_margin = 0.2

    @staticmethod
    def _build_head(num_levels: int, dim: int, **head_kwargs: Any) -> nn.Module:
        from lightly_hmlc.models.modules.gmm_mask_head import GMMFeatureMaskHead

        return GMMFeatureMaskHead(num_levels=num_levels, dim=dim, **head_kwargs)


class AHMLCLoss(_HeadBuildingLoss):
    """A-HMLC: HMLC on soft per-level masks from attention heads (Ott et al.).

    Builds a :class:`~lightly_hmlc.models.modules.AttentionMaskHead` and composes it
    with the HMLC level terms; see :class:`MaskedHMLCLoss`. The head is trained jointly:
    include the loss's parameters in the optimizer.

    Args:
        num_levels: L, the depth of the label paths.
        dim: D, the width of the projections.
        loss_type, temperature, layer_penalty, hce_form, num_levels,
        gather_distributed, check_values: As in :class:`HMLCLoss`.
        hierarchy_margin: As in :class:`GHMLCLoss`: ``None`` (default) means 0.2.
        **head_kwargs: Passed to ``AttentionMaskHead`` (e.g. ``gate="softmax"``).

    Examples:
        >>> import torch
        >>> loss_fn = AHMLCLoss(num_levels=2, dim=8)
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
        >>> loss = loss_fn(torch.randn(4, 8), torch.randn(4, 8), labels)
        >>> loss.backward()
        >>> any(p.grad is not None for p in loss_fn.parameters())
        True
    """

    default_hierarchy_margin = 0.2

    @staticmethod
    def _build_head(num_levels: int, dim: int, **head_kwargs: Any) -> nn.Module:
        from lightly_hmlc.models.modules.attention_mask_head import AttentionMaskHead

        return AttentionMaskHead(num_levels=num_levels, dim=dim, **head_kwargs)


class RegisteredHeadHMLCLoss(_HeadBuildingLoss):
    """HMLC on the masks of any registered mask head, chosen by its registry name.

    The one-line way to try a head in the suite or in a script without writing a loss:
    ``create_loss("masked-hmlc", head="block-mask", num_levels=L, dim=D, nested=True)``
    builds ``create_head("block-mask", num_levels=L, dim=D, nested=True)`` and composes
    it with the HMLC level terms; see :class:`MaskedHMLCLoss`.

    Args:
        num_levels: L, the depth of the label paths.
        dim: D, the width of the projections.
        head: The head's registry name (``lightly_hmlc.registry.list_components()``).
        loss_type, temperature, layer_penalty, hce_form, hierarchy_margin,
        num_levels, gather_distributed, check_values: As in :class:`HMLCLoss`.
        **head_kwargs: Passed to the head.

    Examples:
        >>> import torch
        >>> loss_fn = RegisteredHeadHMLCLoss(num_levels=2, dim=8, head="block-mask")
        >>> type(loss_fn.mask_head).__name__
        'BlockMaskHead'
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
        >>> loss_fn(torch.randn(4, 8), torch.randn(4, 8), labels).dim()
        0
    """

    def __init__(self, num_levels: int, dim: int, head: str = "block-mask", **kwargs: Any) -> None:
        super().__init__(num_levels, dim, head=head, **kwargs)

    @staticmethod
    def _build_head(num_levels: int, dim: int, **head_kwargs: Any) -> nn.Module:
        from lightly_hmlc.registry import create_head

        name = head_kwargs.pop("head")
        return create_head(name, num_levels=num_levels, dim=dim, **head_kwargs)
