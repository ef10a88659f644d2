r"""Gradient regularization (GR) by finite differences (F-GR, B-GR) or double backpropagation.

Paper: Ryo Karakida, Tomoumi Takase, Tomohiro Hayase and Kazuki Osawa, "Understanding Gradient
Regularization in Deep Learning: Efficient Finite-Difference Computation and Implicit Bias",
ICML 2023, arXiv:2210.02720. No official code was found.

GR trains on the penalised loss

.. math::

   \tilde L(\theta) = L(\theta) + \frac{\gamma}{2}\,\lVert\nabla L(\theta)\rVert^2,
   \qquad
   \nabla\tilde L(\theta) = \nabla L(\theta) + \gamma\,H(\theta)\,\nabla L(\theta),

with :math:`H` the Hessian of :math:`L`. The Hessian-gradient product is a directional derivative
of the gradient along :math:`g = \nabla L(\theta)`, which a finite difference with step
:math:`\varepsilon` approximates by one extra gradient: an ascent step then a descent step
(forward, F-GR) or a descent step (backward, B-GR),

.. math::

   \text{F-GR:}\quad \nabla\tilde L \approx \Bigl(1 - \frac{\gamma}{\varepsilon}\Bigr) g
     + \frac{\gamma}{\varepsilon}\,\nabla L(\theta + \varepsilon g), \qquad
   \text{B-GR:}\quad \nabla\tilde L \approx \Bigl(1 + \frac{\gamma}{\varepsilon}\Bigr) g
     - \frac{\gamma}{\varepsilon}\,\nabla L(\theta - \varepsilon g),

each with an :math:`O(\varepsilon)` error. Double backpropagation (DB-GR, `method="exact"`) computes
:math:`H g` exactly; here as a forward-over-reverse Jacobian-vector product of the gradient
(`jax.jvp` of `jax.grad`), which equals `jax.grad` of the penalised loss. With
:math:`\gamma = \varepsilon` F-GR is the gradient at the ascended point alone,
:math:`\nabla L(\theta + \varepsilon g)`: SAM's gradient without SAM's normalisation of the ascent.

The equations above are derived from the stated objective; they were not compared with code of the
authors (none was found). Whether the paper's experiments normalise the ascent step by
:math:`\lVert g\rVert` (as SAM does) was not verified: `normalize_ascent=True` takes the step
:math:`h = \varepsilon / \lVert g\rVert` instead of :math:`\varepsilon` and uses :math:`\gamma / h`
as the coefficient, which still approximates the same :math:`\nabla\tilde L`; the default is False.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks, registry
from jaxlearn.train.step import (
    TrainingStep,
    TrainState,
    check_update_extras,
    apply_guarded,
    update_with_extras,
)

__all__ = ["finite_difference_grad_reg", "gradient_regularized_grad"]

PyTree = Any
METHODS = ("forward", "backward", "exact")


def _check_method(method: str, normalize_ascent: bool) -> None:
  _checks.check_choice("method", method, METHODS)
  _checks.check_bool("normalize_ascent", normalize_ascent)
  if method == "exact" and normalize_ascent:
    raise ValueError(
        "normalize_ascent applies to method='forward' or 'backward' only; method='exact' has no "
        "ascent step"
    )


def _axpy(a: jax.Array, x: PyTree, y: PyTree) -> PyTree:
  """`y + a x` leafwise, computed in at least float32 and returned in `y`'s dtypes."""
  def one(xi, yi):
    dtype = jnp.promote_types(yi.dtype, jnp.float32)
    return (yi.astype(dtype) + a.astype(dtype) * xi.astype(dtype)).astype(yi.dtype)
  return jax.tree.map(one, x, y)


