"""ASGO and DASGO against a NumPy transcription of the official code (infinity-stars/ASGO d3ef14b).

The transcription works in PyTorch's ``(out, in)`` layout, as the official code does, on the
transposed flax kernels: that also checks which side the preconditioner is put on.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

from jaxlearn.optim import asgo, dasgo, scale_by_asgo
from jaxlearn._compile import fast_jit

STEPS = 4

# optimizers/utils/matrix_decom.py, _matrix_inverse_root_PolarExpress: the coefficient table.
_POLAR_EXPRESS = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]


def _official_inverse_root(g, eps, steps):
  """matrix_decom._matrix_inverse_root_PolarExpress, in float64."""
  coeffs = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS[:-1]]
  coeffs += [_POLAR_EXPRESS[-1]]
  identity = np.eye(g.shape[-1])
  normalize = np.linalg.norm(g + eps * identity) * 1.01
  y, z = g / normalize, identity
  for a, b, c in coeffs[:steps] + [coeffs[-1]] * (steps - len(coeffs)):
    zy = z @ y
    b_ = b * zy + c * zy @ zy
    y = a * y + y @ b_
    z = a * z + b_ @ z
  return z / np.sqrt(normalize)


def _exact_inverse_root(v, eps, steps, rcond=0.0):
  """V^-1/2 by eigendecomposition; eigenvalues at or below rcond times the largest count as 0."""
  values, vectors = np.linalg.eigh(v)
  kept = values > rcond * values.max()
  return vectors @ np.diag(np.where(kept, np.where(kept, values, 1.0) ** -0.5, 0.0)) @ vectors.T


def _pseudo_inverse_root(v, eps, steps):
  """inverse_root="eigh": jaxlearn.optim.matrix.inverse_pth_root's relative cut-off 1e-6 (the
  square leaf's first V has an eigenvalue 5e-7 times its largest: it is dropped)."""
  return _exact_inverse_root(v, eps, steps, rcond=1e-6)


def _official_asgo(w, grads, lr, momentum=0.9, wd=0.1, beta2=0.8, eps=1e-10, steps=10,
                   root=_official_inverse_root):
  """optimizers/asgo.py `asgo.step` on one (out, in) weight, in float64."""
  rows, cols = w.shape
  dim = rows if rows < cols else cols
  buf, precond = np.zeros_like(w), np.zeros((dim, dim))
  for g in grads:
    buf = buf + (1 - momentum) * (g - buf)  # lerp_
    gram = g @ g.T if rows < cols else g.T @ g
    precond = precond + (1 - beta2) * (gram - precond)
    inverse = root(precond, eps, steps)
    if not np.all(np.isfinite(inverse)):
      inverse = np.eye(dim)
    update = inverse @ buf if rows < cols else buf @ inverse
    update = update * (0.2 * np.sqrt(rows * cols)) / np.linalg.norm(update)
    if wd > 0:
      w = w * (1 - lr * wd)
    w = w - lr * update
  return w, precond


def _official_dasgo(w, grads, lr, momentum=0.9, wd=0.1, beta2=0.95, eps=1e-8):
  """optimizers/dasgo.py `dasgo.step` on one (out, in) weight, in float64."""
  buf, precond = np.zeros_like(w), np.zeros(w.shape[1])
  for g in grads:
    buf = buf + (1 - momentum) * (g - buf)
    precond = precond + (1 - beta2) * (np.sum(g * g, axis=0) - precond)
    update = buf * (precond + eps) ** -0.5
    update = update * (0.2 * np.sqrt(w.size)) / np.linalg.norm(update)
    if wd > 0:
      w = w * (1 - wd * lr)
    w = w - lr * update
  return w, precond



def _trajectory(opt, params, grads):
  """Final params and state, and every update, of `opt` on the gradients: one program."""

  def step(carry, g):
    params, state = carry
    updates, state = opt.update(g, state, params)
    return (optax.apply_updates(params, updates), state), updates

  def run(params, grads):
    return jax.lax.scan(step, (params, opt.init(params)), grads)

  (params, state), updates = fast_jit(run)(params, grads)
  return params, state, updates


