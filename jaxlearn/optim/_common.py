"""What jaxlearn's optimizers share; method modules import it from here, not from each other.

- The alias: `chain(scale_by_<name>(...), decayed_weights(...), scale_by_learning_rate(lr))`, so
  weight decay is multiplied by the learning rate (the PyTorch/AdamW convention, also optax's), and
  the guard against optax's inject_hyperparams-mask trap.
- The dtype policy: state in float32 or wider (`wide_dtype`, `state_zeros`), updates returned in
  each gradient's dtype; `compute_in_float32` gives any optax transform that policy.
- Moments: exponential moving averages and their bias corrections.
- Checks every transform that reads the weights needs (`require_params`, `check_params`: update
  shapes equal to the parameters', floating-point dtypes; masks, channel axes).
- Weight decay in two forms: decoupled L2 (`decayed_weights`) and proximal L1 (`soft_threshold`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import _checks

__all__ = [
    "decayed_weights",
    "inject_hyperparams",
    "compute_in_float32",
    "soft_threshold",
    "soft_threshold_leaf",
]

MaskOrFn = Any  # a pytree (or pytree prefix) of bools, or a callable params -> such a pytree

_MASK_TRAP = (
    "{name} arrived as a single value ({value!r}), not a tree of bools or a callable. This "
    "happens when a callable mask is passed through optax.inject_hyperparams, which mistakes it "
    "for a schedule and calls it with the step count, silently switching weight decay off. Use "
    "jaxlearn.optim.inject_hyperparams, or pass static_args=('{name}',) to "
    "optax.inject_hyperparams."
)


def check_mask(mask: MaskOrFn, name: str = "weight_decay_mask") -> MaskOrFn:
  """Returns `mask` unchanged, or raises if it is a single value (the inject_hyperparams trap).

  optax.inject_hyperparams calls a callable mask with the step count; a mask function that maps
  over its argument then returns one bool (optax 0.2.8 passes it on as a Python bool, older
  versions as an array). A lone bool is never a useful mask (True is None, False is
  weight_decay=0), so bools and arrays are rejected.
  """
  if isinstance(mask, (bool, np.bool_, np.ndarray, jax.Array, jax.core.Tracer)):
    raise ValueError(_MASK_TRAP.format(name=name, value=mask))
  return mask


def decayed_weights(
    weight_decay: optax.ScalarOrSchedule, mask: MaskOrFn | None = None
) -> optax.GradientTransformation:
  """`optax.add_decayed_weights` with argument checks.

  Always the same transform, even for weight_decay=0, so the state structure does not depend on a
  hyperparameter's value (that would break optax.inject_hyperparams under jit).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import decayed_weights
    >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    >>> opt = optax.chain(optax.scale_by_adam(), decayed_weights(1e-2, {"w": True, "b": False}),
    ...                   optax.scale_by_learning_rate(1e-3))
    >>> updates, _ = opt.update({"w": jnp.zeros(2), "b": jnp.zeros(2)}, opt.init(params), params)
  """
  _checks.check_non_negative("weight_decay", weight_decay)
  check_mask(mask)
  return with_params_check(optax.add_decayed_weights(weight_decay, mask), "decayed_weights")


def learning_rate_step(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """`optax.scale_by_learning_rate` (multiplies by -lr) after checking lr >= 0."""
  _checks.check_non_negative("learning_rate", learning_rate)
  return with_params_check(optax.scale_by_learning_rate(learning_rate), "learning_rate_step")


def with_params_check(
    inner: optax.GradientTransformation, name: str
) -> optax.GradientTransformationExtraArgs:
  """`inner`, same state, whose `update` first runs `check_params` (named `name`) on its params."""
  inner = optax.with_extra_args_support(inner)

  def update_fn(updates, state, params=None, **extra_args):
    check_params(updates, params, name)
    return inner.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def alias(
    scale_transform: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Chains a `scale_by_*` transform with decoupled weight decay and the learning-rate step."""
  return optax.chain(
      scale_transform,
      decayed_weights(weight_decay, weight_decay_mask),
      learning_rate_step(learning_rate),
  )


