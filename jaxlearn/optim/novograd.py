r"""NovoGrad: momentum on gradients normalized by a layer-wise second moment.

Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of
Deep Networks", arXiv:1905.11286 (2019); official code: NVIDIA OpenSeq2Seq
(`open_seq2seq/optimizers/novograd.py`, `NovoGrad2`) and NeMo (`nemo/core/optim/novograd.py`).

Each layer l (here: each leaf of the parameter pytree) keeps ONE scalar second moment, the moving
average of its squared gradient norm, initialized with the first gradient rather than zero:

.. math::

  v^l_1 &= \lVert g^l_1 \rVert^2, \qquad
  v^l_t = \beta_2 v^l_{t-1} + (1 - \beta_2) \lVert g^l_t \rVert^2 \\
  u^l_t &= \frac{g^l_t}{\sqrt{v^l_t + \epsilon_{root}} + \epsilon} + \lambda\, w^l_t \\
  m^l_t &= \beta_1 m^l_{t-1} + a\, u^l_t, \qquad m^l_0 = 0,
  \qquad a = 1 \text{ (or } 1 - \beta_1 \text{ with grad averaging)} \\
  w^l_{t+1} &= w^l_t - \eta_t m^l_t.

So `m_1 = u_1` (the first-step initialization), the weight decay is added after the
normalization and inside the momentum, and there is no bias correction. The state is one momentum
buffer plus one scalar per layer: about half of Adam's. The paper's Algorithm 1 could not be
checked; the recursion follows the official code. One edge case differs from it: the official
code initializes `v` whenever `v == 0` (so a layer whose first gradients are all zero is
initialized later), this module (like optax) at the first step.

`optax.novograd` / `optax.scale_by_novograd` implement the same recursion (verified in
`tests/optim/test_novograd.py`). jaxlearn has its own transform because optax lacks:

- `weight_decay_mask` (NovoGrad's decay sits inside the momentum, so it cannot be masked from
  outside by `optax.masked`);
- grad averaging (`m_t = β1 m_{t-1} + (1 - β1) u_t`, an option of the official code);
- float32 state for low-precision parameters (optax keeps `v` and `m` in the parameter dtype);
- the official code's defaults (β1, β2) = (0.95, 0.98) (optax: 0.9, 0.25) and validation.

pytorch-optimizer's `NovoGrad` with `grad_averaging=True` copies `u_1` into `m_1` without the
(1 - β1) factor; the official code (OpenSeq2Seq, NeMo) scales the first step too, and so does this
module (a test documents the difference).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "novograd",
    "scale_by_novograd",
    "ScaleByNovogradState",
]


class ScaleByNovogradState(NamedTuple):
  """State of `scale_by_novograd`.

  Attributes:
    count: number of updates so far (int32); the first update initializes `nu`.
    mu: the momentum `m` (float32 or wider, or `mu_dtype`), shaped like the parameters.
    nu: the layer-wise second moment `v`: one float32 (or wider) scalar per leaf.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_novograd
    >>> state = scale_by_novograd().init({"w": jnp.ones((3, 2))})
    >>> state.nu["w"].shape  # one second moment per layer
    ()
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def _check_arguments(b1, b2, eps, eps_root, weight_decay, weight_decay_mask) -> None:
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  _checks.check_non_negative("eps_root", eps_root)
  if _checks.concrete_float(eps) == 0.0 and _checks.concrete_float(eps_root) == 0.0:
    raise ValueError(
        "eps and eps_root must not both be 0: a zero gradient would divide 0 by 0 (got eps=0, "
        "eps_root=0)"
    )
  if callable(weight_decay):
    raise ValueError(
        "weight_decay must be a number, not a schedule: NovoGrad adds it inside the momentum; "
        "schedule it with jaxlearn.optim.inject_hyperparams instead"
    )
  _checks.check_non_negative("weight_decay", weight_decay)
  _common.check_mask(weight_decay_mask)


