r"""Structured replacements of Dense layers: block tensor-train (BTT) and Monarch matrices.

"Compute Better Spent" replaces the dense matrices of MLPs and transformers by structured ones
whose matrix-vector product costs far fewer FLOPs than :math:`d_{in} d_{out}`, with a μP-style
initialization and per-core learning rates, and finds that BTT reaches a lower training loss
than dense layers at equal compute. Everything here follows the official code
(shikaiqiu/compute-better-spent: `nn/cola_nn.py` `build_btt`, `build_monarch`, `cola_init`,
`CoLALayer`; `ops/operators.py` `FasterBTT`, `Monarch`; `mm/btt_mvm.py`,
`mm/blockdiag_butterfly_multiply.py`). Flax layout: :math:`y = xA + b`, A of shape (in, out).

**BTT, two cores, rank r** (`build_btt` with `tt_cores=2`, the `FasterBTT` path). With
:math:`d_{in} = m_0 m_1` and :math:`d_{out} = n_0 n_1` (`factorize`: the most even split, factors
ascending), cores :math:`W_1 \in \mathbb{R}^{m_1 \times m_0 \times n_0 r}` and
:math:`W_2 \in \mathbb{R}^{n_0 \times m_1 r \times n_1}`; writing the input index as
:math:`(i, k)` (:math:`i < m_1` major) and the output index as :math:`(j, l)` (:math:`j < n_0`
major),

.. math::

  A_{(i,k),(j,l)} = \sum_{a=1}^{r} W_1[i, k, (j, a)] \; W_2[j, (i, a), l],

computed as two batched matrix products (`btt_matmul`), never materialized. Parameters
:math:`m_0 m_1 n_0 r + n_0 m_1 r n_1`, FLOPs per example about twice that.

**Monarch** (`build_monarch`, from HazyResearch's block-diagonal butterfly product), b blocks:
the input is zero-padded to :math:`b \lceil d_{in}/b \rceil`, multiplied by a block-diagonal
:math:`W_1` (b blocks of (q, p)), the (block, q) result is re-read as (q, block) (the butterfly
permutation), multiplied by a block-diagonal :math:`W_2` (b blocks of (s, q)) and truncated to
:math:`d_{out}` (`monarch_matmul`).

**Initialization** (`cola_init`, "µP"): every core (a matrix from its fan-in :math:`d_{in}^c` to
its fan-out :math:`d_{out}^c`: :math:`m_0 \to r n_0` and :math:`r m_1 \to n_1` for BTT, the block
shape for Monarch) is drawn from

.. math::

  \mathcal{N}\Big(0,\ \sigma^2\Big),\qquad
  \sigma = \sqrt{1/d_{in}^c}\; \min\Big(1, \sqrt{d_{out}^c / d_{in}^c}\Big),

the last core at zero with `zero_init`, the bias at zero.

**Per-core learning rates** (`CoLALayer`'s default heuristic, "to keep feature updates of similar
size compared to a dense layer"): core c gets :math:`\eta \cdot d_{in} / (d_{in}^c \cdot C)` with C
the number of matrix cores (2), the bias and scalars :math:`\eta`. `btt_lr_multipliers` /
`monarch_lr_multipliers` give them; apply them with `jaxlearn.optim.scale_by_per_leaf` (after
Adam's normalization). When the width also changes, the official code multiplies them by the
μP multiplier of the dense layer replaced (`jaxlearn.nn.mup_lr_multipliers`).

**Optional normalization** (`normalize=True`, `btt_norm`): each BTT core is used as
:math:`\gamma_c W_c / \max(1, \mathrm{rms}(W_c)/\mathrm{rms}^{\max}_c)` with
:math:`\mathrm{rms}(W) = \sqrt{\mathrm{mean}(W^2) + 10^{-8}}`,
:math:`\mathrm{rms}^{\max}_c = \sqrt{\min(d_{in}^c, d_{out}^c) / (d_{in}^c)^2}` and learnable
scalars :math:`\gamma_c` starting at 1.

Not transcribed: the optional random input/output permutations (`permute=True`), more than two
BTT cores (the official `FasterBTT` multiplies only the first two), the plain TT and low-rank
builders. Sharding: `jaxlearn.train.parallel.fsdp_specs` would split a core along its largest
divisible axis, which is a block axis, not a feature axis; give the cores their own specs or keep
them replicated.

References:
  Shikai Qiu, Andres Potapczynski, Marc Finzi, Micah Goldblum and Andrew Gordon Wilson, `Compute
  Better Spent: Replacing Dense Layers with Structured Matrices
  <https://arxiv.org/abs/2406.06248>`_, ICML 2024. Official code:
  https://github.com/shikaiqiu/compute-better-spent.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_bool, check_positive_int

__all__ = [
    "BTTLinear",
    "MonarchLinear",
    "btt_matmul",
    "btt_to_dense",
    "init_btt",
    "btt_lr_multipliers",
    "monarch_matmul",
    "init_monarch",
    "monarch_lr_multipliers",
    "factorize",
    "LinenBTTDense",
    "LinenMonarchDense",
]

_RMS_EPS = 1e-8  # inside the rms's square root, as the official `FasterBTT`


def factorize(n: int, parts: int = 2) -> tuple[int, ...]:
  """The most even split of `n` into `parts` integer factors, ascending (the official greedy).

  Prime factors, smallest first, each go to the factor with the smallest product so far.

  Example:
    >>> from jaxlearn.nn import factorize
    >>> factorize(64), factorize(12), factorize(7)
    ((8, 8), (2, 6), (1, 7))
  """
  check_positive_int("n", n)
  check_positive_int("parts", parts)
  primes, rest, p = [], n, 2
  while p * p <= rest:
    while rest % p == 0:
      primes.append(p)
      rest //= p
    p += 1
  if rest > 1:
    primes.append(rest)
  numbers = [1] * parts
  for prime in primes:
    numbers[min(range(parts), key=lambda i: numbers[i])] *= prime
  return tuple(sorted(numbers))


def _factors(name: str, features: int, factors: Sequence[int] | None) -> tuple[int, int]:
  if factors is None:
    return factorize(features, 2)
  factors = tuple(factors)
  if (len(factors) != 2 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1
                               for f in factors) or factors[0] * factors[1] != features):
    raise ValueError(
        f"{name} must be two positive integers whose product is {features} (tt_cores=2), "
        f"got {factors!r}"
    )
  return factors


def _btt_shapes(in_features, out_features, rank, in_factors, out_factors):
  """((m0, m1), (n0, n1), W1 shape, W2 shape)."""
  check_positive_int("in_features", in_features)
  check_positive_int("out_features", out_features)
  check_positive_int("rank", rank)
  (m0, m1) = _factors("in_factors", in_features, in_factors)
  (n0, n1) = _factors("out_factors", out_features, out_factors)
  return (m0, m1), (n0, n1), (m1, m0, n0 * rank), (n0, m1 * rank, n1)


def _core_std(d_in: int, d_out: int) -> float:
  """cola_init's "µP" std: sqrt(1/d_in) * min(1, sqrt(d_out/d_in))."""
  return math.sqrt(1.0 / d_in) * min(1.0, math.sqrt(d_out / d_in))


