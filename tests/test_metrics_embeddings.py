"""Embedding metrics against plainly written numpy loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightly_hmlc.metrics import cpcc, level_separation


def _paths() -> torch.Tensor:
    # 3 levels, one path stops at level 1 (unknown fine label).
    base = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [1, 2, 4], [1, 3, -1]])
    return base.repeat(5, 1)


def _plain_separation(x: np.ndarray, paths: np.ndarray, level: int) -> tuple[float, float]:
    rows = [i for i in range(len(x)) if all(paths[i, : level + 1] >= 0)]
    keys = sorted({tuple(paths[i, : level + 1]) for i in rows})
    mean = x[rows].mean(axis=0)
    between = within = 0.0
    for key in keys:
        members = [i for i in rows if tuple(paths[i, : level + 1]) == key]
        centre = x[members].mean(axis=0)
        between += len(members) * float(((centre - mean) ** 2).sum())
        within += sum(float(((x[i] - centre) ** 2).sum()) for i in members)
    n, c = len(rows), len(keys)
    return between / (between + within), (between / (c - 1)) / (within / (n - c))


@pytest.mark.parametrize("normalize", [False, True])
def test_level_separation_equals_plain_anova(normalize: bool) -> None:
    torch.manual_seed(0)
    paths = _paths()
    x = torch.randn(len(paths), 5, dtype=torch.float64) + paths.clamp_min(0)[:, :1].double()
    sep = level_separation(x, paths, normalize=normalize)
    xs = torch.nn.functional.normalize(x, dim=1) if normalize else x
    for level in range(3):
        explained, fisher = _plain_separation(xs.numpy(), paths.numpy(), level)
        assert sep.explained_variance[level].item() == pytest.approx(explained, rel=1e-10)
        assert sep.fisher_ratio[level].item() == pytest.approx(fisher, rel=1e-10)
    assert sep.num_classes.tolist() == [2, 4, 5]


def test_separation_is_larger_for_clustered_embedding() -> None:
    torch.manual_seed(0)
    paths = _paths()
    centres = torch.randn(8, 16)
    clustered = centres[paths[:, 1]] + 0.05 * torch.randn(len(paths), 16)
    noise = torch.randn(len(paths), 16)
    assert (
        level_separation(clustered, paths).explained_variance
        > level_separation(noise, paths).explained_variance
    ).all()


def test_cpcc_equals_plain_correlation() -> None:
    torch.manual_seed(1)
    paths = _paths()
    x = torch.randn(len(paths), 4, dtype=torch.float64)
    classes = sorted({tuple(int(v) for v in row) for row in paths})
    xn = torch.nn.functional.normalize(x, dim=1).numpy()
    means, depth = {}, {}
    for key in classes:
        rows = [i for i, r in enumerate(paths.tolist()) if tuple(r) == key]
        means[key] = xn[rows].mean(axis=0)
        depth[key] = sum(1 for v in key if v >= 0)
    tree, emb = [], []
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            ka, kb = classes[a], classes[b]
            common = 0
            while common < 3 and ka[common] >= 0 and ka[common] == kb[common]:
                common += 1
            tree.append(depth[ka] + depth[kb] - 2 * common)
            emb.append(float(np.linalg.norm(means[ka] - means[kb])))
    assert cpcc(x, paths) == pytest.approx(float(np.corrcoef(tree, emb)[0, 1]), rel=1e-10)


def test_cpcc_is_one_for_tree_shaped_embedding() -> None:
    # Class means placed so that their distances are an affine function of tree distance.
    paths = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 0.0, 0.0], [5.0, 1.0, 0.0]])
    d = torch.cdist(x, x)
    assert d[0, 1] == d[2, 3] == 1.0  # siblings at tree distance 2
    assert cpcc(x, paths, normalize=False) > 0.95


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="one tree distance"):
        cpcc(torch.randn(6, 3), torch.tensor([[0], [1], [2], [0], [1], [2]]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        level_separation(torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        level_separation(torch.full((4, 2), float("nan")), torch.tensor([[0], [0], [1], [1]]))
    with pytest.raises(ValueError, match="integer"):
        cpcc(torch.randn(4, 2), torch.zeros(4, 2))
