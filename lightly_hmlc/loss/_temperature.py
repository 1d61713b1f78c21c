"""Temperatures: one for every level, or one per level (ours; issue 11 item 2).

A loss's ``temperature`` is a float (every level's logits are ``s / T``) or a tuple of
floats, one per level, coarse to fine (level ``l``'s logits are ``s / T_l``, in the
order of ``layer_penalty`` weight lists). The helpers below take either and keep the
arithmetic of a single float exactly as it was (``x / T``), so that a float temperature
gives the same values bit for bit. Per-level temperatures are applied as Python floats,
one division per level: no tensor is made from them, so nothing is copied to the device
and nothing synchronises.
"""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard

import torch
from torch import Tensor

# A float for every level, or one per level, coarse to fine.
Temperature = float | tuple[float, ...]


def is_finite_non_negative(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a real number (not a bool or a string), finite and ``>= 0``."""
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and 0 <= float(value) < float("inf")  # also refuses NaN
    )


def check_temperature(name: str, value: float) -> float:
    """``value`` as a float if it is a finite number > 0; else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number > 0, got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{name} must be > 0 and finite, got {value}: it divides the cosine "
            "similarities (0.1 is a common choice)."
        )
    return float(value)  # a plain float: no tensor (and no device) in the arithmetic


def check_temperatures(value: object, name: str = "temperature") -> Temperature:
    """A float, or a tuple of floats (one per level), each finite and > 0.

    Examples:
        >>> check_temperatures(0.1), check_temperatures([0.2, 0.1])
        (0.1, (0.2, 0.1))

    Raises:
        ValueError: For an empty sequence, a value that is not a number, or one that is
            not finite and > 0 (the message names its position).
    """
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(
                f"{name} is an empty sequence: give one value per level, coarse to fine "
                "(e.g. [0.2, 0.1]), or one float for every level."
            )
        return tuple(check_temperature(f"{name}[{i}]", v) for i, v in enumerate(value))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a number > 0 or a list of them (one per level, coarse to "
            f"fine), got {value!r}."
        )
    return check_temperature(name, float(value))


def check_level_count(temperature: Temperature, num_levels: int) -> None:
    """Raises a ValueError if per-level temperatures do not match the number of levels."""
    if isinstance(temperature, tuple) and len(temperature) != num_levels:
        raise ValueError(
            f"temperature has {len(temperature)} values (one per level) but the labels have "
            f"{num_levels} level(s): give {num_levels} temperatures, coarse to fine, or one "
            "float for every level."
        )


def level_temperature(temperature: Temperature, level: int) -> float:
    """The temperature of one level (``level`` counts coarse to fine)."""
    return temperature if isinstance(temperature, float) else temperature[level]


def smallest_temperature(temperature: Temperature) -> float:
    """The smallest temperature of any level: ``1 / it`` bounds every unit-norm logit."""
    return temperature if isinstance(temperature, float) else min(temperature)


def scale_levels(values: Tensor, temperature: Temperature) -> Tensor:
    """``values / T_l`` along the first dimension (size 1 or L: one slice per level).

    A float divides everything (the result keeps its shape); per-level temperatures give
    ``[L, ...]``, a size-1 first dimension serving every level.

    Examples:
        >>> scale_levels(torch.ones(1, 2), (0.5, 0.25)).tolist()
        [[2.0, 2.0], [4.0, 4.0]]
    """
    if isinstance(temperature, float):
        return values / temperature
    last = values.shape[0] - 1
    return torch.stack([values[min(level, last)] / t for level, t in enumerate(temperature)])


def level_logits(anchor_feats: Tensor, contrast_feats: Tensor, temperature: Temperature) -> Tensor:
    """``anchors . contrast / T_l`` of ``[1 | L, Na, D]`` and ``[1 | L, Nc, D]`` features.

    Returns ``[1 | L, Na, Nc]``: per-level temperatures on shared features give one
    similarity matrix scaled once per level. A float folds ``1 / T`` into the anchors,
    as the losses always have (one fewer pass over the ``[Na, Nc]`` logits).
    """
    contrast_t = contrast_feats.transpose(1, 2)
    if isinstance(temperature, float) or anchor_feats.shape[0] == len(temperature):
        return torch.bmm(scale_levels(anchor_feats, temperature), contrast_t)
    return scale_levels(torch.bmm(anchor_feats, contrast_t), temperature)
