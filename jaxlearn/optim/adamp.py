r"""AdamP and SGDP: momentum optimizers that do not inflate the norm of scale-invariant weights.

Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
ICLR 2021, arXiv:2006.08217; official code: https://github.com/clovaai/AdamP.

A weight followed by a normalization layer is scale-invariant: the loss depends only on its
direction, so its gradient is orthogonal to it. Momentum then makes every step add a radial
component that inflates the weight norm, and a larger norm shrinks the effective step size
‖Δw‖/‖w‖ prematurely. AdamP and SGDP detect such weights (the gradient is nearly orthogonal to the
weight) and remove the radial component from the update:

.. math::

  \Pi_w(p) = p - \hat w \langle \hat w, p \rangle, \qquad
  \hat w = w / (\lVert w \rVert + \varepsilon).

Detection, for every leaf with ndim > 1, first per output channel, then over the whole leaf: with
the channel view (one slice per output channel, `d = leaf.size / num_channels` elements each) the
leaf is scale-invariant when

.. math::

  \max_c \frac{|\langle g_c, w_c \rangle|}{\max(\lVert g_c \rVert, \varepsilon)\,
  \max(\lVert w_c \rVert, \varepsilon)} < \frac{\delta}{\sqrt{d}},

and then `p` is projected slice by slice; otherwise the same test on the whole leaf
(`d = leaf.size`) projects `p` as one vector. Leaves with ndim <= 1 (biases, norm scales) are never
projected. Weight decay on a projected leaf is multiplied by `wd_ratio`.

Layout: Flax kernels keep output channels on the LAST axis (Dense `(in, out)`, Conv `HWIO`), PyTorch
on the first. The channel view here uses the last axis by default (`channel_axis=None`); pass
`channel_axis=0` for PyTorch-layout kernels. (An int default would become a traced hyperparameter
under `optax.inject_hyperparams`, and a traced value cannot select an axis.)

Weight decay: which leaves are projected is decided inside the transform, and the decay factor
depends on it, so `scale_by_adamp` / `scale_by_sgdp` add the (decoupled) decay term themselves and
the aliases chain them with the learning-rate step only. As in the official code the decay is
multiplied by the learning rate: `w <- w - lr * (direction + weight_decay * ratio * w)`.

Step cost: the four per-channel sums are one variadic reduction, a single pass over g, w and
the direction p (a large leaf's rows summed in blocks, see `_channel_sums`), and the whole-leaf
sums and the largest channel cosine are one small reduction of the per-channel ones. AdamP's
compiled CPU step accesses 62 bytes per float32 parameter (ideal 28; it was 72, and 120 before
that), SGDP's 38 (ideal 20; it was 48): beyond one pass per buffer, the sums are a pass of their
own, and AdamP writes its direction p out once, as the sums and the update both read it
(`tests/optim/test_step_cost.py` lists the passes). AdamP's large leaves are processed one after
another, so that the temporary holds one leaf's direction rather than the whole model's.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "adamp",
    "sgdp",
    "scale_by_adamp",
    "scale_by_sgdp",
    "ScaleByAdamPState",
    "ScaleBySGDPState",
    "project_scale_invariant",
]

_NEEDS_PARAMS = "the projection and the weight decay both read them"


class ScaleByAdamPState(NamedTuple):
  """State of `scale_by_adamp`.

  Attributes:
    count: number of updates so far (int32), for the bias corrections.
    mu: first moment of the gradients (float32 or wider).
    nu: second moment of the gradients (float32 or wider).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_adamp
    >>> state = scale_by_adamp().init({"w": jnp.ones((3, 2), jnp.bfloat16)})
    >>> state.count, state.mu["w"].dtype
    (Array(0, dtype=int32), dtype('float32'))
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


class ScaleBySGDPState(NamedTuple):
  """State of `scale_by_sgdp`.

  Attributes:
    momentum: the momentum buffer `b_t` (float32 or wider), never projected (paper, Alg. 1).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_sgdp
    >>> state = scale_by_sgdp(momentum=0.9).init({"w": jnp.ones((3, 2), jnp.bfloat16)})
    >>> state.momentum["w"].dtype
    dtype('float32')
  """

  momentum: optax.Updates


