r"""Unified likelihood ratio (ULR): gradients of a whole network from forward passes only.

Jiang, Zhang, Xu, Yu, Peng, "One Forward is Enough for Neural Network Training via Likelihood Ratio
Method", arXiv:2305.08960 (ICLR 2024). No official code was found.

Gaussian noise is injected into the pre-activation of every dense layer,

.. math::

   v_l = W_l x_{l-1} + b_l + z_l, \quad z_l \sim \mathcal{N}(0, \sigma^2 I), \quad
   x_l = \phi_l(v_l),

which turns the network into a smooth stochastic model of its parameters even where
:math:`\phi_l` or the loss is not differentiable. The likelihood ratio (score-function) identity
gives the gradient of the expected loss from the loss values alone,

.. math::

   \nabla_{W_l} \mathbb{E}[L] = \mathbb{E}\Big[L \,\frac{z_l}{\sigma^2}\, x_{l-1}^\top\Big], \qquad
   \nabla_{b_l} \mathbb{E}[L] = \mathbb{E}\Big[L \,\frac{z_l}{\sigma^2}\Big],

estimated with :math:`n` noisy copies of every example in ONE batched forward pass (every layer's
estimate uses its own noise; no derivative of anything is taken). Two variance reductions, named as
such (the paper proposes several; these are the ones implemented):

* **baseline**: :math:`L - L_0` replaces :math:`L`, with :math:`L_0` the noise-free loss of the
  same example (one more forward copy). It is independent of the noise, so the estimate stays
  unbiased.
* **antithetic pairs**: the copies come in pairs :math:`z, -z`, so a pair contributes
  :math:`\tfrac12 (L(z) - L(-z))\, z x^\top / \sigma^2` for the first layer (exact for a loss
  linear-quadratic in :math:`v`).

Noise at a dense block's pre-activation is a per-example perturbation of its bias, so the rule
runs the model's own blocks (``apply(params | {'bias': b + z}, x)``) and needs blocks whose
parameters are ``{'kernel', 'bias'}`` with the bias added before the activation
(`jaxlearn.local.dense_block`).

References:
  Jiang, Zhang, Xu, Yu, Peng, "One Forward is Enough for Neural Network Training via Likelihood
  Ratio Method", https://arxiv.org/abs/2305.08960, ICLR 2024 (no official code found).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks
from jaxlearn import registry
from jaxlearn.local.framework import LocalContext, LocalModel, LocalParams, LocalRule

__all__ = ["LikelihoodRatio", "likelihood_ratio_grads"]


def _noisy_apply(block, params, x, noise):
  """The block with a per-example bias b + noise: its pre-activation noise."""

  def one(xb, zb):
    return block.apply(dict(params, bias=params["bias"] + zb), xb[None])[0]

  return jax.vmap(one)(x, noise)


def likelihood_ratio_grads(
    model: LocalModel,
    block_params,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    sigma: float = 0.1,
    num_samples: int = 16,
    antithetic: bool = True,
    baseline: bool = True,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] =
        optax.losses.softmax_cross_entropy_with_integer_labels,
    block_input: Callable[[int, jax.Array], jax.Array] | None = None,
) -> tuple[tuple[dict, ...], jax.Array, jax.Array]:
  r"""ULR estimates of :math:`\nabla \mathbb{E}[L]` for every block, from forward passes only.

  Args:
    model: dense blocks (parameters ``{'kernel', 'bias'}``), the last one giving the logits.
    block_params: one parameter dict per block.
    x: inputs, shape (batch, features).
    labels: what `loss_fn` compares the last block's output with.
    key: the noise.
    sigma: noise standard deviation, > 0.
    num_samples: noisy copies per example (even if `antithetic`); static.
    antithetic: copies in pairs (z, -z).
    baseline: subtract the noise-free loss of the example.
    loss_fn: per-example loss ``loss_fn(outputs, labels) -> (batch,)``.
    block_input: optional ``block_input(index, signal)`` map applied before each block.

  Returns:
    ``(grads, mean noisy loss, clean loss)``: grads has block_params' structure (float32 leaves
    cast to the parameters' dtypes); the clean loss is NaN when ``baseline`` is False (not
    computed).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn import local
    >>> model = local.LocalModel((local.dense_block(16, jnp.tanh), local.dense_block(3, None)))
    >>> x, y = jnp.ones((4, 5)), jnp.array([0, 1, 2, 0])
    >>> params, _ = model.init(jax.random.key(0), local.LikelihoodRatio(), {"x": x, "y": y})
    >>> estimate = jax.jit(lambda blocks, key: local.likelihood_ratio_grads(
    ...     model, blocks, x, y, key, num_samples=8))
    >>> grads, loss, clean = estimate(params.blocks, jax.random.key(1))
    >>> grads[0]["kernel"].shape
    (5, 16)
  """
  _checks.check_positive("sigma", sigma)
  _checks.check_positive_int("num_samples", num_samples)
  _checks.check_bool("antithetic", antithetic)
  _checks.check_bool("baseline", baseline)
  if antithetic and num_samples % 2:
    raise ValueError(f"num_samples must be even with antithetic=True, got {num_samples}")
  if len(block_params) != len(model.blocks):
    raise ValueError(f"block_params has {len(block_params)} entries for {len(model.blocks)} blocks")
  for index, p in enumerate(block_params):
    if not isinstance(p, dict) or set(p) != {"kernel", "bias"}:
      raise ValueError(
          f"block {index}: likelihood ratio needs dense blocks with parameters {{'kernel', "
          f"'bias'}}, got {jax.tree.structure(p)}"
      )
  block_input = (lambda index, signal: signal) if block_input is None else block_input
  sigma = jnp.asarray(sigma, jnp.float32)
  batch = x.shape[0]
  copies = num_samples + (1 if baseline else 0)
  signal = jnp.concatenate([x] * copies, axis=0)  # copy-major: (copies * batch, ...)
  tiled_labels = jnp.concatenate([labels] * copies, axis=0)
  noises, inputs = [], []
  for index, (block, p) in enumerate(zip(model.blocks, block_params)):
    signal = block_input(index, signal)
    features = p["bias"].shape[-1]
    half = num_samples // 2 if antithetic else num_samples
    z = sigma * jax.random.normal(jax.random.fold_in(key, index), (half, batch, features))
    if antithetic:
      z = jnp.concatenate([z, -z], axis=0)
    if baseline:
      z = jnp.concatenate([z, jnp.zeros((1, batch, features), z.dtype)], axis=0)
    z = z.reshape(copies * batch, features)
    inputs.append(signal)
    noises.append(z)
    signal = _noisy_apply(block, p, signal, z.astype(p["bias"].dtype))
  losses = loss_fn(signal, tiled_labels).astype(jnp.float32).reshape(copies, batch)
  noisy = losses[:num_samples]
  clean = losses[num_samples] if baseline else jnp.full((batch,), jnp.nan, jnp.float32)
  weights = noisy - clean[None] if baseline else noisy  # (num_samples, batch)
  weights = weights.reshape(-1) / (sigma**2 * num_samples * batch)
  grads = []
  for p, inp, z in zip(block_params, inputs, noises):
    inp = inp[: num_samples * batch].reshape(num_samples * batch, -1).astype(jnp.float32)
    z = z[: num_samples * batch].astype(jnp.float32)
    weighted = z * weights[:, None]
    grads.append({
        "kernel": (inp.T @ weighted).reshape(p["kernel"].shape).astype(p["kernel"].dtype),
        "bias": jnp.sum(weighted, axis=0).astype(p["bias"].dtype),
    })
  return tuple(grads), jnp.mean(noisy), jnp.mean(clean)


@dataclasses.dataclass(frozen=True)
class LikelihoodRatio(LocalRule):
  r"""ULR as a forward-only rule of the layer-local framework (`local_train_step` calls its
  `estimate_grads` instead of `jax.grad`; see the module docstring for the estimator).

  The objective is global (the last block's loss), not per block: ``block_losses`` reports the
  noise-free loss (the mean noisy loss without ``baseline``) in the last entry and 0 elsewhere.

  Attributes:
    sigma: noise standard deviation (default 0.1).
    num_samples: noisy copies per example (default 16; even with ``antithetic``).
    antithetic: copies in antithetic pairs (default True).
    baseline: subtract each example's noise-free loss (default True).
    loss_fn: per-example loss of the last block's output, ``loss_fn(outputs, labels)``; None
      (default): softmax cross-entropy with integer labels.

  References:
    Jiang et al., "One Forward is Enough for Neural Network Training via Likelihood Ratio
    Method", https://arxiv.org/abs/2305.08960, ICLR 2024 (no official code found).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model = local.LocalModel((local.dense_block(16, jnp.tanh), local.dense_block(3, None)))
    >>> rule = local.LikelihoodRatio(sigma=0.1, num_samples=8)
    >>> batch = {"x": jnp.ones((4, 5)), "y": jnp.array([0, 1, 2, 0])}
    >>> state = local.init_train_state(model, rule, optax.adam(1e-2), jax.random.key(0), batch)
    >>> step = local.local_train_step(model, rule, optax.adam(1e-2))  # no jax.grad inside
    >>> state, metrics = step(state, batch, jax.random.key(1))
    >>> metrics["block_losses"].shape  # the global loss, reported on the last block
    (2,)
  """

  forward_only = True

  sigma: float = 0.1
  num_samples: int = 16
  antithetic: bool = True
  baseline: bool = True
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None

  def __post_init__(self):
    _checks.check_positive("sigma", self.sigma)
    _checks.check_positive_int("num_samples", self.num_samples)
    _checks.check_bool("antithetic", self.antithetic)
    _checks.check_bool("baseline", self.baseline)
    if self.antithetic and self.num_samples % 2:
      raise ValueError(f"num_samples must be even with antithetic=True, got {self.num_samples}")
    if self.loss_fn is not None and not callable(self.loss_fn):
      raise ValueError(f"loss_fn must be callable or None, got {self.loss_fn!r}")

  def block_loss(self, index: int, output, head, ctx: LocalContext) -> jax.Array:
    """The global loss on the last block (what `block_losses` reports); 0 elsewhere."""
    del head
    if ctx.outputs is not None and index != len(ctx.outputs) - 1:
      return jnp.zeros([], jnp.float32)
    return jnp.mean(self._loss(output, ctx.batch["y"]).astype(jnp.float32))

  @property
  def _loss(self):
    return self.loss_fn or optax.losses.softmax_cross_entropy_with_integer_labels

  def estimate_grads(self, model, params, rule_state, batch, key):
    if key is None:
      raise ValueError("LikelihoodRatio samples noise: pass a PRNG key to the step")
    ctx = LocalContext(batch, rule_state, key, shared=params.shared)
    grads, noisy, clean = likelihood_ratio_grads(
        model, params.blocks, self.prepare(ctx), batch["y"], key, sigma=self.sigma,
        num_samples=self.num_samples, antithetic=self.antithetic, baseline=self.baseline,
        loss_fn=self._loss, block_input=lambda i, s: self.block_input(i, s, ctx))
    reported = clean if self.baseline else noisy
    losses = jnp.zeros(len(model.blocks), jnp.float32).at[-1].set(reported)
    zero = lambda tree: jax.tree.map(jnp.zeros_like, tree)
    full = LocalParams(grads, zero(params.heads), zero(params.shared))
    return full, losses, None

  def predict(self, model: LocalModel, params: LocalParams, x: jax.Array) -> jax.Array:
    """The argmax of the noise-free network's output."""
    outputs = model.outputs(params.blocks, self, LocalContext({"x": x}, None, None))
    return jnp.argmax(outputs[-1], axis=-1)


RECORD = registry.record(
    slug="ulr_likelihood_ratio",
    kind="local_rule",
    title="One Forward is Enough for Neural Network Training via Likelihood Ratio Method",
    reference="arXiv:2305.08960",
    experiment="ulr_gradient_estimate",
    notes=(
        "The standard likelihood-ratio estimator with Gaussian noise at every dense layer's "
        "pre-activation, all layers perturbed at once in one batched forward pass of "
        "num_samples noisy copies. Only the paper's opening was readable (no official code): "
        "of its variance-reduction techniques, antithetic pairs are implemented (named so), "
        "plus a noise-free-loss baseline (a control variate, named so); layer-wise injection, "
        "quasi-Monte Carlo sampling and the computation-flow rearrangement are not. Dense "
        "blocks only (a per-example bias perturbation realizes the pre-activation noise through "
        "the block's own apply); conv/RNN/GNN/SNN extensions not implemented. The estimate is of "
        "the gradient of the smoothed (noisy) loss, which differs from the clean gradient by "
        "O(sigma^2) for a nonlinear network."
    ),
)
