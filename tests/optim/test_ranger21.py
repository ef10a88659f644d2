"""Ranger21: the chain against a NumPy transcription, the official schedule, and pytorch-optimizer.

The NumPy reference works in PyTorch layout (output units on axis 0); jaxlearn gets the transposed
(Flax-layout) kernels. Its flags reproduce pytorch-optimizer 4.1.0's defects, so each defect is
shown explicitly: pytorch-optimizer == reference(with the defect), jaxlearn == reference(without).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim, registry
from jaxlearn._compile import fast_jit
from tests.optim._helpers import run_optimizer

STEPS = 16  # with num_iterations=16: warmup 3 steps, warmdown from step 11, Lookahead at 5, 10, 15


# ---------------------------------------------------------------------------- NumPy reference


def _official_lr(t, lr, total, b2=0.999, min_lr=3e-5, warmup=None):
  """lessw2020/Ranger21 `warmup_dampening` then `get_warm_down`, step t >= 1 (Python floats)."""
  if warmup is None:
    beta_warmup = math.ceil(2 / (1 - b2))
    warmup = int(0.22 * total) if beta_warmup / total > 0.45 else beta_warmup
  rate = lr if t > warmup else lr * min(1.0, t / warmup)
  start = int(0.72 * total)
  if t < start:
    return rate
  fraction = min(max(t + 1 - start, 1) / (total - start + 1), 1.0)
  return max(lr - (lr - min_lr) * fraction, min_lr)


def _rows(x, axis_keep=0):
  return tuple(a for a in range(x.ndim) if a != axis_keep)


def _unit_norm(x):
  return np.linalg.norm(x) if x.ndim <= 1 else np.sqrt(np.sum(x * x, axis=_rows(x), keepdims=True))


def _agc(g, p, clip, eps):
  max_norm = clip * np.maximum(_unit_norm(p), eps)
  g_norm = np.maximum(_unit_norm(g), 1e-6)
  return np.where(g_norm > max_norm, g * max_norm / g_norm, g)


def _gc(g):
  return g if g.ndim <= 1 else g - g.mean(axis=_rows(g), keepdims=True)


def _gn(g):
  return g if g.size <= 2 else g / (g.std(ddof=1) + 1e-8)


def _softplus(x, beta):
  return np.logaddexp(0.0, beta * x) / beta


def numpy_ranger21(params, grads, *, lr, total, b1=0.9, b2=0.999, b0=1.0, eps=1e-8, wd=1e-4,
                   nl=1e-4, sp=50.0, k=5, alpha=0.5, agc=1e-2, agc_eps=1e-3, amsgrad=True,
                   variance_sum_start=0.0, normalize_twice=False, eps_in_decay=True):
  """Ranger21 as documented in jaxlearn/optim/ranger21.py, float64, PyTorch layout.

  `variance_sum_start=1`, `normalize_twice=True`, `eps_in_decay=False` are pytorch-optimizer's
  choices.
  """
  theta = {n: v.astype(np.float64) for n, v in params.items()}
  slow = {n: v.copy() for n, v in theta.items()}
  zeros = lambda: {n: np.zeros_like(v) for n, v in theta.items()}
  m_odd, m_even, v, v_max = zeros(), zeros(), zeros(), zeros()
  size = sum(x.size for x in theta.values())
  for t, raw in enumerate(grads, start=1):
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    g = {n: _gn(_gc(_agc(raw[n].astype(np.float64), theta[n], agc, agc_eps))) for n in theta}
    total_v = variance_sum_start
    for n in theta:
      v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
      total_v += np.sum(v[n] / bc2)
    root_mean = math.sqrt(total_v / size) + (eps if eps_in_decay else 0.0)
    rate = _official_lr(t, lr, total, b2)
    for n in theta:
      p = theta[n]
      g2 = _gn(_gc(g[n])) if normalize_twice else g[n]
      current, other = (m_odd, m_even) if t % 2 == 1 else (m_even, m_odd)
      current[n] = b1**2 * current[n] + (1 - b1**2) * g2
      v_max[n] = np.maximum(v_max[n], v[n])
      denom = _softplus(np.sqrt((v_max if amsgrad else v)[n]) / math.sqrt(bc2) + eps, sp)
      direction = ((1 + b0) * current[n] - b0 * other[n]) / math.sqrt((1 + b0) ** 2 + b0**2)
      norm_loss = 2 * nl * (1 - 1 / (_unit_norm(p) + eps)) * p
      theta[n] = p - rate * (direction / bc1 / denom + wd / root_mean * p + norm_loss)
    if t % k == 0:
      for n in theta:
        slow[n] = slow[n] + alpha * (theta[n] - slow[n])
        theta[n] = slow[n].copy()
  return theta


def _problem(seed=0, grad_scale=1.0):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(5, 4)).astype(np.float32),  # PyTorch layout (out, in)
            "b": rng.normal(size=5).astype(np.float32) * 0.1}
  grads = [{n: (grad_scale * rng.normal(size=p.shape) * (1 + np.arange(p.shape[0]))[:, None]
                if p.ndim == 2 else grad_scale * rng.normal(size=p.shape)).astype(np.float32)
            for n, p in params.items()} for _ in range(STEPS)]
  return params, grads


def _flax(tree):
  return {n: jnp.asarray(v.T if v.ndim == 2 else v) for n, v in tree.items()}


def _run_jax(optimizer, params, grads):
  """`run_optimizer` on the PyTorch-layout trees, in Flax layout; params back in PyTorch's."""
  params, state = run_optimizer(optimizer, _flax(params), [_flax(g) for g in grads])
  return {n: np.asarray(v).T if v.ndim == 2 else np.asarray(v) for n, v in params.items()}, state


