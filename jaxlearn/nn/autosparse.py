r"""AutoSparse: learnable-threshold sparsity with Gradient Annealing (GA).

Paper: Kundu, Mellempudi, Vooturi, Kaul and Dubey, "AUTOSPARSE: Towards Automated Sparse
Training of Deep Neural Networks", arXiv:2304.06941. No official code was found.

**Source of the equations: a third-party implementation.** The paper's own equations could not
be read (only its abstract: gradients of masked weights are scaled down non-linearly and
combined with learnable-threshold pruning, without sparsity-inducing regularization). What is
implemented is the ``AutoSparse`` pruning layer of the PQuant toolkit
(github.com/nroope/PQuant, ``src/pquant/pruning_methods/autosparse.py``), which attributes it
to the paper:

.. math::

   \tilde W = \mathrm{sign}(W) \odot \mathrm{ReLU}_\alpha\bigl(|W| - \sigma(\tau)\bigr), \qquad
   \frac{d\,\mathrm{ReLU}_\alpha(u)}{du} = \begin{cases} 1 & u > 0 \\ \alpha & u \le 0
   \end{cases}

(the forward pass is the plain ReLU: weights below the threshold are exactly zero;
:math:`\sigma` is the logistic sigmoid; the threshold logit :math:`\tau` is learnable per layer,
per output channel or per weight and initialized to -5). :math:`\alpha = 0` is the hard
(sub)gradient of ReLU, :math:`\alpha = 1` the straight-through estimator; GA anneals
:math:`\alpha` from :math:`\alpha_0 = 0.5` after every epoch :math:`i` of :math:`T`,

.. math::

   \alpha \leftarrow \alpha \cdot \max\Bigl(\frac{1 + \cos(\pi i/T)}{2},\;
   1 - \mathrm{sigmoid}(-6 + 12\, i/T)\Bigr)

(`gradient_annealing_alpha`; PQuant can also multiply by a constant during "autotune" epochs
and reset :math:`\alpha` to 0 at a given epoch). The gradient through :math:`\mathrm{sign}(W)
|W|` is the annealed ReLU derivative for :math:`W \ne 0`; :math:`\tau` receives
:math:`-\sigma'(\tau)\sum \mathrm{sign}(W) g\,\mathrm{ReLU}'_\alpha`. As in STR (the
learnable-threshold method AutoSparse builds on), sparsity grows when weight decay pulls
:math:`\tau` up from -5 towards 0 (:math:`\sigma(\tau)` from 0.007 towards 0.5).

Public API: `autosparse_weight`, `annealed_relu` (the custom-gradient ReLU, :math:`\alpha`
traced), `gradient_annealing_alpha`, `cosine_sigmoid_decay`, the NNX layer `AutoSparseLinear`
and its Linen twin `LinenAutoSparseDense` (exported as `jaxlearn.nn.linen.AutoSparseDense`);
the layers take :math:`\alpha` at call time (traced: no recompilation as it anneals).

References:
  Abhisek Kundu, Naveen K. Mellempudi, Dharma Teja Vooturi, Bharat Kaul, Pradeep Dubey.
  "AUTOSPARSE: Towards Automated Sparse Training of Deep Neural Networks".
  https://arxiv.org/abs/2304.06941. 2023.
  Equations from the third-party PQuant implementation: https://github.com/nroope/PQuant
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_choice, check_positive_int, check_range

__all__ = [
    "autosparse_weight",
    "annealed_relu",
    "gradient_annealing_alpha",
    "cosine_sigmoid_decay",
    "AutoSparseLinear",
    "LinenAutoSparseDense",
]

THRESHOLD_TYPES = ("layerwise", "channelwise", "weightwise")
THRESHOLD_INIT = -5.0  # PQuant's config
ALPHA0 = 0.5  # PQuant's config


@jax.custom_vjp
def _annealed_relu(x, alpha):
  return jnp.maximum(x, 0)


def _annealed_relu_fwd(x, alpha):
  return jnp.maximum(x, 0), (x, alpha)


def _annealed_relu_bwd(residuals, g):
  x, alpha = residuals
  slope = jnp.where(x > 0, 1.0, alpha).astype(g.dtype)
  return g * slope, jnp.zeros_like(alpha)


_annealed_relu.defvjp(_annealed_relu_fwd, _annealed_relu_bwd)


def annealed_relu(x: jax.Array, alpha) -> jax.Array:
  r"""ReLU whose derivative is :math:`\alpha` (not 0) where :math:`x \le 0`.

  Args:
    x: the input.
    alpha: the slope of the backward pass below zero, in [0, 1] (may be traced).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import annealed_relu
    >>> x = jnp.array([-1.0, 0.0, 2.0])
    >>> annealed_relu(x, 0.25).tolist()
    [0.0, 0.0, 2.0]
    >>> jax.grad(lambda x: annealed_relu(x, 0.25).sum())(x).tolist()
    [0.25, 0.25, 1.0]
  """
  check_range("alpha", alpha, 0.0, 1.0)
  x = jnp.asarray(x)
  return _annealed_relu(x, jnp.asarray(alpha, jnp.float32))


def autosparse_weight(kernel: jax.Array, threshold: jax.Array, alpha=0.0) -> jax.Array:
  r""":math:`\mathrm{sign}(W)\,\mathrm{ReLU}_\alpha(|W| - \sigma(\tau))`: the sparse weight.

  Args:
    kernel: the dense weights :math:`W`.
    threshold: the threshold logits :math:`\tau`, broadcastable against ``kernel`` (a scalar
      per layer, ``(out,)`` per output channel of a flax ``(in, out)`` kernel, or per weight).
    alpha: GA's backward slope for pruned weights, in [0, 1].

  Returns:
    The sparse weight in ``kernel``'s dtype (computed in float32).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import autosparse_weight
    >>> w = autosparse_weight(jnp.array([[0.3, -0.9], [0.1, 0.6]]), jnp.array(0.0))
    >>> print(w.round(3))  # |W| shrunk by sigmoid(0) = 0.5, zero below it
    [[ 0.  -0.4]
     [ 0.   0.1]]
  """
  check_range("alpha", alpha, 0.0, 1.0)
  kernel = jnp.asarray(kernel)
  w = kernel.astype(jnp.float32)
  shifted = jnp.abs(w) - jax.nn.sigmoid(jnp.asarray(threshold, jnp.float32))
  sparse = jnp.sign(w) * _annealed_relu(shifted, jnp.asarray(alpha, jnp.float32))
  return sparse.astype(kernel.dtype)


def cosine_sigmoid_decay(i, total) -> jax.Array:
  r""":math:`\max\bigl((1 + \cos(\pi i/T))/2,\ 1 - \mathrm{sigmoid}(-6 + 12 i/T)\bigr)` (PQuant).

  Example:
    >>> from jaxlearn.nn import cosine_sigmoid_decay
    >>> [round(float(cosine_sigmoid_decay(i, 4)), 4) for i in range(5)]
    [1.0, 0.9526, 0.5, 0.1464, 0.0025]
  """
  i = jnp.asarray(i, jnp.float32)
  ratio = i / jnp.asarray(total, jnp.float32)
  cosine = (1.0 + jnp.cos(jnp.pi * ratio)) / 2.0
  sigmoid = 1.0 - jax.nn.sigmoid(-6.0 + 12.0 * ratio)
  return jnp.maximum(cosine, sigmoid)


def gradient_annealing_alpha(epoch, total_epochs: int, *, alpha: float = ALPHA0,
                             reset_epoch: int | None = None) -> jax.Array:
  r""":math:`\alpha` during ``epoch``: :math:`\alpha_0 \prod_{i < \mathrm{epoch}}`
  `cosine_sigmoid_decay` :math:`(i, T)` (PQuant's per-epoch multiplicative decay), 0 after
  ``reset_epoch``.

  Args:
    epoch: the current epoch (0-based; may be traced).
    total_epochs: :math:`T` (static).
    alpha: :math:`\alpha_0` in [0, 1] (PQuant's config: 0.5).
    reset_epoch: PQuant's ``alpha_reset_epoch``: :math:`\alpha = 0` from ``reset_epoch + 1``.

  Example:
    >>> from jaxlearn.nn import gradient_annealing_alpha
    >>> [round(float(gradient_annealing_alpha(e, 4)), 4) for e in range(5)]
    [0.5, 0.5, 0.4763, 0.2381, 0.0349]
  """
  check_positive_int("total_epochs", total_epochs)
  check_range("alpha", alpha, 0.0, 1.0)
  epoch = jnp.asarray(epoch, jnp.int32)
  past = jnp.arange(total_epochs)
  factors = jnp.where(past < epoch, cosine_sigmoid_decay(past, total_epochs), 1.0)
  value = alpha * jnp.prod(factors)
  if reset_epoch is not None:
    value = jnp.where(epoch > reset_epoch, 0.0, value)
  return value


def _threshold_shape(threshold_type: str, in_features: int, out_features: int):
  check_choice("threshold_type", threshold_type, THRESHOLD_TYPES)
  return {"layerwise": (), "channelwise": (out_features,),
          "weightwise": (in_features, out_features)}[threshold_type]


def _check_input(x: jax.Array, features: int, name: str) -> None:
  if x.ndim < 1 or x.shape[-1] != features:
    raise ValueError(f"{name} expects inputs of shape (..., in_features={features}), got shape "
                     f"{x.shape}")


def _dense(x, kernel, threshold, bias, alpha, dtype):
  check_range("alpha", alpha, 0.0, 1.0)
  x = jnp.asarray(x)
  dtype = jnp.dtype(dtype or jnp.result_type(x.dtype, kernel.dtype))
  return _dense_jit(x, kernel, threshold, bias, jnp.asarray(alpha, jnp.float32), dtype=dtype)


# Jitted so that eager NNX calls compile one program instead of one per primitive.
@functools.partial(jax.jit, static_argnames=("dtype",))
def _dense_jit(x, kernel, threshold, bias, alpha, *, dtype):
  w = autosparse_weight(kernel, threshold, alpha).astype(dtype)
  y = x.astype(dtype) @ w
  return y if bias is None else y + bias.astype(dtype)


class AutoSparseLinear(nnx.Module):
  r"""Dense layer with a learnable-threshold sparse kernel (AutoSparse, PQuant's equations).

  :math:`y = x\,\tilde W + b`, :math:`\tilde W` = `autosparse_weight` ``(kernel, threshold,
  alpha)``; ``alpha`` (GA) is given at call time. Parameters: `kernel` ``(in, out)``, `bias`,
  `threshold` (shape by ``threshold_type``: ``()``, ``(out,)`` or ``(in, out)``).

  Args:
    in_features, out_features: the shapes.
    threshold_type: ``"layerwise"``, ``"channelwise"`` (PQuant's default) or ``"weightwise"``.
    threshold_init: the initial threshold logit (-5).
    use_bias, dtype, param_dtype, kernel_init, bias_init: as `nnx.Linear`.
    rngs: `nnx.Rngs` with a 'params' stream.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.AutoSparseLinear(4, 3, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 4)), alpha=0.5).shape
    (2, 3)
  """

  def __init__(self, in_features: int, out_features: int, *,
               threshold_type: str = "channelwise", threshold_init: float = THRESHOLD_INIT,
               use_bias: bool = True, dtype=None, param_dtype=jnp.float32,
               kernel_init=nnx.initializers.lecun_normal(),
               bias_init=nnx.initializers.zeros_init(), rngs: nnx.Rngs):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    check_range("threshold_init", threshold_init)
    shape = _threshold_shape(threshold_type, in_features, out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.threshold = nnx.Param(jnp.full(shape, threshold_init, param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias \
        else nnx.data(None)
    self.in_features, self.dtype = in_features, dtype

  def __call__(self, x: jax.Array, alpha=0.0) -> jax.Array:
    """Applies the sparse kernel; ``alpha`` is GA's backward slope for pruned weights."""
    _check_input(x, self.in_features, "AutoSparseLinear")
    bias = None if self.bias is None else self.bias[...]
    return _dense(x, self.kernel[...], self.threshold[...], bias, alpha, self.dtype)


class LinenAutoSparseDense(linen.Module):
  """The Linen twin of `AutoSparseLinear` (exported as `jaxlearn.nn.linen.AutoSparseDense`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.AutoSparseDense(features=3)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 4)))
    >>> layer.apply(variables, jnp.ones((2, 4)), alpha=0.5).shape
    (2, 3)
  """

  features: int
  threshold_type: str = "channelwise"
  threshold_init: float = THRESHOLD_INIT
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = linen.initializers.lecun_normal()
  bias_init: Any = linen.initializers.zeros_init()

  @linen.compact
  def __call__(self, x: jax.Array, alpha=0.0) -> jax.Array:
    """Applies the sparse kernel; ``alpha`` is GA's backward slope for pruned weights."""
    check_positive_int("features", self.features)
    check_range("threshold_init", self.threshold_init)
    x = jnp.asarray(x)
    if self.has_variable("params", "kernel"):
      in_features = self.get_variable("params", "kernel").shape[0]
    else:
      in_features = x.shape[-1] if x.ndim else 0
    _check_input(x, in_features, "AutoSparseDense")
    shape = _threshold_shape(self.threshold_type, in_features, self.features)
    kernel = self.param("kernel", self.kernel_init, (in_features, self.features),
                        self.param_dtype)
    threshold = self.param("threshold", linen.initializers.constant(self.threshold_init), shape,
                           self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
        if self.use_bias else None
    return _dense(x, kernel, threshold, bias, alpha, self.dtype)


RECORD = registry.record(
    slug="autosparse_gradient_annealing",
    kind="layer",
    title="AUTOSPARSE: Towards Automated Sparse Training of Deep Neural Networks",
    reference="arXiv:2304.06941",
    experiment="autosparse_annealing",
    notes=(
        "EQUATIONS FROM A THIRD-PARTY IMPLEMENTATION: the paper's own equations and schedule "
        "could not be read (abstract only) and no official code was found; implemented as in "
        "PQuant's AutoSparse layer (github.com/nroope/PQuant, pruning_methods/autosparse.py): "
        "W_s = sign(W) ReLU_alpha(|W| - sigmoid(tau)) with the ReLU derivative alpha where "
        "|W| - sigmoid(tau) <= 0, tau learnable (layer/channel/weight-wise, init -5), alpha_0 "
        "0.5 multiplied after each epoch by max((1+cos(pi i/T))/2, 1 - sigmoid(-6 + 12 i/T)). "
        "PQuant's autotune-phase multiplier and its 'backward sparsity' option are not "
        "implemented; alpha_reset_epoch is `reset_epoch`. Channel-wise thresholds are per "
        "output unit of the flax (in, out) kernel (PQuant: per row of torch's (out, in))."
    ),
)
