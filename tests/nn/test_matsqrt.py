"""The MTP/MPA matrix square roots and their Lyapunov backward against independent references.

References: `numpy.linalg.eigh` in float64 for the roots, the exact solution of the Sylvester
(Lyapunov) equation by eigendecomposition (Daleckii-Krein) for the gradients, `mpmath.pade` for
the Padé coefficients (what the official code uses), and a NumPy float64 transcription of the
official ZCANormBatch for the layer. Tolerances follow the measured errors of the official
algorithm (module docstring): they grow with the size and the condition number.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlearn.nn as jnn
from jaxlearn.optim.matrix import inverse_sqrt_newton_schulz
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")  # few-step programs: compile unoptimized


def spd_batch(n, kappas, seed=0):
  """SPD matrices with log-spaced spectra in [1, kappa]: (A, Q, eigenvalues) in float64."""
  rng = np.random.default_rng(seed)
  mats, vecs, vals = [], [], []
  for kappa in kappas:
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = np.logspace(0.0, np.log10(kappa), n)
    mats.append((q * lam) @ q.T)
    vecs.append(q)
    vals.append(lam)
  return np.stack(mats), np.stack(vecs), np.stack(vals)


def np_power(q, lam, p):
  return (q * lam[..., None, :] ** p) @ np.swapaxes(q, -1, -2)


def np_gradient(q, lam, g, p):
  """dL/dA for X = A^p given dL/dX = G: Q ((Q^T G Q) o D) Q^T, D the divided differences of
  lam^p (for p = 1/2 this solves X Y + Y X = G exactly)."""
  l1, l2 = lam[..., :, None], lam[..., None, :]
  f1, f2 = l1**p, l2**p
  close = np.abs(l1 - l2) < 1e-12
  d = np.where(close, p * l1 ** (p - 1), (f1 - f2) / np.where(close, 1.0, l1 - l2))
  qt = np.swapaxes(q, -1, -2)
  return q @ ((qt @ g @ q) * d) @ qt


def rel(a, b):
  return np.linalg.norm(a - b, axis=(-2, -1)) / np.linalg.norm(b, axis=(-2, -1))


@functools.partial(jax.jit, static_argnums=2)
def roots_and_grads(a, g, variants):
  """Every variant's (root, VJP of <G, root>) in one program."""
  out = []
  for name, method in variants:
    fn = jnn.matrix_sqrt if name == "sqrt" else jnn.matrix_inverse_sqrt
    x, vjp = jax.vjp(functools.partial(fn, method=method), a)
    out.append((x, vjp(g)[0]))
  return out


VARIANTS = (("sqrt", "mpa"), ("sqrt", "mtp"), ("inv", "mpa"), ("inv", "mtp"))
# 32 x 32, kappa = 10 and 100: (forward, backward) relative-error bounds, about 2x the errors
# measured for these spectra; None: at kappa = 100 only the gradient direction is checked.
BOUNDS = {
    ("sqrt", "mpa"): [(1e-2, 2e-2), (9e-2, None)],
    ("sqrt", "mtp"): [(0.11, 0.16), (0.35, None)],
    ("inv", "mpa"): [(3e-2, 8e-2), (0.45, None)],
    ("inv", "mtp"): [(0.22, 0.6), (0.9, None)],
}
MIN_COSINE = {("sqrt", "mpa"): 0.99, ("sqrt", "mtp"): 0.95, ("inv", "mpa"): 0.93,
              ("inv", "mtp"): 0.8}


def test_forward_against_eigh_and_backward_against_exact_sylvester():
  kappas = (10.0, 100.0)
  a, q, lam = spd_batch(32, kappas)
  g = np.random.default_rng(1).normal(size=a.shape)
  results = roots_and_grads(jnp.asarray(a, jnp.float32), jnp.asarray(g, jnp.float32), VARIANTS)
  for variant, (x, grad) in zip(VARIANTS, results):
    p = 0.5 if variant[0] == "sqrt" else -0.5
    x, grad = np.asarray(x, np.float64), np.asarray(grad, np.float64)
    exact_x, exact_grad = np_power(q, lam, p), np_gradient(q, lam, g, p)
    forward, backward = rel(x, exact_x), rel(grad, exact_grad)
    cosine = np.sum(grad * exact_grad, axis=(-2, -1)) / (
        np.linalg.norm(grad, axis=(-2, -1)) * np.linalg.norm(exact_grad, axis=(-2, -1)))
    for i, (fwd_bound, bwd_bound) in enumerate(BOUNDS[variant]):
      assert forward[i] < fwd_bound, (variant, kappas[i], forward[i])
      if bwd_bound is not None:
        assert backward[i] < bwd_bound, (variant, kappas[i], backward[i])
      assert cosine[i] > MIN_COSINE[variant], (variant, kappas[i], cosine[i])
    # The errors grow with the condition number.
    assert forward[1] > forward[0] and backward[1] > backward[0], variant


def test_small_well_conditioned_matrix_and_the_lyapunov_equation():
  """8 x 8, kappa = 10: forward error ~1e-3 (the regime where MPA is accurate); with more sign
  iterations the gradient Y satisfies X Y + Y X = G for the X the forward returned."""
  a, q, lam = spd_batch(8, (10.0,), seed=3)
  g = np.random.default_rng(4).normal(size=a.shape)

  @jax.jit
  def run(a, g):
    x, vjp = jax.vjp(lambda a: jnn.matrix_sqrt(a, backward_steps=30), a)
    return x, vjp(g)[0]

  x, y = (np.asarray(v, np.float64) for v in run(jnp.asarray(a, jnp.float32),
                                                 jnp.asarray(g, jnp.float32)))
  assert rel(x, np_power(q, lam, 0.5))[0] < 2e-3
  np.testing.assert_allclose(x @ y + y @ x, g, atol=2e-4 * np.abs(g).max())