def _run_torch(params, grads, **kwargs):
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  tensors = {n: torch.tensor(v, requires_grad=True) for n, v in params.items()}
  beta0 = kwargs.pop("beta0", None)
  reference = pytorch_optimizer.Ranger21(list(tensors.values()), **kwargs)
  if beta0 is not None:
    reference.beta0 = beta0  # its validation rejects the PNM paper's default 1.0 ([0, 1) only)
  for g in grads:
    for n, t in tensors.items():
      t.grad = torch.tensor(g[n])
    reference.step()
  return {n: t.detach().numpy() for n, t in tensors.items()}


def _close(got, want, rtol=2e-5, atol=2e-6):
  for n in want:
    np.testing.assert_allclose(got[n], want[n], rtol=rtol, atol=atol, err_msg=n)


# ---------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("total", [16, 50, 1000, 2500, 10000])
def test_schedule_matches_the_official_warmup_and_warmdown(total):
  schedule = optim.ranger21_schedule(1e-3, total)
  counts = np.unique(np.linspace(0, total - 1, 400).astype(int))
  got = np.asarray(jax.vmap(schedule)(jnp.asarray(counts)))
  want = [_official_lr(c + 1, 1e-3, total) for c in counts]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)  # float32 cancellation


def test_schedule_shape_for_a_long_run():
  schedule = optim.ranger21_schedule(1e-2, 10000, warmdown_min_lr=1e-4)
  assert float(schedule(0)) == pytest.approx(1e-2 / 2000)  # warmup over ceil(2/(1-0.999)) steps
  assert float(schedule(1999)) == pytest.approx(1e-2)
  assert float(schedule(7198)) == pytest.approx(1e-2)  # flat until 72% of the run
  assert float(schedule(9999)) == pytest.approx(1e-4)  # warmdown ends at min_lr