def scale_by_novograd(
    b1: float = 0.95,
    b2: float = 0.98,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    grad_averaging: bool = False,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NovoGrad's momentum of layer-normalized gradients (with its weight decay inside).

  .. math::

    v_t = \lVert g_1 \rVert^2 \text{ if } t = 1 \text{ else }
    \beta_2 v_{t-1} + (1 - \beta_2) \lVert g_t \rVert^2, \quad
    m_t = \beta_1 m_{t-1} + a \left(\frac{g_t}{\sqrt{v_t + \epsilon_{root}} + \epsilon}
    + \lambda w_t\right),

  per leaf, with `a = 1 - β1` if `grad_averaging` else 1, and `m_0 = 0`. Returns `m_t` in the
  gradient's dtype; `novograd` multiplies it by `-learning_rate`.

  Args:
    b1: momentum β1, in [0, 1) (official code: 0.95).
    b2: decay β2 of the layer-wise second moment, in [0, 1) (official code: 0.98).
    eps: added to sqrt(v), >= 0 (NeMo, pytorch-optimizer and optax put it there; OpenSeq2Seq
      adds it inside the root: use `eps=0, eps_root=...` for that form).
    eps_root: added to v inside the square root, >= 0. eps and eps_root must not both be 0.
    weight_decay: λ, >= 0, added to the normalized gradient inside the momentum (a number;
      schedule it with `jaxlearn.optim.inject_hyperparams`).
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    grad_averaging: scale the new term by 1 - β1 (an exponential moving average of `u`).
    mu_dtype: dtype of the momentum; None keeps float32 or wider.

  Returns:
    A `GradientTransformationExtraArgs`; `update` needs `params` when weight_decay is not 0.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_novograd
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(scale_by_novograd(), optax.scale_by_learning_rate(1e-2))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)

  References:
    Ginsburg et al., `Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training
    of Deep Networks <https://arxiv.org/abs/1905.11286>`_, 2019.
  """
  _check_arguments(b1, b2, eps, eps_root, weight_decay, weight_decay_mask)
  _checks.check_bool("grad_averaging", grad_averaging)
  _checks.check_float_dtype("mu_dtype", mu_dtype)
  decay = _common.decayed_weights(weight_decay, weight_decay_mask)
  new_term_scale = (1.0 - b1) if grad_averaging else 1.0

  def init_fn(params):
    mu = _common.state_zeros(params, mu_dtype)
    nu = jax.tree.map(lambda p: jnp.zeros([], _common.wide_dtype(p.dtype)), params)
    return ScaleByNovogradState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "scale_by_novograd")
    first = state.count == 0
    wide_grads = jax.tree.map(lambda g: g.astype(_common.wide_dtype(g.dtype)), updates)
    nu = jax.tree.map(
        lambda g, v: jnp.where(
            first, jnp.sum(jnp.square(g)), b2 * v + (1.0 - b2) * jnp.sum(jnp.square(g))
        ).astype(v.dtype),
        wide_grads,
        state.nu,
    )
    normalized = jax.tree.map(
        lambda g, v: g / (jnp.sqrt(v + eps_root) + eps), wide_grads, nu
    )
    # The decay goes in before the momentum (official code), so it is applied here, not chained.
    if _checks.concrete_float(weight_decay) != 0.0:
      _common.require_params(params, "scale_by_novograd")
    if params is not None:
      wide_params = jax.tree.map(lambda p: p.astype(_common.wide_dtype(p.dtype)), params)
      normalized, _ = decay.update(normalized, decay.init(wide_params), wide_params)
    mu = jax.tree.map(
        lambda m, u: (b1 * m + new_term_scale * u).astype(m.dtype), state.mu, normalized
    )
    out = jax.tree.map(lambda m, g: m.astype(g.dtype), mu, updates)
    return out, ScaleByNovogradState(count=numerics.safe_increment(state.count), mu=mu, nu=nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def novograd(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.98,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    grad_averaging: bool = False,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """NovoGrad: SGD with momentum on gradients normalized by a per-layer second moment.

  `w_{t+1} = w_t - η_t m_t` with `m_t` from `scale_by_novograd` (see the module docstring for the
  math). Per layer, the normalized gradient has unit norm up to the averaging, so the step size
  is set by η alone, not by the gradient's scale; the weight decay is added after the
  normalization and inside the momentum, as in the official code (OpenSeq2Seq, NeMo), so
  it is NOT chained after the momentum like the other jaxlearn aliases. Defaults are the official
  code's (lr 1e-3 in NeMo, betas (0.95, 0.98), eps 1e-8, no grad averaging).

  Args:
    learning_rate: η, a number or schedule, >= 0.
    b1: momentum β1, in [0, 1).
    b2: second-moment decay β2, in [0, 1).
    eps: added to sqrt(v), >= 0.
    eps_root: added to v inside the root, >= 0 (not both eps and eps_root 0).
    weight_decay: λ inside the momentum, >= 0 (a number).
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    grad_averaging: scale the new term of the momentum by 1 - β1.
    mu_dtype: dtype of the momentum; None keeps float32 or wider.

  Returns:
    A `GradientTransformationExtraArgs`: `chain(scale_by_novograd, scale_by_learning_rate)`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import novograd
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> opt = novograd(1e-2, weight_decay=1e-3)
    >>> state = opt.init(params)
    >>> grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
    >>> updates, state = opt.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Ginsburg et al., `Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training
    of Deep Networks <https://arxiv.org/abs/1905.11286>`_, 2019.
  """
  return optax.chain(
      scale_by_novograd(
          b1, b2, eps, eps_root, weight_decay, weight_decay_mask,
          grad_averaging=grad_averaging, mu_dtype=mu_dtype,
      ),
      _common.learning_rate_step(learning_rate),
  )


RECORD = registry.record(
    slug="novograd",
    kind="optimizer",
    title=(
        "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep "
        "Networks"
    ),
    reference="arXiv:1905.11286",
    experiment="novograd_lr_robustness",
    also=(
        "optax.novograd",
        "optax.scale_by_novograd",
    ),
    pytorch_optimizer={"jaxlearn.optim.novograd": "NovoGrad"},
    notes=(
        "Verified against the official code (OpenSeq2Seq NovoGrad2, NeMo Novograd): per-leaf "
        "scalar v initialized to |g_1|^2, m_1 = u_1, decay added after normalization inside "
        "the momentum; optax.novograd matches for the same hyperparameters. jaxlearn's own "
        "transform adds weight_decay_mask (the decay sits inside the momentum, so optax.masked "
        "cannot do it), grad_averaging, float32 state (optax keeps v, m in the param dtype) "
        "and the official defaults betas (0.95, 0.98), eps 1e-8 (optax: 0.9, 0.25, 1e-6). eps "
        "is outside the root (NeMo/optax/pytorch-optimizer; OpenSeq2Seq puts it inside: eps=0, "
        "eps_root=...). pytorch-optimizer's grad_averaging skips the (1 - b1) factor on the "
        "first step; the official code does not (tested). The paper's Algorithm 1 itself could "
        "not be checked: the defaults of its experiments are not verified."
    ),
)
