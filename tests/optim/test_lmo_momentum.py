"""The non-Euclidean trust-region method with momentum against optax's Muon and Signum, a NumPy
transcription (l2) and pytorch-optimizer's `SCION` (the constrained variant).

The references start their momentum at zero (m_1 = alpha g_1); here m_1 = g_1, as the paper's
analysis assumes. The first direction is the same (every d is scale-free); to compare the later
ones, `_zero_started` runs jaxlearn's first step and then sets its momentum to alpha g_1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

from jaxlearn.optim import lmo_momentum, scale_by_lmo_momentum
from jaxlearn._compile import fast_jit

_jit = fast_jit  # these tiny programs are nearly all compile time


ALPHA = 0.1
SHAPES = {"tall": (6, 4), "wide": (3, 5)}


def _gradients(steps=4, seed=0, shapes=SHAPES):
  rng = np.random.default_rng(seed)
  return [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
          for _ in range(steps)]


def _params(seed=1, shapes=SHAPES):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _momentum_state(state):
  """The `ScaleByLMOMomentumState` inside an alias's chain state (or the state itself)."""
  return state if hasattr(state, "momentum") else state[0]


def _zero_started(opt, params, grads, zero_start=True):
  """Updates (and params) of `opt` for each gradient; with `zero_start`, after the first step
  the momentum is alpha g_1, as a momentum started at zero would hold."""
  state, step = opt.init(params), _jit(opt.update)
  updates = []
  for t, g in enumerate(grads):
    u, state = step(g, state, params)
    if t == 0 and zero_start:
      inner = _momentum_state(state)._replace(momentum=jax.tree.map(lambda x: ALPHA * x, g))
      state = inner if hasattr(state, "momentum") else (inner, *state[1:])
    params = optax.apply_updates(params, u)
    updates.append(u)
  return updates, params


def test_spectral_is_optax_muon_without_nesterov():
  """optax's momentum is bias-corrected; Newton-Schulz normalizes first, so only the zero start
  differs (its eps: 1e-8 on the norm, here 1e-7)."""
  params, grads = _params(), _gradients()
  specs = {k: MuonDimensionNumbers(0, 1) for k in SHAPES}
  reference = optax.contrib.scale_by_muon(beta=1 - ALPHA, nesterov=False,
                                          weight_dimension_numbers=specs)
  expected, _ = _zero_started(reference, params, grads, zero_start=False)
  ours = scale_by_lmo_momentum(ALPHA)
  got, _ = _zero_started(ours, params, grads)
  for e, g in zip(expected, got):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g, e)
  own, _ = _zero_started(ours, params, grads, zero_start=False)
  np.testing.assert_allclose(own[0]["tall"], expected[0]["tall"], rtol=1e-4, atol=1e-5)
  assert not np.allclose(own[1]["tall"], expected[1]["tall"], atol=1e-3)  # m_1 = g_1


def test_linf_is_signum():
  params, grads = _params(), _gradients(seed=2)
  expected, _ = _zero_started(optax.signum(0.1, beta=1 - ALPHA), params, grads, zero_start=False)
  got, _ = _zero_started(lmo_momentum(0.1, ALPHA, norm="linf"), params, grads)
  for e, g in zip(expected, got):
    jax.tree.map(np.testing.assert_array_equal, g, e)


def _l2_numpy(params, grads, lr, alpha, wd, order):
  """x <- (1 - lr wd) x - lr d(m), the l2 step normalized over the whole tree, m_1 = g_1."""
  x = {k: v.astype(np.float64) for k, v in params.items()}
  unit = lambda tree: {k: v / np.sqrt(sum(np.sum(w * w) for w in tree.values()))
                       for k, v in tree.items()}
  m = None
  for g in grads:
    g = unit(g) if order == "orthogonalize_first" else g
    m = g if m is None else {k: (1 - alpha) * m[k] + alpha * g[k] for k in g}
    d = m if order == "orthogonalize_first" else unit(m)
    x = {k: x[k] - lr * wd * x[k] - lr * d[k] for k in x}
  return x


@pytest.mark.parametrize("order", ["momentum_first", "orthogonalize_first"])
def test_l2_matches_numpy(order):
  shapes = {**SHAPES, "bias": (5,)}
  params, grads = _params(shapes=shapes), _gradients(shapes=shapes, seed=3)
  expected = _l2_numpy(params, grads, 0.1, ALPHA, 0.5, order)
  _, got = _zero_started(lmo_momentum(0.1, ALPHA, 0.5, norm="l2", order=order), params, grads,
                         zero_start=False)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6), got,
               expected)