@pytest.mark.parity
@pytest.mark.parametrize("total", [16, 300, 5000])
def test_schedule_matches_pytorch_optimizer(total):
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  reference = pytorch_optimizer.Ranger21([torch.zeros(2, requires_grad=True)], total, lr=1e-3)
  schedule = optim.ranger21_schedule(1e-3, total)
  for step in range(1, total + 1, max(1, total // 97)):
    want = reference.warm_down(reference.warm_up_dampening(1e-3, step), step)
    assert float(schedule(step - 1)) == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_schedule_under_jit_with_traced_num_iterations():
  """Traced hyperparameters take the float32 path; for these values the boundaries agree."""
  counts = jnp.arange(200)
  traced = jax.jit(lambda total: jax.vmap(optim.ranger21_schedule(1e-3, total))(counts))(200)
  concrete = jax.vmap(optim.ranger21_schedule(1e-3, 200))(counts)
  np.testing.assert_allclose(traced, concrete, rtol=1e-6)


# ---------------------------------------------------------------------------- the chain


@pytest.mark.parametrize("config", [
    dict(lr=1e-2, wd=1e-4),
    dict(lr=3e-2, wd=0.3, nl=1e-2),
    dict(lr=1e-2, wd=1e-4, b0=0.5, amsgrad=False),
    dict(lr=1e-2, wd=1e-4, sp=5.0, k=3, alpha=0.8),
], ids=["defaults", "strong_decay", "b0_no_amsgrad", "softplus_lookahead"])
def test_matches_numpy_transcription(config):
  params, grads = _problem()
  got, _ = _run_jax(optim.ranger21(
      config["lr"], STEPS, b0=config.get("b0", 1.0), weight_decay=config["wd"],
      norm_loss_factor=config.get("nl", 1e-4), softplus_beta=config.get("sp", 50.0),
      lookahead_sync_period=config.get("k", 5), lookahead_step_size=config.get("alpha", 0.5),
      amsgrad=config.get("amsgrad", True)), params, grads)
  want = numpy_ranger21(params, grads, total=STEPS, **config)
  _close(got, want)


def test_weight_decay_mask_keeps_masked_leaves_out_of_the_decay_but_in_the_mean():
  params, grads = _problem(3)
  mask = {"w": True, "b": False}
  got, _ = _run_jax(optim.ranger21(1e-2, STEPS, weight_decay=0.5, weight_decay_mask=mask),
                    params, grads)
  without_b = numpy_ranger21(params, grads, lr=1e-2, total=STEPS, wd=0.5)
  free_b = numpy_ranger21(params, grads, lr=1e-2, total=STEPS, wd=0.0)
  _close({"w": got["w"]}, {"w": without_b["w"]})
  # b is not decayed: it follows the zero-decay run (its own update does not see w's decay).
  _close({"b": got["b"]}, {"b": free_b["b"]})


def test_ablation_switches_remove_exactly_one_part():
  params, grads = _problem(4)
  no_lookahead, _ = _run_jax(optim.ranger21(1e-2, STEPS, use_lookahead=False), params, grads)
  alpha_one, _ = _run_jax(optim.ranger21(1e-2, STEPS, lookahead_step_size=1.0), params, grads)
  _close(no_lookahead, alpha_one, rtol=1e-6, atol=1e-7)
  want = numpy_ranger21(params, grads, lr=1e-2, total=STEPS, alpha=1.0)
  _close(no_lookahead, want)


@pytest.mark.parametrize("a", [0.3, 0.9, 1.5])
def test_decay_order_gap_is_the_stated_bound_also_when_the_decay_factor_nears_one(a):
  """The reference codes apply the stable decay, then the norm loss, in place one after the other
  (the norm loss reads the decayed θ); jaxlearn adds both terms at θ_{t-1}. With a = lr wd / (σ + ε)
  the stable decay's factor per step (σ = sqrt(mean v_hat)), f the norm-loss factor and n = ‖θ_u‖,
  the two differ per unit by exactly 2 lr f n |a - 1/(n + ε) + (1 - a)/(|1 - a| n + ε)|
  (= 2 lr f a n |1 - ε/((n + ε)((1 - a) n + ε))| for a <= 1) <= 2 lr f (a n + 2 min(a, 1)):
  first order in a, which is not O(lr wd) when σ is small (a near or above 1)."""
  lr, wd, f, eps = 0.1, 1e-4, 0.1, 1e-8
  rng = np.random.default_rng(9)
  theta = (rng.normal(size=(4, 3)) * np.asarray([0.3, 1.0, 2.5])).astype(np.float32)
  sigma = lr * wd / a - eps  # gradients of magnitude sigma make the decay factor exactly a
  grad = (sigma * rng.choice([-1.0, 1.0], size=(4, 3))).astype(np.float32)
  ours, lean = (optim.ranger21(lr, None, weight_decay=w, norm_loss_factor=n, use_agc=False,
                               use_gc=False, use_gn=False, use_lookahead=False)
                for w, n in ((wd, f), (0.0, 0.0)))
  step = lambda opt: np.asarray(optax.apply_updates(
      theta, opt.update(jnp.asarray(grad), opt.init(jnp.asarray(theta)), jnp.asarray(theta))[0]),
      np.float64)
  adapnm_step = theta - step(lean)  # lr * u, the same in both orders
  a = lr * wd / (np.sqrt(np.mean(np.square(grad.astype(np.float64)))) + eps)
  unit_norm = lambda x: np.linalg.norm(x, axis=0)
  decayed = (1.0 - a) * theta.astype(np.float64)
  in_place = decayed - lr * 2 * f * (1 - 1 / (unit_norm(decayed) + eps)) * decayed - adapnm_step
  gap = unit_norm(step(ours) - in_place)
  n = unit_norm(theta.astype(np.float64))
  exact = 2 * lr * f * n * np.abs(a - 1 / (n + eps) + (1 - a) / (abs(1 - a) * n + eps))
  np.testing.assert_allclose(gap, exact, rtol=1e-3)
  assert np.all(gap <= 2 * lr * f * (a * n + 2 * min(a, 1.0)))
  # The previously stated O(lr^2 wd f) is off by the factor a / (lr wd) = 1 / sigma.
  assert np.all(gap > 1e3 * lr**2 * wd * f * n)
  notes = registry.get("ranger21").notes
  assert "2 lr f (a ||theta_u|| + 2 min(a, 1))" in notes and "O(lr^2)" not in notes


def test_inject_hyperparams_with_mask_matches_plain():
  params, grads = _problem(5)
  mask = lambda p: {"w": True, "b": False}
  plain, plain_state = _run_jax(
      optim.ranger21(1e-2, STEPS, weight_decay=0.2, weight_decay_mask=mask), params, grads)
  injected_tx = optim.inject_hyperparams(optim.ranger21)(
      learning_rate=1e-2, num_iterations=STEPS, weight_decay=0.2, weight_decay_mask=mask)
  injected, state = _run_jax(injected_tx, params, grads)
  _close(injected, plain, rtol=1e-5, atol=1e-6)
  assert float(state.hyperparams["weight_decay"]) == pytest.approx(0.2)


def test_bfloat16_params_keep_dtype_and_float32_state():
  params = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.zeros(3, jnp.bfloat16)}
  optimizer = optim.ranger21(1e-3, 100)
  state = optimizer.init(params)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
  updates, state = jax.jit(optimizer.update)(grads, state, params)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  float_leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert float_leaves and all(x.dtype == jnp.float32 for x in float_leaves)


@pytest.mark.parametrize("flags", [(True, True, True), (True, False, True), (False, True, True),
                                   (True, True, False), (False, False, True)],
                         ids=["all", "no_gc", "no_agc", "no_gn", "gn_only"])
def test_fused_preprocessing_equals_the_parts_in_turn(flags):
  """ranger21 runs AGC, centralization and normalization as one function of each leaf
  (ranger21.py `_preprocess_leaf`): the same chain and state as the parts in turn, equal to
  float32 rounding, on every kind of leaf (rank-3 and (1, n) kernels take the parts in turn)."""
  use_agc, use_gc, use_gn = flags
  rng = np.random.default_rng(5)
  shapes = {"dense": (6, 5), "conv": (3, 3, 2, 4), "rank3": (3, 4, 5), "row": (1, 6),
            "bias": (7,), "pair": (2,), "scalar": ()}
  params = {n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in shapes.items()}
  # Per-unit offsets and scales: some units clipped by AGC, some not.
  grads = [{n: jnp.asarray((rng.normal(size=s) + rng.normal(size=s[-1:] if s else ()))
                           * 10.0 ** rng.integers(-4, 1, size=s[-1:] if s else ()), jnp.float32)
            for n, s in shapes.items()} for _ in range(3)]
  fused = optim.ranger21(1e-2, 100, use_agc=use_agc, use_gc=use_gc, use_gn=use_gn)
  parts = [optim.adaptive_grad_clip(1e-2, 1e-3)] if use_agc else []
  parts += [optim.centralize_gradients()] if use_gc else []
  parts += [optim.normalize_gradients(1e-8)] if use_gn else []
  plain = optax.chain(*parts, *[optax.with_extra_args_support(t) for t in (
      optim.with_stable_weight_decay(optim.scale_by_adapnm(softplus_beta=50.0), 1e-4,
                                     inner_nu=lambda state: state.nu),
      optim.add_norm_loss(1e-4, 1e-8),
      optax.scale_by_learning_rate(optim.ranger21_schedule(1e-2, 100)),
      optim.lookahead_sync(5, 0.5))])
  fused_state, plain_state = fused.init(params), plain.init(params)
  assert jax.tree.structure(fused_state) == jax.tree.structure(plain_state)
  fused_step, plain_step = fast_jit(fused.update), fast_jit(plain.update)
  for g in grads:
    got, fused_state = fused_step(g, fused_state, params)
    want, plain_state = plain_step(g, plain_state, params)
    for n in shapes:  # atol: float32 rounding of the leaf's scale, for cancelled entries
      atol = 1e-6 * float(np.max(np.abs(want[n])))
      np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=atol, err_msg=n)