def gradient_regularized_grad(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    *batch: Any,
    gamma: float | jax.Array,
    epsilon: float | jax.Array | None = None,
    method: str = "forward",
    normalize_ascent: bool = False,
) -> tuple[jax.Array, PyTree, PyTree]:
  r"""The gradient of :math:`L + (\gamma/2)\lVert\nabla L\rVert^2` by F-GR, B-GR or exactly.

  .. math::

     \text{forward:}\ (1 - \gamma/h)\,g + (\gamma/h)\,\nabla L(\theta + h g), \quad
     \text{backward:}\ (1 + \gamma/h)\,g - (\gamma/h)\,\nabla L(\theta - h g), \quad
     \text{exact:}\ g + \gamma\,H g,

  with :math:`g = \nabla L(\theta)` and :math:`h = \varepsilon` (or
  :math:`\varepsilon / \lVert g\rVert` with `normalize_ascent`; a zero gradient then takes no step).

  Args:
    loss_fn: `loss_fn(params, *batch) -> scalar`.
    params: the parameters (a pytree).
    *batch: the loss's further arguments.
    gamma: the penalty coefficient :math:`\gamma \ge 0` (traceable).
    epsilon: the finite-difference step :math:`\varepsilon > 0` (traceable); required for
      'forward' and 'backward', unused (None) for 'exact'.
    method: 'forward' (F-GR, the paper's recommendation), 'backward' (B-GR) or 'exact' (DB-GR,
      a Hessian-vector product). Static.
    normalize_ascent: divide the step by :math:`\lVert g\rVert` (see the module docstring; not
      verified against the paper). Static.

  Returns:
    `(value, grad, regularized_grad)`: :math:`L(\theta)`, :math:`g` and the gradient of the
    penalised loss, in the parameters' dtypes.

  References:
    Karakida, Takase, Hayase and Osawa, "Understanding Gradient Regularization in Deep Learning:
    Efficient Finite-Difference Computation and Implicit Bias"
    (https://arxiv.org/abs/2210.02720), ICML 2023.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.train import gradient_regularized_grad
    >>> loss_fn = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 3.0]) * p ** 2)  # H = diag(1, 3)
    >>> value, g, reg = gradient_regularized_grad(loss_fn, jnp.ones(2), gamma=0.1, method="exact")
    >>> reg  # g + gamma H g = (1 + 0.1, 3 + 0.1 * 9)
    Array([1.1, 3.9], dtype=float32)
  """
  _check_method(method, normalize_ascent)
  _checks.check_non_negative("gamma", gamma)
  if method == "exact":
    if epsilon is not None:
      raise ValueError("epsilon must be None for method='exact' (it has no finite difference)")
  else:
    _checks.check_positive("epsilon", epsilon)

  grad_fn = jax.grad(loss_fn)
  value, grads = jax.value_and_grad(loss_fn)(params, *batch)
  gamma = jnp.asarray(gamma, jnp.float32)
  if method == "exact":
    hvp = jax.jvp(lambda p: grad_fn(p, *batch), (params,), (grads,))[1]
    return value, grads, _axpy(gamma, hvp, grads)

  step = jnp.asarray(epsilon, jnp.float32)
  if normalize_ascent:
    norm = optax.tree.norm(grads).astype(jnp.float32)
    step = jnp.where(norm > 0, step / jnp.where(norm > 0, norm, 1.0), 0.0)
  sign = 1.0 if method == "forward" else -1.0
  moved = grad_fn(_axpy(sign * step, grads, params), *batch)
  # coefficient gamma / h, with the zero-gradient case (h = 0) giving g itself (H g 0 = 0).
  ratio = jnp.where(step > 0, gamma / jnp.where(step > 0, step, 1.0), 0.0)

  def combine(g, m):
    dtype = jnp.promote_types(g.dtype, jnp.float32)
    g32, m32 = g.astype(dtype), m.astype(dtype)
    return (g32 + sign * ratio * (m32 - g32)).astype(g.dtype)

  return value, grads, jax.tree.map(combine, grads, moved)


