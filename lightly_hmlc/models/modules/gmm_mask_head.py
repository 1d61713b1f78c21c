"""G-HMLC's feature-mask head: a Gaussian mixture over the embedding dimensions.

Ott et al. (https://arxiv.org/abs/2510.00837) use a Gaussian Mixture Model to produce one
hard mask per hierarchy level. Their public text does not say what the GMM clusters; here
each embedding dimension is described by its relevance to every level (a log Fisher ratio
computed from running class statistics) and the GMM groups the dimensions by level.

The head only does the schedule and the wiring; its parts live in their own modules:
:mod:`~lightly_hmlc.models.modules.prefix_statistics` (the running statistics),
:mod:`~lightly_hmlc.models.modules._fisher` (descriptors),
:mod:`~lightly_hmlc.models.modules._gmm` (the EM fit) and
:mod:`~lightly_hmlc.models.modules._assignment` (matching and masks).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

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
]

# Buffers that moved into the ``statistics`` submodule; old checkpoints name them directly.
_STAT_NAMES = ("class_keys", "num_classes", "class_count", "class_sum", "level_sumsq")


class GMMFeatureMaskHead(Float64BuffersMixin, FeatureMaskHead):
    """Hard per-level feature masks from a Gaussian mixture over embedding dimensions (G-HMLC).

    Following Ott et al. [0], a Gaussian Mixture Model with one component per hierarchy level
    assigns every embedding dimension to one level, and the level-h term of HMLC [1] only
    sees the dimensions of mask M_h. The choices below are ours (the paper's public text
    does not give them); see ``docs/METHOD.md``.

    Descriptors: running class statistics (:class:`LabelPrefixStatistics`) of ``z / |z|``
    (``normalize_input``; the head takes raw projections, ``masks = head(z, labels)``),
    classes = label prefixes 0..l. Dimension d becomes the point of its clamped log Fisher
    ratios (between-class / within-class variance) at the L levels; with
    ``relevance="conditional"`` (default) the between-class variance is taken around the
    parent-class means, so it counts only what level l separates beyond level l-1.

    Fit and masks: a GMM with L components over the D points; components are matched to
    levels exactly (``scipy.optimize.linear_sum_assignment`` on the responsibility-weighted
    mean descriptors); each dimension goes to the level of its most responsible component,
    and every level keeps ``min_dims_per_level`` dimensions. ``nested=True`` makes the
    masks cumulative from coarse to fine instead of a partition.

    Schedule: every forward call in training mode with labels is one step; the masks are
    refitted after ``warmup_steps`` steps and then every ``refit_every`` steps, all ones
    (plain HMLC) before the first fit. Eval mode updates nothing. A step never reads the
    device; a refit does. Under DDP every rank refits on the merged statistics of all
    ranks at the same step, so all hold identical masks (see :class:`LabelPrefixStatistics`).

    - [0] Ott et al., 2025, https://arxiv.org/abs/2510.00837
    - [1] Zhang et al., Use All The Labels, CVPR 2022, https://arxiv.org/abs/2204.13207

    Attributes:
        masks: Buffer [L, D] of 0/1 masks, coarse -> fine.
        step: Buffer, number of training steps seen.
        fitted: Buffer, whether the masks come from a fit.
        descriptors: Buffer [D, L], the descriptors of the last fit (NaN before).
        estimated_num_levels: Buffer, number of levels chosen by BIC (-1 before an estimate).
        bic_scores: Buffer [max_levels_to_try], BIC per number of components (NaN before).
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
        >>> head.masks.sum(0).tolist()  # every dimension belongs to exactly one level
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """

    masks: Tensor
    step: Tensor
    fitted: Tensor
    descriptors: Tensor
    estimated_num_levels: Tensor
    bic_scores: Tensor
    _float64_buffers = ("descriptors", "bic_scores")

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
        estimate_levels: bool = False,
        max_levels_to_try: int | None = None,
        sync_distributed: bool = True,
        normalize_input: bool = True,
        nested: bool = False,
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
            estimate_levels: If True, every refit also selects a number of components by BIC
                and stores it in ``estimated_num_levels`` (a report; the masks still use
                ``num_levels`` components).
            max_levels_to_try: Largest number of components tried by the estimate
                (default ``num_levels + 2``, at most D).
            sync_distributed: All-reduce the statistics over the default process group
                before each refit when torch.distributed runs with world size > 1.
            normalize_input: Compute the statistics on ``z / |z|`` (in float64), so raw
                projections give the statistics of the unit vectors the loss compares;
                False uses z as given.
            nested: Cumulative masks: level l sees the dimensions assigned to levels
                0..l (the coarsest level only its own, the finest all of them) instead of
                a partition.

        Raises:
            ValueError: If an argument is out of range.
        """
        super().__init__(num_levels=num_levels, dim=dim)
        _check_int("refit_every", refit_every, 1)
        _check_int("warmup_steps", warmup_steps, 0)
        # Each part validates its own options.
        check_descriptor_options(relevance, descriptor_normalization, fisher_floor)
        check_assignment_options(
            assignment, assignment_threshold, min_dims_per_level, num_levels, dim
        )
        check_fit_options(covariance_type, n_init, max_iter, tol, reg_covar)
        if max_levels_to_try is None:
            max_levels_to_try = min(num_levels + 2, dim)
        _check_int("max_levels_to_try", max_levels_to_try, 1)
        if max_levels_to_try > dim:
            raise ValueError(
                f"max_levels_to_try must be <= dim={dim} (one dimension per component), got "
                f"{max_levels_to_try}."
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

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Updates the statistics (training mode with labels), refits on schedule.

        Args:
            z: Projections of shape [B, D], raw or normalised (see ``normalize_input``).
            labels: Label paths [B, L] (negative = unknown) or None.

        Returns:
            Detached 0/1 masks of shape [1, L, D] in the dtype of ``z``.
        """
        self.check_inputs(z, labels)
        if self.training and labels is not None:
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
    def estimate_num_levels(self, max_levels: int | None = None) -> int:
        """Estimates how many levels the embedding supports, by BIC over 1..max_levels.

        Fits GMMs with 1..max_levels components to the current descriptors (merging the
        pending statistics first) and stores the choice in ``estimated_num_levels`` and the
        scores in ``bic_scores``. The masks are not changed.

        Args:
            max_levels: Largest number of components (default ``max_levels_to_try``).

        Returns:
            The number of components with the lowest BIC.
        """
        self.statistics.merge()
        if not self.statistics.has_statistics():
            raise RuntimeError(
                "No labelled sample seen yet: call the head in training mode with labels first."
            )
        descriptors = self.compute_descriptors()
        return self._estimate(fit_points(descriptors, self.descriptor_normalization), max_levels)

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
    @property
    def class_keys(self) -> Tensor:
        return self.statistics.class_keys

    @property
    def num_classes(self) -> Tensor:
        return self.statistics.num_classes

    @property
    def class_count(self) -> Tensor:
        return self.statistics.class_count

    @property
    def class_sum(self) -> Tensor:
        return self.statistics.class_sum

    @property
    def level_sumsq(self) -> Tensor:
        return self.statistics.level_sumsq

    def extra_repr(self) -> str:
        return (
            f"num_levels={self.num_levels}, dim={self.dim}, refit_every={self.refit_every}, "
            f"warmup_steps={self.warmup_steps}, momentum={self.momentum}, "
            f"relevance={self.relevance!r}, covariance_type={self.covariance_type!r}, "
            f"normalize_input={self.normalize_input}, nested={self.nested}"
        )

    def _pinned_device(self) -> torch.device:
        return self.masks.device

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checkpoints from before the split name the statistics on the head itself.
        for name in (*_STAT_NAMES, "_extra_state"):
            old, new = prefix + name, prefix + "statistics." + name
            if old in state_dict and new not in state_dict:
                state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------ fit

    @torch.no_grad()
    def _refit(self, explicit: bool) -> None:
        self.statistics.merge()
        if not self.statistics.has_statistics():
            if explicit:
                raise RuntimeError(
                    "No labelled sample seen yet (or all labels unknown): call the head in "
                    "training mode with labels before refit()."
                )
            return  # nothing to fit on yet; keep the current masks
        descriptors = self.compute_descriptors()
        points = fit_points(descriptors, self.descriptor_normalization)
        masks = self._masks_from_fit(descriptors, points)
        self.descriptors.copy_(descriptors)
        self.masks.copy_(masks.to(self.masks.dtype))
        self.fitted.fill_(True)
        if self.estimate_levels:
            self._estimate(points, None)

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

    def _estimate(self, features: Tensor, max_levels: int | None) -> int:
        k_max = self.max_levels_to_try if max_levels is None else max_levels
        if not 1 <= k_max <= self.dim:
            raise ValueError(f"max_levels must be in [1, dim={self.dim}], got {k_max}.")
        best, bics = select_n_components_bic(features, k_max, **self._gmm_kwargs())
        self.estimated_num_levels.fill_(best)
        self.bic_scores.fill_(math.nan)
        n = min(bics.shape[0], self.bic_scores.shape[0])
        self.bic_scores[:n] = bics[:n].to(self.bic_scores)
        return best


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def _sync_host_step(module: torch.nn.Module, incompatible_keys: Any) -> None:
    # The step count is mirrored on the host so the refit schedule never reads the device.
    if isinstance(module, GMMFeatureMaskHead):
        module._host_step = int(module.step.item())
