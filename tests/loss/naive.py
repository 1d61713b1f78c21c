"""Plainly written per-anchor loss computations that the fast losses are checked against.

Everything here loops over anchors and levels in Python on purpose: it is slow and
obviously correct, and shares no code with ``lightly_hmlc.loss``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

# Every (loss_type, hce_form) pair whose terms differ: HMC has no constraint, so one form
# stands for all of it. The order is fixed (some tests index it).
LOSS_FORMS = [("hmc", "anchor_mean")] + [
    (loss_type, form) for form in ("batch_mean", "anchor_mean") for loss_type in ("hce", "hmce")
]


def stacked_views(out0: Tensor, out1: Tensor) -> Tensor:
    return F.normalize(torch.cat([out0, out1]).double(), dim=1)


def anchor_terms(z: Tensor, paths: list[list[int]], level: int, temperature: float) -> list[Tensor]:
    """SupCon L_out term of every anchor at one level; anchors without positives skipped."""
    n = z.shape[0]
    terms = []
    for i in range(n):
        prefix = paths[i][: level + 1]
        if any(value < 0 for value in prefix):
            continue
        positives = [j for j in range(n) if j != i and paths[j][: level + 1] == prefix]
        if not positives:
            continue
        others = [a for a in range(n) if a != i]
        log_denominator = torch.logsumexp(
            torch.stack([z[i] @ z[a] / temperature for a in others]), dim=0
        )
        log_probs = [z[i] @ z[p] / temperature - log_denominator for p in positives]
        terms.append(-torch.stack(log_probs).mean())
    return terms


def level_means(out0: Tensor, out1: Tensor, labels: Tensor, temperature: float) -> list[Tensor]:
    z = stacked_views(out0, out1)
    paths = labels.tolist() * 2
    means = []
    for level in range(labels.shape[1]):
        terms = anchor_terms(z, paths, level, temperature)
        means.append(torch.stack(terms).mean() if terms else z.sum() * 0.0)
    return means


def supcon(out0: Tensor, out1: Tensor, labels: Tensor, temperature: float) -> Tensor:
    return level_means(out0, out1, labels.reshape(-1, 1), temperature)[0]


def supcon_hierarchy_margin(
    out0: Tensor,
    out1: Tensor,
    paths: Tensor,
    temperature: float,
    margin: float,
    memory: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """SupCon on whole paths; a negative's cosine + margin per known coarser level apart."""
    z = stacked_views(out0, out1)
    rows = paths.tolist() * 2
    contrast, contrast_rows = z, list(rows)
    if memory is not None:
        contrast = torch.cat([z, F.normalize(memory[0].double(), dim=1)])
        contrast_rows += memory[1].tolist()
    num_levels = len(rows[0])

    def known(path: list[int], level: int) -> bool:
        return all(value >= 0 for value in path[: level + 1])

    def levels_apart(a: list[int], b: list[int]) -> int:
        return sum(
            1
            for level in range(num_levels - 1)
            if known(a, level) and known(b, level) and a[: level + 1] != b[: level + 1]
        )

    terms = []
    for i, path in enumerate(rows):
        if all(value < 0 for value in path):
            continue  # an entirely unknown path is no class
        positives = [j for j, other in enumerate(contrast_rows) if j != i and other == path]
        if not positives:
            continue
        logits = [
            (z[i] @ contrast[a] + margin * levels_apart(path, contrast_rows[a])) / temperature
            for a in range(len(contrast_rows))
            if a != i
        ]
        log_denominator = torch.logsumexp(torch.stack(logits), dim=0)
        log_probs = [z[i] @ contrast[p] / temperature - log_denominator for p in positives]
        terms.append(-torch.stack(log_probs).mean())
    return torch.stack(terms).mean()


def penalty_weights(num_levels: int, penalty: str) -> list[float]:
    functions = {"exp": math.exp, "pow2": lambda x: 2.0**x, "uniform": lambda x: 1.0}
    # Level l (coarse to fine) is the (L - l)-th counted from the finest.
    return [functions[penalty](1.0 / (num_levels - level)) for level in range(num_levels)]