def inject_hyperparams(
    factory: Callable[..., optax.GradientTransformation],
    static_args: str | tuple[str, ...] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., optax.GradientTransformationExtraArgs]:
  """`optax.inject_hyperparams` that keeps masks and keyword-only options static.

  optax would call a callable `weight_decay_mask` as if it were a schedule (optax issues #57,
  #1373) and would turn an integer option such as an axis or a window length into a traced array.
  Here every argument whose name ends in `mask`, and every keyword-only argument (jaxlearn's
  convention for non-numeric options: `nesterov`, `channel_axis`...), is passed through untouched;
  the numeric hyperparameters before the `*` are injected.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn import optim
    >>> matrices = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    >>> opt = optim.inject_hyperparams(optim.adamp)(1e-3, weight_decay=1e-2,
    ...                                              weight_decay_mask=matrices)
    >>> state = opt.init({"w": jnp.ones((3, 2)), "b": jnp.zeros(2)})
    >>> sorted(state.hyperparams)  # the mask stays static
    ['b1', 'b2', 'delta', 'eps', 'learning_rate', 'wd_ratio', 'weight_decay']
  """
  if isinstance(static_args, str):
    static_args = (static_args,)
  parameters = inspect.signature(factory).parameters.values()
  always_static = tuple(
      p.name for p in parameters if p.name.endswith("mask") or p.kind is p.KEYWORD_ONLY
  )
  return optax.inject_hyperparams(
      factory, static_args=tuple(static_args) + always_static, hyperparam_dtype=hyperparam_dtype
  )


# ---------------------------------------------------------------------------------------------
# The dtype policy: state in float32 or wider, updates in the gradient's dtype.


def wide_dtype(dtype: Any) -> Any:
  """`dtype` promoted to at least float32 (float16/bfloat16 -> float32; float64, complex kept)."""
  return jnp.promote_types(dtype, jnp.float32)


def _at_least_float32(dtype: Any) -> Any:
  """float16/bfloat16 -> float32; wider floats, complex and non-float dtypes are kept."""
  if not jnp.issubdtype(dtype, jnp.inexact):
    return dtype
  return wide_dtype(dtype)


def _upcast(x: Any) -> Any:
  """`x` in float32 or wider; abstract `jax.ShapeDtypeStruct` leaves stay abstract."""
  dtype = _at_least_float32(x.dtype)
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
  return jnp.asarray(x).astype(dtype)


def compute_in_float32(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Runs `inner` in float32 (or wider) and returns its updates in each gradient's dtype.

  `init` sees the parameters upcast to at least float32, so state that optax sizes "like the
  parameters" is float32 for bfloat16/float16 parameters; `update` sees upcast gradients and
  parameters, so norms and other reductions run in float32; the updates it returns are cast back
  to the dtype of the incoming gradients (float64 and complex leaves are left as they are). This
  also removes a dtype hazard of optax transforms under `optax.inject_hyperparams`: injected
  hyperparameters are float32 arrays, which promote bfloat16 updates to float32 (or, in
  `optax.clip_by_global_norm`, make `lax.select` fail).

  Args:
    inner: any optax gradient transformation; extra keyword arguments of `update` are forwarded
      when it accepts them and dropped otherwise.

  Returns:
    A `GradientTransformationExtraArgs` with the same state as `inner`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import compute_in_float32
    >>> opt = compute_in_float32(optax.adam(1e-3))
    >>> params = {"w": jnp.ones(3, jnp.bfloat16)}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.ones(3, jnp.bfloat16)}, state, params)
    >>> state[0].mu["w"].dtype, updates["w"].dtype
    (dtype('float32'), dtype(bfloat16))
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return inner.init(jax.tree.map(_upcast, params))

  def update_fn(updates, state, params=None, **extra_args):
    wide_params = None if params is None else jax.tree.map(_upcast, params)
    new_updates, state = inner.update(
        jax.tree.map(_upcast, updates), state, wide_params, **extra_args
    )
    new_updates = jax.tree.map(lambda new, old: new.astype(old.dtype), new_updates, updates)
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


CACHED_SIZE = 1 << 16  # elements: a leaf this small stays in cache, its passes cost little


