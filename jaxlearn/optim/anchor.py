"""Decay toward an anchor: L2 and EWC parameter regularization for continual learning.

Paper: Smith, Tian, Halbe, Hsu and Kira, "A Closer Look at Rehearsal-Free Continual Learning",
arXiv:2203.17269 (CVPR-W 2023). When a new task starts, the weights learned so far, θ*, become an
anchor, and the new task's loss gets a penalty pulling the weights back to it:

  L2:   R(θ) = (λ/2) Σ_i (θ_i − θ*_i)²,
  EWC:  R(θ) = (λ/2) Σ_i F_i (θ_i − θ*_i)²   (Kirkpatrick et al. 2017, arXiv:1612.00796),

with F the diagonal Fisher information at θ* (`fisher_diagonal`). The paper's finding is that in the
rehearsal-free setting, starting from a pretrained model, plain L2 beats EWC and feature
distillation (and, in a ViT's self-attention blocks, prompting methods on ImageNet-R).

`decay_to_anchor(strength)` adds ∇R = λ · F ⊙ (θ − θ*) (F = 1 for L2) to the incoming updates, so
`optax.chain(decay_to_anchor(λ), base_optimizer)` trains on loss + R exactly (the coupled form, as
a loss term). Put it after the base optimizer's scaling and before the learning-rate step to get
the decoupled form instead (AdamW-style, but toward θ* rather than 0). `optax.add_decayed_weights`
is the special case θ* = 0.

State: the anchor θ* (a float32 or wider copy of the params at `init`, so a fresh optimizer for a
new task anchors at the weights it starts from, and a step can donate params and state) and,
with `weighted=True`, the importance F (ones at `init`). `set_anchor` replaces both inside any
optimizer state (chains, masks, injected hyperparameters). Updates are returned in the
gradient's dtype.
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
    "decay_to_anchor",
    "set_anchor",
    "anchor_penalty",
    "fisher_diagonal",
    "DecayToAnchorState",
]

PyTree = Any


class DecayToAnchorState(NamedTuple):
  """anchor: θ*, float32 or wider; anchor_importance: F (EWC) or None (L2).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import decay_to_anchor
    >>> state = decay_to_anchor(0.1).init({"w": jnp.ones(2)})
    >>> state.anchor_importance is None  # plain L2 (weighted=False)
    True
  """

  anchor: PyTree
  anchor_importance: PyTree


def _wide(x):
  return jnp.asarray(x, _common.wide_dtype(jnp.asarray(x).dtype))


def decay_to_anchor(
    strength: optax.ScalarOrSchedule,
    *,
    weighted: bool = False,
    mask: _common.MaskOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Adds λ · F ⊙ (θ − θ*) to the updates (arXiv:2203.17269; EWC with `weighted=True`).

  Args:
    strength: λ >= 0, a number (tune or change it with `inject_hyperparams`).
    weighted: keep a per-element importance F in the state (EWC); False: F = 1 (L2).
    mask: a pytree of bools (or a callable params -> one) choosing the regularized leaves (the
      paper regularizes only a ViT's self-attention blocks); None: every leaf.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` requires `params`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import decay_to_anchor, set_anchor
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(decay_to_anchor(0.1), optax.sgd(0.1))
    >>> state = set_anchor(opt.init(params), params)  # after task 1: remember theta*
    >>> updates, state = opt.update({"w": jnp.zeros((3, 2))}, state, {"w": jnp.full((3, 2), 2.0)})
    >>> updates["w"][0, 0]  # pulled back towards the anchor: -0.1 * 0.1 * (2 - 1)
    Array(-0.01, dtype=float32)
  """
  if callable(strength):
    raise ValueError(
        "strength must be a number (wrap the factory in jaxlearn.optim.inject_hyperparams to "
        f"change it during training), got {strength!r}"
    )
  _checks.check_non_negative("strength", strength)
  _checks.check_bool("weighted", weighted)
  _common.check_mask(mask, "mask")

  def init_fn(params):
    # A copy, never the parameter arrays themselves: a step that donates params and state
    # would otherwise donate the same buffer twice.
    anchor = jax.tree.map(
        lambda p: jnp.array(p, dtype=_common.wide_dtype(jnp.asarray(p).dtype), copy=True), params)
    importance = jax.tree.map(jnp.ones_like, anchor) if weighted else None
    return DecayToAnchorState(anchor=anchor, anchor_importance=importance)

  def pull(u, p, anchor, f=None):
    term = strength * (_wide(p) - anchor)
    if f is not None:
      term = f * term
    return (u.astype(term.dtype) + term).astype(u.dtype)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "decay_to_anchor", updates=updates)
    trees = (updates, params, state.anchor)
    if weighted:
      trees += (state.anchor_importance,)
    return jax.tree.map(pull, *trees), state

  transform = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  if mask is not None:
    return optax.masked(transform, mask)
  return transform


