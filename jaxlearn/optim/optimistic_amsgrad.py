r"""Optimistic AMSGrad: AMSGrad plus a step along a prediction of the next gradient.

Wang, Li, Karimi and Li, "An Optimistic Acceleration of AMSGrad for Nonconvex Optimization",
ACML 2021, arXiv:1903.01435 (first version: "Optimistic Adaptive Acceleration for Optimization");
official code: https://github.com/Hintonthu/optimistic-amsgrad (`Optadam_torch.py`,
`cifar10_opt.py`, `README.md`).

What could and could not be established. The paper could not be checked beyond its abstract and
first page, so the update below follows the official code:

.. math::

  \theta_t &= \beta_1 \theta_{t-1} + (1 - \beta_1) g_t, \qquad
  h_{t+1} = \beta_1 \theta_{t-1} + (1 - \beta_1) m_{t+1} \\
  v_t &= \beta_2 v_{t-1} + (1 - \beta_2) (g_t - m_{t+1})^2, \qquad
  \hat v_t = \max(\hat v_{t-1}, v_t) \\
  w_{t+1/2} &= w_{t-1/2} - \eta\, c_t \frac{\theta_t}{\sqrt{\hat v_t} + \varepsilon}, \qquad
  w_{t+1} = w_{t+1/2} - \eta\, c_t \frac{h_{t+1}}{\sqrt{\hat v_t} + \varepsilon}

with `c_t = sqrt(1 - b2^t) / (1 - b1^t)`, `w_{1/2} = w_1`, `m_{t+1}` the prediction of the next
gradient, and the gradient evaluated at the displayed iterate `w_t`. `h` uses `θ_{t-1}`, as the
official code does. The official defaults are η = 1e-3, β1 = 0.9, β2 = 0.99 (README), eps 1e-8,
span 5, ridge 1e-3.

The gradient predictor is the deviation. The official code extrapolates the last `span` weight
vectors with regularized minimal polynomial extrapolation (RMPE, Scieur et al. 2016: solve
`(U^T U + λ I) z = 1` for the matrix `U` of successive differences, normalize `c = z / sum(z)` and
combine the points with `c`) and evaluates the gradient of an auxiliary network at the
extrapolated weights: a second backward pass per step, which a `GradientTransformation` cannot
make. Its option help and docstring describe `span` as "the number of previous gradients used for
prediction", so here RMPE is applied to the last `span + 1` gradients themselves (same λ, same
pairing of each difference with its end point), per leaf. Until `span + 1` gradients have been
seen the prediction is 0, which makes the step AMSGrad's plus the retraction bookkeeping. The
official code also applies weight decay as an L2 term added to the gradient; `optimistic_amsgrad`
uses the library's decoupled weight decay (chain `optax.add_decayed_weights` in front for L2).
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "optimistic_amsgrad",
    "scale_by_optimistic_amsgrad",
    "rmpe_extrapolate",
    "ScaleByOptimisticAMSGradState",
]


class ScaleByOptimisticAMSGradState(NamedTuple):
  """State of `scale_by_optimistic_amsgrad` (all float leaves float32 or wider).

  Attributes:
    count: number of updates so far (int32).
    mu: θ_t, the EMA of the gradients.
    nu: v_t, the EMA of the squared prediction errors.
    root_nu_max: sqrt(v̂_t), v̂_t the running maximum of v_t; kept as the root, as
      `max(sqrt(v̂_{t-1}), sqrt(v_t))` (the same bits: sqrt is correctly rounded and
      nondecreasing), so that no kernel of its own takes the root of v̂ for the two that divide.
    history: per leaf, a ring of `span + 1` slots: the last gradient in slot
      `count % (span + 1)` and, cyclically after it, the last `span` gradient differences,
      oldest first, each negated (`x_l - x_{l+1}`). Together they hold the last `span + 1`
      gradients; a step writes two slots in place (the new gradient subtracted from the previous
      one, the new gradient over the oldest difference) instead of shifting them all.
    pending: per leaf, two slots (shape `(2,) + p.shape`): slot `count % 2` holds
      `c_t h_{t+1} / (sqrt(v̂_t) + eps)`, the optimistic half-step taken at the last step, which
      the next step retracts (the next iterate starts from `w_{t+1/2}`); the other slot, the
      one before. A step writes its half-step over the older one, in place, and the parameters
      read both: with one buffer, the new half-step overwrote the old one that the parameters
      still read, and XLA copied both (16 bytes per parameter and two temporary buffers).
    gram: (leaves, span, span): each leaf's Gram matrix of its last `span` differences, oldest
      first, kept up to date one new row per step.
    leaf_index: per leaf, its row in `gram` (int32). Read at run time, so that every leaf of a
      shape compiles to the same kernels: a constant row offset made each leaf's kernels
      distinct, each compiled separately (half the compile time).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_optimistic_amsgrad
    >>> state = scale_by_optimistic_amsgrad(span=3).init({"w": jnp.ones(2)})
    >>> state.history["w"].shape  # span differences and the last gradient
    (4, 2)
    >>> state.gram.shape  # one leaf's 3 x 3 Gram matrix of the differences
    (1, 3, 3)
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  root_nu_max: optax.Updates
  history: optax.Updates
  pending: optax.Updates
  gram: jax.Array
  leaf_index: Any


