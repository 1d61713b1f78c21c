"""G-HMLC's feature-mask head: a Gaussian mixture over the embedding dimensions.

Ott et al. (https://arxiv.org/abs/2510.00837) produce one hard mask per hierarchy level with
a GMM. The head does the schedule and the wiring; its parts are ``prefix_statistics``
(running statistics), ``_fisher`` (descriptors), ``_gmm`` (EM fit), ``_assignment`` (matching
and masks) and ``_level_estimate`` (how many levels: BIC or DP-GMM).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.models.modules._arguments import check_int
from lightly_hmlc.models.modules._assignment import (
    Assignment,
    assign_masks,
    check_assignment_options,
)
from lightly_hmlc.models.modules._fisher import (
    DescriptorNormalization,
    Relevance,
    check_descriptor_options,
    fisher_descriptors,
    fit_points,
    relevance_scores,
)
from lightly_hmlc.models.modules._gmm import (
    CovarianceType,
    GaussianMixtureFit,
    check_fit_options,
    fit_gaussian_mixture,
    select_n_components_bic,
)
from lightly_hmlc.models.modules._level_estimate import (
    DEFAULT_WEIGHT_THRESHOLD,
    LevelEstimator,
    check_estimate_options,
    estimate_components,
    select_n_components_dpgmm,
)
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead
from lightly_hmlc.models.modules.prefix_statistics import (
    Float64BuffersMixin,
    LabelPrefixStatistics,
)

__all__ = [
    "GMMFeatureMaskHead",
    "GaussianMixtureFit",
    "fit_gaussian_mixture",
    "select_n_components_bic",
    "select_n_components_dpgmm",
]

# Buffers that moved into the ``statistics`` submodule; old checkpoints name them directly.
_STAT_NAMES = ("class_keys", "num_classes", "class_count", "class_sum", "level_sumsq")


class GMMFeatureMaskHead(Float64BuffersMixin, FeatureMaskHead):
    """Hard per-level feature masks from a Gaussian mixture over embedding dimensions (G-HMLC).

    Following Ott et al. [0], a Gaussian Mixture Model with one component per hierarchy level
    assigns every embedding dimension to one level, and the level-h term of HMLC [1] only
    sees the dimensions of mask M_h. The choices below are ours (the paper's public text
    does not give them); see ``docs/METHOD.md``.

    Dimension d is the point of its log Fisher ratios at the L levels, from running class
    statistics of ``z / |z|`` (classes = label prefixes; ``relevance="conditional"``
    measures what level l separates beyond level l-1). A GMM with L components clusters
    the D points; components are matched to levels exactly (``linear_sum_assignment``),
    each dimension goes to its most responsible component's level (every level keeps
    ``min_dims_per_level``). By default (``nested=True``) the masks are cumulative, coarse
    to fine: level l sees the dimensions of levels 0..l, the finest level all of them;
    ``nested=False`` gives the partition.

    Schedule: every forward call in training mode with labels is one step; the masks are
    refitted after ``warmup_steps`` steps and then every ``refit_every`` steps, all ones
    (plain HMLC) before the first fit. Eval mode updates nothing, nor does a call under
    ``torch.inference_mode()``. A step never reads the
    device; a refit does. Under DDP every rank refits on the merged statistics of all
    ranks at the same step, so all hold identical masks (see :class:`LabelPrefixStatistics`).

    - [0] Ott et al., 2025, https://arxiv.org/abs/2510.00837
    - [1] Zhang et al., Use All The Labels, CVPR 2022, https://arxiv.org/abs/2204.13207

    Attributes:
        masks: Buffer [L, D] of 0/1 masks, coarse -> fine.
        step: Buffer, number of training steps seen.
        fitted: Buffer, whether the masks come from a fit.
        descriptors: Buffer [D, L], the descriptors of the last fit (NaN before).
        estimated_num_levels: Buffer, the last estimate of the number of levels (-1 before).
        bic_scores: Buffer [max_levels_to_try], BIC per number of components (NaN before).
        dpgmm_weights: Buffer [max_levels_to_try], the DP-GMM's sorted mixing weights (NaN
            before a ``"dpgmm"`` estimate).
        last_fit: The :class:`GaussianMixtureFit` of the last refit (not saved).
        statistics: The :class:`LabelPrefixStatistics` the descriptors are computed from
            (its buffers are also readable as ``class_keys``, ``num_classes``,
            ``class_count``, ``class_sum`` and ``level_sumsq``).

    Examples:
        >>> head = GMMFeatureMaskHead(num_levels=2, dim=8, warmup_steps=2, refit_every=2)
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]]).repeat(4, 1)
        >>> generator = torch.Generator().manual_seed(0)
        >>> for _ in range(2):
        ...     masks = head(torch.randn(16, 8, generator=generator), labels)
        >>> masks.shape, bool(head.fitted)
        (torch.Size([1, 2, 8]), True)
        >>> head.masks[-1].tolist()  # nested (default): the finest level sees every dim
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
        >>> bool((head.masks[0] <= head.masks[1]).all())  # and the coarse dims are a subset
        True
    """

    masks: Tensor
    step: Tensor
    fitted: Tensor
    descriptors: Tensor
    estimated_num_levels: Tensor
    bic_scores: Tensor
    dpgmm_weights: Tensor
    _float64_buffers = ("descriptors", "bic_scores", "dpgmm_weights")

    def __init__(
        self,
        num_levels: int,
        dim: int,
        *,
        refit_every: int = 100,
        warmup_steps: int = 100,
        momentum: float = 0.99,
        max_classes_per_level: int = 1024,
        relevance: Relevance = "conditional",
        descriptor_normalization: DescriptorNormalization = "none",
        fisher_floor: float = 1e-6,
        assignment: Assignment = "argmax",
        assignment_threshold: float = 0.5,
        min_dims_per_level: int = 1,
        covariance_type: CovarianceType = "full",
        n_init: int = 3,
        max_iter: int = 100,
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        seed: int = 0,
        estimate_levels: bool | LevelEstimator = False,
        max_levels_to_try: int | None = None,
        level_weight_threshold: float = DEFAULT_WEIGHT_THRESHOLD,
        sync_distributed: bool = True,
        normalize_input: bool = True,
        nested: bool = True,
    ) -> None:
        """Builds the head; masks start as all ones.

        Args:
            num_levels: Number of hierarchy levels L (= number of GMM components).
            dim: Embedding width D; needs D >= L * min_dims_per_level.
            refit_every: Training steps between refits (>= 1).
            warmup_steps: Training steps before the first fit (>= 0): the first fit runs at
                step ``max(warmup_steps, 1)``, the next ones every ``refit_every`` steps.
            momentum: Decay of the statistics per step, in (0, 1]; 1 keeps plain sums.
            max_classes_per_level: Capacity of the class tables; a refit raises a ValueError
                when more label prefixes than this were seen at one level. Memory is about
                16 * L * max_classes_per_level * D bytes.
            relevance: ``"conditional"`` (between-class variance around the parent-class
                means) or ``"marginal"`` (around the global mean).
            descriptor_normalization: ``"none"`` fits on the log Fisher ratios;
                ``"center"`` subtracts each dimension's mean over levels first (relative
                relevance; the GMM then runs on the L-1 free coordinates).
            fisher_floor: Fisher ratios are clamped to [fisher_floor, 1 / fisher_floor]
                before the log, which bounds the descriptors of dead or constant dimensions.
            assignment: ``"argmax"``: each dimension goes to one level (hard partition).
                ``"threshold"``: in addition, a dimension joins every level whose component
                has responsibility >= ``assignment_threshold`` (masks may overlap).
            assignment_threshold: Threshold of ``assignment="threshold"``, in (0, 1].
            min_dims_per_level: Minimum number of dimensions per level mask (>= 1).
            covariance_type: ``"full"`` or ``"diag"`` GMM covariances.
            n_init: GMM restarts; the best log-likelihood wins.
            max_iter: Maximum EM iterations.
            tol: EM convergence threshold (change of mean log-likelihood per dimension).
            reg_covar: Added to the covariance diagonals.
            seed: Seed of the EM initialisation; fits are deterministic for a given seed.
            estimate_levels: ``"bic"`` (or True) or ``"dpgmm"``: every refit also estimates
                the number of levels the embedding supports, by BIC over 1..max components
                or by a Dirichlet-process GMM, and stores it in ``estimated_num_levels``
                (a report; the masks still use ``num_levels`` components). False: off.
            max_levels_to_try: Largest number of components tried by the estimate
                (default ``num_levels + 2``, at most D); the DP-GMM's truncation.
            level_weight_threshold: A DP-GMM component counts as a level when its mixing
                weight exceeds this, in (0, 1) (default 0.05).
            sync_distributed: All-reduce the statistics over the default process group
                before each refit when torch.distributed runs with world size > 1.
            normalize_input: Compute the statistics on ``z / |z|`` (in float64), so raw
                projections give the statistics of the unit vectors the loss compares;
                False uses z as given.
            nested: Cumulative masks (default): level l sees the dimensions assigned to
                levels 0..l (the coarsest level only its own, the finest all of them).
                False: a partition, each level only its own dimensions (the default
                before the validation evidence in ``benchmarks/RESULTS.md``; loading a
                checkpoint of the other form raises a ValueError).

        Raises:
            ValueError: If an argument is out of range.
        """
        super().__init__(num_levels=num_levels, dim=dim)
        check_int("refit_every", refit_every, 1)
        check_int("warmup_steps", warmup_steps, 0)
        # Each part validates its own options.
        check_descriptor_options(relevance, descriptor_normalization, fisher_floor)
        check_assignment_options(
            assignment, assignment_threshold, min_dims_per_level, num_levels, dim
        )
        check_fit_options(covariance_type, n_init, max_iter, tol, reg_covar)
        max_levels_to_try = check_estimate_options(
            estimate_levels, level_weight_threshold, max_levels_to_try, num_levels, dim
        )

        self.refit_every = refit_every
        self.warmup_steps = warmup_steps
        self.momentum = momentum
        self.max_classes_per_level = max_classes_per_level
        self.relevance = relevance
        self.descriptor_normalization = descriptor_normalization
        self.fisher_floor = fisher_floor
        self.assignment = assignment
        self.assignment_threshold = assignment_threshold
        self.min_dims_per_level = min_dims_per_level
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.seed = seed
        self.estimate_levels = estimate_levels
        self.level_estimator: LevelEstimator = "dpgmm" if estimate_levels == "dpgmm" else "bic"
        self.level_weight_threshold = level_weight_threshold
        self.max_levels_to_try = max_levels_to_try
        self.sync_distributed = sync_distributed
        self.normalize_input = normalize_input
        self.nested = nested
        self.last_fit: GaussianMixtureFit | None = None

        L, D = num_levels, dim
        f64 = torch.float64
        self.register_buffer("masks", torch.ones(L, D))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("descriptors", torch.full((D, L), math.nan, dtype=f64))
        self.register_buffer("estimated_num_levels", torch.full((), -1, dtype=torch.long))
        self.register_buffer("bic_scores", torch.full((max_levels_to_try,), math.nan, dtype=f64))
        self.register_buffer("dpgmm_weights", torch.full_like(self.bic_scores, math.nan))
        self.statistics = LabelPrefixStatistics(  # validates momentum and the capacity
            L,
            D,
            max_classes_per_level=max_classes_per_level,
            momentum=momentum,
            sync_distributed=sync_distributed,
            owner=type(self).__name__,
        )
        self._host_step = 0
        self.register_load_state_dict_post_hook(_sync_host_step)
        self.register_load_state_dict_post_hook(_check_loaded_mask_form)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Updates the statistics (training mode with labels, outside
        ``torch.inference_mode()``), refits on schedule.

        Args:
            z: Projections of shape [B, D], raw or normalised (see ``normalize_input``).
            labels: Label paths [B, L] (negative = unknown) or None.

        Returns:
            Detached 0/1 masks of shape [1, L, D] in the dtype of ``z``.
        """
        self.check_inputs(z, labels)
        # Under torch.inference_mode() the statistics would become inference tensors,
        # which a later training step could not update in place: such a call is
        # evaluation, whatever the module's mode.
        if self.training and labels is not None and not torch.is_inference_mode_enabled():
            x = z.detach().to(torch.float64)
            self.statistics.update(F.normalize(x, dim=1) if self.normalize_input else x, labels)
            self.step.add_(1)
            self._host_step += 1
            since = self._host_step - max(self.warmup_steps, 1)
            if since >= 0 and since % self.refit_every == 0:
                self._refit(explicit=False)
        # A copy: a later refit must not change masks saved for backward.
        return self.masks.detach().clone().to(z.dtype).unsqueeze(0)

    @torch.no_grad()
    def refit(self) -> Tensor:
        """Merges the statistics (all-reduced under DDP) and refits the masks now.

        Call it on all ranks at once when torch.distributed is running.

        Returns:
            A copy of the new masks, shape [L, D].

        Raises:
            ValueError: If more classes than ``max_classes_per_level`` were seen.
            RuntimeError: If no labelled sample has been seen yet.
        """
        self._refit(explicit=True)
        return self.masks.clone()

    @torch.no_grad()
    def estimate_num_levels(
        self, max_levels: int | None = None, method: LevelEstimator | None = None
    ) -> int:
        """Estimates how many levels the embedding supports, by BIC or a DP-GMM.

        Merges the pending statistics, then either fits GMMs with 1..max_levels components
        to the descriptors and keeps the lowest BIC (scores in ``bic_scores``), or fits a
        Dirichlet-process GMM truncated at max_levels and counts the components with
        weight > ``level_weight_threshold`` (weights in ``dpgmm_weights``). The choice is
        stored in ``estimated_num_levels``; the masks are not changed.

        Args:
            max_levels: Largest number of components (default ``max_levels_to_try``).
            method: ``"bic"`` or ``"dpgmm"`` (default: the ``estimate_levels`` choice,
                else ``"bic"``).

        Returns:
            The estimated number of levels.
        """
        self._merge(explicit=True)  # raises when there is nothing to estimate from
        points = fit_points(self.compute_descriptors(), self.descriptor_normalization)
        return self._estimate(points, max_levels, method or self.level_estimator)

    @torch.no_grad()
    def compute_descriptors(self) -> Tensor:
        """Log Fisher ratios of the merged statistics (pending batches not included).

        Returns:
            float64 tensor [D, L]; entry (d, l) is the clamped log Fisher ratio of
            dimension d at level l.
        """
        stats = self.statistics
        return fisher_descriptors(
            stats.class_keys,
            stats.num_classes.tolist(),
            stats.class_count,
            stats.class_sum,
            stats.level_sumsq,
            relevance=self.relevance,
            fisher_floor=self.fisher_floor,
        )

    # The statistics' buffers, under the names they had before the head was split.
    class_keys = property(lambda self: self.statistics.class_keys)
    num_classes = property(lambda self: self.statistics.num_classes)
    class_count = property(lambda self: self.statistics.class_count)
    class_sum = property(lambda self: self.statistics.class_sum)
    level_sumsq = property(lambda self: self.statistics.level_sumsq)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, refit_every={self.refit_every}, "
            f"warmup_steps={self.warmup_steps}, momentum={self.momentum}, "
            f"relevance={self.relevance!r}, covariance_type={self.covariance_type!r}, "
            f"normalize_input={self.normalize_input}, nested={self.nested}"
        )

    def _pinned_device(self) -> torch.device:
        return self.masks.device

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checkpoints from before the split name the statistics on the head itself, and
        # have no DP-GMM weights.
        for name in (*_STAT_NAMES, "_extra_state"):
            old, new = prefix + name, prefix + "statistics." + name
            if old in state_dict and new not in state_dict:
                state_dict[new] = state_dict.pop(old)
        if prefix + "bic_scores" in state_dict:
            state_dict.setdefault(prefix + "dpgmm_weights", self.dpgmm_weights.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------ fit

    @torch.no_grad()
    def _merge(self, explicit: bool) -> bool:
        """Merges the statistics; whether there are any (an explicit call raises if not)."""
        self.statistics.merge()
        if self.statistics.has_statistics():
            return True
        if explicit:
            raise RuntimeError(
                "No labelled sample seen yet (or all labels unknown): call the head in "
                "training mode with labels before refit() or estimate_num_levels()."
            )
        return False

    def _refit(self, explicit: bool) -> None:
        if not self._merge(explicit):
            return  # nothing to fit on yet; keep the current masks
        descriptors = self.compute_descriptors()
        points = fit_points(descriptors, self.descriptor_normalization)
        masks = self._masks_from_fit(descriptors, points)
        self.descriptors.copy_(descriptors)
        self.masks.copy_(masks.to(self.masks.dtype))
        self.fitted.fill_(True)
        if self.estimate_levels:
            self._estimate(points, None, self.level_estimator)

    def _gmm_kwargs(self) -> dict[str, Any]:
        return {
            "covariance_type": self.covariance_type,
            "n_init": self.n_init,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "reg_covar": self.reg_covar,
            "seed": self.seed,
        }

    def _masks_from_fit(self, descriptors: Tensor, points: Tensor) -> Tensor:
        L, D = self.num_levels, self.dim
        if L == 1:
            self.last_fit = None
            return torch.ones(1, D, device=descriptors.device)
        fit = fit_gaussian_mixture(points, L, **self._gmm_kwargs())
        self.last_fit = fit
        return assign_masks(
            relevance_scores(descriptors, self.descriptor_normalization),
            fit.responsibilities,
            min_dims_per_level=self.min_dims_per_level,
            assignment=self.assignment,
            assignment_threshold=self.assignment_threshold,
            nested=self.nested,
        )

    def _estimate(self, points: Tensor, max_levels: int | None, method: LevelEstimator) -> int:
        k_max = self.max_levels_to_try if max_levels is None else max_levels
        if not 1 <= k_max <= self.dim:
            raise ValueError(f"max_levels must be in [1, dim={self.dim}], got {k_max}.")
        best, scores = estimate_components(
            points,
            k_max,
            method,
            weight_threshold=self.level_weight_threshold,
            **self._gmm_kwargs(),
        )
        self.estimated_num_levels.fill_(best)
        stored = self.dpgmm_weights if method == "dpgmm" else self.bic_scores
        stored.fill_(math.nan)
        n = min(scores.shape[0], stored.shape[0])
        stored[:n] = scores[:n].to(stored)
        return best


def _sync_host_step(module: torch.nn.Module, incompatible_keys: Any) -> None:
    # The step count is mirrored on the host so the refit schedule never reads the device.
    if isinstance(module, GMMFeatureMaskHead):
        module._host_step = int(module.step.item())


def _check_loaded_mask_form(head: torch.nn.Module, incompatible_keys: Any) -> None:
    # The default changed from partitions to nested masks. A checkpoint of the other form
    # would train with its loaded masks until the next refit and then switch form
    # silently, so a mismatch is an error that names the fix.
    if not isinstance(head, GMMFeatureMaskHead) or not bool(head.fitted) or head.num_levels < 2:
        return
    masks = head.masks.bool()
    nested_form = bool(masks[-1].all()) and bool((masks[:-1] <= masks[1:]).all())
    if head.nested and not nested_form:
        raise ValueError(
            "The checkpoint's G-HMLC masks are not nested (the finest level does not see "
            "every dimension): it was saved with nested=False, the default before nested "
            "masks. Build the head with nested=False to continue it."
        )
    if not head.nested and head.assignment == "argmax" and nested_form:
        raise ValueError(
            "The checkpoint's G-HMLC masks are nested, but the head was built with "
            "nested=False (a partition). Build it with nested=True (the default) to "
            "continue it."
        )
