r"""AdaGO: Muon's orthogonalized momentum with an AdaGrad-Norm step size, one scalar per matrix.

Zhang, Liu and Schaeffer, "AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal Updates",
arXiv:2509.02981, 2025. No official code is published.

For every weight matrix :math:`\theta` (fan-in x fan-out, the view of `jaxlearn.optim.matrix`):

.. math::

   m_t &= \mu\, m_{t-1} + (1 - \mu)\, g_t \\
   v_t^2 &= v_{t-1}^2 + \min(\|g_t\|_F^2, \gamma^2) \\
   o_t &= \operatorname{Orth}(m_t) \\
   \alpha_t &= \max\!\Big(\epsilon,\ \frac{\eta \min(\|g_t\|_F, \gamma)}{v_t}\Big) \\
   \theta_t &= \theta_{t-1} - \alpha_t\, o_t

:math:`\operatorname{Orth}(M) = UV^\top` for :math:`M = U\Sigma V^\top`, approximated by Muon's
Newton-Schulz iteration (`jaxlearn.optim.matrix.newton_schulz`, 5 steps, optax's coefficients).
The state is Muon's momentum plus one scalar :math:`v_t^2` per matrix; :math:`\epsilon` floors
the step size (it is not added to a denominator); :math:`\gamma` caps each step's contribution.
The first step is about :math:`\eta` whatever the gradient's scale
(:math:`v_1 \approx \min(\|g_1\|, \gamma)`), later steps shrink as the clipped squared norms
accumulate.

The equations were read from two independent transcriptions that quote the paper
(junaidaliop.github.io/zij/math/adago and emergentmind's summary); the paper body and its
defaults were not read. :math:`v_0 > 0` is a library default, 1e-3 (so :math:`v_0^2 = 10^{-6}`,
pytorch-optimizer's initial accumulator); lr 0.05, :math:`\mu` 0.95, :math:`\gamma` 10 and
:math:`\epsilon` 5e-4 are pytorch-optimizer 4.1.0's defaults. Leaves without a matrix view go
to AdamW (as the transcriptions say; betas 0.9/0.999, eps 1e-8, the same learning rate and
weight decay).

Anchors that differ:

* pytorch-optimizer 4.1.0 ``AdaGO`` divides by the accumulated :math:`\sum \min(\|g\|^2, \gamma^2)`
  itself, without the square root: its first step is about :math:`\eta / \min(\|g_1\|, \gamma)`,
  scale dependent; it also orthogonalizes in bfloat16 (a parity test pins it through the
  difference).
* an unmerged optax fork (tinker495/optax, ``optax/contrib/_adago.py``) takes the square root
  but bias-corrects the momentum, starts :math:`v_0 = 1`, :math:`\gamma = 1` and multiplies by
  Muon's width factor.

The learning rate :math:`\eta` sits inside :math:`\alpha_t`. So that the alias follows the
library's convention (``chain(scale_by_adago, decayed_weights, scale by -lr)``, weight decay
multiplied by :math:`\eta`), `scale_by_adago` takes :math:`\eta` and returns
:math:`(\alpha_t / \eta)\, o_t`; the alias multiplies by :math:`-\eta`. The one difference:
at :math:`\eta = 0` exactly (say the first step of a warm-up from 0) the update is 0, where the
paper's :math:`\alpha_t` would be :math:`\epsilon`. :math:`v_t^2` is not shaped like the
parameter: under parameter sharding it is replicated.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import _checks, registry
from jaxlearn.optim import _common, matrix

__all__ = [
    "adago",
    "scale_by_adago",
    "ScaleByAdaGOState",
]


class ScaleByAdaGOState(NamedTuple):
  """State of `scale_by_adago`.

  Attributes:
    count: number of updates so far (int32), for a learning-rate schedule.
    momentum: :math:`m_t`, shaped like the parameters (float32 or wider).
    accumulator: per leaf, :math:`v_t^2` of each matrix of its matrix view, shape ``(batch,)``
      (float32 or wider), starting at :math:`v_0^2`. Replicated under parameter sharding.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_adago
    >>> state = scale_by_adago().init({"kernel": jnp.ones((2, 4, 3), jnp.bfloat16)})
    >>> state.accumulator["kernel"].shape  # two scan-stacked matrices: two scalars (v0**2)
    (2,)
  """

  count: jax.Array
  momentum: optax.Updates
  accumulator: optax.Updates


def scale_by_adago(
    learning_rate: optax.ScalarOrSchedule = 5e-2,
    momentum: float = 0.95,
    gamma: float = 10.0,
    eps: float = 5e-4,
    v0: float = 1e-3,
    *,
    ns_steps: int = 5,
    ns_coefficients: Sequence[float] | Sequence[Sequence[float]] = matrix.NS_COEFFICIENTS,
    dimension_numbers: matrix.DimensionNumbers = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGO's step divided by the learning rate: :math:`(\alpha_t / \eta)\, o_t` per matrix.

  .. math::

     \frac{\alpha_t}{\eta} = \max\!\Big(\frac{\epsilon}{\eta},\
     \frac{\min(\|g_t\|_F, \gamma)}{v_t}\Big)

  (with :math:`\eta = 0`, the ratio alone: the update :math:`\eta \cdot (\ldots)` is 0). Chain
  it with a step of :math:`-\eta` (as `adago` does). Every leaf needs a matrix view.

  Args:
    learning_rate: :math:`\eta`, a number or a schedule (evaluated at the step count), >= 0;
      needed for the floor :math:`\epsilon`, an absolute step size.
    momentum: :math:`\mu`, in [0, 1).
    gamma: :math:`\gamma > 0`, the cap on the gradient norm.
    eps: :math:`\epsilon \ge 0`, the floor on :math:`\alpha_t`.
    v0: :math:`v_0 > 0`, the accumulator's start.
    ns_steps: Newton-Schulz steps (Muon's 5).
    ns_coefficients: one ``(a, b, c)`` triple or one per step (`matrix.newton_schulz`).
    dimension_numbers: the matrix view (`jaxlearn.optim.matrix.leaf_dimension_numbers`); None:
      the flax layouts.

  Returns:
    A `GradientTransformationExtraArgs`; its state is a `ScaleByAdaGOState`.

  References:
    Zhang, Liu and Schaeffer, `AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal Updates
    <https://arxiv.org/abs/2509.02981>`_, 2025.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_adago
    >>> opt = scale_by_adago(0.1, ns_steps=30, ns_coefficients=(1.5, -0.5, 0.0))
    >>> g = {"kernel": jnp.array([[300.0, 0.0], [0.0, 100.0]])}
    >>> u, _ = jax.jit(opt.update)(g, opt.init(g))  # first step: alpha_1 / eta ~ 1, o_1 = I
    >>> print(u["kernel"].round(3))
    [[1. 0.]
     [0. 1.]]
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_positive("gamma", gamma)
  _checks.check_non_negative("eps", eps)
  _checks.check_positive("v0", v0)
  _checks.check_positive_int("ns_steps", ns_steps)
  table_shape = jnp.shape(jnp.asarray(ns_coefficients, jnp.float32))
  if table_shape not in ((3,), (ns_steps, 3)):
    raise ValueError(f"ns_coefficients must be one (a, b, c) triple or one per step "
                     f"({ns_steps}), got shape {table_shape}")
  name = "scale_by_adago"

  def init_fn(params):
    leaves, specs, treedef = matrix.matrix_leaves(params, dimension_numbers, name)
    dtypes = [_common.wide_dtype(p.dtype) for p in leaves]
    return ScaleByAdaGOState(
        count=jnp.zeros([], jnp.int32),
        momentum=treedef.unflatten([optax.tree.zeros_like(p, dtype=d)  # p's sharding
                                    for p, d in zip(leaves, dtypes)]),
        accumulator=treedef.unflatten([
            jnp.full(matrix.matrix_shape(p.shape, s)[:1], jnp.square(v0), d)
            for p, s, d in zip(leaves, specs, dtypes)]),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, name)
    leaves, specs, treedef = matrix.matrix_leaves(updates, dimension_numbers, name)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    # eps / lr, except at lr = 0 (the alias then multiplies everything by 0 anyway).
    floor = eps / jnp.where(lr > 0, lr, 1.0)
    moments = treedef.flatten_up_to(state.momentum)
    accumulators = treedef.flatten_up_to(state.accumulator)
    new_updates, new_moments, new_accumulators = [], [], []
    for g, mom, acc, spec in zip(leaves, moments, accumulators, specs):
      wide = g.astype(mom.dtype)
      mom = (momentum * mom + (1.0 - momentum) * wide).astype(mom.dtype)
      # Matrix products on replicated copies (a no-op unless an explicit mesh shards the leaf).
      gm = matrix.to_matrices(matrix.replicated(wide), spec)
      clipped = jnp.minimum(jnp.linalg.norm(gm, axis=(-2, -1)), gamma)
      acc = (acc + jnp.square(clipped)).astype(mom.dtype)
      ratio = jnp.maximum(floor, clipped / jnp.sqrt(acc))
      direction = matrix.newton_schulz(matrix.to_matrices(matrix.replicated(mom), spec),
                                       steps=ns_steps, coefficients=ns_coefficients)
      step = matrix.from_matrices(ratio[:, None, None] * direction, spec, g.shape)
      new_updates.append(matrix.sharded_like(step, g).astype(g.dtype))
      new_moments.append(mom)
      new_accumulators.append(acc)
    return treedef.unflatten(new_updates), ScaleByAdaGOState(
        numerics.safe_increment(state.count), treedef.unflatten(new_moments),
        treedef.unflatten(new_accumulators))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adago(
    learning_rate: optax.ScalarOrSchedule = 5e-2,
    momentum: float = 0.95,
    gamma: float = 10.0,
    eps: float = 5e-4,
    v0: float = 1e-3,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    ns_steps: int = 5,
    ns_coefficients: Sequence[float] | Sequence[Sequence[float]] = matrix.NS_COEFFICIENTS,
    dimension_numbers: matrix.DimensionNumbers = None,
    fallback: matrix.Fallback = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGO: orthogonalized momentum with AdaGrad-Norm step sizes (see the module docstring).

  .. math::

     \theta_t = \theta_{t-1} - \alpha_t\, o_t - \eta \lambda\, \theta_{t-1}

  on the leaves with a matrix view (decoupled weight decay :math:`\lambda` times :math:`\eta`,
  as pytorch-optimizer applies it), the fallback on the others.

  Args:
    learning_rate: :math:`\eta` >= 0 (a number or a schedule): the largest step size
      :math:`\alpha_t`, reached while one gradient norm dominates :math:`v_t`.
    momentum: :math:`\mu`, in [0, 1).
    gamma: :math:`\gamma > 0`.
    eps: :math:`\epsilon \ge 0`, the floor on :math:`\alpha_t`.
    v0: :math:`v_0 > 0`.
    weight_decay: :math:`\lambda` >= 0, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    ns_steps: Newton-Schulz steps.
    ns_coefficients: Newton-Schulz coefficients (Muon's by default).
    dimension_numbers: the matrix view; None marks a leaf for the fallback.
    fallback: for leaves without a matrix view: None (AdamW, betas 0.9/0.999, eps 1e-8, at
      `learning_rate` with `weight_decay` and its mask, state in float32), an optax
      transformation (used as is), or a callable ``learning_rate -> transformation``.

  Returns:
    A `GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.optim import adago
    >>> params = {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}
    >>> opt = adago(0.05)
    >>> grads = {"kernel": jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), "bias": jnp.ones(2)}
    >>> updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
    >>> v2 = state.inner_states["matrix"].inner_state[0].accumulator["kernel"]
    >>> round(float(v2[0]), 5)  # v0**2 + |g|_F**2 = 1e-6 + 2
    2.0
  """
  scale = scale_by_adago(learning_rate, momentum, gamma, eps, v0, ns_steps=ns_steps,
                         ns_coefficients=ns_coefficients, dimension_numbers=dimension_numbers)

  def adamw(lr):
    return _common.compute_in_float32(
        optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay,
                    mask=weight_decay_mask))

  return matrix.matrix_alias(scale, "adago", learning_rate, weight_decay, weight_decay_mask,
                             fallback, adamw, dimension_numbers)


