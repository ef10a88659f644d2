r"""Fish: first-order inter-domain gradient matching for domain generalization.

Paper: Yuge Shi, Jeffrey Seely, Philip H. S. Torr, N. Siddharth, Awni Hannun, Nicolas Usunier and
Gabriel Synnaeve, "Gradient Matching for Domain Generalization", ICLR 2022, arXiv:2104.09937.
Official code: github.com/YugeTen/fish (`fish_step`) and DomainBed's `algorithms.Fish`
(github.com/facebookresearch/DomainBed).

One Fish step, as in DomainBed's `Fish.update`: clone the parameters, take one inner optimizer step
per training domain, sequentially, on that domain's minibatch, then move the parameters a fraction
``meta_learning_rate`` of the way to the clone:

.. math::

    \tilde\theta_0 = \theta, \qquad
    \tilde\theta_d = \tilde\theta_{d-1} + \mathrm{opt}\big(\nabla L_d(\tilde\theta_{d-1})\big),
    \quad d = 1, \dots, D, \qquad
    \theta \leftarrow \theta + \epsilon\,(\tilde\theta_D - \theta).

The inner optimizer's state (DomainBed: Adam) persists from one outer step to the next; the outer
network's own optimizer is never used. With plain SGD inner steps of size :math:`\alpha` and two
quadratic domains the expansion is exact:
:math:`\tilde\theta_2 - \theta = -\alpha(g_1 + g_2) + \alpha^2 H_2 g_1`, and averaged over the two
domain orders the second-order term is :math:`\tfrac{\alpha^2}{2}\nabla(g_1\cdot g_2)`: Fish follows
the ERM gradient plus a step that increases the inter-domain gradient inner product.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks, registry
from jaxlearn.train.step import TrainingStep, TrainState, all_finite, keep_if_finite

__all__ = ["fish"]


def fish(
    loss_fn: Callable[..., jax.Array],
    inner_optimizer: optax.GradientTransformation,
    meta_learning_rate: Any = 0.5,
    *,
    shuffle_domains: bool = False,
) -> TrainingStep:
  r"""The Fish training step: one inner step per domain, then a meta step towards the clone.

  Args:
    loss_fn: ``loss_fn(params, *domain_batch) -> scalar``, the mean loss of one domain's minibatch.
    inner_optimizer: the inner optimizer (DomainBed: ``optax.adam(lr)``); its state is the
      `TrainState`'s ``opt_state`` and persists across outer steps.
    meta_learning_rate: :math:`\epsilon > 0`, the fraction of the way to the clone (DomainBed's
      ``meta_lr``, default 0.5, searched in {0.05, 0.1, 0.5}); traceable.
    shuffle_domains: static. False (DomainBed): the domains are visited in the order of the batch's
      leading axis. True: in a random order drawn from the step's key each step.

  Returns:
    A `TrainingStep`. Its ``step(state, batch, key)`` takes ``batch`` as a tuple of arrays with a
    leading domain axis, e.g. ``(x[D, B, ...], y[D, B])``, equal-sized minibatches per domain.
    Metrics: 'loss' (the mean over domains of the loss at the incoming parameters), 'inner_loss'
    (the mean of the losses the inner steps saw), 'skipped'.

  References:
    Y. Shi, J. Seely, P. H. S. Torr, N. Siddharth, A. Hannun, N. Usunier, G. Synnaeve, "Gradient
    Matching for Domain Generalization", `arXiv:2104.09937 <https://arxiv.org/abs/2104.09937>`_,
    ICLR 2022. Code: https://github.com/YugeTen/fish and DomainBed's ``Fish``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import fish
    >>> def loss_fn(w, x, y):
    ...   return jnp.mean((x @ w - y) ** 2)
    >>> training = fish(loss_fn, optax.sgd(0.1), meta_learning_rate=0.5)
    >>> state = training.init(jnp.zeros(3), jax.random.key(0))
    >>> x, y = jnp.ones((2, 4, 3)), jnp.ones((2, 4))  # 2 domains of 4 examples
    >>> state, metrics = jax.jit(training.step)(state, (x, y), jax.random.key(1))
    >>> float(metrics["loss"])
    1.0
  """
  _checks.check_range("meta_learning_rate", meta_learning_rate, 0.0, None, low_inclusive=False)
  _checks.check_bool("shuffle_domains", shuffle_domains)

  def init(params, key):
    del key  # deterministic initialization
    zero = jnp.zeros([], jnp.int32)
    return TrainState(params, inner_optimizer.init(params), (), zero, zero)

  def step(state, batch, key):
    batch = tuple(jnp.asarray(b) for b in batch)
    if not batch:
      raise ValueError("batch must hold at least one array with a leading domain axis")
    num_domains = batch[0].shape[0]
    if any(b.ndim < 1 or b.shape[0] != num_domains for b in batch):
      raise ValueError(
          "every array of batch must have the same leading domain axis, got shapes "
          f"{[b.shape for b in batch]}"
      )
    if shuffle_domains:
      order = jax.random.permutation(key, num_domains)
      batch = tuple(b[order] for b in batch)
    params = state.params
    value = jnp.mean(jax.vmap(lambda *b: loss_fn(params, *b))(*batch).astype(jnp.float32))

    def inner(carry, domain_batch):
      clone, opt_state, finite = carry
      loss, grads = jax.value_and_grad(loss_fn)(clone, *domain_batch)
      updates, opt_state = inner_optimizer.update(grads, opt_state, clone)
      clone = optax.apply_updates(clone, updates)
      return (clone, opt_state, finite & all_finite(loss, grads)), loss.astype(jnp.float32)

    (clone, opt_state, finite), inner_losses = jax.lax.scan(
        inner, (params, state.opt_state, jnp.asarray(True)), batch
    )
    meta = jnp.asarray(meta_learning_rate, jnp.float32)
    new_params = jax.tree.map(
        lambda p, c: (p.astype(jnp.float32) + meta * (c.astype(jnp.float32)
                                                      - p.astype(jnp.float32))).astype(p.dtype),
        params, clone,
    )
    new = TrainState(new_params, opt_state, state.method_state, state.count + 1, state.skipped)
    # `finite` is False when any inner loss or gradient was non-finite: watch it as a NaN.
    flag = jnp.where(finite, 0.0, jnp.nan)
    new, skipped = keep_if_finite(state, new, value, flag)
    metrics = {"loss": value, "inner_loss": jnp.mean(inner_losses), "skipped": skipped}
    return new, metrics

  return TrainingStep(init, step)


RECORD = registry.record(
    slug="fish_gradient_matching",
    kind="training_step",
    title="Gradient Matching for Domain Generalization",
    reference="arXiv:2104.09937",
    experiment="fish_domain_generalization",
    notes=(
        "Follows DomainBed's Fish.update: the clone takes one inner-optimizer step per domain "
        "minibatch in sequence, the inner optimizer's state persists across outer steps, "
        "theta <- theta + meta_lr (clone - theta); the outer optimizer is unused. Domains are "
        "visited in the batch's order (DomainBed) unless shuffle_domains=True (a random order per "
        "step, as the paper's algorithm describes it; the paper's text was not re-read here). "
        "DomainBed's meta_lr default 0.5 is kept; per-dataset values of the paper not checked. "
        "The paper's ERM pre-training phase before Fish is left to the user. The reported 'loss' "
        "is the mean domain loss at the incoming parameters (one extra forward pass); DomainBed "
        "reports the last inner loss."
    ),
)
