"""The layer-local family's cost benchmark: a training step's compiled memory and time vs depth.

Every local rule's experiment reports the same two numbers against backprop at several depths:

- `temp_bytes`: XLA's own memory analysis of the compiled step
  (`jaxlearn.diagnostics.compiled_memory(...).temp_bytes`: the peak of the buffers that are
  neither arguments nor outputs: activations, residuals kept for a backward pass, gradients);
- `step_time_s`: the median wall time of one call of the compiled step (optional: it needs
  real arrays and a few runs; CPU timings on a shared machine are indicative only).

A layer-local rule is shown in both of its forms: `joint` (one `jax.grad` of the summed block
objectives, the framework's default) and `sequential` (`sequential=True`: each block's gradient
before the next block runs, the memory-saving form). Forward-only rules have one form.

Usage::

    def build(depth):
      steps = {"backprop": mlp_backprop_step(depth, width, batch, inputs, classes, optimizer)}
      steps.update(local_steps(model_of(depth), rule, optimizer, batch, key))
      return steps

    sweep = depth_sweep(build, depths=(2, 4, 8), time_steps=5)
    plot_depth_sweep(ax_memory, ax_time, (2, 4, 8), sweep)
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxlearn import local
from jaxlearn.diagnostics import compiled_memory
from jaxlearn.train import classifier, mlp

Step = tuple[Callable[..., Any], tuple[Any, ...]]  # (step function, its arguments)


def _materialize(x):
  """Real arrays for `jax.ShapeDtypeStruct` leaves (zeros; fixed keys), to time a step."""
  if not isinstance(x, jax.ShapeDtypeStruct):
    return x
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    keys = jax.random.split(jax.random.key(0), max(1, int(jnp.prod(jnp.asarray(x.shape)))))
    return keys.reshape(x.shape) if x.shape else keys[0]
  return jnp.zeros(x.shape, x.dtype)


def step_cost(step: Callable[..., Any], *args: Any, time_steps: int = 0) -> dict[str, Any]:
  """`{'temp_bytes': int, 'step_time_s': float or None}` of `step` compiled for `args`.

  `args` may be arrays or `jax.ShapeDtypeStruct`s (memory needs shapes only); with
  `time_steps` > 0 the step runs once to warm up, then `time_steps` timed calls (zeros for
  abstract arguments) give the median seconds per call.
  """
  cost = {"temp_bytes": compiled_memory(step, *args).temp_bytes, "step_time_s": None}
  if time_steps > 0:
    jitted = step if hasattr(step, "lower") else jax.jit(step)
    concrete = jax.tree.map(_materialize, args)
    jax.block_until_ready(jitted(*concrete))
    times = []
    for _ in range(time_steps):
      start = time.perf_counter()
      jax.block_until_ready(jitted(*concrete))
      times.append(time.perf_counter() - start)
    cost["step_time_s"] = statistics.median(times)
  return cost


def depth_sweep(
    build: Callable[[int], Mapping[str, Step]],
    depths: Sequence[int],
    *,
    time_steps: int = 0,
) -> dict[str, dict[str, list]]:
  """`{name: {'temp_bytes': [per depth], 'step_time_s': [per depth]}}` for `build(depth)`'s steps.

  `build(depth)` returns `{name: (step, args)}` (e.g. 'backprop', 'ff_joint', 'ff_sequential').
  """
  sweep: dict[str, dict[str, list]] = {}
  for depth in depths:
    for name, (step, args) in build(depth).items():
      cost = step_cost(step, *args, time_steps=time_steps)
      entry = sweep.setdefault(name, {"temp_bytes": [], "step_time_s": []})
      entry["temp_bytes"].append(cost["temp_bytes"])
      entry["step_time_s"].append(cost["step_time_s"])
  return sweep


def mlp_backprop_step(
    depth: int,
    width: int,
    batch_size: int,
    num_inputs: int,
    num_classes: int,
    optimizer: optax.GradientTransformation,
) -> Step:
  """Backprop's step for a ReLU MLP of `depth` hidden layers (softmax cross-entropy); abstract
  arguments."""
  key = jax.random.PRNGKey(0)
  init, apply = mlp((num_inputs,), [width] * depth, num_classes)
  loss, _ = classifier(apply)

  def step(params, opt_state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params = jax.eval_shape(init, key)
  opt_state = jax.eval_shape(optimizer.init, params)
  x = jax.ShapeDtypeStruct((batch_size, num_inputs), jnp.float32)
  y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  return step, (params, opt_state, x, y)


def loss_backprop_step(
    loss: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Any,
    optimizer: optax.GradientTransformation,
) -> Step:
  """Backprop's step for any `loss(params, batch)` (e.g. a GCN on a graph batch), abstract args."""

  def step(params, opt_state, batch):
    grads = jax.grad(loss)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
  params = abstract(params)
  return step, (params, jax.eval_shape(optimizer.init, params), abstract(batch))


