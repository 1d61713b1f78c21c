"""G-HMLC's feature-mask head: a Gaussian mixture over the embedding dimensions.

Ott et al. (https://arxiv.org/abs/2510.00837) use a Gaussian Mixture Model to produce one
hard mask per hierarchy level. Their public text does not say what the GMM clusters; here
each embedding dimension is described by its relevance to every level (a log Fisher ratio
computed from running class statistics) and the GMM groups the dimensions by level.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch import distributed as dist

from lightly_hmlc.models.modules._gmm import (
    CovarianceType,
    GaussianMixtureFit,
    fit_gaussian_mixture,
    select_n_components_bic,
)
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead

__all__ = [
    "GMMFeatureMaskHead",
    "GaussianMixtureFit",
    "fit_gaussian_mixture",
    "select_n_components_bic",
]

Relevance = Literal["conditional", "marginal"]
DescriptorNormalization = Literal["none", "center"]
Assignment = Literal["argmax", "threshold"]

# Brute-force level matching over all permutations up to this many levels (8! = 40320).
_MAX_LEVELS_BRUTE_FORCE = 8
_STAT_NAMES = ("class_count", "class_sum", "level_sumsq")
# Renormalise the lazily decayed statistics before new batches' weights exceed this.
_MAX_LAZY_SCALE = 1e100


class GMMFeatureMaskHead(FeatureMaskHead):
    """Hard per-level feature masks from a Gaussian mixture over embedding dimensions (G-HMLC).

    Following Ott et al. [0], a Gaussian Mixture Model with one component per hierarchy level
    assigns every embedding dimension to one level, and the level-h term of HMLC [1] only
    sees the dimensions of mask M_h. The choices below are ours (the paper's public text
    does not give them); see ``docs/METHOD.md``.

    Descriptors: for each level l and dimension d we keep running class statistics (count
    and sum per class, sum of squares per level) with classes = label prefixes 0..l. A
    sample contributes to level l only if its labels 0..l are all known (>= 0). The Fisher
    ratio of d at level l is between-class variance / within-class variance. With
    ``relevance="conditional"`` (default) the between-class variance is measured around each
    class's parent-class mean, so it counts only what level l separates beyond level l-1;
    ``"marginal"`` uses the global mean. Each dimension becomes the point
    ``log(clamp(F[d], fisher_floor, 1 / fisher_floor))`` in R^L.

    Fit: a GMM with L components (``covariance_type="full"`` by default: L is small and the
    relevances of a dimension to neighbouring levels are correlated) over the D points.
    Component k is matched to level h by maximising the summed responsibility-weighted mean
    descriptor of coordinate h (all permutations for L <= 8, greedy above). Each dimension
    goes to the level of its most responsible component; a level below
    ``min_dims_per_level`` takes the dimensions with the highest responsibility for its
    component from levels that can spare them.

    Schedule: every forward call in training mode with labels is one step. The statistics
    decay by ``momentum`` per step, and the masks are refitted after ``warmup_steps`` steps
    and then every ``refit_every`` steps. Until the first fit the masks are all ones (plain
    HMLC). In eval mode nothing is updated. The per-step update never synchronises the
    device; a refit does, a few times.

    Distributed: the buffers (masks, step, statistics) hold identical values on every rank,
    so DDP's buffer broadcast is harmless. Each rank collects its batches in a private
    table of pending statistics (saved in ``state_dict`` as extra state, never broadcast).
    At a refit the ranks gather the pending class keys, build the sorted union of label
    prefixes, re-lay their tables on it and all-reduce, so all ranks fit the same GMM on the
    statistics of all data and hold identical masks. All ranks must refit together (the
    automatic schedule does).

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
    class_keys: Tensor
    num_classes: Tensor
    class_count: Tensor
    class_sum: Tensor
    level_sumsq: Tensor

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

        Raises:
            ValueError: If an argument is out of range.
        """
        super().__init__(num_levels=num_levels, dim=dim)
        _check_int("refit_every", refit_every, 1)
        _check_int("warmup_steps", warmup_steps, 0)
        _check_int("max_classes_per_level", max_classes_per_level, 2)
        _check_int("min_dims_per_level", min_dims_per_level, 1)
        _check_int("n_init", n_init, 1)
        _check_int("max_iter", max_iter, 1)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(
                f"momentum must be in (0, 1] (decay of the class statistics per step; 1 keeps "
                f"plain sums), got {momentum}."
            )
        if relevance not in ("conditional", "marginal"):
            raise ValueError(f"relevance must be 'conditional' or 'marginal', got {relevance!r}.")
        if descriptor_normalization not in ("none", "center"):
            raise ValueError(
                f"descriptor_normalization must be 'none' or 'center', got "
                f"{descriptor_normalization!r}."
            )
        if not 0.0 < fisher_floor < 1.0:
            raise ValueError(f"fisher_floor must be in (0, 1), got {fisher_floor}.")
        if assignment not in ("argmax", "threshold"):
            raise ValueError(f"assignment must be 'argmax' or 'threshold', got {assignment!r}.")
        if not 0.0 < assignment_threshold <= 1.0:
            raise ValueError(f"assignment_threshold must be in (0, 1], got {assignment_threshold}.")
        if covariance_type not in ("full", "diag"):
            raise ValueError(f"covariance_type must be 'full' or 'diag', got {covariance_type!r}.")
        if tol < 0 or reg_covar < 0:
            raise ValueError(f"tol and reg_covar must be >= 0, got {tol} and {reg_covar}.")
        if dim < num_levels * min_dims_per_level:
            raise ValueError(
                f"dim={dim} cannot give {min_dims_per_level} dimension(s) to each of "
                f"{num_levels} levels; lower min_dims_per_level or use a wider projection."
            )
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
        self.last_fit: GaussianMixtureFit | None = None

        L, D, C = num_levels, dim, max_classes_per_level
        f64 = torch.float64
        self.register_buffer("masks", torch.ones(L, D))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("descriptors", torch.full((D, L), math.nan, dtype=f64))
        self.register_buffer("estimated_num_levels", torch.full((), -1, dtype=torch.long))
        self.register_buffer("bic_scores", torch.full((max_levels_to_try,), math.nan, dtype=f64))
        # Merged statistics of all ranks, identical everywhere. Rows of class_keys are label
        # prefixes padded with -1, sorted, slots [0, num_classes[l]) in use.
        self.register_buffer("class_keys", torch.full((L, C, L), -1, dtype=torch.long))
        self.register_buffer("num_classes", torch.zeros(L, dtype=torch.long))
        self.register_buffer("class_count", torch.zeros(L, C, dtype=f64))
        self.register_buffer("class_sum", torch.zeros(L, C, D, dtype=f64))
        self.register_buffer("level_sumsq", torch.zeros(L, D, dtype=f64))
        # This rank's statistics since the last refit; slot C collects unknowns/overflow.
        self._pending: dict[str, Tensor] = {}
        self._since_merge = 0  # decay steps not yet applied to the stored statistics
        self._host_step = 0
        self.register_load_state_dict_post_hook(_sync_host_step)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Updates the statistics (training mode with labels), refits on schedule.

        Args:
            z: Projections of shape [B, D].
            labels: Label paths [B, L] (negative = unknown) or None.

        Returns:
            Detached 0/1 masks of shape [1, L, D] in the dtype of ``z``.
        """
        self.check_inputs(z, labels)
        if self.training and labels is not None:
            self._update_statistics(z, labels)
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
        self._merge_pending()
        if not self._has_statistics():
            raise RuntimeError(
                "No labelled sample seen yet: call the head in training mode with labels first."
            )
        return self._estimate(self._fit_features(self.compute_descriptors()), max_levels)

    @torch.no_grad()
    def compute_descriptors(self) -> Tensor:
        """Log Fisher ratios of the merged statistics (pending batches not included).

        Returns:
            float64 tensor [D, L]; entry (d, l) is the clamped log Fisher ratio of
            dimension d at level l.
        """
        L, D = self.num_levels, self.dim
        desc = torch.empty(D, L, dtype=torch.float64, device=self.class_sum.device)
        num_classes = self.num_classes.tolist()
        for level in range(L):
            n = num_classes[level]
            counts = self.class_count[level, :n]
            sums = self.class_sum[level, :n]
            total = counts.sum()
            safe = counts.clamp_min(torch.finfo(torch.float64).tiny)
            ss_class = torch.where(counts[:, None] > 0, sums.square() / safe[:, None], 0).sum(0)
            if self.relevance == "conditional" and level > 0 and n > 0:
                parents = self.class_keys[level, :n, :level]
                _, group = torch.unique(parents, dim=0, return_inverse=True)
                n_groups = int(group.max()) + 1
                g_counts = counts.new_zeros(n_groups).index_add_(0, group, counts)
                g_sums = sums.new_zeros(n_groups, D).index_add_(0, group, sums)
                g_safe = g_counts.clamp_min(torch.finfo(torch.float64).tiny)
                ss_parent = torch.where(g_counts[:, None] > 0, g_sums.square() / g_safe[:, None], 0)
                ss_parent = ss_parent.sum(0)
            else:
                ss_parent = sums.sum(0).square() / total.clamp_min(torch.finfo(torch.float64).tiny)
            norm = total.clamp_min(torch.finfo(torch.float64).tiny)
            between = (ss_class - ss_parent).clamp_min(0) / norm
            within = (self.level_sumsq[level] - ss_class).clamp_min(0) / norm
            ratio = between / within.clamp_min(torch.finfo(torch.float64).tiny)
            ratio = ratio.clamp(self.fisher_floor, 1.0 / self.fisher_floor)
            desc[:, level] = ratio.log()
        return desc

    def get_extra_state(self) -> dict[str, Tensor]:
        """The pending statistics of this rank, so a checkpoint loses no batch."""
        state = {name: value.clone() for name, value in self._pending.items()}
        state["since_merge"] = torch.tensor(self._since_merge)
        return state

    def set_extra_state(self, state: Any) -> None:
        """Restores the pending statistics saved by :meth:`get_extra_state`."""
        if not isinstance(state, dict) or "since_merge" not in state:
            raise ValueError(f"Expected the dict of get_extra_state(), got {type(state)}.")
        state = dict(state)
        self._since_merge = int(state.pop("since_merge"))
        device = self.masks.device
        self._pending = {name: value.to(device) for name, value in state.items()}

    def extra_repr(self) -> str:
        return (
            f"num_levels={self.num_levels}, dim={self.dim}, refit_every={self.refit_every}, "
            f"warmup_steps={self.warmup_steps}, momentum={self.momentum}, "
            f"relevance={self.relevance!r}, covariance_type={self.covariance_type!r}"
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> GMMFeatureMaskHead:
        # Statistics stay float64 whatever dtype the model is cast to (.half(), .to(bf16)):
        # keep the originals aside, so that a cast never rounds them, and only move them.
        float64_names = (*_STAT_NAMES, "descriptors", "bic_scores")
        originals = {name: getattr(self, name) for name in float64_names}
        super()._apply(fn, recurse)
        device = self.masks.device
        for name, original in originals.items():
            setattr(self, name, original.to(device=device, dtype=torch.float64))
        self._pending = {name: value.to(device) for name, value in self._pending.items()}
        return self

    # ----------------------------------------------------------------- statistics

    def _new_pending(self, device: torch.device) -> dict[str, Tensor]:
        L, D, C = self.num_levels, self.dim, self.max_classes_per_level
        f64 = torch.float64
        return {
            "class_keys": torch.full((L, C + 1, L), -1, dtype=torch.long, device=device),
            "num_classes": torch.zeros(L, dtype=torch.long, device=device),
            "class_count": torch.zeros(L, C + 1, dtype=f64, device=device),
            "class_sum": torch.zeros(L, C + 1, D, dtype=f64, device=device),
            "level_sumsq": torch.zeros(L, D, dtype=f64, device=device),
            "overflow": torch.zeros((), dtype=torch.bool, device=device),
        }

    def _ensure_pending(self) -> dict[str, Tensor]:
        device = self.masks.device
        if not self._pending:
            self._pending = self._new_pending(device)
        elif self._pending["class_count"].device != device:
            self._pending = {name: value.to(device) for name, value in self._pending.items()}
        return self._pending

    @torch.no_grad()
    def _update_statistics(self, z: Tensor, labels: Tensor) -> None:
        """Adds a batch to this rank's pending statistics without synchronising the device.

        Decay is lazy: the true statistics are the stored ones times
        ``momentum ** _since_merge``, so a new batch is stored with weight
        ``momentum ** -_since_merge`` and no table is rescaled per step.
        """
        p = self._ensure_pending()
        scale = 1.0
        if self.momentum < 1.0:
            self._since_merge += 1
            scale = self.momentum ** (-self._since_merge)
            if scale > _MAX_LAZY_SCALE:
                self._apply_decay(None, None)
                scale = 1.0
        L = self.num_levels
        device = self.masks.device
        x = z.detach().to(device=device, dtype=torch.float64)
        labels = labels.to(device=device, dtype=torch.long)
        # Level l counts a sample only if its whole prefix 0..l is known.
        valid = (labels >= 0).long().cumprod(dim=1).bool()  # [B, L]
        x_sq = x.square()
        columns = torch.arange(L, device=device)
        for level in range(L):
            ok = valid[:, level]
            rows = torch.where(columns <= level, labels, -1)  # [B, L]
            slot = self._lookup_or_insert(level, rows, ok)
            weight = ok.to(torch.float64) * scale
            p["class_count"][level].index_add_(0, slot, weight)
            p["class_sum"][level].index_add_(0, slot, x * weight[:, None])
            p["level_sumsq"][level].add_(weight @ x_sq)

    def _apply_decay(self, merged_num: list[int] | None, own_num: list[int] | None) -> None:
        """Multiplies the stored statistics by the pending decay; the used rows when known."""
        factor = self.momentum**self._since_merge
        self._since_merge = 0
        if factor == 1.0:
            return
        p = self._ensure_pending()
        merged_rows = self.max_classes_per_level if merged_num is None else max(merged_num)
        own_rows = self.max_classes_per_level + 1 if own_num is None else max(own_num)
        self.class_count[:, :merged_rows].mul_(factor)
        self.class_sum[:, :merged_rows].mul_(factor)
        self.level_sumsq.mul_(factor)
        p["class_count"][:, :own_rows].mul_(factor)
        p["class_sum"][:, :own_rows].mul_(factor)
        p["level_sumsq"].mul_(factor)

    def _lookup_or_insert(self, level: int, rows: Tensor, ok: Tensor) -> Tensor:
        """Slot of each row in the pending table of ``level``; new prefixes get new slots.

        The table rows and the batch rows are sorted together (lexicographically, one stable
        argsort per prefix column), so equal prefixes form groups; everything has a fixed
        shape, so the device is never synchronised, and memory is O(C + B). Unknown
        prefixes and prefixes beyond the capacity go to the spare slot C; overflow is
        flagged and reported at the next refit.
        """
        p = self._pending
        C = self.max_classes_per_level
        width = level + 1
        device = rows.device
        n = p["num_classes"][level].clone()
        slots = torch.arange(C, device=device)
        used = slots < n
        # Sentinels keep unused table rows and unknown batch rows out of real groups.
        table = torch.where(used[:, None], p["class_keys"][level, :C, :width], -2)
        batch = torch.where(ok[:, None], rows[:, :width], -3)
        keys = torch.cat([table, batch])  # [C + B, width]
        order = torch.arange(keys.shape[0], device=device)
        for column in reversed(range(width)):
            order = order[torch.argsort(keys[order, column], stable=True)]
        ordered = keys[order]
        boundary = torch.ones(keys.shape[0], dtype=torch.bool, device=device)
        boundary[1:] = (ordered[1:] != ordered[:-1]).any(-1)
        group = torch.empty_like(order)
        group[order] = torch.cumsum(boundary.long(), 0) - 1
        # Slot of the table row in each group (-1: none), then look up the batch rows.
        table_slot = torch.full_like(order, -1)
        table_slot.scatter_reduce_(0, group[:C], torch.where(used, slots, -1), "amax")
        batch_group = group[C:]
        found_slot = table_slot[batch_group]
        found = ok & (found_slot >= 0)
        new = ok & ~found
        # Groups with a new prefix get consecutive slots after the used ones.
        is_new = torch.zeros_like(order).scatter_reduce_(0, batch_group, new.long(), "amax")
        new_slot = n + torch.cumsum(is_new, 0)[batch_group] - 1
        slot = torch.where(found, found_slot, torch.where(new, new_slot, C)).clamp_max(C)
        p["overflow"] |= (new & (new_slot >= C)).any()
        # Rows of one group write the same key to the same slot.
        write = torch.where(new & (new_slot < C), new_slot, C)
        p["class_keys"][level, write] = rows
        p["num_classes"][level] = (n + is_new.sum()).clamp_max(C)
        return slot

    def _distributed(self) -> bool:
        return (
            self.sync_distributed
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        )

    def _merge_pending(self) -> None:
        """Adds every rank's pending statistics to the merged buffers and clears them."""
        p = self._ensure_pending()
        L, C, D = self.num_levels, self.max_classes_per_level, self.dim
        distributed = self._distributed()
        overflow = p["overflow"].to(torch.long).reshape(1)
        pending_keys = p["class_keys"][:, :C].contiguous()
        pending_num = p["num_classes"].clone()
        if distributed:
            dist.all_reduce(overflow, op=dist.ReduceOp.MAX)
            world = dist.get_world_size()
            all_keys = [torch.empty_like(pending_keys) for _ in range(world)]
            all_num = [torch.empty_like(pending_num) for _ in range(world)]
            dist.all_gather(all_keys, pending_keys)
            dist.all_gather(all_num, pending_num)
        else:
            all_keys, all_num = [pending_keys], [pending_num]
        own_num = pending_num.tolist()
        if bool(overflow.item()):
            self._reset_pending(None)
            raise ValueError(self._capacity_message())
        merged_num = self.num_classes.tolist()
        self._apply_decay(merged_num, own_num)

        # Sorted union of the label prefixes of all ranks: the same layout everywhere.
        nums = [num.tolist() for num in all_num]
        unions = []
        for level in range(L):
            rows = [self.class_keys[level, : merged_num[level]]]
            rows += [k[level, : num[level]] for k, num in zip(all_keys, nums, strict=True)]
            union = torch.unique(torch.cat(rows), dim=0)
            if union.shape[0] > C:
                self._reset_pending(own_num)
                raise ValueError(self._capacity_message(level, union.shape[0]))
            unions.append(union)
        sizes = [union.shape[0] for union in unions]
        offsets = [sum(sizes[:level]) for level in range(L)]

        # This rank's pending statistics on the union layout, all levels stacked.
        device = self.class_count.device
        add_count = torch.zeros(sum(sizes), dtype=torch.float64, device=device)
        add_sum = torch.zeros(sum(sizes), D, dtype=torch.float64, device=device)
        for level in range(L):
            own = offsets[level] + _match_rows(pending_keys[level, : own_num[level]], unions[level])
            add_count[own] = p["class_count"][level, : own_num[level]]
            add_sum[own] = p["class_sum"][level, : own_num[level]]
        add_sumsq = p["level_sumsq"].clone()
        if distributed:
            for tensor in (add_count, add_sum, add_sumsq):
                dist.all_reduce(tensor)

        for level in range(L):
            m, n_old = sizes[level], merged_num[level]
            part = slice(offsets[level], offsets[level] + m)
            old = _match_rows(self.class_keys[level, :n_old], unions[level])
            counts = add_count[part].index_add(0, old, self.class_count[level, :n_old])
            sums = add_sum[part].index_add(0, old, self.class_sum[level, :n_old])
            self.class_keys[level, :m] = unions[level]
            self.class_count[level, :m] = counts
            self.class_sum[level, :m] = sums
        self.num_classes.copy_(torch.tensor(sizes))
        self.level_sumsq.add_(add_sumsq)
        self._reset_pending(own_num)

    def _reset_pending(self, own_num: list[int] | None) -> None:
        """Clears the pending tables (the used rows when known, and the spare slot)."""
        p = self._ensure_pending()
        C = self.max_classes_per_level
        if own_num is None:
            self._pending = self._new_pending(self.masks.device)
            return
        rows = [*range(max(own_num)), C]
        p["class_keys"][:, rows] = -1
        p["class_count"][:, rows] = 0
        p["class_sum"][:, rows] = 0
        p["level_sumsq"].zero_()
        p["num_classes"].zero_()
        p["overflow"].zero_()

    def _capacity_message(self, level: int | None = None, seen: int | None = None) -> str:
        where = f" (level {level} has {seen})" if level is not None else ""
        return (
            f"GMMFeatureMaskHead saw more than max_classes_per_level="
            f"{self.max_classes_per_level} distinct label prefixes at one level{where}. "
            f"Raise max_classes_per_level to at least the number of classes at the finest "
            f"level."
        )

    def _has_statistics(self) -> bool:
        return bool((self.class_count.sum() > 0).item())

    # ------------------------------------------------------------------------ fit

    @torch.no_grad()
    def _refit(self, explicit: bool) -> None:
        self._merge_pending()
        if not self._has_statistics():
            if explicit:
                raise RuntimeError(
                    "No labelled sample seen yet (or all labels unknown): call the head in "
                    "training mode with labels before refit()."
                )
            return  # nothing to fit on yet; keep the current masks
        descriptors = self.compute_descriptors()
        features = self._fit_features(descriptors)
        masks = self._masks_from_fit(descriptors, features)
        self.descriptors.copy_(descriptors)
        self.masks.copy_(masks.to(self.masks.dtype))
        self.fitted.fill_(True)
        if self.estimate_levels:
            self._estimate(features, None)

    def _fit_features(self, descriptors: Tensor) -> Tensor:
        """The points the GMM clusters: the descriptors, or their centered coordinates."""
        if self.descriptor_normalization == "center" and self.num_levels > 1:
            centered = descriptors - descriptors.mean(1, keepdim=True)
            # The centered points live in a (L-1)-dim subspace: drop the dependent coordinate.
            return centered[:, :-1]
        return descriptors

    def _gmm_kwargs(self) -> dict[str, Any]:
        return {
            "covariance_type": self.covariance_type,
            "n_init": self.n_init,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "reg_covar": self.reg_covar,
            "seed": self.seed,
        }

    def _masks_from_fit(self, descriptors: Tensor, features: Tensor) -> Tensor:
        L, D = self.num_levels, self.dim
        if L == 1:
            self.last_fit = None
            return torch.ones(1, D, device=descriptors.device)
        fit = fit_gaussian_mixture(features, L, **self._gmm_kwargs())
        self.last_fit = fit
        resp = fit.responsibilities  # [D, K]
        scores = descriptors
        if self.descriptor_normalization == "center":
            scores = descriptors - descriptors.mean(1, keepdim=True)
        # Responsibility-weighted mean descriptor per component: [K, L].
        component_means = resp.T @ scores / resp.sum(0).clamp_min(1e-12)[:, None]
        level_to_component = _match_components(component_means.cpu())
        level_resp = resp[:, level_to_component.to(resp.device)]  # [D, L]
        level = level_resp.argmax(1)
        level = _enforce_min_dims(level, level_resp, L, self.min_dims_per_level)
        masks = torch.nn.functional.one_hot(level, L).T.to(torch.float32)  # [L, D]
        if self.assignment == "threshold":
            extra = (level_resp.T >= self.assignment_threshold).to(torch.float32)
            masks = torch.maximum(masks, extra)
        return masks

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


def _match_rows(rows: Tensor, table: Tensor) -> Tensor:
    """Index in ``table`` of each row of ``rows`` (every row must be present)."""
    if rows.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=rows.device)
    return (rows[:, None] == table[None]).all(-1).to(torch.uint8).argmax(1)


