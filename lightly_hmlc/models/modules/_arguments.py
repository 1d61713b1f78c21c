"""Range checks of constructor arguments, one message for a mistake in every module."""

from __future__ import annotations


def check_int(name: str, value: object, minimum: int = 1, meaning: str = "") -> None:
    """Raises a ValueError unless ``value`` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        explained = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be {bound}{explained}, got {value!r}.")


def check_positive(name: str, value: float, allow_zero: bool = False, meaning: str = "") -> None:
    """Raises a ValueError unless ``value > 0`` (``>= 0`` with ``allow_zero``); NaN fails."""
    if not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        explained = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be {bound}{explained}, got {value}.")