def local_steps(
    model: local.LocalModel,
    rule: local.LocalRule,
    optimizer: optax.GradientTransformation,
    batch: Any,
    key: jax.Array,
    *,
    prefix: str = "local",
    forms: Sequence[str] = ("joint", "sequential"),
    **step_kwargs: Any,
) -> dict[str, Step]:
  """`{f'{prefix}_{form}': (step, abstract args)}` of `local_train_step` in each form.

  `forms`: 'joint' and/or 'sequential' (rules with `uses_all_outputs` or `forward_only` have
  only 'joint'). `step_kwargs` go to `local_train_step` (e.g. `inner_steps`).
  """
  state = jax.eval_shape(
      lambda k, b: local.init_train_state(model, rule, optimizer, k, b), key, batch)
  steps = {}
  for form in forms:
    if form not in ("joint", "sequential"):
      raise ValueError(f"forms must be 'joint' or 'sequential', got {form!r}")
    step = local.local_train_step(
        model, rule, optimizer, sequential=form == "sequential", **step_kwargs)
    steps[f"{prefix}_{form}"] = (step, (state, batch, key))
  return steps


def mib(num_bytes: float) -> float:
  return num_bytes / 2**20


def describe(depths: Sequence[int], sweep: Mapping[str, Mapping[str, list]],
             labels: Mapping[str, str] | None = None) -> str:
  """One line per step: temp memory (MiB) and, if measured, step time (ms) at each depth."""
  labels = labels or {}
  parts = []
  for name, entry in sweep.items():
    text = f"{labels.get(name, name)}: " + ", ".join(
        f"{mib(b):.2f}" for b in entry["temp_bytes"]) + " MiB"
    if all(t is not None for t in entry["step_time_s"]):
      text += " / " + ", ".join(f"{1e3 * t:.2f}" for t in entry["step_time_s"]) + " ms"
    parts.append(text)
  return f"at depths {', '.join(map(str, depths))}: " + "; ".join(parts)


def plot_depth_sweep(ax_memory, ax_time, depths: Sequence[int],
                     sweep: Mapping[str, Mapping[str, list]],
                     labels: Mapping[str, str] | None = None) -> None:
  """Temp memory (MiB) vs depth on `ax_memory`; step time (ms) vs depth on `ax_time` (or None)."""
  labels = labels or {}
  for name, entry in sweep.items():
    label = labels.get(name, name)
    ax_memory.plot(depths, [mib(b) for b in entry["temp_bytes"]], marker="o", label=label)
    if ax_time is not None and all(t is not None for t in entry["step_time_s"]):
      ax_time.plot(depths, [1e3 * t for t in entry["step_time_s"]], marker="o", label=label)
  ax_memory.set(xlabel="depth (blocks)", ylabel="step temp memory (MiB)",
                title="XLA memory analysis", xticks=list(depths))
  ax_memory.legend()
  if ax_time is not None:
    ax_time.set(xlabel="depth (blocks)", ylabel="step time (ms)", title="compiled step time",
                xticks=list(depths))
    ax_time.legend()
