r"""SMB: stochastic gradient descent bolstered by a model step when the trial step fails.

Birbil, Martin, Onay and Oztoprak, "Bolstering Stochastic Gradient Descent with Model Building",
arXiv:2111.07058 (TOP, 2024); official code: https://github.com/sibirbil/SMB
(`source/smbsolve/smb.py`, `SMB.step_smb`).

Every step first tries the SGD step `s = -lr g` on the current batch. If the batch loss decreases
enough (an Armijo test over all parameters together), the trial point is kept. Otherwise the
gradient at the trial point gives a second-order model, built separately for every parameter
tensor (the paper's "diagonalization"), and the step is recomputed from the original point with
that model; the new point is not tested again. The trial costs one extra forward pass per step,
a rejected trial one more backward pass.

Scope: `SMB.step_smb` and its learning-rate autoschedule. The official SMBi variant
(`independent_batch=True`, `step_smbi`) is not implemented: on a rejected trial it undoes the step
and builds the model at the NEXT call, from that call's batch paired with the previous batch's
gradient, a two-batch protocol with a wasted update and an extra parameter-sized buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import _checks, registry
from jaxlearn.optim import _common

__all__ = [
    "smb",
    "scale_by_smb",
    "ScaleBySMBState",
]

# The official threshold on the gradient norm below which the trial step is always kept.
GRADIENT_NORM_FLOOR = 1e-8

_NEEDS_VALUE_FN = (
    "scale_by_smb needs the batch loss as a function of the parameters, to evaluate the trial "
    "point: call update(grads, state, params, value=loss, value_fn=lambda p: loss_fn(p, batch))"
)


class ScaleBySMBState(NamedTuple):
  """State of `scale_by_smb`.

  Attributes:
    count: number of updates so far (int32).
    model_steps: how many of them were model steps (int32); `model_steps / count` is the
      fraction the paper reports.
    window_model_steps: model steps in the current autoschedule window (int32).
    learning_rate_scale: the autoschedule's factor on the learning rate (1 without it).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import smb
    >>> state = smb().init({"w": jnp.ones(2)})
    >>> int(state.count), int(state.model_steps), float(state.learning_rate_scale)
    (0, 0, 1.0)
  """

  count: jax.Array
  model_steps: jax.Array
  window_model_steps: jax.Array
  learning_rate_scale: jax.Array


def _vdot(a, b):
  return jnp.sum(a * b)


def _model_step_leaf(g, g_trial, learning_rate, eta):
  r"""The model step of one tensor, from its gradients at x and at the trial point x - lr g.

  Returns the displacement from x (0 where σ or θ is not positive, i.e. a zero gradient).
  c_s, c_g and c_y do not change when g and g⁺ are scaled together, so they are computed from
  both divided by their largest entry: near a minimum the official products (θ ~ |g|⁴, and
  XLA's rewrite of c_g / θ into -‖s‖² / (2σθ) ~ |g|⁶) underflow in float32 and give 0/0.
  """
  size = jnp.maximum(jnp.max(jnp.abs(g), initial=0.0), jnp.max(jnp.abs(g_trial), initial=0.0))
  size = jnp.where(size > 0, size, 1.0)
  cs, cg, cy, ok = _model_coefficients(g / size, g_trial / size, learning_rate, eta)
  return jnp.where(ok, cs * (-learning_rate * g) + cg * g + cy * (g_trial - g), 0.0)


def _model_coefficients(g, g_trial, learning_rate, eta):
  """The official c_s, c_g, c_y of one tensor, and whether they are defined (σ, θ > 0)."""
  s = -learning_rate * g
  y = g_trial - g
  sg, ss, yy, yg, gg = _vdot(s, g), _vdot(s, s), _vdot(y, y), _vdot(y, g), _vdot(g, g)
  ys = _vdot(s, g_trial) - sg  # as the official code: s·g⁺ - s·g
  sigma = 0.5 * (jnp.sqrt(ss) * (jnp.sqrt(yy) + jnp.sqrt(gg) / eta) - ys)
  shifted = ys + 2.0 * sigma
  theta = shifted**2 - ss * yy
  # σ = 0 exactly when s = 0 (a zero gradient): the official c_g = -0/0 is NaN; the leaf stays.
  ok = (sigma > 0) & (theta > 0)
  sigma, theta = jnp.where(ok, sigma, 1.0), jnp.where(ok, theta, 1.0)
  cg = -ss / (2.0 * sigma)
  cs = cg / theta * (-shifted * yg + yy * sg)
  cy = cg / theta * (-shifted * sg + ss * yg)
  return cs, cg, cy, ok


def scale_by_smb(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    eta: float = 0.99,
    c: float = 0.1,
    gamma: float = 0.05,
    beta: float = 0.9,
    max_learning_rate: float = 20.0,
    *,
    autoschedule: bool = False,
    steps_per_epoch: int = 500,
) -> optax.GradientTransformationExtraArgs:
  r"""The SMB step (`SMB.step_smb` of the official code); returns the whole displacement.

  With the batch loss f, its value L and gradient g at x, and α the learning rate:

  1. Trial point :math:`x^+ = x + s`, :math:`s = -\alpha g`. Keep it if
     :math:`\|g\| < 10^{-8}` or :math:`f(x^+) \le L - c\, \alpha \|g\|^2` (norms over every leaf).
  2. Otherwise take :math:`g^+ = \nabla f(x^+)` and, for every tensor separately, with
     :math:`y = g^+ - g` and dot products over that tensor's entries:

  .. math::

    \sigma &= \tfrac12\left(\|s\|(\|y\| + \|g\|/\eta) - y^\top s\right), \qquad
    \theta = (y^\top s + 2\sigma)^2 - \|s\|^2 \|y\|^2 \\
    c_g &= -\frac{\|s\|^2}{2\sigma}, \quad
    c_s = \frac{c_g}{\theta}\left(-(y^\top s + 2\sigma)\, y^\top g + \|y\|^2 s^\top g\right), \quad
    c_y = \frac{c_g}{\theta}\left(-(y^\top s + 2\sigma)\, s^\top g + \|s\|^2 y^\top g\right) \\
    x &\leftarrow x + c_s s + c_g g + c_y y \quad\text{(from the original x, not re-tested).}

  A tensor with zero gradient has σ = 0 (the official code's c_g = -0/0 = NaN); it stays put,
  the limit of its step as its gradient goes to 0. The branch is a `lax.cond`: under `vmap` (a
  learning-rate grid) both branches run, so every step then pays the second gradient.

  Autoschedule (official, off by default): after every `steps_per_epoch` steps, if more than a
  fraction γ of them were model steps the learning rate is multiplied by β, else divided by β
  if that keeps it at most `max_learning_rate`.

  `update(grads, state, params, *, value_fn, value=None)`: `grads` is ∇f(params) (SMB is the
  first transform of a chain), `value_fn(params) -> f` the loss on the same batch and `value`
  f(params) (computed with `value_fn` when absent): optax's names, as in
  `optax.scale_by_backtracking_linesearch`.

  Args:
    learning_rate: α >= 0, a number or a schedule (official default 1; the paper's benchmarks
      use 0.5).
    eta: η > 0 of the model's σ (official default 0.99).
    c: c >= 0 of the sufficient-decrease test (official default 0.1).
    gamma: autoschedule's model-step fraction γ, in [0, 1] (official default 0.05).
    beta: autoschedule's factor β, in (0, 1] (official default 0.9).
    max_learning_rate: autoschedule's cap on the learning rate, > 0 (official default 20).
    autoschedule: adapt the learning rate as above (keyword-only).
    steps_per_epoch: the autoschedule's window, an integer >= 1 (official default 500).

  Returns:
    A `GradientTransformationExtraArgs` whose updates are the full step (no learning-rate
    transform follows); its state is a `ScaleBySMBState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_smb
    >>> value_fn = lambda p: 2.0 * jnp.sum(p ** 2)   # lr 1 overshoots: a model step
    >>> x = jnp.array([1.0, -2.0])
    >>> opt = scale_by_smb(1.0)
    >>> updates, state = opt.update(4.0 * x, opt.init(x), x, value_fn=value_fn)
    >>> int(state.model_steps), bool(value_fn(x + updates) < value_fn(x))
    (1, True)

  References:
    Birbil, Martin, Onay and Oztoprak, `Bolstering Stochastic Gradient Descent with Model
    Building <https://arxiv.org/abs/2111.07058>`_, TOP, 2024.
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_positive("eta", eta)
  _checks.check_non_negative("c", c)
  _checks.check_range("gamma", gamma, 0.0, 1.0)
  _checks.check_range("beta", beta, 0.0, 1.0, low_inclusive=False)
  _checks.check_positive("max_learning_rate", max_learning_rate)
  _checks.check_bool("autoschedule", autoschedule)
  _checks.check_positive_int("steps_per_epoch", steps_per_epoch)

  def init_fn(params):
    del params
    zero = lambda: jnp.zeros([], jnp.int32)  # one array per leaf: states may be donated
    return ScaleBySMBState(zero(), zero(), zero(), jnp.ones([], jnp.float32))

  def update_fn(updates, state, params=None, *, value=None, value_fn=None, **extra_args):
    del extra_args
    _common.require_params(params, "scale_by_smb", "the trial point is params - lr * grads",
                           updates=updates)
    if value_fn is None:
      raise ValueError(_NEEDS_VALUE_FN)
    base = learning_rate(state.count) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(base, jnp.float32) * state.learning_rate_scale
    wide = lambda tree: jax.tree.map(lambda x: x.astype(_common.wide_dtype(x.dtype)), tree)
    g = wide(updates)
    x = wide(params)
    loss = value_fn(params) if value is None else value
    loss = jnp.asarray(loss).astype(jnp.float32)

    grad_sq = sum(jax.tree.leaves(jax.tree.map(lambda v: _vdot(v, v), g)), jnp.float32(0.0))
    trial_step = jax.tree.map(lambda v: -lr.astype(v.dtype) * v, g)
    trial = jax.tree.map(lambda x_, s, p: (x_ + s).astype(p.dtype), x, trial_step, params)
    loss_trial = jnp.asarray(value_fn(trial)).astype(jnp.float32)
    # As the official code: a NaN trial loss fails the test, so it takes a model step too.
    accepted = loss_trial <= loss - c * lr * grad_sq
    model = (jnp.sqrt(grad_sq) >= GRADIENT_NORM_FLOOR) & ~accepted

    def build_model():
      g_trial = wide(jax.grad(value_fn)(trial))
      return jax.tree.map(lambda a, b: _model_step_leaf(a, b, lr.astype(a.dtype), eta), g,
                          g_trial)

    step = jax.lax.cond(model, build_model, lambda: trial_step)
    new_updates = jax.tree.map(lambda s, u: s.astype(u.dtype), step, updates)

    count = numerics.safe_increment(state.count)
    model_int = model.astype(jnp.int32)
    window = state.window_model_steps + model_int
    scale = state.learning_rate_scale
    if autoschedule:
      window, scale = next_schedule(count, window, scale, base)
    new_state = ScaleBySMBState(count, state.model_steps + model_int, window, scale)
    return new_updates, new_state

  def next_schedule(count, window, scale, base):
    """The official autoschedule at the end of a window; (window, scale) unchanged otherwise."""
    window_end = count % steps_per_epoch == 0
    too_many = window.astype(jnp.float32) / steps_per_epoch > gamma
    grown = scale / beta
    may_grow = jnp.asarray(base, jnp.float32) * grown <= max_learning_rate
    rescaled = jnp.where(too_many, scale * beta, jnp.where(may_grow, grown, scale))
    return (jnp.where(window_end, 0, window),
            jnp.where(window_end, rescaled, scale).astype(jnp.float32))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def smb(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    eta: float = 0.99,
    c: float = 0.1,
    gamma: float = 0.05,
    beta: float = 0.9,
    max_learning_rate: float = 20.0,
    *,
    autoschedule: bool = False,
    steps_per_epoch: int = 500,
) -> optax.GradientTransformationExtraArgs:
  r"""SMB, the optimizer (see `scale_by_smb` for the step and the arguments).

  The learning rate enters the trial point and the model nonlinearly, so it lives inside the
  transform and no learning-rate step follows; like the official code, SMB has no weight decay
  (a decay term outside the step would escape the acceptance test). Defaults are the official
  ones: lr 1, η 0.99, c 0.1, autoschedule off (γ 0.05, β 0.9, lr cap 20, 500 steps per window).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.optim import smb
    >>> value_fn = lambda p: jnp.sum(jnp.array([1.0, 30.0]) * p ** 2)   # lr 1 diverges for SGD
    >>> params = jnp.array([1.0, 1.0])
    >>> opt = smb(1.0)
    >>> @jax.jit
    ... def step(params, state):
    ...   value, grads = jax.value_and_grad(value_fn)(params)
    ...   updates, state = opt.update(grads, state, params, value=value, value_fn=value_fn)
    ...   return optax.apply_updates(params, updates), state
    >>> state = opt.init(params)
    >>> for _ in range(20):
    ...   params, state = step(params, state)
    >>> bool(value_fn(params) < 1e-3), int(state.model_steps) > 0
    (True, True)
  """
  return scale_by_smb(learning_rate, eta, c, gamma, beta, max_learning_rate,
                      autoschedule=autoschedule, steps_per_epoch=steps_per_epoch)


RECORD = registry.record(
    slug="smb_model_building",
    kind="optimizer",
    title="Bolstering Stochastic Gradient Descent with Model Building",
    reference="arXiv:2111.07058",
    experiment="smb_lr_robustness",
    update_extras=("value", "value_fn"),
    notes=(
        "Follows SMB.step_smb of the official source/smbsolve/smb.py: a global sufficient-"
        "decrease test on the trial point x - lr g (kept if ||g|| < 1e-8), else a per-tensor "
        "model step from the original x, not re-tested. Extra arguments use optax's names "
        "(value, value_fn, as scale_by_backtracking_linesearch); grads must be the batch "
        "gradient at params (SMB first in a chain). The official optimizer treats each torch "
        "param group separately; here the whole tree is one group. Guards not in the official "
        "code: a tensor whose sigma or theta is not positive (sigma = 0 for a zero gradient, "
        "where the official c_g is -0/0 = NaN) keeps its original value; c_s, c_g, c_y are computed "
        "from g and g+ divided by their largest entry (they are invariant to a common scale): "
        "near a minimum the official products (theta ~ |g|^4, sigma * theta ~ |g|^6 after XLA's "
        "(a / b) / c -> a / (b c) rewrite) underflow float32 and gave NaN. The branch is a "
        "lax.cond (a select under vmap, where both branches run). The autoschedule is included "
        "(keyword-only autoschedule and steps_per_epoch; the lr is base lr x a factor in the "
        "state). Not implemented: SMBi (independent_batch=True), which reverts a rejected trial "
        "and builds the model at the next update from that batch paired with the previous "
        "batch's gradient (a two-batch protocol with an extra parameter-sized buffer). No weight "
        "decay, as in the official code. The battery skips the optax.MultiSteps check: the "
        "trial-point loss and gradient come from the last micro-batch, not from the averaged "
        "gradient's batch, so accumulation is ill-defined for SMB."
    ),
)
