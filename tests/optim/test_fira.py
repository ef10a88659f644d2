"""Fira against a NumPy transcription of the official code, pytorch-optimizer's `Fira` and optax's
GaLore (its special case without the residual)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers

from jaxlearn.optim import fira
from jaxlearn._compile import fast_jit

_jit = fast_jit  # these tiny programs are nearly all compile time


def run_optimizer(optimizer, params, grads):
  """Applies `optimizer` for each gradient in `grads`; returns (params, state)."""
  state, step = optimizer.init(params), _jit(optimizer.update)
  for g in grads:
    updates, state = step(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


SHAPES = {"tall": (6, 4), "wide": (3, 5), "bias": (5,)}
MATRICES = ("tall", "wide")


def _start():
  rng = np.random.default_rng(0)
  return {name: rng.normal(size=shape) for name, shape in SHAPES.items()}


def _gradients(steps, seed=1, spike_at=None):
  rng = np.random.default_rng(seed)
  # A fixed rank-2 signal plus noise per matrix: the projector catches most but not all of it.
  signals = {k: rng.normal(size=(SHAPES[k][0], 2)) @ rng.normal(size=(2, SHAPES[k][1]))
             for k in MATRICES}
  grads = []
  for t in range(steps):
    g = {k: signals[k] + 0.3 * rng.normal(size=SHAPES[k]) for k in MATRICES}
    g["bias"] = rng.normal(size=SHAPES["bias"])
    grads.append(jax.tree.map(lambda x: 100.0 * x, g) if t == spike_at else g)
  return grads


def _canonical(rows):
  """Each row times the sign of its largest-magnitude entry (jaxlearn's sign convention)."""
  largest = np.take_along_axis(rows, np.argmax(np.abs(rows), axis=-1)[..., None], axis=-1)
  return rows * np.where(largest < 0, -1.0, 1.0)


class _OfficialMatrix:
  """gradient_projection.py (`GradientProjector`, ``proj_type="std"``) and the matrix branch of
  fira_adamw.py (`AdamW.step`), transcribed to NumPy for one weight.

  One addition: the singular vectors get `_canonical` signs, as in jaxlearn. Their signs are
  arbitrary (NumPy's and JAX's SVDs differ), and as the moments are not rotated at a refresh,
  the trajectory after the second refresh depends on them.
  """

  def __init__(self, rank, gap, alpha):
    self.rank, self.gap, self.alpha = rank, gap, alpha
    self.ortho = self.stored = None
    self.norms = []  # per step: (residual norm before the limiter, after it)

  def back(self, x):
    right = x.shape[0] >= x.shape[1]
    return (x @ self.ortho if right else self.ortho @ x) * self.alpha

  def project(self, g, step):
    right = g.shape[0] >= g.shape[1]
    if self.ortho is None or step % self.gap == 0:
      u, _, vh = np.linalg.svd(g, full_matrices=False)
      self.ortho = _canonical(vh[:self.rank]) if right else _canonical(u[:, :self.rank].T).T
    return g @ self.ortho.T if right else self.ortho.T @ g

  def direction(self, g, low, n):
    norm_dim = 0 if n.shape[0] < n.shape[1] else 1
    phi = np.linalg.norm(n, axis=norm_dim) / (np.linalg.norm(low, axis=norm_dim) + 1e-8)
    phi = phi[:, None] if norm_dim == 1 else phi
    s = (g - self.back(low)) * phi
    raw = np.linalg.norm(s)
    if self.stored is None:
      self.stored = raw
    else:
      limiter = max(raw / (self.stored + 1e-8), 1.01) / 1.01
      s, self.stored = s / limiter, raw / limiter
    self.norms.append((raw, self.stored))
    return self.back(n) + s


def _official_numpy(params, grads, lr, b1, b2, eps, wd, rank, gap, alpha, decay_after=True):
  """fira_adamw.py's `AdamW.step` in NumPy: the matrices projected, the bias plain AdamW."""
  params = {k: v.copy() for k, v in params.items()}
  projectors = {k: _OfficialMatrix(rank, gap, alpha) for k in MATRICES}
  moments = {k: (0.0, 0.0) for k in params}
  for step, g in enumerate(grads):  # `step` is state["step"] before the increment
    t = step + 1
    step_size = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    for name, grad in g.items():
      low = projectors[name].project(grad, step) if name in MATRICES else grad
      m, v = moments[name]
      m, v = b1 * m + (1 - b1) * low, b2 * v + (1 - b2) * low * low
      moments[name] = (m, v)
      n = m / (np.sqrt(v) + eps)
      direction = projectors[name].direction(grad, low, n) if name in MATRICES else n
      p = params[name]
      if not decay_after:
        p = p - lr * wd * p
      p = p - step_size * direction
      if decay_after:
        p = p - lr * wd * p
      params[name] = p
  return params, {k: np.array(projectors[k].norms) for k in MATRICES}


def _as32(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def _close(actual, expected, rtol=2e-4, atol=2e-5):
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), actual,
               expected)


