r"""Gradient centralization and gradient normalization: stateless gradient preprocessing.

Both are the first links of Ranger21's chain (Wright & Demeure, "Ranger21: a synergistic deep
learning optimizer", arXiv:2106.13731; official code https://github.com/lessw2020/Ranger21) and are
usable in front of any optimizer.

Gradient centralization (Yong et al., "Gradient Centralization: A New Optimization Technique for
Deep Neural Networks", ECCV 2020, arXiv:2004.01461) removes, for every output unit u of a weight
(a neuron's incoming weights, a conv filter), the mean of that unit's gradient:

.. math::

  \Phi_{GC}(g)_u = g_u - \frac{1}{|u|} \sum_{i \in u} g_i .

Leaves with ndim <= 1 (biases, norm scales) are left unchanged, as in the paper and both reference
codes.

Layout: Flax kernels keep output units on the LAST axis (Dense `(in, out)`, Conv `HWIO`); PyTorch on
the first. `channel_axis=-1` (default) is the Flax convention; the mean is taken over every other
axis. `optax.centralize` takes the mean over axes 1.. (the PyTorch convention): on a Flax Dense
kernel it centres each INPUT row across output units, which is not the paper's operator
(`tests/optim/test_centralization.py` shows the difference).

Gradient normalization ("gradient standardization") divides a whole leaf by its standard deviation,

.. math::

  \Phi_{GN}(g) = \frac{g}{\operatorname{std}(g) + \varepsilon},
  \qquad \operatorname{std} \text{ with Bessel's correction } (n - 1),

for leaves with more than 2 elements (smaller leaves are left unchanged). It is not in the Ranger21
paper: the official code added it afterwards (its README: "Softplus and Gradient Std were added
after the paper"), and this follows that code (`normalize_gradient`, `torch.std` is unbiased).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "centralize_gradients",
    "normalize_gradients",
]


def centralize_leaf(g: jax.Array, channel_axis: int = -1) -> jax.Array:
  """Gradient centralization of one leaf (ndim <= 1: returned unchanged)."""
  if g.ndim <= 1:
    return g
  g32 = g.astype(_common.wide_dtype(g.dtype))
  mean = jnp.mean(g32, axis=_common.unit_axes(g.ndim, channel_axis), keepdims=True)
  return (g32 - mean).astype(g.dtype)


def normalize_leaf(g: jax.Array, eps) -> jax.Array:
  """Gradient normalization of one leaf (2 elements or fewer: returned unchanged)."""
  if g.size <= 2:
    return g
  g32 = g.astype(_common.wide_dtype(g.dtype))
  return (g32 / (jnp.std(g32, ddof=1) + eps)).astype(g.dtype)


def centralize_gradients(*, channel_axis: int = -1) -> optax.GradientTransformationExtraArgs:
  """Gradient centralization per output unit (Yong et al. 2020, arXiv:2004.01461).

  Args:
    channel_axis: the output-unit axis of every leaf with ndim > 1 (-1: Flax layout; 0: PyTorch).

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`; updates keep their dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import centralize_gradients
    >>> gc = centralize_gradients()
    >>> grads = {"w": jnp.array([[1.0, 2.0], [3.0, 2.0]])}  # (in, out): one column per unit
    >>> updates, _ = gc.update(grads, gc.init(grads))
    >>> updates["w"]
    Array([[-1.,  0.],
           [ 1.,  0.]], dtype=float32)
  """
  _common.check_channel_axis(channel_axis)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "centralize_gradients")
    return jax.tree.map(lambda g: centralize_leaf(g, channel_axis), updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def normalize_gradients(eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
  """Divides every leaf (more than 2 elements) by its unbiased standard deviation plus `eps`.

  Args:
    eps: added to the standard deviation, > 0 so that an all-zero leaf stays zero instead of
      0 / 0 (official Ranger21 code: 1e-8).

  Returns:
    A stateless `optax.GradientTransformationExtraArgs`; updates keep their dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import normalize_gradients
    >>> gn = normalize_gradients()
    >>> grads = {"w": jnp.array([1.0, 2.0, 3.0])}
    >>> updates, _ = gn.update(grads, gn.init(grads))
    >>> print(updates["w"])  # divided by the unbiased standard deviation, 1
    [1. 2. 3.]
  """
  _checks.check_positive("eps", eps)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "normalize_gradients")
    return jax.tree.map(lambda g: normalize_leaf(g, eps), updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
