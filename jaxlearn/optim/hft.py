"""Half Fine-Tuning (HFT): update a random half of the parameter groups, redrawn every stage.

Paper: Hui, Zhang, Wang, Xu, Sun and Wu, "HFT: Half Fine-Tuning for Large Language Models",
arXiv:2404.18466 (ACL 2025). In each fine-tuning stage, half of the parameter matrices are chosen
at random ("at category level" inside every transformer block: half of the attention matrices and
half of the feed-forward matrices) and only they are updated; the other half stay frozen and keep
the previous stage's knowledge. The paper interprets this as masked optimization with an implicit
regularizer and reports less forgetting than full fine-tuning.

Here a parameter group is a pytree leaf. Leaves are partitioned into categories by `categories`
(a pytree of hashable labels, or a callable params -> one; default: one category). At stage
s = ⌊t / stage_length⌋ each category with n leaves gets a uniformly random subset of
round(fraction · n) trainable leaves (half rounded away from zero: ⌊fraction · n + ½⌋), drawn from
`fold_in(PRNGKey(seed), s)`; updates of the others are set to 0:

  u_i ← m_i(s) · u_i,   m_i(s) ∈ {0, 1}.

The draw depends only on (seed, s), so it is jit-safe, needs no host synchronization, and is the
same on every device. State: the step count (int32).

Place it LAST in the chain (after the learning-rate step) so frozen leaves do not move at all. As
with any optax mask, the base optimizer's moments of frozen leaves still see their gradients
(PyTorch's `requires_grad=False` would skip them): a deviation that only matters when a leaf is
unfrozen again in a later stage.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "half_fine_tuning",
    "HalfFineTuningState",
]

PyTree = Any


class HalfFineTuningState(NamedTuple):
  """State of `half_fine_tuning`.

  Attributes:
    count: number of updates so far (int32).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import half_fine_tuning
    >>> half_fine_tuning(0.5).init({"w": jnp.ones(2)}).count
    Array(0, dtype=int32)
  """

  count: jax.Array  # int32 step count


def _category_indices(leaves_labels: list[Hashable]) -> list[np.ndarray]:
  """Leaf indices of every category, in first-appearance order."""
  order: dict[Hashable, list[int]] = {}
  for i, label in enumerate(leaves_labels):
    order.setdefault(label, []).append(i)
  return [np.asarray(v) for v in order.values()]


def trainable_mask(
    stage: jax.Array, n_leaves: int, categories: list[np.ndarray], fraction, seed: int
) -> jax.Array:
  """Bools of shape (n_leaves,): the leaves updated during `stage` (traced stage is fine)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), stage)
  mask = jnp.zeros(n_leaves, bool)
  for index, members in enumerate(categories):
    n = len(members)
    # A uniformly random rank per member; the round(fraction * n) lowest ranks are trainable.
    rank = jax.random.permutation(jax.random.fold_in(key, index), n)
    mask = mask.at[members].set(rank < jnp.floor(fraction * n + 0.5))
  return mask


def half_fine_tuning(
    fraction: float = 0.5,
    *,
    stage_length: int | None = None,
    seed: int = 0,
    categories: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """HFT (arXiv:2404.18466): zeroes the updates of a random (1 - fraction) of the leaves.

  Args:
    fraction: the share of each category's leaves that is updated, in [0, 1] (the paper: 0.5).
    stage_length: steps per stage (the mask is redrawn at every stage start); None: one stage.
    seed: seed of the draws (an int).
    categories: a pytree of hashable labels with the params' structure, or a callable
      params -> such a pytree; half of every category is trained. None: all leaves one category.

  Returns:
    An `optax.GradientTransformationExtraArgs`; updates keep their dtype.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import half_fine_tuning
    >>> params = {f"layer{i}": jnp.ones((2, 2)) for i in range(4)}
    >>> opt = optax.chain(optax.adam(1e-3), half_fine_tuning(0.5, seed=0))
    >>> state = opt.init(params)
    >>> grads = {k: jnp.ones((2, 2)) for k in params}
    >>> updates, state = opt.update(grads, state, params)
    >>> sum(bool(jnp.any(u != 0)) for u in updates.values())  # half of the leaves are updated
    2
  """
  _checks.check_range("fraction", fraction, 0.0, 1.0)
  if stage_length is not None:
    _checks.check_positive_int("stage_length", stage_length)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ValueError(f"seed must be an int, got {seed!r}")

  def init_fn(params):
    del params
    return HalfFineTuningState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "half_fine_tuning")
    leaves, treedef = jax.tree.flatten(updates)
    if categories is None:
      labels = [0] * len(leaves)
    else:
      tree = categories(params if params is not None else updates) if callable(
          categories) else categories
      labels = treedef.flatten_up_to(tree)
    stage = jnp.zeros([], jnp.int32) if stage_length is None else state.count // stage_length
    mask = trainable_mask(stage, len(leaves), _category_indices(labels), fraction, int(seed))
    masked = [jnp.where(mask[i], u, jnp.zeros_like(u)) for i, u in enumerate(leaves)]
    return (jax.tree.unflatten(treedef, masked),
            HalfFineTuningState(count=optax.safe_increment(state.count)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


RECORD = registry.record(
    slug="hft_half_fine_tuning",
    kind="transform",
    title="HFT: Half Fine-Tuning for Large Language Models",
    reference="arXiv:2404.18466",
    experiment="hft_half_fine_tuning_forgetting",
    notes=(
        "No official code, and the paper body could not be checked: the selection (half of each "
        "category's parameter matrices, redrawn per stage) follows the abstract and secondary "
        "summaries. Groups are pytree leaves, categories user-given (default one), "
        "round(fraction * n) per category with halves rounded up. Frozen leaves get zero "
        "updates (place the transform last); the base optimizer's moments of frozen leaves "
        "still see their gradients (PyTorch requires_grad=False would skip them)."
    ),
)
