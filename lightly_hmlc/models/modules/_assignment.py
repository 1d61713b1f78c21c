"""From a GMM over embedding dimensions to per-level hard masks (G-HMLC).

Pure functions: match the mixture components to hierarchy levels, assign every dimension
to a level, and build the 0/1 masks of Ott et al. (https://arxiv.org/abs/2510.00837).
The choices are ours (the paper's public text does not give them); see ``docs/METHOD.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

Assignment = Literal["argmax", "threshold"]


def check_assignment_options(
    assignment: str, threshold: float, min_dims_per_level: int, num_levels: int, dim: int
) -> None:
    """Raises a ValueError naming an assignment option that is out of range."""
    if assignment not in ("argmax", "threshold"):
        raise ValueError(f"assignment must be 'argmax' or 'threshold', got {assignment!r}.")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"assignment_threshold must be in (0, 1], got {threshold}.")
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
    """Component per level maximising the summed mean relevance of the matched pairs.

    An exact maximum-weight bipartite matching (``scipy.optimize.linear_sum_assignment``),
    for any number of levels.

    Args:
        component_means: [K, L] with K >= L; entry (k, h) is component k's
            responsibility-weighted mean relevance to level h.

    Returns:
        Long tensor [L] on the device of the input: the component matched to each level.

    Examples:
        >>> match_components(torch.tensor([[0.1, 0.9], [0.8, 0.7]])).tolist()
        [1, 0]
    """
    cost = component_means.detach().to(device="cpu", dtype=torch.float64).numpy()
    # Rows of the [L, K] matrix are levels; every level gets its own component.
    levels, components = linear_sum_assignment(cost.T, maximize=True)
    result = torch.empty(cost.shape[1], dtype=torch.long)
    result[torch.as_tensor(levels)] = torch.as_tensor(components)
    return result.to(component_means.device)


def enforce_min_dims(level: Tensor, level_resp: Tensor, num_levels: int, minimum: int) -> Tensor:
    """Moves the most responsible dimensions into levels with fewer than ``minimum`` dims.

    Every level keeps its ``minimum`` most responsible dimensions ("protected"); a level
    short of dimensions takes the unprotected ones with the highest responsibility for its
    component. Fixed shapes only; feasible because D >= L * minimum.

    Args:
        level: [D] level of each dimension.
        level_resp: [D, L] responsibility of each level's component for each dimension.
        num_levels: L.
        minimum: Dimensions every level must get.

    Returns:
        The new [D] levels.

    Examples:
        >>> resp = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
        >>> enforce_min_dims(torch.zeros(3, dtype=torch.long), resp, 2, 1).tolist()
        [0, 0, 1]
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
    scores: Tensor,
    responsibilities: Tensor,
    *,
    min_dims_per_level: int = 1,
    assignment: Assignment = "argmax",
    assignment_threshold: float = 0.5,
    nested: bool = False,
) -> Tensor:
    """0/1 masks [L, D] from the GMM responsibilities of the D dimensions.

    Component k's score for level h is its responsibility-weighted mean of ``scores[:, h]``;
    components are matched to levels by :func:`match_components`. Each dimension goes to
    the level of its most responsible component, every level keeps at least
    ``min_dims_per_level`` dimensions (:func:`enforce_min_dims`); with
    ``assignment="threshold"`` a dimension also joins every level whose component has
    responsibility >= ``assignment_threshold``. With ``nested=True`` the masks are
    cumulative from coarse to fine: level l sees the dimensions of levels 0..l, so the
    coarsest level keeps only its own dimensions and the finest sees them all.

    Args:
        scores: [D, L] relevance of each dimension to each level.
        responsibilities: [D, K] GMM posteriors, K >= L.
        min_dims_per_level: Minimum dimensions per level (D >= L * minimum).
        assignment: ``"argmax"`` (partition) or ``"threshold"`` (may overlap).
        assignment_threshold: Threshold of ``"threshold"``, in (0, 1].
        nested: Cumulative (coarse to fine) instead of per-level masks.

    Returns:
        float32 masks [L, D] on the device of ``responsibilities``.

    Examples:
        >>> scores = torch.tensor([[5.0, 0.0], [4.0, 1.0], [0.0, 6.0]])
        >>> resp = torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.9, 0.1]])
        >>> assign_masks(scores, resp).tolist()  # component 1 is level 0
        [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        >>> assign_masks(scores, resp, nested=True).tolist()  # the fine level sees all
        [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
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
    if assignment == "threshold":
        extra = (level_resp.T >= assignment_threshold).to(torch.float32)
        masks = torch.maximum(masks, extra)
    if nested:
        masks = masks.cummax(dim=0).values
    return masks
