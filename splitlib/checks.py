"""Argument checks shared by the public entry points: one clear error per kind of bad input.

Each check names the argument, the value it got and what is allowed: a TypeError for a value of
the wrong type, a ValueError for a value of the right type that is out of bounds. Entry points
call them before they compute or write anything. This module imports nothing from splitlib, so
every module can use it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def check_type(name: str, value: object, expected: type[T], hint: str = "") -> T:
    """`value` if it is an instance of `expected`, else a TypeError naming both."""
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be a {expected.__name__}, got {type(value).__name__} {value!r}{hint}")
    return value


def check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int within [low, high] (either bound optional); bools are not ints here."""
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        if high is None:
            allowed = "a positive int" if low == 1 else "a non-negative int" if low == 0 else f"an int >= {low}"
        else:
            allowed = f"an int in {low}..{high}"
        raise ValueError(f"{name} must be {allowed}, got {number}")
    return number


def check_positive_int(name: str, value: object, optional: bool = False) -> int | None:
    """A positive int (a batch size, a token limit), or None where `optional`."""
    if optional and value is None:
        return None
    return check_int(name, value, low=1)


def check_number(name: str, value: object, low: float | None = None, high: float | None = None, *,
                 open_low: bool = False, open_high: bool = False) -> float:
    """`value` as a finite float within its bounds (each optional; `open_*` excludes the bound)."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    too_low = low is not None and (number <= low if open_low else number < low)
    too_high = high is not None and (number >= high if open_high else number > high)
    if too_low or too_high:
        bounds = ([f"{'>' if open_low else '>='} {low:g}"] if low is not None else []) + (
            [f"{'<' if open_high else '<='} {high:g}"] if high is not None else [])
        raise ValueError(f"{name} must be {' and '.join(bounds)}, got {number:g}")
    return number


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`, else an error listing them."""
    options = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(options)}; got {type(value).__name__} {value!r}")
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")
    return value


def check_unique(name: str, values: Iterable[object]) -> None:
    """A ValueError naming the first value that appears twice, and where."""
    seen: dict[object, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            raise ValueError(f"{name} repeat {value!r} (at {seen[value]} and {index}): each must be unique")
        seen[value] = index


def check_finite_array(name: str, values: object) -> None:
    """A ValueError if an array or tensor holds NaN or infinite values (a tensor is read on its device)."""
    import torch

    if isinstance(values, torch.Tensor):
        bad = int((~torch.isfinite(values.detach())).sum())
        size = values.numel()
    else:
        array = np.asarray(values, dtype=float)
        bad, size = int((~np.isfinite(array)).sum()), array.size
    if bad:
        raise ValueError(f"{name} holds NaN or infinite values ({bad} of {size} entries)")


def check_grid(name: str, values: object) -> list[float]:
    """A multiplier grid as a list of floats: a 1-D sequence or array of numbers, non-empty,
    finite and without repeats (a repeated m would be scored twice under one key)."""
    if isinstance(values, (str, bytes)) or np.ndim(values) == 0:  # type: ignore[arg-type]
        raise TypeError(f"{name} must be a sequence or array of numbers, got {type(values).__name__} {values!r}")
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must hold numbers only, got {values!r}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must hold at least one multiplier, got {values!r}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    if len(np.unique(array)) != len(array):
        raise ValueError(f"{name} are {array.tolist()}: the grid repeats a multiplier (each m is scored once)")
    return [float(v) for v in array]


def check_multipliers(multipliers: object, intervention: object | None, what: str = "sweep") -> list[float]:
    """A sweep's grid (see `check_grid`), where m != 0 is allowed only with an intervention."""
    grid = check_grid(f"the {what}'s multipliers", multipliers)
    if intervention is None and any(m != 0 for m in grid):
        raise ValueError(f"the {what}'s multipliers are {grid}, but without an intervention only m = 0 is "
                         "meaningful; pass multipliers=[0.0]")
    return grid
