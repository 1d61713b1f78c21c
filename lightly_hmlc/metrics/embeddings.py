"""Metrics of an embedding against its label paths: does it carry the hierarchy?

Both run in float64 and L2-normalise the features first (``normalize=False`` for raw).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.label_paths import check_label_paths

__all__ = ["LevelSeparation", "level_separation", "cpcc"]


@dataclass(frozen=True)
class LevelSeparation:
    """Per level, coarse to fine: the share of the variance the classes explain
    (``explained_variance``), the ``fisher_ratio`` of between- to within-class scatter per
    degree of freedom, and ``num_classes``.
    """

    explained_variance: Tensor
    fisher_ratio: Tensor
    num_classes: Tensor


def level_separation(features: Tensor, paths: Tensor, *, normalize: bool = True) -> LevelSeparation:
    """Explained variance and Fisher ratio of every level's classes.

    At level ``l`` a sample's class is its label-path prefix down to ``l`` (samples with an
    unknown level in it are left out). With between-class scatter ``B``, within-class
    scatter ``W``, ``C`` classes and ``N`` samples: ``explained_variance = B / (B + W)`` and
    ``fisher_ratio = (B / (C - 1)) / (W / (N - C))``.

    Examples:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
        >>> paths = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]]).repeat(2, 1)
        >>> sep = level_separation(torch.cat([x, 0.9 * x]), paths, normalize=False)
        >>> [round(v, 3) for v in sep.explained_variance.tolist()]
        [0.988, 0.994]
    """
    x, paths = _check(features, paths, normalize)
    explained, fisher, classes = [], [], []
    for level in range(paths.shape[1]):
        known = (paths[:, : level + 1] >= 0).all(dim=1)
        xs, prefixes = x[known], paths[known, : level + 1]
        _, ids = torch.unique(prefixes, dim=0, return_inverse=True)
        n, c = xs.shape[0], int(ids.max()) + 1 if ids.numel() else 0
        if c < 2 or n <= c:
            raise ValueError(
                f"Level {level} has {c} classes and {n} samples with known labels: the "
                "separation needs at least 2 classes and more samples than classes."
            )
        counts = torch.bincount(ids, minlength=c).to(xs.dtype)
        means = torch.zeros(c, xs.shape[1], dtype=xs.dtype, device=xs.device)
        means = means.index_add_(0, ids, xs) / counts[:, None]
        between = (counts * (means - xs.mean(dim=0)).pow(2).sum(dim=1)).sum()
        within = (xs - means[ids]).pow(2).sum()
        explained.append(between / (between + within))
        fisher.append((between / (c - 1)) / (within / (n - c)).clamp_min(1e-300))
        classes.append(c)
    return LevelSeparation(
        explained_variance=torch.stack(explained),
        fisher_ratio=torch.stack(fisher),
        num_classes=torch.tensor(classes),
    )


def cpcc(features: Tensor, paths: Tensor, *, normalize: bool = True) -> float:
    """The cophenetic correlation coefficient (CPCC) of Zeng et al. [0], in [-1, 1].

    The Pearson correlation, over pairs of classes (distinct label paths), of their tree
    distance and the distance of their mean embeddings: 1 when the geometry follows the
    tree. Undefined (a ValueError) when all pairs lie at one tree distance.

    - [0] Zeng et al., ICLR 2023, https://openreview.net/forum?id=7J-30ilaUZM

    Examples:
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> round(cpcc(x, torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])), 3)
        0.997
    """
    x, paths = _check(features, paths, normalize)
    known = (paths >= 0).long().cumprod(dim=1).bool()
    paths = torch.where(known, paths, torch.full_like(paths, -1))
    classes, ids = torch.unique(paths, dim=0, return_inverse=True)
    c = classes.shape[0]
    counts = torch.bincount(ids, minlength=c).to(x.dtype)
    means = torch.zeros(c, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, ids, x)
    means = means / counts[:, None]
    known_c = classes >= 0
    depth = known_c.sum(dim=1)
    same = (classes[:, None, :] == classes[None, :, :]) & known_c[:, None, :] & known_c[None]
    common = same.long().cumprod(dim=2).sum(dim=2)
    tree = (depth[:, None] + depth[None, :] - 2 * common).to(x.dtype)
    rows, cols = torch.triu_indices(c, c, offset=1, device=x.device)
    tree_d, emb_d = tree[rows, cols], torch.cdist(means, means)[rows, cols]
    if tree_d.numel() < 2 or bool((tree_d == tree_d[0]).all()):
        raise ValueError(
            f"CPCC is undefined here: the {c} classes are all at one tree distance. It "
            "needs a hierarchy of at least two levels with classes at different distances."
        )
    if bool((emb_d == emb_d[0]).all()):
        raise ValueError("CPCC is undefined: every class mean is equally far from the others.")
    return float(torch.corrcoef(torch.stack([tree_d, emb_d]))[0, 1])


def _check(features: Tensor, paths: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError("features must be a [N, F] tensor of embeddings.")
    paths = check_label_paths(paths, batch_size=features.shape[0], name="paths")
    x = features.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or Inf.")
    if normalize:
        x = F.normalize(x, dim=1)
    return x, paths.long().to(x.device)