def test_zero_gradients_stay_finite():
  params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
  optimizer = optim.ranger21(1e-3, 100)
  state = optimizer.init(params)
  step = jax.jit(optimizer.update)
  for _ in range(3):
    updates, state = step(jax.tree.map(jnp.zeros_like, params), state, params)
    params = optax.apply_updates(params, updates)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((params, state)))


# ---------------------------------------------------------------------------- pytorch-optimizer


TORCH_KWARGS = dict(beta0=1.0)


@pytest.mark.parity
def test_matches_pytorch_optimizer_where_it_follows_the_paper():
  """No weight decay (its +1 defect is then moot), gradients of std ~1 (double GN is moot)."""
  params, grads = _problem(6)
  want = _run_torch(params, grads, num_iterations=STEPS, lr=1e-2, weight_decay=0.0, **TORCH_KWARGS)
  got, _ = _run_jax(optim.ranger21(1e-2, STEPS, weight_decay=0.0), params, grads)
  _close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parity
def test_pytorch_optimizer_defect_variance_sum_starts_at_one():
  """pytorch-optimizer's stable weight decay divides by sqrt((1 + sum v_hat) / N), not
  sqrt(sum v_hat / N): with N = 25 parameters the decay is ~2% too weak (weight decay exaggerated
  to 0.5 to make it visible)."""
  params, grads = _problem(7)
  theirs = _run_torch(params, grads, num_iterations=STEPS, lr=2e-2, weight_decay=0.5,
                      **TORCH_KWARGS)
  ours, _ = _run_jax(optim.ranger21(2e-2, STEPS, weight_decay=0.5), params, grads)
  common = dict(lr=2e-2, total=STEPS, wd=0.5)
  _close(theirs, numpy_ranger21(params, grads, variance_sum_start=1.0, eps_in_decay=False,
                                **common), rtol=1e-5, atol=1e-6)
  _close(ours, numpy_ranger21(params, grads, **common))
  assert np.max(np.abs(theirs["w"] - ours["w"])) > 1e-4


