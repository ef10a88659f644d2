"""Gravity against hand-computed values, the paper's equations and pytorch-optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import gravity, gravity_step, inject_hyperparams, scale_by_gravity


def _paper_numpy(x0, v0, grads, lr, beta, first_t=0):
  """The paper's equations in float64: m = 1/max|g|, ζ = g/(1+(g/m)^2), β̂ = (βt+1)/(t+2)."""
  x, v = x0.copy(), v0.copy()
  for t, g in enumerate(grads, start=first_t):
    m = 1.0 / np.max(np.abs(g))
    zeta = g / (1.0 + (g / m) ** 2)
    b = (beta * t + 1.0) / (t + 2.0)
    v = b * v + (1.0 - b) * zeta
    x = x - lr * v
  return x


def _run(opt, x0, grads, state_fn=lambda s: s):
  params = jnp.asarray(x0, jnp.float32)
  state = state_fn(opt.init(params))
  step = jax.jit(opt.update)
  for g in grads:
    updates, state = step(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params, np.float64), state


def _with_velocity(v0):
  """Replaces the random initial velocity (state of the first transform of the chain)."""
  return lambda state: (state[0]._replace(velocity=jnp.asarray(v0, jnp.float32)), *state[1:])


def test_gravity_step_hand_computed():
  g = jnp.array([2.0, -1.0, 0.5])
  # max|g| = 2: zeta = g / (1 + (2 g)^2) = [2/17, -1/5, 0.5/2]
  np.testing.assert_allclose(gravity_step(g), [2 / 17, -0.2, 0.25], rtol=1e-6)
  np.testing.assert_array_equal(gravity_step(jnp.zeros(3)), jnp.zeros(3))


def test_step_is_bounded_and_linear_for_small_gradients():
  g = jnp.linspace(-1.0, 1.0, 101)
  zeta = gravity_step(g)
  # |zeta| <= 1 / (2 max|g|) (the maximum of x / (1 + (x M)^2) is at x = 1/M).
  assert float(jnp.max(jnp.abs(zeta))) <= 0.5 + 1e-6
  tiny = gravity_step(jnp.array([1e-4, 1.0]))
  np.testing.assert_allclose(tiny[0], 1e-4, rtol=1e-6)


@pytest.mark.parametrize("beta", [0.9, 0.5])
def test_matches_paper_equations(beta):
  rng = np.random.default_rng(0)
  x0, v0 = rng.normal(size=(4, 3)), 0.1 * rng.normal(size=(4, 3))
  grads = [rng.normal(size=(4, 3)) * 10.0 ** rng.uniform(-3, 1) for _ in range(7)]
  got, state = _run(gravity(0.05, beta=beta), x0, grads, _with_velocity(v0))
  np.testing.assert_allclose(got, _paper_numpy(x0, v0, grads, 0.05, beta), rtol=1e-5, atol=1e-6)
  assert int(state[0].count) == 7


def test_first_step_averages_with_one_half():
  """Paper: β̂ at t = 0 is 1/2 whatever β, so V_0 = (V_{-1} + ζ_0) / 2."""
  opt = scale_by_gravity(0.1, alpha=0.0, beta=0.99)
  g = jnp.array([1.0, 0.5])
  u, _ = opt.update(g, opt.init(g))
  np.testing.assert_allclose(u, 0.5 * gravity_step(g), rtol=1e-6)


@pytest.mark.parity
def test_matches_pytorch_optimizer_with_step_offset():
  """pytorch-optimizer (like the official PyTorch code) starts at t = 1; with our count started at
  1 and the same initial velocity the trajectories agree, and they differ without the offset."""
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  rng = np.random.default_rng(1)
  x0 = rng.normal(size=(5, 2))
  grads = [rng.normal(size=(5, 2)) for _ in range(6)]
  p = torch.nn.Parameter(torch.tensor(x0))
  ref = pytorch_optimizer.Gravity([p], lr=0.05, alpha=0.01, beta=0.9)
  p.grad = torch.tensor(grads[0])
  ref.init_group(ref.param_groups[0])
  v0 = ref.state[p]["v"].detach().numpy().copy()
  for g in grads:
    p.grad = torch.tensor(g)
    ref.step()
  expected = p.detach().numpy()

  def offset(state):
    state = _with_velocity(v0)(state)
    return (state[0]._replace(count=jnp.ones([], jnp.int32)), *state[1:])

  shifted, _ = _run(gravity(0.05), x0, grads, offset)
  np.testing.assert_allclose(shifted, expected, rtol=1e-5, atol=1e-6)
  paper, _ = _run(gravity(0.05), x0, grads, _with_velocity(v0))
  assert not np.allclose(paper, expected, rtol=1e-4, atol=1e-5)