def set_anchor(opt_state: PyTree, params: PyTree, importance: PyTree | None = None) -> PyTree:
  """Returns `opt_state` with every `decay_to_anchor` anchor set to `params` (and F to `importance`).

  Works on any optimizer state containing a `DecayToAnchorState` (inside chains, `optax.masked`,
  `inject_hyperparams`). `importance` is required by, and only accepted for, weighted (EWC) states.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import decay_to_anchor, set_anchor
    >>> params = {"w": jnp.ones(2)}
    >>> opt = optax.chain(decay_to_anchor(0.1, weighted=True), optax.adam(1e-3))
    >>> state = set_anchor(opt.init(params), params, importance={"w": jnp.array([1.0, 0.0])})
    >>> state[0].anchor_importance["w"]
    Array([1., 0.], dtype=float32)
  """

  def replace(node):
    if not isinstance(node, DecayToAnchorState):
      return node
    pick = lambda old, new: (old if isinstance(old, optax.MaskedNode)
                             else jnp.asarray(new, old.dtype))
    is_masked = lambda x: isinstance(x, optax.MaskedNode)
    anchor = jax.tree.map(pick, node.anchor, params, is_leaf=is_masked)
    if node.anchor_importance is None:
      if importance is not None:
        raise ValueError("importance was given but the state is unweighted (weighted=False)")
      return DecayToAnchorState(anchor, None)
    if importance is None:
      raise ValueError("importance is required for a weighted (EWC) decay_to_anchor state")
    return DecayToAnchorState(
        anchor, jax.tree.map(pick, node.anchor_importance, importance, is_leaf=is_masked))

  return jax.tree.map(replace, opt_state, is_leaf=lambda x: isinstance(x, DecayToAnchorState))


def anchor_penalty(params: PyTree, anchor: PyTree, strength, importance: PyTree | None = None):
  """R(θ) = (λ/2) Σ F (θ − θ*)², the loss-term form of `decay_to_anchor` (F = 1 if None).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import anchor_penalty
    >>> anchor_penalty({"w": jnp.array([2.0, 1.0])}, {"w": jnp.ones(2)}, strength=0.5)
    Array(0.25, dtype=float32)
  """
  if importance is None:
    importance = jax.tree.map(lambda _: 1.0, params)
  terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(_wide(p) - a)), params, anchor,
                       importance)
  return 0.5 * strength * sum(jax.tree.leaves(terms))


def fisher_diagonal(
    example_loss: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
    params: PyTree,
    x: jax.Array,
    y: jax.Array,
) -> PyTree:
  """The empirical diagonal Fisher: the mean over examples of the squared per-example gradient.

  F_i = (1/N) Σ_n (∂ℓ(θ; x_n, y_n) / ∂θ_i)², with ℓ the negative log-likelihood of the observed
  label (EWC's "empirical Fisher"; Kirkpatrick et al. sample labels from the model instead).

  Args:
    example_loss: `example_loss(params, x_n, y_n) -> scalar` for ONE example.
    params: the anchor θ*.
    x, y: the examples, with a leading batch axis.

  Returns:
    A pytree like `params` (float32 or wider).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.optim import fisher_diagonal
    >>> def example_loss(params, x, y):  # one example's negative log-likelihood
    ...   return -jax.nn.log_softmax(x @ params["w"])[y]
    >>> params = {"w": jnp.zeros((4, 3))}
    >>> fisher = jax.jit(fisher_diagonal, static_argnums=0)(
    ...     example_loss, params, jnp.ones((8, 4)), jnp.zeros(8, jnp.int32))
    >>> fisher["w"].shape
    (4, 3)
  """
  grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, x, y)
  return jax.tree.map(lambda g: jnp.mean(jnp.square(_wide(g)), axis=0), grads)


RECORD = registry.record(
    slug="rehearsal_free_cl_l2",
    kind="transform",
    title="A Closer Look at Rehearsal-Free Continual Learning",
    reference="arXiv:2203.17269",
    experiment="rehearsal_free_cl_l2_split_digits",
    also=(
        "jaxlearn.data.split_digits",
        "jaxlearn.data.split_by_class",
    ),
    notes=(
        "Penalty (lambda/2) sum F (theta - theta*)^2 added as its gradient (coupled form; "
        "decoupled if placed after the base scaling). The paper's exact normalization (lambda "
        "vs lambda/2), its lambda values and Fisher estimator could not be established; "
        "fisher_diagonal is the empirical Fisher (observed labels), and the experiment sums the "
        "Fishers of past tasks around one anchor (the previous task's weights)."
    ),
)
