"""Argument validation shared by every jaxlearn factory.

Hyperparameters are checked when they are concrete numbers. Under `jax.jit`, `jax.vmap` or
`optax.inject_hyperparams` inside a traced function they are tracers; those cannot be inspected
without breaking tracing, so they are left alone (they were checked when the user first built the
optimizer with concrete values). Nothing is ever clamped: a bad value raises a `ValueError` that
names the argument and the allowed range.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _check_kind(name: str, value: Any) -> None:
  """A hyperparameter is a number, an array scalar, a schedule or a tracer: never None or text
  (`adamp(None)` would otherwise build an optimizer that steps uphill, and `nag_gs('0.01')` one
  that fails at its first update with an unrelated error)."""
  if value is None or isinstance(value, (str, bytes)):
    raise ValueError(f"{name} must be a number or a schedule, got {value!r}")


def concrete_float(value: Any) -> float | None:
  """Returns `value` as a Python float, or None if it is traced, a schedule or not a scalar."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    array = np.asarray(value)
  except (TypeError, ValueError):
    return None
  if array.shape != () or not np.issubdtype(array.dtype, np.number):
    return None
  return float(array)


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
  """Raises ValueError unless `value` is a finite number in the interval given by `low`, `high`.

  Schedules (callables) and traced values are accepted as they are. NaN is always rejected, and
  so are +-inf (an open end of the interval is written `inf)` and excludes infinity), None and
  strings.
  """
  _check_kind(name, value)
  number = concrete_float(value)
  if number is None:
    return
  left = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
  right = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
  allowed = f"{left}, {right}"
  too_low = low is not None and (number < low or (number == low and not low_inclusive))
  too_high = high is not None and (number > high or (number == high and not high_inclusive))
  if not math.isfinite(number) or too_low or too_high:
    raise ValueError(f"{name} must be in {allowed}, got {value!r}")


def check_non_negative(name: str, value: Any) -> None:
  check_range(name, value, 0.0, None)


def check_positive(name: str, value: Any) -> None:
  check_range(name, value, 0.0, None, low_inclusive=False)


def check_unit_interval(name: str, value: Any) -> None:
  """For decay rates such as Adam's betas: [0, 1)."""
  check_range(name, value, 0.0, 1.0, high_inclusive=False)


def check_positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
  """For flags such as `nesterov`: True or False, not a truthy string or number."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be True or False, got {value!r}")


def check_float_dtype(name: str, dtype: Any) -> None:
  """None or a floating-point (or complex) dtype, e.g. `mu_dtype`: an integer state would round
  every moment update to zero."""
  if dtype is None:
    return
  try:
    resolved = jnp.dtype(dtype)
  except TypeError:
    raise ValueError(f"{name} must be None or a floating-point dtype, got {dtype!r}") from None
  if not jnp.issubdtype(resolved, jnp.inexact):
    raise ValueError(f"{name} must be None or a floating-point dtype, got {dtype!r}")


def check_axis(name: str, axis: int, ndim: int) -> int:
  """Returns `axis` in [0, ndim), or raises unless -ndim <= axis < ndim (no silent wrap-around)."""
  if not -ndim <= axis < ndim:
    raise ValueError(
        f"{name}={axis} is out of range for an array with {ndim} dimensions "
        f"(allowed: {-ndim} to {ndim - 1})"
    )
  return axis % ndim
