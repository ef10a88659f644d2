r"""Statistics that a layer updates in its backward pass: the shared design.

PowerNorm (arXiv:2003.07845), Online Normalization (arXiv:1905.05894) and Unified Normalization
keep statistics that their official PyTorch code updates **inside the backward pass** (PowerNorm's
:math:`\Gamma`, Online Normalization's :math:`u, v`, UN's ``ema_gz`` / ``buffer_gz``). A JAX
`jax.custom_vjp` backward cannot mutate state, so every such layer follows one rule:

**The backward statistic is a primal input of the layer's `custom_vjp` function, and the
cotangent the backward returns for it is its increment** :math:`\Delta s`:

.. math::

   \frac{\partial \mathcal{L}}{\partial s} := \Delta s
   \qquad\text{and after the step}\qquad s \leftarrow s + \Delta s .

The forward never depends on :math:`s` through a path JAX differentiates (the layer's backward
rule alone produces this cotangent), so :math:`\Delta s` is exactly the update of the official
code, e.g. PowerNorm's :math:`\Gamma \mathrel{+}= \operatorname{mean}(\tilde g\, z)`; updates of
the form `new = f(old, ...)` return `new - old`.

Storage:

* NNX: the statistic is a :class:`BackwardStat` (an `nnx.Variable` subclass, neither a `Param`
  nor a `BatchStat`). `nnx.Optimizer(model, tx, wrt=nnx.Param)` never sees it.
* Linen: the variable collection ``"backward_stats"`` (:data:`BACKWARD_STATS`), registered as the
  Linen name of :class:`BackwardStat`; `nnx.state(model, BackwardStat)` has the structure of that
  collection.

A training step differentiates the loss with respect to the parameters **and** the backward
statistics (:data:`PARAMS_AND_BACKWARD_STATS`), then hands the gradients to ONE helper,
:func:`apply_backward_stats` (NNX) or :func:`apply_backward_stats_to_variables` (Linen and any
pure pytree of variables), which adds the increments to the statistics and returns the parameter
gradients alone, for the optimizer. The increments are **never** given to an optimizer (weight
decay, momentum or Adam's scaling would corrupt them).

Semantics (tested in `tests/nn/test_backward_stats.py` and by the layer battery):

* **One increment per layer call per differentiation.** A layer called twice in one loss adds two
  increments (JAX sums the cotangents of a shared input), where the sequential PyTorch code would
  compute the second from the first's update. `jax.grad` with respect to the parameters only, or
  a forward pass, leaves the statistics unchanged (so does not calling the helper; calling it
  with parameter-only gradients of a model that has backward statistics raises).
* **Data parallelism** (`axis_name`): take the gradient per device, inside `pmap`, `shard_map`
  or a `vmap` with that axis name, as usual. The layer's backward averages its increment over the
  axis (`lax.pmean`, :func:`sync_increment`), so every device holds the same increment; averaging
  the gradients over devices afterwards (`lax.pmean`) leaves it unchanged. Each device's local
  increment is computed from that device's own cotangent (its local loss), as a per-device PyTorch
  backward would. Differentiating *outside* a `vmap` that broadcasts the statistic
  (`in_axes=None`) is not supported: the backward's collective then has no bound axis (JAX
  raises "unbound axis name"; tested). Layers whose statistics are streams per device (Online
  Normalization) say so and do not synchronise them.
* **Gradient accumulation** (`optax.MultiSteps` and similar wrappers): the increments bypass the
  optimizer wrapper. The chosen semantics is that of the PyTorch layers, which update their
  statistics in every backward: call :func:`apply_backward_stats` after **every micro-step**; the
  wrapper accumulates only the parameter gradients, and the next micro-batch's backward already
  sees the updated statistics.
* **Checkpointing / remat and jit**: nothing special; the statistic is ordinary state.

Conventions for a layer with backward statistics (PowerNorm, Online Normalization, UN):

* statistics and increments in float32; the increment is zero in evaluation mode (the layer does
  not use its custom backward there);
* the constructor takes ``custom_backward: bool = True``; ``False`` runs the **same forward** under
  plain JAX autodiff, with the statistics the official backward treats as constants under
  `jax.lax.stop_gradient`, and a zero increment. It is the reference of the battery's check "with
  the statistic's rate set to the identity, the custom gradient equals autodiff" and an ablation.

Example:
  The helper on a toy layer whose backward counts the cotangent it receives:

  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from jaxlearn import nn as jnn
  >>> @jax.custom_vjp
  ... def tap(x, seen):
  ...   return x
  >>> tap.defvjp(lambda x, seen: (x, None), lambda _, g: (g, jnp.sum(g)[None]))
  >>> class Tap(nnx.Module):
  ...   def __init__(self):
  ...     self.seen = jnn.BackwardStat(jnp.zeros((1,)))
  ...   def __call__(self, x):
  ...     return tap(x, self.seen[...])
  >>> model = Tap()
  >>> loss = lambda m, x: jnp.sum(3.0 * m(x))
  >>> grads = nnx.grad(loss, argnums=nnx.DiffState(0, jnn.PARAMS_AND_BACKWARD_STATS))(
  ...     model, jnp.ones((2,)))
  >>> param_grads = jnn.apply_backward_stats(model, grads)  # seen += 6
  >>> model.seen[...]
  Array([6.], dtype=float32)
  >>> jax.tree.leaves(param_grads)  # the toy has no parameters
  []

References:
  Shen, Yao, Gholami, Mahoney and Keutzer, "PowerNorm: Rethinking Batch Normalization in
  Transformers", ICML 2020, https://arxiv.org/abs/2003.07845 (official code:
  github.com/sIncerass/powernorm).

  Chiley, Sharapov, Kosson, Koster, Reece, Samaniego de la Fuente, Subbiah and James, "Online
  Normalization for Training Neural Networks", NeurIPS 2019, https://arxiv.org/abs/1905.05894
  (official code: github.com/Cerebras/online-normalization).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "BackwardStat",
    "BACKWARD_STATS",
    "PARAMS_AND_BACKWARD_STATS",
    "apply_backward_stats",
    "apply_backward_stats_to_variables",
    "sync_increment",
]

BACKWARD_STATS = "backward_stats"


class BackwardStat(nnx.Variable):
  """A statistic updated by the layer's backward pass (Linen collection ``"backward_stats"``).

  Differentiate it together with the parameters (:data:`PARAMS_AND_BACKWARD_STATS`); its
  "gradient" is the increment, added by :func:`apply_backward_stats`. It is neither an
  `nnx.Param` (no optimizer touches it) nor an `nnx.BatchStat`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.PowerNorm(4, rngs=nnx.Rngs(0))
    >>> stats = nnx.state(norm, jnn.BackwardStat)  # PowerNorm's Gamma, as in Linen's collection
    >>> jnn.BACKWARD_STATS, [path[-1] for path, _ in nnx.to_flat_state(stats)]
    ('backward_stats', ['ema_gz'])
  """


nnx.register_variable_name(BACKWARD_STATS, BackwardStat, overwrite=True)

#: The NNX filter to differentiate with: `nnx.DiffState(0, PARAMS_AND_BACKWARD_STATS)`.
PARAMS_AND_BACKWARD_STATS = nnx.Any(nnx.Param, BackwardStat)


def sync_increment(increment: Any, axis_name: str | None) -> Any:
  """The increment every device applies: its mean over `axis_name` (unchanged if None).

  Layers call this in their backward, so that every device holds the same increment.

  Args:
    increment: a pytree of per-device increments (float32).
    axis_name: the data-parallel axis (vmap / pmap / shard_map), or None.

  Returns:
    The increments averaged over the axis.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import sync_increment
    >>> jax.vmap(lambda d: sync_increment(d, "batch"), axis_name="batch")(jnp.array([1.0, 3.0]))
    Array([2., 2.], dtype=float32)
  """
  if axis_name is None:
    return increment
  return jax.lax.pmean(increment, axis_name)


def apply_backward_stats(model: nnx.Module, grads: nnx.State) -> nnx.State:
  """Adds the backward-statistic increments in `grads` to `model`, in place (NNX).

  Call it once after every differentiation (every micro-step under gradient accumulation), before
  the optimizer. Gradients taken with respect to the parameters only carry no increments: for a
  model that has backward statistics that is an error (the statistics would silently never
  move), and a `ValueError` is raised.

  Args:
    model: the NNX model that was differentiated.
    grads: its gradients, from `nnx.grad(..., argnums=nnx.DiffState(0,
      PARAMS_AND_BACKWARD_STATS))` (or any state holding the :class:`BackwardStat` increments).

  Returns:
    `grads` without the :class:`BackwardStat` entries: what `nnx.Optimizer(model, tx,
    wrt=nnx.Param).update(model, ...)` takes.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> class M(nnx.Module):
    ...   def __init__(self):
    ...     self.w = nnx.Param(jnp.ones(2))
    ...     self.s = jnn.BackwardStat(jnp.zeros(2))
    >>> model = M()
    >>> grads = nnx.state(model)  # stands in for real gradients: increments of 0, 0
    >>> jax.tree.leaves(jnn.apply_backward_stats(model, grads))
    [Array([1., 1.], dtype=float32)]
  """
  increments, rest = nnx.filter_state(grads, BackwardStat, ...)
  stats = nnx.state(model, BackwardStat)
  if jax.tree.leaves(increments) or jax.tree.leaves(stats):
    if jax.tree.structure(stats) != jax.tree.structure(increments):
      raise ValueError(
          "apply_backward_stats expects the gradients of every BackwardStat of the model"
          " (differentiate with nnx.DiffState(0, PARAMS_AND_BACKWARD_STATS))"
      )
    nnx.update(model, jax.tree.map(lambda s, d: s + d.astype(s.dtype), stats, increments))
  return rest


def apply_backward_stats_to_variables(
    variables: dict[str, Any], grads: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Adds the increments `grads["backward_stats"]` to `variables["backward_stats"]` (pure).

  The Linen (and pure-pytree) twin of :func:`apply_backward_stats`: differentiate with respect to
  a dict holding the ``"params"`` and ``"backward_stats"`` collections.

  Args:
    variables: Linen variables (a dict of collections).
    grads: gradients with respect to a sub-dict of `variables` holding ``"backward_stats"``.

  Returns:
    `(new_variables, param_grads)`: the variables with the statistics updated, and `grads`
    without the ``"backward_stats"`` entry, for the optimizer.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import apply_backward_stats_to_variables
    >>> variables = {"params": {"w": jnp.ones(2)}, "backward_stats": {"s": jnp.zeros(2)}}
    >>> grads = {"params": {"w": jnp.ones(2)}, "backward_stats": {"s": jnp.full(2, 0.5)}}
    >>> new, param_grads = apply_backward_stats_to_variables(variables, grads)
    >>> new["backward_stats"]["s"], list(param_grads)
    (Array([0.5, 0.5], dtype=float32), ['params'])
  """
  grads = dict(grads)
  increments = grads.pop(BACKWARD_STATS, None)
  if increments is None:
    return variables, grads
  if BACKWARD_STATS not in variables:
    raise ValueError(
        "apply_backward_stats_to_variables expects the variables to hold the 'backward_stats'"
        " collection the gradients have"
    )
  stats = jax.tree.map(
      lambda s, d: s + jnp.asarray(d).astype(s.dtype), variables[BACKWARD_STATS], increments
  )
  return {**variables, BACKWARD_STATS: stats}, grads
