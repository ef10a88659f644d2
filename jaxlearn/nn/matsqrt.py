r"""Fast differentiable matrix square root and inverse square root (MTP / MPA + Lyapunov backward).

Paper: Song, Sebe and Wang, "Fast Differentiable Matrix Square Root", ICLR 2022
(arXiv:2201.08663); official code: github.com/KingJamesSong/FastDifferentiableMatSqrt,
``Decorrelated BN/torch_utils.py``.

**Forward.** For a symmetric positive definite (SPD) :math:`A`, normalize by the Frobenius norm
and expand around the identity:

.. math::

   Z = I - \frac{A}{\|A\|_F}, \qquad
   A^{1/2} = \sqrt{\|A\|_F}\,\sqrt{I - Z}.

* **MTP** (matrix Taylor polynomial): :math:`\sqrt{I - Z} \approx \sum_{k=0}^{K} a_k Z^k` with
  :math:`a_k = \binom{1/2}{k}(-1)^k` (:math:`a_0 = 1,\ a_k = a_{k-1}(k - 3/2)/k`), :math:`K = 10`.
* **MPA** (matrix Padé approximant): :math:`\sqrt{I - Z} \approx Q_N(Z)^{-1} P_M(Z)`, the
  :math:`[M/N] = [5/5]` Padé approximant of :math:`\sqrt{1 - z}` built from its Taylor
  coefficients, and :math:`A^{-1/2} \approx P_M(Z)^{-1} Q_N(Z) / \sqrt{\|A\|_F}` (one linear solve;
  :math:`P` and :math:`Q` commute).

**Backward** (both forward methods). The gradient :math:`Y = \partial L / \partial A` of
:math:`X = A^{1/2}` solves the Lyapunov equation :math:`XY + YX = G` (:math:`G = \partial L /
\partial X`). It is read off the matrix sign function :math:`\mathrm{sign}\begin{pmatrix}B & C
\\ 0 & -B\end{pmatrix} = \begin{pmatrix}I & 2Y \\ 0 & -I\end{pmatrix}`, computed by the coupled
Newton–Schulz sign iteration from :math:`B_0 = X/\sqrt{\|A\|_F}`, :math:`C_0 = G/\sqrt{\|A\|_F}`:

.. math::

   C_{k+1} = \tfrac12\bigl(C_k(3I - B_k^2) - B_k^2 C_k + B_k C_k B_k\bigr), \qquad
   B_{k+1} = \tfrac12 B_k(3I - B_k^2), \qquad Y \approx \tfrac12 C_8.

For :math:`X = A^{-1/2}` the same iteration solves :math:`XY + YX = -X^2 G X^2` from
:math:`B_0 = X/\|X\|_F` (equivalent to :math:`A^{1/2}Y + YA^{1/2} = -XGX`).

**Newton–Schulz baseline** (the paper's comparison, `newton_schulz_sqrt`): the coupled iteration
:math:`Y_0 = A/\|A\|_F,\ Z_0 = I,\ T_k = \tfrac12(3I - Z_k Y_k),\ Y_{k+1} = Y_k T_k,\ Z_{k+1} =
T_k Z_k`, so :math:`Y_k\sqrt{\|A\|_F} \to A^{1/2}` and :math:`Z_k/\sqrt{\|A\|_F} \to A^{-1/2}`;
its gradient is JAX's autodiff through the unrolled iteration. The eigendecomposition baseline
is `jaxlearn.optim.matrix.symmetric_power`.

**Accuracy depends on the spectrum.** Normalizing by :math:`\|A\|_F` (not by the largest
eigenvalue) pushes the eigenvalues of :math:`Z` towards 1 as the size or the condition number
grows, where the expansions converge slowly, and 8 sign iterations do not converge for a
small :math:`\lambda_{\min}/\|A\|_F`. Measured on random SPD matrices (relative Frobenius errors
against ``eigh`` and the exact Sylvester solution, MPA, float32): 32×32 with κ = 10: forward
~5e-3, backward ~1e-2; κ = 100: forward ~5e-2, backward ~0.2 (the gradient direction still
has cosine > 0.98 with the exact one); κ = 1000: forward ~0.1, backward ~0.5. The methods are
meant for well-conditioned, damped covariances (``Σ + εI``), as in decorrelated BN.

**Assumes SPD input.** Nothing checks symmetry or definiteness (that would cost an
eigendecomposition); a non-square input raises a ValueError. Computation is in float32 (or
wider); outputs and gradients come back in the input's dtype. Leading axes are batch axes.

**Decorrelated BN.** The paper's first application, ZCA whitening batch normalization (official
``ZCANormBatch``), is `zca_batch_normalize` with the layers `ZCABatchNorm` (NNX) and
`LinenZCABatchNorm` (exported as `jaxlearn.nn.linen.ZCABatchNorm`).

Public API: `matrix_sqrt`, `matrix_inverse_sqrt` (the paper's methods, ``method="mpa"`` or
``"mtp"``), `newton_schulz_sqrt` (the baseline), `taylor_coefficients` and `pade_coefficients`,
and the ZCA layers above.

References:
  Yue Song, Nicu Sebe, Wei Wang. "Fast Differentiable Matrix Square Root".
  https://arxiv.org/abs/2201.08663. ICLR 2022. Journal version: "Fast Differentiable Matrix
  Square Root and Inverse Square Root", IEEE TPAMI 2022 (arXiv:2201.12543).
  Official code: https://github.com/KingJamesSong/FastDifferentiableMatSqrt
"""

