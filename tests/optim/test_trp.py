"""TRP against a NumPy transcription of the official `cifar-TRP.py` (yuhuixu1993/Trained-Rank-
Pruning): `low_rank_approx` with `EnergyThreshold(0.9)` for the NC and VH decompositions of PyTorch
OIHW kernels, and its training loop (truncate, forward, nuclear subgradient, SGD step)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import low_rank_approximation, trained_rank_pruning

SHAPE = (3, 3, 4, 6)  # HWIO


def energy_threshold(sigma, threshold):
  """`decompose.EnergyThreshold(threshold)` (energy on sigma^2)."""
  energy = sigma**2
  total = energy.sum()
  for i in range(len(energy)):
    if energy[:i + 1].sum() / total >= threshold:
      return i + 1
  return len(sigma)


def official_low_rank_approx(kernel_hwio, decomposition, threshold=0.9):
  """`low_rank_approx` for one kernel (use_trp=True): (truncated, subgradient, rank), HWIO."""
  param = kernel_hwio.transpose(3, 2, 0, 1)  # flax HWIO -> torch OIHW
  o, i, kh, kw = param.shape
  if decomposition == "nc":
    matrix = param.reshape(o, -1)
  else:
    matrix = param.transpose(1, 2, 0, 3).reshape(i * kh, -1)
  u, sigma, vt = np.linalg.svd(matrix, full_matrices=False)
  k = energy_threshold(sigma, threshold)
  truncated = (u[:, :k] * sigma[:k]) @ vt[:k]
  subgradient = u[:, :k] @ vt[:k]
  if decomposition == "nc":
    back = lambda m: m.reshape(o, i, kh, kw)
  else:
    back = lambda m: m.reshape(i, kh, o, kw).transpose(2, 0, 1, 3)
  to_hwio = lambda m: back(m).transpose(2, 3, 1, 0)
  return to_hwio(truncated), to_hwio(subgradient), k


def _kernels():
  rng = np.random.default_rng(0)
  full = rng.normal(size=SHAPE)
  # Decaying spectrum in both matrix views, so the 0.9-energy rank is well inside the range.
  decaying = np.einsum("r,hr,wr,ir,or->hwio", 2.0 ** -np.arange(4.0), *(
      rng.normal(size=(n, 4)) for n in SHAPE))
  return [full, decaying + 0.01 * full]


@pytest.mark.parametrize("decomposition", ["nc", "vh"])
def test_low_rank_approximation_matches_official_code(decomposition):
  approx = jax.jit(low_rank_approximation, static_argnames="decomposition")
  ranks = []
  for kernel in _kernels():
    expected = official_low_rank_approx(kernel, decomposition)
    got = approx(jnp.asarray(kernel, jnp.float32), 0.9, decomposition=decomposition)
    assert int(got[2]) == expected[2]
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=2e-5)
    ranks.append(expected[2])
  assert 1 <= ranks[1] < ranks[0]  # the decaying spectrum is truncated, the full one less so
  # A zero kernel: 0/0 in the official criterion; here rank 0, no truncation, no subgradient.
  truncated, subgradient, rank = approx(jnp.zeros(SHAPE), 0.9, decomposition=decomposition)
  assert int(rank) == 0
  np.testing.assert_array_equal(truncated, 0.0)
  np.testing.assert_array_equal(subgradient, 0.0)


def official_training(params, curvature, target, steps, period, lr, momentum, wd, nuclear, trp):
  """The official loop on the loss sum 0.5 h (w - c)^2; 'conv2' is the look-up table's kernel.

  Returns the weights every forward pass ran at. Step 0's gradient is taken at the initial
  kernel, the one documented difference (the official loop truncates it first)."""
  params = {k: v.copy() for k, v in params.items()}
  buf, seen = {}, []
  for t in range(steps):
    forward = dict(params)
    if t % period == 0:
      truncated, sub, _ = official_low_rank_approx(params["conv2"], "nc")
      if trp:
        params["conv2"] = truncated
      forward = params if t else forward
    seen.append({k: v.copy() for k, v in forward.items()})
    for name, p in params.items():
      g = curvature[name] * (forward[name] - target[name])
      if name == "conv2" and t % period == 0:
        g = g + nuclear * sub
      g = g + wd * p  # torch SGD: coupled weight decay, then momentum
      buf[name] = g if name not in buf else momentum * buf[name] + g
      params[name] = p - lr * buf[name]
  return seen


@pytest.mark.parametrize("trp", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["trp", "nuclear_only"])
def test_training_matches_official_loop(trp):
  rng = np.random.default_rng(1)
  shapes = {"conv1": (3, 3, 1, 4), "conv2": SHAPE, "bias": (6,)}
  params, target = ({k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(2))
  curvature = {k: 0.5 + rng.uniform(size=s) for k, s in shapes.items()}
  steps, period, lr, momentum, wd, nuclear = 7, 2, 0.1, 0.9, 1e-2, 0.05
  expected = official_training(params, curvature, target, steps, period, lr, momentum, wd,
                               nuclear, trp)

  opt = trained_rank_pruning(
      optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=momentum)),
      strength=nuclear, period=period, truncate=trp)
  f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)

  def step(carry, _):
    p, state = carry
    grads = jax.tree.map(lambda h, w, c: h * (w - c), f32(curvature), p, f32(target))
    updates, state = opt.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), p

  start = f32(params)
  _, seen = jax.jit(lambda: jax.lax.scan(step, (start, opt.init(start)), None, length=steps))()
  for t, forward in enumerate(expected):
    for name in shapes:
      np.testing.assert_allclose(seen[name][t], forward[name], rtol=1e-4, atol=1e-5,
                                 err_msg=f"step {t}, {name}")
  # The first conv is not a target; the truncation really lowered conv2's rank.
  final_rank = np.linalg.matrix_rank(np.asarray(seen["conv2"][-1]).reshape(-1, 6), tol=1e-4)
  assert (final_rank < 6) == trp


def test_mask_must_select_conv_kernels():
  params = {"conv": jnp.ones((3, 3, 2, 2)), "dense": jnp.ones((4, 2))}
  opt = trained_rank_pruning(optax.sgd(0.1), mask={"conv": True, "dense": True})
  with pytest.raises(ValueError, match=r"mask: params\['dense'\].*4-D"):
    opt.init(params)
