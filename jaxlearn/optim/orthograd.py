r"""⊥Grad (OrthoGrad): keep only the part of the gradient orthogonal to the weights.

Paper: Prieto, Barsbey, Mediano and Birdal, "Grokking at the Edge of Numerical Stability",
arXiv:2501.04697. Official code: LucasPrietoAl/grokking-at-the-edge-of-numerical-stability
(`orthograd.py`); pytorch-optimizer ships the official rule as `OrthoGrad`.

Without regularization, once a classifier fits its training set the cheapest way to lower the loss
is to scale the weights up (the "naive loss minimization" direction, which for a homogeneous model
is the weights themselves). ⊥Grad removes that direction from the gradient. Two forms exist:

- **The paper's equation** (Definition 7, Eq. 11-12): θ and g are the WHOLE parameter vector and
  its gradient, and the step uses the projection as it is,

  .. math::

    \nabla_\perp L(\theta) = \nabla L(\theta)
      - \frac{\theta^\top \nabla L(\theta)}{\theta^\top \theta}\, \theta, \qquad
    \theta_{t+1} = \theta_t - \eta\, \nabla_\perp L(\theta_t).

  `orthogonalize_gradients(per_tensor=False, rescale=False)`.
- **The official code** (which produced the paper's experiments, and pytorch-optimizer): each
  parameter tensor `w` with gradient `g` (both flattened) separately, rescaled to the norm of `g`:

  .. math::

    g_\perp = g - \frac{\langle w, g \rangle}{\langle w, w \rangle + \varepsilon}\, w, \qquad
    \tilde g = g_\perp \frac{\lVert g \rVert}{\lVert g_\perp \rVert + \varepsilon}.

  `orthogonalize_gradients()`, the default (see its docstring for why).

`per_tensor` and `rescale` choose each axis independently. ε = 1e-30 as in both reference codes
(for the paper's form it only guards zero weights). A gradient parallel to the weights (g = c w)
has no orthogonal part: after the projection only rounding noise of order ‖g‖ times the machine
epsilon is left, which the official code rescales to ‖g‖, a full-size random step. Here an
orthogonal part with ‖g⊥‖ <= τ ‖g‖ counts as zero (the output is 0; τ = `parallel_rtol`, by default
4 times the machine epsilon of the less precise of the gradient's and the weights' dtypes:
4.8e-7 for float32, the threshold pytorch-optimizer uses, and 3.1e-2 for bfloat16, whose own
rounding leaves a larger orthogonal part). The projection and norms are computed in at least
float32 (ε = 1e-30 would underflow to 0 in float16); the output keeps the gradient's dtype. For a
zero gradient the output is zero; for zero weights nothing is removed.

The base optimizer (AdamW in the paper) steps with the result: use it first in a chain, e.g.
`optax.chain(orthogonalize_gradients(), optax.adamw(1e-2, b2=0.99, weight_decay=0.0))`.
"""

from __future__ import annotations

from typing import Sequence

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


def _parallel_rtol(parallel_rtol, arrays: Sequence[jax.Array]) -> float:
  """τ: the given one, or 4 machine epsilons of the least precise input dtype."""
  if parallel_rtol is not None:
    return parallel_rtol
  return 4.0 * max(float(jnp.finfo(x.dtype).eps) for x in arrays)


def _orthogonalize(grads, weights, eps, rescale, parallel_rtol):
  """⊥Grad of the one vector made of all `grads` leaves against the one made of all `weights`."""
  rtol = _parallel_rtol(parallel_rtol, [*grads, *weights])
  dtype = _common.wide_dtype(jnp.result_type(*grads, *weights))
  g = [x.astype(dtype) for x in grads]
  w = [x.astype(dtype) for x in weights]
  total = lambda terms: sum(jnp.real(t) for t in terms)
  coefficient = total(map(jnp.vdot, w, g)) / (total(jnp.vdot(x, x) for x in w) + eps)
  orthogonal = [gi - coefficient * wi for gi, wi in zip(g, w)]
  g_norm = jnp.sqrt(total(jnp.vdot(x, x) for x in g))
  orthogonal_norm = jnp.sqrt(total(jnp.vdot(x, x) for x in orthogonal))
  scale = g_norm / (orthogonal_norm + eps) if rescale else jnp.ones([], dtype)
  # A gradient parallel to w leaves rounding noise only: no orthogonal direction, no step.
  scale = jnp.where(orthogonal_norm <= rtol * g_norm, 0.0, scale)
  return [(o * scale).astype(x.dtype) for o, x in zip(orthogonal, grads)]


def _check_options(per_tensor, rescale, parallel_rtol) -> None:
  _checks.check_bool("per_tensor", per_tensor)
  _checks.check_bool("rescale", rescale)
  if parallel_rtol is not None:
    _checks.check_range("parallel_rtol", parallel_rtol, 0.0, 1.0, high_inclusive=False)


