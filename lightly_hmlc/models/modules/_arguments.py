"""The range checks of the mask heads' (and their parts') constructor arguments.

One function per kind of check, so that the same mistake gets the same message in every
head, the memory bank and the GMM parts.
"""

from __future__ import annotations

import torch
from torch import Tensor

GATES = ("sigmoid", "softmax")


def check_int(name: str, value: object, minimum: int = 1, meaning: str = "") -> None:
    """Raises a ValueError unless ``value`` is an int (a bool is not) ``>= minimum``.

    Args:
        name: The argument's name, as the message gives it.
        value: Its value.
        minimum: The smallest value allowed.
        meaning: What the argument is, added to the message in parentheses.

    Raises:
        ValueError: ``"<name> must be a positive int (<meaning>), got <value>."`` (``an
            int >= <minimum>`` for a minimum other than 1).

    Examples:
        >>> check_int("dim", 0, meaning="the width of the projections")
        Traceback (most recent call last):
        ...
        ValueError: dim must be a positive int (the width of the projections), got 0.
        >>> check_int("warmup_steps", -1, minimum=0)
        Traceback (most recent call last):
        ...
        ValueError: warmup_steps must be an int >= 0, got -1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        explained = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be {bound}{explained}, got {value!r}.")


def check_positive(name: str, value: float, allow_zero: bool = False, meaning: str = "") -> None:
    """Raises a ValueError unless ``value > 0`` (``>= 0`` with ``allow_zero``); NaN fails.

    Args:
        name: The argument's name, as the message gives it.
        value: Its value.
        allow_zero: Accept 0 (e.g. a weight where 0 turns a term off).
        meaning: What the argument does, added to the message in parentheses.

    Raises:
        ValueError: ``"<name> must be > 0 (<meaning>), got <value>."`` (``>= 0`` with
            ``allow_zero``).

    Examples:
        >>> check_positive("separation_weight", -1.0, allow_zero=True)
        Traceback (most recent call last):
        ...
        ValueError: separation_weight must be >= 0, got -1.0.
    """
    if not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        explained = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be {bound}{explained}, got {value}.")


def check_gate(gate: str) -> None:
    """Raises a ValueError unless ``gate`` is one of :data:`GATES`.

    Examples:
        >>> check_gate("relu")
        Traceback (most recent call last):
        ...
        ValueError: gate must be 'sigmoid' or 'softmax', got 'relu'.
    """
    if gate not in GATES:
        raise ValueError(f"gate must be 'sigmoid' or 'softmax', got {gate!r}.")


def apply_gate(logits: Tensor, gate: str, temperature: float) -> Tensor:
    """Masks from gate logits ``[..., D]``: ``sigmoid(logits / T)`` (each in (0, 1)) or
    ``D * softmax(logits / T)`` over the last dimension (mean 1).

    Examples:
        >>> apply_gate(torch.zeros(1, 4), "softmax", 1.0)
        tensor([[1., 1., 1., 1.]])
    """
    logits = logits / temperature
    if gate == "sigmoid":
        return torch.sigmoid(logits)
    return logits.shape[-1] * torch.softmax(logits, dim=-1)
