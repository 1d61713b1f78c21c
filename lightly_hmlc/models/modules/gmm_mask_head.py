"""G-HMLC's feature-mask head: a Gaussian mixture over the embedding dimensions."""

from __future__ import annotations

import dataclasses
import itertools
import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.models.modules._arguments import check_int
from lightly_hmlc.models.modules._assignment import assign_masks, check_min_dims
from lightly_hmlc.models.modules._fisher import fisher_descriptors
from lightly_hmlc.models.modules._gmm import EMOptions, GaussianMixtureFit, fit_gaussian_mixture
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead
from lightly_hmlc.models.modules.prefix_statistics import Float64BuffersMixin, LabelPrefixStatistics

__all__ = ["EMOptions", "GMMFeatureMaskHead", "GaussianMixtureFit", "fit_gaussian_mixture"]

# The statistics' buffers, which older checkpoints name on the head itself.
_STAT_NAMES = ("class_keys", "num_classes", "class_count", "class_sum", "level_sumsq")


class GMMFeatureMaskHead(Float64BuffersMixin, FeatureMaskHead):
    """Hard per-level feature masks from a Gaussian mixture over embedding dimensions (G-HMLC).

    A GMM with one component per level (Ott et al. [0]) assigns every dimension to a level,
    from its log Fisher ratios at the L levels in running statistics of ``z / |z|`` per
    label prefix. Nested masks (default) are cumulative, so the finest level sees all
    dimensions; ``nested=False`` gives a partition. The masks are all ones (plain HMLC)
    until the first fit after ``warmup_steps`` training steps with labels, then refitted
    every ``refit_every`` steps. Eval mode updates nothing; only refits read the device,
    and under DDP every rank refits on the statistics of all ranks. Under ``torch.compile``
    a training step runs eagerly inside the graph as one opaque op, so the graph compiles
    once and refits keep their schedule. See ``docs/METHOD.md``.

    - [0] Ott et al., 2025, https://arxiv.org/abs/2510.00837

    Examples:
        >>> head = GMMFeatureMaskHead(num_levels=2, dim=8, warmup_steps=2, refit_every=2)
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]]).repeat(4, 1)
        >>> generator = torch.Generator().manual_seed(0)
        >>> for _ in range(2):
        ...     masks = head(torch.randn(16, 8, generator=generator), labels)
        >>> masks.shape, bool(head.fitted), bool(head.masks[-1].all())
        (torch.Size([1, 2, 8]), True, True)
    """

    masks: Tensor
    step: Tensor
    fitted: Tensor
    descriptors: Tensor
    _float64_buffers = ("descriptors",)

    def __init__(
        self,
        num_levels: int,
        dim: int,
        *,
        refit_every: int = 100,
        warmup_steps: int = 100,
        momentum: float = 0.99,
        max_classes_per_level: int = 1024,
        min_dims_per_level: int = 1,
        normalize_input: bool = True,
        nested: bool = True,
        em_options: EMOptions | None = None,
    ) -> None:
        super().__init__(num_levels=num_levels, dim=dim)
        check_int("refit_every", refit_every, 1)
        check_int("warmup_steps", warmup_steps, 0)
        check_min_dims(min_dims_per_level, num_levels, dim)
        self.refit_every = refit_every
        self.warmup_steps = warmup_steps
        self.momentum = momentum
        self.max_classes_per_level = max_classes_per_level
        self.min_dims_per_level = min_dims_per_level
        self.normalize_input = normalize_input
        self.nested = nested
        self.em_options = EMOptions() if em_options is None else em_options
        self.last_fit: GaussianMixtureFit | None = None

        L, D = num_levels, dim
        self.register_buffer("masks", torch.ones(L, D))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("descriptors", torch.full((D, L), math.nan, dtype=torch.float64))
        self.statistics = LabelPrefixStatistics(  # validates momentum and the capacity
            L,
            D,
            max_classes_per_level=max_classes_per_level,
            momentum=momentum,
            owner=type(self).__name__,
        )
        self._host_step = 0
        self._register()
        self.register_load_state_dict_post_hook(_sync_host_step)
        self.register_load_state_dict_post_hook(_check_loaded_mask_form)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Detached masks [1, L, D] of ``z`` [B, D]; with labels in training, a step."""
        self.check_inputs(z, labels)
        # Under inference_mode the statistics would become inference tensors that a later
        # training step could not update in place: such a call is evaluation. (A compiled
        # graph never runs in inference mode, and cannot ask.)
        inference = not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()
        if self.training and labels is not None and not inference:
            if torch.compiler.is_compiling():
                torch.ops.lightly_hmlc.gmm_head_step(
                    self._key, z.detach(), labels, self._step_buffers()
                )
            else:
                self._train_step(z.detach(), labels)
        # A copy: a later refit must not change masks saved for backward.
        return self.masks.detach().clone().to(z.dtype).unsqueeze(0)

    @torch.no_grad()
    def refit(self) -> Tensor:
        """Merges the statistics (all ranks together under DDP), refits now, returns the masks."""
        self._refit(explicit=True)
        return self.masks.clone()

    @torch.no_grad()
    def compute_descriptors(self) -> Tensor:
        stats = self.statistics
        return fisher_descriptors(
            stats.class_keys,
            stats.num_classes.tolist(),
            stats.class_count,
            stats.class_sum,
            stats.level_sumsq,
        )

    # The statistics' buffers, also on the head.
    class_keys = property(lambda self: self.statistics.class_keys)
    num_classes = property(lambda self: self.statistics.num_classes)
    class_count = property(lambda self: self.statistics.class_count)
    class_sum = property(lambda self: self.statistics.class_sum)
    level_sumsq = property(lambda self: self.statistics.level_sumsq)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, refit_every={self.refit_every}, "
            f"warmup_steps={self.warmup_steps}, momentum={self.momentum}, "
            f"normalize_input={self.normalize_input}, nested={self.nested}"
        )

    def _pinned_device(self) -> torch.device:
        return self.masks.device

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Older checkpoints name the statistics on the head, and may hold removed buffers.
        for name in (*_STAT_NAMES, "_extra_state"):
            old, new = prefix + name, prefix + "statistics." + name
            if old in state_dict and new not in state_dict:
                state_dict[new] = state_dict.pop(old)
        for name in ("estimated_num_levels", "bic_scores", "dpgmm_weights"):
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._register()  # a copy (deepcopy, pickle) must not step the original

    def _register(self) -> None:
        self._key = next(_KEYS)
        _HEADS[self._key] = self

    def _step_buffers(self) -> list[Tensor]:
        """The buffers that a training step may write (the statistics' only at refits)."""
        return [self.masks, self.step, self.fitted, self.descriptors, *self.statistics.buffers()]

    @torch.no_grad()
    def _train_step(self, z: Tensor, labels: Tensor) -> None:
        x = z.to(torch.float64)
        self.statistics.update(F.normalize(x, dim=1) if self.normalize_input else x, labels)
        self.step.add_(1)
        self._host_step += 1
        since = self._host_step - max(self.warmup_steps, 1)
        if since >= 0 and since % self.refit_every == 0:
            self._refit(explicit=False)

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
        if self.num_levels == 1:
            self.last_fit = None
            masks = torch.ones(1, self.dim, device=descriptors.device)
        else:
            options = dataclasses.asdict(self.em_options)
            self.last_fit = fit_gaussian_mixture(descriptors, self.num_levels, **options)
            masks = assign_masks(
                descriptors,
                self.last_fit.responsibilities,
                min_dims_per_level=self.min_dims_per_level,
                nested=self.nested,
            )
        self.descriptors.copy_(descriptors)
        self.masks.copy_(masks.to(self.masks.dtype))
        self.fitted.fill_(True)


# Heads by key, for the training-step op, which cannot take a module.
_KEYS = itertools.count()
_HEADS: weakref.WeakValueDictionary[int, GMMFeatureMaskHead] = weakref.WeakValueDictionary()


# A training step is opaque to torch.compile: the refit schedule counts steps on the host
# (traced, that count is a guard, and every step would recompile) and a refit reads the
# device. The compiled graph calls this op, which runs the step eagerly at that point. It
# declares the buffers the step may write, and leaves them in ``buffers`` in case the
# compiler passes copies of them. It stays out of CUDA graphs, whose replays would skip it.
@torch.library.custom_op(
    "lightly_hmlc::gmm_head_step",
    mutates_args=("buffers",),
    # (The tag is newer than custom_op: older torch has no CUDA-graph trees to skip it.)
    tags=(torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else (),
)
def _gmm_head_step(key: int, z: Tensor, labels: Tensor, buffers: list[Tensor]) -> None:
    head = _HEADS[key]
    head._train_step(z, labels)
    for given, own in zip(buffers, head._step_buffers(), strict=True):
        if given.data_ptr() != own.data_ptr():
            given.copy_(own)


@_gmm_head_step.register_fake
def _(key: int, z: Tensor, labels: Tensor, buffers: list[Tensor]) -> None:
    return None


def _sync_host_step(module: torch.nn.Module, incompatible_keys: Any) -> None:
    # The step count is mirrored on the host so the refit schedule never reads the device.
    if isinstance(module, GMMFeatureMaskHead):
        module._host_step = int(module.step.item())


def _check_loaded_mask_form(head: torch.nn.Module, incompatible_keys: Any) -> None:
    # A checkpoint of the other mask form would switch form silently at the next refit.
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
    if not head.nested and nested_form:
        raise ValueError(
            "The checkpoint's G-HMLC masks are nested, but the head was built with "
            "nested=False (a partition). Build it with nested=True (the default) to "
            "continue it."
        )