from __future__ import annotations

import functools
from fractions import Fraction

from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_choice, check_positive, check_positive_int, check_range
from jaxlearn.nn._modes import RunningAverageMode

__all__ = [
    "matrix_sqrt",
    "matrix_inverse_sqrt",
    "newton_schulz_sqrt",
    "taylor_coefficients",
    "pade_coefficients",
    "zca_batch_normalize",
    "ZCABatchNorm",
    "LinenZCABatchNorm",
]

METHODS = ("mpa", "mtp")


@functools.lru_cache(maxsize=None)
def _taylor_fractions(degree: int) -> tuple[Fraction, ...]:
  coefficients = [Fraction(1)]
  for k in range(1, degree + 1):
    coefficients.append(coefficients[-1] * (Fraction(k) - Fraction(3, 2)) / k)
  return tuple(coefficients)


def taylor_coefficients(degree: int = 10) -> np.ndarray:
  r"""The Taylor coefficients :math:`a_0, \dots, a_K` of :math:`\sqrt{1 - z}` around 0.

  Example:
    >>> from jaxlearn.nn import taylor_coefficients
    >>> taylor_coefficients(3).tolist()  # 1 - z/2 - z^2/8 - z^3/16
    [1.0, -0.5, -0.125, -0.0625]
  """
  check_positive_int("degree", degree)
  return np.array([float(c) for c in _taylor_fractions(degree)])


def _solve_exact(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
  """Gaussian elimination over the rationals (the Padé system is small and exact)."""
  n = len(rhs)
  rows = [list(r) + [b] for r, b in zip(matrix, rhs)]
  for col in range(n):
    pivot = next(r for r in range(col, n) if rows[r][col] != 0)
    rows[col], rows[pivot] = rows[pivot], rows[col]
    for r in range(n):
      if r != col and rows[r][col] != 0:
        factor = rows[r][col] / rows[col][col]
        rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col])]
  return [rows[i][n] / rows[i][i] for i in range(n)]


@functools.lru_cache(maxsize=None)
def _pade_fractions(m: int, n: int) -> tuple[tuple[Fraction, ...], tuple[Fraction, ...]]:
  a = _taylor_fractions(m + n)
  coef = lambda k: a[k] if k >= 0 else Fraction(0)
  # q_0 = 1 and sum_j q_j a_{k-j} = 0 for k = m+1 .. m+n (mpmath's `pade`).
  q_tail = _solve_exact([[coef(k - j) for j in range(1, n + 1)] for k in range(m + 1, m + n + 1)],
                        [-coef(k) for k in range(m + 1, m + n + 1)]) if n else []
  q = [Fraction(1)] + q_tail
  p = [sum(q[j] * coef(k - j) for j in range(min(k, n) + 1)) for k in range(m + 1)]
  return tuple(p), tuple(q)