def test_pade_and_taylor_coefficients():
  # Definition: P - Q * Taylor = O(z^11) for [5/5]; Taylor = binom(1/2, k) (-1)^k.
  taylor = jnn.taylor_coefficients(10)
  k = np.arange(11)
  binom = np.cumprod(np.concatenate([[1.0], (0.5 - k[:-1]) / (k[:-1] + 1)]))
  np.testing.assert_allclose(taylor, binom * (-1.0) ** k, rtol=1e-15)
  p, q = jnn.pade_coefficients(5, 5)
  residual = np.convolve(q, taylor)[:11] - np.pad(p, (0, 5))
  np.testing.assert_allclose(residual, 0.0, atol=1e-15)
  mpmath = pytest.importorskip("mpmath")  # what the official code calls
  mpmath.mp.dps = 32
  mp_p, mp_q = mpmath.pade(mpmath.taylor(lambda z: mpmath.sqrt(1 - z), 0, 10), 5, 5)
  np.testing.assert_allclose(p, np.array(mp_p, float), rtol=1e-14, atol=1e-16)
  np.testing.assert_allclose(q, np.array(mp_q, float), rtol=1e-14, atol=1e-16)


def test_newton_schulz_baseline_converges_to_the_roots():
  a, q, lam = spd_batch(8, (10.0,), seed=5)
  a32 = jnp.asarray(a, jnp.float32)
  both = jax.jit(lambda a: (
      jnn.newton_schulz_sqrt(a, steps=25), jnn.newton_schulz_sqrt(a, steps=25, inverse=True),
      jnn.newton_schulz_sqrt(a, steps=4, inverse=True),
      # The optimizers' copy of the iteration, set to the classical coefficients.
      inverse_sqrt_newton_schulz(a, steps=4, coefficients=(1.5, -0.5, 0.0), norm_factor=1.0)))
  x, y, y4, y4_optim = both(a32)
  assert rel(np.asarray(x, np.float64), np_power(q, lam, 0.5))[0] < 1e-5
  assert rel(np.asarray(y, np.float64), np_power(q, lam, -0.5))[0] < 1e-5
  np.testing.assert_allclose(y4, y4_optim, rtol=1e-5, atol=1e-6)


def test_dtypes_and_bad_input():
  a = jnp.asarray(spd_batch(4, (4.0,))[0][0], jnp.bfloat16)
  x, grad = jax.jit(lambda a: jax.value_and_grad(lambda a: jnn.matrix_sqrt(a).sum())(a))(a)
  assert x.dtype == jnp.bfloat16 and grad.dtype == jnp.bfloat16
  for fn in (jnn.matrix_sqrt, jnn.matrix_inverse_sqrt, jnn.newton_schulz_sqrt):
    with pytest.raises(ValueError, match="square"):
      fn(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="square"):
      fn(jnp.ones((3,)))
  with pytest.raises(ValueError, match="method"):
    jnn.matrix_sqrt(jnp.eye(2), method="svd")
  with pytest.raises(ValueError, match="backward_steps"):
    jnn.matrix_sqrt(jnp.eye(2), backward_steps=0)


def np_zca(x, scale, bias, groups, eps):
  """The official ZCANormBatch training forward in float64 (exact root by eigh)."""
  flat = x.reshape(-1, groups, x.shape[-1] // groups)
  mean = flat.mean(axis=0)
  centered = flat - mean
  cov = np.einsum("mgi,mgj->gij", centered, centered) / len(flat) + eps * np.eye(flat.shape[-1])
  lam, q = np.linalg.eigh(cov)
  subspace = np.linalg.inv(np_power(q, lam, 0.5))
  y = np.einsum("gij,mgj->mgi", subspace, centered).reshape(x.shape) * scale + bias
  return y, mean.reshape(-1), subspace


def test_zca_batch_norm_matches_the_official_forward_and_running_updates():
  rng = np.random.default_rng(6)
  x = rng.normal(size=(16, 2, 2, 8)) @ (np.eye(8) + 0.3 * rng.normal(size=(8, 8)))
  scale, bias = rng.uniform(0.5, 1.5, 8), rng.normal(size=8)
  mean0, sub0 = rng.normal(size=8), np.stack([np.eye(4)] * 2)
  y, mean, sub = jnn.zca_batch_normalize(
      jnp.asarray(x, jnp.float32), running_mean=jnp.asarray(mean0, jnp.float32),
      running_subspace=jnp.asarray(sub0, jnp.float32), scale=jnp.asarray(scale, jnp.float32),
      bias=jnp.asarray(bias, jnp.float32), use_running_average=False, momentum=0.8,
      epsilon=1e-2)
  y_ref, batch_mean, batch_sub = np_zca(x, scale, bias, 2, 1e-2)
  np.testing.assert_allclose(y, y_ref, atol=2e-2 * np.abs(y_ref).max())
  np.testing.assert_allclose(mean, 0.8 * mean0 + 0.2 * batch_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sub, 0.8 * sub0 + 0.2 * batch_sub, atol=1e-2)
  with pytest.raises(ValueError, match="num_groups"):
    jnn.ZCABatchNorm(6, num_groups=4, rngs=None)