def rmpe_extrapolate(sequence: jax.Array, ridge: float | jax.Array = 1e-3) -> jax.Array:
  """Regularized minimal polynomial extrapolation of a sequence of arrays.

  With `x_0, ..., x_r` the entries of `sequence` along axis 0, `U` the r x d matrix of differences
  `x_i - x_{i-1}` (i = 1..r), solves `(U U^T + λ I) z = 1`, sets `c = z / sum(z)` and returns
  `sum_i c_i x_i` over i = 1..r (each difference paired with its end point, as in the official
  Optimistic-AMSGrad code). `U U^T + λ I` is positive definite for λ > 0, so `sum(z) > 0`.

  Args:
    sequence: array of shape (r + 1, ...), r >= 1.
    ridge: λ > 0.

  Returns:
    The extrapolated point, shape `sequence.shape[1:]`, float32 or wider.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import rmpe_extrapolate
    >>> sequence = jnp.array([[1.0], [0.5], [0.25], [0.125]])  # converging to 0
    >>> rmpe_extrapolate(sequence, ridge=1e-6).shape
    (1,)
  """
  points, gram = _points_and_gram(sequence)
  return _combine(_coefficients(gram, ridge), points)


def _points_and_gram(sequence: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The sequence in float32 or wider, and the r x r Gram matrix of its differences."""
  dtype = _common.wide_dtype(sequence.dtype)
  # Contracts over the trailing axes instead of flattening them: under an explicit mesh a sharded
  # array cannot always be reshaped, and the result keeps the entries' sharding. The r x r Gram
  # matrix is replicated (a dot over sharded axes needs its output sharding spelled out).
  points = sequence.astype(dtype)
  diffs = points[1:] - points[:-1]
  trailing = tuple(range(1, sequence.ndim))
  replicated = jax.typeof(diffs).sharding.update(spec=jax.P())
  gram = jnp.tensordot(
      diffs, diffs, (trailing, trailing), precision=jax.lax.Precision.HIGHEST,
      out_sharding=replicated,
  )
  return points, gram


def _coefficients(gram: jax.Array, ridge: float | jax.Array) -> jax.Array:
  """`c = z / sum(z)` with `(G + λ I) z = 1`, for one Gram matrix (r, r) or a stack (..., r, r)."""
  r = gram.shape[-1]
  z = jnp.linalg.solve(gram + ridge * jnp.eye(r, dtype=gram.dtype),
                       jnp.ones(gram.shape[:-1], gram.dtype)[..., None])[..., 0]
  return z / jnp.sum(z, axis=-1, keepdims=True)


def _combine(coefficients: jax.Array, points: jax.Array) -> jax.Array:
  return jnp.tensordot(coefficients, points[1:], 1, precision=jax.lax.Precision.HIGHEST)


def _slot(stack: jax.Array, i) -> jax.Array:
  """`stack[i]` for a traced `i` that is in range by construction (so JAX emits no code to wrap
  negative indices: 23% of this optimizer's traced program, once per leaf)."""
  return jax.lax.dynamic_index_in_dim(stack, i, 0, keepdims=False, allow_negative_indices=False)


def _with_slot(stack: jax.Array, value: jax.Array, i) -> jax.Array:
  """`stack.at[i].set(value)` for a traced `i` in range by construction."""
  return jax.lax.dynamic_update_index_in_dim(stack, value, i, 0, allow_negative_indices=False)


def _push_gradient(h: jax.Array, g: jax.Array, previous, current) -> tuple[jax.Array, jax.Array]:
  """The ring `h` with `g` pushed (the previous gradient's slot becomes the negated new
  difference, the oldest difference's slot becomes g), and the dot products of its slots with
  that negated difference, (span + 1,).

  A large leaf's slot is updated by a scatter-add of -g, which XLA:CPU runs in place (`slot -
  g` made it copy the old slot into a temporary first), and the dot products are one variadic
  reduction over the minor axis, 2.5x faster than a sum of the stack's product. A small leaf
  stays in cache: there, that reduction compiles several times slower, and the slot read back
  made XLA copy the ring, so the difference is written once and read by one sum.
  """
  if g.size > _common.CACHED_SIZE:
    h = h.at[previous].add(-g, mode="promise_in_bounds")
    h = _with_slot(h, g, current)
    negated = _slot(h, previous)
    return h, jnp.stack(_common.total_sums([h[j] * negated for j in range(h.shape[0])]))
  negated = _slot(h, previous) - g
  h = _with_slot(h, negated, previous)
  h = _with_slot(h, g, current)
  if g.ndim < 2:
    # XLA:CPU would recompute a vector's difference from the old slots inside the sum, which
    # then must copy them before they are overwritten: read it back from the new ones.
    negated = _slot(h, previous)
  return h, jnp.sum(h * negated, axis=tuple(range(1, h.ndim)))


def _predictions(updates, history, gram: jax.Array, leaf_index, count: jax.Array, ridge):
  """Every leaf's extrapolated gradient (`rmpe_extrapolate` of its last span + 1 gradients), the
  new history and the new Gram matrices.

  Each leaf's history is a ring of span + 1 slots: the last gradient in slot `count % (span + 1)`,
  then its span differences, oldest first (cyclically), each negated. A step subtracts the new
  gradient from the previous gradient's slot and overwrites the oldest difference's slot with the
  new gradient (shifting a stack of gradients rewrote all the slots), and writes no other
  difference: the new one's dot products with the slots (one pass, `_push_gradient`) give the one
  new row of each Gram matrix, whose other entries are the previous step's (the signs cancel). The
  Gram matrix is still one of differences, each entry a dot product of two of them (a Gram matrix
  of the points would lose the differences' digits to cancellation). With `c` the RMPE
  coefficients of the points `x_1..x_r` (`x_r` = g, differences `D_l = x_{l+1} - x_l`, oldest
  first) and `sum(c) = 1`, the prediction `sum_j c_j x_{j+1}` is `g + sum_l C_l (-D_l)`, `C_l` the
  sum of the coefficients before `l`: a second pass over the same slots, after the solve. ONE
  batched solve serves all the leaves (a solve per leaf made compile time grow faster than the
  leaf count). Before span + 1 gradients exist the prediction is 0.
  """
  leaves, treedef = jax.tree.flatten(history)
  if not leaves:
    return history, history, gram
  grads = treedef.flatten_up_to(updates)
  indices = treedef.flatten_up_to(leaf_index)
  span = gram.shape[-1]
  previous, current = jnp.mod(count - 1, span + 1), jnp.mod(count, span + 1)
  new_leaves, rows = [], []
  for h, g in zip(leaves, grads):
    h, row = _push_gradient(h, g.astype(h.dtype), previous, current)
    new_leaves.append(h)
    rows.append(row)
  # The slot of the k-th oldest difference, k = 0..span-1.
  order = jnp.mod(current + 1 + jnp.arange(span), span + 1)
  row = jnp.take(jnp.stack(rows), order, axis=1)  # (leaves, span), oldest first
  last = jnp.arange(span) == span - 1
  shifted = jnp.pad(gram[:, 1:, 1:], ((0, 0), (0, 1), (0, 1)))
  gram = jnp.where(last[:, None], row[:, None, :], jnp.where(last, row[:, :, None], shifted))
  coefficients = _coefficients(gram, ridge)
  # The slots' weights: 1 for the gradient, C_l for the l-th oldest (negated) difference; 0
  # before span + 1 gradients exist. As one small matrix product, so that XLA computes them
  # once: fused into the per-parameter kernels, the cumulative sums and the permutation ran
  # once per element.
  source = jnp.arange(span + 1)[:, None]  # coefficients c_0..c_{span-1}, then a constant 1
  age = jnp.mod(jnp.arange(span + 1) - current - 1, span + 1)[None, :]  # of the slot; span: g
  mapping = jnp.where(age == span, (source == span).astype(coefficients.dtype),
                      (source < age).astype(coefficients.dtype))
  mapping = jnp.where(count >= span + 1, mapping, 0.0)
  weights = jnp.dot(jnp.concatenate([coefficients, jnp.ones_like(coefficients[:, :1])], axis=-1),
                    mapping, precision=jax.lax.Precision.HIGHEST)
  # Slot by slot: as a reduction over the stack's leading axis, XLA:CPU took a minute per step.
  predictions = []
  for i, h in zip(indices, new_leaves):
    w = _slot(weights, i)
    # Slots as (1, ...) slices, reshaped once at the end: a reshape per slot made XLA's
    # simplifier move them down the chain of sums one add per iteration (7 iterations, not 5).
    predictions.append(sum(w[j] * h[j:j + 1] for j in range(span + 1)).reshape(h.shape[1:]))
  return (jax.tree.unflatten(treedef, predictions), jax.tree.unflatten(treedef, new_leaves),
          gram)


def _check_span(span) -> int | None:
  """`span` as a Python int, or None when it is traced.

  Under `optax.inject_hyperparams` an int default becomes an array and, inside a jitted update,
  a tracer; the update never needs it (the state's history length is span + 1), so a traced value
  is accepted and only `init` requires a concrete one.
  """
  if isinstance(span, jax.core.Tracer):
    return None
  if isinstance(span, bool):
    raise ValueError(f"span must be an integer >= 1, got {span!r}")
  try:
    span = operator.index(span)
  except TypeError:
    raise ValueError(f"span must be an integer >= 1, got {span!r}") from None
  _checks.check_positive_int("span", span)
  return span


def _float32_zeros(p, leading=()):
  """Zeros of shape `leading + p.shape`, float32 or wider, sharded like `p` (leading axes
  replicated), so that under an explicit mesh the state's type matches what `update` computes."""
  dtype = _common.wide_dtype(p.dtype)
  sharding = jax.typeof(p).sharding
  sharding = sharding.update(spec=jax.P(*(None,) * len(leading), *sharding.spec))
  return jnp.zeros(tuple(leading) + jnp.shape(p), dtype, out_sharding=sharding)


def scale_by_optimistic_amsgrad(
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-8,
    ridge: float = 1e-3,
    *,
    span: int = 5,
) -> optax.GradientTransformationExtraArgs:
  r"""The Optimistic-AMSGrad displacement `(w_t - w_{t+1}) / η` (see the module docstring).

  With `D_t = sqrt(v̂_t) + eps` and `c_t` the bias correction,

  .. math::

    u_t = c_t \frac{\theta_t + h_{t+1}}{D_t} - c_{t-1} \frac{h_t}{D_{t-1}}

  which is `w_t - w_{t+1}` divided by the learning rate: the half-step of the AMSGrad part and the
  new optimistic step, minus the optimistic step of the previous iteration (the iterate `w_t`
  carries it, `w_{t+1/2}` does not). `m_{t+1} = rmpe_extrapolate(last span + 1 gradients, ridge)`
  per leaf, 0 until that many gradients have been seen.

  Args:
    b1: decay of θ, in [0, 1).
    b2: decay of v, in [0, 1).
    eps: added to sqrt(v̂), > 0.
    ridge: the RMPE regularization λ, > 0 (official 1e-3).
    span: number r of gradient differences in the extrapolation, an int >= 1 (official 5);
      memory is `span + 1` extra copies of the parameters.

  Returns:
    A `GradientTransformationExtraArgs`; state `ScaleByOptimisticAMSGradState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_optimistic_amsgrad
    >>> params = {"w": jnp.ones((3, 2))}
    >>> opt = optax.chain(scale_by_optimistic_amsgrad(span=3), optax.scale_by_learning_rate(1e-2))
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.full((3, 2), 0.5)}, state, params)

  References:
    Wang et al., `An Optimistic Acceleration of AMSGrad for Nonconvex Optimization
    <https://arxiv.org/abs/1903.01435>`_, ACML 2021.
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_positive("eps", eps)
  _checks.check_positive("ridge", ridge)
  span = _check_span(span)

  def init_fn(params):
    if span is None:
      raise ValueError(
          "span must be a concrete integer when the state is initialized (it sets the history "
          "length); with inject_hyperparams under jit, pass static_args=('span',)"
      )
    zeros = lambda: jax.tree.map(_float32_zeros, params)
    leaves, treedef = jax.tree.flatten(params)
    return ScaleByOptimisticAMSGradState(
        count=jnp.zeros([], jnp.int32),
        mu=zeros(),
        nu=zeros(),
        root_nu_max=zeros(),
        history=jax.tree.map(lambda p: _float32_zeros(p, (span + 1,)), params),
        pending=jax.tree.map(lambda p: _float32_zeros(p, (2,)), params),
        gram=jnp.zeros((len(leaves), span, span), jnp.float32),
        leaf_index=jax.tree.unflatten(treedef, [jnp.asarray(i, jnp.int32)
                                                for i in range(len(leaves))]),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "scale_by_optimistic_amsgrad")
    count = numerics.safe_increment(state.count)
    step = count.astype(jnp.float32)
    correction = _common.folded_bias_correction(b1, b2, step)

    prediction, history, gram = _predictions(
        updates, state.history, state.gram, state.leaf_index, count, ridge)
    mu = _common.update_moment(updates, state.mu, b1)
    errors = jax.tree.map(lambda g, p: g.astype(p.dtype) - p, updates, prediction)
    nu = _common.update_moment(errors, state.nu, b2, order=2)
    root_nu_max = jax.tree.map(lambda r, v: jnp.maximum(r, jnp.sqrt(v)), state.root_nu_max, nu)
    denominators = jax.tree.map(lambda r: r + eps, root_nu_max)
    # h_{t+1} = b1 θ_{t-1} + (1 - b1) m_{t+1}, written as θ_t - (1 - b1)(g_t - m_{t+1}) so that
    # only θ's own kernel reads the donated θ_{t-1} (another reader costs a copy of it).
    optimistic = jax.tree.map(lambda m, e: m - (1.0 - b1) * e, mu, errors)
    new_slot = jnp.mod(count, 2)
    pending = jax.tree.map(
        lambda slots, h, d: _with_slot(slots, correction * h / d, new_slot),
        state.pending, optimistic, denominators)
    directions = jax.tree.map(
        lambda m, d, slots, g: (correction * m / d + _slot(slots, new_slot)
                                - _slot(slots, 1 - new_slot)).astype(g.dtype),
        mu,
        denominators,
        pending,
        updates,
    )
    new_state = ScaleByOptimisticAMSGradState(
        count, mu, nu, root_nu_max, history, pending, gram, state.leaf_index)
    return directions, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def optimistic_amsgrad(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-8,
    ridge: float = 1e-3,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    span: int = 5,
) -> optax.GradientTransformationExtraArgs:
  """Optimistic AMSGrad: `w_{t+1} = w_t - η (u_t + λ w_t)` with `u_t` from
  `scale_by_optimistic_amsgrad` and decoupled weight decay λ.

  With a learning-rate schedule the previous optimistic half-step is retracted at the current
  learning rate (exact for a constant one; the official code keeps `w_{t+1/2}` explicitly).

  Args:
    learning_rate: η, a number or a schedule, >= 0 (official 1e-3).
    b1: decay of θ, in [0, 1).
    b2: decay of v, in [0, 1) (official 0.99).
    eps: added to sqrt(v̂), > 0.
    ridge: RMPE regularization λ, > 0.
    weight_decay: decoupled weight decay, >= 0, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    span: number of gradient differences in the extrapolation, an int >= 1.

  Returns:
    A `GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import optimistic_amsgrad
    >>> opt = optimistic_amsgrad(0.1, span=2)
    >>> params = jnp.zeros(2)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([1.0, -2.0]), state, params)
    >>> [round(float(u), 4) for u in updates]
    [-0.1, 0.1]
  """
  scale = scale_by_optimistic_amsgrad(b1, b2, eps, ridge, span=span)
  return _common.alias(scale, learning_rate, weight_decay, weight_decay_mask)


RECORD = registry.record(
    slug="optimistic_amsgrad",
    kind="optimizer",
    title="An Optimistic Acceleration of AMSGrad for Nonconvex Optimization",
    reference="arXiv:1903.01435",
    experiment="optimistic_amsgrad_steps_to_target",
    notes=(
        "NOT ESTABLISHED FROM THE PAPER: only its abstract and first page could be checked, "
        "so the update (theta, h = b1 theta_{t-1} + (1-b1) m, v on (g - m)^2, "
        "AMSGrad max, half-step/optimistic-step pair, bias-corrected step size) is read from "
        "the official code (Hintonthu/optimistic-amsgrad, Optadam_torch.py). The official "
        "gradient predictor extrapolates the last `span` WEIGHTS with RMPE and evaluates an "
        "auxiliary network's gradient there (an extra backward pass, impossible inside a "
        "GradientTransformation); here RMPE (same ridge 1e-3, same pairing) is applied to the "
        "last span+1 gradients, as the official option help describes ('previous gradients "
        "used for prediction'). Prediction is 0 until span+1 gradients exist. Weight decay is "
        "decoupled (official: L2 added to the gradient). With an lr schedule the previous "
        "optimistic step is retracted at the current lr. `span` fixes a state shape: pass "
        "static_args=('span',) to inject_hyperparams when init is jitted."
    ),
)