def orthogonalize_leaf(
    grad: jax.Array,
    weight: jax.Array,
    eps=DEFAULT_EPS,
    *,
    rescale: bool = True,
    parallel_rtol: float | None = None,
) -> jax.Array:
  """⊥Grad of one tensor: `grad` minus its projection on `weight`, rescaled to ‖grad‖ by default.

  Args:
    grad: the gradient g of one tensor.
    weight: the tensor w, same shape.
    eps: added to ⟨w, w⟩ and to ‖g⊥‖.
    rescale: multiply g⊥ by ‖g‖ / (‖g⊥‖ + eps) (official code); False: the projection as is.
    parallel_rtol: τ; 0 is returned when ‖g⊥‖ <= τ ‖g‖. None: 4 machine epsilons of the less
      precise of the two dtypes.

  Returns:
    The result, shaped and typed like `grad`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import orthogonalize_leaf
    >>> print(orthogonalize_leaf(jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0])))
    [0.        1.414...]
  """
  _check_options(True, rescale, parallel_rtol)
  return _orthogonalize([grad], [weight], eps, rescale, parallel_rtol)[0]


def orthogonalize_gradients(
    eps: float = DEFAULT_EPS,
    *,
    per_tensor: bool = True,
    rescale: bool = True,
    parallel_rtol: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""⊥Grad (arXiv:2501.04697): removes the gradient component along the weights.

  The default is the official code's rule, per tensor and rescaled to each tensor's gradient norm
  (module docstring): it produced the paper's experiments, and pytorch-optimizer's `OrthoGrad`
  matches it. `per_tensor=False, rescale=False` is the paper's Eq. (11)-(12) exactly: one
  projection of the whole parameter vector (every leaf this transform sees; under `optax.masked`,
  the masked leaves), no rescaling.

  Args:
    eps: added to ⟨w, w⟩ and to ‖g⊥‖ (> 0; 1e-30 in the official code and pytorch-optimizer).
    per_tensor: project each leaf on its own weights (official code); False: the whole vector.
    rescale: rescale g⊥ to the norm of g (per leaf, or of the whole vector); False: as is.
    parallel_rtol: τ in [0, 1): the result is 0 where ‖g⊥‖ <= τ ‖g‖ (a gradient parallel to the
      weights, up to rounding). None: 4 machine epsilons of the less precise of the gradient's and
      the weights' dtypes.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs` whose `update` requires `params`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import orthogonalize_gradients
    >>> params = {"w": jnp.array([1.0, 0.0])}
    >>> opt = optax.chain(orthogonalize_gradients(), optax.sgd(0.1))
    >>> updates, _ = opt.update({"w": jnp.array([1.0, 1.0])}, opt.init(params), params)
    >>> print(updates["w"][1])  # no component along w; rescaled to the gradient's norm
    -0.1414...
  """
  _checks.check_positive("eps", eps)
  _check_options(per_tensor, rescale, parallel_rtol)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "orthogonalize_gradients", updates=updates)
    if per_tensor:
      project = lambda g, w: _orthogonalize([g], [w], eps, rescale, parallel_rtol)[0]
      return jax.tree.map(project, updates, params), state
    leaves, treedef = jax.tree.flatten(updates)
    if not leaves:
      return updates, state
    weights = treedef.flatten_up_to(params)
    projected = _orthogonalize(leaves, weights, eps, rescale, parallel_rtol)
    return jax.tree.unflatten(treedef, projected), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


RECORD = registry.record(
    slug="perpgrad",
    kind="transform",
    title="Grokking at the Edge of Numerical Stability",
    reference="arXiv:2501.04697",
    experiment="perpgrad_weight_norm",
    pytorch_optimizer={"jaxlearn.optim.orthogonalize_gradients": "OrthoGrad"},
    notes=(
        "Two forms. The paper's Eq. (11)-(12) (Def. 7) projects the gradient of the WHOLE "
        "parameter vector onto the orthogonal complement of that vector and steps with it as "
        "is: per_tensor=False, rescale=False (NumPy-transcription test over SGD steps). The "
        "official orthograd.py, which produced the paper's experiments, and pytorch-optimizer "
        "OrthoGrad project each tensor separately and rescale to that tensor's gradient norm: "
        "the default per_tensor=True, rescale=True (parity test), chosen because it is what the "
        "paper's results were measured with, and it keeps existing runs unchanged. Both axes "
        "are independent keyword-only options. eps = 1e-30 as both references. A gradient "
        "parallel to w leaves only rounding noise after the projection, which the official "
        "code rescales to ||g|| (a full-size random step): here the result is 0 when ||g_perp|| "
        "<= parallel_rtol * ||g|| (default 4 machine epsilons of the less precise input dtype, "
        "pytorch-optimizer's threshold for float32; pytorch-optimizer also gives 0). Projection "
        "and norms in float32 or wider (the references use the parameter dtype, float32 unless "
        "float64). Chain it before the base optimizer. StableMax is "
        "jaxlearn.losses.stablemax_cross_entropy (its own record)."
    ),
)
