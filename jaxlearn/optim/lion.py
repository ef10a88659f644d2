"""Lion (EvoLved Sign Momentum): registered from optax, plus an alias with the paper's defaults.

Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, arXiv:2302.06675;
official code: https://github.com/google/automl/tree/master/lion.

Algorithm 2 of the paper (the update is a sign, so every coordinate moves by exactly the learning
rate before weight decay):

.. math::

  c_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t \\\\
  \\theta_t &= \\theta_{t-1}
    - \\eta_t \\left(\\operatorname{sign}(c_t) + \\lambda\\, \\theta_{t-1}\\right) \\\\
  m_t &= \\beta_2 m_{t-1} + (1 - \\beta_2) g_t, \\qquad m_0 = 0.

`optax.scale_by_lion` / `optax.lion` implement exactly this (verified in `tests/optim/test_lion.py`
against a NumPy transcription of Algorithm 2 and against pytorch-optimizer's `Lion`), so the math
is not rewritten here. `jaxlearn.optim.lion` exists because optax's alias differs from the paper in
its defaults and conventions:

- weight decay defaults to 0 (the official code's default, `lion_pytorch.py` and
  `lion_optax.py`; optax uses 1e-3);
- the mask argument is `weight_decay_mask` (optax: `mask`), like every jaxlearn alias;
- the momentum is kept in float32 (or wider) and the updates come back in the gradient's dtype
  (optax keeps bfloat16 momentum for bfloat16 parameters, and with `mu_dtype=float32` returns
  float32 updates for bfloat16 gradients);
- hyperparameters are validated.

This module also holds `compute_in_float32`, a public wrapper that gives any optax transform the
jaxlearn dtype policy; the other thin optax wrappers of jaxlearn reuse it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "lion",
    "scale_by_lion",
    "compute_in_float32",
]


def _at_least_float32(dtype: Any) -> Any:
  """float16/bfloat16 -> float32; wider floats, complex and non-float dtypes are kept."""
  if not jnp.issubdtype(dtype, jnp.inexact):
    return dtype
  return jnp.promote_types(dtype, jnp.float32)


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


def scale_by_lion(
    b1: float = 0.9,
    b2: float = 0.99,
    *,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """`optax.scale_by_lion` with argument checks and float32 momentum: `u_t = sign(c_t)`.

  .. math::

    c_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad u_t = \\operatorname{sign}(c_t), \\quad
    m_t = \\beta_2 m_{t-1} + (1 - \\beta_2) g_t.

  State: `optax.ScaleByLionState(count, mu)`, the momentum `mu` in float32 or wider (or
  `mu_dtype`). Updates are returned in the gradient's dtype.

  Args:
    b1: interpolation weight of the momentum in the update direction, in [0, 1).
    b2: decay rate of the momentum, in [0, 1) (the official code's ranges).
    mu_dtype: dtype of the momentum; None keeps float32 or wider (bfloat16 halves its memory).

  Returns:
    A `GradientTransformationExtraArgs`.

  References:
    Chen et al., `Symbolic Discovery of Optimization Algorithms
    <https://arxiv.org/abs/2302.06675>`_, NeurIPS 2023.
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  return compute_in_float32(optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype))


def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Lion: a sign update of an interpolated momentum, with decoupled weight decay.

  .. math::

    \\theta_t = \\theta_{t-1} - \\eta_t \\left(\\operatorname{sign}(\\beta_1 m_{t-1} +
    (1 - \\beta_1) g_t) + \\lambda\\, \\theta_{t-1}\\right), \\qquad
    m_t = \\beta_2 m_{t-1} + (1 - \\beta_2) g_t.

  The weight decay is multiplied by the learning rate, as in the paper's Algorithm 2 and its
  official code. Lion's update has a larger norm than AdamW's (every coordinate moves by η), so
  the paper advises a learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger
  (keeping η·λ about the same). Lion keeps one moment buffer, half of AdamW's optimizer state.

  Differences from `optax.lion` (which registers the same algorithm): weight decay defaults to 0
  (official code; optax: 1e-3), the mask is `weight_decay_mask`, the momentum is float32 by
  default and updates come back in the gradient's dtype.

  Args:
    learning_rate: η, a number or schedule, >= 0 (the official code's default is 1e-4).
    b1: interpolation weight β1 of the update direction, in [0, 1); the paper's default 0.9.
    b2: momentum decay β2, in [0, 1); the paper's default 0.99.
    weight_decay: decoupled weight decay λ, >= 0, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    mu_dtype: dtype of the momentum; None keeps float32 or wider.

  Returns:
    A `GradientTransformationExtraArgs`:
    `chain(scale_by_lion, decayed_weights, scale_by_learning_rate)`.

  References:
    Chen et al., `Symbolic Discovery of Optimization Algorithms
    <https://arxiv.org/abs/2302.06675>`_, NeurIPS 2023.
  """
  return _common.alias(
      scale_by_lion(b1, b2, mu_dtype=mu_dtype), learning_rate, weight_decay, weight_decay_mask
  )


RECORD = registry.record(
    slug="lion",
    kind="optimizer",
    title="Symbolic Discovery of Optimization Algorithms",
    reference="arXiv:2302.06675",
    experiment="lion_batch_size",
    also=(
        "optax.lion",
        "optax.scale_by_lion",
    ),
    pytorch_optimizer={"jaxlearn.optim.lion": "Lion", "optax.lion": "Lion"},
    notes=(
        "optax.lion is Algorithm 2 exactly (NumPy transcription and pytorch-optimizer Lion "
        "parity tests). jaxlearn.optim.lion wraps optax.scale_by_lion for the paper's "
        "official-code defaults and jaxlearn's conventions: weight_decay 0 (optax: 1e-3), "
        "weight_decay_mask (optax: mask), float32 momentum for low-precision params (optax: "
        "param dtype) and updates in the gradient dtype (optax with mu_dtype=float32 returns "
        "float32 updates for bfloat16 grads). Defaults and beta ranges [0, 1) as in the "
        "official code (google/automl lion/lion_pytorch.py, lion_optax.py)."
    ),
)