RECORD = registry.record(
    slug="adago",
    kind="optimizer",
    title="AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal Updates",
    reference="arXiv:2509.02981",
    experiment="adago_function_regression",
    pytorch_optimizer={"jaxlearn.optim.adago": "AdaGO"},
    notes=(
        "Equations from two independent transcriptions quoting the paper (the paper body and its "
        "defaults were not read): m = mu m + (1 - mu) g; v^2 += min(|g|_F^2, gamma^2); "
        "alpha = max(eps, lr min(|g|_F, gamma) / v); theta -= alpha Orth(m), Orth by Muon's 5 "
        "Newton-Schulz steps; one v per matrix (per layer of a scan-stacked leaf). v0 = 1e-3 is "
        "a library default (v0^2 = pytorch-optimizer's initial accumulator 1e-6); lr 0.05, mu "
        "0.95, gamma 10, eps 5e-4 are pytorch-optimizer 4.1.0's. pytorch-optimizer's AdaGO "
        "divides by the accumulated sum without the square root (first step lr/|g|) and "
        "orthogonalizes in bfloat16: tested against it through that difference. Non-matrix "
        "leaves: AdamW (0.9, 0.999, eps 1e-8) at the same lr and weight decay (fallback=). "
        "scale_by_adago takes the lr (for the absolute floor eps) and returns alpha/lr * Orth(m), "
        "so the alias keeps the library's chain and decoupled weight decay x lr."
    ),
)
