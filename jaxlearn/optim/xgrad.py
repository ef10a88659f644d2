r"""XGrad: every gradient is taken at the weights the optimizer predicts for the next step.

Guan, Li, Shi and Meng, "XGrad: Boosting Gradient-Based Optimizers With Weight Prediction",
arXiv:2305.18240 (2023); official code: https://github.com/guanleics/XGrad (`SGD.py`, `Adam.py`,
`AdamW.py`; the training loop that calls them is not released).

Before each mini-batch the official optimizers' `load_predicted_weights(s)` moves the weights
:math:`s` steps ahead along the step their state implies; the forward and backward passes run at
those predicted weights :math:`\hat\theta_t`, the weights are put back, and the optimizer steps
from :math:`\theta_t` with that gradient:

.. math::

  \hat\theta_t = \theta_t + s\, u_t, \qquad
  \theta_{t+1} = \theta_t + u_{t+1}\big(\nabla L(\hat\theta_t)\big),

where :math:`u_t` is the update the optimizer last applied. The official predictions are written
per optimizer, with :math:`t` the stored step count and :math:`\eta` the learning rate:

.. math::

  \text{SGDM:}\quad \hat\theta_t &= \theta_t - s\,\eta\, b_t \\
  \text{Adam, AdamW:}\quad \hat\theta_t &= \theta_t - s\,\frac{\eta}{1 - \beta_1^t}\,
    \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \varepsilon}

(:math:`b_t` the momentum buffer). For SGD with momentum (dampening and coupled weight decay
included) and for Adam without AMSGrad these are exactly :math:`\theta_t + s\,u_t` with the same
state and learning rate, so `xgrad` wraps any optax optimizer, stores the update it emits and
predicts :math:`\theta_t + s\,u_t`; `tests/optim/test_xgrad.py` checks this against a NumPy
transcription of the three `load_predicted_weights`. Two differences from the official code:

* AdamW: the official prediction leaves out the decoupled decay that the step applies, so it is
  :math:`\hat\theta_t^{\,\text{official}} = \theta_t + s\,u_t + s\,\eta\lambda\,\theta_{t-1}`
  (an :math:`O(\eta\lambda)` difference, tested); here the prediction is the step that was taken.
* At :math:`t = 0` there is no state yet (the official code skips parameters without a gradient):
  :math:`\hat\theta_0 = \theta_0`. With a learning-rate schedule the official code predicts with the
  current learning rate, `xgrad` with the one of the last step.

The optimizer alone does not change which gradient the training loop computes: take the gradient
at `predicted_params(params, opt_state)`, as `xgrad_step` does. A loop that differentiates at
`params` (`jaxlearn.train.fit`) runs the wrapped optimizer unchanged. Models with batch statistics
update them during the forward pass at the predicted weights and keep them (the official SGD
file's weight-caching helpers, which exclude them, do not run as written).

Not covered: the paper's second version also predicts for RMSprop, AdaBelief and AdaM3; their
formulas are not in the released code. AMSGrad: the official prediction uses :math:`v_t` where the
AMSGrad step uses :math:`\max v`; `xgrad` predicts with the step actually taken.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "xgrad",
    "xgrad_sgd",
    "xgrad_adam",
    "xgrad_adamw",
    "predicted_params",
    "xgrad_step",
    "XGradState",
]

PyTree = Any



class XGradState(NamedTuple):
  """State of `xgrad`.

  Attributes:
    inner_state: the wrapped optimizer's state.
    last_update: :math:`u_t`, the update the optimizer emitted last (float32 or wider; zeros
      before the first step).
    prediction_steps: :math:`s`, a float32 scalar (kept in the state so that `predicted_params`
      needs nothing else, also when `s` is injected or vmapped).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import xgrad
    >>> state = xgrad(optax.sgd(0.1, momentum=0.9)).init({"w": jnp.ones(2, jnp.bfloat16)})
    >>> state.last_update["w"].dtype, float(state.prediction_steps)
    (dtype('float32'), 1.0)
  """

  inner_state: optax.OptState
  last_update: optax.Updates
  prediction_steps: jax.Array


def xgrad(
    inner: optax.GradientTransformation, prediction_steps: float = 1.0
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps `inner` so that its state predicts the next weights, :math:`\theta + s\,u_t`.

  The updates are `inner`'s, unchanged; the state also keeps the last update :math:`u_t` and
  :math:`s`, from which `predicted_params` gives :math:`\hat\theta_t = \theta_t + s\,u_t`. Train
  with the gradient at :math:`\hat\theta_t` (`xgrad_step`).

  Args:
    inner: the optimizer whose steps are predicted (a full optimizer: its updates are added to
      the parameters as they are).
    prediction_steps: :math:`s \ge 0`, how many steps ahead to predict (the paper uses 1;
      0 gives the plain optimizer).

  Returns:
    A `GradientTransformationExtraArgs` whose state is an `XGradState`; extra `update` arguments
    are passed on to `inner`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import predicted_params, xgrad
    >>> params = {"w": jnp.array([1.0, -1.0])}
    >>> opt = xgrad(optax.sgd(0.1, momentum=0.9), prediction_steps=1.0)
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.array([1.0, 2.0])}, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> [round(float(w), 4) for w in predicted_params(params, state)["w"]]  # one more step
    [0.8, -1.4]
  """
  if not isinstance(inner, optax.GradientTransformation) and not (
      callable(getattr(inner, "init", None)) and callable(getattr(inner, "update", None))):
    raise ValueError(f"inner must be an optax GradientTransformation, got {inner!r}")
  if callable(prediction_steps):  # kept in the state as a number
    raise ValueError("prediction_steps must be a number (wrap the factory in "
                     "jaxlearn.optim.inject_hyperparams to schedule it), got "
                     f"{prediction_steps!r}")
  _checks.check_non_negative("prediction_steps", prediction_steps)
  inner = optax.with_extra_args_support(inner)

  def steps():
    return jnp.asarray(prediction_steps, jnp.float32)

  def init_fn(params):
    return XGradState(inner.init(params), _common.state_zeros(params), steps())

  def update_fn(updates, state, params=None, **extra_args):
    _common.check_params(updates, params, "xgrad")
    new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    last = jax.tree.map(lambda u, old: u.astype(old.dtype), new_updates, state.last_update)
    return new_updates, XGradState(inner_state, last, steps())

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sgd_momentum(learning_rate, momentum, dampening, weight_decay, weight_decay_mask):
  """The official SGD: coupled L2 decay, then b <- momentum * b + (1 - dampening) * g."""
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_unit_interval("dampening", dampening)
  return _common.compute_in_float32(optax.chain(
      _common.decayed_weights(weight_decay, weight_decay_mask),
      optax.scale(1.0 - dampening),
      optax.trace(decay=momentum),
      _common.learning_rate_step(learning_rate),
  ))