def pade_coefficients(m: int = 5, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
  r"""The :math:`[m/n]` Padé approximant :math:`P_m(z)/Q_n(z)` of :math:`\sqrt{1 - z}`.

  Computed exactly over the rationals from the Taylor coefficients (the official code uses
  ``mpmath.pade``): :math:`q_0 = 1` and :math:`P_m - Q_n \sum_k a_k z^k = O(z^{m+n+1})`.

  Returns:
    ``(p, q)``: the numerator and denominator coefficients, lowest degree first.

  Example:
    >>> from jaxlearn.nn import pade_coefficients
    >>> p, q = pade_coefficients(1, 1)  # sqrt(1 - z) ~ (1 - 3z/4) / (1 - z/4)
    >>> p.tolist(), q.tolist()
    ([1.0, -0.75], [1.0, -0.25])
  """
  check_positive_int("m", m)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"n must be an integer >= 0, got {n!r}")
  p, q = _pade_fractions(m, n)
  return np.array([float(c) for c in p]), np.array([float(c) for c in q])


def _check_square(a) -> jax.Array:
  a = jnp.asarray(a)
  if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
    raise ValueError(f"a must be a square matrix or a batch of them (..., n, n), got shape "
                     f"{a.shape}")
  if not jnp.issubdtype(a.dtype, jnp.floating):
    raise ValueError(f"a must be a floating-point array, got dtype {a.dtype}")
  return a


def _wide(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _eye_like(x: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.eye(x.shape[-1], dtype=x.dtype), x.shape)


def _frobenius(x: jax.Array) -> jax.Array:
  return jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)


def _polynomials(z: jax.Array, coefficient_lists) -> list[jax.Array]:
  """sum_k c_k Z^k for every coefficient list, sharing the powers of Z."""
  eye = _eye_like(z)
  sums = [c[0] * eye for c in coefficient_lists]
  power = eye
  for k in range(1, max(len(c) for c in coefficient_lists)):
    power = power @ z
    sums = [s + c[k] * power if k < len(c) else s for s, c in zip(sums, coefficient_lists)]
  return sums


def _forward(a: jax.Array, method: str, degree: int, inverse: bool) -> jax.Array:
  """The MTP / MPA root of float32 `a` (no custom gradient)."""
  norm = _frobenius(a)
  z = _eye_like(a) - a / norm
  if method == "mtp":
    (root,) = _polynomials(z, [taylor_coefficients(degree)])
    if inverse:  # the inverse of the MTP root (one solve)
      return jnp.linalg.solve(root, _eye_like(a)) / jnp.sqrt(norm)
    return root * jnp.sqrt(norm)
  p, q = _polynomials(z, pade_coefficients(degree, degree))
  if inverse:
    return jnp.linalg.solve(p, q) / jnp.sqrt(norm)
  return jnp.linalg.solve(q, p) * jnp.sqrt(norm)


def _lyapunov_sign(b: jax.Array, c: jax.Array, steps: int) -> jax.Array:
  """Y with B Y + Y B = C (B SPD, spectrum in (0, 1]) by the Newton–Schulz sign iteration."""
  eye = _eye_like(b)

  def step(_, bc):
    b, c = bc
    b2 = b @ b
    c = 0.5 * (c @ (3.0 * eye - b2) - b2 @ c + b @ c @ b)
    return 0.5 * b @ (3.0 * eye - b2), c

  _, c = jax.lax.fori_loop(0, steps, step, (b, c))
  return 0.5 * c


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _root(a, method, degree, inverse, backward_steps):
  return _forward(_wide(a), method, degree, inverse).astype(a.dtype)


def _root_fwd(a, method, degree, inverse, backward_steps):
  wide = _wide(a)
  x = _forward(wide, method, degree, inverse)
  return x.astype(a.dtype), (x, _frobenius(wide), jnp.zeros((), a.dtype))


def _root_bwd(method, degree, inverse, backward_steps, residuals, g):
  x, norm, like = residuals
  g = _wide(g)
  if inverse:
    x2 = x @ x
    c = -(x2 @ g @ x2)
    scale = _frobenius(x)
  else:
    c, scale = g, jnp.sqrt(norm)
  grad = _lyapunov_sign(x / scale, c / scale, backward_steps)
  return (grad.astype(like.dtype),)


_root.defvjp(_root_fwd, _root_bwd)


def _checked_root(a, method, degree, backward_steps, inverse):
  a = _check_square(a)
  check_choice("method", method, METHODS)
  check_positive_int("degree", degree)
  check_positive_int("backward_steps", backward_steps)
  return _root(a, method, degree, inverse, backward_steps)


