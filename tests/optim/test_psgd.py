"""PSGD (XMat, LRA) against psgd-torch 0.6.1 step by step, and the fixed points of its two fits:
the Newton fit gives P H -> I, the whitening fit P -> (E g g^T)^(-1/2)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.optim import apply_psgd_preconditioner, extra_update_args, psgd, scale_by_psgd

psgd_module = importlib.import_module("jaxlearn.optim.psgd")

SHAPES = {"a": (3, 4), "b": (5,)}  # n = 17: odd, so XMat's middle entry is exercised
_jit = fast_jit  # these tiny programs are nearly all compile time


def _loss(params, lib=jnp):
  """A non-quadratic loss of two leaves whose Hessian couples them and changes every step."""
  rng = np.random.default_rng(0)
  m = rng.normal(size=(12, 12))
  a_mat = (m @ m.T / 12 + 0.1 * np.eye(12)).astype(np.float32)
  b_diag = np.linspace(0.5, 3.0, 5).astype(np.float32)
  c = (0.1 * rng.normal(size=(12, 5))).astype(np.float32)
  a, b = params["a"].reshape(-1), params["b"].reshape(-1)
  asarray = lib.as_tensor if hasattr(lib, "as_tensor") else lib.asarray
  return (0.5 * a @ (asarray(a_mat) @ a) + 0.5 * (asarray(b_diag) * b * b).sum()
          + 0.3 * (a @ asarray(c) @ b) ** 2 + 0.01 * (a**4).sum())


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(tree[k], np.float64)) for k in SHAPES])


# ---------------------------------------------------------------------------------------------
# Parity with psgd-torch 0.6.1.

# (preconditioner, form, step normalizer, momentum): every fit formula, both forms, momentum.
PARITY = (
    ("xmat", "newton", "2nd", 0.0),
    ("xmat", "whitening", "1st", 0.9),
    ("lra", "newton", "2nd", 0.0),
    ("lra", "whitening", "1st", 0.9),
)
FACTORS = {"xmat": {"a": "_a", "b": "_b"}, "lra": {"U": "_U", "V": "_V", "d": "_d"}}


@pytest.mark.parity
def test_matches_psgd_torch_step_by_step(monkeypatch):
  """Six steps of each PARITY configuration, with psgd-torch's torch.randn_like and torch.rand
  returning our probes and coins; the four run as one compiled program."""
  torch = pytest.importorskip("torch")
  psgd_torch = pytest.importorskip("psgd_torch")
  rng = np.random.default_rng(1)
  x0 = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
  lr, seed = 0.1, 1  # seed 1: LRA's coins step U and V and balance them (asserted below)
  opts = [psgd(lr, momentum, preconditioner=structure, preconditioner_type=kind, rank=2,
               step_normalizer=normalizer, seed=seed)
          for structure, kind, normalizer, momentum in PARITY]

  def coins(states):
    return [psgd_module._draws(state[0].key)[2] for state in states]

  def init(params):
    states = [opt.init(params) for opt in opts]
    return states, coins(states)

  def step(params, states, probe):
    new = []
    for opt, p, state in zip(opts, params, states):
      extras = extra_update_args(["Hvp"], _loss, p)
      updates, state = opt.update(jax.grad(_loss)(p), state, p, vector=probe, **extras)
      new.append((optax.apply_updates(p, updates), state))
    params, states = zip(*new)
    return list(params), list(states), coins(states)

  step = _jit(step)
  params = jax.tree.map(jnp.asarray, x0)
  states, draws = _jit(init)(params)
  params = [params] * len(PARITY)
  refs, tensors = [], []
  for (structure, kind, normalizer, momentum), state in zip(PARITY, states):
    leaves = [torch.tensor(x0[k], requires_grad=True) for k in SHAPES]
    reference = {"xmat": psgd_torch.XMat, "lra": psgd_torch.LRA}[structure]
    kwargs = {"rank_of_approximation": 2} if structure == "lra" else {}
    ref = reference(leaves, lr_params=lr, momentum=momentum, step_normalizer=normalizer,
                    preconditioner_type={"newton": "Newton", "whitening": "whitening"}[kind],
                    **kwargs)
    if structure == "lra":  # the same random initial U, V
      ref._U = torch.tensor(np.asarray(state[0].preconditioner["U"]))
      ref._V = torch.tensor(np.asarray(state[0].preconditioner["V"]))
    refs.append(ref)
    tensors.append(leaves)
  sides, balanced = set(), False
  for _ in range(6):
    probe = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    for (structure, kind, _, _), ref, leaves, c in zip(PARITY, refs, tensors, draws):
      uniforms = [float(c.update), float(c.balance), float(c.side)]  # torch's order
      if structure == "lra":
        sides.add(bool(c.side < 0.5))
        balanced |= bool(c.balance < 0.01)
      per_leaf = [torch.tensor(probe[k]) for k in SHAPES]
      flat = torch.tensor(_flat(probe).astype(np.float32))
      flat = flat[:, None] if structure == "lra" else flat  # LRA works on column vectors
      monkeypatch.setattr(torch, "rand", lambda *a, u=uniforms, **k: torch.tensor(u.pop(0)))
      monkeypatch.setattr(torch, "randn_like",
                          lambda x, k=kind, l=per_leaf, f=flat, **kw: l.pop(0) if k == "newton"
                          else f)
      ref.step(lambda leaves=leaves: _loss(dict(zip(SHAPES, leaves)), torch))
      monkeypatch.undo()
    params, states, draws = step(params, states, probe)
    for case, p, leaves in zip(PARITY, params, tensors):
      theirs = np.concatenate([t.detach().numpy().ravel() for t in leaves])
      np.testing.assert_allclose(_flat(p), theirs, rtol=1e-5, atol=1e-5, err_msg=str(case))
  for case, state, ref in zip(PARITY, states, refs):
    for ours, attr in FACTORS[case[0]].items():
      np.testing.assert_allclose(np.asarray(state[0].preconditioner[ours]).reshape(-1),
                                 getattr(ref, attr).numpy().reshape(-1), rtol=2e-4, atol=1e-6,
                                 err_msg=f"{case} {ours}")
  assert sides == {True, False} and balanced


@pytest.mark.parity
def test_psgd_torch_gives_inf_at_a_zero_first_gradient():
  """psgd-torch sets a = (n / sum g^2)^(1/4) = inf at a zero first gradient; we skip that fit
  (test_update_options)."""
  torch = pytest.importorskip("torch")
  psgd_torch = pytest.importorskip("psgd_torch")
  x = torch.zeros(4, requires_grad=True)
  ref = psgd_torch.XMat([x], preconditioner_type="whitening")
  ref.step(lambda: (0.0 * x).sum())
  assert not torch.isfinite(ref._a).all()


# ---------------------------------------------------------------------------------------------
# The fixed points.


def _fitted_matrix(opt, steps, gradients=None, hvp=None, n=20):
  """P (n x n) after `steps` updates on the given gradients (rows) or with an exact Hvp."""

  def run(gradients):
    def body(state, g):
      _, state = opt.update(g, state, Hvp=hvp)
      return state, None

    xs = jnp.zeros((steps, n)) if gradients is None else gradients
    state, _ = jax.lax.scan(body, opt.init(jnp.zeros(n)), xs)
    return jax.vmap(lambda e: apply_psgd_preconditioner(state, e))(jnp.eye(n))

  return np.asarray(_jit(run)(gradients), np.float64)


def test_newton_xmat_fits_the_inverse_hessian():
  """Exact HVP, diagonal quadratic with condition number 100: after 2000 fits the eigenvalues of
  P H are within 10% of 1 on the top 80% of the spectrum (psgd-torch: ~300 fits leave the
  smallest at 0.08 for condition number 1e3)."""
  lam = np.logspace(0, 2, 20).astype(np.float32)
  p = _fitted_matrix(scale_by_psgd(), 2000, hvp=lambda v: jnp.asarray(lam) * v)
  root = np.sqrt(lam)
  eig = np.sort(np.linalg.eigvalsh(root[:, None] * p * root[None, :]))[::-1]  # ~ of P H
  np.testing.assert_allclose(eig[:16], 1.0, atol=0.1)
  assert eig[-1] > 0.5


def test_whitening_fits_the_inverse_square_root_of_the_gradient_covariance():
  """g ~ N(0, C), C = diag(c), c from 1 to 100: P -> C^(-1/2), not C^(-1) (the fixed point a
  Newton fit would have if C were the Hessian): log P_ii against log c_i has slope -1/2."""
  c = np.logspace(0, 2, 20)
  gradients = np.random.default_rng(2).normal(size=(4000, 20)) * np.sqrt(c)
  opt = scale_by_psgd(preconditioner_lr=0.02, preconditioner_type="whitening")
  p = _fitted_matrix(opt, 4000, gradients=jnp.asarray(gradients, jnp.float32))
  slope, intercept = np.polyfit(np.log(c), np.log(np.diag(p)), 1)
  assert -0.55 < slope < -0.45, slope
  assert abs(intercept) < 0.1, intercept  # P = C^(-1/2) itself, not a multiple
  np.testing.assert_allclose(np.diag(p) * np.sqrt(c), 1.0, atol=0.25)


@pytest.mark.slow
def test_newton_lra_fits_the_inverse_hessian_in_its_top_directions():
  """H = diagonal + rank 3, condition number <= 100, exact HVP, LRA rank 5, 5000 fits: P H -> I
  on the rank-3 directions (u^T P u lambda within 3%) and within 10% on the top half."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(20, 3))
  h = np.diag(np.logspace(0, 1, 20)) + 3.0 * w @ w.T
  lam, vecs = np.linalg.eigh(h)
  h, lam = h / lam[0], lam / lam[0]
  assert lam[-1] <= 100
  hj = jnp.asarray(h, jnp.float32)
  p = _fitted_matrix(scale_by_psgd(preconditioner="lra", rank=5), 5000, hvp=lambda v: hj @ v)
  quotients = np.array([lam[i] * vecs[:, i] @ p @ vecs[:, i] for i in range(20)])[::-1]
  np.testing.assert_allclose(quotients[:3], 1.0, atol=0.03)
  np.testing.assert_allclose(quotients[:10], 1.0, atol=0.1)