def xgrad_sgd(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    momentum: float = 0.9,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    prediction_steps: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with momentum and weight prediction, as the official `SGD.py`.

  .. math::

    b_t = \mu\, b_{t-1} + (1 - d)\,(g_t + \lambda\theta_{t-1}), \qquad
    u_t = -\eta\, b_t, \qquad \hat\theta_t = \theta_t + s\,u_t = \theta_t - s\,\eta\, b_t,

  with :math:`g_t` the gradient at :math:`\hat\theta_{t-1}` and :math:`\lambda` the coupled
  (L2) weight decay of the official code. Momentum state in float32.

  Args:
    learning_rate: :math:`\eta \ge 0`, a number or a schedule (official default 1e-3).
    momentum: :math:`\mu`, in [0, 1) (official default 0.9).
    dampening: :math:`d`, in [0, 1) (official default 0).
    weight_decay: :math:`\lambda \ge 0`, added to the gradient (not multiplied by the lr).
    weight_decay_mask: pytree (or prefix) of bools, or a callable of the params; False: no decay.
    prediction_steps: :math:`s \ge 0`.

  Returns:
    `xgrad` of the SGD optimizer above.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import predicted_params, xgrad_sgd
    >>> params = {"w": jnp.ones(2)}
    >>> opt = xgrad_sgd(0.1)
    >>> state = opt.init(params)
    >>> bool(jnp.all(predicted_params(params, state)["w"] == params["w"]))  # t = 0
    True
  """
  inner = _sgd_momentum(learning_rate, momentum, dampening, weight_decay, weight_decay_mask)
  return xgrad(inner, prediction_steps)


def _adam(b1, b2, eps):
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  return optax.scale_by_adam(b1, b2, eps)


def xgrad_adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    prediction_steps: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with weight prediction, as the official `Adam.py` (no weight decay).

  .. math::

    u_t = -\eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \varepsilon}, \qquad
    \hat\theta_t = \theta_t + s\,u_t,

  Adam's bias-corrected moments of the gradients taken at the predicted weights. The official
  `Adam.py` accepts `weight_decay` but applies none (its decay line is commented out), so this
  alias has no weight decay; use `xgrad_adamw` for decay. Moments in float32.

  Args:
    learning_rate: :math:`\eta \ge 0`, a number or a schedule.
    b1: first-moment decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    eps: added to :math:`\sqrt{\hat v_t}`, >= 0.
    prediction_steps: :math:`s \ge 0`.

  Returns:
    `xgrad` of Adam.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import xgrad_adam
    >>> opt = xgrad_adam(1e-3)
    >>> state = opt.init({"w": jnp.ones(3)})
    >>> updates, state = opt.update({"w": jnp.ones(3)}, state, {"w": jnp.ones(3)})
    >>> [round(float(u), 6) for u in updates["w"]]  # Adam's first step: -lr * sign(g)
    [-0.001, -0.001, -0.001]
  """
  inner = _common.compute_in_float32(
      optax.chain(_adam(b1, b2, eps), _common.learning_rate_step(learning_rate)))
  return xgrad(inner, prediction_steps)


def xgrad_adamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-2,
    weight_decay_mask: _common.MaskOrFn | None = None,
    prediction_steps: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW with weight prediction (official `AdamW.py`; defaults lr 1e-3, decay 1e-2).

  .. math::

    u_t = -\eta\left(\frac{\hat m_t}{\sqrt{\hat v_t} + \varepsilon} + \lambda\,\theta_{t-1}
    \right), \qquad \hat\theta_t = \theta_t + s\,u_t .

  The prediction includes the decay term :math:`-s\,\eta\lambda\,\theta_{t-1}`; the official
  `load_predicted_weights` leaves it out (module docstring). Moments in float32.

  Args:
    learning_rate: :math:`\eta \ge 0`, a number or a schedule.
    b1: first-moment decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    eps: added to :math:`\sqrt{\hat v_t}`, >= 0.
    weight_decay: decoupled decay :math:`\lambda \ge 0`, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or a callable of the params; False: no decay.
    prediction_steps: :math:`s \ge 0`.

  Returns:
    `xgrad` of AdamW.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import xgrad_adamw
    >>> params = {"w": jnp.ones(3)}
    >>> opt = xgrad_adamw(1e-3, weight_decay=0.1)
    >>> updates, state = opt.update({"w": jnp.ones(3)}, opt.init(params), params)
    >>> [round(float(u), 6) for u in updates["w"]]  # -lr * (sign(g) + 0.1 * w)
    [-0.0011, -0.0011, -0.0011]
  """
  inner = _common.compute_in_float32(
      _common.alias(_adam(b1, b2, eps), learning_rate, weight_decay, weight_decay_mask))
  return xgrad(inner, prediction_steps)


def _xgrad_state(opt_state: PyTree) -> XGradState:
  """The one `XGradState` inside `opt_state` (chains, `inject_hyperparams`, `MultiSteps`...)."""
  is_state = lambda node: isinstance(node, XGradState)
  found = [n for n in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(n)]
  if len(found) != 1:
    raise ValueError(
        f"opt_state must hold exactly one XGradState (build the optimizer with xgrad or an "
        f"xgrad_* alias), found {len(found)}")
  return found[0]


def predicted_params(params: PyTree, opt_state: PyTree) -> PyTree:
  r"""The predicted weights :math:`\hat\theta_t = \theta_t + s\,u_t`, in each parameter's dtype.

  Args:
    params: the current parameters :math:`\theta_t`.
    opt_state: a state holding one `XGradState` (from `xgrad`, possibly inside a chain,
      `inject_hyperparams`, `optax.MultiSteps` or `optax.apply_if_finite`).

  Returns:
    A pytree like `params`. Equal to `params` before the first step.

  Raises:
    ValueError: if `opt_state` holds no `XGradState`, or several.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import predicted_params, xgrad_sgd
    >>> params = jnp.ones(2)
    >>> opt = xgrad_sgd(0.5, momentum=0.0, prediction_steps=2.0)
    >>> updates, state = opt.update(jnp.ones(2), opt.init(params), params)
    >>> predicted_params(params + updates, state)  # 1 - 0.5, then 2 more steps of -0.5
    Array([-0.5, -0.5], dtype=float32)
  """
  state = _xgrad_state(opt_state)

  def leaf(p, u):
    wide = jnp.asarray(p, _common.wide_dtype(jnp.result_type(p)))
    return (wide + state.prediction_steps * u).astype(jnp.result_type(p))

  return jax.tree.map(leaf, params, state.last_update)


def xgrad_step(loss_fn: Callable[..., jax.Array], optimizer: optax.GradientTransformation):
  r"""The XGrad training step: the gradient at the predicted weights, the step from the current.

  .. math::

    \hat\theta_t = \theta_t + s\,u_t, \qquad g_t = \nabla L(\hat\theta_t;\ \text{batch}), \qquad
    \theta_{t+1} = \theta_t + u_{t+1}(g_t).

  Args:
    loss_fn: `loss_fn(params, *batch) -> scalar`, the mean loss over the batch.
    optimizer: an optimizer whose state holds an `XGradState` (`xgrad`, `xgrad_sgd`, ...); its
      `update` also receives `value=`, the loss at the predicted weights.

  Returns:
    A `jaxlearn.train.TrainingStep` with the protocol's non-finite guard. Its metrics: 'loss',
    the batch loss at the predicted weights (the forward pass XGrad runs; at the first step the
    current weights), 'grad_norm' and 'skipped'.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.optim import xgrad_adam, xgrad_step
    >>> def loss_fn(params, x, y):
    ...   return jnp.mean((x @ params - y) ** 2)
    >>> training = xgrad_step(loss_fn, xgrad_adam(1e-2))
    >>> state = training.init(jnp.zeros(3), jax.random.key(0))
    >>> step = jax.jit(training.step)
    >>> for _ in range(3):
    ...   state, metrics = step(state, (jnp.ones((4, 3)), jnp.ones(4)), jax.random.key(1))
    >>> int(state.count), sorted(metrics)
    (3, ['grad_norm', 'loss', 'skipped'])
  """
  # Imported here: jaxlearn.train imports jaxlearn.optim.
  from jaxlearn.train import step as step_lib  # pylint: disable=import-outside-toplevel

  optimizer = optax.with_extra_args_support(optimizer)

  def init(params, key):
    del key  # no randomness
    opt_state = optimizer.init(params)
    _xgrad_state(opt_state)  # fail early without weight prediction
    zero = jnp.zeros([], jnp.int32)
    return step_lib.TrainState(params, opt_state, (), zero, zero)

  def step(state, batch, key):
    del key
    batch = tuple(batch)
    ahead = predicted_params(state.params, state.opt_state)
    value, grads = jax.value_and_grad(loss_fn)(ahead, *batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=value)
    new = step_lib.TrainState(optax.apply_updates(state.params, updates), opt_state,
                              state.method_state, state.count + 1, state.skipped)
    new, skipped = step_lib.keep_if_finite(state, new, value, grads)
    metrics = {
        "loss": jnp.asarray(value, jnp.float32),
        "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
        "skipped": skipped,
    }
    return new, metrics

  return step_lib.TrainingStep(init, step)


RECORD = registry.record(
    slug="xgrad_weight_prediction",
    kind="optimizer",
    title="XGrad: Boosting Gradient-Based Optimizers With Weight Prediction",
    reference="arXiv:2305.18240",
    experiment="xgrad_digits",
    notes=(
        "Generic wrapper: stores the last emitted update u_t and predicts theta + s * u_t, which "
        "equals the official load_predicted_weights for SGD with momentum (dampening and coupled "
        "decay included) and for non-AMSGrad Adam (NumPy transcription test). AdamW: the "
        "official prediction omits the decoupled decay term, ours includes it (difference "
        "s * lr * wd * theta_{t-1}, tested). theta_hat = theta at t = 0; with a schedule the lr "
        "of the last step is used (official: the current lr). xgrad_adam has no weight decay, "
        "as the released Adam.py applies none. The gradient at the predicted weights comes from "
        "the training step (xgrad_step or predicted_params); a loop that differentiates at "
        "params (fit, the battery) runs the wrapped optimizer unchanged. RMSprop, AdaBelief and "
        "AdaM3 predictions (paper v2) are not in the released code and not provided."
    ),
)
