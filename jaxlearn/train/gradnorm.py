r"""GradNorm: task weights of a multitask loss tuned so that the tasks' gradients stay balanced.

Paper: Zhao Chen, Vijay Badrinarayanan, Chen-Yu Lee and Andrew Rabinovich, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018,
arXiv:1711.02257. There is no official code.

The network trains on :math:`L = \sum_i w_i(t) L_i(t)`. At the last shared layer's weights
:math:`W`, task :math:`i`'s weighted gradient norm and the relative inverse training rate are

.. math::

   G_i = \lVert\nabla_W\, w_i L_i\rVert_2, \quad \bar G = \frac1T\sum_i G_i, \quad
   \tilde L_i = \frac{L_i(t)}{L_i(0)}, \quad r_i = \frac{\tilde L_i}{\frac1T\sum_j \tilde L_j},

and the weights alone descend the GradNorm loss, whose targets are held constant,

.. math::

   L_\text{grad} = \sum_i \bigl|\, G_i - \operatorname{sg}\bigl(\bar G\, r_i^{\alpha}\bigr) \bigr|,
   \qquad \frac{\partial L_\text{grad}}{\partial w_i}
     = \operatorname{sign}\bigl(w_i g_i - \operatorname{sg}(\bar G r_i^\alpha)\bigr)\, g_i
   \quad (w_i > 0,\ g_i = \lVert\nabla_W L_i\rVert),

with their own optimizer, after which they are renormalised to :math:`\sum_i w_i = T`. A task
that trains slowly (:math:`r_i > 1`) gets a larger gradient target; :math:`\alpha = 0` asks for
equal gradient norms. The network's update uses :math:`w(t)`, the weights before their update.

Differences from popular code: `gradnorm-pytorch` (>= 0.1.1) raises :math:`r_i` to :math:`-\alpha`,
inverting the paper's exponent, takes the *mean* absolute deviation (a factor :math:`1/T`) and also
back-propagates :math:`L_\text{grad}` into the network; it agrees with this module only at
:math:`\alpha = 0` with its learning rate divided by :math:`T` (tested). Not verified: the paper's
toy :math:`\alpha` and whether the weights share the network's learning rate (here they have their
own optimizer, which the user chooses). :math:`L_i(0)` is the loss of the first step that was not
skipped. Weights are not clipped at 0: a weight optimizer with too large a step can make one
negative, as in the paper's update (`experiments/gradnorm_multitask.py`: Adam at 0.025 drives the
large-scale task's weight, which should settle near 0.06, below zero; at 1e-3 it settles).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks, registry
from jaxlearn.train.step import (
    TrainingStep,
    TrainState,
    apply_guarded,
    check_update_extras,
    update_with_extras,
)

__all__ = ["gradnorm", "gradnorm_loss", "GradNormState"]

PyTree = Any


class GradNormState(NamedTuple):
  """GradNorm's `method_state`.

  Attributes:
    weights: the task weights :math:`w_i`, float32 of shape (T,), summing to T.
    initial_losses: :math:`L_i(0)`, float32 (T,); valid once `has_initial_losses`.
    has_initial_losses: bool scalar, False until the first step that is not skipped.
    weight_opt_state: the weights' optimizer state.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import gradnorm
    >>> training = gradnorm(lambda p, x: jnp.stack([jnp.sum(x @ p), jnp.sum(x)]),
    ...                     optax.sgd(0.1), optax.sgd(0.01), num_tasks=2,
    ...                     shared_params=lambda p: p)
    >>> training.init(jnp.ones(3), jax.random.key(0)).method_state.weights
    Array([1., 1.], dtype=float32)
  """

  weights: jax.Array
  initial_losses: jax.Array
  has_initial_losses: jax.Array
  weight_opt_state: optax.OptState


def gradnorm_loss(
    weights: jax.Array,
    task_grad_norms: jax.Array,
    loss_ratios: jax.Array,
    alpha: float | jax.Array,
) -> jax.Array:
  r"""The GradNorm loss :math:`\sum_i |G_i - \operatorname{sg}(\bar G r_i^\alpha)|`.

  .. math::

     G_i = |w_i|\, g_i, \qquad
     r_i = \frac{\tilde L_i}{\frac1T \sum_j \tilde L_j}

  Args:
    weights: :math:`w`, shape (T,).
    task_grad_norms: :math:`g_i = \lVert\nabla_W L_i\rVert` of the unweighted task losses at
      the last shared layer, shape (T,).
    loss_ratios: :math:`\tilde L_i = L_i(t) / L_i(0)`, shape (T,), positive.
    alpha: the asymmetry :math:`\alpha \ge 0` (traceable).

  Returns:
    The float32 scalar :math:`L_\text{grad}`; its gradient in `weights` is GradNorm's.

  References:
    Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for Adaptive
    Loss Balancing in Deep Multitask Networks" (https://arxiv.org/abs/1711.02257), ICML 2018.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.train import gradnorm_loss
    >>> w, g, ratios = jnp.array([1.0, 1.0]), jnp.array([1.0, 3.0]), jnp.array([1.0, 1.0])
    >>> gradnorm_loss(w, g, ratios, 1.5)  # targets: mean G = 2 for both
    Array(2., dtype=float32)
    >>> jax.grad(gradnorm_loss)(w, g, ratios, 1.5)  # sign(G_i - 2) g_i
    Array([-1.,  3.], dtype=float32)
  """
  _checks.check_non_negative("alpha", alpha)
  w = jnp.asarray(weights, jnp.float32)
  g = jnp.asarray(task_grad_norms, jnp.float32)
  ratios = jnp.asarray(loss_ratios, jnp.float32)
  big_g = jnp.abs(w) * g
  relative_rate = ratios / jnp.mean(ratios)
  target = jax.lax.stop_gradient(jnp.mean(big_g) * relative_rate ** jnp.asarray(alpha, jnp.float32))
  return jnp.sum(jnp.abs(big_g - target))


def _tree_row_norms(tree: PyTree) -> jax.Array:
  """Per-row Euclidean norms over every leaf of a tree whose leaves have a leading task axis."""
  squares = [
      jnp.sum(jnp.reshape(jnp.asarray(leaf, jnp.float32) ** 2, (leaf.shape[0], -1)), axis=1)
      for leaf in jax.tree.leaves(tree)
  ]
  return jnp.sqrt(sum(squares))


def gradnorm(
    task_losses_fn: Callable[..., jax.Array],
    optimizer: optax.GradientTransformation,
    weight_optimizer: optax.GradientTransformation,
    *,
    num_tasks: int,
    shared_params: Callable[[PyTree], PyTree],
    alpha: float | jax.Array = 1.5,
    update_extras: Sequence[str] = (),
) -> TrainingStep:
  r"""A multitask training step with GradNorm's adaptive task weights.

  Per step: the task losses :math:`L_i` and, from one forward pass, the gradient of
  :math:`\sum_i w_i L_i` (for the network) and each task's gradient at the last shared layer
  (:math:`T` vector-Jacobian products of the same forward pass; under `jit` XLA drops the parts
  below the shared layer that nothing uses); then the network's update with `optimizer` and the
  weights' update on :math:`\nabla_w L_\text{grad}` (`gradnorm_loss`) with `weight_optimizer`,
  followed by the renormalisation :math:`w \leftarrow T w / \sum_i w_i`.

  Args:
    task_losses_fn: `task_losses_fn(params, *batch) -> (T,)` the task losses (means over the
      batch).
    optimizer: the network's optax optimizer; `update` gets `value=` :math:`\sum_i w_i L_i`.
    weight_optimizer: the task weights' own optax optimizer (e.g. `optax.sgd(0.025)` or
      `optax.adam(...)`).
    num_tasks: T >= 2 (static: it fixes the weights' shape).
    shared_params: selects the last shared layer's weights :math:`W` from a parameter tree, e.g.
      `lambda p: p["trunk"]["w2"]`; applied to per-task gradient trees, it must only index.
    alpha: the asymmetry :math:`\alpha \ge 0` (traceable; the paper uses 1.5 on NYUv2).
    update_extras: names from `jaxlearn.optim.extra_args.EXTRA_ARG_NAMES` the network's
      optimizer needs (built from :math:`\sum_i w_i L_i`).

  Returns:
    A `TrainingStep` whose `method_state` is a `GradNormState`; metrics 'loss'
    (:math:`\sum_i w_i L_i` at the incoming parameters and weights), 'task_losses', 'weights'
    (those used in this step), 'task_grad_norms' (:math:`G_i`), 'gradnorm_loss' and 'skipped'.

  References:
    Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for Adaptive
    Loss Balancing in Deep Multitask Networks" (https://arxiv.org/abs/1711.02257), ICML 2018.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import gradnorm
    >>> def task_losses(params, x, y):
    ...   h = x @ params["shared"]
    ...   return jnp.stack([jnp.mean((h @ params["heads"][i] - s * y) ** 2)
    ...                     for i, s in enumerate((1.0, 10.0))])
    >>> params = {"shared": jnp.eye(3), "heads": jnp.ones((2, 3))}
    >>> training = gradnorm(task_losses, optax.sgd(1e-3), optax.sgd(0.01), num_tasks=2,
    ...                     shared_params=lambda p: p["shared"], alpha=0.5)
    >>> state = training.init(params, jax.random.key(0))
    >>> batch = (jnp.eye(3), jnp.arange(3.0))
    >>> state, metrics = jax.jit(training.step)(state, batch, jax.random.key(1))
    >>> w = state.method_state.weights  # the weights move, and still sum to T = 2
    >>> bool(w[0] > w[1]), round(float(w.sum()), 5)
    (True, 2.0)
  """
  _checks.check_positive_int("num_tasks", num_tasks)
  if num_tasks < 2:
    raise ValueError(f"num_tasks must be an integer >= 2, got {num_tasks!r}")
  _checks.check_non_negative("alpha", alpha)
  if not callable(shared_params):
    raise ValueError(f"shared_params must be a function of the parameters, got {shared_params!r}")
  names = check_update_extras(update_extras)

  def init(params, key):
    del key  # no randomness
    weights = jnp.ones((num_tasks,), jnp.float32)
    zero = jnp.zeros([], jnp.int32)
    method_state = GradNormState(
        weights=weights,
        initial_losses=jnp.ones((num_tasks,), jnp.float32),
        has_initial_losses=jnp.zeros([], jnp.bool_),
        weight_opt_state=weight_optimizer.init(weights),
    )
    return TrainState(params, optimizer.init(params), method_state, zero, zero)

  def step(state, batch, key):
    del key
    batch = tuple(batch)
    ms = state.method_state
    losses, pullback = jax.vjp(lambda p: task_losses_fn(p, *batch), state.params)
    if losses.shape != (num_tasks,):
      raise ValueError(
          f"task_losses_fn must return the {num_tasks} task losses, shape ({num_tasks},); got "
          f"shape {losses.shape}"
      )
    weights = ms.weights
    (grads,) = pullback(weights.astype(losses.dtype))
    (per_task,) = jax.vmap(pullback)(jnp.eye(num_tasks, dtype=losses.dtype))
    task_grad_norms = _tree_row_norms(shared_params(per_task))

    losses32 = losses.astype(jnp.float32)
    initial = jnp.where(ms.has_initial_losses, ms.initial_losses, losses32)
    grad_loss, weight_grads = jax.value_and_grad(gradnorm_loss)(
        weights, task_grad_norms, losses32 / initial, alpha
    )
    weight_updates, weight_opt_state = weight_optimizer.update(
        weight_grads, ms.weight_opt_state, weights
    )
    new_weights = optax.apply_updates(weights, weight_updates)
    new_weights = num_tasks * new_weights / jnp.sum(new_weights)

    value = jnp.sum(weights * losses32).astype(losses.dtype)
    weighted_loss = lambda p, *b: jnp.sum(weights * task_losses_fn(p, *b).astype(jnp.float32))
    updates, opt_state = update_with_extras(
        optimizer, names, weighted_loss, grads, state.opt_state, state.params, value, *batch
    )
    method_state = GradNormState(new_weights, initial, jnp.ones([], jnp.bool_), weight_opt_state)
    new, skipped = apply_guarded(state, updates, opt_state, losses32, grads, task_grad_norms,
                                 new_weights, method_state=method_state)
    metrics = {
        "loss": value.astype(jnp.float32),
        "task_losses": losses32,
        "weights": weights,
        "task_grad_norms": jnp.abs(weights) * task_grad_norms,
        "gradnorm_loss": grad_loss,
        "skipped": skipped,
    }
    return new, metrics

  return TrainingStep(init, step)


RECORD = registry.record(
    slug="gradnorm",
    kind="training_step",
    title=(
        "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks"
    ),
    reference="arXiv:1711.02257",
    experiment="gradnorm_multitask",
    notes=(
        "No official code; the update follows the paper (L_grad = sum_i |G_i - sg(mean G "
        "r_i^alpha)|, weights updated by grad_w L_grad alone with their own optimizer, then "
        "renormalised to sum T; the network update uses the weights before their update). gradnorm-pytorch "
        ">= 0.1.1 raises r_i to -alpha (inverting the paper's exponent), averages instead of "
        "summing the |.| terms (a 1/T factor) and back-propagates L_grad into the network: it "
        "matches only at alpha = 0 with its learning rate / T (parity test). L_i(0) is the first "
        "non-skipped step's loss. Not verified: the toy problem's alpha and whether the paper's "
        "weights share the network's learning rate. Weights are not clipped at 0."
    ),
)