@pytest.mark.parity
def test_pytorch_optimizer_defect_normalizes_the_gradient_twice():
  """Both reference codes normalize in place for v and again for the momentum; for gradients of
  std ~1e-7 the second division by (std + 1e-8) changes the momentum by ~10%."""
  params, grads = _problem(8, grad_scale=1e-7)
  theirs = _run_torch(params, grads, num_iterations=STEPS, lr=1e-2, weight_decay=0.0,
                      agc_clipping_value=1e3, **TORCH_KWARGS)
  ours, _ = _run_jax(optim.ranger21(1e-2, STEPS, weight_decay=0.0, agc_clipping=1e3),
                     params, grads)
  common = dict(lr=1e-2, total=STEPS, wd=0.0, agc=1e3)
  _close(theirs, numpy_ranger21(params, grads, normalize_twice=True, **common),
         rtol=1e-5, atol=1e-6)
  _close(ours, numpy_ranger21(params, grads, **common))
  assert np.max(np.abs(theirs["w"] - ours["w"])) > 1e-4


@pytest.mark.parity
def test_pytorch_optimizer_default_b0_differs_from_the_pnm_paper():
  """pytorch-optimizer defaults to beta0 = 0.9; the PNM paper and the official Ranger21 code use 1."""
  params, grads = _problem(9)
  theirs = _run_torch(params, grads, num_iterations=STEPS, lr=1e-2, weight_decay=0.0)
  ours, _ = _run_jax(optim.ranger21(1e-2, STEPS, weight_decay=0.0), params, grads)
  _close(theirs, numpy_ranger21(params, grads, lr=1e-2, total=STEPS, wd=0.0, b0=0.9),
         rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(theirs["w"] - ours["w"])) > 1e-4
