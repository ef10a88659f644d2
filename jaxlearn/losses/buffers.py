r"""Per-example buffers for stateful losses, and what such losses share.

Some losses keep a small state per training example and update it every time the example is
seen: ELR's running target rows (`jaxlearn.losses.elr_loss`), ALDR-KL's per-example lambdas
(`jaxlearn.losses.aldr_kl_loss`), PS-KD's previous predictions (`jaxlearn.losses.ps_kd_loss`).
Such a loss is a pure function of a batch and the batch's rows of the buffer,

    loss(logits, labels, rows, ...) -> (per-example losses, new rows),

and `buffered_classifier` keeps the whole buffer (one row per training example, indexed by the
example's position in the training set) in `jaxlearn.train.fit`'s model state: every step it
gathers the batch's rows with the indices `fit(..., loss_takes_indices=True)` passes, calls the
loss, and scatters the new rows back, all inside the jitted training step. Use it with
`sampling="without_replacement"` (fit's default): a batch then never holds an example twice, so
the scatter has one writer per row.

The helpers starting with an underscore are shared by the stateful loss modules: integer labels
or probability targets as one argument, and the checks of a state argument.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn.losses._common import (
    _as_array,
    _is_traced,
    float_array,
)

__all__ = ["buffered_classifier"]

PyTree = Any


def buffered_classifier(
    apply_fn: Callable[[PyTree, jax.Array], jax.Array],
    init_params: Callable[[jax.Array], PyTree],
    loss: Callable[..., tuple[jax.Array, PyTree]],
    buffer: PyTree,
) -> tuple[Callable, Callable, Callable]:
  r"""`(init, loss_fn, eval_fn)` for `fit(..., has_state=True, loss_takes_indices=True)`.

  The model state is ``{"buffer": buffer}``: `buffer` is an array (or a pytree of arrays) whose
  leading axis runs over the training examples, in the order of `data.x_train`. Every training
  step computes, with `indices` the batch's positions in the training set,

  .. math::

     (\ell, r') = \mathrm{loss}(f_\theta(x), y, B[\mathrm{indices}], \mathrm{epoch}), \qquad
     B[\mathrm{indices}] \leftarrow r', \qquad \text{value} = \operatorname{mean}(\ell),

  so the buffer rows carry no gradient into the next step (the loss returns them detached).
  `eval_fn` reports the softmax cross-entropy ('loss') and the 'accuracy' of the logits, as
  `jaxlearn.train.classifier` does; it does not touch the buffer.

  Args:
    apply_fn: `apply_fn(params, x) -> logits`.
    init_params: `init_params(key) -> params`.
    loss: `loss(logits, labels, rows, epoch) -> (per-example losses, new rows)`, e.g.
      ``lambda z, y, rows, epoch: elr_loss(z, y, rows, beta=0.7, lam=3.0)``; `epoch` is fit's
      int32 epoch counter (PS-KD's schedule reads it).
    buffer: the initial buffer, leading axis = number of training examples.

  Returns:
    `(init, loss_fn, eval_fn)`: `init(key) -> (params, {"buffer": buffer})`,
    `loss_fn(params, state, x, y, *, indices, epoch) -> (mean loss, new state)` and
    `eval_fn(params, state, x, y) -> {"loss", "accuracy"}`.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jaxlearn.losses import buffered_classifier, elr_loss
    >>> init_params = lambda key: jax.random.normal(key, (4, 3))  # a linear model
    >>> apply_fn = lambda w, x: x @ w
    >>> loss = lambda z, y, rows, epoch: elr_loss(z, y, rows, beta=0.7, lam=3.0)
    >>> init, loss_fn, eval_fn = buffered_classifier(apply_fn, init_params, loss,
    ...                                              jnp.zeros((10, 3)))  # 10 examples, 3 classes
    >>> params, state = init(jax.random.key(0))
    >>> x, y = jnp.ones((2, 4)), jnp.array([0, 2])
    >>> value, state = jax.jit(loss_fn)(params, state, x, y, indices=jnp.array([3, 7]), epoch=0)
    >>> [int(i) for i in np.flatnonzero(np.asarray(state["buffer"]).sum(-1))]  # rows updated
    [3, 7]
  """
  if not callable(apply_fn) or not callable(init_params) or not callable(loss):
    raise ValueError("apply_fn, init_params and loss must be callables")
  leaves = jax.tree.leaves(buffer)
  if not leaves or any(np.ndim(leaf) < 1 for leaf in leaves):
    raise ValueError("buffer must be an array or pytree of arrays with a leading example axis")
  if len({np.shape(leaf)[0] for leaf in leaves}) != 1:
    raise ValueError(
        "buffer's leaves must share their leading (example) axis, got shapes "
        f"{[np.shape(leaf) for leaf in leaves]}"
    )
  initial = jax.tree.map(jnp.asarray, buffer)

  def init(key):
    return init_params(key), {"buffer": initial}

  def loss_fn(params, state, x, y, *, indices, epoch):
    rows = jax.tree.map(lambda b: b[indices], state["buffer"])
    losses, new_rows = loss(apply_fn(params, x), y, rows, epoch)
    new_rows = jax.lax.stop_gradient(new_rows)
    buffer = jax.tree.map(
        lambda b, r: b.at[indices].set(r.astype(b.dtype)), state["buffer"], new_rows
    )
    return jnp.mean(losses.astype(jnp.float32)), {**state, "buffer": buffer}

  def eval_fn(params, state, x, y):
    del state
    logits = apply_fn(params, x).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits)
    picked = jnp.take_along_axis(log_probs, y[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return {"loss": -jnp.mean(picked), "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

  return init, loss_fn, eval_fn


# Shared by the stateful loss modules.


def _check_state(state: Any, shape: tuple[int, ...], name: str, *, positive: bool = False,
                 non_negative: bool = False) -> jax.Array:
  """A floating-point state array of exactly `shape`; concrete values finite (and > 0 or >= 0).

  Traced states are not inspected.
  """
  raw = _as_array(state)
  array = float_array(raw, name)
  if array.shape != tuple(shape):
    raise ValueError(f"{name} must have shape {tuple(shape)}, got {array.shape}")
  if not _is_traced(raw) and array.size:
    values = np.asarray(raw, np.float64)
    bad = ~np.isfinite(values)
    if positive:
      bad |= values <= 0
      allowed = "finite and > 0"
    elif non_negative:
      bad |= values < 0
      allowed = "finite and >= 0"
    else:
      allowed = "finite"
    if np.any(bad):
      raise ValueError(
          f"{name} must be {allowed}, got values in [{values.min():g}, {values.max():g}]"
      )
  return array


def _state_dtype(state: jax.Array) -> Any:
  """The dtype a state is updated in: its own, promoted to at least float32."""
  return jnp.promote_types(state.dtype, jnp.float32)
