r"""Scalable Neural Network Kernels (SNNK): a dense layer rewritten as a random-feature kernel.

An SNNK replaces :math:`y = f(W x)` by a dot product of random features of the input and of the
weights, so that inputs and parameters meet only in the last step. With a fixed Gaussian
projection :math:`G \in \mathbb{R}^{d \times m}` (Flax's (in, m) layout, one seed shared by inputs
and weights, as the official code's ``torch.manual_seed(seed)``), the ReLU-SNNK features
(official ``phi_relu_mapping_torch``) are

.. math::

   \phi(x) = \frac{1}{\sqrt{m}} \operatorname{relu}(x G),
   \qquad \phi(x)^\top \phi(w) \xrightarrow[m \to \infty]{}
   \mathbb{E}_{g \sim \mathcal{N}(0, I)}[\operatorname{relu}(g^\top x)\operatorname{relu}(g^\top w)]
   = \frac{\lVert x \rVert \lVert w \rVert}{2\pi}\,(\sin\theta + (\pi - \theta)\cos\theta),

(the first-order arc-cosine kernel; :math:`\theta` the angle between x and w), and the universal
random features (URFs, official ``input_to_rfs_torch_vectorized``) with per-feature coefficients
:math:`A_r = A(\xi_r)`, :math:`a_r = a(\xi_r)` supplied by the user are

.. math::

   \phi(x)_r = \frac{A_r}{\sqrt{m}}
   \exp\!\Big(a_r\, (x G)_r - \frac{a_r^2 \lVert x \rVert^2}{2}\Big),
   \qquad \mathbb{E}_G[\phi(x)^\top \phi(w)] = \frac{1}{m} \sum_r A_r^2 \exp(a_r^2\, x^\top w).

The layer's trainable parameter is the feature-space weight :math:`\Psi \in \mathbb{R}^{m \times
\text{out}}`, initialised as :math:`\Psi = \phi(W^\top)^\top` of a (pretrained or freshly drawn)
dense kernel :math:`W \in \mathbb{R}^{d \times \text{out}}`; the output is

.. math::

   y = \phi(x)\, \Psi \qquad (\text{no bias, as the official code}),

so the layer holds :math:`m \cdot \text{out}` parameters instead of :math:`d \cdot \text{out}`.

Scope: only what could be verified in the official code. The ReLU-SNNK (``NNK_Relu``) and the URF
map with user-supplied coefficients; the paper's per-activation :math:`(A, a, \xi)` tables and
the "bundling" closed forms are not implemented, and the official general ``NNK`` class cannot run
as released (it passes a non-existent ``normalize_constant``). The projection G is not a
parameter: it is drawn in float32 from ``jax.random.key(feature_seed)``, independent of the
``params`` stream, and recomputed from that seed at every call (it is never trained or stored).

References:
  Sehanobish, Choromanski, Zhao, Dubey, Likhosherstov, "Scalable Neural Network Kernels",
  ICLR 2024, https://arxiv.org/abs/2310.13225 (https://openreview.net/forum?id=4iPw1klFWa).
  Official code:
  https://github.com/arijitthegame/neural-network-kernels (``src/nnk/nnk.py``).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive_int

__all__ = [
    "SNNKLinear",
    "snnk",
    "snnk_features",
    "snnk_projection",
    "relu_features",
    "urf_features",
    "init_snnk",
    "LinenSNNKDense",
]


def snnk_projection(feature_seed: int, in_features: int, num_features: int) -> jax.Array:
  r"""The fixed Gaussian projection :math:`G \sim \mathcal{N}(0, 1)^{d \times m}`, float32.

  Example:
    >>> from jaxlearn.nn import snnk_projection
    >>> snnk_projection(0, 4, 16).shape
    (4, 16)
  """
  check_positive_int("num_features", num_features)
  check_positive_int("in_features", in_features)
  return _draw_projection(int(feature_seed), in_features, num_features)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _draw_projection(feature_seed, in_features, num_features):
  # One compiled draw per shape (eager threefry runs op by op); inlined when traced.
  return jax.random.normal(jax.random.key(feature_seed), (in_features, num_features), jnp.float32)


def relu_features(x: jax.Array, projection: jax.Array) -> jax.Array:
  r""":math:`\phi(x) = \operatorname{relu}(x G) / \sqrt{m}` for x of shape (..., d).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import relu_features
    >>> relu_features(jnp.array([[1.0, -1.0]]), jnp.array([[1.0, 2.0], [0.0, 1.0]]))
    Array([[0.70710677, 0.70710677]], dtype=float32)
  """
  x = jnp.asarray(x)  # a NumPy float64 input becomes JAX's default float, as in any jnp function
  return jax.nn.relu(x @ projection) / jnp.sqrt(projection.shape[-1]).astype(x.dtype)


def urf_features(x: jax.Array, projection: jax.Array, big_a: jax.Array,
                 small_a: jax.Array) -> jax.Array:
  r"""URFs :math:`\phi(x)_r = A_r \exp(a_r (xG)_r - a_r^2 \lVert x \rVert^2 / 2) / \sqrt{m}`.

  Args:
    x: inputs (..., d).
    projection: G, (d, m).
    big_a: :math:`A_r = A(\xi_r)`, shape (m,).
    small_a: :math:`a_r = a(\xi_r)`, shape (m,).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import snnk_projection, urf_features
    >>> g = snnk_projection(0, 3, 4096)
    >>> ones = jnp.ones(4096)  # A = a = 1: positive random features of exp(x . w)
    >>> x, w = jnp.array([0.3, -0.2, 0.1]), jnp.array([0.1, 0.4, -0.2])
    >>> estimate = urf_features(x, g, ones, ones) @ urf_features(w, g, ones, ones)
    >>> bool(abs(estimate - jnp.exp(x @ w)) < 0.05)
    True
  """
  x = jnp.asarray(x)  # as in relu_features
  squared = jnp.sum(x * x, axis=-1, keepdims=True)
  exponent = small_a * (x @ projection) - 0.5 * small_a**2 * squared
  return big_a * jnp.exp(exponent) / jnp.sqrt(projection.shape[-1]).astype(x.dtype)


def snnk_features(x: jax.Array, projection: jax.Array, coefficients=None) -> jax.Array:
  r"""ReLU features when `coefficients` is None, else URFs with `coefficients = (A, a)`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import snnk_features, snnk_projection
    >>> snnk_features(jnp.ones((2, 3)), snnk_projection(0, 3, 8)).shape
    (2, 8)
  """
  if coefficients is None:
    return relu_features(x, projection)
  big_a, small_a = (jnp.asarray(c, x.dtype) for c in coefficients)
  return urf_features(x, projection, big_a, small_a)


def snnk(x: jax.Array, projection: jax.Array, psi: jax.Array, coefficients=None) -> jax.Array:
  r"""The SNNK layer :math:`y = \phi(x) \Psi` for x (..., d), G (d, m), :math:`\Psi` (m, out).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_snnk, snnk, snnk_projection
    >>> g = snnk_projection(0, 4, 16)
    >>> p = init_snnk(jax.random.key(1), g, out_features=3)
    >>> snnk(jnp.ones((5, 4)), g, p["psi"]).shape
    (5, 3)
  """
  return snnk_features(x, projection, coefficients) @ psi


def init_snnk(key: jax.Array, projection: jax.Array, out_features: int, *,
              kernel: jax.Array | None = None, coefficients=None,
              dtype=jnp.float32) -> dict[str, jax.Array]:
  r"""{'psi': :math:`\phi(W^\top)^\top`} (m, out); W a given (d, out) kernel or LeCun-normal.

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_snnk, snnk_projection
    >>> init_snnk(jax.random.key(0), snnk_projection(0, 4, 16), 3)["psi"].shape
    (16, 3)
  """
  check_positive_int("out_features", out_features)
  in_features = projection.shape[0]
  if kernel is None:
    kernel = jax.nn.initializers.lecun_normal()(key, (in_features, out_features), jnp.float32)
  if kernel.shape != (in_features, out_features):
    raise ValueError(f"init_snnk expects a kernel of shape {(in_features, out_features)}, "
                     f"got {kernel.shape}")
  psi = snnk_features(kernel.T.astype(jnp.float32), projection, coefficients).T
  return {"psi": psi.astype(dtype)}


def _check_coefficients(coefficients, num_features):
  if coefficients is None:
    return None
  if len(coefficients) != 2 or any(len(c) != num_features for c in coefficients):
    raise ValueError(f"SNNK expects coefficients (A, a), each of length num_features="
                     f"{num_features}")
  return tuple(tuple(float(v) for v in c) for c in coefficients)


def _check_input(x: jax.Array, in_features: int) -> None:
  if x.ndim < 1 or x.shape[-1] != in_features:
    raise ValueError(
        f"SNNK expects inputs of shape (..., in_features={in_features}), got shape {x.shape}")


def _apply(x, psi, feature_seed, coefficients, dtype):
  """Features in float32 (random features are float32), the product in `dtype`."""
  x = jnp.asarray(x)
  dtype = dtype or jnp.result_type(x.dtype, psi.dtype)
  projection = snnk_projection(feature_seed, x.shape[-1], psi.shape[0])
  features = snnk_features(x.astype(jnp.float32), projection, coefficients)
  return (features.astype(dtype) @ psi.astype(dtype)).astype(dtype)


class SNNKLinear(nnx.Module):
  r"""An SNNK layer (in, out) with m random features: :math:`y = \phi(x) \Psi`.

  Args:
    in_features, out_features: the shapes (inputs are (..., in_features)).
    num_features: m, the number of random features (>= 1).
    feature_seed: the seed of the fixed projection G (not a parameter; shared by x and W).
    coefficients: None for the ReLU-SNNK, or (A, a): two length-m sequences of floats for URFs.
    kernel: an optional (in, out) dense kernel to convert (default: LeCun-normal from `params`).
    dtype: computation and output dtype (features are computed in float32).
    param_dtype: dtype of :math:`\Psi`.
    rngs: `nnx.Rngs` with a 'params' stream.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.SNNKLinear(8, 3, num_features=4, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((5, 8))).shape, layer.psi.shape  # 4 * 3 parameters instead of 8 * 3
    ((5, 3), (4, 3))
  """

  def __init__(self, in_features: int, out_features: int, *, num_features: int,
               feature_seed: int = 0, coefficients: Sequence[Sequence[float]] | None = None,
               kernel: jax.Array | None = None, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.coefficients = _check_coefficients(coefficients, num_features)
    projection = snnk_projection(feature_seed, in_features, num_features)
    params = init_snnk(rngs.params(), projection, out_features, kernel=kernel,
                       coefficients=self.coefficients, dtype=param_dtype)
    self.in_features = in_features
    self.feature_seed = feature_seed
    self.psi = nnx.Param(params["psi"])
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.in_features)
    return _apply(x, self.psi[...], self.feature_seed, self.coefficients, self.dtype)


class LinenSNNKDense(linen.Module):
  """The Linen twin of `SNNKLinear` (exported as `jaxlearn.nn.linen.SNNKDense`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.SNNKDense(in_features=8, out_features=3, num_features=4)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((5, 8)))
    >>> layer.apply(variables, jnp.ones((5, 8))).shape
    (5, 3)
  """

  in_features: int
  out_features: int
  num_features: int
  feature_seed: int = 0
  coefficients: tuple | None = None
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.in_features)
    coefficients = _check_coefficients(self.coefficients, self.num_features)
    projection = lambda: snnk_projection(self.feature_seed, self.in_features, self.num_features)
    psi = self.param("psi", lambda key: init_snnk(
        key, projection(), self.out_features, coefficients=coefficients,
        dtype=self.param_dtype)["psi"])
    return _apply(x, psi, self.feature_seed, coefficients, self.dtype)


RECORD = registry.record(
    slug="scalable_nn_kernels",
    kind="layer",
    title="Scalable Neural Network Kernels",
    reference="arXiv:2310.13225",
    experiment="snnk_kernel_and_params",
    notes=(
        "Scope: the ReLU-SNNK (official NNK_Relu: phi(x) = relu(xG)/sqrt(m) on inputs and "
        "weights, trainable feature-space weight Psi = phi(W^T)^T, no bias) and the universal "
        "random features phi(x)_r = A_r exp(a_r (xG)_r - a_r^2 |x|^2/2)/sqrt(m) with "
        "user-supplied per-feature coefficients (A_r, a_r) = (A(xi_r), a(xi_r)) (official "
        "input_to_rfs_torch_vectorized, its 2-D branch: the 3-D branch drops the 1/2 of the "
        "correction term, which we do not follow). NOT implemented: the paper's per-activation "
        "(A, a, xi) tables, bundling and its closed forms, the asymmetric-kernel variant and "
        "orthogonal projections; the official general NNK class cannot run as released. The "
        "projection G is float32, fixed and recomputed from the static feature_seed at every "
        "call (not a variable, so it is never trained, checkpointed or sharded). The catalogue's "
        "second SNNK entry (snnk) is this method."
    ),
)