def variadic_sums(operands, axes) -> tuple[jax.Array, ...]:
  """Sums of each operand (all of one shape) over `axes`, as one variadic reduction: one pass
  over the elements for all of them."""
  zero = jnp.zeros((), operands[0].dtype)
  return jax.lax.reduce(tuple(operands), (zero,) * len(operands),
                        lambda a, b: tuple(x + y for x, y in zip(a, b)), tuple(axes))


def total_sums(operands) -> tuple[jax.Array, ...]:
  """The sum of all elements of each operand (all of one shape), in one pass over them.

  One variadic reduction over the minor axis, then a sum of each operand's row totals: on
  XLA:CPU a reduction of several arrays to scalars over all their axes (or a stack of them to a
  vector) runs 2.5x slower than one over the contiguous minor axis.
  """
  if operands[0].ndim == 0:
    return tuple(operands)
  partials = variadic_sums(operands, (operands[0].ndim - 1,))
  return tuple(jnp.sum(p) for p in partials)


def leaf_sums_total(sums: list[jax.Array]) -> jax.Array:
  """The total of per-leaf scalar sums, as one reduction that XLA computes once.

  The sums are stacked behind an `optimization_barrier` and reduced in one op. A Python `sum`,
  or a plain `jnp.sum` of the stack (which XLA rewrites into the same chain), gives an N-term
  chain of scalar additions that XLA fuses into each of the N leaves' kernels that read the
  total: N² instructions, so compiling takes time quadratic in the number of leaves.
  """
  return jnp.sum(jax.lax.optimization_barrier(jnp.stack(sums)))


def state_zeros(params: optax.Params, dtype: Any = None) -> optax.Updates:
  """Zeros like `params`, in `dtype` or else float32 or wider, so low-precision moments do not
  underflow."""
  return jax.tree.map(
      lambda p: optax.tree.zeros_like(p, dtype=dtype or wide_dtype(p.dtype)), params
  )


# ---------------------------------------------------------------------------------------------
# Moments: exponential moving averages started at zero, and their bias corrections.


def update_moment(
    updates: optax.Updates, moments: optax.Updates, decay, order: int = 1
) -> optax.Updates:
  """`decay * m + (1 - decay) * g**order` for every leaf (order 1 or 2), in the moment's dtype.

  The gradient is cast to the moment's dtype (float32 or wider) before any arithmetic, so a
  bfloat16 gradient is squared and scaled in float32.
  """
  if order not in (1, 2):
    raise ValueError(f"order must be 1 or 2, got {order!r}")

  def leaf(g, m):
    g = g.astype(m.dtype)
    if order == 2:
      g = jnp.square(g)
    return (decay * m + (1.0 - decay) * g).astype(m.dtype)

  return jax.tree.map(leaf, updates, moments)


def bias_correction(decay, count) -> jax.Array:
  """`1 - decay**count`: the weight an EMA started at zero has given the data after `count` steps.

  `count` is used as given (the int32 step count, or that count as a float).
  """
  return 1 - decay**count


def folded_bias_correction(b1, b2, count) -> jax.Array:
  """`sqrt(1 - b2**count) / (1 - b1**count)`: Adam's two bias corrections folded into the step
  size, for `m / (sqrt(v) + eps)` (PyTorch's Adam and Hugging Face's AdamW fold them this way)."""
  return jnp.sqrt(bias_correction(b2, count)) / bias_correction(b1, count)


def debias(moments: optax.Updates, decay, count) -> optax.Updates:
  """The bias-corrected moments `m / (1 - decay**count)`."""
  correction = bias_correction(decay, count)
  return jax.tree.map(lambda m: m / correction, moments)


# ---------------------------------------------------------------------------------------------
# Checks and helpers of transforms that read the weights.


def require_params(
    params: optax.Params | None, name: str, why: str = "", *, updates: optax.Updates = None
) -> None:
  """Raises a ValueError naming `name` when `update` was called without `params`; with `updates`,
  also runs `check_params`."""
  if params is None:
    reason = f" ({why})" if why else ""
    raise ValueError(f"{name} needs params: call update(updates, state, params){reason}.")
  if updates is not None:
    check_params(updates, params, name)