# One run shared by the tests below: 7 steps, gap 3 (refreshes at updates 1, 4 and 7), a
# gradient 100 times larger at update 5, alpha 0.25, decay 0.5.
HP = dict(lr=0.1, b1=0.9, b2=0.999, eps=1e-6, wd=0.5, rank=2, gap=3, alpha=0.25)
STEPS, SPIKE = 7, 4


@functools.cache
def _shared_run():
  """jaxlearn's params after every step and its residual norms, on the shared problem."""
  opt = fira(HP["lr"], HP["b1"], HP["b2"], HP["eps"], HP["alpha"], HP["wd"], rank=HP["rank"],
             update_proj_gap=HP["gap"])
  params = _as32(_start())
  state, step = opt.init(params), _jit(opt.update)
  trajectory, norms = [], []
  for g in _gradients(STEPS, spike_at=SPIKE):
    updates, state = step(_as32(g), state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
    norms.append([float(state[0].residual_norm[k][0]) for k in MATRICES])
  return trajectory, dict(zip(MATRICES, np.array(norms).T))


def test_matches_the_official_code_across_projector_refreshes():
  grads = _gradients(STEPS, spike_at=SPIKE)
  expected, _ = _official_numpy(_start(), grads, **HP)
  got = _shared_run()[0][-1]
  _close(got, expected)
  # The decay acts on the updated weights: decaying the old ones (optax's order) differs.
  before, _ = _official_numpy(_start(), grads, **HP, decay_after=False)
  assert not np.allclose(got["tall"], before["tall"], rtol=1e-3, atol=1e-4)


def test_norm_growth_limiter_caps_a_gradient_spike():
  """The residual's norm may grow by 1.01 per step, no more, also at the spike. (phi divides by
  the projected gradient's row norms, so here the spike does not raise the raw residual: the
  limiter acts on its growth over the first updates.)"""
  _, norms = _official_numpy(_start(), _gradients(STEPS, spike_at=SPIKE), **HP)
  ours = _shared_run()[1]
  for k in MATRICES:
    raw, limited = norms[k].T
    assert np.sum(raw[1:] > 1.01 * limited[:-1] + 1e-6) >= 2  # the limiter acts
    assert np.all(limited[1:] <= 1.01 * (limited[:-1] + 1e-8) + 1e-12)  # 1e-8: official guard
    np.testing.assert_allclose(ours[k], limited, rtol=2e-4)


@pytest.mark.parity
def test_matches_pytorch_optimizer_with_its_refresh_shifted(monkeypatch):
  """pytorch-optimizer 4.1.0 passes the incremented step to the projector, so it refreshes at
  updates 1, T, 2T, ... where the official code (and jaxlearn) refresh at 1, T + 1, 2T + 1, ...
  Passing it `step - 1` makes the two equal; without the shift they part at update T. Its
  singular vectors get jaxlearn's signs (see `_OfficialMatrix`)."""
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

  grads = _gradients(STEPS, spike_at=SPIKE)

  def reference():
    weights = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in _start().items()}
    projected = {"params": [weights[k] for k in MATRICES], "rank": HP["rank"],
                 "update_proj_gap": HP["gap"], "scale": HP["alpha"], "projection_type": "std"}
    ref = pytorch_optimizer.Fira([projected, {"params": [weights["bias"]]}], lr=HP["lr"],
                                 betas=(HP["b1"], HP["b2"]), eps=HP["eps"],
                                 weight_decay=HP["wd"])
    for g in grads:
      for k, w in weights.items():
        w.grad = torch.tensor(g[k])
      ref.step()
    return {k: w.detach().numpy() for k, w in weights.items()}

  orthogonal = GaLoreProjector.get_orthogonal_matrix

  def canonical(self, weights, projection_type, **kw):  # jaxlearn's signs (see _OfficialMatrix)
    ortho = orthogonal(self, weights, projection_type, **kw)
    rows = ortho if projection_type == "right" else ortho.T
    rows = torch.tensor(_canonical(rows.numpy()))
    return rows if projection_type == "right" else rows.T

  monkeypatch.setattr(GaLoreProjector, "get_orthogonal_matrix", canonical)
  unshifted = reference()
  project = GaLoreProjector.project
  monkeypatch.setattr(GaLoreProjector, "project",
                      lambda self, grad, num_steps, **kw: project(self, grad, num_steps - 1, **kw))
  got = _shared_run()[0][-1]
  _close(got, reference())
  assert not np.allclose(got["tall"], unshifted["tall"], rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(got["bias"], unshifted["bias"], rtol=2e-4)  # the bias is AdamW


def test_galore_special_case_is_optax_galore_on_the_other_side():
  """Without the residual, Fira is GaLore. optax projects the larger side: it equals
  side="reverse_std" and keeps other moments than GaLore's and Fira's "std" (eps = 0: optax adds
  eps after the bias correction, the official code before). One projection (gap > steps): optax
  keeps the SVD's own signs, which matter from the second refresh on."""
  params, grads = _as32(_start()), [_as32(g) for g in _gradients(4, seed=4)]
  galore = lambda **kw: fira(0.05, eps=0.0, rank=2, update_proj_gap=10, residual=False, **kw)
  reference = optax.contrib.galore(0.05, rank=2, update_proj_gap=10,
                                   base_optimizer=optax.scale_by_adam(eps=0.0))
  expected, optax_state = run_optimizer(reference, params, grads)
  reverse, _ = run_optimizer(galore(side="reverse_std"), params, grads)
  _close(reverse, expected, rtol=1e-5, atol=1e-6)
  std = jax.eval_shape(galore().init, params)[0].mu
  optax_mu = optax_state[0].base_optimizer_state.mu
  for k in MATRICES:  # tall 6 x 4: optax keeps 2 x 4 coordinates, "std" 6 x 2 (wide: 3 x 2, 2 x 5)
    assert optax_mu[k].shape != std[k].shape[1:], k


def test_optimizer_state_is_low_rank():
  params = {"kernel": jax.ShapeDtypeStruct((256, 128), jnp.float32),
            "bias": jax.ShapeDtypeStruct((128,), jnp.float32)}
  size = lambda opt: sum(x.size for x in jax.tree.leaves(jax.eval_shape(opt.init, params)))
  # Moments 256 x 8 twice, projector 8 x 128, one residual norm; the bias gets Adam's moments.
  low_rank = 2 * 256 * 8 + 8 * 128 + 1 + 2 * 128
  assert size(fira(rank=8)) == low_rank + 4  # + two step counts, two scalar placeholders
  assert size(optax.adamw(1e-3)) > 10 * low_rank
  # The default rank is min(8, m, n): a 5 x 3 kernel keeps all 3 directions.
  small = jax.eval_shape(fira().init, {"kernel": jax.ShapeDtypeStruct((5, 3), jnp.float32)})
  assert small[0].mu["kernel"].shape == (1, 5, 3)


def test_fallback_and_dimension_numbers():
  params = {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3), "conv1d": jnp.ones((2, 3, 4))}
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  spec = {"kernel": MuonDimensionNumbers(0, 1), "bias": None,
          "conv1d": MuonDimensionNumbers((0, 1), 2)}  # (W, I, O): one 6 x 4 matrix
  opt = fira(0.1, rank=2, fallback=optax.sgd(1.0), dimension_numbers=spec)
  updates, state = _jit(opt.update)(grads, opt.init(params), params)
  np.testing.assert_allclose(updates["bias"], -0.5)  # plain SGD on the non-matrix leaf
  assert state.inner_states["matrix"].inner_state[0].mu["conv1d"].shape == (1, 6, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 4}, "rank=4 is larger"),
    ({"dimension_numbers": MuonDimensionNumbers(0, 1)}, "dimension_numbers"),
])
def test_matrix_arguments_that_do_not_fit_raise_at_init(kwargs, match):
  params = {"kernel": jnp.ones((5, 3)), "bias": jnp.ones(3)}
  with pytest.raises(ValueError, match=match):
    fira(**kwargs).init(params)
