r"""NAG-GS: a semi-implicit (Gauss-Seidel) discretization of an accelerated gradient flow.

Leplat, Merkulov, Katrutsa, Bershatsky, Tsymboi and Oseledets, "NAG-GS: Semi-Implicit,
Accelerated and Robust Stochastic Optimizer", arXiv:2209.14937; official code:
https://github.com/skolai/nag-gs (`nag_gs/nag_gs_pytorch.py`, `nag_gs/nag_gs_jax.py`).

The method integrates the Nesterov-like flow `x' = v - x`, `γ v' = μ (x - v) - ∇f(x)`,
`γ' = μ - γ` with step α, implicitly in each variable and using the newest value of the others
(Gauss-Seidel). One iteration of the paper's algorithm, with `a = α / (1 + α)`,
`b_k = α μ / (α μ + γ_k)`:

.. math::

  x_{k+1} &= (1 - a) x_k + a v_k \\
  v_{k+1} &= (1 - b_k) v_k + b_k x_{k+1} - \frac{b_k}{\mu} \nabla f(x_{k+1}) \\
  \gamma_{k+1} &= (1 - a) \gamma_k + a \mu.

With `v_0 = x_0` (the official initialization) the first x-step is a no-op, so an optimizer step
that receives `∇f(x_t)` performs the v- and γ-updates with it and then the next x-step; this is
exactly the official PyTorch `NAGGS` and a third-party NumPy transcription of the paper's
algorithm (`nag_gs_step`, "NAG-GS update from Algorithm alg:nag_gsgeneral", of unknown origin),
and needs no branch. The paper's own pseudo-code could not be checked beyond its abstract and
first page; the two codes above agree with each other.

The official JAX/optax code differs in two ways: it skips the v-update with a Python
`if state.count > 0` on a traced value (which cannot be jitted) and so wastes the first gradient
(its first update is zero), and its v-update uses `γ_{k+1}` instead of `γ_k`. The two agree when
γ_0 = μ (then γ stays μ); a test documents the difference otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "nag_gs",
    "scale_by_nag_gs",
    "ScaleByNagGsState",
]


class ScaleByNagGsState(NamedTuple):
  """State of `scale_by_nag_gs`.

  Attributes:
    count: number of updates so far (int32), the argument of a step-size schedule.
    gamma: the scaling factor γ_k (float32 scalar), γ_0 = `gamma`.
    v: the auxiliary variable v_k (float32 or wider), v_0 = x_0 (a copy of the parameters).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_nag_gs
    >>> state = scale_by_nag_gs().init({"w": jnp.array([1.0, 2.0])})
    >>> state.v["w"]  # v_0 = x_0
    Array([1., 2.], dtype=float32)
  """

  count: jax.Array
  gamma: jax.Array
  v: optax.Updates


def scale_by_nag_gs(
    learning_rate: optax.ScalarOrSchedule = 0.05,
    mu: float = 1.0,
    gamma: float = 1.5,
) -> optax.GradientTransformationExtraArgs:
  r"""The full NAG-GS step `x_{t+1} - x_t` (already signed: add it to the parameters).

  Given `g = ∇f(x_t)` at the current parameters `x_t`, with `a = α/(1+α)`,
  `b = αμ/(αμ + γ)`:

  .. math::

    v &\leftarrow (1 - b)\, v + b\, x_t - \frac{\alpha}{\alpha\mu + \gamma}\, g \\
    \gamma &\leftarrow (1 - a)\, \gamma + a \mu \\
    u_t &= a\, (v - x_t)

  (`b/μ` is written `α / (αμ + γ)`, which is also defined for μ = 0). The step is not linear in
  α, so this transform is the whole optimizer: `nag_gs` returns it unchanged.

  Args:
    learning_rate: the step α of the discretization, >= 0, a number or a schedule of the step.
    mu: μ, the strong-convexity (damping) parameter of the flow, >= 0. With μ = 0, γ decays
      geometrically to 0 and the steps grow without bound.
    gamma: γ_0, > 0 (official defaults α 0.05, μ 1, γ_0 1.5).

  Returns:
    A `GradientTransformationExtraArgs` whose `update` requires `params`; its state is a
    `ScaleByNagGsState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_nag_gs
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = scale_by_nag_gs(0.05)  # the step is already signed: add it to the parameters
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Leplat et al., `NAG-GS: Semi-Implicit, Accelerated and Robust Stochastic Optimizer
    <https://arxiv.org/abs/2209.14937>`_, 2022.
  """
  _checks.check_non_negative("learning_rate", learning_rate)
  _checks.check_non_negative("mu", mu)
  _checks.check_positive("gamma", gamma)

  def init_fn(params):
    v = jax.tree.map(
        lambda p: jnp.array(p, dtype=_common.wide_dtype(p.dtype), copy=True), params
    )
    return ScaleByNagGsState(
        count=jnp.zeros([], jnp.int32), gamma=jnp.asarray(gamma, jnp.float32), v=v
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "scale_by_nag_gs", updates=updates)
    alpha = learning_rate(state.count) if callable(learning_rate) else learning_rate
    alpha = jnp.asarray(alpha, jnp.float32)
    b = alpha * mu / (alpha * mu + state.gamma)
    gradient_coef = alpha / (alpha * mu + state.gamma)
    a = alpha / (1.0 + alpha)

    def new_v(g, x, v):
      x32 = x.astype(v.dtype)
      return ((1.0 - b) * v + b * x32 - gradient_coef * g.astype(v.dtype)).astype(v.dtype)

    v = jax.tree.map(new_v, updates, params, state.v)
    new_gamma = (1.0 - a) * state.gamma + a * mu
    steps = jax.tree.map(lambda g, x, vv: (a * (vv - x.astype(vv.dtype))).astype(g.dtype),
                         updates, params, v)
    return steps, ScaleByNagGsState(
        count=numerics.safe_increment(state.count), gamma=new_gamma.astype(jnp.float32), v=v
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def nag_gs(
    learning_rate: optax.ScalarOrSchedule = 0.05,
    mu: float = 1.0,
    gamma: float = 1.5,
) -> optax.GradientTransformationExtraArgs:
  """The NAG-GS optimizer: `x_{t+1} = x_t + u_t` with `u_t` from `scale_by_nag_gs`.

  The step α enters the update non-linearly (through `a = α/(1+α)` and `b`), so it is a parameter
  of the transform and there is no separate learning-rate multiplication. Like the official code,
  this has no weight decay (the μ-term already pulls `v` towards `x`). With a schedule, each step
  uses one α for its v-, γ- and x-updates, as the official PyTorch code does.

  Args:
    learning_rate: the step α, >= 0, a number or a schedule (official default 0.05).
    mu: μ, >= 0 (official default 1).
    gamma: γ_0, > 0 (official default 1.5).

  Returns:
    A `GradientTransformationExtraArgs` whose `update` requires `params`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import nag_gs
    >>> opt = nag_gs(0.5, mu=1.0, gamma=1.0)
    >>> x = jnp.array([1.0])
    >>> state = opt.init(x)
    >>> updates, state = opt.update(2.0 * x, state, x)   # f(x) = x^2
    >>> round(float(updates[0]), 4)
    -0.2222
  """
  return scale_by_nag_gs(learning_rate, mu, gamma)


RECORD = registry.record(
    slug="nag_gs",
    kind="optimizer",
    title="NAG-GS: Semi-Implicit, Accelerated and Robust Stochastic Optimizer",
    reference="arXiv:2209.14937",
    experiment="nag_gs_step_size_stability",
    notes=(
        "Implements the paper's algorithm (x-step, b_k with gamma_k, gamma-step, v-step at "
        "grad f(x_{k+1})) with v_0 = x_0, as in the official PyTorch NAGGS and a third-party "
        "NumPy transcription of the paper's Algorithm (the two agree; the paper's pseudo-code "
        "itself could not be checked). The official JAX/optax code branches in Python on a "
        "traced count (no jit), wastes the first gradient and uses gamma_{k+1} in "
        "the v-step; it agrees with this one when gamma_0 = mu (tested). The step alpha enters "
        "non-linearly, so the transform is the whole optimizer (no separate lr scaling) and "
        "there is no weight decay (none in the official code)."
    ),
)