def finite_difference_grad_reg(
    loss_fn: Callable[..., jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    gamma: float | jax.Array,
    epsilon: float | jax.Array | None = None,
    method: str = "forward",
    normalize_ascent: bool = False,
    update_extras: Sequence[str] = (),
) -> TrainingStep:
  r"""A training step on the gradient-regularized loss :math:`L + (\gamma/2)\lVert\nabla L\rVert^2`.

  Each step computes :math:`\nabla\tilde L` with `gradient_regularized_grad` (F-GR by default:
  two gradients, at :math:`\theta` and at :math:`\theta + \varepsilon\nabla L`; DB-GR with
  `method="exact"`) and hands it to `optimizer`.

  Args:
    loss_fn: `loss_fn(params, *batch) -> scalar`, the mean loss over the batch.
    optimizer: any optax transformation; `update` gets `value=` :math:`L(\theta)` (the
      unpenalised batch loss) and the extra arguments named in `update_extras`.
    gamma: the penalty coefficient, >= 0 (traceable: may be vmapped).
    epsilon: the finite-difference step, > 0 (traceable); None for `method="exact"`.
    method: 'forward' (F-GR), 'backward' (B-GR) or 'exact' (DB-GR). Static.
    normalize_ascent: divide the ascent step by the gradient norm (not verified against the
      paper; default False). Static.
    update_extras: names from `jaxlearn.optim.extra_args.EXTRA_ARG_NAMES` the optimizer needs.

  Returns:
    A `TrainingStep`; metrics 'loss' (:math:`L` at the incoming parameters), 'grad_norm'
    (:math:`\lVert\nabla L\rVert`), 'regularized_grad_norm' and 'skipped'.

  References:
    Karakida, Takase, Hayase and Osawa, "Understanding Gradient Regularization in Deep Learning:
    Efficient Finite-Difference Computation and Implicit Bias"
    (https://arxiv.org/abs/2210.02720), ICML 2023.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import finite_difference_grad_reg
    >>> def loss_fn(params, x, y):
    ...   return jnp.mean((x @ params - y) ** 2)
    >>> training = finite_difference_grad_reg(loss_fn, optax.sgd(0.1), gamma=0.05, epsilon=0.05)
    >>> state = training.init(jnp.zeros(3), jax.random.key(0))
    >>> batch = (jnp.eye(3), jnp.ones(3))
    >>> state, metrics = jax.jit(training.step)(state, batch, jax.random.key(1))
    >>> sorted(metrics)
    ['grad_norm', 'loss', 'regularized_grad_norm', 'skipped']
  """
  _check_method(method, normalize_ascent)
  _checks.check_non_negative("gamma", gamma)
  if method == "exact":
    if epsilon is not None:
      raise ValueError("epsilon must be None for method='exact' (it has no finite difference)")
  else:
    _checks.check_positive("epsilon", epsilon)
  names = check_update_extras(update_extras)

  def init(params, key):
    del key  # no randomness
    zero = jnp.zeros([], jnp.int32)
    return TrainState(params, optimizer.init(params), (), zero, zero)

  def step(state, batch, key):
    del key
    batch = tuple(batch)
    value, grads, regularized = gradient_regularized_grad(
        loss_fn, state.params, *batch, gamma=gamma, epsilon=epsilon, method=method,
        normalize_ascent=normalize_ascent,
    )
    updates, opt_state = update_with_extras(
        optimizer, names, loss_fn, regularized, state.opt_state, state.params, value, *batch
    )
    new, skipped = apply_guarded(state, updates, opt_state, value, grads, regularized)
    metrics = {
        "loss": jnp.asarray(value, jnp.float32),
        "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
        "regularized_grad_norm": optax.tree.norm(regularized).astype(jnp.float32),
        "skipped": skipped,
    }
    return new, metrics

  return TrainingStep(init, step)


RECORD = registry.record(
    slug="finite_difference_grad_reg",
    kind="training_step",
    title=(
        "Understanding Gradient Regularization in Deep Learning: Efficient Finite-Difference "
        "Computation and Implicit Bias"
    ),
    reference="arXiv:2210.02720",
    experiment="finite_difference_gr",
    notes=(
        "No official code was found; F-GR, B-GR and DB-GR are derived from the stated objective "
        "L + (gamma/2)|grad L|^2 (forward/backward differences of the gradient along grad L). "
        "DB-GR is computed as a forward-over-reverse Hessian-vector product (jvp of grad), which "
        "equals jax.grad of the penalised loss (tested); on XLA:CPU it measured slower than "
        "reverse-over-reverse for an MLP (bench_gradient_regularization), F-GR faster than both. "
        "Whether the paper's experiments normalise the ascent step by |grad L| (as SAM does) was "
        "not verified: normalize_ascent=True (step epsilon/|g|, coefficient gamma|g|/epsilon) is "
        "an option, default False. The optimizer receives value = the unpenalised loss."
    ),
)
