"""The `training_step` protocol: methods that change how one step's gradient is formed.

GradNorm, gradient caching, finite-difference gradient regularization, Fish, SAM-style
perturbations, WGAN-GP critic steps and weight prediction do not fit in an optax
`GradientTransformation` (they need the loss, several gradients or a state of their own), so they
are registered with kind `training_step` and built as a `TrainingStep`: a pair of pure functions

- `init(params, key) -> state`, a `TrainState`;
- `step(state, batch, key) -> (state, metrics)`, with `batch` a tuple of arrays passed to the loss
  as `loss_fn(params, *batch)`.

Both are jittable and vmappable (over seeds and over numeric hyperparameters), deterministic given
the key, and keep the state's types fixed, so a jitted `step` compiles once. `gradient_step` is the
plain one-gradient step that every such method is compared to.

The non-finite guard (every `TrainingStep` keeps it): when the loss or any gradient leaf holds a NaN
or an infinity, the step is *skipped*: `params`, `opt_state` and `method_state` come back unchanged
(bitwise), `skipped` counts it, and `metrics['skipped']` is True. `count` counts every call,
skipped or not. `keep_if_finite` implements it for new methods.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxlearn.optim.extra_args import EXTRA_ARG_NAMES, extra_update_args

PyTree = Any
Batch = tuple[Any, ...]

__all__ = [
    "TrainState", "TrainingStep", "all_finite", "apply_guarded", "check_update_extras",
    "gradient_step", "keep_if_finite", "update_with_extras",
]


class TrainState(NamedTuple):
  """The state of a `TrainingStep`.

  Attributes:
    params: the model parameters.
    opt_state: the optax optimizer's state.
    method_state: whatever else the method keeps (GradNorm's task weights, a cached gradient...);
      `()` for the plain gradient step.
    count: number of `step` calls (int32), skipped ones included.
    skipped: number of steps skipped by the non-finite guard (int32).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import gradient_step
    >>> training = gradient_step(lambda p, x: jnp.mean((x @ p) ** 2), optax.sgd(0.1))
    >>> state = training.init(jnp.ones(3), jax.random.key(0))
    >>> state.count, state.skipped
    (Array(0, dtype=int32), Array(0, dtype=int32))
  """

  params: PyTree
  opt_state: optax.OptState
  method_state: PyTree
  count: jax.Array
  skipped: jax.Array


class TrainingStep(NamedTuple):
  """A training step as two pure functions (see the module docstring for the contract).

  Attributes:
    init: `init(params, key) -> TrainState`.
    step: `step(state, batch, key) -> (state, metrics)`; `metrics` holds at least 'loss' (the
      batch loss at the incoming parameters, float32 scalar) and 'skipped' (bool scalar).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import gradient_step
    >>> training = gradient_step(lambda p, x: jnp.mean((x @ p) ** 2), optax.sgd(0.1))
    >>> state = training.init(jnp.ones(3), jax.random.key(0))
    >>> state, metrics = jax.jit(training.step)(state, (jnp.ones((4, 3)),), jax.random.key(1))
    >>> sorted(metrics)
    ['grad_norm', 'loss', 'skipped']
  """

  init: Callable[[PyTree, jax.Array], TrainState]
  step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def all_finite(*trees: PyTree) -> jax.Array:
  """A bool scalar: every leaf of every tree is free of NaN and infinity."""
  leaves = [jnp.all(jnp.isfinite(x)) for tree in trees for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def keep_if_finite(
    old: TrainState, new: TrainState, *watched: PyTree
) -> tuple[TrainState, jax.Array]:
  """`(state, skipped)`: `new` if every leaf of `watched` (the loss, the gradients) is finite,
  else `old` with only `count` advanced and `skipped` incremented.

  `new.count` must already be `old.count + 1`. A `where` rather than a `lax.cond`, so that vmapped
  runs skip independently.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import gradient_step, keep_if_finite
    >>> training = gradient_step(lambda p, x: jnp.mean((x @ p) ** 2), optax.sgd(0.1))
    >>> old = training.init(jnp.ones(3), jax.random.key(0))
    >>> new = old._replace(params=jnp.full(3, jnp.nan), count=old.count + 1)
    >>> state, skipped = keep_if_finite(old, new, new.params)
    >>> bool(skipped), state.params
    (True, Array([1., 1., 1.], dtype=float32))
  """
  skipped = ~all_finite(*watched)
  keep = lambda n, o: jnp.where(skipped, o, n)
  state = TrainState(
      params=jax.tree.map(keep, new.params, old.params),
      opt_state=jax.tree.map(keep, new.opt_state, old.opt_state),
      method_state=jax.tree.map(keep, new.method_state, old.method_state),
      count=new.count,
      skipped=old.skipped + skipped.astype(jnp.int32),
  )
  return state, skipped


_UNCHANGED = object()


def apply_guarded(
    state: TrainState,
    updates: optax.Updates,
    opt_state: optax.OptState,
    *watched: PyTree,
    method_state: PyTree = _UNCHANGED,
) -> tuple[TrainState, jax.Array]:
  """The end of a one-update step: `updates` applied, `count` advanced, `keep_if_finite`.

  Args:
    state: the incoming state.
    updates: the optimizer's updates (from `optimizer.update`).
    opt_state: the optimizer's new state.
    *watched: what must be finite for the step to count (the loss, the gradients...).
    method_state: the method's new state; `state.method_state` kept if not given.

  Returns:
    `(state, skipped)`, as `keep_if_finite`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import apply_guarded, gradient_step
    >>> optimizer = optax.sgd(0.5)
    >>> state = gradient_step(lambda p: jnp.sum(p ** 2), optimizer).init(jnp.ones(2), None)
    >>> grads = 2 * state.params
    >>> updates, opt_state = optimizer.update(grads, state.opt_state)
    >>> new, skipped = apply_guarded(state, updates, opt_state, grads)
    >>> new.params, int(new.count), bool(skipped)
    (Array([0., 0.], dtype=float32), 1, False)
  """
  new = TrainState(
      optax.apply_updates(state.params, updates), opt_state,
      state.method_state if method_state is _UNCHANGED else method_state,
      state.count + 1, state.skipped,
  )
  return keep_if_finite(state, new, *watched)


def check_update_extras(update_extras: Sequence[str]) -> tuple[str, ...]:
  """`update_extras` as a tuple; a ValueError for a name `extra_update_args` does not build."""
  if isinstance(update_extras, str):
    raise ValueError(
        f"update_extras must be a sequence of names such as ('margins',), got {update_extras!r}"
    )
  names = tuple(update_extras)
  unknown = [n for n in names if n not in EXTRA_ARG_NAMES]
  if unknown:
    raise ValueError(f"update_extras must be drawn from {EXTRA_ARG_NAMES}, got unknown {unknown}")
  return names


def update_with_extras(
    optimizer: optax.GradientTransformation,
    names: Sequence[str],
    loss_fn: Callable[..., jax.Array],
    grads: PyTree,
    opt_state: optax.OptState,
    params: PyTree,
    value: jax.Array,
    *batch: Any,
) -> tuple[PyTree, optax.OptState]:
  """`optimizer.update` with `value` and the extra arguments in `names` (`optim.extra_args`).

  `value` and `grads` come from the caller's `value_and_grad`, so 'value' and 'grad' cost no
  extra pass; the others are built by `extra_update_args`.
  """
  optimizer = optax.with_extra_args_support(optimizer)
  rest = [n for n in names if n not in ("value", "grad")]
  extras = extra_update_args(rest, loss_fn, params, *batch)
  if "grad" in names:
    extras["grad"] = grads
  return optimizer.update(grads, opt_state, params, value=value, **extras)


def gradient_step(
    loss_fn: Callable[..., jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    update_extras: Sequence[str] = (),
) -> TrainingStep:
  """The plain step: one gradient of `loss_fn` on the batch, one optimizer update.

  The reference that every `training_step` method is compared to.

  Args:
    loss_fn: `loss_fn(params, *batch) -> scalar`, the mean loss over the batch.
    optimizer: any optax transformation; `update` receives `value=` (the batch loss) and the
      extra arguments named in `update_extras`.
    update_extras: names from `jaxlearn.optim.extra_args.EXTRA_ARG_NAMES` that the optimizer's
      `update` needs (a registry record's `update_extras`).

  Returns:
    A `TrainingStep`; its metrics are 'loss', 'grad_norm' and 'skipped'.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import gradient_step
    >>> def loss_fn(params, x, y):
    ...   return jnp.mean((x @ params - y) ** 2)
    >>> training = gradient_step(loss_fn, optax.adam(1e-2))
    >>> state = training.init(jnp.zeros(3), jax.random.key(0))
    >>> batch = (jnp.ones((4, 3)), jnp.ones(4))
    >>> state, metrics = jax.jit(training.step)(state, batch, jax.random.key(1))
    >>> int(state.count)
    1
  """
  names = check_update_extras(update_extras)

  def init(params, key):
    del key  # the plain step has no randomness
    zero = jnp.zeros([], jnp.int32)
    return TrainState(params, optimizer.init(params), (), zero, zero)

  def step(state, batch, key):
    del key
    batch = tuple(batch)
    value, grads = jax.value_and_grad(loss_fn)(state.params, *batch)
    updates, opt_state = update_with_extras(
        optimizer, names, loss_fn, grads, state.opt_state, state.params, value, *batch
    )
    new, skipped = apply_guarded(state, updates, opt_state, value, grads)
    metrics = {
        "loss": jnp.asarray(value, jnp.float32),
        "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
        "skipped": skipped,
    }
    return new, metrics

  return TrainingStep(init, step)