# Flax layouts: tall (V on the fan-out side), wide and square (V on the fan-in side), a conv
# kernel (one 8 x 3 matrix) and scan-stacked layers (two 5 x 3 matrices); and a bias.
SHAPES = {"tall": (6, 4), "wide": (3, 5), "square": (4, 4), "conv": (2, 2, 2, 3),
          "scan": (2, 5, 3), "bias": (3,)}
SIDE = {"tall": 4, "wide": 3, "square": 4, "conv": 3, "scan": 3}


def _problem(seed=2):
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  grads = {k: rng.normal(size=(STEPS,) + s) for k, s in SHAPES.items()}
  # Every first V well conditioned: an eigenvalue near the iteration's limit (1e-6 of the norm)
  # would compare float32 rounding, not the transcription (seed 1 has one at 5e-7).
  for name in SIDE:
    for g in _torch_matrices(name, grads[name][0]):
      singular = np.linalg.svd(g, compute_uv=False)
      assert (singular.min() / singular.max()) ** 2 > 1e-4, (seed, name)
  # A zero gradient first, then rank-one ones: not compared with the official code (NaN there).
  outer = np.einsum("ti,j->tij", rng.normal(size=(STEPS, 5)), rng.normal(size=3))
  params["rank_one"] = np.zeros((5, 3))
  grads["rank_one"] = outer * (np.arange(STEPS) > 0)[:, None, None]
  as32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  return params, grads, as32(params), as32(grads)


def _torch_matrices(name, x):
  """The (out, in) matrices the official code would see for leaf `name` (a (..., shape) array)."""
  if name == "conv":
    return [x.reshape(-1, 3).T]
  if name == "scan":
    return [m.T for m in x]
  return [x.T]


def _official(name, params, grads, official):
  """The official rule run on every matrix of the leaf, back in the leaf's layout."""
  finals = []
  for i, w in enumerate(_torch_matrices(name, params[name])):
    steps = [_torch_matrices(name, g)[i] for g in grads[name]]
    finals.append(official(w, steps)[0].T)
  return np.stack(finals).reshape(params[name].shape), [
      official(w, [_torch_matrices(name, g)[i] for g in grads[name]])[1]
      for i, w in enumerate(_torch_matrices(name, params[name]))]


def _matrix_state(state):
  return state.inner_states["matrix"].inner_state[0]


def _check_special_leaf(updates, spurious):
  """Zero, then rank-one gradients (one right factor, so the momentum stays rank one)."""
  u = np.asarray(updates["rank_one"])
  assert np.all(u[0] == 0.0)  # zero gradient, zero momentum: zero update, not 0/0
  assert np.all(np.isfinite(u))
  for step in u[1:]:
    singular = np.linalg.svd(step, compute_uv=False)
    assert singular[1] <= spurious * singular[0], singular