def matrix_sqrt(a: jax.Array, *, method: str = "mpa", degree: int | None = None,
                backward_steps: int = 8) -> jax.Array:
  r""":math:`A^{1/2}` of SPD matrices by MPA or MTP, with the Lyapunov backward.

  Args:
    a: ``(..., n, n)`` symmetric positive definite matrices (not checked; leading axes batch).
    method: ``"mpa"`` (Padé, default, the paper's recommended variant) or ``"mtp"`` (Taylor).
    degree: the Padé order :math:`[d/d]` for MPA (default 5) or the Taylor degree for MTP
      (default 10), as in the official code.
    backward_steps: iterations of the sign iteration in the backward pass (default 8).

  Returns:
    The square root, in ``a``'s dtype (computed in float32 or wider).

  Raises:
    ValueError: if ``a`` is not a (batch of) square matrices, or for a bad option.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import matrix_sqrt
    >>> a = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    >>> x = matrix_sqrt(a)
    >>> bool(jnp.allclose(x @ x, a, atol=1e-3))
    True
    >>> g = jax.grad(lambda a: jnp.trace(matrix_sqrt(a)))(a)  # = A^{-1/2} / 2
    >>> bool(jnp.allclose(g, 0.5 * jnp.linalg.inv(x), atol=1e-2))
    True
  """
  degree = (5 if method == "mpa" else 10) if degree is None else degree
  return _checked_root(a, method, degree, backward_steps, inverse=False)


def matrix_inverse_sqrt(a: jax.Array, *, method: str = "mpa", degree: int | None = None,
                        backward_steps: int = 8) -> jax.Array:
  r""":math:`A^{-1/2}` of SPD matrices by MPA (:math:`P^{-1}Q`) or MTP, Lyapunov backward.

  MPA follows the official ``MPA_Lya_Inv``. For MTP (not in the official code nor the ICLR
  paper, which derive the inverse root by inverting the root) it is the inverse of the MTP root.
  The backward normalizes by each matrix's own :math:`\|A^{-1/2}\|_F`; the official code
  divides the whole batch by one global norm (the same fixed point, slower convergence).

  Args:
    a: ``(..., n, n)`` symmetric positive definite matrices (not checked).
    method: ``"mpa"`` (default) or ``"mtp"``.
    degree: Padé order (default 5) or Taylor degree (default 10).
    backward_steps: sign iterations in the backward pass (default 8).

  Returns:
    The inverse square root, in ``a``'s dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import matrix_inverse_sqrt
    >>> y = matrix_inverse_sqrt(jnp.diag(jnp.array([4.0, 1.0])))
    >>> print(jnp.diag(y).round(2))
    [0.5 1. ]
  """
  degree = (5 if method == "mpa" else 10) if degree is None else degree
  return _checked_root(a, method, degree, backward_steps, inverse=True)


def newton_schulz_sqrt(a: jax.Array, *, steps: int = 5,
                       inverse: bool = False) -> jax.Array:
  r"""The paper's baseline: coupled Newton–Schulz for :math:`A^{1/2}` (or :math:`A^{-1/2}`).

  Gradients by autodiff through the ``steps`` unrolled iterations. Converges for SPD input
  (the eigenvalues of :math:`A/\|A\|_F` lie in (0, 1]), slowly for a small
  :math:`\lambda_{\min}/\|A\|_F`. `jaxlearn.optim.matrix.inverse_sqrt_newton_schulz` is the
  same iteration for :math:`A^{-1/2}` with tunable (by default PolarExpress) coefficients.

  Args:
    a: ``(..., n, n)`` symmetric positive definite matrices (not checked).
    steps: iterations (default 5, iSQRT-COV's).
    inverse: return :math:`A^{-1/2}` instead of :math:`A^{1/2}`.

  Returns:
    The (inverse) square root, in ``a``'s dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import newton_schulz_sqrt
    >>> x = newton_schulz_sqrt(jnp.diag(jnp.array([1.0, 0.64])), steps=10)
    >>> print(jnp.diag(x).round(3))
    [1.  0.8]
  """
  a = _check_square(a)
  check_positive_int("steps", steps)
  wide = _wide(a)
  norm = _frobenius(wide)
  eye = _eye_like(wide)

  def step(_, yz):
    y, z = yz
    t = 0.5 * (3.0 * eye - z @ y)
    return y @ t, t @ z

  y, z = jax.lax.fori_loop(0, steps, step, (wide / norm, eye))
  out = z / jnp.sqrt(norm) if inverse else y * jnp.sqrt(norm)
  return out.astype(a.dtype)


