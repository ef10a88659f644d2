r"""AAER: FGSM-RS adversarial training with the Abnormal Adversarial Examples Regularization.

Paper: Runqi Lin, Chaojian Yu and Tongliang Liu, "Eliminating Catastrophic Overfitting Via Abnormal
Adversarial Examples Regularization", NeurIPS 2023, arXiv:2404.08154. Official code:
github.com/tmllab/2023_NeurIPS_AAER (its training script, built on locuslab/fast_adversarial).

One step of the official script (``--delta-init random``, ``--clamp 0`` by default), for inputs
:math:`x`, labels :math:`y`, per-example losses :math:`\ell_i` and logits :math:`z_i`:

1. FGSM with a random start: :math:`\delta_0 \sim U(-2\epsilon, 2\epsilon)`
   (:math:`\pm\epsilon` with ``project=True``), clipped so that :math:`x + \delta_0` stays in
   the input range; :math:`\delta = \delta_0 + \alpha\,\epsilon\,w\,
   \operatorname{sign}(\nabla_\delta \tfrac1B\sum_i \ell_i(x + \delta_0))` with the warm-up
   factor :math:`w = \min(t / T_w, 1)`; with
   ``project=True`` :math:`\delta` is clipped to :math:`\pm\epsilon w`; then to the input range.
2. :math:`\ell^{b}_i = \ell_i(x+\delta_0)` and :math:`\ell^{a}_i = \ell_i(x+\delta)`; the
   abnormal adversarial examples (AAEs) are those with :math:`\ell^{b}_i > \ell^{a}_i`
   (:math:`m` of them, :math:`B - m` normal ones).
3. With :math:`d_i = \lVert z_i(x+\delta) - \operatorname{sg}[z_i(x+\delta_0)]\rVert^2`, the
   objective, when :math:`0 < m < B`, is

   .. math::

       \frac1B\sum_i \ell^{a}_i + \lambda_1 \frac{m}{B}\Big[\lambda_2\,
       \operatorname{sg}\Big(\frac1m\sum_{i\in\text{AAE}} \ell^b_i - \ell^a_i\Big)
       + \lambda_3 \max\Big(\frac1m\sum_{i\in\text{AAE}} d_i
       - \operatorname{sg}\Big(\frac1{B-m}\sum_{i\notin\text{AAE}} d_i\Big), 0\Big)\Big],

   and :math:`\frac1B\sum_i \ell^a_i` otherwise. :math:`\operatorname{sg}` is stop-gradient: the
   official script builds the :math:`\lambda_2` term from detached losses (``loss.detach()``), so it
   changes the objective's value but not its gradient; it takes the normal examples' variation as
   a number (``.item()``).

The AAE/normal split is done with masks and counts (no boolean indexing, no Python ``if`` on
traced values), so the step jits once and vmaps.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks, registry
from jaxlearn.train.step import TrainingStep, TrainState, apply_guarded

__all__ = ["aaer", "aaer_regularizer"]


def aaer_regularizer(
    loss_before: jax.Array,
    loss_after: jax.Array,
    logits_before: jax.Array,
    logits_after: jax.Array,
    lambda1: Any = 1.0,
    lambda2: Any = 4.0,
    lambda3: Any = 1.5,
) -> jax.Array:
  r"""The AAER term of step 3 (module docstring): a float32 scalar, 0 unless :math:`0 < m < B`.

  Args:
    loss_before: per-example losses :math:`\ell^b` at the random start, shape ``(B,)``.
    loss_after: per-example losses :math:`\ell^a` at the adversarial example, shape ``(B,)``.
    logits_before: :math:`z(x + \delta_0)`, shape ``(B, ...)`` (its gradient is stopped).
    logits_after: :math:`z(x + \delta)`, same shape.
    lambda1, lambda2, lambda3: the weights (official 1, 4, 1.5); traceable.

  Returns:
    The regularizer; its gradient flows only through ``logits_after``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.train import aaer_regularizer
    >>> before, after = jnp.array([2.0, 1.0]), jnp.array([1.0, 1.5])  # example 0 is abnormal
    >>> z0 = jnp.zeros((2, 2))
    >>> z1 = jnp.array([[1.0, 1.0], [0.0, 1.0]])  # variations 2 (abnormal) and 1 (normal)
    >>> float(aaer_regularizer(before, after, z0, z1))  # 1 * 1/2 * (4 * 1 + 1.5 * (2 - 1))
    2.75
  """
  batch = loss_before.shape[0]
  if loss_after.shape != (batch,) or loss_before.shape != (batch,):
    raise ValueError(
        f"loss_before and loss_after must have shape (B,), got {loss_before.shape} and "
        f"{loss_after.shape}"
    )
  if logits_before.shape != logits_after.shape or logits_after.shape[0] != batch:
    raise ValueError(
        f"logits_before and logits_after must have the same shape (B, ...), got "
        f"{logits_before.shape} and {logits_after.shape}"
    )
  for name, value in (("lambda1", lambda1), ("lambda2", lambda2), ("lambda3", lambda3)):
    _checks.check_non_negative(name, value)
  before = jax.lax.stop_gradient(loss_before.astype(jnp.float32))
  after = loss_after.astype(jnp.float32)
  abnormal = (before > jax.lax.stop_gradient(after)).astype(jnp.float32)
  normal = 1.0 - abnormal
  n_abnormal, n_normal = jnp.sum(abnormal), jnp.sum(normal)
  difference = logits_after.astype(jnp.float32) - jax.lax.stop_gradient(
      logits_before.astype(jnp.float32))
  variation = jnp.sum(jnp.square(difference.reshape(batch, -1)), axis=1)
  abnormal_variation = jnp.sum(abnormal * variation) / jnp.maximum(n_abnormal, 1.0)
  normal_variation = jax.lax.stop_gradient(
      jnp.sum(normal * variation) / jnp.maximum(n_normal, 1.0))
  abnormal_ce = jax.lax.stop_gradient(
      jnp.sum(abnormal * (before - after)) / jnp.maximum(n_abnormal, 1.0))
  term = (jnp.asarray(lambda1, jnp.float32) * n_abnormal / batch) * (
      jnp.asarray(lambda2, jnp.float32) * abnormal_ce
      + jnp.asarray(lambda3, jnp.float32)
      * jnp.maximum(abnormal_variation - normal_variation, 0.0)
  )
  return jnp.where((n_abnormal > 0) & (n_normal > 0), term, 0.0)


def aaer(
    model_fn: Callable[..., tuple[jax.Array, jax.Array]],
    optimizer: optax.GradientTransformation,
    *,
    epsilon: Any,
    alpha: Any = 1.0,
    lambda1: Any = 1.0,
    lambda2: Any = 4.0,
    lambda3: Any = 1.5,
    warmup_steps: Any = 0,
    clip_min: Any = None,
    clip_max: Any = None,
    project: bool = False,
) -> TrainingStep:
  r"""The AAER training step: FGSM-RS adversarial training plus `aaer_regularizer`.

  Args:
    model_fn: ``model_fn(params, x, y) -> (losses, logits)``: per-example losses ``(B,)`` and
      outputs ``(B, ...)`` (the logits whose variation is regularized).
    optimizer: the optimizer (official: SGD, momentum 0.9, weight decay 5e-4, cyclic lr to 0.05).
    epsilon: :math:`\epsilon > 0`, the L-infinity radius in the input's units (official 8/255 of
      the [0, 1] image range); traceable.
    alpha: the FGSM step as a fraction of epsilon, step = alpha * epsilon (official 1.0);
      traceable.
    lambda1, lambda2, lambda3: the regularizer's weights (official 1, 4, 1.5); traceable. With
      ``lambda1 = 0`` the step is plain FGSM-RS training (the official script's baseline).
    warmup_steps: :math:`T_w \ge 0`: the FGSM step is scaled by ``min(count / T_w, 1)`` (the
      official script: 5 epochs of steps, ``min((epoch + i / len) / 5, 1)``); 0 disables it.
      Traceable.
    clip_min, clip_max: the valid input range (official: the image range [0, 1]); None for an
      unbounded side.
    project: static. False (official default ``--clamp 0``): start in :math:`\pm 2\epsilon`, no
      projection after the step. True: start in :math:`\pm\epsilon` and clip the step to
      :math:`\pm\epsilon w`.

  Returns:
    A `TrainingStep`; ``batch = (x, y)``; the step draws the random start from its key. Metrics:
    'loss' (the adversarial loss :math:`\frac1B\sum\ell^a` at the incoming parameters),
    'objective' (with the regularizer), 'regularizer', 'abnormal_fraction' (:math:`m/B`),
    'skipped'.

  References:
    R. Lin, C. Yu, T. Liu, "Eliminating Catastrophic Overfitting Via Abnormal Adversarial Examples
    Regularization", `arXiv:2404.08154 <https://arxiv.org/abs/2404.08154>`_, NeurIPS 2023. Code:
    https://github.com/tmllab/2023_NeurIPS_AAER.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import aaer
    >>> def model_fn(params, x, y):
    ...   logits = x @ params
    ...   losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)[:, 0]
    ...   return losses, logits
    >>> training = aaer(model_fn, optax.sgd(0.1), epsilon=0.1, clip_min=0.0, clip_max=1.0)
    >>> state = training.init(jnp.zeros((4, 3)), jax.random.key(0))
    >>> x, y = jnp.full((6, 4), 0.5), jnp.array([0, 1, 2, 0, 1, 2])
    >>> state, metrics = jax.jit(training.step)(state, (x, y), jax.random.key(1))
    >>> round(float(metrics["loss"]), 4)  # log(3) at zero parameters
    1.0986
  """
  _checks.check_range("epsilon", epsilon, 0.0, None, low_inclusive=False)
  _checks.check_non_negative("alpha", alpha)
  for name, value in (("lambda1", lambda1), ("lambda2", lambda2), ("lambda3", lambda3),
                      ("warmup_steps", warmup_steps)):
    _checks.check_non_negative(name, value)
  for name, value in (("clip_min", clip_min), ("clip_max", clip_max)):
    if value is not None:
      _checks.check_range(name, value)
  low, high = (_checks.concrete_float(v) for v in (clip_min, clip_max))
  if low is not None and high is not None and not low < high:
    raise ValueError(f"clip_min must be below clip_max, got {clip_min!r} and {clip_max!r}")
  _checks.check_bool("project", project)

  def clip_inputs(x, delta):
    """delta such that x + delta stays in [clip_min, clip_max] (official `clamp`)."""
    if clip_min is not None:
      delta = jnp.maximum(delta, clip_min - x)
    if clip_max is not None:
      delta = jnp.minimum(delta, clip_max - x)
    return delta

  def init(params, key):
    del key
    zero = jnp.zeros([], jnp.int32)
    return TrainState(params, optimizer.init(params), (), zero, zero)

  def step(state, batch, key):
    x, y = tuple(batch)
    params = state.params
    eps = jnp.asarray(epsilon, jnp.float32)
    xf = x.astype(jnp.float32)
    start = eps if project else 2.0 * eps
    delta0 = jax.random.uniform(key, x.shape, jnp.float32, -1.0, 1.0) * start
    delta0 = clip_inputs(xf, delta0)

    def mean_loss_at(inputs):
      losses, logits = model_fn(params, inputs, y)
      return jnp.mean(losses.astype(jnp.float32)), (losses, logits)

    # The gradient with respect to delta equals the one with respect to the input x + delta0.
    x_start = (xf + delta0).astype(x.dtype)
    input_grad, (loss_before, logits_before) = jax.grad(mean_loss_at, has_aux=True)(x_start)
    steps = jnp.asarray(warmup_steps, jnp.float32)
    count = state.count.astype(jnp.float32)
    warm = jnp.where(steps > 0, jnp.minimum(count / jnp.maximum(steps, 1.0), 1.0), 1.0)
    delta = delta0 + jnp.asarray(alpha, jnp.float32) * eps * jnp.sign(input_grad) * warm
    if project:
      delta = jnp.clip(delta, -eps * warm, eps * warm)
    delta = jax.lax.stop_gradient(clip_inputs(xf, delta))
    x_adv = (xf + delta).astype(x.dtype)

    def objective(p):
      losses, logits = model_fn(p, x_adv, y)
      adversarial = jnp.mean(losses.astype(jnp.float32))
      regularizer = aaer_regularizer(loss_before, losses, logits_before, logits,
                                     lambda1, lambda2, lambda3)
      abnormal = jnp.mean((loss_before > losses).astype(jnp.float32))
      return adversarial + regularizer, (adversarial, regularizer, abnormal)

    (total, (adversarial, regularizer, abnormal)), grads = jax.value_and_grad(
        objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new, skipped = apply_guarded(state, updates, opt_state, total, loss_before, grads)
    metrics = {
        "loss": adversarial,
        "objective": total,
        "regularizer": regularizer,
        "abnormal_fraction": abnormal,
        "skipped": skipped,
    }
    return new, metrics

  return TrainingStep(init, step)


RECORD = registry.record(
    slug="aaer",
    kind="training_step",
    title="Eliminating Catastrophic Overfitting Via Abnormal Adversarial Examples Regularization",
    reference="arXiv:2404.08154",
    experiment="aaer_catastrophic_overfitting",
    notes=(
        "Transcribes the official training script (tmllab/2023_NeurIPS_AAER): FGSM-RS with "
        "delta0 ~ U(-2 eps, 2 eps) and no projection (--clamp 0; project=True gives the "
        "--clamp 1 variant), step alpha * eps * sign(grad) * warm-up, AAEs = loss_before > "
        "loss_after, regularizer lambda1 (m/B) [lambda2 CE variation + lambda3 max(abnormal - "
        "normal logit variation, 0)] only when both kinds exist. As in the script, the lambda2 "
        "term is built from detached losses (no gradient) and the normal variation is a "
        "constant; the paper's own equations were not read, so whether the paper intends a "
        "gradient through the lambda2 term is not verified. Deviations: epsilon is one scalar "
        "in the input's units (the script divides by the CIFAR per-channel std); the warm-up "
        "counts steps (warmup_steps = 5 epochs of steps reproduces the script); the input "
        "range is optional (clip_min/clip_max); the random start is drawn per element from the "
        "step's key (the script draws it per channel slice with torch's RNG)."
    ),
)
