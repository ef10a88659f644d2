"""The induced-metric optimiser against a NumPy transcription of the official `jax_imp.py`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import induced_metric, scale_by_induced_metric

STEPS = 6
HYPER = dict(lr=0.05, mu=0.9, xi=0.1, beta=0.8, beta_rms=0.99, eps=1e-8, wd=0.1)


def _problem(seed=0):
  """Two leaves (the trace is global over them), gradients over three decades, positive losses."""
  rng = np.random.default_rng(seed)
  x0 = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
  grads = [{k: rng.normal(size=v.shape) * 10.0 ** rng.uniform(-2, 1) for k, v in x0.items()}
           for _ in range(STEPS)]
  losses = rng.uniform(0.1, 3.0, size=STEPS)
  return x0, grads, losses


def _official_numpy(x0, grads, losses, metric, lr, mu, xi, beta, beta_rms, eps, wd):
  """`custom_sgd` / `custom_sgd_log` / `custom_sgd_rms` of optimisers/jax_imp.py, in float64."""
  x = {k: v.copy() for k, v in x0.items()}
  m = {k: np.zeros_like(v) for k, v in x0.items()}
  r = {k: np.zeros_like(v) for k, v in x0.items()}
  e = 0.0
  for step, (g, loss) in enumerate(zip(grads, losses), start=1):
    if metric == "rms":
      r = {k: beta_rms * r[k] + (1 - beta_rms) * g[k] ** 2 for k in g}
      r_hat = {k: v / (1 - beta_rms**step) for k, v in r.items()}
      trace = xi * sum(np.sum(g[k] ** 2 / (np.sqrt(r_hat[k]) + eps)) for k in g)
    else:
      trace = xi * sum(np.sum(v**2) for v in g.values())
    e = beta * e + (1 - beta) * trace
    e_hat = e / (1 - beta**step)
    scale = loss / (loss**2 + e_hat) if metric == "log" else 1 / (1 + abs(e_hat))
    m = {k: mu * m[k] + (1 - mu) * g[k] for k in g}
    for k in x:
      direction = m[k] / (1 - mu**step)
      if metric == "rms":
        direction = direction / (np.sqrt(r_hat[k]) + eps)
      x[k] = x[k] + (-lr * scale * direction - lr * wd * x[k])
  return x


def _ours(opt, x0, grads, losses):
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), x0)
  stacked = jax.tree.map(lambda *g: jnp.asarray(np.stack(g), jnp.float32), *grads)

  def step(carry, inputs):
    params, state = carry
    g, loss = inputs
    updates, state = opt.update(g, state, params, value=loss)
    return (optax.apply_updates(params, updates), state), None

  run = jax.jit(lambda p, gs, ls: jax.lax.scan(step, (p, opt.init(p)), (gs, ls))[0][0])
  return run(params, stacked, jnp.asarray(losses, jnp.float32))


@pytest.mark.parametrize("metric", ["plain", "log", "rms"])
def test_matches_official_code(metric):
  x0, grads, losses = _problem()
  h = HYPER
  expected = _official_numpy(x0, grads, losses, metric, **h)
  opt = induced_metric(h["lr"], h["mu"], h["xi"], h["beta"], h["beta_rms"], h["eps"],
                       weight_decay=h["wd"], metric=metric)
  got = _ours(opt, x0, grads, losses)
  for k in expected:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_log_metric_at_zero_loss():
  """L = 0: the scale L / (L^2 + e_hat) is 0, and 0 (not the official 0/0 = NaN) when e_hat = 0."""
  opt = scale_by_induced_metric(metric="log")
  params = {"w": jnp.ones(3)}
  update = jax.jit(opt.update)
  zero, state = update({"w": jnp.zeros(3)}, opt.init(params), params, value=0.0)
  np.testing.assert_array_equal(zero["w"], 0.0)  # e_hat = 0 and L = 0
  updates, state = update({"w": jnp.array([1.0, -2.0, 0.5])}, state, params, value=0.0)
  np.testing.assert_array_equal(updates["w"], 0.0)  # e_hat > 0: the scale is exactly 0
  assert float(state.trace) > 0 and np.all(np.isfinite(state.mu["w"]))
  with pytest.raises(ValueError, match="value"):
    opt.update({"w": jnp.ones(3)}, state, params)


def test_step_is_a_smoothed_clip():
  """β = μ = 0: the step g / (1 + ξ|g|^2) is ~g for small gradients and never exceeds
  1 / (2 sqrt(ξ)), reached at |g| = 1 / sqrt(ξ)."""
  xi = 0.25
  opt = scale_by_induced_metric(momentum=0.0, xi=xi, beta=0.0)
  norms = jnp.asarray([1e-3, 1.0, 2.0, 10.0, 1e4])
  direction = jnp.array([0.6, 0.8])
  steps = jax.jit(jax.vmap(lambda n: opt.update(n * direction, opt.init(direction))[0]))(norms)
  step_norms = np.linalg.norm(np.asarray(steps), axis=1)
  np.testing.assert_allclose(step_norms, norms / (1 + xi * norms**2), rtol=1e-6)
  assert step_norms.max() <= 1 / (2 * np.sqrt(xi)) * (1 + 1e-6)
  np.testing.assert_allclose(step_norms[2], 1 / (2 * np.sqrt(xi)), rtol=1e-6)


def test_rms_with_zero_eps_and_zero_gradient_is_finite():
  opt = scale_by_induced_metric(eps=0.0, metric="rms")
  g = {"w": jnp.array([0.0, 1e-3, -2.0])}
  updates, _ = jax.jit(opt.update)(g, opt.init(g))
  assert updates["w"][0] == 0.0 and np.all(np.isfinite(updates["w"]))