# ------------------------------------------------------------------------ ZCA (decorrelated) BN

DEFAULT_ZCA_MOMENTUM = 0.9  # official: PyTorch momentum 0.1
DEFAULT_ZCA_EPSILON = 1e-2  # official ZCANormBatch default


def _check_zca_input(x: jax.Array, num_features: int | None = None) -> None:
  if x.ndim < 2:
    raise ValueError(f"ZCABatchNorm expects inputs of rank >= 2 (batch, ..., features), got "
                     f"shape {x.shape}")
  if num_features is not None and x.shape[-1] != num_features:
    raise ValueError(f"ZCABatchNorm expects {num_features} features on the last axis, got shape "
                     f"{x.shape}")


def _check_zca_options(num_features, num_groups, momentum, epsilon, method) -> None:
  check_positive_int("num_groups", num_groups)
  if num_features % num_groups:
    raise ValueError(f"num_groups must divide the number of features ({num_features}), got "
                     f"{num_groups}")
  check_range("momentum", momentum, 0.0, 1.0)
  check_positive("epsilon", epsilon)
  check_choice("method", method, METHODS)


def zca_batch_normalize(
    x: jax.Array, *, running_mean: jax.Array, running_subspace: jax.Array, scale: jax.Array,
    bias: jax.Array, use_running_average: bool, momentum: float = DEFAULT_ZCA_MOMENTUM,
    epsilon: float = DEFAULT_ZCA_EPSILON, method: str = "mpa", axis_name: str | None = None,
    dtype=None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""ZCA whitening batch normalization (the paper's decorrelated BN, official ``ZCANormBatch``).

  Channels are split into G groups of c = C/G consecutive channels; for each group, over the
  batch and spatial positions (M samples):

  .. math::

     \mu = \tfrac1M \textstyle\sum_m x_m, \quad
     \Sigma = \tfrac1M \textstyle\sum_m (x_m - \mu)(x_m - \mu)^\top + \epsilon I, \quad
     y = \gamma \odot \bigl((\Sigma^{1/2})^{-1} (x - \mu)\bigr) + \beta,

  with :math:`(\Sigma^{1/2})^{-1}` by `matrix_inverse_sqrt` (MPA or MTP, Lyapunov backward; the
  official ``ZCANormBatch`` inverts the MPA square root with ``torch.inverse``, one more
  factorization for the same matrix). Training updates the running mean and
  the running whitening matrix ("subspace") as ``momentum * old + (1 - momentum) * batch``;
  evaluation whitens with them.

  Args:
    x: ``(N, ..., C)``, channels last.
    running_mean: ``(C,)``.
    running_subspace: ``(G, c, c)`` running whitening matrices.
    scale, bias: ``(C,)`` affine parameters :math:`\gamma, \beta`.
    use_running_average: evaluation mode.
    momentum: decay of the running statistics (official PyTorch momentum 0.1 = ours 0.9).
    epsilon: added to the covariance diagonal (official default 1e-2).
    method: ``"mpa"`` or ``"mtp"`` for the square root.
    axis_name: named axis over which batch mean and covariance are averaged.
    dtype: output dtype (default: the input's).

  Returns:
    ``(y, new_running_mean, new_running_subspace)`` (statistics float32, stop-gradient).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import zca_batch_normalize
    >>> x = jax.random.normal(jax.random.key(0), (256, 4)) @ jnp.array(
    ...     [[2.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.5, 3]])
    >>> y, _, _ = zca_batch_normalize(
    ...     x, running_mean=jnp.zeros(4), running_subspace=jnp.eye(4)[None], scale=jnp.ones(4),
    ...     bias=jnp.zeros(4), use_running_average=False, epsilon=1e-5)
    >>> bool(jnp.allclose(y.T @ y / 256, jnp.eye(4), atol=0.05))  # whitened
    True
  """
  _check_zca_input(x, running_mean.shape[-1])
  groups = running_subspace.shape[0]
  _check_zca_options(x.shape[-1], groups, momentum, epsilon, method)
  return _zca(x, running_mean, running_subspace, scale, bias, momentum, epsilon,
              use_running_average=bool(use_running_average), method=method, axis_name=axis_name,
              dtype=x.dtype if dtype is None else jnp.dtype(dtype))


# Jitted so that eager NNX calls compile one program instead of one per primitive.
@functools.partial(jax.jit, static_argnames=("use_running_average", "method", "axis_name",
                                             "dtype"))
def _zca(x, running_mean, running_subspace, scale, bias, momentum, epsilon, *,
         use_running_average, method, axis_name, dtype):
  compute = jnp.promote_types(x.dtype, jnp.float32)
  groups, size = running_subspace.shape[0], running_subspace.shape[-1]
  flat = x.astype(compute).reshape(-1, groups, size)
  running_mean = running_mean.astype(compute).reshape(groups, size)
  running_subspace = running_subspace.astype(compute)
  pmean = (lambda v: v) if axis_name is None else (lambda v: jax.lax.pmean(v, axis_name))
  if use_running_average:
    mean, subspace = running_mean, running_subspace
    new_mean, new_subspace = running_mean, running_subspace
  else:
    mean = pmean(jnp.mean(flat, axis=0))
    centered = flat - mean
    cov = pmean(jnp.einsum("mgi,mgj->gij", centered, centered) / flat.shape[0])
    cov = cov + epsilon * jnp.eye(size, dtype=compute)
    subspace = matrix_inverse_sqrt(cov, method=method)
    average = lambda old, new: jax.lax.stop_gradient(momentum * old + (1.0 - momentum) * new)
    new_mean, new_subspace = average(running_mean, mean), average(running_subspace, subspace)
  y = jnp.einsum("gij,mgj->mgi", subspace, flat - mean).reshape(x.shape)
  y = y * scale.astype(compute) + bias.astype(compute)
  return y.astype(dtype), new_mean.reshape(-1), new_subspace


class ZCABatchNorm(RunningAverageMode):
  """Decorrelated (ZCA whitening) batch normalization by `matrix_inverse_sqrt`, an NNX layer.

  See `zca_batch_normalize` for the math. Parameters (`param_dtype`): `scale` (C,), drawn
  U[0, 1) as the official code, and `bias` (C,) zeros. Running statistics (`nnx.BatchStat`,
  float32): `mean` (C,) and `subspace` (G, C/G, C/G), initially the identity. The mode follows
  flax's `BatchNorm` (`use_running_average`; `model.train()` / `model.eval()`).

  Args:
    num_features: number of channels C (last axis).
    num_groups: channel groups G (must divide C); one c x c covariance per group.
    use_running_average: evaluation mode.
    momentum: decay of the running statistics (default 0.9, official PyTorch 0.1).
    epsilon: covariance damping (default 1e-2, official).
    method: ``"mpa"`` (default) or ``"mtp"``.
    dtype: output dtype (default: the input's).
    param_dtype: dtype of `scale` and `bias`.
    axis_name: named axis over which batch statistics are averaged.
    rngs: `nnx.Rngs` with a 'params' stream (for `scale`).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> norm = jnn.ZCABatchNorm(8, num_groups=2, rngs=nnx.Rngs(0))
    >>> x = jnp.arange(4 * 3 * 3 * 8, dtype=jnp.float32).reshape(4, 3, 3, 8) % 7
    >>> norm(x).shape  # training: batch covariance, running statistics updated
    (4, 3, 3, 8)
    >>> norm.eval()
    >>> norm(x).shape
    (4, 3, 3, 8)
  """

  def __init__(self, num_features: int, *, num_groups: int = 1,
               use_running_average: bool | None = False,
               momentum: float = DEFAULT_ZCA_MOMENTUM, epsilon: float = DEFAULT_ZCA_EPSILON,
               method: str = "mpa", dtype=None, param_dtype=jnp.float32,
               axis_name: str | None = None, rngs: nnx.Rngs):
    check_positive_int("num_features", num_features)
    _check_zca_options(num_features, num_groups, momentum, epsilon, method)
    size = num_features // num_groups
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.subspace = nnx.BatchStat(
        jnp.broadcast_to(jnp.eye(size, dtype=jnp.float32), (num_groups, size, size)))
    self.scale = nnx.Param(jax.random.uniform(rngs.params(), (num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.num_features, self.num_groups = num_features, num_groups
    self.use_running_average = use_running_average
    self.momentum, self.epsilon, self.method = momentum, epsilon, method
    self.dtype, self.axis_name = dtype, axis_name

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Whitens `x` (N, ..., C); in training mode also updates the running statistics."""
    use_running_average = self.running_average_mode(use_running_average)
    _check_zca_input(x, self.num_features)
    y, mean, subspace = zca_batch_normalize(
        x, running_mean=self.mean[...], running_subspace=self.subspace[...],
        scale=self.scale[...], bias=self.bias[...], use_running_average=use_running_average,
        momentum=self.momentum, epsilon=self.epsilon, method=self.method,
        axis_name=self.axis_name, dtype=self.dtype)
    if not use_running_average:
      self.mean[...] = mean.astype(jnp.float32)
      self.subspace[...] = subspace.astype(jnp.float32)
    return y


class LinenZCABatchNorm(linen.Module):
  """The Linen twin of `ZCABatchNorm`; exported as `jaxlearn.nn.linen.ZCABatchNorm`.

  Variables: `params` {scale, bias}; `batch_stats` {mean, subspace}. The number of features is
  read from the input; `use_running_average` as an attribute or at call time (as flax's
  `BatchNorm`); while initializing, nothing is updated and `axis_name` is not used.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> norm = jnn_linen.ZCABatchNorm(num_groups=2)
    >>> x = jnp.arange(4 * 8, dtype=jnp.float32).reshape(4, 8) % 5
    >>> variables = norm.init(jax.random.key(0), x, use_running_average=True)
    >>> y, updates = norm.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> updates["batch_stats"]["subspace"].shape
    (2, 4, 4)
  """

  num_groups: int = 1
  use_running_average: bool | None = None
  momentum: float = DEFAULT_ZCA_MOMENTUM
  epsilon: float = DEFAULT_ZCA_EPSILON
  method: str = "mpa"
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @linen.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Whitens `x` (N, ..., C); in training mode also updates `batch_stats`."""
    use_running_average = linen.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    _check_zca_input(x)
    if self.has_variable("batch_stats", "mean"):
      _check_zca_input(x, self.get_variable("batch_stats", "mean").shape[-1])
    features = x.shape[-1]
    _check_zca_options(features, self.num_groups, self.momentum, self.epsilon, self.method)
    size = features // self.num_groups
    initializing = self.is_initializing()
    mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    subspace = self.variable(
        "batch_stats", "subspace",
        lambda: jnp.broadcast_to(jnp.eye(size, dtype=jnp.float32), (self.num_groups, size, size)))
    y, new_mean, new_subspace = zca_batch_normalize(
        x, running_mean=mean.value, running_subspace=subspace.value,
        scale=self.param("scale", linen.initializers.uniform(1.0), (features,),
                         self.param_dtype),
        bias=self.param("bias", linen.initializers.zeros, (features,), self.param_dtype),
        use_running_average=use_running_average, momentum=self.momentum, epsilon=self.epsilon,
        method=self.method, axis_name=None if initializing else self.axis_name, dtype=self.dtype)
    if not use_running_average and not initializing:
      mean.value = new_mean.astype(jnp.float32)
      subspace.value = new_subspace.astype(jnp.float32)
    return y


RECORD = registry.record(
    slug="fast_differentiable_matsqrt",
    kind="layer",
    title="Fast Differentiable Matrix Square Root",
    reference="arXiv:2201.08663",
    experiment="matsqrt_speed_accuracy",
    notes=(
        "Forward MTP (degree-10 Taylor) and MPA ([5/5] Pade) after Frobenius normalization, "
        "backward by the 8-step Newton-Schulz sign iteration for the Lyapunov equation, as in "
        "the official torch_utils.py (MPA_Lya, MPA_Lya_Inv). Deviations: the Pade coefficients "
        "are computed exactly over the rationals (official: mpmath.pade in 32 digits, tested "
        "equal); the inverse-root backward normalizes each matrix by its own Frobenius norm "
        "(official: one norm over the whole batch, which couples the batch; same fixed point); "
        "MTP for the inverse root is the inverse of the MTP root (the official code has none). "
        "Newton-Schulz baseline gradients are autodiff through the unrolled iteration. "
        "ZCABatchNorm follows the official ZCANormBatch (eps 1e-2, momentum 0.1 = flax 0.9, "
        "scale ~ U[0,1), running mean and running whitening matrix) except that it whitens "
        "with the paper's inverse root (MPA_Lya_Inv) where ZCANormBatch applies torch.inverse "
        "to the MPA square root. Accuracy "
        "is only good for well-conditioned inputs (forward ~5e-3 at kappa 10, ~5e-2 at kappa "
        "100 for 32x32; see the module docstring); symmetry/definiteness are not checked."
    ),
)
