"""Dense and convolution layers applied with a kernel given at call time.

Shared by the kernel reparametrizations (`weight_norm`, `spectral_norm`), which compute their
kernel and then apply it as `flax`'s Dense / Conv would: channels last, flax layouts ((in, out)
and (*window, in / groups, out)), any leading batch axes.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

from jaxlearn._checks import check_positive_int


def _check_inputs(layer: str, inputs: jax.Array, min_rank: int, features: int) -> None:
  if inputs.ndim < min_rank:
    raise ValueError(
        f"{layer} expects inputs of rank >= {min_rank} (batch..., features), got shape"
        f" {inputs.shape}"
    )
  if inputs.shape[-1] != features:
    raise ValueError(
        f"{layer} expects {features} input features on the last axis, got shape {inputs.shape}"
    )


def _dense(x, kernel, bias, dtype):
  y = jax.lax.dot_general(
      x.astype(dtype), kernel.astype(dtype), (((x.ndim - 1,), (0,)), ((), ()))
  )
  if bias is not None:
    y = y + bias.astype(dtype)
  return y


def _conv_padding(padding: Any, num_spatial: int) -> Any:
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}")
    return padding.upper()
  if isinstance(padding, int):
    return [(padding, padding)] * num_spatial
  pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  if len(pairs) != num_spatial or any(len(p) != 2 for p in pairs):
    raise ValueError(f"padding must give one (low, high) pair per spatial axis, got {padding!r}")
  return pairs


def _conv(x, kernel, bias, dtype, *, strides, padding, kernel_dilation, feature_group_count):
  """Channels-last convolution of `x` ``(batch..., *spatial, C)`` with an HWIO-style kernel."""
  num_spatial = kernel.ndim - 2
  batch_shape = x.shape[: x.ndim - num_spatial - 1]
  flat = x.reshape((-1,) + x.shape[x.ndim - num_spatial - 1 :])
  spatial = tuple(range(1, num_spatial + 1))
  numbers = jax.lax.ConvDimensionNumbers(
      lhs_spec=(0, num_spatial + 1) + spatial,
      rhs_spec=(num_spatial + 1, num_spatial) + tuple(range(num_spatial)),
      out_spec=(0, num_spatial + 1) + spatial,
  )
  y = jax.lax.conv_general_dilated(
      flat.astype(dtype),
      kernel.astype(dtype),
      window_strides=strides,
      padding=padding,
      rhs_dilation=kernel_dilation,
      dimension_numbers=numbers,
      feature_group_count=feature_group_count,
  )
  if bias is not None:
    y = y + bias.astype(dtype)
  return y.reshape(batch_shape + y.shape[1:])


def _tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
  values = (value,) * n if isinstance(value, int) else tuple(value)
  if len(values) != n:
    raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")
  for item in values:
    check_positive_int(name, item)
  return values


def _conv_config(window, strides, padding, kernel_dilation, feature_group_count):
  """The static convolution options of `_conv`, hashable (a jit static argument)."""
  n = len(window)
  padding = _conv_padding(padding, n)
  return (
      ("strides", _tuple(strides, n, "strides")),
      ("padding", padding if isinstance(padding, str) else tuple(map(tuple, padding))),
      ("kernel_dilation", _tuple(kernel_dilation, n, "kernel_dilation")),
      ("feature_group_count", feature_group_count),
  )
