r"""Fira: Adam in a GaLore low-rank subspace plus a norm-scaled full-rank residual.

Chen, Feng, Li, Lai, Yue, Yuan and Wang, "Fira: Can We Achieve Full-rank Training of LLMs Under
Low-rank Constraint?", arXiv:2410.01623 (2024); official code: https://github.com/xichen-fy/Fira
(`optimizer_torch/fira_adamw.py`, `optimizer_torch/gradient_projection.py`; the PyPI package
`fira` 1.0.2 ships the same file).

GaLore keeps Adam's moments only for the projection of each matrix gradient onto its top-`r`
singular subspace, so the optimizer state is low rank, but so is the step. Fira adds back the
part of the gradient the projection drops, rescaled column- (or row-) wise by the factor Adam
applied to the projected part, and caps how fast that residual may grow. Per matrix leaf
:math:`G_t \in \mathbb{R}^{m \times n}` (the matrix view of `jaxlearn.optim.matrix`), rank `r`,
projection gap `T`, as the official code computes it:

.. math::

   P_t &= \mathrm{top}_r(G_t) \text{ if } (t - 1) \bmod T = 0 \text{ else } P_{t-1}, \qquad
   R_t = \begin{cases} G_t P_t^\top & m \ge n\ (P_t = V_r^\top) \\
                       P_t^\top G_t & m < n\ (P_t = U_r) \end{cases} \\
   M_t &= \beta_1 M_{t-1} + (1 - \beta_1) R_t, \qquad
   V_t = \beta_2 V_{t-1} + (1 - \beta_2) R_t^2, \qquad
   N_t = \frac{M_t}{\sqrt{V_t} + \epsilon} \\
   \phi_t &= \frac{\lVert N_t \rVert_{\text{rank axis}}}{\lVert R_t \rVert_{\text{rank axis}}
             + 10^{-8}}, \qquad
   \tilde S_t = \bigl(G_t - \alpha\, \mathrm{back}(R_t)\bigr) \odot \phi_t \\
   \ell_t &= \max\Bigl(\frac{\lVert \tilde S_t \rVert_F}{\zeta_{t-1} + 10^{-8}},
             \gamma\Bigr) \Big/ \gamma \ (\ell_1 = 1), \qquad
   S_t = \tilde S_t / \ell_t, \qquad \zeta_t = \lVert S_t \rVert_F, \qquad \gamma = 1.01 \\
   W_t &= (1 - \eta\lambda)\Bigl(W_{t-1} - \eta\, c_t \bigl(\alpha\, \mathrm{back}(N_t) + S_t
          \bigr)\Bigr), \qquad c_t = \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t},

with :math:`\mathrm{back}(X) = X P_t` or :math:`P_t X` and one factor of :math:`\phi_t` per row
(:math:`m \ge n`) or column (:math:`m < n`): the norms run over the rank axis of `N` and `R`.
The residual uses the full gradient, so the step is full rank while the state is
:math:`2\,\max(m, n)\, r + \min(m, n)\, r + 1` numbers instead of Adam's :math:`2mn`. Leaves that
are not matrices get plain AdamW (the same moments, bias correction and decay) inside the same
optimizer, as in the official code; pass `fallback=` to give them another optimizer.

Choices and differences, each tested in `tests/optim/test_fira.py`:

* **Decay after the step.** The official code (and pytorch-optimizer's `Fira`) decays the
  *updated* weights, :math:`W \leftarrow (1 - \eta\lambda)(W - \eta c_t U_t)` with
  :math:`U_t = \alpha\,\mathrm{back}(N_t) + S_t`; `fira` does the same.
  `jaxlearn.optim._common.alias` decays the weights before the step, which differs by
  :math:`\eta^2 \lambda c_t U_t`.
* **Projector refresh** when the step count *before* the increment is a multiple of `T`
  (updates 1, T + 1, 2T + 1, ...), as the official code. pytorch-optimizer 4.1.0 passes the
  incremented count and refreshes one update earlier (updates 1, T, 2T, ...).
* **Side.** ``side="std"`` (default, GaLore's and Fira's) projects the smaller side;
  ``"reverse_std"`` the larger one, which is what `optax.contrib.scale_by_galore` does. For a
  square matrix ``"std"`` keeps :math:`G P^\top`, as the official code, but the flax layout
  ``(in, out)`` is the transpose of PyTorch's ``(out, in)``, so the kept side is the other one.
* ``residual=False`` drops :math:`S_t` and gives the official GaLore (`galore_adamw.py`):
  :math:`c_t\,\alpha\, \mathrm{back}(N_t)`.
* **Signs.** Singular vectors have arbitrary signs, and the moments are carried across a
  refresh without rotation, so from the second refresh on the steps depend on the SVD routine
  (routines and devices may choose differently). `scale_by_fira` flips each kept singular
  vector so that its largest-magnitude entry is positive.
* **Sweeps.** The refresh is one `lax.cond` for all the matrices; under `vmap` (a vmapped
  learning-rate sweep) a custom batching rule keeps it a branch taken when any run refreshes,
  instead of the `select` that would compute an SVD at every step.
* **Sharding.** The low-rank moments, projectors and norms are not shaped like their
  parameter, so `jaxlearn.train.parallel.like_params` replicates them; the moments of the
  leaves that are not matrices follow their parameter.
* The state is float32 (the official code casts the projector to the parameter dtype); a `rank`
  larger than a matrix allows raises a ValueError naming `rank` (optax clamps it). The default
  ``rank=None`` keeps :math:`\min(8, m, n)` directions per matrix (8: the official package's
  `divide_params` default), so that `fira` runs on any model.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from jaxlearn import _checks, registry
from jaxlearn.optim import _common, matrix

__all__ = [
    "fira",
    "scale_by_fira",
    "ScaleByFiraState",
]

GROWTH_LIMIT = 1.01  # γ: the residual's norm may grow by at most 1 % per step (official value)
_TINY = 1e-8  # the official code's guard in φ and in the limiter


class ScaleByFiraState(NamedTuple):
  r"""State of `scale_by_fira`.

  Per leaf, for a matrix leaf with `b` matrices (scan-stacked axes) of shape ``m x n``, kept
  side ``k`` (``m x r`` coordinates when ``m >= n`` with ``side="std"``, else ``r x n``):

  Attributes:
    count: number of updates so far (int32).
    mu: first moment :math:`M_t` of the low-rank coordinates, ``(b, *k)`` (param-shaped for a
      leaf that is not a matrix).
    nu: second moment :math:`V_t`, like `mu`.
    projector: :math:`P_t`, ``(b, r, n)`` or ``(b, m, r)`` (a float32 scalar 0 for a leaf that
      is not a matrix).
    residual_norm: :math:`\zeta_t`, the norm of the last limited residual, ``(b,)`` (a scalar 0
      for a leaf that is not a matrix).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_fira
    >>> state = scale_by_fira(rank=2).init({"w": jnp.ones((6, 4), jnp.bfloat16)})
    >>> state.mu["w"].shape, state.projector["w"].shape, state.mu["w"].dtype
    ((1, 6, 2), (1, 2, 4), dtype('float32'))
  """

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  projector: optax.Updates
  residual_norm: optax.Updates


def _leaf_paths(tree: Any) -> list[str]:
  return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


DEFAULT_RANK = 8  # the official package's `divide_params` default


def _low_rank_shapes(shape, spec, rank: int | None, side: str, where: str):
  """(coordinates shape, projector shape, batch) of a matrix leaf; checks `rank`."""
  batch, m, n = matrix.matrix_shape(shape, spec)
  if rank is None:
    rank = min(DEFAULT_RANK, m, n)
  matrix.check_rank(rank, (m, n), f" of leaf {where}")
  if matrix.projects_right((m, n), side):
    return (batch, m, rank), (batch, rank, n), batch
  return (batch, rank, n), (batch, m, rank), batch


def _canonical_signs(projector: jax.Array, right: bool) -> jax.Array:
  """Flips each kept singular vector so that its largest-magnitude entry is positive.

  Singular vectors have arbitrary signs (LAPACK routines and backends differ), and the moments
  are not rotated at a refresh, so after a second refresh the steps depend on them: fixing the
  signs makes runs reproducible across backends, batching and reference implementations.
  """
  axis = -1 if right else -2  # the vectors are the rows of (b, r, n) or the columns of (b, m, r)
  largest = jnp.argmax(jnp.abs(projector), axis=axis, keepdims=True)
  sign = jnp.sign(jnp.take_along_axis(projector, largest, axis=axis))
  return projector * jnp.where(sign == 0, 1.0, sign)


def _refresh_if(pred: jax.Array, compute: Callable[[Any], Any], x: Any, old: Any) -> Any:
  """`compute(x)` if `pred` else `old` (pytrees), as `lax.cond`, and still a branch under `vmap`.

  `vmap` turns a `lax.cond` with a batched predicate into a `select` that computes both branches:
  an SVD at every step of a vmapped sweep. Here a batched predicate runs `compute` on the whole
  batch when any member asks for it (the runs of a sweep share the step count, so only at
  refreshes), and each member keeps its own choice.
  """

  @jax.custom_batching.custom_vmap
  def refreshed(pred, x, old):
    return jax.lax.cond(pred, lambda: compute(x), lambda: old)

  @refreshed.def_vmap
  def batched(axis_size, in_batched, pred, x, old):
    broadcast = lambda value, is_batched: (
        value if is_batched else jnp.broadcast_to(value, (axis_size, *value.shape)))
    pred_batched, x_batched, old_batched = in_batched
    pred = broadcast(pred, pred_batched)
    x = jax.tree.map(broadcast, x, x_batched)
    old = jax.tree.map(broadcast, old, old_batched)

    def fresh():
      choose = lambda new, kept: jnp.where(
          pred.reshape((axis_size,) + (1,) * (kept.ndim - 1)), new, kept)
      return jax.tree.map(choose, jax.vmap(compute)(x), old)

    return jax.lax.cond(jnp.any(pred), fresh, lambda: old), jax.tree.map(lambda _: True, old)

  return refreshed(pred, x, old)


# Up to this rank the back-projection in the update is a sum of outer products (`_back`) that
# XLA fuses into the parameter's kernel; above it, r multiply-adds per entry would make that
# kernel compute-bound, and a matrix product (written and read back) is used instead.
_MAX_FUSED_RANK = 16


def _back(x: jax.Array, projector: jax.Array, right: bool) -> jax.Array:
  """`matrix.project_back(x, projector)`, elementwise for ranks up to `_MAX_FUSED_RANK`.

  As a sum of `rank` outer products XLA fuses it into the kernel that reads it (the parameter
  update) instead of writing a full-size product and reading it back: one pass fewer.
  """
  rank = x.shape[-1] if right else x.shape[-2]
  if rank > _MAX_FUSED_RANK:
    return matrix.project_back(x, projector, right=right)
  column = lambda a, k: jax.lax.slice_in_dim(a, k, k + 1, axis=-1)  # lax: cheaper to trace
  row = lambda a, k: jax.lax.slice_in_dim(a, k, k + 1, axis=-2)
  if right:  # x (b, m, r) @ p (b, r, n)
    terms = (column(x, k) * row(projector, k) for k in range(rank))
  else:  # p (b, m, r) @ x (b, r, n)
    terms = (column(projector, k) * row(x, k) for k in range(rank))
  return functools.reduce(jnp.add, terms)


def scale_by_fira(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    alpha: float = 1.0,
    *,
    rank: int | None = None,
    update_proj_gap: int = 200,
    side: str = "std",
    residual: bool = True,
    dimension_numbers: matrix.DimensionNumbers = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Fira direction :math:`c_t(\alpha\,\mathrm{back}(N_t) + S_t)` (see the module).

  Leaves without a matrix view (biases, scales, scalars) get Adam's direction
  :math:`c_t M_t / (\sqrt{V_t} + \epsilon)` with the same hyperparameters.

  Args:
    b1: first-moment decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    eps: added to :math:`\sqrt{V_t}`, >= 0 (official default 1e-6).
    alpha: α, the scale of the back-projection (official code 1.0; 0.25 in the official 60M-350M
      pre-training scripts), > 0.
    rank: r, the number of singular directions kept (static), at most ``min(m, n)`` of every
      matrix; None: :math:`\min(8, m, n)` per matrix.
    update_proj_gap: T, updates between projector refreshes (static), >= 1.
    side: ``"std"`` (project the smaller side) or ``"reverse_std"`` (static).
    residual: add Fira's scaled residual :math:`S_t`; False gives GaLore (static).
    dimension_numbers: which leaves are matrices and how (`jaxlearn.optim.matrix`); None: the
      flax defaults (Dense, scan-stacked Dense, conv kernels).

  Returns:
    A `GradientTransformationExtraArgs`; its state is a `ScaleByFiraState`.

  Raises:
    ValueError: for a hyperparameter out of range, or (at `init`) a `rank` larger than a matrix
      allows or a `dimension_numbers` that does not fit a leaf.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import scale_by_fira
    >>> opt = optax.chain(scale_by_fira(rank=1), optax.scale_by_learning_rate(1e-3))
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> updates, state = opt.update({"w": jnp.eye(3, 2), "b": jnp.ones(2)}, opt.init(params))
    >>> updates["w"].shape, int(state[0].count)
    ((3, 2), 1)

  References:
    Chen et al., `Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?
    <https://arxiv.org/abs/2410.01623>`_, 2024.
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  _checks.check_positive("alpha", alpha)
  if rank is not None:
    _checks.check_positive_int("rank", rank)
  _checks.check_positive_int("update_proj_gap", update_proj_gap)
  _checks.check_choice("side", side, matrix.SIDES)
  _checks.check_bool("residual", residual)

  def init_fn(params):
    specs = matrix.leaf_dimension_numbers(params, dimension_numbers)
    leaves, treedef = jax.tree.flatten(params)
    mus, projectors, norms = [], [], []
    for leaf, spec, where in zip(leaves, specs, _leaf_paths(params)):
      dtype = _common.wide_dtype(leaf.dtype)
      if spec is None:
        mus.append(jnp.zeros_like(leaf, dtype=dtype))  # shaped, so sharded, like the parameter
        projectors.append(jnp.zeros([], dtype))
        norms.append(jnp.zeros([], dtype))
        continue
      coordinates, projector, batch = _low_rank_shapes(leaf.shape, spec, rank, side, where)
      mus.append(matrix.state_sharded_like(jnp.zeros(coordinates, dtype), leaf))
      projectors.append(jnp.zeros(projector, dtype))
      norms.append(jnp.zeros((batch,), dtype))
    unflatten = lambda xs: jax.tree.unflatten(treedef, xs)
    return ScaleByFiraState(count=jnp.zeros([], jnp.int32), mu=unflatten(mus),
                            nu=unflatten([jnp.zeros_like(m) for m in mus]),
                            projector=unflatten(projectors), residual_norm=unflatten(norms))

  def adam_direction(m, v, scale):
    # m = 0 wherever every gradient so far was 0: no step instead of 0/0 at eps = 0.
    return jnp.where(m == 0, 0.0, scale * m / (jnp.sqrt(v) + eps))

  def refresh(count, matrices, projectors):
    """The projectors, refreshed every `update_proj_gap` updates, in one `lax.cond` for all the
    matrix leaves instead of one per leaf. (Not one batched SVD per shape: taking each leaf's
    slice out of the batch is a distinct kernel per leaf, which XLA:CPU compiles more slowly
    than the identical per-leaf SVD kernels it compiles once.)"""
    if not matrices:
      return projectors

    def compute(xs):
      fresh = []
      for x, projector in zip(xs, projectors):
        right = matrix.projects_right(x.shape, side)
        kept = projector.shape[-2] if right else projector.shape[-1]  # this leaf's rank
        new = _canonical_signs(matrix.top_r_projector(x, kept, side=side), right)
        fresh.append(new.astype(projector.dtype))
      return fresh

    return _refresh_if(count % update_proj_gap == 0, compute, matrices, projectors)

  def matrix_update(g, x, m, v, projector, norm, first, scale):
    right = matrix.projects_right(x.shape, side)
    r = matrix.project(x, projector, right=right).astype(m.dtype)
    m = matrix.state_sharded_like(b1 * m + (1.0 - b1) * r, g)
    v = matrix.state_sharded_like(b2 * v + (1.0 - b2) * r * r, g)
    n = adam_direction(m, v, 1.0)
    if not residual:
      return scale * (alpha * _back(n, projector, right)), m, v, norm
    axis = -1 if right else -2  # the rank axis: one factor per kept row / column
    phi = (jnp.linalg.norm(n, axis=axis, keepdims=True)
           / (jnp.linalg.norm(r, axis=axis, keepdims=True) + _TINY))
    # One more pass over the gradient (a reduction: the limiter needs it before any parameter
    # moves); XLA:CPU fuses the rank-r product into it rather than writing it.
    s_norm = jnp.linalg.norm(
        (x - alpha * matrix.project_back(r, projector, right=right)) * phi, axis=(-2, -1))
    limit = jnp.maximum(s_norm / (norm + _TINY), GROWTH_LIMIT) / GROWTH_LIMIT
    limit = jnp.where(first, 1.0, limit)  # the first residual sets the reference
    factor = phi / limit[:, None, None]
    # α back(N) + (G - α back(R)) φ / ℓ as G φ / ℓ + α back(N - R φ / ℓ): one back-projection,
    # fused into the parameter's kernel (no full-size product written and read back).
    direction = x * factor + alpha * _back(n - r * factor, projector, right)
    return scale * direction, m, v, s_norm / limit

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    specs = matrix.leaf_dimension_numbers(updates, dimension_numbers)
    count = numerics.safe_increment(state.count)
    leaves, treedef = jax.tree.flatten(updates)
    flat = lambda tree: treedef.flatten_up_to(tree)
    mus, nus, projectors, norms = (flat(tree) for tree in (state.mu, state.nu, state.projector,
                                                           state.residual_norm))
    is_matrix = [spec is not None for spec in specs]
    # On a replicated copy (a no-op unless an explicit mesh shards the leaf): the SVD and the
    # projections contract over the sharded axes; the moments and projector are replicated.
    matrices = [matrix.to_matrices(matrix.replicated(g.astype(m.dtype)), spec)
                for g, m, spec in zip(leaves, mus, specs) if spec is not None]
    fresh = iter(refresh(state.count, matrices, [p for p, on in zip(projectors, is_matrix) if on]))
    projectors = [next(fresh) if on else p for p, on in zip(projectors, is_matrix)]
    xs = iter(matrices)
    scale = _common.folded_bias_correction(b1, b2, count.astype(jnp.float32))
    first = state.count == 0
    outputs = []
    for g, m, v, projector, norm, spec in zip(leaves, mus, nus, projectors, norms, specs):
      if spec is None:
        m = _common.update_moment(g, m, b1)
        v = _common.update_moment(g, v, b2, order=2)
        outputs.append((adam_direction(m, v, scale).astype(g.dtype), m, v, projector, norm))
        continue
      step, m, v, norm = matrix_update(g, next(xs), m, v, projector, norm, first, scale)
      update = matrix.sharded_like(matrix.from_matrices(step, spec, g.shape), g)
      outputs.append((update.astype(g.dtype), m, v, projector, norm))
    fields = [jax.tree.unflatten(treedef, list(column)) for column in zip(*outputs)]
    new_updates, mu, nu, projector, norms = fields
    return new_updates, ScaleByFiraState(count, mu, nu, projector, norms)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _DecayAfterStepState(NamedTuple):
  count: jax.Array  # evaluates learning-rate and weight-decay schedules


def _decay_after_step(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule,
    mask: _common.MaskOrFn | None,
) -> optax.GradientTransformationExtraArgs:
  r"""Turns the step ``u`` into :math:`u - \eta\lambda (W + u)`: decay of the *updated* weights.

  Goes after the learning-rate step; this is the official code's order
  (``p.add_(p, alpha=-lr * weight_decay)`` after ``p.add_(step)``).
  """
  _checks.check_non_negative("weight_decay", weight_decay)
  _common.check_mask(mask)

  def init_fn(params):
    del params
    return _DecayAfterStepState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "fira", "decoupled weight decay", updates=updates)
    value = lambda h: h(state.count) if callable(h) else h
    rate = value(learning_rate) * value(weight_decay)

    def decay(u, p):
      wide = _common.wide_dtype(jnp.promote_types(u.dtype, p.dtype))
      new = u.astype(wide) - rate * (p.astype(wide) + u.astype(wide))
      return new.astype(u.dtype)

    new_updates = jax.tree.map(decay, updates, params)
    return new_updates, _DecayAfterStepState(numerics.safe_increment(state.count))

  transform = optax.GradientTransformationExtraArgs(init_fn, update_fn)
  return transform if mask is None else optax.masked(transform, mask)


def fira(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    alpha: float = 1.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: _common.MaskOrFn | None = None,
    *,
    rank: int | None = None,
    update_proj_gap: int = 200,
    side: str = "std",
    residual: bool = True,
    fallback: optax.GradientTransformation | None = None,
    dimension_numbers: matrix.DimensionNumbers = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Fira (AdamW flavour of the official `FiraAdamW`): GaLore plus the limited scaled residual.

  .. math::

     W_t = (1 - \eta\lambda)\bigl(W_{t-1} - \eta\, c_t (\alpha\,\mathrm{back}(N_t) + S_t)\bigr)

  with :math:`N_t, S_t, c_t` as in the module docstring (`scale_by_fira`); decoupled weight
  decay λ multiplies the learning rate η and acts on the updated weights, as in the official
  code. Defaults are the official class's (lr 1e-3, betas (0.9, 0.999), eps 1e-6, no decay) and
  its package's `divide_params` (rank 8, α = 1, gap 200, ``"std"``); the rank is capped at the
  smaller side of a matrix only by default.

  Args:
    learning_rate: η, a number or a schedule, >= 0.
    b1: first-moment decay, in [0, 1).
    b2: second-moment decay, in [0, 1).
    eps: added to :math:`\sqrt{V_t}`, >= 0.
    alpha: α, the scale of the back-projection, > 0.
    weight_decay: λ, >= 0, multiplied by the learning rate.
    weight_decay_mask: pytree (or prefix) of bools, or callable of params; False: no decay.
    rank: r, at most ``min(m, n)`` of every matrix (static); None: :math:`\min(8, m, n)`.
    update_proj_gap: T, updates between projector refreshes (static).
    side: ``"std"`` or ``"reverse_std"`` (static).
    residual: False gives GaLore (static).
    fallback: None: leaves without a matrix view get AdamW with the same hyperparameters inside
      this optimizer (official). Otherwise an optimizer for them, through `optax.partition`: an
      optax transformation (with its own learning rate), or a callable ``learning_rate ->
      transformation`` that follows this one's (`jaxlearn.optim.matrix.fallback_optimizer`).
    dimension_numbers: which leaves are matrices (`jaxlearn.optim.matrix`); None: flax defaults.

  Returns:
    A `GradientTransformationExtraArgs` whose `update` needs `params`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim import fira
    >>> params = {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)}
    >>> opt = fira(1e-2, rank=2, update_proj_gap=50, weight_decay=0.1)
    >>> state = opt.init(params)
    >>> grads = {"kernel": jnp.arange(32.0).reshape(8, 4) / 32, "bias": jnp.ones(4)}
    >>> updates, state = opt.update(grads, state, params)
    >>> state[0].mu["kernel"].shape  # the moments of the kernel are 8 x 2, not 8 x 4
    (1, 8, 2)
  """
  scale = scale_by_fira(b1, b2, eps, alpha, rank=rank, update_proj_gap=update_proj_gap,
                        side=side, residual=residual, dimension_numbers=dimension_numbers)
  rule = optax.chain(
      scale,
      _common.learning_rate_step(learning_rate),
      _decay_after_step(learning_rate, weight_decay, weight_decay_mask),
  )
  if fallback is None:
    return rule
  other = matrix.fallback_optimizer(fallback, learning_rate, default=None)
  return matrix.partition_matrices(rule, other, dimension_numbers)