def weighted_sum(weights: list[float], terms: list[Tensor]) -> Tensor:
    """``sum_l w_l * term_l``, a plain Python sum in level order (the level weighting)."""
    return cast(Tensor, sum(w * t for w, t in zip(weights, terms, strict=True)))


def positives_of(paths: list[list[int]], i: int, level: int) -> list[int]:
    """Rows that share anchor i's fully known prefix down to ``level`` (i excluded)."""
    prefix = paths[i][: level + 1]
    if any(value < 0 for value in prefix):
        return []
    return [j for j in range(len(paths)) if j != i and paths[j][: level + 1] == prefix]


def levels_apart_above(a: list[int], b: list[int], level: int) -> int:
    """Levels coarser than ``level`` where both paths are known and their prefixes differ."""

    def known(path: list[int], depth: int) -> bool:
        return all(value >= 0 for value in path[: depth + 1])

    return sum(
        1
        for depth in range(level)
        if known(a, depth) and known(b, depth) and a[: depth + 1] != b[: depth + 1]
    )


def pair_loss(
    z: Tensor,
    i: int,
    p: int,
    temperature: float,
    margin: float = 0.0,
    paths: list[list[int]] | None = None,
    level: int = 0,
) -> Tensor:
    """-log softmax of pair (i, p) over all rows but i; with ``margin``, a row ``k``
    levels apart above ``level`` enters the denominator with cosine + k * margin."""
    others = [a for a in range(z.shape[0]) if a != i]
    offsets = [
        margin * levels_apart_above(paths[i], paths[a], level) if paths else 0.0 for a in others
    ]
    log_denominator = torch.logsumexp(
        torch.stack(
            [(z[i] @ z[a] + o) / temperature for a, o in zip(others, offsets, strict=True)]
        ),
        dim=0,
    )
    return log_denominator - z[i] @ z[p] / temperature


def hce_pair_level_means(
    level_z: list[Tensor],
    labels: Tensor,
    temperature: float,
    form: str = "pair",
    margin: float = 0.0,
) -> list[Tensor]:
    """Per-level means of HiConE applied per pair, one plain loop per anchor and pair.

    ``level_z[l]`` are the ``[2B, D]`` features level l sees. The pair (i, p) at level l
    costs ``max(loss_l(i, p), largest loss_l'(i, p') over finer levels l' and their
    positives p' of the same anchor i)``; with ``form="same_pair"``, of the pair (i, p)
    itself at the finer levels where p is a positive; with ``form="anchor_mean"``, the
    largest over finer levels l' of the MEAN of anchor i's pair losses at l'; with
    ``margin``, every level's pair loss has the hierarchy margin of that level; with
    ``form="none"``, no bound (the plain level terms).
    """
    paths = labels.tolist() * 2
    num_levels = labels.shape[1]

    def loss_at(level: int, i: int, p: int) -> Tensor:
        return pair_loss(level_z[level], i, p, temperature, margin, paths, level)

    means = []
    for level in range(num_levels):
        terms = []
        for i in range(len(paths)):
            positives = positives_of(paths, i, level)
            if not positives:
                continue
            finer = [
                loss_at(finer_level, i, q)
                for finer_level in range(level + 1, num_levels)
                for q in positives_of(paths, i, finer_level)
            ]
            if form == "anchor_mean":
                finer = [
                    torch.stack([loss_at(finer_level, i, q) for q in finer_positives]).mean()
                    for finer_level in range(level + 1, num_levels)
                    if (finer_positives := positives_of(paths, i, finer_level))
                ]
            if form == "none":
                finer = []
            pair_terms = []
            for p in positives:
                loss = loss_at(level, i, p)
                if form == "same_pair":
                    finer = [
                        loss_at(finer_level, i, p)
                        for finer_level in range(level + 1, num_levels)
                        if p in positives_of(paths, i, finer_level)
                    ]
                for bound in finer:
                    loss = torch.maximum(loss, bound)
                pair_terms.append(loss)
            terms.append(torch.stack(pair_terms).mean())
        means.append(torch.stack(terms).mean() if terms else level_z[0].sum() * 0.0)
    return means


