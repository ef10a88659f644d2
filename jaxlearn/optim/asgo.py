r"""ASGO: a one-sided adaptive preconditioner on the smaller side of each weight matrix; DASGO.

An, Liu, Pan, Ren, Ma, Goldfarb and Zhang, "ASGO: Adaptive Structured Gradient Optimization",
arXiv:2503.20762 (NeurIPS 2025). Official code: https://github.com/infinity-stars/ASGO (commit
d3ef14b), files ``optimizers/asgo.py``, ``optimizers/dasgo.py``,
``optimizers/utils/matrix_decom.py`` and ``optimizers/utils/utils.py``.

This follows the official code, which the paper's experiments use. Every weight matrix
:math:`G \in \mathbb{R}^{m \times n}` (fan-in x fan-out, the view of `jaxlearn.optim.matrix`) is
preconditioned from its smaller side only:

.. math::

   M_t &= \mu M_{t-1} + (1 - \mu) G_t \\
   V_t &= \beta_2 V_{t-1} + (1 - \beta_2) G_t G_t^\top, \quad
       U_t = V_t^{-1/2} M_t \qquad (m \le n,\ V_t \in \mathbb{R}^{m \times m}) \\
   V_t &= \beta_2 V_{t-1} + (1 - \beta_2) G_t^\top G_t, \quad
       U_t = M_t V_t^{-1/2} \qquad (m > n,\ V_t \in \mathbb{R}^{n \times n}) \\
   \tilde U_t &= 0.2 \sqrt{mn}\, U_t / \|U_t\|_F \\
   \theta_t &= (1 - \eta\lambda)\,\theta_{t-1} - \eta\, \tilde U_t

:math:`M_0 = V_0 = 0` and no bias correction (the official ``lerp``). The rescale gives every
update an RMS of 0.2 (Moonlight's convention), so the step size is set by :math:`\eta` alone.
:math:`V_t^{-1/2}` is recomputed every step by the coupled Newton-Schulz iteration with
PolarExpress's coefficients (`jaxlearn.optim.matrix.inverse_sqrt_newton_schulz`, 10 steps,
:math:`\epsilon` in the normalization only); a non-finite root is replaced by the identity, as
officially.

The paper's analysed algorithm accumulates :math:`V_t = V_{t-1} + G_t G_t^\top` (AdaGrad-style):
``accumulate="sum"``. DASGO, the diagonal variant (``optimizers/dasgo.py``), keeps one number per
fan-in unit: :math:`v_t = \beta_2 v_{t-1} + (1 - \beta_2) \sum_j G_{t,ij}^2`,
:math:`U_t = \operatorname{diag}(v_t + \epsilon)^{-1/2} M_t`, and the same rescale.

Leaves without a matrix view (biases, scales; `jaxlearn.optim.matrix`) go to a fallback; the
official code gives them, and every leaf whose name contains ``emb``, PyTorch's Adam (betas 0.9 and
0.95, eps 1e-8, no weight decay) at the same learning rate, which is the default here. Embeddings
are not recognized by name: pass ``dimension_numbers`` with None for them.

Deviations from the official code, all in cases it does not run or where it fails:

* a zero update (a zero gradient so far) is kept zero; the official rescale divides 0 by 0;
* the tie :math:`m = n` preconditions the fan-in side, as the official code does for a square
  PyTorch ``(out, in)`` weight (its :math:`G^\top G`);
* conv kernels and scan-stacked layers are preconditioned per matrix of their matrix view (the
  official code accepts 2-D weights only);
* ``inverse_root="eigh"`` gives the exact pseudo-inverse root instead of the iteration.

:math:`V_t` is not shaped like the parameter: under parameter sharding it is replicated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks, registry
from jaxlearn.optim import _common, matrix

__all__ = [
    "asgo",
    "scale_by_asgo",
    "ScaleByASGOState",
    "dasgo",
    "scale_by_dasgo",
]

ACCUMULATIONS = ("ema", "sum")
INVERSE_ROOTS = ("polar_express", "eigh")
RMS = 0.2  # the official code's target RMS of an update (Moonlight's 0.2)


class ScaleByASGOState(NamedTuple):
  """State of `scale_by_asgo` and `scale_by_dasgo`.

  Attributes:
    momentum: the momentum :math:`M_t`, shaped like the parameters (float32 or wider).
    preconditioner: per leaf, :math:`V_t` of each matrix of its matrix view: ``(batch, k, k)``
      with ``k = min(m, n)`` for ASGO, ``(batch, m)`` for DASGO (float32 or wider). Not shaped
      like the parameter, so replicated under parameter sharding.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_asgo
    >>> state = scale_by_asgo().init({"kernel": jnp.ones((8, 3), jnp.bfloat16)})
    >>> state.preconditioner["kernel"].shape, state.preconditioner["kernel"].dtype
    ((1, 3, 3), dtype('float32'))
  """

  momentum: optax.Updates
  preconditioner: optax.Updates


def _left(shape, spec) -> bool:
  """Whether V sits on the fan-in side (m <= n, the tie included), as in the official code."""
  _, m, n = matrix.matrix_shape(shape, spec)
  return m <= n


def _rms_factor(norm: jax.Array, shape) -> jax.Array:
  """The factor that scales (m, n) matrices of Frobenius norm `norm` to RMS 0.2; 0 for a zero
  matrix (no 0/0)."""
  target = RMS * (shape[-2] * shape[-1]) ** 0.5
  return jnp.where(norm > 0, target / jnp.where(norm > 0, norm, 1.0), 0.0)


def _rescale(u: jax.Array) -> jax.Array:
  """`u` (batch, m, n) scaled to RMS 0.2 per matrix; a zero matrix stays zero (no 0/0)."""
  norm = jnp.linalg.norm(u, axis=(-2, -1), keepdims=True)
  return u * _rms_factor(norm, u.shape)


def _accumulate(v, new, beta2, accumulate):
  return v + new if accumulate == "sum" else beta2 * v + (1.0 - beta2) * new


def _scale_by_sided(name, momentum, dimension_numbers, precondition_shape, preconditioned):
  """The transform both variants share: momentum, a per-matrix statistic V, a rescaled U.

  `precondition_shape(shape, spec) -> V's shape`; `preconditioned(g, m, v, spec) -> (Ũ, V)`
  on the (batch, m, n) matrices of a leaf, Ũ rescaled to RMS 0.2.
  """

  def init_fn(params):
    leaves, specs, treedef = matrix.matrix_leaves(params, dimension_numbers, name)
    dtypes = [_common.wide_dtype(p.dtype) for p in leaves]
    moments = [optax.tree.zeros_like(p, dtype=d) for p, d in zip(leaves, dtypes)]  # p's sharding
    stats = [jnp.zeros(precondition_shape(p.shape, s), d)
             for p, s, d in zip(leaves, specs, dtypes)]
    return ScaleByASGOState(treedef.unflatten(moments), treedef.unflatten(stats))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, name)
    leaves, specs, treedef = matrix.matrix_leaves(updates, dimension_numbers, name)
    moments, stats = treedef.flatten_up_to(state.momentum), treedef.flatten_up_to(
        state.preconditioner)
    new_updates, new_moments, new_stats = [], [], []
    for g, mom, v, spec in zip(leaves, moments, stats, specs):
      wide = g.astype(mom.dtype)
      mom = (momentum * mom + (1.0 - momentum) * wide).astype(mom.dtype)
      # Matrix products on replicated copies (a no-op unless an explicit mesh shards the leaf).
      u, v = preconditioned(matrix.to_matrices(matrix.replicated(wide), spec),
                            matrix.to_matrices(matrix.replicated(mom), spec), v, spec)
      update = matrix.from_matrices(u, spec, g.shape)
      new_updates.append(matrix.sharded_like(update, g).astype(g.dtype))
      new_moments.append(mom)
      new_stats.append(v.astype(mom.dtype))
    return treedef.unflatten(new_updates), ScaleByASGOState(
        treedef.unflatten(new_moments), treedef.unflatten(new_stats))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_common(momentum, beta2, eps, accumulate):
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_unit_interval("beta2", beta2)
  _checks.check_non_negative("eps", eps)
  _checks.check_choice("accumulate", accumulate, ACCUMULATIONS)


def scale_by_asgo(
    momentum: float = 0.9,
    beta2: float = 0.8,
    eps: float = 1e-10,
    *,
    ns_steps: int = 10,
    accumulate: str = "ema",
    inverse_root: str = "polar_express",
    dimension_numbers: matrix.DimensionNumbers = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The ASGO direction :math:`\tilde U_t` of every matrix leaf (see the module docstring).

  .. math::

     U_t = V_t^{-1/2} M_t \ (m \le n), \qquad U_t = M_t V_t^{-1/2} \ (m > n), \qquad
     \tilde U_t = 0.2 \sqrt{mn}\, U_t / \|U_t\|_F

  Every leaf needs a matrix view: use `asgo` (or `jaxlearn.optim.matrix.partition_matrices`) for
  trees with biases.

  Args:
    momentum: :math:`\mu`, in [0, 1) (official 0.9).
    beta2: :math:`\beta_2` of the EMA of :math:`GG^\top`, in [0, 1) (official 0.8; unused with
      ``accumulate="sum"``).
    eps: added to the diagonal inside the iteration's normalizing norm only, >= 0 (official
      1e-10; unused by ``inverse_root="eigh"``).
    ns_steps: coupled Newton-Schulz steps (official 10).
    accumulate: ``"ema"`` (official code) or ``"sum"`` (the paper's
      :math:`V_t = V_{t-1} + G_t G_t^\top`).
    inverse_root: ``"polar_express"`` (official) or ``"eigh"``: the exact pseudo-inverse root
      (`jaxlearn.optim.matrix.inverse_pth_root`, eigenvalues below 1e-6 of the largest count as
      zero).
    dimension_numbers: the matrix view (`jaxlearn.optim.matrix.leaf_dimension_numbers`); None:
      the flax layouts.

  Returns:
    A `GradientTransformationExtraArgs`; its state is a `ScaleByASGOState`.

  References:
    An, Liu, Pan, Ren, Ma, Goldfarb and Zhang, `ASGO: Adaptive Structured Gradient Optimization
    <https://arxiv.org/abs/2503.20762>`_, NeurIPS 2025. Official code:
    https://github.com/infinity-stars/ASGO (``optimizers/asgo.py``, ``optimizers/dasgo.py``,
    ``optimizers/utils/matrix_decom.py``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_asgo
    >>> opt = scale_by_asgo()
    >>> g = {"kernel": jnp.arange(6.0).reshape(3, 2)}
    >>> u, state = jax.jit(opt.update)(g, opt.init(g))  # jitted: one compile, not one per op
    >>> round(float(jnp.sqrt(jnp.mean(u["kernel"] ** 2))), 4)  # RMS 0.2
    0.2
  """
  _check_common(momentum, beta2, eps, accumulate)
  _checks.check_positive_int("ns_steps", ns_steps)
  _checks.check_choice("inverse_root", inverse_root, INVERSE_ROOTS)

  def precondition_shape(shape, spec):
    batch, m, n = matrix.matrix_shape(shape, spec)
    k = m if _left(shape, spec) else n
    return (batch, k, k)

  def inverse_sqrt(v):
    if inverse_root == "eigh":
      root = matrix.inverse_pth_root(v, 2)
    else:
      root = matrix.inverse_sqrt_newton_schulz(v, steps=ns_steps, eps=eps)
    finite = jnp.all(jnp.isfinite(root), axis=(-2, -1), keepdims=True)
    return jnp.where(finite, root, jnp.eye(v.shape[-1], dtype=v.dtype))  # official fallback

  def preconditioned(g, m, v, spec):
    left = g.shape[-2] <= g.shape[-1]
    gram = g @ jnp.swapaxes(g, -1, -2) if left else jnp.swapaxes(g, -1, -2) @ g
    v = _accumulate(v, gram, beta2, accumulate)
    root = inverse_sqrt(v)
    return _rescale(root @ m if left else m @ root), v

  return _scale_by_sided("scale_by_asgo", momentum, dimension_numbers, precondition_shape,
                         preconditioned)


