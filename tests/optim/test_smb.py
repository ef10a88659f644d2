"""SMB against a NumPy transcription of the official `SMB.step_smb` (sibirbil/SMB)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import scale_by_smb, smb

STEPS = 10
RNG = np.random.default_rng(0)
CURVATURE = {"w": RNG.uniform(0.2, 1.5, size=(3, 4)), "b": RNG.uniform(0.2, 1.5, size=4)}
TARGET = {"w": RNG.normal(size=(3, 4)), "b": RNG.normal(size=4)}
START = {"w": 2.0 * RNG.normal(size=(3, 4)), "b": 2.0 * RNG.normal(size=4),
         "frozen": np.array([0.5, -1.0])}  # not in the loss: a zero-gradient leaf


def _loss(p, xp=np):
  """A deterministic closure: per-leaf quadratics, a quartic and a term coupling the leaves."""
  total = 0.1 * xp.sum(p["w"]) * xp.sum(p["b"])
  for name in ("w", "b"):
    total = total + xp.sum(0.5 * CURVATURE[name] * (p[name] - TARGET[name]) ** 2
                           + 0.05 * p[name] ** 4)
  return total


def _grad(p):
  g = {name: CURVATURE[name] * (p[name] - TARGET[name]) + 0.2 * p[name] ** 3
       for name in ("w", "b")}
  g["w"] = g["w"] + 0.1 * np.sum(p["b"])
  g["b"] = g["b"] + 0.1 * np.sum(p["w"])
  g["frozen"] = np.zeros_like(p["frozen"])
  return g


def _official_numpy(x, steps, lr, eta=0.99, c=0.1, autoschedule=False, n_batches=500,
                    gamma=0.05, beta=0.9, lr_max=20.0):
  """`SMB.step_smb` (one parameter group) in float64, with the closure above.

  Returns the iterates, the model-step flags and the learning rates. The official code gives NaN
  for a tensor whose gradient is 0 (c_g = -0/0); that is asserted here, and the tensor is kept,
  as jaxlearn's guard does.
  """
  x = {k: v.astype(np.float64).copy() for k, v in x.items()}
  iterates, flags, rates, window = [], [], [], []
  for _ in range(steps):
    loss, g = _loss(x), _grad(x)
    grad_norm = np.sqrt(sum(np.sum(v * v) for v in g.values()))
    cond = loss - c * lr * grad_norm**2
    s_old = {k: -lr * v for k, v in g.items()}
    x = {k: x[k] + s_old[k] for k in x}
    model = grad_norm >= 1e-8 and not _loss(x) <= cond
    if model:
      g_t = _grad(x)
      for k in x:
        gf, gtf, s = g[k].ravel(), g_t[k].ravel(), s_old[k].ravel()
        sg, sgt = s @ gf, s @ gtf
        y = g_t[k] - g[k]
        yf = y.ravel()
        ys, ss, yy, yg, gg = sgt - sg, s @ s, yf @ yf, yf @ gf, gf @ gf
        with np.errstate(divide="ignore", invalid="ignore"):
          sigma = 0.5 * (np.sqrt(ss) * (np.sqrt(yy) + np.sqrt(gg) / eta) - ys)
          theta = (ys + 2.0 * sigma) ** 2.0 - ss * yy
          cg = -ss / (2.0 * sigma)
          cs = cg / theta * (-(ys + 2.0 * sigma) * yg + yy * sg)
          cy = cg / theta * (-(ys + 2.0 * sigma) * sg + ss * yg)
          s_new = cs * s_old[k] + cg * g[k] + cy * y
        if gg == 0:
          assert np.all(np.isnan(s_new))  # the official 0/0
          s_new = np.zeros_like(s_new)
        x[k] = x[k] - s_old[k] + s_new
    flags.append(int(model))
    window.append(int(model))
    if autoschedule and len(window) >= n_batches:
      if sum(window) / len(window) > gamma:
        lr *= beta
      elif lr / beta <= lr_max:
        lr /= beta
      window = []
    iterates.append({k: v.copy() for k, v in x.items()})
    rates.append(lr)
  return iterates, flags, rates


def _ours(opt, x, steps, pass_value):
  """Iterates and model-step counts of `opt` on the closure, in float32, one compiled scan.

  Without `pass_value`, `update` gets only `value_fn` and evaluates the loss at params itself.
  """
  value_fn = lambda p: _loss(p, jnp)
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), x)

  def step(carry, _):
    params, state = carry
    value, grads = jax.value_and_grad(value_fn)(params)
    extras = {"value": value} if pass_value else {}
    updates, state = opt.update(grads, state, params, value_fn=value_fn, **extras)
    params = optax.apply_updates(params, updates)
    return (params, state), (params, state.model_steps, state.learning_rate_scale)

  _, outputs = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=steps))(
      params)
  return jax.tree.map(np.asarray, outputs)


@pytest.mark.parametrize("autoschedule", [False, True])
def test_matches_official_step_smb(autoschedule):
  lr, window = 1.0, 2
  expected, flags, rates = _official_numpy(START, STEPS, lr, autoschedule=autoschedule,
                                           n_batches=window, gamma=0.4, lr_max=0.85)
  # Both branches happen; the autoschedule shrinks the rate, grows it, then hits the cap.
  assert 0 < sum(flags) < STEPS, flags
  if autoschedule:
    changes = np.sign(np.diff(rates))
    assert -1 in changes and 1 in changes and max(rates[3:]) <= 0.85, rates
  opt = smb(lr, gamma=0.4, max_learning_rate=0.85, autoschedule=autoschedule,
            steps_per_epoch=window)
  iterates, model_steps, scales = _ours(opt, START, STEPS, pass_value=not autoschedule)
  np.testing.assert_array_equal(model_steps, np.cumsum(flags))
  np.testing.assert_allclose(lr * scales, rates, rtol=1e-6)
  for t, x in enumerate(expected):
    for name in x:
      np.testing.assert_allclose(iterates[name][t], x[name], rtol=2e-4, atol=2e-5,
                                 err_msg=f"step {t}, leaf {name}")
  # The zero-gradient leaf never moves (the official code makes it NaN at the first model step).
  np.testing.assert_array_equal(iterates["frozen"][-1], START["frozen"].astype(np.float32))


def test_model_step_near_a_minimum_does_not_underflow():
  """Gradients of 1e-7: the official products (~|g|^6 after XLA's rewrite) underflow float32."""
  h = np.array([0.5, 1.0, 3.0])
  x0 = 1e-7 * np.array([1.0, -2.0, 1.5])
  value_fn = lambda p: 0.5 * jnp.sum(h * p**2)
  opt = scale_by_smb(1.0)  # lr * max(h) = 3 > 2: the trial step is rejected
  x = jnp.asarray(x0, jnp.float32)
  updates, state = jax.jit(lambda x: opt.update(jax.grad(value_fn)(x), opt.init(x), x,
                                                value_fn=value_fn))(x)
  assert int(state.model_steps) == 1
  # Float64 official formulas on the same tensor (a quadratic: g+ = h (x - lr g)).
  g = h * x0
  s, y = -g, h * (x0 - g) - g
  sigma = 0.5 * (np.linalg.norm(s) * (np.linalg.norm(y) + np.linalg.norm(g) / 0.99) - y @ s)
  theta = (y @ s + 2 * sigma) ** 2 - (s @ s) * (y @ y)
  cg = -(s @ s) / (2 * sigma)
  cs = cg / theta * (-(y @ s + 2 * sigma) * (y @ g) + (y @ y) * (s @ g))
  cy = cg / theta * (-(y @ s + 2 * sigma) * (s @ g) + (s @ s) * (y @ g))
  np.testing.assert_allclose(updates, cs * s + cg * g + cy * y, rtol=1e-4)


def test_update_without_value_fn_raises():
  x = jnp.array([1.0, -0.5])
  opt = smb(0.5)
  with pytest.raises(ValueError, match="value_fn"):
    opt.update(x, opt.init(x), x, value=jnp.float32(1.0))
