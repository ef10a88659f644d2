"""Pieces every jaxlearn optimizer alias shares: weight decay with a mask, the learning-rate step,
and the guard against optax's inject_hyperparams-mask trap.

An alias is always `chain(scale_by_<name>(...), decayed_weights(...), scale_by_learning_rate(lr))`,
so weight decay is multiplied by the learning rate (the PyTorch/AdamW convention, also optax's).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import numpy as np
import optax

from jaxlearn import _checks

__all__ = [
    "decayed_weights",
    "inject_hyperparams",
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
  """
  _checks.check_non_negative("weight_decay", weight_decay)
  check_mask(mask)
  return optax.add_decayed_weights(weight_decay, mask)


def learning_rate_step(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """`optax.scale_by_learning_rate` (multiplies by -lr) after checking lr >= 0."""
  _checks.check_non_negative("learning_rate", learning_rate)
  return optax.scale_by_learning_rate(learning_rate)


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
