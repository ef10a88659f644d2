r"""SLTrain: a Dense layer whose weight is a low-rank product plus a fixed-support sparse matrix.

SLTrain parametrizes every weight as the sum of a low-rank factorization and a sparse matrix
whose support is drawn uniformly at random once and then frozen; only the factors and the
non-zero values train. In Flax's layout (kernel of shape (in, out)),

.. math::

  y = x \Big(\frac{\alpha}{r} A B + S\Big) + b,\qquad
  A \in \mathbb{R}^{\text{in} \times r},\ B \in \mathbb{R}^{r \times \text{out}},\qquad
  S = \operatorname{scatter}(\Omega, v),\ |\Omega| = \lfloor \delta \cdot \text{in} \cdot
  \text{out} \rfloor,

the official code's :math:`y = x (B A \alpha / r + S)^\top + b` transposed. Ω is a uniformly
random set of flat kernel indices (without replacement, sorted), v its trainable values.
Parameters: :math:`r(\text{in} + \text{out}) + |\Omega| (+\,\text{out})` instead of
:math:`\text{in} \cdot \text{out}`.

**Initialization** (official `SpLoRaLinear`): A ~ U(±1/√in) (PyTorch's Kaiming-uniform with
a = √5 on the (r, in) factor), B = 0, v ~ U(±1/√in), bias ~ U(±1/√out). Defaults as the official
class: δ = 0.01, α = 1 (the 60M LLaMA script: r = 128, δ = 0.03, α = 32).

**Forward** as the official C++ kernel (`sltrain_linear.forward`): the dense kernel is
materialized as a temporary (scatter-add of v into α/r · A B) and multiplied; gradients reach
v as the gathered kernel gradient. What is saved is parameter and optimizer-state memory, not
activation memory.

Deviations: the support is drawn with NumPy from an explicit integer `support_seed` (the official
code uses `torch.randperm` under the global seed), so NNX and Linen layers agree and the indices
are static constants of the compiled program, never state. The optional trainable scale
tanh(s) of the official class (`trainable_scaling`, unused by its scripts) is not transcribed.
Sharding: the flat values follow no feature axis; keep them replicated.

References:
  Andi Han, Jiaxiang Li, Wei Huang, Mingyi Hong, Akiko Takeda, Pratik Jawanpuria and Bamdev
  Mishra, `SLTrain: a sparse plus low-rank approach for parameter and memory efficient
  pretraining <https://arxiv.org/abs/2406.02214>`_, NeurIPS 2024. Official code:
  https://github.com/andyjm3/SLTrain (`splora/splora_linear.py`, `sparse-lora/sparse_linear.cpp`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_bool, check_positive, check_positive_int, check_range

__all__ = [
    "SLTrainLinear",
    "sltrain_linear",
    "sltrain_kernel",
    "sparse_support",
    "init_sltrain",
    "LinenSLTrainDense",
]


def _check_shapes(in_features, out_features, rank, density):
  check_positive_int("in_features", in_features)
  check_positive_int("out_features", out_features)
  check_positive_int("rank", rank)
  check_range("density", density, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
  if int(density * in_features * out_features) < 1:
    raise ValueError(f"density * in_features * out_features must be >= 1 (one sparse entry), "
                     f"got {density} * {in_features} * {out_features}")


@functools.lru_cache(maxsize=64)
def _support(in_features, out_features, density, seed):
  count = int(density * in_features * out_features)
  indices = np.random.default_rng(seed).permutation(in_features * out_features)[:count]
  indices = np.sort(indices).astype(np.int32)
  indices.flags.writeable = False
  return indices


def sparse_support(in_features: int, out_features: int, density: float,
                   seed: int = 0) -> np.ndarray:
  r"""The fixed support Ω: ⌊δ·in·out⌋ sorted flat indices into the (in, out) kernel.

  Uniform without replacement (the official sorted random permutation), drawn with NumPy from
  `seed`; the same arguments always give the same (read-only) array.

  Example:
    >>> from jaxlearn.nn import sparse_support
    >>> idx = sparse_support(8, 4, density=0.25, seed=0)
    >>> idx.shape, bool((idx[1:] > idx[:-1]).all()), int(idx.max()) < 32
    ((8,), True, True)
  """
  _check_shapes(in_features, out_features, 1, density)
  return _support(int(in_features), int(out_features), float(density), int(seed))


def sltrain_kernel(a: jax.Array, b: jax.Array, values: jax.Array, indices,
                   scaling=1.0) -> jax.Array:
  r"""The dense (in, out) kernel :math:`\frac{\alpha}{r} A B + S`, S = v scattered at Ω.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import sltrain_kernel
    >>> w = sltrain_kernel(jnp.ones((2, 1)), jnp.ones((1, 3)), jnp.array([5.0]), [4], 0.5)
    >>> w  # 0.5 * ones + 5 at flat index 4 = (1, 1)
    Array([[0.5, 0.5, 0.5],
           [0.5, 5.5, 0.5]], dtype=float32)
  """
  dense = scaling * (a @ b)
  flat = dense.reshape(-1).at[jnp.asarray(indices)].add(values.astype(dense.dtype))
  return flat.reshape(dense.shape)


def sltrain_linear(x: jax.Array, a: jax.Array, b: jax.Array, values: jax.Array, indices,
                   bias: jax.Array | None = None, scaling=1.0) -> jax.Array:
  r""":math:`y = x(\frac{\alpha}{r} A B + S) + b` for inputs of shape (..., in).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_sltrain, sltrain_linear, sparse_support
    >>> p = init_sltrain(jax.random.key(0), 8, 4, rank=2, density=0.25)
    >>> idx = sparse_support(8, 4, density=0.25)
    >>> sltrain_linear(jnp.ones((3, 8)), p["a"], p["b"], p["values"], idx, p["bias"]).shape
    (3, 4)
  """
  y = x @ sltrain_kernel(a, b, values, indices, scaling).astype(x.dtype)
  return y if bias is None else y + bias.astype(y.dtype)


def init_sltrain(key: jax.Array, in_features: int, out_features: int, *, rank: int,
                 density: float = 0.01, use_bias: bool = True,
                 dtype=jnp.float32) -> dict[str, jax.Array]:
  """{'a': (in, r), 'b': (r, out) zeros, 'values': (⌊δ in out⌋,)[, 'bias': (out,)]}.

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_sltrain
    >>> p = init_sltrain(jax.random.key(0), 8, 4, rank=2, density=0.25)
    >>> {name: value.shape for name, value in p.items()}  # a jitted init: sorted keys
    {'a': (8, 2), 'b': (2, 4), 'bias': (4,), 'values': (8,)}
  """
  _check_shapes(in_features, out_features, rank, density)
  count = int(density * in_features * out_features)
  return _init(key, in_features, out_features, rank, count, use_bias, jnp.dtype(dtype))


# Jitted so that an eager init compiles one program instead of one per random draw.
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6))
def _init(key, in_features, out_features, rank, count, use_bias, dtype):
  key_a, key_v, key_b = jax.random.split(key, 3)
  bound_in = 1.0 / np.sqrt(in_features)
  params = {"a": jax.random.uniform(key_a, (in_features, rank), dtype, -bound_in, bound_in),
            "b": jnp.zeros((rank, out_features), dtype),
            "values": jax.random.uniform(key_v, (count,), dtype, -bound_in, bound_in)}
  if use_bias:
    bound_out = 1.0 / np.sqrt(out_features)
    params["bias"] = jax.random.uniform(key_b, (out_features,), dtype, -bound_out, bound_out)
  return params


def _check_input(layer: str, x: jax.Array, in_features: int) -> None:
  if x.ndim < 1 or x.shape[-1] != in_features:
    raise ValueError(
        f"{layer} expects inputs of shape (..., in_features={in_features}), got shape {x.shape}")


# Jitted: an eager NNX call compiles one program instead of one per primitive.
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _apply(x, params, in_features, out_features, density, seed, dtype, scaling):
  """The layer in `dtype`; the kernel is assembled in float32 (or wider), then cast."""
  dtype = dtype or jnp.result_type(x.dtype, *(p.dtype for p in params.values()))
  wide = lambda v: v.astype(jnp.promote_types(v.dtype, jnp.float32))
  indices = _support(in_features, out_features, density, seed)
  kernel = sltrain_kernel(wide(params["a"]), wide(params["b"]), wide(params["values"]), indices,
                          scaling)
  y = x.astype(dtype) @ kernel.astype(dtype)
  return y + params["bias"].astype(dtype) if "bias" in params else y


class SLTrainLinear(nnx.Module):
  r"""A Dense layer with the SLTrain weight :math:`\frac{\alpha}{r} A B + S` (arXiv:2406.02214).

  Args:
    in_features, out_features: the dense shape replaced.
    rank: r (>= 1).
    density: δ ∈ (0, 1), the fraction of kernel entries in the fixed sparse support.
    alpha: α; the low-rank product is scaled by α / r.
    use_bias: add a bias.
    support_seed: the NumPy seed of the support (`sparse_support`); give each layer its own.
    dtype: computation and output dtype (default: the input's, promoted with the parameters');
      the kernel is assembled in float32.
    param_dtype: the parameters' dtype.
    rngs: `nnx.Rngs` with a 'params' stream.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.SLTrainLinear(64, 32, rank=4, density=0.05, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((5, 64))).shape, layer.values.shape  # 0.05 * 64 * 32 = 102 values
    ((5, 32), (102,))
  """

  def __init__(self, in_features: int, out_features: int, *, rank: int, density: float = 0.01,
               alpha: float = 1.0, use_bias: bool = True, support_seed: int = 0, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    check_positive("alpha", alpha)
    check_bool("use_bias", use_bias)
    params = init_sltrain(rngs.params(), in_features, out_features, rank=rank, density=density,
                          use_bias=use_bias, dtype=param_dtype)
    self.in_features, self.out_features, self.rank = in_features, out_features, rank
    self.density, self.alpha, self.support_seed = float(density), alpha, int(support_seed)
    self.dtype = dtype
    self.a = nnx.Param(params["a"])
    self.b = nnx.Param(params["b"])
    self.values = nnx.Param(params["values"])
    self.bias = nnx.Param(params["bias"]) if use_bias else None

  @property
  def indices(self) -> np.ndarray:
    """The fixed support Ω (static, not state)."""
    return sparse_support(self.in_features, self.out_features, self.density, self.support_seed)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    _check_input("SLTrainLinear", x, self.in_features)
    params = {n: getattr(self, n)[...] for n in ("a", "b", "values", "bias")
              if getattr(self, n) is not None}
    return _apply(x, params, self.in_features, self.out_features, self.density,
                  self.support_seed, self.dtype, self.alpha / self.rank)


class LinenSLTrainDense(linen.Module):
  """The Linen twin of `SLTrainLinear` (exported as `jaxlearn.nn.linen.SLTrainDense`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.SLTrainDense(64, 32, rank=4, density=0.05)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((5, 64)))
    >>> layer.apply(variables, jnp.ones((5, 64))).shape
    (5, 32)
  """

  in_features: int
  out_features: int
  rank: int
  density: float = 0.01
  alpha: float = 1.0
  use_bias: bool = True
  support_seed: int = 0
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_shapes(self.in_features, self.out_features, self.rank, self.density)
    check_positive("alpha", self.alpha)
    x = jnp.asarray(x)
    _check_input("SLTrainDense", x, self.in_features)
    init = lambda key: init_sltrain(key, self.in_features, self.out_features, rank=self.rank,
                                    density=self.density, use_bias=self.use_bias,
                                    dtype=self.param_dtype)
    names = jax.eval_shape(init, jax.random.key(0))
    params = {name: self.param(name, lambda key, n=name: init(key)[n]) for name in names}
    return _apply(x, params, self.in_features, self.out_features, float(self.density),
                  int(self.support_seed), self.dtype, self.alpha / self.rank)


RECORD = registry.record(
    slug="sltrain",
    kind="layer",
    title="SLTrain: a sparse plus low-rank approach for parameter and memory efficient pretraining",
    reference="arXiv:2406.02214",
    experiment="sltrain_memory",
    notes=(
        "Follows the official SpLoRaLinear and its C++ forward: W = (alpha/r) A B + S (flax "
        "layout), A Kaiming-uniform (a=sqrt 5, i.e. U(+-1/sqrt in)), B zeros, S = trainable values "
        "U(+-1/sqrt in) on floor(delta in out) sorted uniformly random flat indices, bias "
        "U(+-1/sqrt out); the kernel is materialized as a temporary in the forward as the official "
        "kernel does (the memory saved is parameters and optimizer state). Deviations: the support "
        "is drawn with NumPy from an explicit support_seed (static, not state; official: "
        "torch.randperm under the global seed); the optional trainable tanh(s) scale is not "
        "transcribed; at least one sparse entry is required."
    ),
)