def init_btt(key: jax.Array, in_features: int, out_features: int, *, rank: int = 1,
             in_factors: Sequence[int] | None = None, out_factors: Sequence[int] | None = None,
             use_bias: bool = True, zero_init: bool = False, normalize: bool = False,
             dtype=jnp.float32) -> dict[str, jax.Array]:
  """The parameters of a two-core BTT layer: {'w1', 'w2'[, 'bias'][, 'gamma1', 'gamma2']}.

  Args:
    key: a PRNG key.
    in_features, out_features: the dense shape replaced, (in, out).
    rank: the BTT rank r (>= 1).
    in_factors, out_factors: (m0, m1) and (n0, n1); default `factorize(features)`. Their product
      must be the number of features.
    use_bias: add a bias (zeros).
    zero_init: initialize the second core at zero (the official code does it for the last
      layer of a residual block).
    normalize: add the learnable scalars of the normalized variant.
    dtype: the parameters' dtype.

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_btt
    >>> p = init_btt(jax.random.key(0), 64, 36, rank=2)  # 64 = 8 * 8, 36 = 6 * 6
    >>> {name: value.shape for name, value in p.items()}
    {'w1': (8, 8, 12), 'w2': (6, 16, 6), 'bias': (36,)}
  """
  (m0, m1), (n0, n1), shape1, shape2 = _btt_shapes(in_features, out_features, rank, in_factors,
                                                   out_factors)
  params = _init_cores(key, ((shape1, m0, n0 * rank), (shape2, m1 * rank, n1)), zero_init,
                       jnp.dtype(dtype))
  if use_bias:
    params["bias"] = jnp.zeros((out_features,), dtype)
  if normalize:
    params["gamma1"] = jnp.ones((), dtype)
    params["gamma2"] = jnp.ones((), dtype)
  return params


