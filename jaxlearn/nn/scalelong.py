r"""ScaleLong: scaled long skip connections for U-shaped (UNet, UViT) diffusion backbones.

A U-shaped network with N long skip connections (LSCs) pushes the output of encoder block
:math:`j = 0, \dots, N-1` (0 the shallowest) and its decoder blocks pop them last-in first-out,
so decoder block :math:`i` receives encoder level :math:`N-1-i`. ScaleLong multiplies each skip
before the decoder consumes it; the paper shows that unscaled LSCs make the hidden features and
gradients of UNets oscillate, and that scaling them down stabilizes diffusion training. The
official code (sail-sg/ScaleLong, `libs/uvit.py`, argument `scalelong`) has five modes:

* ``"none"`` (0, the original network): :math:`s_j = 1`;
* ``"sqrt2"`` (1, "1/sqrt(2)-CS"): :math:`s_j = 2^{-1/2}`;
* ``"cs"`` (2, constant scaling): decoder block i scales by :math:`\kappa^{N-1-i}`, that is

  .. math::

    s_j = \kappa^{\,j}, \qquad \kappa \in (0, 1]\ \text{(official default 0.5)},

  so the deepest skip gets :math:`\kappa^{N-1}` and the shallowest 1;
* ``"ls"`` (3, learnable scaling): :math:`s_j = \mathrm{SE}(x_j)`, one squeeze-and-excitation
  gate shared by all skips; ``"ls_per_skip"`` (4, "LS (non-share)"): one gate per skip.

The gate (`Attentionlayer`) acts on **tokens**: for a skip :math:`x \in \mathbb{R}^{L \times C}`,

.. math::

  \bar x = \tfrac{1}{C} \textstyle\sum_c x_{:, c} \in \mathbb{R}^L,\qquad
  g = \sigma\big(W_2^\top \mathrm{ReLU}(W_1^\top \bar x + b_1) + b_2\big) \in (0, 1)^L,\qquad
  x \leftarrow g \odot x \ \text{(one scalar per token)},

with :math:`W_1 \in \mathbb{R}^{L \times \lfloor L/r \rfloor}`, :math:`W_2 \in
\mathbb{R}^{\lfloor L/r \rfloor \times L}`, r = 16, initialized as PyTorch's `Linear`
(weights and biases U(±1/√fan_in): the official UViT builds the gate after its own init).

Layout: skips are (..., L, C) (tokens, then channels: UViT's) or, with ``channels_last=False``,
(..., C, L) (e.g. a flattened NCHW feature map). The gate and the factors are computed in
float32; outputs are in `dtype` (default: the skip's, promoted with the gate's parameters).

References:
  Zhongzhan Huang, Pan Zhou, Shuicheng Yan and Liang Lin, `ScaleLong: Towards More Stable
  Training of Diffusion Model via Scaling Network Long Skip Connection
  <https://arxiv.org/abs/2310.13545>`_, NeurIPS 2023. Official code:
  https://github.com/sail-sg/ScaleLong (`libs/uvit.py`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_bool, check_choice, check_positive_int, check_range

__all__ = [
    "LongSkipScale",
    "constant_skip_scales",
    "ls_gate",
    "init_ls_gate",
    "LinenLongSkipScale",
]

MODES = ("none", "sqrt2", "cs", "ls", "ls_per_skip")
DEFAULT_KAPPA = 0.5
DEFAULT_REDUCTION = 16


def _check_kappa(kappa) -> None:
  check_range("kappa", kappa, 0.0, 1.0, low_inclusive=False)


def constant_skip_scales(num_skips: int, kappa=DEFAULT_KAPPA) -> jax.Array:
  r"""The CS factors :math:`s_j = \kappa^j` of the skips in encoder order (0 the shallowest).

  `kappa` may be traced (e.g. vmapped over); a concrete value must lie in (0, 1].

  Example:
    >>> from jaxlearn.nn import constant_skip_scales
    >>> constant_skip_scales(4, 0.5)  # the deepest (last pushed, first popped) gets 0.5 ** 3
    Array([1.   , 0.5  , 0.25 , 0.125], dtype=float32)
  """
  check_positive_int("num_skips", num_skips)
  _check_kappa(kappa)
  return jnp.asarray(kappa, jnp.float32) ** jnp.arange(num_skips, dtype=jnp.float32)


def _hidden(num_tokens: int, reduction: int) -> int:
  check_positive_int("num_tokens", num_tokens)
  check_positive_int("reduction", reduction)
  hidden = num_tokens // reduction
  if hidden < 1:
    raise ValueError(
        f"reduction must be <= num_tokens so that the gate has num_tokens // reduction >= 1 "
        f"hidden units, got num_tokens={num_tokens}, reduction={reduction}"
    )
  return hidden


def init_ls_gate(key: jax.Array, num_tokens: int, *, reduction: int = DEFAULT_REDUCTION,
                 num_gates: int | None = None, dtype=jnp.float32) -> dict[str, jax.Array]:
  """The SE gate's parameters {'w1': (L, h), 'b1': (h,), 'w2': (h, L), 'b2': (L,)}, h = L // r.

  With `num_gates` (the per-skip variant) every array gets a leading (num_gates,) axis. Weights
  and biases ~ U(±1/√fan_in), PyTorch's `Linear` default.

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_ls_gate
    >>> p = init_ls_gate(jax.random.key(0), 64)
    >>> {name: value.shape for name, value in p.items()}
    {'b1': (4,), 'b2': (64,), 'w1': (64, 4), 'w2': (4, 64)}
  """
  hidden = _hidden(num_tokens, reduction)
  if num_gates is not None:
    check_positive_int("num_gates", num_gates)
  return _init_gate(key, num_tokens, hidden, num_gates, jnp.dtype(dtype))


# Jitted so that an eager init compiles one program instead of one per primitive.
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _init_gate(key, num_tokens, hidden, num_gates, dtype):
  lead = () if num_gates is None else (num_gates,)
  shapes = {"w1": ((num_tokens, hidden), num_tokens), "b1": ((hidden,), num_tokens),
            "w2": ((hidden, num_tokens), hidden), "b2": ((num_tokens,), hidden)}
  keys = jax.random.split(key, len(shapes))
  return {name: jax.random.uniform(k, lead + shape, dtype, -1 / math.sqrt(fan_in),
                                   1 / math.sqrt(fan_in))
          for k, (name, (shape, fan_in)) in zip(keys, shapes.items())}


def ls_gate(skip: jax.Array, params: dict[str, jax.Array], *,
            channels_last: bool = True) -> jax.Array:
  r"""The token-wise gate :math:`\sigma(W_2^\top \mathrm{ReLU}(W_1^\top \bar x + b_1) + b_2)`.

  Args:
    skip: (..., L, C), or (..., C, L) with `channels_last=False`.
    params: one gate's parameters (`init_ls_gate` without `num_gates`).
    channels_last: the layout of `skip`.

  Returns:
    The gate in float32, shape (..., L, 1) (or (..., 1, L)): multiply the skip by it.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_ls_gate, ls_gate
    >>> gate = ls_gate(jnp.ones((2, 32, 8)), init_ls_gate(jax.random.key(0), 32))
    >>> gate.shape, bool(((gate > 0) & (gate < 1)).all())
    ((2, 32, 1), True)
  """
  channel_axis = -1 if channels_last else -2
  squeezed = jnp.mean(skip.astype(jnp.float32), axis=channel_axis)  # (..., L)
  p = {k: v.astype(jnp.float32) for k, v in params.items()}
  hidden = jax.nn.relu(squeezed @ p["w1"] + p["b1"])
  return jnp.expand_dims(jax.nn.sigmoid(hidden @ p["w2"] + p["b2"]), channel_axis)


# Jitted: an eager NNX call compiles one program instead of one per primitive.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _scale(skips, params, level, mode, kappa, num_skips, channels_last, dtype):
  """The scaled skip(s): a stack (level None) or the skip of `level`."""
  dtype = dtype or jnp.result_type(skips.dtype, *(p.dtype for p in params.values()))
  if mode in ("none", "sqrt2", "cs"):
    factors = {"none": jnp.ones(num_skips, jnp.float32),
               "sqrt2": jnp.full(num_skips, 2.0**-0.5, jnp.float32),
               "cs": constant_skip_scales(num_skips, kappa)}[mode]
    if level is None:
      factors = factors.reshape((num_skips,) + (1,) * (skips.ndim - 1))
    else:
      factors = factors[level]
    return (skips.astype(jnp.float32) * factors).astype(dtype)
  if mode == "ls":
    gate = ls_gate(skips, params, channels_last=channels_last)
  elif level is None:  # ls_per_skip on the stack: gate j on skip j
    gate = jax.vmap(lambda x, p: ls_gate(x, p, channels_last=channels_last))(skips, params)
  else:
    gate = ls_gate(skips, jax.tree.map(lambda p: p[level], params), channels_last=channels_last)
  return (skips.astype(jnp.float32) * gate).astype(dtype)


def _check_skips(layer, skips, level, num_skips, num_tokens, channels_last, gated):
  stacked = level is None
  min_rank = (3 if gated else 1) if stacked else (2 if gated else 0)
  if skips.ndim < min_rank:
    what = "(num_skips, ..., L, C)" if stacked else "(..., L, C)"
    raise ValueError(f"{layer} expects skips of rank >= {min_rank} {what}, got {skips.shape}")
  if stacked and skips.shape[0] != num_skips:
    raise ValueError(f"{layer} expects a stack of num_skips={num_skips} skips on axis 0, got "
                     f"shape {skips.shape}")
  if not stacked and (isinstance(level, bool) or not isinstance(level, int)
                      or not 0 <= level < num_skips):
    raise ValueError(f"level must be an int in [0, {num_skips}), got {level!r}")
  token_axis = -2 if channels_last else -1
  if gated and skips.shape[token_axis] != num_tokens:
    raise ValueError(f"{layer} expects num_tokens={num_tokens} tokens on axis {token_axis}, got "
                     f"shape {skips.shape}")


def _check_args(num_skips, num_tokens, mode, kappa, reduction, channels_last):
  check_positive_int("num_skips", num_skips)
  check_choice("mode", mode, MODES)
  _check_kappa(kappa)
  check_bool("channels_last", channels_last)
  if mode.startswith("ls"):
    if num_tokens is None:
      raise ValueError(f"mode={mode!r} needs num_tokens (the gate acts on tokens)")
    _hidden(num_tokens, reduction)


class LongSkipScale(nnx.Module):
  r"""Scales the long skips of a U-shaped network (ScaleLong, arXiv:2310.13545).

  Call it on one skip with its encoder `level` (0 the shallowest, N−1 the deepest), when the
  decoder pops it, or on the stack of all N skips in encoder order (`level=None`).

  Args:
    num_skips: N, the number of long skips.
    num_tokens: L, the tokens per skip (needed by the gated modes).
    mode: 'none', 'sqrt2', 'cs' (κ^level), 'ls' (one SE gate) or 'ls_per_skip' (one per skip).
    kappa: κ of 'cs', in (0, 1] (default 0.5, the official value).
    reduction: r of the gate's bottleneck L // r (default 16, the official value).
    channels_last: skips are (..., L, C); False: (..., C, L).
    dtype: output dtype (default: the skip's, promoted with the parameters').
    param_dtype: the gate parameters' dtype.
    rngs: `nnx.Rngs` with a 'params' stream (gated modes).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> cs = jnn.LongSkipScale(4, mode="cs", kappa=0.5, rngs=nnx.Rngs(0))
    >>> float(cs(jnp.ones((2, 16, 8)), level=3)[0, 0, 0])  # the deepest skip
    0.125
    >>> ls = jnn.LongSkipScale(4, 16, mode="ls", reduction=4, rngs=nnx.Rngs(0))
    >>> ls(jnp.ones((4, 2, 16, 8))).shape  # all four skips at once
    (4, 2, 16, 8)
  """

  def __init__(self, num_skips: int, num_tokens: int | None = None, *, mode: str = "cs",
               kappa: float = DEFAULT_KAPPA, reduction: int = DEFAULT_REDUCTION,
               channels_last: bool = True, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    _check_args(num_skips, num_tokens, mode, kappa, reduction, channels_last)
    self.num_skips, self.num_tokens, self.mode, self.kappa = num_skips, num_tokens, mode, kappa
    self.channels_last, self.dtype = channels_last, dtype
    gated = mode.startswith("ls")
    params = {}
    if gated:
      params = init_ls_gate(rngs.params(), num_tokens, reduction=reduction,
                            num_gates=num_skips if mode == "ls_per_skip" else None,
                            dtype=param_dtype)
    self.w1, self.b1, self.w2, self.b2 = (
        nnx.Param(params[n]) if gated else None for n in ("w1", "b1", "w2", "b2"))

  def __call__(self, skips: jax.Array, level: int | None = None) -> jax.Array:
    skips = jnp.asarray(skips)
    gated = self.mode.startswith("ls")
    _check_skips("LongSkipScale", skips, level, self.num_skips, self.num_tokens,
                 self.channels_last, gated)
    params = {n: getattr(self, n)[...] for n in ("w1", "b1", "w2", "b2")} if gated else {}
    return _scale(skips, params, level, self.mode, self.kappa, self.num_skips,
                  self.channels_last, self.dtype)


class LinenLongSkipScale(linen.Module):
  """The Linen twin of `LongSkipScale` (exported as `jaxlearn.nn.linen.LongSkipScale`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> ls = jnn_linen.LongSkipScale(4, 16, mode="ls_per_skip", reduction=4)
    >>> variables = ls.init(jax.random.key(0), jnp.ones((2, 16, 8)), 1)
    >>> ls.apply(variables, jnp.ones((2, 16, 8)), 1).shape  # the skip of level 1
    (2, 16, 8)
  """

  num_skips: int
  num_tokens: int | None = None
  mode: str = "cs"
  kappa: float = DEFAULT_KAPPA
  reduction: int = DEFAULT_REDUCTION
  channels_last: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, skips: jax.Array, level: int | None = None) -> jax.Array:
    _check_args(self.num_skips, self.num_tokens, self.mode, self.kappa, self.reduction,
                self.channels_last)
    skips = jnp.asarray(skips)
    gated = self.mode.startswith("ls")
    _check_skips("LongSkipScale", skips, level, self.num_skips, self.num_tokens,
                 self.channels_last, gated)
    params = {}
    if gated:
      init = lambda key: init_ls_gate(
          key, self.num_tokens, reduction=self.reduction, dtype=self.param_dtype,
          num_gates=self.num_skips if self.mode == "ls_per_skip" else None)
      params = {n: self.param(n, lambda key, n=n: init(key)[n]) for n in ("w1", "b1", "w2", "b2")}
    return _scale(skips, params, level, self.mode, self.kappa, self.num_skips,
                  self.channels_last, self.dtype)


RECORD = registry.record(
    slug="scalelong",
    kind="layer",
    title=("ScaleLong: Towards More Stable Training of Diffusion Model via Scaling Network Long "
           "Skip Connection"),
    reference="arXiv:2310.13545",
    experiment="scalelong_denoiser",
    notes=(
        "Follows the official libs/uvit.py: modes 0-4 (none, 1/sqrt(2), CS, LS, LS non-shared); "
        "CS scales the skip popped by decoder block i by kappa^(N-1-i), i.e. encoder level j by "
        "kappa^j (the deepest skip gets kappa^(N-1)); the LS gate (Attentionlayer) is a "
        "token-wise SE block: mean over channels -> Linear(L, L//16) -> ReLU -> "
        "Linear(L//16, L) -> sigmoid, one factor per token, with PyTorch's default Linear init "
        "(the official UViT creates it after its own trunc-normal init). kappa outside (0, 1] "
        "and num_tokens // reduction < 1 raise (the official code would build an empty "
        "bottleneck). channels_last=False reads skips as (..., C, L). Gate and factors in "
        "float32."
    ),
)
