r"""Maestro: a Dense layer factorized as a trainable low-rank product with ordered dropout.

Maestro writes a weight as a product of two trainable factors and, in training, keeps only the
first b of its k components, b drawn uniformly at random (ordered dropout); the components then
learn an importance order, and on a linear map with uniformly distributed inputs they recover
its SVD. In Flax's layout (kernel of shape (in, out)), with k = min(in, out),

.. math::

  y = \big((x U) \odot m^{(b)}\big) V + c,\qquad U \in \mathbb{R}^{\text{in} \times k},\
  V \in \mathbb{R}^{k \times \text{out}},\qquad
  m^{(b)}_j = s_j \, \mathbb{1}\Big[\sum_{i \le j} s_i \le b\Big],\quad
  b \sim \mathcal{U}\{1, \dots, \textstyle\sum_i s_i\},

where U is the official `in_network.weight` transposed, V the `out_network.weight` transposed
(W = UV), s ∈ {0, 1}^k the components kept by shrinking (all ones at first) and m^{(b)} keeps the
first b of them (the official `weight_in[low_rank][:b]`; b uniform as its `IndependentSampler`).
Evaluation (``deterministic``) keeps every component of s; ``rank=b`` fixes the cut-off.

**Group lasso and importance** (official `_compute_lasso`, `group_lasso`, `importance`), per
component j, plain or hierarchical (tail-cumulative):

.. math::

  \ell_j = \|u_j\| + \|v_j\|,\qquad \ell^{h}_j = \sqrt{\textstyle\sum_{i \ge j} \|u_i\|^2}
  + \sqrt{\textstyle\sum_{i \ge j} \|v_i\|^2},\qquad
  \text{importance}_j = \|u_j\| \, \|v_j\|

(hierarchical importance: the product of the two tail norms); the penalty is
:math:`\lambda \sum_j \ell_j`. **Progressive shrinking** (`assign_low_rank`): s = importance ≥
threshold (`maestro_shrink_mask`); shapes stay static, `maestro_prune` drops the masked
components when asked (a new shape, hence a new compilation, as the official `prune=True`).

**Initialization** as PyTorch's two `nn.Linear`: U ~ U(±1/√in), V ~ U(±1/√k), bias ~ U(±1/√k);
`maestro_from_dense` is the official `decompose_linear` (SVD, √σ on both factors).

Sharding: U and V are ordinary kernels; `jaxlearn.train.parallel.fsdp_specs` applies.

References:
  Samuel Horváth, Stefanos Laskaridis, Shashank Rajput and Hongyi Wang, `Maestro: Uncovering
  Low-Rank Structures via Trainable Decomposition <https://arxiv.org/abs/2308.14929>`_, ICML 2024.
  Official code: https://github.com/SamuelHorvath/Maestro-LoD (`maestro/layers/linear.py`,
  `maestro/samplers/independent.py`, `maestro/layers/utils.py`).
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
from jaxlearn._checks import check_bool, check_positive_int
from jaxlearn.nn._random import layer_stream, training_key

__all__ = [
    "MaestroLinear",
    "maestro_linear",
    "ordered_dropout_mask",
    "truncation_mask",
    "maestro_group_lasso",
    "maestro_importance",
    "maestro_shrink_mask",
    "maestro_prune",
    "maestro_from_dense",
    "init_maestro",
    "LinenMaestroDense",
]


def truncation_mask(keep: jax.Array, rank) -> jax.Array:
  r"""m^{(b)}: the first `rank` components among those `keep` (a 0/1 vector) marks, as float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import truncation_mask
    >>> truncation_mask(jnp.array([1.0, 0.0, 1.0, 1.0]), 2)
    Array([1., 0., 1., 0.], dtype=float32)
  """
  keep = jnp.asarray(keep, jnp.float32)
  return keep * (jnp.cumsum(keep) <= rank)


def ordered_dropout_mask(key: jax.Array, keep: jax.Array) -> jax.Array:
  r"""A random m^{(b)}, b uniform in {1, ..., Σ keep} (ordered dropout).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import ordered_dropout_mask
    >>> m = ordered_dropout_mask(jax.random.key(0), jnp.ones(5))
    >>> bool(m[0] == 1 and (jnp.diff(m) <= 0).all())  # a prefix of ones
    True
  """
  keep = jnp.asarray(keep, jnp.float32)
  count = jnp.sum(keep).astype(jnp.int32)
  rank = jax.random.randint(key, (), 1, jnp.maximum(count, 1) + 1)
  return truncation_mask(keep, rank)


def maestro_linear(x: jax.Array, u: jax.Array, v: jax.Array, bias: jax.Array | None = None,
                   mask: jax.Array | None = None) -> jax.Array:
  r"""y = ((x U) ⊙ m) V + c for inputs of shape (..., in).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_maestro, maestro_linear, truncation_mask
    >>> p = init_maestro(jax.random.key(0), 6, 4)
    >>> maestro_linear(jnp.ones((3, 6)), p["u"], p["v"], p["bias"],
    ...                truncation_mask(jnp.ones(4), 2)).shape
    (3, 4)
  """
  hidden = x @ u
  if mask is not None:
    hidden = hidden * mask.astype(hidden.dtype)
  y = hidden @ v
  return y if bias is None else y + bias.astype(y.dtype)


def _norms(u, v, hierarchical):
  """(‖u_j‖, ‖v_j‖) per component, or their tail-cumulative versions, in float32."""
  u2 = jnp.sum(jnp.square(u.astype(jnp.float32)), axis=0)
  v2 = jnp.sum(jnp.square(v.astype(jnp.float32)), axis=1)
  if hierarchical:
    # Official: do not start from zero factors, the square root's gradient is then NaN.
    u2, v2 = (jnp.flip(jnp.cumsum(jnp.flip(a))) for a in (u2, v2))
  return jnp.sqrt(u2), jnp.sqrt(v2)


def maestro_group_lasso(u: jax.Array, v: jax.Array, *, hierarchical: bool = False) -> jax.Array:
  r"""ℓ_j = ‖u_j‖ + ‖v_j‖ per component (or ℓ^h_j); the penalty is λ · sum.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import maestro_group_lasso
    >>> u, v = jnp.array([[3.0, 0.0], [4.0, 1.0]]), jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> maestro_group_lasso(u, v), maestro_group_lasso(u, v, hierarchical=True)
    (Array([6., 3.], dtype=float32), Array([7.335088, 3.      ], dtype=float32))
  """
  norm_u, norm_v = _norms(u, v, hierarchical)
  return norm_u + norm_v


def maestro_importance(u: jax.Array, v: jax.Array, *, hierarchical: bool = False) -> jax.Array:
  r"""‖u_j‖·‖v_j‖ per component (the singular values once U, V recover the SVD).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import maestro_importance
    >>> maestro_importance(jnp.array([[3.0, 0.0], [4.0, 1.0]]),
    ...                    jnp.array([[1.0, 0.0], [0.0, 2.0]]))
    Array([5., 2.], dtype=float32)
  """
  norm_u, norm_v = _norms(u, v, hierarchical)
  return jax.lax.stop_gradient(norm_u * norm_v)


def maestro_shrink_mask(u: jax.Array, v: jax.Array, threshold, *,
                        hierarchical: bool = False) -> jax.Array:
  """The kept components s = importance ≥ threshold (official `assign_low_rank`), as float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import maestro_shrink_mask
    >>> maestro_shrink_mask(jnp.array([[3.0, 0.0], [4.0, 1.0]]),
    ...                     jnp.array([[1.0, 0.0], [0.0, 2.0]]), 3.0)
    Array([1., 0.], dtype=float32)
  """
  importance = maestro_importance(u, v, hierarchical=hierarchical)
  return (importance >= threshold).astype(jnp.float32)


def maestro_prune(params: dict[str, jax.Array], keep) -> dict[str, jax.Array]:
  """The parameters with the components `keep` drops removed (new shapes: re-jit after).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_maestro, maestro_prune
    >>> p = maestro_prune(init_maestro(jax.random.key(0), 6, 4), jnp.array([1, 0, 1, 0]))
    >>> p["u"].shape, p["v"].shape
    ((6, 2), (2, 4))
  """
  index = np.flatnonzero(np.asarray(keep))
  return {**params, "u": params["u"][:, index], "v": params["v"][index, :]}


def maestro_from_dense(kernel: jax.Array, bias: jax.Array | None = None) -> dict[str, jax.Array]:
  r"""U = P √Σ, V = √Σ Qᵀ from the SVD kernel = P Σ Qᵀ (official `decompose_linear`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import maestro_from_dense
    >>> p = maestro_from_dense(jnp.array([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]))
    >>> (p["u"] @ p["v"]).round(4)
    Array([[2., 0.],
           [0., 3.],
           [0., 0.]], dtype=float32)
  """
  left, sigma, right = jnp.linalg.svd(kernel, full_matrices=False)
  root = jnp.sqrt(sigma)
  params = {"u": left * root, "v": root[:, None] * right}
  if bias is not None:
    params["bias"] = bias
  return params


def init_maestro(key: jax.Array, in_features: int, out_features: int, *, use_bias: bool = True,
                 dtype=jnp.float32) -> dict[str, jax.Array]:
  """{'u': (in, k), 'v': (k, out)[, 'bias': (out,)]}, k = min(in, out), PyTorch Linear init.

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_maestro
    >>> p = init_maestro(jax.random.key(0), 6, 4)
    >>> {name: value.shape for name, value in p.items()}  # a jitted init: sorted keys
    {'bias': (4,), 'u': (6, 4), 'v': (4, 4)}
  """
  check_positive_int("in_features", in_features)
  check_positive_int("out_features", out_features)
  check_bool("use_bias", use_bias)
  return _init(key, in_features, out_features, use_bias, jnp.dtype(dtype))


# Jitted so that an eager init compiles one program instead of one per random draw.
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _init(key, in_features, out_features, use_bias, dtype):
  inner = min(in_features, out_features)
  key_u, key_v, key_b = jax.random.split(key, 3)
  uniform = lambda k, shape, fan_in: jax.random.uniform(k, shape, dtype, -fan_in**-0.5,
                                                        fan_in**-0.5)
  params = {"u": uniform(key_u, (in_features, inner), in_features),
            "v": uniform(key_v, (inner, out_features), inner)}
  if use_bias:
    params["bias"] = uniform(key_b, (out_features,), inner)
  return params


def _check_input(layer: str, x: jax.Array, in_features: int) -> None:
  if x.ndim < 1 or x.shape[-1] != in_features:
    raise ValueError(
        f"{layer} expects inputs of shape (..., in_features={in_features}), got shape {x.shape}")


# Jitted: an eager NNX call compiles one program instead of one per primitive.
@functools.partial(jax.jit, static_argnums=(5,))
def _apply(x, params, keep, rank, key, dtype):
  """The layer in `dtype`: all of `keep`, its first `rank` or (with a key) a random prefix."""
  dtype = dtype or jnp.result_type(x.dtype, *(p.dtype for p in params.values()))
  if key is not None:
    mask = ordered_dropout_mask(key, keep)
  elif rank is not None:
    mask = truncation_mask(keep, rank)
  else:
    mask = keep
  cast = lambda name: params[name].astype(dtype) if name in params else None
  return maestro_linear(x.astype(dtype), cast("u"), cast("v"), cast("bias"), mask)


def _keep(keep, inner):
  if keep is None:
    return jnp.ones((inner,), jnp.float32)
  keep = jnp.asarray(keep, jnp.float32)
  if keep.shape != (inner,):
    raise ValueError(f"keep must have shape ({inner},) (one entry per component), got "
                     f"{keep.shape}")
  return keep


class MaestroLinear(nnx.Module):
  r"""A Dense layer W = U V with ordered dropout over its k = min(in, out) components.

  Args:
    in_features, out_features: the dense shape replaced.
    use_bias: add a bias.
    deterministic: evaluation mode (no truncation); `model.eval()` / `model.train()` set it.
    rng_stream: the name of the ordered-dropout stream (default ``"ordered_dropout"``).
    dtype: computation and output dtype (default: the input's, promoted with the parameters').
    param_dtype: the parameters' dtype.
    rngs: `nnx.Rngs`: 'params' for the parameters; its ``rng_stream``, if present, is kept for
      sampling when the call gives no ``rngs``.

  Call with ``keep`` (the shrinking mask s, default all ones), ``rank`` (a fixed cut-off b
  instead of a random one; also in evaluation), ``deterministic`` and ``rngs`` (an `nnx.Rngs`,
  an `RngStream` or a key).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.MaestroLinear(6, 4, rngs=nnx.Rngs(0, ordered_dropout=1))
    >>> y = layer(jnp.ones((3, 6)))  # training: a random prefix of the 4 components
    >>> layer.eval()
    >>> layer(jnp.ones((3, 6)), rank=2).shape  # the best rank-2 sub-model
    (3, 4)
  """

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               deterministic: bool = False, rng_stream: str = "ordered_dropout", dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    check_bool("deterministic", deterministic)
    params = init_maestro(rngs.params(), in_features, out_features, use_bias=use_bias,
                          dtype=param_dtype)
    self.in_features, self.inner = in_features, min(in_features, out_features)
    self.deterministic, self.rng_stream, self.dtype = deterministic, rng_stream, dtype
    self.u = nnx.Param(params["u"])
    self.v = nnx.Param(params["v"])
    self.bias = nnx.Param(params["bias"]) if use_bias else None
    self.rngs = layer_stream(rngs, rng_stream)

  def importance(self, hierarchical: bool = False) -> jax.Array:
    """‖u_j‖·‖v_j‖ per component (`maestro_importance`)."""
    return maestro_importance(self.u[...], self.v[...], hierarchical=hierarchical)

  def group_lasso(self, hierarchical: bool = False) -> jax.Array:
    """ℓ_j per component (`maestro_group_lasso`); add λ · sum to the loss."""
    return maestro_group_lasso(self.u[...], self.v[...], hierarchical=hierarchical)

  def __call__(self, x: jax.Array, *, keep: jax.Array | None = None, rank=None,
               deterministic: bool | None = None,
               rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> jax.Array:
    x = jnp.asarray(x)
    _check_input("MaestroLinear", x, self.in_features)
    deterministic = self.deterministic if deterministic is None else deterministic
    key = None if deterministic or rank is not None else self._key(rngs)
    params = {n: getattr(self, n)[...] for n in ("u", "v", "bias") if getattr(self, n) is not None}
    return _apply(x, params, _keep(keep, self.inner), rank, key, self.dtype)

  def _key(self, rngs) -> jax.Array:
    return training_key(self.rngs if rngs is None else rngs, self.rng_stream,
                        "MaestroLinear samples its ordered-dropout cut-off in training")


class LinenMaestroDense(linen.Module):
  r"""The Linen twin of `MaestroLinear` (exported as `jaxlearn.nn.linen.MaestroDense`).

  Same parameters (`u`, `v`, `bias`) and numbers given the same key. Call with ``keep``,
  ``rank``, ``deterministic`` (call value, else the attribute; None means training) and ``rng``
  (else ``make_rng(rng_stream)``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.MaestroDense(6, 4)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((3, 6)), deterministic=True)
    >>> y = layer.apply(variables, jnp.ones((3, 6)), rngs={"ordered_dropout": jax.random.key(1)})
    >>> layer.apply(variables, jnp.ones((3, 6)), deterministic=True).shape
    (3, 4)
  """

  in_features: int
  out_features: int
  use_bias: bool = True
  deterministic: bool | None = None
  rng_stream: str = "ordered_dropout"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array, *, keep: jax.Array | None = None, rank=None,
               deterministic: bool | None = None, rng: jax.Array | None = None) -> jax.Array:
    x = jnp.asarray(x)
    init = lambda key: init_maestro(key, self.in_features, self.out_features,
                                    use_bias=self.use_bias, dtype=self.param_dtype)
    names = jax.eval_shape(init, jax.random.key(0))
    _check_input("MaestroDense", x, self.in_features)
    params = {name: self.param(name, lambda key, n=name: init(key)[n]) for name in names}
    deterministic = bool(self.deterministic) if deterministic is None else deterministic
    key = None
    if not deterministic and rank is None:
      key = self.make_rng(self.rng_stream) if rng is None else rng
    inner = min(self.in_features, self.out_features)
    return _apply(x, params, _keep(keep, inner), rank, key, self.dtype)


RECORD = registry.record(
    slug="maestro_lod",
    kind="layer",
    title="Maestro: Uncovering Low-Rank Structures via Trainable Decomposition",
    reference="arXiv:2308.14929",
    experiment="maestro_low_rank_recovery",
    notes=(
        "Follows the official MaestroLinear: W = U V (flax layout of in_network/out_network), "
        "inner dimension min(in, out), PyTorch Linear init of both factors, ordered dropout "
        "keeping the first b kept components with b uniform in {1..kept} per layer and call (the "
        "official IndependentSampler; its SingleLayerSampler, one layer per step, is a training "
        "loop choice left to the user), group lasso (plain and hierarchical tail-cumulative), "
        "importance ||u_j|| ||v_j||, shrinking by an importance threshold (assign_low_rank) and "
        "decompose_linear (SVD with sqrt(S) on both factors). Deviations: shrinking is a static "
        "0/1 `keep` mask passed at call time (no shape change; maestro_prune removes components "
        "explicitly); with every component shrunk away the layer returns the bias (official: the "
        "same); the sampled cut-off needs an explicit key/rng stream ('ordered_dropout')."
    ),
)