@pytest.mark.parity
def test_constrained_variant_is_scion_with_its_dimension_factors_undone(monkeypatch):
  """SCION(constraint=True): p <- (1 - lr) p - lr scale lmo(d). Its spectral lmo (normalize=False)
  multiplies by sqrt(d_out) = sqrt(size(0)) and runs Newton-Schulz in bfloat16: here in float64,
  with scale = radius / sqrt(size(0)). Its sign lmo (normalize=False) is sign(d)."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("pytorch_optimizer")
  from pytorch_optimizer.optimizer import scion

  newton_schulz = scion.zero_power_via_newton_schulz_5
  monkeypatch.setattr(scion, "zero_power_via_newton_schulz_5",
                      lambda g, num_steps=5, **kw: newton_schulz(g, num_steps, dtype=torch.float64))
  radius, lr = 2.0, 0.1
  params, grads = _params(), _gradients(seed=4)
  for norm, norm_type in (("spectral", scion.LMONorm.SPECTRAL), ("linf", scion.LMONorm.SIGN)):
    weights = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64))
               for k, v in params.items()}
    factor = lambda w: np.sqrt(w.shape[0]) if norm == "spectral" else 1.0
    groups = [{"params": [w], "norm_type": norm_type, "norm_kwargs": {"normalize": False},
               "scale": radius / factor(w)} for w in weights.values()]
    ref = scion.SCION(groups, lr=lr, momentum=ALPHA, constraint=True)
    for g in grads:
      for k, w in weights.items():
        w.grad = torch.tensor(g[k], dtype=torch.float64)
      ref.step()
    _, got = _zero_started(lmo_momentum(lr, ALPHA, radius=radius, norm=norm), params, grads)
    for k, w in weights.items():
      np.testing.assert_allclose(got[k], w.detach().numpy(), rtol=1e-4, atol=1e-5,
                                 err_msg=f"{norm} {k}")


def test_orthogonal_sgdm_averages_unit_steps():
  """Orthogonal-SGDM's update is an average of orthogonalized gradients: at most unit spectral
  norm, and below it when they disagree; Muon's is orthogonalized (spectral norm near 1)."""
  params, grads = _params(), _gradients(seed=5)
  spectral = lambda u: np.linalg.norm(np.asarray(u["tall"]), ord=2)
  osgdm, _ = _zero_started(scale_by_lmo_momentum(0.5, order="orthogonalize_first"), params,
                           grads, zero_start=False)
  muon, _ = _zero_started(scale_by_lmo_momentum(0.5), params, grads, zero_start=False)
  assert spectral(osgdm[-1]) < 0.9 < spectral(muon[-1]) < 1.3  # Muon's coefficients: ~[0.7, 1.2]


def test_spectral_routes_vectors_and_fallback():
  params = {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3), "conv1d": jnp.ones((2, 3, 4))}
  grads = {"kernel": jnp.eye(4, 3), "bias": jnp.array([3.0, 0.0, -4.0]),
           "conv1d": jnp.ones((2, 3, 4))}
  spec = {"kernel": MuonDimensionNumbers(0, 1), "bias": None,
          "conv1d": MuonDimensionNumbers((0, 1), 2)}  # (W, I, O): one 6 x 4 matrix
  plain = scale_by_lmo_momentum(dimension_numbers=spec)
  u, _ = _jit(plain.update)(grads, plain.init(params))
  np.testing.assert_allclose(u["bias"], [0.6, 0.0, -0.8], rtol=1e-6)  # the vector's l2 step
  # A rank-one 6 x 4 matrix: its orthogonalized direction is the unit-spectral-norm rank one.
  assert np.linalg.matrix_rank(np.asarray(u["conv1d"]).reshape(6, 4), tol=1e-3) == 1
  with_fallback = lmo_momentum(0.1, fallback=optax.sgd(1.0), dimension_numbers=spec)
  u, _ = _jit(with_fallback.update)(grads, with_fallback.init(params), params)
  np.testing.assert_allclose(u["bias"], -grads["bias"])


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l2", "fallback": optax.sgd(0.1)}, "fallback"),
    ({"radius": 1.0, "weight_decay": 0.1}, "radius and weight_decay"),
    ({"radius": 1.0, "learning_rate": 2.0}, "learning_rate"),
    ({"norm": "linf", "dimension_numbers": MuonDimensionNumbers(0, 1)}, "dimension_numbers"),
])
def test_options_that_do_not_combine_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lmo_momentum(**kwargs)