def check_params(updates: optax.Updates, params: optax.Params | None, name: str) -> None:
  """Raises a ValueError naming `name` and the leaf unless `updates` fit `params` exactly.

  Every update leaf must have its parameter's shape (a shape that merely broadcasts would change
  the parameter's shape in `optax.apply_updates`), and both must be floating point or complex
  (an integer parameter would truncate every step: 5 - 0.1 -> 4). Shapes and dtypes are static
  under jit, so the check costs nothing at run time. Nothing is checked when `params` is None.
  """
  if params is None:
    return

  def leaf(path, u, p):
    where = jax.tree_util.keystr(path)
    for label, x in (("params", p), ("updates", u)):
      dtype = x.dtype if hasattr(x, "dtype") else jnp.result_type(x)
      if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"{name}: {label}{where} has dtype {dtype}; jaxlearn optimizers need "
                         "floating-point (or complex) params and updates")
    u_shape, p_shape = tuple(np.shape(u)), tuple(np.shape(p))
    if u_shape != p_shape:
      raise ValueError(f"{name}: updates{where} has shape {u_shape} but params{where} has "
                       f"shape {p_shape}; each update must have its parameter's shape")

  jax.tree_util.tree_map_with_path(leaf, updates, params)


def decay_flags(mask: MaskOrFn | None, params: optax.Params) -> Any:
  """A tree like `params` of Python bools: whether each leaf is weight-decayed."""
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  mask_tree = mask(params) if callable(mask) else mask
  # The mask may be a prefix of params: broadcast each flag over its subtree.
  return jax.tree.map(
      lambda flag, subtree: jax.tree.map(lambda _: bool(flag), subtree), mask_tree, params
  )


def check_channel_axis(channel_axis) -> None:
  """Raises unless `channel_axis` is a Python int (a traced value cannot pick an axis)."""
  if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
    raise ValueError(f"channel_axis must be an int, got {channel_axis!r}")


def unit_axes(ndim: int, channel_axis: int) -> tuple[int, ...]:
  """The axes a per-unit reduction runs over: every axis but the output-unit axis (which must
  exist: -ndim <= channel_axis < ndim)."""
  axis = _checks.check_axis("channel_axis", channel_axis, ndim)
  return tuple(a for a in range(ndim) if a != axis)


# ---------------------------------------------------------------------------------------------
# Proximal L1: the soft-thresholding counterpart of decoupled weight decay.


def soft_threshold_leaf(x: jax.Array, threshold) -> jax.Array:
  """`sign(x) · max(|x| − threshold, 0)`, the proximal operator of threshold · ‖x‖₁.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import soft_threshold_leaf
    >>> print(soft_threshold_leaf(jnp.array([0.5, 0.01, -0.3]), 0.05))
    [ 0.45  0.   -0.25]
  """
  return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0)


def soft_threshold(
    threshold: float, *, mask: MaskOrFn | None = None
) -> optax.GradientTransformationExtraArgs:
  """Proximal L1 step: turns the update u into prox_threshold(θ + u) − θ (SoRA, arXiv:2311.11696).

  Args:
    threshold: λ >= 0, applied as is at every step (not multiplied by a learning rate).
    mask: a pytree of bools (or a callable params -> one) choosing the leaves to sparsify (SoRA:
      the gates); None: every leaf.

  Returns:
    A stateless `optax.GradientTransformationExtraArgs` whose `update` requires `params`; use it
    last in a chain, after the learning-rate step.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import soft_threshold
    >>> params = {"gate": jnp.array([0.5, 0.01, -0.3])}
    >>> opt = optax.chain(optax.sgd(0.1), soft_threshold(0.05))  # last: after the lr step
    >>> updates, _ = opt.update({"gate": jnp.zeros(3)}, opt.init(params), params)
    >>> print(optax.apply_updates(params, updates)["gate"])  # small entries become exactly 0
    [ 0.45  0.   -0.25]
  """
  _checks.check_non_negative("threshold", threshold)
  check_mask(mask, "mask")

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "soft_threshold", updates=updates)

    def prox_update(u, p):
      dtype = wide_dtype(jnp.promote_types(u.dtype, p.dtype))
      new = p.astype(dtype) + u.astype(dtype)
      return (soft_threshold_leaf(new, threshold) - p.astype(dtype)).astype(u.dtype)

    return jax.tree.map(prox_update, updates, params), state

  transform = optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)
  return transform if mask is None else optax.masked(transform, mask)
