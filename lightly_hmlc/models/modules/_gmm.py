"""Gaussian mixture models fitted by EM in torch, with sklearn's conventions: batched
restarts, any device, seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightly_hmlc.models.modules._arguments import check_int, check_positive

CovarianceType = Literal["full", "diag"]
InitMethod = Literal["kmeans", "kmeans++", "random"]

_COVARIANCE_TYPES = ("full", "diag")
_INIT_METHODS = ("kmeans", "kmeans++", "random")
# Lloyd iterations after k-means++ seeding; fixed so that the init never syncs the device.
_KMEANS_ITERS = 30


@dataclass
class GaussianMixtureFit:
    """The result of :func:`fit_gaussian_mixture`, the best of its restarts.

    Tensors stay on the data's device, scalars 0-dim tensors, so reading a fit never
    synchronises an accelerator. ``covariances`` is [K, F, F] for ``"full"``, [K, F] for
    ``"diag"``; ``log_likelihood`` is the mean per sample (sklearn's ``score``).
    """

    weights: Tensor
    means: Tensor
    covariances: Tensor
    covariance_type: str
    log_likelihood: Tensor
    responsibilities: Tensor
    converged: Tensor
    n_iter: Tensor
    n_samples: int

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    def n_parameters(self) -> int:
        """Number of free parameters (sklearn's ``_n_parameters``)."""
        k, f = self.n_components, self.n_features
        cov_params = k * f * (f + 1) // 2 if self.covariance_type == "full" else k * f
        return cov_params + k * f + k - 1

    def score_samples(self, x: Tensor) -> Tensor:
        """Log density [N] of each sample of ``x`` [N, F] under the mixture."""
        x = _as_data(x, self.means.dtype, self.n_features)
        weighted = _weighted_log_prob(
            x, self.weights[None], self.means[None], self.covariances[None], self.covariance_type
        )[0]
        return torch.logsumexp(weighted, dim=-1)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Posterior [N, K] of each component for the samples ``x`` [N, F]."""
        x = _as_data(x, self.means.dtype, self.n_features)
        weighted = _weighted_log_prob(
            x, self.weights[None], self.means[None], self.covariances[None], self.covariance_type
        )[0]
        return torch.softmax(weighted, dim=-1)


def check_fit_options(
    covariance_type: str, n_init: int, max_iter: int, tol: float, reg_covar: float
) -> None:
    """Raises a ValueError naming an EM option out of range."""
    if covariance_type not in _COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {_COVARIANCE_TYPES}, got {covariance_type!r}."
        )
    check_int("n_init", n_init)
    check_int("max_iter", max_iter)
    check_positive("tol", tol, allow_zero=True)
    check_positive("reg_covar", reg_covar, allow_zero=True)


@dataclass(frozen=True)
class EMOptions:
    """The EM settings of G-HMLC's fit (see :func:`fit_gaussian_mixture`).

    ``n_init`` restarts (the best wins), at most ``max_iter`` iterations each, stopping when
    the mean log-likelihood changes by less than ``tol``; ``reg_covar`` is added to the
    covariance diagonals, and ``seed`` makes a fit deterministic.

    Examples:
        >>> EMOptions(n_init=1)
        EMOptions(n_init=1, max_iter=100, tol=0.001, reg_covar=1e-06, seed=0)
    """

    n_init: int = 3
    max_iter: int = 100
    tol: float = 1e-3
    reg_covar: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        check_fit_options("full", self.n_init, self.max_iter, self.tol, self.reg_covar)


def fit_gaussian_mixture(
    x: Tensor,
    n_components: int,
    *,
    covariance_type: CovarianceType = "full",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    init: InitMethod = "kmeans",
    seed: int = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> GaussianMixtureFit:
    """Fits a Gaussian mixture model with EM, all ``n_init`` restarts batched together.

    A converged restart is frozen, so each gives its result alone; the highest final
    log-likelihood wins. ``init`` is ``"kmeans"`` (k-means++ seeding and Lloyd iterations,
    as sklearn), ``"kmeans++"`` or ``"random"``; ``generator`` overrides ``seed``. On an
    accelerator convergence is read every 10 iterations only.

    Examples:
        >>> x = torch.cat([torch.randn(50, 2) - 4, torch.randn(50, 2) + 4])
        >>> fit = fit_gaussian_mixture(x, n_components=2, seed=0)
        >>> fit.means.shape, fit.responsibilities.shape, bool(fit.converged)
        (torch.Size([2, 2]), torch.Size([100, 2]), True)
    """
    check_fit_options(covariance_type, n_init, max_iter, tol, reg_covar)
    if init not in _INIT_METHODS:
        raise ValueError(f"init must be one of {_INIT_METHODS}, got {init!r}.")
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x)
        raise ValueError(f"x must be a tensor of shape [N, F] with N, F >= 1, got {shape}.")
    n = x.shape[0]
    if n_components < 1 or n_components > n:
        raise ValueError(
            f"n_components must be in [1, N={n}] (at least one sample per component), "
            f"got {n_components}."
        )
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}.")

    x = x.detach().to(dtype)
    if generator is None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)

    resp = _initial_responsibilities(x, n_components, n_init, init, generator)
    weights, means, covs = _m_step(x, resp, covariance_type, reg_covar)

    check_every = 1 if x.device.type == "cpu" else 10
    prev = torch.full((n_init,), -math.inf, dtype=dtype, device=x.device)
    converged = torch.zeros(n_init, dtype=torch.bool, device=x.device)
    n_iter = torch.zeros(n_init, dtype=torch.long, device=x.device)
    for it in range(1, max_iter + 1):
        log_prob_norm, log_resp = _e_step(x, weights, means, covs, covariance_type)
        new_weights, new_means, new_covs = _m_step(x, log_resp.exp(), covariance_type, reg_covar)
        active = ~converged
        weights = torch.where(active[:, None], new_weights, weights)
        means = torch.where(active[:, None, None], new_means, means)
        cov_active = active.view(-1, *([1] * (covs.ndim - 1)))
        covs = torch.where(cov_active, new_covs, covs)
        n_iter = torch.where(active, torch.full_like(n_iter, it), n_iter)
        change = log_prob_norm - prev
        prev = torch.where(active, log_prob_norm, prev)
        converged = converged | (active & (change.abs() < tol))
        if it % check_every == 0 and bool(converged.all()):
            break

    final_ll, final_log_resp = _e_step(x, weights, means, covs, covariance_type)
    # A NaN restart must never win the argmax.
    best = torch.nan_to_num(final_ll, nan=-math.inf).argmax()
    fit = GaussianMixtureFit(
        weights=weights[best],
        means=means[best],
        covariances=covs[best],
        covariance_type=covariance_type,
        log_likelihood=final_ll[best],
        responsibilities=final_log_resp[best].exp(),
        converged=converged[best],
        n_iter=n_iter[best],
        n_samples=n,
    )
    if not bool(torch.isfinite(fit.log_likelihood)):
        raise RuntimeError(
            "The Gaussian mixture fit produced non-finite values (a covariance matrix was "
            "singular). Increase reg_covar or use covariance_type='diag'."
        )
    return fit


def _as_data(x: Tensor, dtype: torch.dtype, n_features: int) -> Tensor:
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"x must have shape [N, {n_features}], got {tuple(x.shape)}.")
    return x.detach().to(dtype)


def _initial_responsibilities(
    x: Tensor, k: int, n_init: int, init: str, generator: torch.Generator
) -> Tensor:
    """Responsibilities [I, N, K] to start EM from."""
    n = x.shape[0]
    if init == "random":
        resp = torch.rand(n_init, n, k, generator=generator, device=x.device, dtype=x.dtype)
        return resp / resp.sum(-1, keepdim=True)
    centers = _kmeans_plus_plus(x, k, n_init, generator)
    if init == "kmeans":
        centers = _lloyd(x, centers, _KMEANS_ITERS)
    nearest = _nearest_center(x, centers)
    return torch.nn.functional.one_hot(nearest, k).to(x.dtype)


def _kmeans_plus_plus(x: Tensor, k: int, n_init: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding of every restart (the best of ``2 + log(K)`` candidates per
    center, as sklearn); returns centers [I, K, F].
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = torch.randint(n, (n_init,), generator=generator, device=x.device)
    centers = [x[first]]
    d2 = (x[None] - centers[0][:, None]).square().sum(-1)  # [I, N]
    rows = torch.arange(n_init, device=x.device)
    for _ in range(1, k):
        total = d2.sum(-1, keepdim=True)
        # All points on the chosen centers (duplicates): fall back to uniform sampling.
        probs = torch.where(total > 0, d2, torch.ones_like(d2))
        candidates = torch.multinomial(probs, trials, replacement=True, generator=generator)
        cand_d2 = (x[None, None] - x[candidates][:, :, None]).square().sum(-1)  # [I, T, N]
        cand_d2 = torch.minimum(d2[:, None], cand_d2)
        best = cand_d2.sum(-1).argmin(-1)  # [I]
        centers.append(x[candidates[rows, best]])
        d2 = cand_d2[rows, best]
    return torch.stack(centers, dim=1)


def _nearest_center(x: Tensor, centers: Tensor) -> Tensor:
    """Index [I, N] of the nearest of the centers [I, K, F] for each sample."""
    # Squared distances up to the per-sample constant |x|^2, which argmin ignores.
    scores = centers.square().sum(-1)[:, None] - 2 * (x @ centers.transpose(1, 2))  # [I, N, K]
    return scores.argmin(-1)


def _lloyd(x: Tensor, centers: Tensor, max_iter: int) -> Tensor:
    """Batched Lloyd iterations until no assignment changes; an empty cluster keeps its center."""
    k = centers.shape[1]
    check_every = 1 if x.device.type == "cpu" else 10
    previous: Tensor | None = None
    for it in range(1, max_iter + 1):
        nearest = _nearest_center(x, centers)
        if previous is not None and it % check_every == 0 and bool((nearest == previous).all()):
            break
        previous = nearest
        onehot = torch.nn.functional.one_hot(nearest, k).to(x.dtype)  # [I, N, K]
        counts = onehot.sum(1)  # [I, K]
        sums = onehot.transpose(1, 2) @ x  # [I, K, F]
        centers = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centers)
    return centers


def _m_step(
    x: Tensor, resp: Tensor, covariance_type: str, reg_covar: float
) -> tuple[Tensor, Tensor, Tensor]:
    """M-step for responsibilities [I, N, K]; returns weights [I, K], means [I, K, F], covs."""
    n, f = x.shape
    # Same guard as sklearn: an empty component keeps a tiny positive mass.
    nk = resp.sum(1) + 10 * torch.finfo(x.dtype).eps  # [I, K]
    means = (resp.transpose(1, 2) @ x) / nk[..., None]  # [I, K, F]
    diff = x[None, None] - means[:, :, None]  # [I, K, N, F]
    weighted = diff * resp.transpose(1, 2)[..., None]
    if covariance_type == "full":
        covs = weighted.transpose(-1, -2) @ diff / nk[..., None, None]
        covs = covs + reg_covar * torch.eye(f, dtype=x.dtype, device=x.device)
    else:
        covs = (weighted * diff).sum(2) / nk[..., None] + reg_covar
    return nk / n, means, covs


def _weighted_log_prob(
    x: Tensor, weights: Tensor, means: Tensor, covs: Tensor, covariance_type: str
) -> Tensor:
    """log(weight_k) + log N(x | mean_k, cov_k) of shape [I, N, K]."""
    f = x.shape[1]
    diff = x[None, None] - means[:, :, None]  # [I, K, N, F]
    if covariance_type == "full":
        chol = torch.linalg.cholesky_ex(covs)[0]  # [I, K, F, F]
        y = torch.linalg.solve_triangular(chol, diff.transpose(-1, -2), upper=False)
        maha = y.square().sum(-2)  # [I, K, N]
        log_det = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)  # [I, K]
    else:
        maha = (diff.square() / covs[:, :, None]).sum(-1)
        log_det = covs.log().sum(-1)
    log_prob = -0.5 * (f * math.log(2 * math.pi) + log_det[..., None] + maha)
    return log_prob.transpose(1, 2) + weights.log()[:, None]


def _e_step(
    x: Tensor, weights: Tensor, means: Tensor, covs: Tensor, covariance_type: str
) -> tuple[Tensor, Tensor]:
    """Returns the mean log-likelihood per restart [I] and log-responsibilities [I, N, K]."""
    weighted = _weighted_log_prob(x, weights, means, covs, covariance_type)
    log_norm = torch.logsumexp(weighted, dim=-1)
    return log_norm.mean(-1), weighted - log_norm[..., None]