RECORD = registry.record(
    slug="fira",
    kind="optimizer",
    title="Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?",
    reference="arXiv:2410.01623",
    experiment="fira_low_rank_memory",
    pytorch_optimizer={"jaxlearn.optim.fira": "Fira"},
    notes=(
        "Follows the official code (optimizer_torch/fira_adamw.py, gradient_projection.py): "
        "projector refreshed when the pre-increment step count is a multiple of "
        "update_proj_gap (pytorch-optimizer 4.1.0 refreshes one update earlier; the parity "
        "test shifts its count), Adam on the projected gradient with the bias correction in "
        "the step size, back-projection times alpha, per-row/column norm scaling of the "
        "residual of the full gradient, norm-growth limiter 1.01, decay of the updated "
        "weights (W <- (1 - lr wd)(W - step), as official and pytorch-optimizer, not the "
        "pre-step decay of _common.alias). Non-matrix leaves get AdamW inside the same "
        "optimizer unless fallback= is given. residual=False is the official GaLore; "
        "optax.contrib.scale_by_galore projects the other side (= side='reverse_std', "
        "tested). Singular vectors get a canonical sign (largest entry positive): the "
        "official signs are whatever the SVD routine returns, and matter from the second "
        "refresh on. State in float32 (official: projector in the parameter dtype). A rank larger "
        "than a matrix raises ValueError (optax clamps); the default rank=None is min(8, m, n) "
        "per matrix (8: the package's divide_params default). Square matrices: the flax (in, out) "
        "layout is PyTorch's transpose, so 'std' keeps the other side there."
    ),
)
