r"""Adaptive gradient clipping (AGC) of NFNets, registered from optax (`optax.adaptive_grad_clip`).

Brock, De, Smith, Simonyan, "High-Performance Large-Scale Image Recognition Without
Normalization", ICML 2021, arXiv:2102.06171; official code: google-deepmind/deepmind-research
`nfnets/agc_optax.py`.

AGC clips each *unit* (the weights feeding one output unit: a row of a PyTorch weight, a column of
a Flax Dense kernel, one output channel of a conv kernel) by the ratio of its gradient norm to its
weight norm:

.. math::

  G_i \leftarrow \begin{cases}
    \lambda \frac{\lVert W_i \rVert^\star}{\lVert G_i \rVert} G_i
      & \text{if } \frac{\lVert G_i \rVert}{\lVert W_i \rVert^\star} > \lambda \\
    G_i & \text{otherwise,}
  \end{cases}
  \qquad \lVert W_i \rVert^\star = \max(\lVert W_i \rVert, \epsilon),\ \epsilon = 10^{-3}.

Units, by kernel rank (Flax layout, output units on the last axis), as in the official code and
in optax: vectors and scalars (biases, gains) are one unit; Dense `(in, out)` kernels reduce over
axis 0 (one norm per output unit); HWIO conv kernels reduce over (H, W, I) (one norm per output
channel); rank-3 kernels reduce over axis 0 only (the official code's "multi-head linear"
`(in, heads, head_dim)` layout), which for a 1-D conv kernel `(W, I, O)` is NOT per output unit:
pass `axis=(0, 1)` for those. `tests/optim/test_agc.py` checks all of this against a NumPy
transcription of the equation above, and against pytorch-optimizer's `agc` (PyTorch layout).
The paper does not clip the final linear layer; wrap the transform in `optax.masked` to skip it.

`adaptive_grad_clip` computes exactly what `optax.adaptive_grad_clip` computes (same units, same
clipping; `tests/optim/test_agc.py` compares them), with argument checks and the jaxlearn dtype
policy (norms in float32, updates in the gradient's dtype, also under `inject_hyperparams`). It is
written here rather than wrapped because optax broadcasts each unit norm back to the full shape and
selects with `jnp.where`, which fails under an explicit sharding mesh (the broadcast norm loses the
parameter's sharding); scaling by `min(1, max_norm / ‖G_i‖)` keeps it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "adaptive_grad_clip",
]


def adaptive_grad_clip(
    clipping: float,
    eps: float = 1e-3,
    *,
    axis: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Clips each unit's gradient to at most `clipping * max(‖W_i‖, eps)` (NFNets' AGC).

  Stateless. `update` needs `params`. Chain it before the optimizer (the paper uses SGD with
  Nesterov momentum after it).

  Args:
    clipping: λ, the largest allowed ratio `‖G_i‖ / ‖W_i‖*`, > 0. The paper tunes it with the batch
      size (0.01 at batch 4096 for NFNet-F models; larger for smaller batches).
    eps: ε, the floor of the weight norm that lets zero-initialized weights move, >= 0.
    axis: the reduction axes of every leaf (one norm per slice over them); None picks them from
      each leaf's rank as described in the module docstring.

  Returns:
    A `GradientTransformationExtraArgs` (updates keep the gradients' dtype).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import adaptive_grad_clip
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(adaptive_grad_clip(0.01), optax.sgd(0.1, momentum=0.9, nesterov=True))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 10.0)}, state, params)

  References:
    Brock et al., `High-Performance Large-Scale Image Recognition Without Normalization
    <https://arxiv.org/abs/2102.06171>`_, ICML 2021.
  """
  _checks.check_positive("clipping", clipping)
  _checks.check_non_negative("eps", eps)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    _common.require_params(params, "adaptive_grad_clip", updates=updates)
    clip = lambda g, w: clip_unitwise(g, w, clipping, eps, agc_unit_axes(w, axis))
    return jax.tree.map(clip, updates, params), state

  transform = _common.compute_in_float32(optax.GradientTransformation(init_fn, update_fn))
  return _common.with_params_check(transform, "adaptive_grad_clip")


def agc_unit_axes(w: jax.Array, axis: Any) -> Any:
  """The axes one unit's norm reduces over (None: the whole leaf), as optax chooses them."""
  if axis is not None:
    return axis
  if sum(size != 1 for size in w.shape) <= 1:  # scalars and vectors: one unit
    return None
  by_rank = {2: 0, 3: 0, 4: (0, 1, 2), 5: (0, 1, 2, 3)}
  if w.ndim not in by_rank:
    raise ValueError(f"adaptive_grad_clip: pass `axis` for a parameter of shape {w.shape}")
  return by_rank[w.ndim]


def clip_unitwise(g, w, clipping, eps, axes):
  """g * min(1, clipping * max(‖w_i‖, eps) / ‖g_i‖), unit by unit."""
  norm = lambda x: jnp.sqrt(jnp.sum(jnp.square(jnp.abs(x)), axis=axes, keepdims=True))
  max_norm = clipping * jnp.maximum(norm(w), eps)
  # 1e-6 only guards the division: optax's `div_eps`.
  return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm(g), 1e-6))


RECORD = registry.record(
    slug="nfnet_agc",
    kind="transform",
    title="High-Performance Large-Scale Image Recognition Without Normalization",
    reference="arXiv:2102.06171",
    experiment="nfnet_agc_large_batch",
    also=(
        "optax.adaptive_grad_clip",
    ),
    notes=(
        "optax.adaptive_grad_clip equals the official nfnets/agc_optax.py and the paper's "
        "per-output-unit clipping for Dense (in, out) and HWIO conv kernels and vectors (NumPy "
        "transcription and pytorch-optimizer agc parity tests). Rank-3 kernels are read as "
        "multi-head (in, heads, dim): for 1-D conv kernels (W, I, O) the per-unit form needs "
        "axis=(0, 1). jaxlearn.optim.adaptive_grad_clip adds checks and float32 norms with the "
        "gradient dtype kept under inject_hyperparams. The paper leaves the final layer "
        "unclipped: wrap in optax.masked. pytorch-optimizer has agc() as a function, no "
        "optimizer class."
    ),
)