def _abs_cosine(dot, g_sq, w_sq, eps):
  """|cos(g, w)| from the sums g.w, |g|^2 and |w|^2.

  Each norm is floored at eps, as torch.nn.functional.cosine_similarity (which the official code
  calls) does.
  """
  return jnp.abs(dot) / (jnp.maximum(jnp.sqrt(g_sq), eps) * jnp.maximum(jnp.sqrt(w_sq), eps))


_BLOCK_ROWS = 16  # rows added per step of a blocked column sum


def _channel_sums(operands, axis):
  """Per-channel sums (over every axis but `axis`) of operands of one shape, in one pass.

  A variadic sum over the contiguous minor axes runs at memory speed on XLA:CPU, but one over
  a major axis (the rows, when the channels are the last axis) runs element by element with
  strided reads, many times slower once the leaf outgrows the cache: the rows of a large leaf
  are summed in blocks of at most `_BLOCK_ROWS` instead (each step streams through its input
  and writes sums `_BLOCK_ROWS` times smaller; rows with no divisor up to `_BLOCK_ROWS` are
  summed in one step).
  """
  shape = operands[0].shape
  if math.prod(shape) <= _common.CACHED_SIZE:
    return _common.variadic_sums(operands, tuple(a for a in range(len(shape)) if a != axis))
  major, channels, minor = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
  sums = [x.reshape(major, channels, minor) for x in operands]
  if minor > 1:
    sums = _common.variadic_sums(sums, (2,))
  else:
    sums = [x.reshape(major, channels) for x in sums]
  rows = major
  while rows > _BLOCK_ROWS:
    block = max(b for b in range(1, _BLOCK_ROWS + 1) if rows % b == 0)
    if block == 1:
      break
    rows //= block
    sums = _common.variadic_sums([x.reshape(rows, block, channels) for x in sums], (1,))
  return _common.variadic_sums(sums, (0,))


def project_scale_invariant(
    direction: jax.Array,
    param: jax.Array,
    grad: jax.Array,
    delta,
    eps,
    channel_axis: int = -1,
) -> tuple[jax.Array, jax.Array]:
  """Removes the radial component of `direction` if `param` looks scale-invariant.

  Both views are computed from four per-channel sums (the whole-leaf sums are their totals), and
  the projection `p - ŵ <ŵ, p>` with `ŵ = w / (|w| + eps)` is computed as
  `p - w <w, p> / (|w| + eps)^2`, the same quantity.

  Args:
    direction: the update direction `p` of one leaf (ndim > 1), float32.
    param: the leaf's current value `w`, float32.
    grad: the leaf's gradient `g`, float32.
    delta: the threshold δ of the cosine test.
    eps: floors the norms of the cosine test and is added to the norm of `w` in `ŵ`.
    channel_axis: the output-channel axis of `param`.

  Returns:
    `(projected_direction, is_scale_invariant)`, the latter a boolean scalar. The channel view is
    tried first; the whole-leaf view only if the channel view does not detect invariance.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import project_scale_invariant
    >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> g = jnp.array([[0.0, 1.0], [1.0, 0.0]])  # orthogonal to w: w looks scale-invariant
    >>> direction, invariant = project_scale_invariant(w + g, w, g, delta=0.1, eps=1e-8)
    >>> invariant
    Array(True, dtype=bool)
  """
  projected, invariant, _ = _projection(direction, param, grad, delta, eps, channel_axis)
  return projected, invariant


def _projection(direction, param, grad, delta, eps, channel_axis):
  """`project_scale_invariant`, also returning the radial coefficient of each channel."""
  axis = _checks.check_axis("channel_axis", channel_axis, param.ndim)
  per_channel = _common.unit_axes(param.ndim, axis)
  channel_size = param.size // param.shape[axis]
  # The four sums in one pass over g, w and p. |g|·|g| is g·g, but not the expression of Adam's
  # g², which XLA would otherwise share with the second moment and write out instead of fusing
  # it into this sum.
  products = (grad * param, jnp.abs(grad) * jnp.abs(grad), param * param, param * direction)
  g_dot_w, g_sq, w_sq, w_dot_p = _channel_sums(products, axis)
  # The whole-leaf totals and the channels' largest cosine: one small variadic reduction (one
  # kernel rather than five).
  inits = (jnp.zeros((), param.dtype),) * 4 + (jnp.array(-jnp.inf, param.dtype),)
  layer_g_dot_w, layer_g_sq, layer_w_sq, layer_w_dot_p, max_cosine = jax.lax.reduce(
      (g_dot_w, g_sq, w_sq, w_dot_p, _abs_cosine(g_dot_w, g_sq, w_sq, eps)), inits,
      lambda a, b: tuple(x + y for x, y in zip(a[:4], b[:4])) + (jnp.maximum(a[4], b[4]),),
      (0,))
  by_channel = max_cosine < delta / math.sqrt(channel_size)
  by_layer = _abs_cosine(layer_g_dot_w, layer_g_sq, layer_w_sq, eps) < delta / math.sqrt(
      param.size
  )
  channel_radial = w_dot_p / jnp.square(jnp.sqrt(w_sq) + eps)
  layer_radial = layer_w_dot_p / jnp.square(jnp.sqrt(layer_w_sq) + eps)
  radial = jnp.where(by_channel, channel_radial, jnp.where(by_layer, layer_radial, 0.0))
  projected = direction - param * jnp.expand_dims(radial, per_channel)
  return projected, by_channel | by_layer, radial


