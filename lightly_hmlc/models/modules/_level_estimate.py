"""How many hierarchy levels does an embedding support? BIC or a Dirichlet-process GMM.

The descriptors of G-HMLC (one point per embedding dimension, Ott et al.,
https://arxiv.org/abs/2510.00837) form one cluster per level the embedding separates.
Ott et al. name a Dirichlet-process GMM that infers the number of levels as future work;
:func:`select_n_components_dpgmm` is that estimate, beside the BIC sweep of
:func:`~lightly_hmlc.models.modules._gmm.select_n_components_bic`.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor

from lightly_hmlc.models.modules._arguments import check_int
from lightly_hmlc.models.modules._gmm import select_n_components_bic

LevelEstimator = Literal["bic", "dpgmm"]
ESTIMATORS = ("bic", "dpgmm")

# A DP-GMM component counts as a level when it holds more than this share of the points.
DEFAULT_WEIGHT_THRESHOLD = 0.05


def check_estimate_options(
    estimate_levels: object,
    weight_threshold: float,
    max_levels_to_try: int | None,
    num_levels: int,
    dim: int,
) -> int:
    """Validates the level-estimate options of a head; returns ``max_levels_to_try``.

    ``max_levels_to_try=None`` resolves to ``min(num_levels + 2, dim)``.

    Raises:
        ValueError: If an option is out of range.
    """
    if estimate_levels not in (False, True, *ESTIMATORS):
        raise ValueError(
            f"estimate_levels must be False, True (= 'bic'), 'bic' or 'dpgmm', got "
            f"{estimate_levels!r}."
        )
    if not 0.0 < weight_threshold < 1.0:
        raise ValueError(f"level_weight_threshold must be in (0, 1), got {weight_threshold}.")
    if max_levels_to_try is None:
        return min(num_levels + 2, dim)
    if (
        isinstance(max_levels_to_try, bool)
        or not isinstance(max_levels_to_try, int)
        or not 1 <= max_levels_to_try <= dim
    ):
        raise ValueError(
            f"max_levels_to_try must be an int in [1, dim={dim}] (one dimension per "
            f"component at most), got {max_levels_to_try!r}."
        )
    return max_levels_to_try


def select_n_components_dpgmm(
    x: Tensor,
    max_components: int,
    *,
    weight_threshold: float = DEFAULT_WEIGHT_THRESHOLD,
    weight_concentration_prior: float | None = None,
    covariance_type: str = "full",
    n_init: int = 3,
    max_iter: int = 1000,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    seed: int = 0,
) -> tuple[int, Tensor]:
    """Number of mixture components a truncated Dirichlet-process GMM keeps.

    Fits ``sklearn.mixture.BayesianGaussianMixture`` with a Dirichlet-process
    (stick-breaking) prior over ``max_components`` components; variational inference
    empties the components the data do not need. The estimate is the number of
    components whose mixing weight exceeds ``weight_threshold`` (at least 1).

    Args:
        x: Samples [N, F] (any device; the fit runs on the CPU in float64).
        max_components: Truncation level K of the process (>= 1; at most N is used).
        weight_threshold: Minimum mixing weight of a counted component, in (0, 1);
            default 0.05 (a level must own more than 5% of the dimensions).
        weight_concentration_prior: The process's concentration; None gives sklearn's
            ``1 / K``. Larger values favour more components.
        covariance_type: ``"full"`` or ``"diag"``.
        n_init: Restarts; the best lower bound wins (3 by default: one variational run
            from a k-means start sometimes splits a cluster).
        max_iter: Maximum variational iterations.
        tol: Convergence threshold on the lower bound.
        reg_covar: Added to the covariance diagonals.
        seed: ``random_state`` of the fit.

    Returns:
        The estimate and the mixing weights, sorted in decreasing order (float64, [K]).

    Raises:
        ValueError: If an argument is out of range.
        ImportError: If scikit-learn is not installed.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(60, 2, generator=g) + c for c in (-8.0, 0.0, 8.0)])
        >>> k, weights = select_n_components_dpgmm(x, max_components=6)
        >>> k, weights.shape, round(float(weights.sum()), 6)
        (3, torch.Size([6]), 1.0)
    """
    check_int("max_components", max_components)
    if not 0.0 < weight_threshold < 1.0:
        raise ValueError(
            f"weight_threshold must be in (0, 1) (the share of points a counted component "
            f"holds), got {weight_threshold}."
        )
    if weight_concentration_prior is not None and not weight_concentration_prior > 0:
        raise ValueError(
            f"weight_concentration_prior must be > 0 or None, got {weight_concentration_prior}."
        )
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x)
        raise ValueError(f"x must be a tensor of shape [N, F] with N >= 2, got {shape}.")
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import BayesianGaussianMixture
    except ImportError as error:  # scikit-learn is an optional dependency
        raise ImportError(
            "The 'dpgmm' level estimate needs scikit-learn: pip install scikit-learn "
            "(or lightly_hmlc[benchmarks]), or use the 'bic' estimate."
        ) from error
    k = min(max_components, x.shape[0])
    model = BayesianGaussianMixture(
        n_components=k,
        covariance_type=covariance_type,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=weight_concentration_prior,
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        random_state=seed,
    )
    data = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    with warnings.catch_warnings():
        # A lower bound still creeping at max_iter leaves the weights' ranking intact.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(data)
    weights = torch.as_tensor(model.weights_, dtype=torch.float64).sort(descending=True).values
    return max(1, int((weights > weight_threshold).sum())), weights


def estimate_components(
    x: Tensor,
    max_components: int,
    method: LevelEstimator,
    *,
    weight_threshold: float = DEFAULT_WEIGHT_THRESHOLD,
    **fit_kwargs: Any,
) -> tuple[int, Tensor]:
    """Dispatches to the BIC sweep or the DP-GMM; returns the estimate and its scores.

    Args:
        x: Samples [N, F].
        max_components: Largest number of components considered.
        method: ``"bic"`` (scores: BIC per K = 1..max) or ``"dpgmm"`` (scores: sorted
            mixing weights).
        weight_threshold: Threshold of the DP-GMM estimate.
        **fit_kwargs: ``covariance_type``, ``n_init``, ``max_iter``, ``tol``,
            ``reg_covar``, ``seed`` (``max_iter`` is the EM limit of the BIC fits only).

    Returns:
        The number of components and the per-method scores.

    Examples:
        >>> x = torch.cat([torch.randn(50, 1) - 9, torch.randn(50, 1) + 9])
        >>> estimate_components(x, 4, "bic")[0], estimate_components(x, 4, "dpgmm")[0]
        (2, 2)
    """
    if method == "bic":
        return select_n_components_bic(x, max_components, **fit_kwargs)
    if method == "dpgmm":
        options = {key: value for key, value in fit_kwargs.items() if key != "max_iter"}
        return select_n_components_dpgmm(
            x, max_components, weight_threshold=weight_threshold, **options
        )
    raise ValueError(f"method must be one of {ESTIMATORS}, got {method!r}.")
