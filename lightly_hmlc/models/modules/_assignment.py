"""From a GMM over embedding dimensions to G-HMLC's per-level 0/1 masks."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def check_min_dims(min_dims_per_level: int, num_levels: int, dim: int) -> None:
    """Raises a ValueError unless ``min_dims_per_level`` is an int >= 1 that ``dim`` allows."""
    if (
        isinstance(min_dims_per_level, bool)
        or not isinstance(min_dims_per_level, int)
        or min_dims_per_level < 1
    ):
        raise ValueError(f"min_dims_per_level must be an int >= 1, got {min_dims_per_level!r}.")
    if dim < num_levels * min_dims_per_level:
        raise ValueError(
            f"dim={dim} cannot give {min_dims_per_level} dimension(s) to each of "
            f"{num_levels} levels; lower min_dims_per_level or use a wider projection."
        )


def match_components(component_means: Tensor) -> Tensor:
    """The component of each level by an exact maximum-weight matching of
    ``component_means`` [K, L], K >= L.
    """
    cost = component_means.detach().to(device="cpu", dtype=torch.float64).numpy()
    # Rows of the [L, K] matrix are levels; every level gets its own component.
    levels, components = linear_sum_assignment(cost.T, maximize=True)
    result = torch.empty(cost.shape[1], dtype=torch.long)
    result[torch.as_tensor(levels)] = torch.as_tensor(components)
    return result.to(component_means.device)


def enforce_min_dims(level: Tensor, level_resp: Tensor, num_levels: int, minimum: int) -> Tensor:
    """Moves the most responsible dimensions into levels with fewer than ``minimum`` dims.

    Every level keeps its ``minimum`` most responsible dimensions; a short level takes the
    others with the highest responsibility ``level_resp`` [D, L] for it. Fixed shapes only.
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


def assign_masks(
    scores: Tensor, responsibilities: Tensor, *, min_dims_per_level: int = 1, nested: bool = False
) -> Tensor:
    """0/1 masks [L, D] (float32) from the GMM responsibilities [D, K] of the dimensions.

    Components are matched to levels by their responsibility-weighted mean of ``scores``
    [D, L]; a dimension goes to its most responsible component's level, and every level
    keeps ``min_dims_per_level``. Nested masks are cumulative, coarse to fine.
    """
    num_levels = scores.shape[1]
    resp = responsibilities
    scores = scores.to(resp)
    # Responsibility-weighted mean relevance per component: [K, L].
    component_means = resp.T @ scores / resp.sum(0).clamp_min(1e-12)[:, None]
    level_to_component = match_components(component_means).to(resp.device)
    level_resp = resp[:, level_to_component]  # [D, L]
    level = level_resp.argmax(1)
    level = enforce_min_dims(level, level_resp, num_levels, min_dims_per_level)
    masks = torch.nn.functional.one_hot(level, num_levels).T.to(torch.float32)  # [L, D]
    if nested:
        masks = masks.cummax(dim=0).values
    return masks