@pytest.mark.slow
def test_newton_xmat_long_run_on_fifty_dimensions():
  lam = np.logspace(0, 2, 50).astype(np.float32)
  p = _fitted_matrix(scale_by_psgd(), 5000, hvp=lambda v: jnp.asarray(lam) * v, n=50)
  root = np.sqrt(lam)
  eig = np.linalg.eigvalsh(root[:, None] * p * root[None, :])
  np.testing.assert_allclose(eig, 1.0, atol=0.1)


# ---------------------------------------------------------------------------------------------
# The update's options.


def test_update_options():
  """One program for the options of `update` (compiling is most of the cost):

  * an Hvp given as a tree with its probe equals the Hvp given as a function;
  * preconditioner_update_probability 0: only the first fit, which sets the scale;
  * a given preconditioner_init_scale: no forced fit, P = scale^2 I; update_preconditioner=True
    overrides the coin;
  * a zero first gradient skips the fit (P = I, zero update); the next gradient sets the scale.
  """
  lam = jnp.array([1.0, 3.0, 10.0])
  newton = scale_by_psgd()
  never = scale_by_psgd(preconditioner_update_probability=0.0, preconditioner_type="whitening")
  scaled = scale_by_psgd(0.0, 0.1, 0.0, 2.0, preconditioner_type="whitening")
  whitening = scale_by_psgd(preconditioner_type="whitening")

  def run(g, v):
    out = {"function": newton.update(g, newton.init(g), Hvp=lambda u: lam * u, vector=v),
           "tree": newton.update(g, newton.init(g), Hvp=lam * v, vector=v)}
    state = never.init(g)
    for _ in range(3):
      _, state = never.update(g, state)
    out["never"] = state.fits
    out["scaled"] = scaled.update(g, scaled.init(g))
    out["forced"] = scaled.update(g, out["scaled"][1], update_preconditioner=True)[1].fits
    out["zero"] = whitening.update(jnp.zeros_like(g), whitening.init(g))
    out["after_zero"] = whitening.update(g, out["zero"][1])
    return out

  g, v = jnp.array([1.0, -1.0, 0.5]), jnp.array([0.3, -1.2, 0.7])
  out = _jit(run)(g, v)
  jax.tree.map(np.testing.assert_array_equal, out["function"], out["tree"])
  assert int(out["never"]) == 1
  updates, state = out["scaled"]
  assert int(state.fits) == 0 and int(out["forced"]) == 1
  np.testing.assert_allclose(updates, 4.0 * g)
  updates, state = out["zero"]
  assert int(state.fits) == 0 and np.all(np.asarray(updates) == 0.0)
  np.testing.assert_array_equal(state.preconditioner["a"], 1.0)
  updates, state = out["after_zero"]
  assert int(state.fits) == 1 and np.all(np.isfinite(updates))
  with pytest.raises(ValueError, match="vector"):
    jax.eval_shape(lambda: newton.update(g, newton.init(g), Hvp=lam * v))
  with pytest.raises(ValueError, match="Hvp"):
    jax.eval_shape(lambda: newton.update(g, newton.init(g)))


@pytest.mark.parametrize("argument, value", [("preconditioner", "kron"), ("rank", -1),
                                             ("rank", 2.0), ("preconditioner_type", "fisher"),
                                             ("step_normalizer", "3rd"), ("seed", 0.5),
                                             ("preconditioner_init_scale", 0.0)])
def test_invalid_options_raise(argument, value):
  with pytest.raises(ValueError, match=argument):
    psgd(**{argument: value})