@pytest.mark.parametrize("inverse_root", ["polar_express", "eigh"])
def test_asgo_matches_the_official_code_on_the_smaller_side(inverse_root):
  np_params, np_grads, params, grads = _problem()
  final, state, updates = _trajectory(asgo(0.05, inverse_root=inverse_root), params, grads)
  root = _official_inverse_root if inverse_root == "polar_express" else _pseudo_inverse_root
  official = lambda w, g: _official_asgo(w, g, 0.05, root=root)
  v = _matrix_state(state).preconditioner
  for name, side in SIDE.items():
    expected, preconditioners = _official(name, np_params, np_grads, official)
    np.testing.assert_allclose(final[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
    assert v[name].shape == (len(preconditioners), side, side), name
    np.testing.assert_allclose(v[name], np.stack(preconditioners), rtol=1e-5, atol=1e-5)
  # The iteration multiplies V's null space by prod(a_k) ~ 2e4 (the momentum's part there is
  # rounding): the rank-one update gains a small second direction; the eigh root drops it.
  _check_special_leaf(updates, 1e-2 if inverse_root == "polar_express" else 1e-6)
  # The bias goes to the official Adam (betas 0.9, 0.95, eps 1e-8), without weight decay.
  adam = optax.adam(0.05, b1=0.9, b2=0.95, eps=1e-8)
  bias, adam_state = params["bias"], adam.init(params["bias"])
  for g in grads["bias"]:
    step, adam_state = adam.update(g, adam_state)
    bias = bias + step
  np.testing.assert_allclose(final["bias"], bias, rtol=1e-6)


def test_polar_express_error_is_bounded_by_the_exact_root():
  """Official iteration vs the exact eigh root on the same run: the iteration's error is small."""
  np_params, np_grads, _, _ = _problem()
  for name in SIDE:
    iterated, _ = _official(name, np_params, np_grads, lambda w, g: _official_asgo(w, g, 0.05))
    exact, _ = _official(name, np_params, np_grads, lambda w, g: _official_asgo(
        w, g, 0.05, root=_exact_inverse_root))
    np.testing.assert_allclose(iterated, exact, rtol=1e-6, atol=1e-6, err_msg=name)


def test_sum_accumulation_is_the_papers_adagrad_statistic():
  np_params, np_grads, params, grads = _problem(seed=3)
  pick = lambda tree: {name: tree[name] for name in ("tall", "wide")}
  _, state, _ = _trajectory(scale_by_asgo(accumulate="sum"), pick(params), pick(grads))
  v = state.preconditioner
  expected = sum(g.T @ g for g in np_grads["tall"])  # m > n: V = sum G^T G, n x n
  np.testing.assert_allclose(v["tall"][0], expected, rtol=1e-5)
  expected = sum(g @ g.T for g in np_grads["wide"])
  np.testing.assert_allclose(v["wide"][0], expected, rtol=1e-5)


def test_dasgo_matches_the_official_code_on_the_fan_in_axis():
  np_params, np_grads, params, grads = _problem(seed=5)
  final, state, updates = _trajectory(dasgo(0.05), params, grads)
  official = lambda w, g: _official_dasgo(w, g, 0.05)
  v = _matrix_state(state).preconditioner
  for name in SIDE:
    expected, preconditioners = _official(name, np_params, np_grads, official)
    np.testing.assert_allclose(final[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(v[name], np.stack(preconditioners), rtol=1e-5)  # (batch, fan_in)
  _check_special_leaf(updates, 1e-6)


def test_a_fallback_and_none_specs_route_leaves():
  params = {"k": jnp.ones((4, 3)), "b": jnp.full(3, 2.0)}
  grads = {"k": jnp.full((2, 4, 3), 0.5), "b": jnp.full((2, 3), -1.0)}
  # A fallback given as a function of the learning rate follows it; None sends a matrix there.
  final, _, _ = _trajectory(asgo(0.01, dimension_numbers={"k": None, "b": None},
                                 fallback=optax.sgd), params, grads)
  np.testing.assert_allclose(final["k"], 1.0 - 0.01, rtol=1e-6)
  np.testing.assert_allclose(final["b"], 2.0 + 0.02, rtol=1e-6)


@pytest.mark.parametrize("factory, kwargs, name", [
    (asgo, {"ns_steps": 0}, "ns_steps"),
    (asgo, {"ns_steps": 2.5}, "ns_steps"),
    (asgo, {"accumulate": "mean"}, "accumulate"),
    (asgo, {"inverse_root": "svd"}, "inverse_root"),
    (asgo, {"momentum": 1.0}, "momentum"),
    (asgo, {"fallback": "adam"}, "fallback"),
    (dasgo, {"beta2": 1.0}, "beta2"),
    (dasgo, {"momentum": -0.1}, "momentum"),
    (dasgo, {"eps": float("nan")}, "eps"),
    (dasgo, {"accumulate": "mean"}, "accumulate"),
])
def test_bad_options_raise_with_their_name(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(0.01, **kwargs)


def test_a_vector_given_a_matrix_view_or_a_bare_vector_is_rejected():
  params = {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match="dimension_numbers"):
    asgo(dimension_numbers=MuonDimensionNumbers(0, 1)).init(params)
  with pytest.raises(ValueError, match=r"scale_by_asgo: leaf \['b'\].*no matrix view"):
    scale_by_asgo().init(params)