# Jitted so that an eager init compiles one program instead of one per primitive.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_cores(key, cores, zero_last, dtype):
  """{'w1', 'w2'}: N(0, cola_init's std^2) per core, given ((shape, d_in, d_out), ...)."""
  keys = jax.random.split(key, len(cores))
  params = {}
  for index, (k, (shape, d_in, d_out)) in enumerate(zip(keys, cores)):
    if zero_last and index == len(cores) - 1:
      params[f"w{index + 1}"] = jnp.zeros(shape, dtype)
    else:
      params[f"w{index + 1}"] = _core_std(d_in, d_out) * jax.random.normal(k, shape, dtype)
  return params


def btt_lr_multipliers(in_features: int, out_features: int, *, rank: int = 1,
                       in_factors: Sequence[int] | None = None,
                       out_factors: Sequence[int] | None = None, use_bias: bool = True,
                       normalize: bool = False) -> dict[str, float]:
  """The official per-core learning-rate multipliers, d_in / (d_in of the core * 2); 1 for the
  bias and the scalars. Same keys as `init_btt`.

  Example:
    >>> from jaxlearn.nn import btt_lr_multipliers
    >>> btt_lr_multipliers(64, 36, rank=2)  # w1: 64 / (8 * 2), w2: 64 / (16 * 2)
    {'w1': 4.0, 'w2': 2.0, 'bias': 1.0}
  """
  (m0, m1), _, _, _ = _btt_shapes(in_features, out_features, rank, in_factors, out_factors)
  multipliers = {"w1": in_features / m0 / 2, "w2": in_features / (m1 * rank) / 2}
  if use_bias:
    multipliers["bias"] = 1.0
  if normalize:
    multipliers.update(gamma1=1.0, gamma2=1.0)
  return multipliers


def _normalized(w, gamma, d_in, d_out):
  """γ W / max(1, rms(W) / rms_max), the statistics in float32."""
  w32 = w.astype(jnp.promote_types(w.dtype, jnp.float32))
  rms = jnp.sqrt(jnp.mean(jnp.square(w32)) + _RMS_EPS)
  max_rms = math.sqrt(min(d_in, d_out) / d_in**2)
  return (gamma * w32 / jnp.maximum(1.0, rms / max_rms)).astype(w.dtype)