def _check_channel_axis(channel_axis: Any) -> int:
  """-1 for None (Flax layout); otherwise a Python int (a traced value cannot pick an axis)."""
  if channel_axis is None:
    return -1
  if isinstance(channel_axis, bool):
    raise ValueError(f"channel_axis must be None or a Python int, got {channel_axis!r}")
  try:
    return operator.index(channel_axis)
  except TypeError:
    raise ValueError(
        f"channel_axis must be None or a Python int, got {channel_axis!r} (with "
        "inject_hyperparams, pass static_args=('channel_axis',))"
    ) from None


def _check_common(eps, delta, wd_ratio, weight_decay, weight_decay_mask) -> None:
  _checks.check_positive("eps", eps)
  _checks.check_non_negative("delta", delta)
  _checks.check_range("wd_ratio", wd_ratio, 0.0, 1.0)
  if callable(weight_decay):
    raise ValueError(
        "weight_decay must be a number, not a schedule: the decay is applied inside the "
        "transform; schedule it with jaxlearn.optim.inject_hyperparams instead"
    )
  _checks.check_non_negative("weight_decay", weight_decay)
  _common.check_mask(weight_decay_mask)


def _project_and_decay(g, w, direction, decayed, *, delta, eps, wd_ratio, decay, channel_axis):
  """One leaf: projection (ndim > 1 only), then `+ decay * ratio * w` if the leaf is decayed.

  Returns the result in the gradient's dtype, and the radial coefficients (None when ndim <= 1);
  `decay` already includes AdamP's/SGDP's factor.
  """
  w32, g32 = w.astype(direction.dtype), g.astype(direction.dtype)
  ratio, radial = 1.0, None
  if w.ndim > 1:
    direction, invariant, radial = _projection(direction, w32, g32, delta, eps, channel_axis)
    ratio = jnp.where(invariant, wd_ratio, 1.0)
  if decayed:
    direction = direction + decay * ratio * w32
  return direction.astype(g.dtype), radial


def _after(v, radial):
  """`v` (non-negative) unchanged, but not computable before `radial`.

  XLA:CPU schedules the direction kernel of every leaf before any of their consumers, so all the
  directions are alive at once: a temporary the size of the model (47 MB on the benchmark's
  10M-parameter model: above glibc's 32 MB mmap threshold, so mapped and page-faulted anew at
  every step). Here a leaf's second moment, as its direction reads it, depends on the previous
  leaf's radial coefficients, that leaf's last input before its update kernel: once they exist,
  the scheduler chooses between that update kernel, which frees a direction, and the next
  direction, which allocates one, and it takes the former. So one leaf's direction is alive at a
  time (`tests/optim/test_adamp.py` checks the temporary). A dependency on the scale-invariance
  test, computed earlier, left two alive; an `optimization_barrier` changed nothing, as XLA:CPU
  drops barriers before scheduling. The dependency is a maximum with -1 or -2, never NaN even if
  `radial` is, so every v >= 0 (NaN included) comes out unchanged. On a leaf sharded over its
  channels, reading one coefficient costs one scalar broadcast.
  """
  floor = jnp.where(jnp.abs(radial.reshape(-1)[0]) < 1.0, -1.0, -2.0)
  return jnp.maximum(v, floor.astype(v.dtype))