def test_initial_velocity_spread_and_keys():
  params = {"a": jnp.zeros((100, 100)), "b": jnp.zeros(3, jnp.bfloat16)}
  state = scale_by_gravity(0.2, alpha=0.01, key=3).init(params)
  v = state.velocity["a"]
  # std alpha / lr = 0.05; 1e4 samples: relative error of the std well under 5%.
  assert abs(float(jnp.std(v)) / 0.05 - 1.0) < 0.05
  assert abs(float(jnp.mean(v))) < 0.005
  assert state.velocity["b"].dtype == jnp.float32
  same = scale_by_gravity(0.2, alpha=0.01, key=jax.random.PRNGKey(3)).init(params)
  np.testing.assert_array_equal(same.velocity["a"], v)
  typed = scale_by_gravity(0.2, alpha=0.01, key=jax.random.key(3)).init(params)
  assert typed.velocity["a"].shape == (100, 100)
  other = scale_by_gravity(0.2, alpha=0.01, key=4).init(params)
  assert not np.allclose(other.velocity["a"], v)


def test_jit_vmap_and_inject_hyperparams():
  params = jnp.ones(3)
  plain = gravity(0.1, alpha=0.01, key=7)
  injected = inject_hyperparams(gravity)(learning_rate=0.1, alpha=0.01, key=7)
  g = jnp.array([0.3, -2.0, 1.0])
  u1, _ = plain.update(g, plain.init(params), params)
  u2, _ = jax.jit(injected.update)(g, jax.jit(injected.init)(params), params)
  np.testing.assert_allclose(u1, u2, rtol=1e-5)

  def one_step(lr):
    opt = gravity(lr, alpha=0.0)
    return opt.update(g, opt.init(params), params)[0]

  batched = jax.jit(jax.vmap(one_step))(jnp.array([0.1, 0.2]))
  np.testing.assert_allclose(batched[1], 2.0 * batched[0], rtol=1e-6)


def _quadratic_losses(opt, steps=60):
  """Losses of a small quadratic 0.5 * sum(c * (x - 1)^2) over `steps` jitted steps."""
  curvature = jnp.asarray([1.0, 3.0, 0.5, 2.0])
  loss = lambda x: 0.5 * jnp.sum(curvature * jnp.square(x - 1.0))

  def step(carry, _):
    x, state = carry
    value, g = jax.value_and_grad(loss)(x)
    updates, state = opt.update(g, state, x)
    return (optax.apply_updates(x, updates), state), value

  x0 = jnp.zeros(4)
  return np.asarray(jax.lax.scan(step, (x0, opt.init(x0)), None, length=steps)[1])


def test_a_warmup_schedule_needs_and_uses_initial_learning_rate():
  """A warm-up starting at 0 used to give V_{-1} ~ N(0, inf): NaN from the first step (and a
  start at 1e-6 diverged). The spread is now alpha / initial_learning_rate, given explicitly."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, 0.5, warmup_steps=10, decay_steps=100)
  with pytest.raises(ValueError, match="initial_learning_rate"):
    gravity(schedule)
  losses = _quadratic_losses(gravity(schedule, initial_learning_rate=0.5, key=1), steps=100)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 1e-3 * losses[0] and losses[50] < losses[10] < losses[0]
  state = scale_by_gravity(schedule, alpha=0.01, initial_learning_rate=0.5).init(jnp.zeros(10_000))
  assert abs(float(jnp.std(state.velocity)) / 0.02 - 1.0) < 0.05  # alpha / 0.5, not alpha / 0


def test_initial_learning_rate_overrides_a_constant_learning_rate():
  params = jnp.zeros(10_000)
  default = scale_by_gravity(0.2, alpha=0.01, key=3).init(params).velocity
  explicit = scale_by_gravity(0.2, alpha=0.01, key=3, initial_learning_rate=0.2).init(params).velocity
  np.testing.assert_array_equal(default, explicit)
  other = scale_by_gravity(0.2, alpha=0.01, key=3, initial_learning_rate=0.1).init(params).velocity
  np.testing.assert_allclose(other, 2.0 * default, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"learning_rate": 0.0}, "learning_rate"), ({"alpha": -0.1}, "alpha"),
     ({"beta": 1.0}, "beta"), ({"key": 1.5}, "key"), ({"key": True}, "key"),
     ({"initial_learning_rate": 0.0}, "initial_learning_rate"),
     ({"learning_rate": lambda count: 0.1, "initial_learning_rate": None}, "initial_learning_rate")],
)
def test_bad_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    gravity(**kwargs)