@jax.jit
def btt_matmul(x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
  r"""x A for the two-core BTT matrix A of `w1` (m1, m0, n0 r) and `w2` (n0, m1 r, n1).

  x has shape (..., m0 m1); the result (..., n0 n1). Two batched matmuls, the official
  `BlockTeTr.forward`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import btt_matmul, btt_to_dense, init_btt
    >>> p = init_btt(jax.random.key(0), 12, 6, rank=2)
    >>> x = jnp.ones((3, 12))
    >>> bool(jnp.allclose(btt_matmul(x, p["w1"], p["w2"]), x @ btt_to_dense(p["w1"], p["w2"]),
    ...                   atol=1e-5))
    True
  """
  m1, m0, n0r = w1.shape
  n0, m1r, n1 = w2.shape
  rank = n0r // n0
  batch = x.shape[:-1]
  x = x.reshape(-1, m1, m0)
  hidden = jnp.einsum("bik,ikja->bija", x, w1.reshape(m1, m0, n0, rank))
  y = jnp.einsum("bija,jial->bjl", hidden, w2.reshape(n0, m1, rank, n1))
  return y.reshape(*batch, n0 * n1)


@jax.jit
def btt_to_dense(w1: jax.Array, w2: jax.Array) -> jax.Array:
  r"""The (m0 m1, n0 n1) matrix A, :math:`A_{(i,k),(j,l)} = \sum_a W_1[i,k,(j,a)] W_2[j,(i,a),l]`.

  Example:
    >>> import jax
    >>> from jaxlearn.nn import btt_to_dense, init_btt
    >>> p = init_btt(jax.random.key(0), 12, 6)
    >>> btt_to_dense(p["w1"], p["w2"]).shape
    (12, 6)
  """
  m1, m0, n0r = w1.shape
  n0, _, n1 = w2.shape
  rank = n0r // n0
  dense = jnp.einsum("ikja,jial->ikjl", w1.reshape(m1, m0, n0, rank),
                     w2.reshape(n0, m1, rank, n1))
  return dense.reshape(m1 * m0, n0 * n1)


def _monarch_shapes(in_features, out_features, num_blocks):
  check_positive_int("in_features", in_features)
  check_positive_int("out_features", out_features)
  check_positive_int("num_blocks", num_blocks)
  in_block = -(-in_features // num_blocks)
  out_block = -(-out_features // num_blocks)
  if in_block * num_blocks < out_block * num_blocks:
    return (num_blocks, in_block, in_block), (num_blocks, out_block, in_block)
  return (num_blocks, out_block, in_block), (num_blocks, out_block, out_block)


def init_monarch(key: jax.Array, in_features: int, out_features: int, *, num_blocks: int = 4,
                 use_bias: bool = True, zero_init: bool = False,
                 dtype=jnp.float32) -> dict[str, jax.Array]:
  """The parameters of a Monarch layer: {'w1': (b, q, p), 'w2': (b, s, q)[, 'bias']}.

  Block shapes as the official `build_monarch`: p = ceil(in / b), s = ceil(out / b), and
  q = p if the padded input is narrower than the padded output, else s.

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_monarch
    >>> p = init_monarch(jax.random.key(0), 64, 32, num_blocks=4)
    >>> {name: value.shape for name, value in p.items()}
    {'w1': (4, 8, 16), 'w2': (4, 8, 8), 'bias': (32,)}
  """
  shape1, shape2 = _monarch_shapes(in_features, out_features, num_blocks)
  params = _init_cores(key, ((shape1, shape1[-1], shape1[-2]), (shape2, shape2[-1], shape2[-2])),
                       zero_init, jnp.dtype(dtype))
  if use_bias:
    params["bias"] = jnp.zeros((out_features,), dtype)
  return params


def monarch_lr_multipliers(in_features: int, out_features: int, *, num_blocks: int = 4,
                           use_bias: bool = True) -> dict[str, float]:
  """in / (block fan-in * 2) per core, 1 for the bias (same keys as `init_monarch`).

  Example:
    >>> from jaxlearn.nn import monarch_lr_multipliers
    >>> monarch_lr_multipliers(64, 32, num_blocks=4)
    {'w1': 2.0, 'w2': 4.0, 'bias': 1.0}
  """
  shape1, shape2 = _monarch_shapes(in_features, out_features, num_blocks)
  multipliers = {"w1": in_features / shape1[-1] / 2, "w2": in_features / shape2[-1] / 2}
  if use_bias:
    multipliers["bias"] = 1.0
  return multipliers


@functools.partial(jax.jit, static_argnums=3)
def monarch_matmul(x: jax.Array, w1: jax.Array, w2: jax.Array, out_features: int) -> jax.Array:
  """x A for the Monarch matrix of block-diagonal factors `w1` (b, q, p) and `w2` (b, s, q).

  x (..., in) is zero-padded to b p features; the result is truncated to `out_features`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_monarch, monarch_matmul
    >>> p = init_monarch(jax.random.key(0), 10, 6, num_blocks=4)
    >>> monarch_matmul(jnp.ones((3, 10)), p["w1"], p["w2"], 6).shape
    (3, 6)
  """
  blocks, q, p = w1.shape
  _, s, _ = w2.shape
  batch = x.shape[:-1]
  x = x.reshape(-1, x.shape[-1])
  x = jnp.pad(x, ((0, 0), (0, blocks * p - x.shape[-1])))
  hidden = jnp.einsum("bkp,kqp->bkq", x.reshape(-1, blocks, p), w1)
  # The butterfly: the (block, q) features are re-read as (q, block).
  hidden = hidden.reshape(-1, q, blocks)
  y = jnp.einsum("brl,lsr->bsl", hidden, w2).reshape(-1, s * blocks)
  return y[:, :out_features].reshape(*batch, out_features)


# ---------------------------------------------------------------------------------------------
# Layers.


def _check_input(layer: str, x: jax.Array, in_features: int) -> None:
  if x.ndim < 1 or x.shape[-1] != in_features:
    raise ValueError(
        f"{layer} expects inputs of shape (..., in_features={in_features}), got shape {x.shape}"
    )


def _dtype(x, params, dtype):
  return dtype or jnp.result_type(x.dtype, *(p.dtype for p in params.values()))


# Jitted: an eager NNX call compiles one program instead of one per primitive.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _apply_btt(x, params, in_features, out_features, rank, factors, dtype):
  dtype = _dtype(x, params, dtype)
  w1, w2 = params["w1"], params["w2"]
  if "gamma1" in params:
    (m0, m1), (n0, n1) = factors
    w1 = _normalized(w1, params["gamma1"], m0, rank * n0)
    w2 = _normalized(w2, params["gamma2"], rank * m1, n1)
  y = btt_matmul(x.astype(dtype), w1.astype(dtype), w2.astype(dtype))
  return y + params["bias"].astype(dtype) if "bias" in params else y


@functools.partial(jax.jit, static_argnums=(2, 3))
def _apply_monarch(x, params, out_features, dtype):
  dtype = _dtype(x, params, dtype)
  y = monarch_matmul(x.astype(dtype), params["w1"].astype(dtype), params["w2"].astype(dtype),
                     out_features)
  return y + params["bias"].astype(dtype) if "bias" in params else y


class BTTLinear(nnx.Module):
  r"""A Dense replacement by a two-core block tensor-train matrix of rank r (arXiv:2406.06248).

  y = x A + b with A the BTT matrix of cores `w1` (m1, m0, n0 r) and `w2` (n0, m1 r, n1)
  (`btt_matmul`), μP-initialized as the official `cola_init`.

  Args:
    in_features, out_features: the dense shape replaced.
    rank: the BTT rank r.
    in_factors, out_factors: (m0, m1), (n0, n1); default: `factorize` (most even, ascending).
    use_bias: add a bias (zeros).
    zero_init: start the second core at zero.
    normalize: the `btt_norm` variant (rms-capped cores with learnable scalars).
    dtype: computation and output dtype (default: the input's, promoted with the parameters').
    param_dtype: the parameters' dtype.
    rngs: `nnx.Rngs` with a 'params' stream.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.BTTLinear(64, 36, rank=2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((5, 64))).shape, layer.lr_multipliers()["w1"]
    ((5, 36), 4.0)
  """

  def __init__(self, in_features: int, out_features: int, *, rank: int = 1,
               in_factors: Sequence[int] | None = None, out_factors: Sequence[int] | None = None,
               use_bias: bool = True, zero_init: bool = False, normalize: bool = False,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    check_bool("normalize", normalize)
    params = init_btt(rngs.params(), in_features, out_features, rank=rank, in_factors=in_factors,
                      out_factors=out_factors, use_bias=use_bias, zero_init=zero_init,
                      normalize=normalize, dtype=param_dtype)
    self.in_features, self.out_features, self.rank = in_features, out_features, rank
    self.factors = _btt_shapes(in_features, out_features, rank, in_factors, out_factors)[:2]
    self.use_bias, self.normalize, self.dtype = use_bias, normalize, dtype
    self.w1 = nnx.Param(params["w1"])
    self.w2 = nnx.Param(params["w2"])
    self.bias = nnx.Param(params["bias"]) if use_bias else None
    self.gamma1 = nnx.Param(params["gamma1"]) if normalize else None
    self.gamma2 = nnx.Param(params["gamma2"]) if normalize else None

  def lr_multipliers(self) -> dict[str, float]:
    """The per-core multipliers, keyed like this layer's parameters (`btt_lr_multipliers`)."""
    (m0, m1), (n0, n1) = self.factors
    return btt_lr_multipliers(self.in_features, self.out_features, rank=self.rank,
                              in_factors=(m0, m1), out_factors=(n0, n1), use_bias=self.use_bias,
                              normalize=self.normalize)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    _check_input("BTTLinear", x, self.in_features)
    names = ("w1", "w2", "bias", "gamma1", "gamma2")
    params = {n: getattr(self, n)[...] for n in names if getattr(self, n) is not None}
    return _apply_btt(x, params, self.in_features, self.out_features, self.rank, self.factors,
                      self.dtype)


class MonarchLinear(nnx.Module):
  r"""A Dense replacement by a Monarch matrix of `num_blocks` blocks (official `build_monarch`).

  y = x A + b, A = (pad) · blockdiag(W1) · butterfly permutation · blockdiag(W2) · (truncate)
  (`monarch_matmul`).

  Args:
    in_features, out_features: the dense shape replaced.
    num_blocks: the number of diagonal blocks b (default 4, as the official code).
    use_bias: add a bias (zeros).
    zero_init: start the second factor at zero.
    dtype: computation and output dtype (default: the input's, promoted with the parameters').
    param_dtype: the parameters' dtype.
    rngs: `nnx.Rngs` with a 'params' stream.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.MonarchLinear(64, 32, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((5, 64))).shape, layer.lr_multipliers()
    ((5, 32), {'w1': 2.0, 'w2': 4.0, 'bias': 1.0})
  """

  def __init__(self, in_features: int, out_features: int, *, num_blocks: int = 4,
               use_bias: bool = True, zero_init: bool = False, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    params = init_monarch(rngs.params(), in_features, out_features, num_blocks=num_blocks,
                          use_bias=use_bias, zero_init=zero_init, dtype=param_dtype)
    self.in_features, self.out_features, self.num_blocks = in_features, out_features, num_blocks
    self.use_bias, self.dtype = use_bias, dtype
    self.w1 = nnx.Param(params["w1"])
    self.w2 = nnx.Param(params["w2"])
    self.bias = nnx.Param(params["bias"]) if use_bias else None

  def lr_multipliers(self) -> dict[str, float]:
    """The per-factor multipliers, keyed like this layer's parameters."""
    return monarch_lr_multipliers(self.in_features, self.out_features,
                                  num_blocks=self.num_blocks, use_bias=self.use_bias)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    _check_input("MonarchLinear", x, self.in_features)
    params = {n: getattr(self, n)[...] for n in ("w1", "w2", "bias")
              if getattr(self, n) is not None}
    return _apply_monarch(x, params, self.out_features, self.dtype)


class LinenBTTDense(linen.Module):
  """The Linen twin of `BTTLinear` (exported as `jaxlearn.nn.linen.BTTDense`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.BTTDense(64, 36, rank=2)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((5, 64)))
    >>> layer.apply(variables, jnp.ones((5, 64))).shape
    (5, 36)
  """

  in_features: int
  out_features: int
  rank: int = 1
  in_factors: Sequence[int] | None = None
  out_factors: Sequence[int] | None = None
  use_bias: bool = True
  zero_init: bool = False
  normalize: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_bool("normalize", self.normalize)
    factors = _btt_shapes(self.in_features, self.out_features, self.rank, self.in_factors,
                          self.out_factors)[:2]
    x = jnp.asarray(x)
    _check_input("BTTDense", x, self.in_features)
    init = lambda key: init_btt(key, self.in_features, self.out_features, rank=self.rank,
                                in_factors=self.in_factors, out_factors=self.out_factors,
                                use_bias=self.use_bias, zero_init=self.zero_init,
                                normalize=self.normalize, dtype=self.param_dtype)
    names = jax.eval_shape(init, jax.random.key(0))
    params = {name: self.param(name, lambda key, n=name: init(key)[n]) for name in names}
    return _apply_btt(x, params, self.in_features, self.out_features, self.rank, factors,
                      self.dtype)


class LinenMonarchDense(linen.Module):
  """The Linen twin of `MonarchLinear` (exported as `jaxlearn.nn.linen.MonarchDense`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.MonarchDense(64, 32)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((5, 64)))
    >>> layer.apply(variables, jnp.ones((5, 64))).shape
    (5, 32)
  """

  in_features: int
  out_features: int
  num_blocks: int = 4
  use_bias: bool = True
  zero_init: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _monarch_shapes(self.in_features, self.out_features, self.num_blocks)
    x = jnp.asarray(x)
    _check_input("MonarchDense", x, self.in_features)
    init = lambda key: init_monarch(key, self.in_features, self.out_features,
                                    num_blocks=self.num_blocks, use_bias=self.use_bias,
                                    zero_init=self.zero_init, dtype=self.param_dtype)
    names = jax.eval_shape(init, jax.random.key(0))
    params = {name: self.param(name, lambda key, n=name: init(key)[n]) for name in names}
    return _apply_monarch(x, params, self.out_features, self.dtype)


RECORD = registry.record(
    slug="btt_structured_layers",
    kind="layer",
    title="Compute Better Spent: Replacing Dense Layers with Structured Matrices",
    reference="arXiv:2406.06248",
    experiment="btt_flops_matched",
    also=("jaxlearn.optim.scale_by_per_leaf",),
    extra_tests=("tests/optim/test_optimizer_battery.py",),
    notes=(
        "Follows the official compute-better-spent code: build_btt with tt_cores=2 (FasterBTT / "
        "btt_mvm: cores (m1, m0, n0 r) and (n0, m1 r, n1), factors from the greedy factorize, "
        "ascending), build_monarch (block-diagonal butterfly product with zero padding and "
        "truncation), cola_init's µP std sqrt(1/d_in) * min(1, sqrt(d_out/d_in)) per core, "
        "CoLALayer's per-core lr multiplier d_in / (d_in_core * num_cores) (bias and scalars 1), "
        "applied with jaxlearn.optim.scale_by_per_leaf, and the optional btt_norm cores. "
        "Explicit in_factors/out_factors whose product is not the feature count raise. Not "
        "transcribed: random permutations (permute=True), more than two BTT cores (the official "
        "FasterBTT uses only two), the 'standard' init, TT and low-rank builders; the official "
        "code's Monarch num_blocks=-1 (sqrt(d_in) blocks) must be given explicitly."
    ),
)
