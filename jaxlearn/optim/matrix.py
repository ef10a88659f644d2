r"""The matrix view of a parameter, and the matrix functions matrix-structured rules share.

Rules such as Muon-style orthogonalization, one-sided preconditioners (ASGO) and low-rank
projections (GaLore, Fira) treat a leaf as a matrix. Which axes form the matrix is given by
`optax.contrib.MuonDimensionNumbers` (``reduction_axis`` = fan-in, ``output_axis`` = fan-out);
every other axis is a batch axis, over which the rule is applied independently. The defaults for
flax layouts (`default_dimension_numbers`):

=============================== ============================== ==================================
leaf                            shape                          matrix
=============================== ============================== ==================================
Dense kernel                    ``(in, out)``                  ``in x out``
scan-stacked Dense kernels      ``(L, in, out)``               ``L`` matrices ``in x out``
Conv kernel (HWIO)              ``(H, W, I, O)``               ``H*W*I x O``
bias, scale, scalar             ``(n,)``, ``()``               none: the fallback optimizer
=============================== ============================== ==================================

A 3-D leaf is read as scan-stacked: a 1-D convolution kernel ``(W, I, O)`` needs an explicit
spec, ``MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=2)``.

The matrix functions compute in float32 (or wider) whatever the input dtype and return the
input's dtype: `newton_schulz` (orthogonalization), `symmetric_power` and `inverse_pth_root`
(eigendecomposition), `inverse_sqrt_newton_schulz` (the coupled Newton-Schulz inverse square
root, with PolarExpress coefficients by default), `top_r_projector` with `project` /
`project_back` (the top-r singular subspace, by SVD or a randomized range finder). They take
``(..., m, n)`` arrays: leading axes are batch axes.

For the aliases of matrix rules: `partition_matrices` and `fallback_optimizer` (the optimizer of
the leaves without a matrix view), `matrix_leaves`, and `replicated` / `sharded_like` (state that
is not shaped like a parameter is replicated on an explicit-sharding mesh).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers

from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "MuonDimensionNumbers",
    "NS_COEFFICIENTS",
    "default_dimension_numbers",
    "leaf_dimension_numbers",
    "matrix_labels",
    "partition_matrices",
    "matrix_shape",
    "to_matrices",
    "from_matrices",
    "newton_schulz",
    "symmetric_power",
    "inverse_pth_root",
    "projects_right",
    "top_r_projector",
    "project",
    "project_back",
    "POLAR_EXPRESS_COEFFICIENTS",
    "polar_express_coefficients",
    "inverse_sqrt_newton_schulz",
    "fallback_optimizer",
    "matrix_alias",
    "matrix_leaves",
    "replicated",
    "sharded_like",
    "state_sharded_like",
]

# Muon's quintic Newton-Schulz coefficients (Keller Jordan; optax's default): they maximize the
# slope at zero, so 5 steps bring the singular values into roughly [0.7, 1.2], not exactly 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
SIDES = ("std", "reverse_std")

DimensionNumbers = Any  # None, a MuonDimensionNumbers, a pytree of them (None: not a matrix),
# or a callable params -> such a pytree


def default_dimension_numbers(shape: Sequence[int]) -> MuonDimensionNumbers | None:
  """The matrix view of a flax-layout leaf of this shape, or None for a non-matrix leaf.

  Example:
    >>> from jaxlearn.optim.matrix import default_dimension_numbers
    >>> default_dimension_numbers((3, 3, 16, 32))  # a conv kernel, HWIO
    MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,))
    >>> print(default_dimension_numbers((32,)))
    None
  """
  ndim = len(shape)
  if ndim == 2:
    return MuonDimensionNumbers((0,), (1,))
  if ndim == 3:  # scan-stacked (L, in, out): L is a batch axis
    return MuonDimensionNumbers((1,), (2,))
  if ndim == 4:  # conv HWIO
    return MuonDimensionNumbers((0, 1, 2), (3,))
  return None


def _axes(axes: int | Sequence[int]) -> tuple[int, ...]:
  return (axes,) if isinstance(axes, int) else tuple(axes)


def _normalized(spec: MuonDimensionNumbers, shape: Sequence[int], where: str,
                name: str) -> MuonDimensionNumbers:
  """`spec` with non-negative axis tuples; a ValueError naming `name` if it cannot apply."""
  ndim = len(shape)
  if ndim < 2:
    raise ValueError(f"{name} gives {where} (shape {tuple(shape)}) a matrix view, but a matrix "
                     "rule needs a leaf with at least 2 dimensions; give it None to send it to "
                     "the fallback optimizer")
  reduction, output = _axes(spec.reduction_axis), _axes(spec.output_axis)
  for axis in reduction + output:
    if not -ndim <= axis < ndim:
      raise ValueError(f"{name}: axis {axis} of {where} is out of range for shape "
                       f"{tuple(shape)}")
  reduction = tuple(a % ndim for a in reduction)
  output = tuple(a % ndim for a in output)
  if not reduction or not output or set(reduction) & set(output):
    raise ValueError(f"{name}: the reduction axes {reduction} and output axes {output} of "
                     f"{where} must be non-empty and disjoint")
  return MuonDimensionNumbers(reduction, output)


class _Entry:
  """A per-leaf spec, boxed so that None survives tree maps (not a pytree node)."""

  def __init__(self, spec, masked=False):
    self.spec, self.masked = spec, masked


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def leaf_dimension_numbers(tree: Any, dimension_numbers: DimensionNumbers = None,
                           name: str = "dimension_numbers") -> list[MuonDimensionNumbers | None]:
  """The validated matrix spec of every leaf of `tree`, in `jax.tree.leaves` order.

  Args:
    tree: parameters or updates; `optax.MaskedNode` entries (from `optax.partition`) are skipped.
    dimension_numbers: None (the flax defaults), one spec for every leaf, a pytree (or prefix) of
      specs and Nones matching `tree`'s parameters, or a callable returning one.
    name: the argument's name, for error messages.

  Raises:
    ValueError: naming `name`, when a spec is given to a leaf with fewer than 2 dimensions or its
      axes do not fit the leaf.
  """
  if callable(dimension_numbers) and not isinstance(dimension_numbers, MuonDimensionNumbers):
    dimension_numbers = dimension_numbers(tree)
  is_spec = lambda x: x is None or isinstance(x, MuonDimensionNumbers)
  if is_spec(dimension_numbers):
    boxed = jax.tree.map(lambda x: _Entry(dimension_numbers, _is_masked(x)), tree,
                         is_leaf=_is_masked)
  else:
    boxed = jax.tree.map(
        lambda spec, sub: jax.tree.map(lambda x: _Entry(spec, _is_masked(x)), sub,
                                       is_leaf=_is_masked),
        dimension_numbers, tree, is_leaf=is_spec)
  entries = [e for e in jax.tree.leaves(boxed) if not e.masked]
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  leaves = jax.tree.leaves(tree)
  specs = []
  for entry, leaf, path in zip(entries, leaves, paths, strict=True):
    shape = jnp.shape(leaf)
    if dimension_numbers is None:
      specs.append(default_dimension_numbers(shape))
    elif entry.spec is None:
      specs.append(None)
    else:
      specs.append(_normalized(entry.spec, shape, f"leaf {path or 'the root'}", name))
  return specs


def matrix_labels(params: Any, dimension_numbers: DimensionNumbers = None) -> Any:
  """``"matrix"`` for leaves with a matrix view, ``"fallback"`` for the others (a tree)."""
  specs = iter(leaf_dimension_numbers(params, dimension_numbers))
  return jax.tree.map(lambda _: "fallback" if next(specs) is None else "matrix", params)


def partition_matrices(
    matrix: optax.GradientTransformation,
    fallback: optax.GradientTransformation,
    dimension_numbers: DimensionNumbers = None,
) -> optax.GradientTransformationExtraArgs:
  """`matrix` on the leaves with a matrix view, `fallback` on the others (`optax.partition`).

  Pass the same `dimension_numbers` to the matrix rule: it reads them on the masked tree.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxlearn.optim.matrix import partition_matrices
    >>> tx = partition_matrices(optax.sgd(1.0), optax.sgd(0.0))
    >>> params = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}
    >>> updates, _ = tx.update(params, tx.init(params))
    >>> float(updates["kernel"][0, 0]), float(updates["bias"][0])
    (-1.0, -0.0)
  """
  return optax.partition({"matrix": matrix, "fallback": fallback},
                         lambda params: matrix_labels(params, dimension_numbers))


def _layout(shape: Sequence[int], spec: MuonDimensionNumbers):
  ndim = len(shape)
  reduction = tuple(a % ndim for a in _axes(spec.reduction_axis))
  output = tuple(a % ndim for a in _axes(spec.output_axis))
  batch = tuple(a for a in range(len(shape)) if a not in reduction + output)
  return batch, reduction, output


def matrix_shape(shape: Sequence[int], spec: MuonDimensionNumbers) -> tuple[int, int, int]:
  """``(batch, m, n)``: the number of matrices and their fan-in and fan-out sizes."""
  batch, reduction, output = _layout(shape, spec)
  size = lambda axes: math.prod(shape[a] for a in axes)
  return size(batch), size(reduction), size(output)


def to_matrices(x: jax.Array, spec: MuonDimensionNumbers) -> jax.Array:
  """`x` as a ``(batch, m, n)`` stack of matrices (batch axes, then fan-in, then fan-out)."""
  batch, reduction, output = _layout(x.shape, spec)
  return jnp.transpose(x, batch + reduction + output).reshape(matrix_shape(x.shape, spec))


def from_matrices(y: jax.Array, spec: MuonDimensionNumbers, shape: Sequence[int]) -> jax.Array:
  """The inverse of `to_matrices` for a leaf of `shape`."""
  order = sum(_layout(shape, spec), ())
  stacked = y.reshape(tuple(shape[a] for a in order))
  return jnp.transpose(stacked, tuple(order.index(a) for a in range(len(shape))))


def _wide(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _transpose(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, -1, -2)


def newton_schulz(
    x: jax.Array,
    *,
    steps: int = 5,
    coefficients: Sequence[float] | Sequence[Sequence[float]] = NS_COEFFICIENTS,
    eps: float = 1e-7,
) -> jax.Array:
  r"""Approximately orthogonalizes `x` (the polar factor :math:`UV^\top` of :math:`X = USV^\top`).

  .. math::

     X_0 = X / (\|X\|_F + \epsilon), \qquad
     X_{k+1} = a X_k + (b A_k + c A_k^2) X_k, \quad A_k = X_k X_k^\top,

  on the shorter side (``X`` is transposed when it has more rows than columns). With Muon's
  coefficients (the default) the singular values land near, not at, 1; ``(1.5, -0.5, 0)`` is
  the classical cubic iteration, which converges to :math:`UV^\top`.

  Args:
    x: ``(..., m, n)``; leading axes are batch axes.
    steps: the number of iterations (static).
    coefficients: ``(a, b, c)`` for every step, or one triple per step (then ``steps`` must
      equal their number).
    eps: added to the Frobenius norm (a zero matrix stays zero).

  Returns:
    The orthogonalized ``x``, in its dtype (computed in float32 or wider).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim.matrix import newton_schulz
    >>> q = newton_schulz(jnp.array([[3.0, 0.0], [0.0, 0.1]]), steps=30,
    ...                   coefficients=(1.5, -0.5, 0.0))
    >>> print(q.round(3))
    [[1. 0.]
     [0. 1.]]
  """
  _checks.check_positive_int("steps", steps)
  table = jnp.asarray(coefficients, jnp.float32)
  if table.ndim == 1:
    table = jnp.broadcast_to(table, (steps, 3))
  if table.shape != (steps, 3):
    raise ValueError(f"coefficients must be one (a, b, c) triple or one per step ({steps}), "
                     f"got shape {table.shape}")
  if x.ndim < 2:
    raise ValueError(f"newton_schulz needs a (..., m, n) array, got shape {x.shape}")
  tall = x.shape[-2] > x.shape[-1]
  y = _wide(x)
  y = _transpose(y) if tall else y
  y = y / (jnp.linalg.norm(y, axis=(-2, -1), keepdims=True) + eps)

  def step(k, y):
    a, b, c = table[k, 0], table[k, 1], table[k, 2]
    gram = y @ _transpose(y)
    return a * y + (b * gram + c * gram @ gram) @ y

  y = jax.lax.fori_loop(0, steps, step, y)
  return (_transpose(y) if tall else y).astype(x.dtype)


def symmetric_power(a: jax.Array, exponent: float, *, eps: float = 0.0,
                    rcond: float = 1e-6) -> jax.Array:
  r"""The power :math:`(A + \epsilon I)^{p}` of a symmetric positive semi-definite `a`.

  By eigendecomposition in float32 or wider: :math:`A = Q\,\mathrm{diag}(\lambda)\,Q^\top`,
  eigenvalues clipped at 0 (rounding makes tiny ones negative). For a negative `exponent`,
  eigenvalues at or below ``rcond`` times the largest count as zero and are mapped to zero (a
  pseudo-inverse root), so a rank-deficient or zero input gives a finite result.

  Args:
    a: ``(..., n, n)``, symmetric.
    exponent: the power `p` (e.g. 0.5 for the square root, -0.25 for the inverse 4th root).
    eps: damping added to the eigenvalues.
    rcond: relative cut-off for negative powers.

  Returns:
    ``(..., n, n)`` in `a`'s dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim.matrix import symmetric_power
    >>> print(symmetric_power(jnp.diag(jnp.array([4.0, 9.0])), 0.5))
    [[2. 0.]
     [0. 3.]]
  """
  if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
    raise ValueError(f"symmetric_power needs a square (..., n, n) matrix, got shape {a.shape}")
  wide = _wide(a)
  values, vectors = jnp.linalg.eigh(0.5 * (wide + _transpose(wide)))
  values = jnp.maximum(values, 0.0) + eps
  if exponent < 0:
    floor = rcond * jnp.max(values, axis=-1, keepdims=True)
    kept = values > floor
    powered = jnp.where(kept, jnp.where(kept, values, 1.0) ** exponent, 0.0)
  else:
    powered = values ** exponent
  return ((vectors * powered[..., None, :]) @ _transpose(vectors)).astype(a.dtype)


def inverse_pth_root(a: jax.Array, p: int, *, eps: float = 0.0, rcond: float = 1e-6) -> jax.Array:
  r""":math:`(A + \epsilon I)^{-1/p}` of a symmetric PSD `a` (see `symmetric_power`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim.matrix import inverse_pth_root
    >>> print(inverse_pth_root(jnp.diag(jnp.array([4.0, 16.0])), 2))
    [[0.5  0.  ]
     [0.   0.25]]
  """
  _checks.check_positive_int("p", p)
  return symmetric_power(a, -1.0 / p, eps=eps, rcond=rcond)


def projects_right(shape: Sequence[int], side: str = "std") -> bool:
  r"""Whether the low-rank projection of an ``m x n`` matrix keeps its rows (``G P^\top``).

  ``side="std"`` (GaLore's and Fira's default) projects the shorter side: for ``m >= n`` it keeps
  :math:`R = G P^\top` (``m x r``, ``P = V_r^\top``), else :math:`R = P^\top G` (``r x n``,
  ``P = U_r``). ``"reverse_std"`` projects the other side (what `optax.contrib.scale_by_galore`
  does).
  """
  _checks.check_choice("side", side, SIDES)
  m, n = shape[-2], shape[-1]
  return (m >= n) == (side == "std")


def check_rank(rank: int, shape: Sequence[int], where: str = "") -> None:
  """`rank` must be a positive integer no larger than ``min(m, n)`` of the matrix."""
  _checks.check_positive_int("rank", rank)
  if rank > min(shape[-2], shape[-1]):
    raise ValueError(f"rank={rank} is larger than the {shape[-2]}x{shape[-1]} matrix{where} "
                     f"allows (at most {min(shape[-2], shape[-1])})")


def top_r_projector(
    g: jax.Array,
    rank: int,
    *,
    side: str = "std",
    method: str = "svd",
    key: jax.Array | None = None,
    oversample: int = 5,
    power_iterations: int = 2,
) -> jax.Array:
  r"""The projector onto the top-`rank` singular subspace of `g`, on the side `side` selects.

  Returns :math:`P = V_r^\top` (``r x n``) when `projects_right`, else :math:`P = U_r`
  (``m x r``), in float32 (the factors of :math:`G = U S V^\top`). ``method="randomized"`` uses a
  randomized range finder (Halko, Martinsson and Tropp 2011: a Gaussian sketch with `oversample`
  extra columns, `power_iterations` subspace iterations, then the SVD of the small projected
  matrix), which needs `key`.

  Args:
    g: ``(..., m, n)``.
    rank: the number of singular directions kept (static), at most ``min(m, n)``.
    side: ``"std"`` or ``"reverse_std"`` (see `projects_right`).
    method: ``"svd"`` or ``"randomized"``.
    key: a PRNG key for ``"randomized"``.
    oversample: extra sketch columns for ``"randomized"``.
    power_iterations: subspace iterations for ``"randomized"``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim.matrix import project, project_back, top_r_projector
    >>> g = jnp.outer(jnp.arange(1.0, 5.0), jnp.array([1.0, -1.0, 2.0]))  # rank one, 4 x 3
    >>> p = top_r_projector(g, 1)                     # 1 x 3: the coordinates G P^T are 4 x 1
    >>> bool(jnp.allclose(project_back(project(g, p), p, right=True), g, atol=1e-5))
    True
  """
  _checks.check_choice("method", method, ("svd", "randomized"))
  check_rank(rank, g.shape)
  right = projects_right(g.shape, side)
  wide = _wide(g)
  # Work on the matrix whose columns span the kept side: left singular vectors of G or of G^T.
  target = _transpose(wide) if right else wide
  if method == "svd":
    u, _, _ = jnp.linalg.svd(target, full_matrices=False)
  else:
    if key is None:
      raise ValueError('method="randomized" needs a PRNG key')
    columns = min(rank + oversample, target.shape[-1])
    sketch = jax.random.normal(key, target.shape[:-2] + (target.shape[-1], columns), wide.dtype)
    basis, _ = jnp.linalg.qr(target @ sketch)
    for _ in range(power_iterations):
      basis, _ = jnp.linalg.qr(_transpose(target) @ basis)
      basis, _ = jnp.linalg.qr(target @ basis)
    small_u, _, _ = jnp.linalg.svd(_transpose(basis) @ target, full_matrices=False)
    u = basis @ small_u
  u = u[..., :rank]
  return _transpose(u) if right else u


def project(g: jax.Array, p: jax.Array, *, right: bool | None = None) -> jax.Array:
  r"""The low-rank coordinates: :math:`G P^\top` for a right projector, :math:`P^\top G` else.

  `right` defaults to `projects_right(g.shape)` (``side="std"``); pass it for ``reverse_std``.
  """
  right = projects_right(g.shape) if right is None else right
  wide = _wide(g)
  return wide @ _transpose(p) if right else _transpose(p) @ wide


def project_back(r: jax.Array, p: jax.Array, *, right: bool) -> jax.Array:
  r"""Back to full size: :math:`R P` for a right projector, :math:`P R` else (`projects_right`)."""
  return r @ p if right else p @ r


# ---------------------------------------------------------------------------------------------
# The coupled Newton-Schulz inverse square root (ASGO's official inverse root).

# PolarExpress's quintic coefficients (Amsel, Persson, Musco and Gower, arXiv:2505.16932), one
# triple per step, as ASGO's official code lists them (optimizers/utils/matrix_decom.py); the
# last triple is the converged iteration, used for every later step.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)


def polar_express_coefficients(steps: int, safety: float = 1.01) -> tuple[tuple[float, ...], ...]:
  r"""The ``(a, b, c)`` triples of `steps` PolarExpress iterations.

  Every triple of `POLAR_EXPRESS_COEFFICIENTS` but the last is divided by
  :math:`(s, s^3, s^5)`, ``s = safety`` (so that rounding cannot push a value past the
  polynomial's stable range), as in ASGO's official code; past the table the last triple repeats.

  Example:
    >>> from jaxlearn.optim.matrix import polar_express_coefficients
    >>> table = polar_express_coefficients(10)
    >>> len(table), table[-1]
    (10, (1.875, -1.25, 0.375))
  """
  _checks.check_positive_int("steps", steps)
  _checks.check_range("safety", safety, 1.0, None)
  scaled = [(a / safety, b / safety**3, c / safety**5)
            for a, b, c in POLAR_EXPRESS_COEFFICIENTS[:-1]]
  table = scaled + [POLAR_EXPRESS_COEFFICIENTS[-1]]
  return tuple(table[:steps]) + (table[-1],) * max(0, steps - len(table))


def inverse_sqrt_newton_schulz(
    a: jax.Array,
    *,
    steps: int = 10,
    coefficients: Sequence[float] | Sequence[Sequence[float]] | None = None,
    eps: float = 0.0,
    norm_factor: float = 1.01,
) -> jax.Array:
  r""":math:`A^{-1/2}` of a symmetric positive semi-definite `a`, by coupled Newton–Schulz.

  .. math::

     s = \rho\,\|A + \epsilon I\|_F, \qquad Y_0 = A / s, \qquad Z_0 = I, \\
     B_k = b_k Z_k Y_k + c_k (Z_k Y_k)^2, \qquad Y_{k+1} = a_k Y_k + Y_k B_k, \qquad
     Z_{k+1} = a_k Z_k + B_k Z_k,

  and the result is :math:`Z_K / \sqrt{s}` (:math:`\rho` = `norm_factor`; `eps` enters the
  normalization only, not the matrix, as in ASGO's official code). On an eigenvector with
  eigenvalue :math:`\lambda` the iteration is the scalar polar iteration
  :math:`x \leftarrow a x + b x^3 + c x^5` from :math:`x_0 = \sqrt{\lambda / s}`, and the result
  is :math:`x_K / \sqrt{\lambda}`: exact where :math:`x_K = 1`. With PolarExpress's coefficients
  (the default) 10 steps bring every :math:`x_0 \ge 10^{-3}` to 1, i.e. eigenvalues down to
  about :math:`10^{-6} s`. Smaller eigenvalues are inverted too little; an exact null-space
  direction is multiplied by :math:`\prod_k a_k / \sqrt{s}` (about :math:`2 \cdot 10^4 /
  \sqrt{s}` for the default 10 steps): finite, but large. A slightly negative eigenvalue, which
  rounding gives a rank-deficient input, grows by :math:`a_k^2` per step and can overflow to
  :math:`\pm\infty` (ASGO's official code then uses the identity). A zero `a` with ``eps=0`` is
  normalized by 1 instead of 0, so it gives :math:`\prod_k a_k I` (the official code: NaN).

  Args:
    a: ``(..., n, n)``, symmetric PSD; leading axes are batch axes.
    steps: the number of iterations (static).
    coefficients: ``(a, b, c)`` for every step, or one triple per step; None:
      ``polar_express_coefficients(steps)``.
    eps: added to the diagonal inside the normalizing norm only, >= 0.
    norm_factor: :math:`\rho \ge 1`, keeps the normalized eigenvalues below 1.

  Returns:
    ``(..., n, n)`` in `a`'s dtype, computed in float32 or wider.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim.matrix import inverse_sqrt_newton_schulz
    >>> print(inverse_sqrt_newton_schulz(jnp.diag(jnp.array([4.0, 0.25]))).round(4))
    [[0.5 0. ]
     [0.  2. ]]
  """
  _checks.check_positive_int("steps", steps)
  _checks.check_non_negative("eps", eps)
  _checks.check_range("norm_factor", norm_factor, 1.0, None)
  if coefficients is None:
    coefficients = polar_express_coefficients(steps)
  table = jnp.asarray(coefficients, jnp.float32)
  if table.ndim == 1:
    table = jnp.broadcast_to(table, (steps, 3))
  if table.shape != (steps, 3):
    raise ValueError(f"coefficients must be one (a, b, c) triple or one per step ({steps}), "
                     f"got shape {table.shape}")
  if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
    raise ValueError(f"inverse_sqrt_newton_schulz needs a square (..., n, n) matrix, got shape "
                     f"{a.shape}")
  wide = _wide(a)
  identity = jnp.eye(a.shape[-1], dtype=wide.dtype)
  scale = norm_factor * jnp.linalg.norm(wide + eps * identity, axis=(-2, -1), keepdims=True)
  scale = jnp.where(scale > 0, scale, 1.0)  # a zero matrix with eps = 0: no 0/0
  table = table.astype(wide.dtype)

  def step(k, carry):
    y, z = carry
    zy = z @ y
    b = table[k, 1] * zy + table[k, 2] * zy @ zy
    return table[k, 0] * y + y @ b, table[k, 0] * z + b @ z

  z0 = jnp.broadcast_to(identity, wide.shape)
  _, z = jax.lax.fori_loop(0, steps, step, (wide / scale, z0))
  return (z / jnp.sqrt(scale)).astype(a.dtype)


# ---------------------------------------------------------------------------------------------
# The fallback optimizer of a matrix rule's alias (for the leaves without a matrix view).

Fallback = Any  # None, an optax GradientTransformation, or a callable learning_rate -> one


def fallback_optimizer(
    fallback: Fallback,
    learning_rate: optax.ScalarOrSchedule,
    default: Callable[[optax.ScalarOrSchedule], optax.GradientTransformation],
) -> optax.GradientTransformation:
  """The optimizer an alias gives the leaves without a matrix view (`partition_matrices`).

  `fallback` None: `default(learning_rate)` (each rule's official choice); an optax
  transformation: itself, with its own learning rate; a callable: `fallback(learning_rate)`, so
  that it follows the alias's learning rate, also when `inject_hyperparams` injects it.

  Example:
    >>> import optax
    >>> from jaxlearn.optim.matrix import fallback_optimizer
    >>> tx = fallback_optimizer(lambda lr: optax.sgd(lr / 10), 0.1, optax.adam)
    >>> isinstance(tx, optax.GradientTransformation)
    True
  """
  if fallback is None:
    return default(learning_rate)
  if isinstance(fallback, optax.GradientTransformation):
    return fallback
  if callable(fallback):
    return fallback(learning_rate)
  raise ValueError("fallback must be None, an optax GradientTransformation or a callable "
                   f"learning_rate -> GradientTransformation, got {fallback!r}")


def matrix_alias(
    scale: optax.GradientTransformation,
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule,
    weight_decay_mask: Any,
    fallback: Fallback,
    default: Callable[[optax.ScalarOrSchedule], optax.GradientTransformation],
    dimension_numbers: DimensionNumbers = None,
) -> optax.GradientTransformationExtraArgs:
  """A matrix rule's alias: `_common.alias` of `scale` on the matrix leaves, the fallback on
  the others (`partition_matrices`), every leaf checked against its parameter (the fallback's
  too: optax's optimizers do not check) under the alias's `name`."""
  tx = partition_matrices(
      _common.alias(scale, learning_rate, weight_decay, weight_decay_mask),
      fallback_optimizer(fallback, learning_rate, default), dimension_numbers)
  return _common.with_params_check(tx, name)


def matrix_leaves(tree: Any, dimension_numbers: DimensionNumbers = None,
                  name: str = "dimension_numbers"):
  """`(leaves, specs, treedef)` of a tree in which every leaf must have a matrix view.

  For a matrix rule's `scale_by_*` transform, which sees only the matrix leaves of an alias's
  `partition_matrices` (masked leaves are skipped, `treedef.unflatten` restores them).

  Raises:
    ValueError: naming `name` and the leaf, for a leaf without a matrix view (or a bad spec).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim.matrix import matrix_leaves
    >>> leaves, specs, treedef = matrix_leaves({"w": jnp.ones((2, 3))})
    >>> specs
    [MuonDimensionNumbers(reduction_axis=(0,), output_axis=(1,))]
  """
  leaves, treedef = jax.tree.flatten(tree)
  specs = leaf_dimension_numbers(tree, dimension_numbers)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  for spec, leaf, path in zip(specs, leaves, paths, strict=True):
    if spec is None:
      raise ValueError(
          f"{name}: leaf {path or 'the root'} (shape {tuple(jnp.shape(leaf))}) has no matrix "
          "view; use the rule's alias, which sends it to its fallback, or partition_matrices")
  return leaves, specs, treedef


# ---------------------------------------------------------------------------------------------
# Sharding-in-types: matrix functions contract over the axes a parameter may be sharded on.


def replicated(x: jax.Array) -> jax.Array:
  """`x` with no sharded axis: a no-op unless an explicit mesh (sharding in types) shards it.

  Under an explicit mesh, a product over a sharded axis needs its output sharding spelled out,
  and a reshape may not split a sharded axis; a matrix rule therefore computes on a replicated
  copy (`to_matrices(replicated(g), spec)`) and returns its update with `sharded_like`. Its
  state that is not shaped like a parameter (a preconditioner) is replicated anyway.
  """
  sharding = jax.typeof(x).sharding
  spec = getattr(sharding, "spec", None)
  if spec is None or all(axis is None for axis in spec):
    return x
  return jax.sharding.reshard(x, sharding.update(spec=jax.P()))


def sharded_like(x: jax.Array, reference: jax.Array) -> jax.Array:
  """`x` resharded like `reference` (the inverse of `replicated`; a no-op without a mesh)."""
  target = jax.typeof(reference).sharding
  spec = getattr(target, "spec", None)
  if spec is None or all(axis is None for axis in spec):
    return x
  return jax.sharding.reshard(x, target)



def state_sharded_like(x: jax.Array, param: jax.Array) -> jax.Array:
  """A state leaf `x` of a parameter, sharded by the convention of `jaxlearn.train.parallel`.

  A leaf whose shape ends with the parameter's shape (a low-rank moment at full rank, with a
  leading batch axis) is sharded like it, extra leading axes replicated; any other leaf is
  replicated. A no-op unless an explicit mesh shards the parameter.
  """
  target = jax.typeof(param).sharding
  spec = getattr(target, "spec", None)
  if spec is None or all(axis is None for axis in spec):
    return x
  extra = x.ndim - param.ndim
  if extra >= 0 and x.shape[extra:] == param.shape:
    padded = tuple(spec) + (None,) * (param.ndim - len(spec))
    return jax.sharding.reshard(x, target.update(spec=jax.P(*(None,) * extra, *padded)))
  return jax.sharding.reshard(x, target.update(spec=jax.P()))