def scale_by_adamp(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    weight_decay: float = 0.0,
    *,
    nesterov: bool = False,
    weight_decay_mask: _common.MaskOrFn | None = None,
    channel_axis: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The AdamP direction, projected on scale-invariant leaves, plus its own weight-decay term.

  .. math::

    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
    p_t &= \tilde m_t / (\sqrt{v_t / (1 - \beta_2^t)} + \varepsilon), \qquad
    \tilde m_t = m_t \text{ or, with nesterov, } \beta_1 m_t + (1 - \beta_1) g_t \\
    u_t &= q_t / (1 - \beta_1^t) + \lambda\, r_t\, w_t

  where `q_t = Π(p_t)` and `r_t = wd_ratio` on a leaf detected as scale-invariant (see the module
  docstring), `q_t = p_t` and `r_t = 1` otherwise, and λ is `weight_decay` (0 on leaves that
  `weight_decay_mask` excludes). `adamp` multiplies `u_t` by `-learning_rate`. With `delta=0`
  nothing is ever projected and this is Adam (plus decoupled decay). State: `m, v` (float32 or
  wider) and the step count `t`.

  Args:
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the denominator; also floors the norms of the projection; > 0.
    delta: threshold δ of the scale-invariance test, >= 0 (0 disables the projection).
    wd_ratio: weight-decay multiplier on projected leaves, in [0, 1].
    weight_decay: decoupled weight-decay coefficient λ, >= 0 (a number; schedule it through
      `jaxlearn.optim.inject_hyperparams`).
    nesterov: use the Nesterov form of the first moment.
    weight_decay_mask: a pytree (or prefix) of bools, or a callable `params -> such a pytree`;
      False leaves get no weight decay.
    channel_axis: the output-channel axis of kernels; None (default) is the last axis, the
      Flax layout; 0 for PyTorch-layout kernels.

  Returns:
    A `GradientTransformationExtraArgs` whose `update` requires `params`; its state is a
    `ScaleByAdamPState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_adamp
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(scale_by_adamp(weight_decay=1e-4), optax.scale_by_learning_rate(1e-2))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)

  References:
    Heo et al., `AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights <https://arxiv.org/abs/2006.08217>`_, ICLR 2021.
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _check_common(eps, delta, wd_ratio, weight_decay, weight_decay_mask)
  _checks.check_bool("nesterov", nesterov)
  channel_axis = _check_channel_axis(channel_axis)

  def init_fn(params):
    return ScaleByAdamPState(
        count=jnp.zeros([], jnp.int32),
        mu=_common.state_zeros(params),
        nu=_common.state_zeros(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "scale_by_adamp", _NEEDS_PARAMS, updates=updates)
    count = optax.safe_increment(state.count)
    step = count.astype(jnp.float32)
    correction1 = _common.bias_correction(b1, step)
    correction2 = _common.bias_correction(b2, step)
    mu = _common.update_moment(updates, state.mu, b1)
    nu = _common.update_moment(updates, state.nu, b2, order=2)
    flags = _common.decay_flags(weight_decay_mask, params)

    def direction(g, m, v):
      first = b1 * m + (1.0 - b1) * g.astype(m.dtype) if nesterov else m
      # The official code's eps placement: sqrt(v_hat) + eps (pytorch-optimizer differs).
      return first / (jnp.sqrt(v / correction2) + eps)

    # The direction is written out once for the projection's sums and the update: recomputed
    # inside the sums' reduction, XLA:CPU runs its sqrt and divisions as scalar code, several
    # times slower than the pass it would save. Large leaves go one after another (`_after`),
    # so that one large leaf's direction is alive at a time. (Ordering small leaves as well
    # would save little memory and cost compile time: +30% at 1,000 leaves.)
    grads, treedef = jax.tree.flatten(updates)
    leaves = zip(grads, *(treedef.flatten_up_to(tree) for tree in (mu, nu, params, flags)))
    out, radial = [], None
    for g, m, v, w, decayed in leaves:
      large = g.size >= _common.CACHED_SIZE
      if large and radial is not None:
        v = _after(v, radial)
      # Projection is linear in the direction, so the 1/(1 - b1^t) step scale can come first;
      # the decay term is not bias-corrected (the official code applies it with the bare lr).
      leaf_out, leaf_radial = _project_and_decay(
          g, w, direction(g, m, v) / correction1, decayed, delta=delta, eps=eps,
          wd_ratio=wd_ratio, decay=weight_decay, channel_axis=channel_axis,
      )
      out.append(leaf_out)
      if large and leaf_radial is not None:
        radial = leaf_radial
    out = treedef.unflatten(out)
    return out, ScaleByAdamPState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_sgdp(
    momentum: float = 0.0,
    dampening: float = 0.0,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    weight_decay: float = 0.0,
    *,
    nesterov: bool = False,
    weight_decay_mask: _common.MaskOrFn | None = None,
    channel_axis: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The SGDP direction, projected on scale-invariant leaves, plus its own weight-decay term.

  .. math::

    b_t &= \mu\, b_{t-1} + (1 - \tau)\, g_t \quad (b_0 = 0) \\
    p_t &= b_t \text{ or, with nesterov, } g_t + \mu\, b_t \\
    u_t &= q_t + \frac{\lambda\, r_t}{1 - \mu} w_t

  with `q_t = Π(p_t)`, `r_t = wd_ratio` on a leaf detected as scale-invariant, `q_t = p_t`,
  `r_t = 1` otherwise (μ momentum, τ dampening, λ weight decay). The buffer `b_t` itself is never
  projected (paper, Algorithm 1). The decay is divided by `1 - μ` on every leaf, as in the
  official code. `sgdp` multiplies `u_t` by `-learning_rate`. State: `b` (float32 or wider).

  Args:
    momentum: momentum μ, in [0, 1) (the decay is divided by 1 - μ). Official default 0; the
      authors' README suggests 0.9 with nesterov.
    dampening: dampening τ of the gradient in the buffer, in [0, 1].
    eps: floors the norms of the projection, > 0.
    delta: threshold δ of the scale-invariance test, >= 0 (0 disables the projection).
    wd_ratio: weight-decay multiplier on projected leaves, in [0, 1].
    weight_decay: decoupled weight-decay coefficient λ, >= 0.
    nesterov: use Nesterov momentum.
    weight_decay_mask: a pytree (or prefix) of bools, or a callable `params -> such a pytree`.
    channel_axis: the output-channel axis of kernels; None (default) is the last axis, the
      Flax layout; 0 for PyTorch-layout kernels.

  Returns:
    A `GradientTransformationExtraArgs` whose `update` requires `params`; its state is a
    `ScaleBySGDPState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_sgdp
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(scale_by_sgdp(momentum=0.9), optax.scale_by_learning_rate(0.1))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)

  References:
    Heo et al., `AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights <https://arxiv.org/abs/2006.08217>`_, ICLR 2021.
  """
  _checks.check_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
  _checks.check_range("dampening", dampening, 0.0, 1.0)
  _check_common(eps, delta, wd_ratio, weight_decay, weight_decay_mask)
  _checks.check_bool("nesterov", nesterov)
  channel_axis = _check_channel_axis(channel_axis)

  def init_fn(params):
    return ScaleBySGDPState(momentum=_common.state_zeros(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "scale_by_sgdp", _NEEDS_PARAMS, updates=updates)
    buffers = jax.tree.map(
        lambda g, b: (momentum * b + (1.0 - dampening) * g.astype(b.dtype)).astype(b.dtype),
        updates,
        state.momentum,
    )
    if nesterov:
      directions = jax.tree.map(lambda g, b: g.astype(b.dtype) + momentum * b, updates, buffers)
    else:
      directions = buffers
    project = functools.partial(
        _project_and_decay, delta=delta, eps=eps, wd_ratio=wd_ratio,
        decay=weight_decay / (1.0 - momentum), channel_axis=channel_axis,
    )
    out = jax.tree.map(
        lambda g, w, d, decayed: project(g, w, d, decayed)[0], updates, params, directions,
        _common.decay_flags(weight_decay_mask, params),
    )
    return out, ScaleBySGDPState(momentum=buffers)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adamp(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    weight_decay: float = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    nesterov: bool = False,
    channel_axis: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamP: Adam that removes the radial update component of scale-invariant weights.

  `w_{t+1} = w_t - η u_t` with `u_t` from `scale_by_adamp` (see it for the math):
  Adam's bias-corrected step, projected onto the tangent space of leaves whose gradient is nearly
  orthogonal to them, plus decoupled weight decay `η λ r_t w_t` (`r_t = wd_ratio` on projected
  leaves, 1 elsewhere). Defaults are the official ones (lr 1e-3 in the official code).

  Args:
    learning_rate: η, a number or a schedule, >= 0.
    b1: first-moment decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    eps: denominator and norm floor, > 0.
    delta: scale-invariance threshold δ, >= 0.
    wd_ratio: weight-decay multiplier on projected leaves, in [0, 1].
    weight_decay: decoupled weight decay λ, >= 0, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    nesterov: Nesterov form of the first moment.
    channel_axis: output-channel axis of kernels; None: last axis (Flax); 0: PyTorch layout.

  Returns:
    A `GradientTransformationExtraArgs`; `update` requires `params`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import adamp
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> opt = adamp(1e-2, weight_decay=1e-4)
    >>> state = opt.init(params)
    >>> grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
    >>> updates, state = opt.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Heo et al., `AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights <https://arxiv.org/abs/2006.08217>`_, ICLR 2021; code: github.com/clovaai/AdamP.
  """
  scale = scale_by_adamp(
      b1, b2, eps, delta, wd_ratio, weight_decay, nesterov=nesterov,
      weight_decay_mask=weight_decay_mask, channel_axis=channel_axis,
  )
  return optax.chain(scale, _common.learning_rate_step(learning_rate))


def sgdp(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.0,
    dampening: float = 0.0,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    weight_decay: float = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    nesterov: bool = False,
    channel_axis: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SGDP: SGD (momentum) that removes the radial update component of scale-invariant weights.

  `w_{t+1} = w_t - η u_t` with `u_t` from `scale_by_sgdp` (see it for the math), including the
  decoupled decay `η λ r_t w_t / (1 - μ)` of the official code. Defaults are the official ones
  (momentum 0, dampening 0, eps 1e-8, δ 0.1, wd_ratio 0.1, no nesterov).

  Args:
    learning_rate: η, a number or a schedule, >= 0.
    momentum: μ, in [0, 1).
    dampening: τ, in [0, 1].
    eps: norm floor of the projection, > 0.
    delta: scale-invariance threshold δ, >= 0.
    wd_ratio: weight-decay multiplier on projected leaves, in [0, 1].
    weight_decay: decoupled weight decay λ, >= 0, multiplied by the learning rate / (1 - μ).
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    nesterov: Nesterov momentum.
    channel_axis: output-channel axis of kernels; None: last axis (Flax); 0: PyTorch layout.

  Returns:
    A `GradientTransformationExtraArgs`; `update` requires `params`.
  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import sgdp
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> opt = sgdp(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    >>> state = opt.init(params)
    >>> grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
    >>> updates, state = opt.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Heo et al., `AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights <https://arxiv.org/abs/2006.08217>`_, ICLR 2021; code: github.com/clovaai/AdamP.
  """
  scale = scale_by_sgdp(
      momentum, dampening, eps, delta, wd_ratio, weight_decay, nesterov=nesterov,
      weight_decay_mask=weight_decay_mask, channel_axis=channel_axis,
  )
  return optax.chain(scale, _common.learning_rate_step(learning_rate))


RECORD = registry.record(
    slug="adamp_sgdp",
    kind="optimizer",
    title="AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
    reference="arXiv:2006.08217",
    experiment="adamp_scale_invariance",
    pytorch_optimizer={"jaxlearn.optim.adamp": "AdamP", "jaxlearn.optim.sgdp": "SGDP"},
    notes=(
        "Layout: the per-channel view uses the LAST axis (Flax Dense (in, out), Conv HWIO); "
        "PyTorch and the official code use the first (pass channel_axis=0 for that layout). "
        "Follows the official code (clovaai/AdamP): bias corrections (the paper's listing has "
        "none), eps outside the corrected root, m_hat / (sqrt(v_hat) + eps) (pytorch-optimizer "
        "uses eps / sqrt(1 - b2^t), a larger eps early on), decoupled decay multiplied by lr "
        "and by wd_ratio on projected leaves, and for SGDP divided by 1 - momentum on every "
        "leaf. SGDP's momentum buffer is never projected, as in the paper's Algorithm 1 and "
        "pytorch-optimizer; the official SGDP without nesterov projects it in place (d_p "
        "aliases buf). The decay term is added inside scale_by_adamp / scale_by_sgdp because "
        "its factor depends on the projection. eps must be > 0 (the references allow 0, which "
        "gives 0/0 on zero gradients). Moments are kept in float32 at least. Complex "
        "parameters are not supported."
    ),
)