def _match_components(component_means: Tensor) -> Tensor:
    """Component index per level maximising the summed mean descriptor of that level.

    Args:
        component_means: [K, L] (K == L) on the CPU; entry (k, h) is component k's mean
            relevance to level h.

    Returns:
        Long tensor [L]: the component matched to each level.
    """
    k, levels = component_means.shape
    if levels <= _MAX_LEVELS_BRUTE_FORCE:
        perms = torch.tensor(list(itertools.permutations(range(k), levels)), dtype=torch.long)
        totals = component_means[perms, torch.arange(levels)].sum(1)
        return perms[int(totals.argmax())]
    # Greedy: repeatedly take the largest remaining (component, level) entry.
    scores = component_means.clone()
    result = torch.empty(levels, dtype=torch.long)
    for _ in range(levels):
        flat = int(scores.argmax())
        comp, lev = divmod(flat, levels)
        result[lev] = comp
        scores[comp, :] = -math.inf
        scores[:, lev] = -math.inf
    return result


def _enforce_min_dims(level: Tensor, level_resp: Tensor, num_levels: int, minimum: int) -> Tensor:
    """Moves the most responsible dimensions into levels with fewer than ``minimum`` dims.

    Every level keeps its ``minimum`` most responsible dimensions ("protected"); a level
    short of dimensions takes the unprotected ones with the highest responsibility for its
    component. Fixed shapes only; feasible because D >= L * minimum.
    """
    level = level.clone()
    n = level.shape[0]
    positions = torch.arange(n, device=level.device)
    for target in range(num_levels):
        own = level_resp[positions, level]  # responsibility for the current level
        # Rank every dimension within its level by own responsibility (descending).
        order = torch.argsort(level.to(own.dtype) * 4.0 - own, stable=True)
        counts = torch.bincount(level, minlength=num_levels)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(level)
        rank[order] = positions - starts[level[order]]
        protected = rank < minimum
        candidate = level_resp[:, target]
        priority = torch.where(
            level == target, 2.0 + candidate, torch.where(protected, -1.0, candidate)
        )
        chosen = torch.topk(priority, minimum).indices
        level[chosen] = target
    return level
