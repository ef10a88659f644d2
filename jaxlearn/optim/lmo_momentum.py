r"""Non-Euclidean trust-region gradient method with momentum: Muon, normalized and sign SGD-M.

Kovalev, "Understanding Gradient Orthogonalization for Deep Learning via Non-Euclidean
Trust-Region Optimization", arXiv:2503.12645 (2025). No official code.

A step of length η in a norm :math:`\lVert\cdot\rVert` that decreases the linear model of the
loss most is the trust-region step :math:`x - \eta\, d(m)` with
:math:`d(m) = \arg\max_{\lVert u \rVert \le 1} \langle m, u \rangle` (minus the linear
minimization oracle, LMO, of the unit ball). With momentum:

.. math::

   m_t &= (1 - \alpha)\, m_{t-1} + \alpha\, g_t \quad (m_1 = g_1), \\
   x_t &= (1 - \eta\lambda)\, x_{t-1} - \eta\, d(m_t),

and the norm picks the method (`norm=`):

============== ================================================== ==============================
norm           :math:`d(m)`                                       method
============== ================================================== ==============================
``"spectral"`` :math:`U V^\top` of :math:`m = U \Sigma V^\top`    Muon (Newton-Schulz, 5 steps)
``"l2"``       :math:`m / \lVert m \rVert_2`, over the whole tree normalized SGD with momentum
``"linf"``     :math:`\mathrm{sign}(m)`                           signSGD with momentum (Signum)
============== ================================================== ==============================

The paper explains why Muon (momentum, then orthogonalize) beats Orthogonal-SGDM (Tuddenham et
al., 2022: orthogonalize each gradient, then momentum), ``order="orthogonalize_first"``:
:math:`m_t = (1 - \alpha) m_{t-1} + \alpha\, d(g_t)`, :math:`x_t = x_{t-1} - \eta\, m_t`.

**Not verified from the paper.** Only the abstract, the introduction and third-party
transcriptions were read: the momentum form and :math:`m_1 = g_1` (the first momentum is the
first gradient, as the paper's Lemma 3 and Theorem 2 assume, per F. L. Cesista's transcription
"Napkin Math on Non-Euclidean Trust Region Optimization", 2025; the same form is Algorithm 3 of
Xie, Wang, Wu and Li, "A Tale of Two Geometries", 2025), the weight-decay form (decoupled, "a
shift of the trust-region centre" per the paper's OpenReview reviews) and the constrained form below
are what those sources describe, not read from the paper. The extrapolation variant (per the
reviews, the paper's Algorithm 3) is not implemented.

Choices:

* **Product norm.** ``"spectral"`` acts per matrix (the max over layers of spectral norms, as
  Muon); ``"l2"`` normalizes by the norm of the whole tree (the Euclidean norm of all parameters,
  as Cutkosky and Mehta's normalized SGD and `optax.normalize_by_update_norm`), so the whole
  update has norm η; ``"linf"`` is separable, so both readings agree.
* **Leaves that are not matrices** with ``"spectral"``: the spectral norm of a vector (an
  ``n x 1`` matrix) is its Euclidean norm, so they get :math:`m / \lVert m \rVert_2` per leaf,
  in the same optimizer; pass `fallback=` (e.g. `optax.adamw`, as Muon implementations do) to
  give them another optimizer.
* **Constrained variant** (`radius` ρ): the conditional-gradient (Frank-Wolfe) step over the ball
  of radius ρ, :math:`x_t = (1 - \eta) x_{t-1} - \eta\rho\, d(m_t)`, as pytorch-optimizer's
  `SCION` with ``constraint=True``; from inside the ball (and η <= 1) the iterates stay inside.
  It equals the decay form with λ = 1/ρ and learning rate ηρ.
* Newton-Schulz uses Muon's coefficients (`jaxlearn.optim.matrix.newton_schulz`), whose singular
  values land in about [0.7, 1.2], not exactly 1; Orthogonal-SGDM used an SVD.

Compared with `optax.contrib.scale_by_muon`: its momentum is bias-corrected and starts from zero
(its first direction equals ours; the next ones weigh the first gradient by α less), it is
Nesterov by default, and `optax.contrib.muon` scales by :math:`\sqrt{\max(1, n/m)}`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import _checks, registry
from jaxlearn.optim import _common, matrix

__all__ = [
    "lmo_momentum",
    "scale_by_lmo_momentum",
    "ScaleByLMOMomentumState",
]

NORMS = ("spectral", "l2", "linf")
ORDERS = ("momentum_first", "orthogonalize_first")


class ScaleByLMOMomentumState(NamedTuple):
  """State of `scale_by_lmo_momentum`.

  Attributes:
    count: number of updates so far (int32); the first update sets the momentum.
    momentum: :math:`m_t`, like the parameters (float32 or wider).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_lmo_momentum
    >>> state = scale_by_lmo_momentum().init({"w": jnp.ones((3, 2), jnp.bfloat16)})
    >>> state.momentum["w"].dtype
    dtype('float32')
  """

  count: jax.Array
  momentum: optax.Updates


def _unit_l2(x: jax.Array, norm: jax.Array) -> jax.Array:
  return jnp.where(norm > 0, x / jnp.where(norm > 0, norm, 1.0), 0.0)


def _dual_directions(tree, specs, norm: str, ns_steps: int):
  r""":math:`d(m) = \arg\max_{\lVert u \rVert \le 1} \langle m, u \rangle` for every leaf."""
  leaves, treedef = jax.tree.flatten(tree)
  if norm == "linf":
    out = [jnp.sign(x) for x in leaves]
  elif norm == "l2":  # one norm over the whole tree
    total = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))
    out = [_unit_l2(x, total) for x in leaves]
  else:
    out = []
    for x, spec in zip(leaves, specs):
      if spec is None:  # a vector's spectral norm is its Euclidean norm
        out.append(_unit_l2(x, jnp.linalg.norm(x)))
      else:
        # On a replicated copy: Newton-Schulz contracts over axes a mesh may shard.
        stacked = matrix.newton_schulz(matrix.to_matrices(matrix.replicated(x), spec),
                                       steps=ns_steps)
        out.append(matrix.sharded_like(matrix.from_matrices(stacked, spec, x.shape), x))
  return jax.tree.unflatten(treedef, out)


def scale_by_lmo_momentum(
    alpha: float = 0.05,
    *,
    norm: str = "spectral",
    order: str = "momentum_first",
    ns_steps: int = 5,
    dimension_numbers: matrix.DimensionNumbers = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The trust-region direction :math:`d(m_t)` of the momentum (see the module docstring).

  .. math::

     \text{momentum\_first:}\ m_t = (1 - \alpha) m_{t-1} + \alpha g_t,\ u_t = d(m_t); \qquad
     \text{orthogonalize\_first:}\ m_t = (1 - \alpha) m_{t-1} + \alpha\, d(g_t),\ u_t = m_t,

  with :math:`m_1 = g_1` (or :math:`d(g_1)`). `lmo_momentum` multiplies :math:`u_t` by -η.

  Args:
    alpha: α, the weight of the new gradient, in (0, 1] (1 - Muon's β; default 0.05, Muon's
      β = 0.95).
    norm: ``"spectral"``, ``"l2"`` or ``"linf"`` (static).
    order: ``"momentum_first"`` (the paper's method) or ``"orthogonalize_first"``
      (Orthogonal-SGDM) (static).
    ns_steps: Newton-Schulz steps for ``"spectral"`` (static), >= 1.
    dimension_numbers: which leaves are matrices, for ``"spectral"`` (`jaxlearn.optim.matrix`);
      None: the flax defaults.

  Returns:
    A `GradientTransformationExtraArgs`; its state is a `ScaleByLMOMomentumState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_lmo_momentum
    >>> opt = scale_by_lmo_momentum(norm="linf")
    >>> u, state = opt.update(jnp.array([0.3, -2.0, 0.0]), opt.init(jnp.zeros(3)))
    >>> print(u)
    [ 1. -1.  0.]

  References:
    Kovalev, `Understanding Gradient Orthogonalization for Deep Learning via Non-Euclidean
    Trust-Region Optimization <https://arxiv.org/abs/2503.12645>`_, 2025.
  """
  _checks.check_range("alpha", alpha, 0.0, 1.0, low_inclusive=False)
  _checks.check_choice("norm", norm, NORMS)
  _checks.check_choice("order", order, ORDERS)
  _checks.check_positive_int("ns_steps", ns_steps)
  if norm != "spectral" and dimension_numbers is not None:
    raise ValueError(f'dimension_numbers applies to norm="spectral" only, got norm={norm!r}')

  def init_fn(params):
    if norm == "spectral":
      matrix.leaf_dimension_numbers(params, dimension_numbers)  # a spec that does not fit raises
    return ScaleByLMOMomentumState(jnp.zeros([], jnp.int32), _common.state_zeros(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    specs = (matrix.leaf_dimension_numbers(updates, dimension_numbers)
             if norm == "spectral" else None)
    wide = jax.tree.map(lambda g, m: g.astype(m.dtype), updates, state.momentum)
    if order == "orthogonalize_first":
      wide = _dual_directions(wide, specs, norm, ns_steps)
    weight = jnp.where(state.count == 0, 1.0, alpha)  # m_1 = g_1
    momentum = jax.tree.map(lambda m, g: (1.0 - weight) * m + weight * g, state.momentum, wide)
    momentum = jax.tree.map(lambda m, old: m.astype(old.dtype), momentum, state.momentum)
    direction = (momentum if order == "orthogonalize_first"
                 else _dual_directions(momentum, specs, norm, ns_steps))
    direction = jax.tree.map(lambda d, g: d.astype(g.dtype), direction, updates)
    return direction, ScaleByLMOMomentumState(numerics.safe_increment(state.count), momentum)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lmo_momentum(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    alpha: float = 0.05,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    radius: float | None = None,
    *,
    norm: str = "spectral",
    order: str = "momentum_first",
    ns_steps: int = 5,
    fallback: optax.GradientTransformation | None = None,
    dimension_numbers: matrix.DimensionNumbers = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Momentum, then a trust-region step of length η in the norm `norm` (Muon for ``"spectral"``).

  .. math::

     x_t = (1 - \eta\lambda)\, x_{t-1} - \eta\, d(m_t) \qquad \text{or, with a radius } \rho,
     \qquad x_t = (1 - \eta)\, x_{t-1} - \eta\rho\, d(m_t),

  with :math:`m_t, d` as in `scale_by_lmo_momentum`; the decay is decoupled and multiplied by the
  learning rate (the first form is `jaxlearn.optim._common.alias`).

  Args:
    learning_rate: η, a number or a schedule, >= 0 (the radius of the trust region; with
      `radius`, the conditional-gradient step size, at most 1).
    alpha: α, the weight of the new gradient in the momentum, in (0, 1].
    weight_decay: λ, >= 0, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay (nor,
      with `radius`, shrinkage).
    radius: ρ > 0 for the constrained (conditional-gradient) variant, or None; not together
      with `weight_decay`.
    norm: ``"spectral"``, ``"l2"`` or ``"linf"`` (static).
    order: ``"momentum_first"`` or ``"orthogonalize_first"`` (static).
    ns_steps: Newton-Schulz steps for ``"spectral"`` (static).
    fallback: with ``"spectral"``, an optimizer for the leaves that are not matrices, through
      `optax.partition`: an optax transformation (with its own learning rate) or a callable
      ``learning_rate -> transformation`` (`jaxlearn.optim.matrix.fallback_optimizer`); None:
      the per-leaf ℓ2 step in this optimizer.
    dimension_numbers: which leaves are matrices, with ``"spectral"``; None: flax defaults.

  Returns:
    A `GradientTransformationExtraArgs` whose `update` needs `params`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import lmo_momentum
    >>> params = {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}
    >>> opt = lmo_momentum(0.1, weight_decay=0.01)
    >>> grads = {"kernel": jnp.outer(jnp.arange(4.0), jnp.ones(3)), "bias": jnp.ones(3)}
    >>> updates, state = opt.update(grads, opt.init(params), params)
    >>> round(float(jnp.linalg.norm(updates["bias"])), 4)  # a step of length 0.1
    0.1
  """
  scale = scale_by_lmo_momentum(alpha, norm=norm, order=order, ns_steps=ns_steps,
                                dimension_numbers=dimension_numbers)
  if fallback is not None and norm != "spectral":
    raise ValueError(f'fallback applies to norm="spectral" only, got norm={norm!r}')
  if radius is None:
    rule = _common.alias(scale, learning_rate, weight_decay, weight_decay_mask)
  else:
    _checks.check_positive("radius", radius)
    _checks.check_range("learning_rate", learning_rate, 0.0, 1.0)
    if _checks.concrete_float(weight_decay) not in (None, 0.0):
      raise ValueError("radius and weight_decay exclude each other: the constrained step "
                       f"already shrinks the weights, got weight_decay={weight_decay!r}")
    # x <- x - lr (rho d + x) = (1 - lr) x - lr rho d
    rule = optax.chain(scale, optax.scale(radius), _common.decayed_weights(1.0, weight_decay_mask),
                       _common.learning_rate_step(learning_rate))
  if fallback is None:
    return rule
  other = matrix.fallback_optimizer(fallback, learning_rate, default=None)
  return matrix.partition_matrices(rule, other, dimension_numbers)


RECORD = registry.record(
    slug="non_euclidean_trust_region_momentum",
    kind="optimizer",
    title=("Understanding Gradient Orthogonalization for Deep Learning via Non-Euclidean "
           "Trust-Region Optimization"),
    reference="arXiv:2503.12645",
    experiment="lmo_momentum_vs_orthogonal_sgdm",
    pytorch_optimizer={"jaxlearn.optim.lmo_momentum": "SCION"},
    notes=(
        "Not verified from the paper (only its abstract and introduction, and third-party "
        "transcriptions, were read): the momentum m_t = (1 - alpha) m_{t-1} + alpha g_t with "
        "m_1 = g_1 (the first gradient, as the paper's Lemma 3 assumes), the decoupled decay "
        "x <- (1 - lr wd) x - lr d(m) and the constrained (conditional-gradient, SCION "
        "constraint=True) form x <- (1 - lr) x - lr radius d(m); the extrapolation variant is "
        "not implemented. norm='l2' normalizes over the whole tree (normalized SGD-M), "
        "'spectral' per matrix (Muon) with the vector l2 step on non-matrix leaves unless "
        "fallback= is given. order='orthogonalize_first' is Orthogonal-SGDM (Tuddenham et al. "
        "2022) in EMA form (lr_torch = lr alpha), with Newton-Schulz instead of their SVD. "
        "optax.contrib.scale_by_muon starts its bias-corrected momentum at 0 (same first "
        "direction, later ones differ; tested); SCION scales its LMOs by dimension factors "
        "(undone in the parity test) and starts at 0 too."
    ),
)
