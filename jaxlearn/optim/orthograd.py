"""⊥Grad (OrthoGrad): keep only the part of each gradient orthogonal to its weights.

Paper: Prieto, Barsbey, Mediano and Birdal, "Grokking at the Edge of Numerical Stability",
arXiv:2501.04697. Official code: LucasPrietoAl/grokking-at-the-edge-of-numerical-stability
(`orthograd.py`); pytorch-optimizer ships the same rule as `OrthoGrad`.

Without regularization, once a classifier fits its training set the cheapest way to lower the loss
is to scale the weights up (the "naive loss minimization" direction, which for a homogeneous model
is the weights themselves). ⊥Grad removes that direction from every parameter tensor `w` with
gradient `g` (both flattened), then restores the gradient's norm:

  g⊥ = g − (⟨w, g⟩ / (⟨w, w⟩ + ε)) · w,
  g̃  = g⊥ · ‖g‖ / (‖g⊥‖ + ε),

and the base optimizer (AdamW in the paper) steps with `g̃`. Stateless; ε = 1e-30 as in both
reference codes. The projection and norms are computed in at least float32 (ε = 1e-30 would
underflow to 0 in float16); the output keeps the gradient's dtype. For a zero gradient the output
is zero; for zero weights nothing is removed.

Use it first in a chain, before the base optimizer, e.g.
`optax.chain(orthogonalize_gradients(), optax.adamw(1e-2, b2=0.99, weight_decay=0.0))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "orthogonalize_gradients",
    "orthogonalize_leaf",
]

DEFAULT_EPS = 1e-30


def orthogonalize_leaf(grad: jax.Array, weight: jax.Array, eps=DEFAULT_EPS) -> jax.Array:
  """⊥Grad of one tensor: `grad` minus its projection on `weight`, rescaled to ‖grad‖."""
  dtype = _common.wide_dtype(jnp.promote_types(grad.dtype, weight.dtype))
  g = grad.astype(dtype).reshape(-1)
  w = weight.astype(dtype).reshape(-1)
  orthogonal = g - (jnp.dot(w, g) / (jnp.dot(w, w) + eps)) * w
  rescaled = orthogonal * (jnp.linalg.norm(g) / (jnp.linalg.norm(orthogonal) + eps))
  return rescaled.reshape(grad.shape).astype(grad.dtype)


def orthogonalize_gradients(eps: float = DEFAULT_EPS) -> optax.GradientTransformationExtraArgs:
  """⊥Grad (arXiv:2501.04697): per tensor, removes the gradient component along the weights.

  Args:
    eps: added to ⟨w, w⟩ and to ‖g⊥‖ (> 0; 1e-30 in the official code and pytorch-optimizer).

  Returns:
    A stateless `optax.GradientTransformationExtraArgs` whose `update` requires `params`.
  """
  _checks.check_positive("eps", eps)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "orthogonalize_gradients")
    return jax.tree.map(lambda g, w: orthogonalize_leaf(g, w, eps), updates, params), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


RECORD = registry.record(
    slug="perpgrad",
    kind="transform",
    title="Grokking at the Edge of Numerical Stability",
    reference="arXiv:2501.04697",
    experiment="perpgrad_weight_norm",
    pytorch_optimizer={"jaxlearn.optim.orthogonalize_gradients": "OrthoGrad"},
    notes=(
        "Same rule and eps (1e-30) as the official orthograd.py and pytorch-optimizer "
        "OrthoGrad (parity test), per tensor on every leaf; projection and norms in float32 or "
        "wider (the references use the parameter dtype, float32 unless float64). Chain it "
        "before the base optimizer. A gradient exactly parallel to w leaves only rounding "
        "noise, which the rule (like both references) rescales to ||g||. StableMax is "
        "jaxlearn.losses.stablemax_cross_entropy (its own record)."
    ),
)