def scale_by_dasgo(
    momentum: float = 0.9,
    beta2: float = 0.95,
    eps: float = 1e-8,
    *,
    accumulate: str = "ema",
    dimension_numbers: matrix.DimensionNumbers = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The DASGO direction: ASGO with a diagonal preconditioner on the fan-in side.

  .. math::

     v_t = \beta_2 v_{t-1} + (1 - \beta_2) \textstyle\sum_j G_{t,ij}^2, \qquad
     U_t = \operatorname{diag}(v_t + \epsilon)^{-1/2} M_t, \qquad
     \tilde U_t = 0.2 \sqrt{mn}\, U_t / \|U_t\|_F

  The official code (``optimizers/dasgo.py``) sums over PyTorch's output dimension, i.e. keeps
  one number per input unit whatever the shape; so does this, on the fan-in axis of the matrix
  view.

  Args:
    momentum: :math:`\mu`, in [0, 1) (official 0.9).
    beta2: in [0, 1) (official 0.95; unused with ``accumulate="sum"``).
    eps: added to :math:`v_t` under the root, >= 0 (official 1e-8).
    accumulate: ``"ema"`` (official) or ``"sum"``.
    dimension_numbers: the matrix view; None: the flax layouts.

  Returns:
    A `GradientTransformationExtraArgs`; its state is a `ScaleByASGOState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_dasgo
    >>> opt = scale_by_dasgo()
    >>> state = opt.init({"kernel": jnp.zeros((5, 2))})
    >>> state.preconditioner["kernel"].shape  # one number per fan-in unit
    (1, 5)
  """
  _check_common(momentum, beta2, eps, accumulate)

  def precondition_shape(shape, spec):
    batch, m, _ = matrix.matrix_shape(shape, spec)
    return (batch, m)

  def preconditioned(g, m, v, spec):
    v = _accumulate(v, jnp.sum(jnp.square(g), axis=-1), beta2, accumulate)
    row_scale = jax.lax.rsqrt(v + eps)
    # ||diag(r) M||_F from the row sums of M², so U is never written to memory: the parameter
    # kernel computes it from M (one pass and one full-size temporary fewer than `_rescale`).
    norm = jnp.sqrt(jnp.sum(jnp.square(row_scale) * jnp.sum(jnp.square(m), axis=-1), axis=-1,
                           keepdims=True))
    return m * (row_scale * _rms_factor(norm, m.shape))[..., None], v

  return _scale_by_sided("scale_by_dasgo", momentum, dimension_numbers, precondition_shape,
                         preconditioned)


def _official_adam(learning_rate):
  """The official code's optimizer for non-matrix leaves: Adam(0.9, 0.95, eps 1e-8), no decay."""
  return _common.compute_in_float32(optax.adam(learning_rate, b1=0.9, b2=0.95, eps=1e-8))


def asgo(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    momentum: float = 0.9,
    beta2: float = 0.8,
    eps: float = 1e-10,
    weight_decay: optax.ScalarOrSchedule = 0.1,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    ns_steps: int = 10,
    accumulate: str = "ema",
    inverse_root: str = "polar_express",
    dimension_numbers: matrix.DimensionNumbers = None,
    fallback: matrix.Fallback = None,
) -> optax.GradientTransformationExtraArgs:
  r"""ASGO: Adaptive Structured Gradient Optimization (official code's form).

  .. math::

     \theta_t = (1 - \eta\lambda)\,\theta_{t-1} - \eta\, \tilde U_t

  on the leaves with a matrix view (:math:`\tilde U_t` from `scale_by_asgo`, decoupled weight
  decay :math:`\lambda` times the learning rate :math:`\eta`, as officially), the fallback on
  the others. Defaults are those in effect in the official code (lr 0.01 from its config;
  momentum 0.9, beta2 0.8, eps 1e-10, wd 0.1, 10 PolarExpress steps from the class).

  Args:
    learning_rate: :math:`\eta`, a number or a schedule, >= 0.
    momentum: :math:`\mu`, in [0, 1).
    beta2: EMA rate of :math:`GG^\top`, in [0, 1).
    eps: >= 0, see `scale_by_asgo`.
    weight_decay: :math:`\lambda` >= 0 on the matrix leaves, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    ns_steps: coupled Newton-Schulz steps.
    accumulate: ``"ema"`` or ``"sum"``.
    inverse_root: ``"polar_express"`` or ``"eigh"``.
    dimension_numbers: the matrix view; None marks a leaf for the fallback.
    fallback: for the leaves without a matrix view: None (the official Adam, betas 0.9/0.95,
      eps 1e-8, no decay, at `learning_rate`, state in float32), an optax transformation (used
      as is), or a callable ``learning_rate -> transformation``.

  Returns:
    A `GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.optim import asgo
    >>> params = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}
    >>> opt = asgo(0.01)
    >>> grads = {"kernel": jnp.arange(12.0).reshape(4, 3), "bias": jnp.ones(3)}
    >>> updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
    >>> [round(float(u), 4) for u in updates["bias"]]  # Adam's first step: -lr * sign(g)
    [-0.01, -0.01, -0.01]
  """
  scale = scale_by_asgo(momentum, beta2, eps, ns_steps=ns_steps, accumulate=accumulate,
                        inverse_root=inverse_root, dimension_numbers=dimension_numbers)
  return matrix.matrix_alias(scale, "asgo", learning_rate, weight_decay, weight_decay_mask,
                             fallback, _official_adam, dimension_numbers)


def dasgo(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    momentum: float = 0.9,
    beta2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.1,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    accumulate: str = "ema",
    dimension_numbers: matrix.DimensionNumbers = None,
    fallback: matrix.Fallback = None,
) -> optax.GradientTransformationExtraArgs:
  r"""DASGO, ASGO's diagonal variant: `scale_by_dasgo`, decay and learning rate as in `asgo`.

  Defaults are those in effect in the official code (lr 0.01 from its config, which it passes;
  momentum 0.9, beta2 0.95, eps 1e-8, wd 0.1 from the class).

  Args:
    learning_rate: a number or a schedule, >= 0.
    momentum: in [0, 1).
    beta2: in [0, 1).
    eps: >= 0, added under the root.
    weight_decay: >= 0 on the matrix leaves, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params.
    accumulate: ``"ema"`` or ``"sum"``.
    dimension_numbers: the matrix view; None marks a leaf for the fallback.
    fallback: as in `asgo` (default: the official Adam at `learning_rate`).

  Returns:
    A `GradientTransformationExtraArgs`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.optim import dasgo
    >>> params = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}
    >>> opt = dasgo(0.01, weight_decay=0.0)
    >>> updates, _ = jax.jit(opt.update)({"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
    ...                                  opt.init(params), params)
    >>> print(updates["kernel"][0])  # RMS 0.2, times -lr
    [-0.002 -0.002 -0.002]
  """
  scale = scale_by_dasgo(momentum, beta2, eps, accumulate=accumulate,
                         dimension_numbers=dimension_numbers)
  return matrix.matrix_alias(scale, "dasgo", learning_rate, weight_decay, weight_decay_mask,
                             fallback, _official_adam, dimension_numbers)


RECORD = registry.record(
    slug="asgo",
    kind="optimizer",
    title="ASGO: Adaptive Structured Gradient Optimization",
    reference="arXiv:2503.20762",
    experiment="asgo_low_rank",
    notes=(
        "Follows the official code (infinity-stars/ASGO d3ef14b): one-sided preconditioner on "
        "the smaller side (the tie m = n on the fan-in side, as the official G^T G of a square "
        "torch weight), EMAs from zero without bias correction (momentum 0.9, beta2 0.8), "
        "V^-1/2 by 10 coupled Newton-Schulz steps with PolarExpress coefficients (eps 1e-10 in "
        "the normalization only; a non-finite root becomes the identity), the RMS-0.2 rescale, "
        "decoupled wd 0.1 x lr; non-matrix leaves go to the official Adam(0.9, 0.95, eps 1e-8, "
        "no wd) at the same lr (the fallback= argument). Options: accumulate='sum' (the paper's "
        "AdaGrad-type V), inverse_root='eigh' (exact pseudo-inverse root). Deviations: a zero "
        "update stays zero (the official rescale divides 0 by 0); conv and scan-stacked leaves "
        "are preconditioned per matrix of their view (official: 2-D only); embeddings are not "
        "recognized by name (give them None in dimension_numbers). DASGO (dasgo, "
        "scale_by_dasgo) follows optimizers/dasgo.py: one EMA (beta2 0.95) of the squared "
        "gradient per fan-in unit, eps 1e-8 under the root, same rescale. Not taken from the "
        "paper body (not read): its practical variants (root every tau steps, head-wise Q/K)."
    ),
)