def hmlc(
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    loss_type: str,
    temperature: float,
    penalty: str = "exp",
    normalize_weights: bool = True,
    hce_form: str = "anchor_mean",
    margin: float = 0.0,
) -> Tensor:
    num_levels = labels.shape[1]
    if margin > 0:  # each level has its own denominators: every per-pair form binds
        form = hce_form if loss_type != "hmc" and hce_form != "batch_mean" else "none"
        means = hce_pair_level_means(
            [stacked_views(out0, out1)] * num_levels, labels, temperature, form, margin
        )
    elif loss_type != "hmc" and hce_form in ("pair", "anchor_mean"):  # same_pair: plain
        means = hce_pair_level_means(
            [stacked_views(out0, out1)] * num_levels, labels, temperature, hce_form
        )
    else:
        means = level_means(out0, out1, labels, temperature)
    if loss_type in ("hce", "hmce") and hce_form == "batch_mean":
        means = [torch.stack(means[level:]).max() for level in range(num_levels)]
    if loss_type == "hce":
        return torch.stack(means).mean()
    weights = penalty_weights(num_levels, penalty)
    divisor = sum(weights) if normalize_weights else num_levels
    return weighted_sum(weights, means) / divisor


def reference_algorithm(
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    loss_type: str,
    temperature: float,
    penalty: str = "pow2",
    base_temperature: float = 0.07,
) -> Tensor:
    """The published reference algorithm, step by step, as its paper's code does it.

    Finest level first; after each level keep, for every distinct prefix in sorted order,
    the first sample in the current order; multiply each term by T / base_T; divide by
    the number of label columns including the instance id.
    """
    num_levels = labels.shape[1]
    rows = labels.tolist()
    order = list(range(len(rows)))
    z0 = F.normalize(out0.double(), dim=1)
    z1 = F.normalize(out1.double(), dim=1)
    total = z0.sum() * 0.0
    previous_max = None
    for step in range(1, num_levels + 1):
        level = num_levels - step
        z = torch.cat([z0[order], z1[order]])
        paths = [rows[i] for i in order] * 2
        terms = anchor_terms(z, paths, level, temperature)
        term = torch.stack(terms).mean() * (temperature / base_temperature)
        if loss_type in ("hce", "hmce") and previous_max is not None:
            term = torch.maximum(previous_max, term)
        previous_max = term if previous_max is None else torch.maximum(previous_max, term)
        weight = {"pow2": 2.0 ** (1.0 / step), "exp": math.exp(1.0 / step)}[penalty]
        total = total + (term if loss_type == "hce" else weight * term)
        kept: dict[tuple[int, ...], int] = {}
        for i in order:
            kept.setdefault(tuple(rows[i][: level + 1]), i)
        order = [kept[prefix] for prefix in sorted(kept)]
    return total / (num_levels + 1)


def random_tree_labels(
    batch_size: int, branching: list[int], generator: torch.Generator, unknown: float = 0.0
) -> Tensor:
    """Label paths of a random tree: level-l ids are unique per prefix."""
    columns = []
    previous = torch.zeros(batch_size, dtype=torch.long)
    for width in branching:
        previous = previous * width + torch.randint(0, width, (batch_size,), generator=generator)
        columns.append(previous)
    labels = torch.stack(columns, dim=1)
    if unknown > 0:
        # Unknown from some level down to the finest, as for a leaf higher in the tree.
        drop = torch.rand(batch_size, generator=generator) < unknown
        start = torch.randint(0, len(branching), (batch_size,), generator=generator)
        level = torch.arange(len(branching)).unsqueeze(0)
        labels[drop.unsqueeze(1) & (level >= start.unsqueeze(1))] = -1
    return labels


def assert_value_and_gradients_close(ours: Tensor, expected: Tensor, inputs: list[Tensor]) -> None:
    """``ours`` equals the float64 loop ``expected``, and so do their gradients w.r.t. ``inputs``."""
    torch.testing.assert_close(ours.double(), expected)
    for got, want in zip(
        torch.autograd.grad(ours, inputs),
        torch.autograd.grad(expected, inputs),
        strict=True,
    ):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
