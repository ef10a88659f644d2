"""Tests for `jaxlearn.optim.matrix`: the matrix view of a leaf and the shared matrix functions.

References: NumPy's SVD and eigendecomposition, and `optax.contrib.scale_by_muon` (whose
orthogonalization, at momentum 0, is Newton-Schulz with the same coefficients).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

from jaxlearn.optim import matrix

RNG = np.random.default_rng(0)


def _normal(*shape):
  return RNG.normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The matrix view.


@pytest.mark.parametrize("shape, expected", [
    ((4, 3), (1, 4, 3)),           # Dense (in, out)
    ((2, 4, 3), (2, 4, 3)),        # scan-stacked (L, in, out)
    ((3, 3, 2, 5), (1, 18, 5)),    # conv HWIO
])
def test_default_views_of_flax_layouts_round_trip(shape, expected):
  spec = matrix.default_dimension_numbers(shape)
  x = jnp.asarray(_normal(*shape))
  stacked = matrix.to_matrices(x, spec)
  assert stacked.shape == expected == matrix.matrix_shape(shape, spec)
  np.testing.assert_array_equal(matrix.from_matrices(stacked, spec, shape), x)


def test_conv_view_puts_every_input_position_on_the_fan_in_side():
  x = _normal(3, 3, 2, 5)
  stacked = matrix.to_matrices(jnp.asarray(x), matrix.default_dimension_numbers(x.shape))
  np.testing.assert_array_equal(stacked[0], x.reshape(18, 5))


def test_an_explicit_spec_with_a_batch_axis_in_the_middle():
  spec = MuonDimensionNumbers(reduction_axis=0, output_axis=-1)
  x = _normal(4, 2, 3)
  stacked = matrix.to_matrices(jnp.asarray(x), spec)
  np.testing.assert_array_equal(stacked, np.transpose(x, (1, 0, 2)))
  np.testing.assert_array_equal(matrix.from_matrices(stacked, spec, x.shape), x)


def test_leaf_specs_defaults_prefix_trees_and_masked_nodes():
  params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}, "conv": jnp.ones((2, 2, 1, 3))}
  default = matrix.leaf_dimension_numbers(params)
  assert [s is None for s in default] == [False, True, False]  # leaves order: conv, bias, kernel
  # A prefix tree: None sends the whole dense layer to the fallback.
  prefix = {"dense": None, "conv": MuonDimensionNumbers((0, 1, 2), 3)}
  assert [s is None for s in matrix.leaf_dimension_numbers(params, prefix)] == [False, True, True]
  labels = matrix.matrix_labels(params)
  assert labels == {"dense": {"kernel": "matrix", "bias": "fallback"}, "conv": "matrix"}
  # Inside optax.partition the fallback leaves are MaskedNodes: they are skipped.
  masked = {"dense": {"kernel": params["dense"]["kernel"], "bias": optax.MaskedNode()},
            "conv": params["conv"]}
  assert len(matrix.leaf_dimension_numbers(masked)) == 2


@pytest.mark.parametrize("spec, match", [
    (MuonDimensionNumbers(0, 1), r"dimension_numbers gives leaf \['b'\].*at least 2 dimensions"),
    (MuonDimensionNumbers(0, 0), "disjoint"),
    (MuonDimensionNumbers(0, 5), "out of range"),
])
def test_a_spec_that_does_not_fit_a_leaf_is_rejected_with_its_name(spec, match):
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  specs = {"w": spec, "b": None} if "disjoint" in match or "range" in match else spec
  with pytest.raises(ValueError, match=match):
    matrix.leaf_dimension_numbers(params, specs)


def test_partition_sends_vectors_to_the_fallback():
  tx = matrix.partition_matrices(optax.sgd(1.0), optax.sgd(0.5))
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3), "s": jnp.ones(())}
  updates, _ = tx.update(params, tx.init(params))
  np.testing.assert_allclose(updates["w"], -1.0)
  np.testing.assert_allclose(updates["b"], -0.5)
  np.testing.assert_allclose(updates["s"], -0.5)


# ---------------------------------------------------------------------------------------------
# Matrix functions.


def _polar(x):
  u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  return u @ vt


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 4, 4)])
def test_the_cubic_newton_schulz_iteration_converges_to_the_polar_factor(shape):
  x = _normal(*shape)
  q = matrix.newton_schulz(jnp.asarray(x), steps=40, coefficients=(1.5, -0.5, 0.0))
  expected = np.stack([_polar(m) for m in x.reshape((-1,) + shape[-2:])]).reshape(shape)
  np.testing.assert_allclose(q, expected, atol=1e-4)


def test_muon_coefficients_match_optax_muon_at_zero_momentum():
  g = {"w": jnp.asarray(_normal(6, 4)), "v": jnp.asarray(_normal(3, 7))}
  specs = {name: MuonDimensionNumbers() for name in g}
  muon = optax.contrib.scale_by_muon(beta=0.0, nesterov=False, weight_dimension_numbers=specs)
  expected, _ = muon.update(g, muon.init(g))
  for name in g:
    np.testing.assert_allclose(matrix.newton_schulz(g[name]), expected[name], rtol=2e-4, atol=2e-5)
  singular = np.linalg.svd(np.asarray(matrix.newton_schulz(g["w"])), compute_uv=False)
  assert 0.6 < singular.min() and singular.max() < 1.25  # near 1, not at 1 (the docstring's claim)


def test_newton_schulz_keeps_zero_and_bfloat16_inputs_finite_and_in_their_dtype():
  zero = matrix.newton_schulz(jnp.zeros((4, 3), jnp.bfloat16))
  assert zero.dtype == jnp.bfloat16 and not np.any(np.asarray(zero, np.float32))
  x = _normal(4, 3)
  low = matrix.newton_schulz(jnp.asarray(x, jnp.bfloat16))
  np.testing.assert_allclose(np.asarray(low, np.float32), matrix.newton_schulz(jnp.asarray(x)),
                             atol=2e-2)
  with pytest.raises(ValueError, match="coefficients"):
    matrix.newton_schulz(jnp.asarray(x), steps=3, coefficients=((1.0, 0.0, 0.0),) * 2)
  with pytest.raises(ValueError, match="steps"):
    matrix.newton_schulz(jnp.asarray(x), steps=0)


def test_inverse_roots_match_numpy_and_stay_finite_on_rank_deficient_input():
  a = _normal(5, 5)
  spd = a @ a.T + 0.1 * np.eye(5, dtype=np.float32)
  values, vectors = np.linalg.eigh(spd.astype(np.float64))
  expected = vectors @ np.diag(values ** -0.25) @ vectors.T
  np.testing.assert_allclose(matrix.inverse_pth_root(jnp.asarray(spd), 4), expected, rtol=2e-4,
                             atol=1e-4)
  u = _normal(5, 1)
  rank_one = jnp.asarray(u @ u.T)
  root = np.asarray(matrix.inverse_pth_root(rank_one, 2))
  assert np.all(np.isfinite(root))
  # The pseudo-inverse square root: zero on the null space, 1/|u| along u.
  unit = u[:, 0] / np.linalg.norm(u)
  np.testing.assert_allclose(root @ unit, unit / np.linalg.norm(u), rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(matrix.inverse_pth_root(jnp.zeros((3, 3)), 2), 0.0)
  with pytest.raises(ValueError, match="square"):
    matrix.symmetric_power(jnp.ones((2, 3)), 0.5)


@pytest.mark.parametrize("shape, side, right", [
    ((8, 5), "std", True), ((5, 8), "std", False),
    ((8, 5), "reverse_std", False), ((5, 8), "reverse_std", True),
])
def test_projector_keeps_the_best_rank_r_approximation_on_its_side(shape, side, right):
  g = _normal(*shape)
  p = matrix.top_r_projector(jnp.asarray(g), 2, side=side)
  assert matrix.projects_right(shape, side) is right
  coordinates = matrix.project(jnp.asarray(g), p, right=right)
  assert coordinates.shape == ((shape[0], 2) if right else (2, shape[1]))
  u, s, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
  best = (u[:, :2] * s[:2]) @ vt[:2]  # Eckart-Young: the same for either side
  np.testing.assert_allclose(matrix.project_back(coordinates, p, right=right), best, atol=1e-4)


def test_randomized_projector_recovers_an_exactly_low_rank_matrix():
  g = jnp.asarray(_normal(30, 3) @ _normal(3, 20))
  p = matrix.top_r_projector(g, 3, method="randomized", key=jax.random.PRNGKey(1))
  right = matrix.projects_right(g.shape)
  np.testing.assert_allclose(matrix.project_back(matrix.project(g, p), p, right=right), g,
                             atol=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 4}, r"rank=4 is larger than the 3x5 matrix"),
    ({"rank": 0}, "rank"),
    ({"rank": 2, "side": "left"}, "side"),
    ({"rank": 2, "method": "qr"}, "method"),
    ({"rank": 2, "method": "randomized"}, "key"),
])
def test_projector_rejects_bad_options_by_name(kwargs, match):
  with pytest.raises(ValueError, match=match):
    matrix.top_r_projector(jnp.ones((3, 5)), **kwargs)


# ---------------------------------------------------------------------------------------------
# The coupled Newton-Schulz inverse square root and the fallback optimizer.


def test_polar_express_table_is_the_official_one_with_the_safety_factor():
  table = matrix.polar_express_coefficients(10)
  a, b, c = matrix.POLAR_EXPRESS_COEFFICIENTS[0]
  np.testing.assert_allclose(table[0], (a / 1.01, b / 1.01**3, c / 1.01**5))
  assert table[7:] == ((1.875, -1.25, 0.375),) * 3  # the converged triple repeats, unscaled
  assert len(matrix.polar_express_coefficients(3)) == 3


def test_inverse_sqrt_matches_the_eigendecomposition_within_the_iterations_range():
  """Exact to float32 rounding when every eigenvalue is above ~1e-6 of the norm (10 steps)."""
  a = np.random.default_rng(6).normal(size=(2, 6, 6)).astype(np.float32)
  spd = a @ np.swapaxes(a, -1, -2) + 1e-3 * np.eye(6, dtype=np.float32)  # a batch of two
  values, vectors = np.linalg.eigh(spd.astype(np.float64))
  assert values.min() / np.linalg.norm(spd[0]) > 1e-6
  expected = vectors @ (values[..., None] ** -0.5 * np.swapaxes(vectors, -1, -2))
  got = matrix.inverse_sqrt_newton_schulz(jnp.asarray(spd))
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
  # Fewer steps leave small eigenvalues under-inverted: x_K < 1 on them, so the root is smaller.
  five = np.asarray(matrix.inverse_sqrt_newton_schulz(jnp.asarray(spd), steps=5))
  assert np.abs(five - expected).max() > 1e-2 * np.abs(expected).max()


def test_inverse_sqrt_of_an_exactly_singular_input_grows_its_null_space_by_prod_a():
  batch = jnp.asarray([np.diag([4.0, 0.0, 0.0]), np.zeros((3, 3))], jnp.bfloat16)  # eps = 0
  roots = np.asarray(matrix.inverse_sqrt_newton_schulz(batch), np.float32)
  assert np.all(np.isfinite(roots))
  growth = np.prod([a for a, _, _ in matrix.polar_express_coefficients(10)])
  np.testing.assert_allclose(roots[1], growth * np.eye(3), rtol=1e-2)  # zero: normalized by 1
  np.testing.assert_allclose(np.diag(roots[0]), [0.5, growth / 2.0, growth / 2.0], rtol=1e-2)
  with pytest.raises(ValueError, match="square"):
    matrix.inverse_sqrt_newton_schulz(jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="steps"):
    matrix.inverse_sqrt_newton_schulz(jnp.eye(2), steps=0)


def test_fallback_optimizer_takes_a_transformation_or_a_function_of_the_learning_rate():
  grads = jnp.ones(2)
  first_step = lambda tx: tx.update(grads, tx.init(grads))[0]
  np.testing.assert_allclose(first_step(matrix.fallback_optimizer(optax.sgd, 0.5, optax.adam)),
                             -0.5)  # follows the alias's learning rate
  np.testing.assert_allclose(
      first_step(matrix.fallback_optimizer(optax.sgd(0.1), 0.5, optax.adam)), -0.1)  # its own
  np.testing.assert_allclose(first_step(matrix.fallback_optimizer(None, 0.5, optax.sgd)), -0.5)
  with pytest.raises(ValueError, match="fallback"):
    matrix.fallback_optimizer("adam", 0.5, optax.sgd)


def test_replicated_and_sharded_like_are_no_ops_without_a_mesh():
  """Under an explicit mesh they reshard (tests/scale runs every matrix rule there)."""
  x = jnp.ones((2, 3))
  assert matrix.replicated(x) is x
  assert matrix.sharded_like(x, jnp.zeros((2, 3))) is x
