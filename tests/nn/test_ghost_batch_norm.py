"""Ghost Batch Normalization against independent references.

References: a NumPy (float64) transcription of the official training loop (`main_gbn.py`: the
batch cut into chunks, each run through BatchNorm in training mode, one running-statistics update
per chunk, gradients averaged over chunks), flax's Linen BatchNorm (ghost batch = whole batch), and
PyTorch's BatchNorm1d run chunk by chunk as the official code does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

import jaxlearn.nn as jnn

EPS = 1e-5


def np_official_loop(x, scale, bias, running_mean, running_var, *, ghost, momentum, eps=EPS):
  """Chunk by chunk, in order: BN with the chunk's statistics, then one moving-average update."""
  x = np.asarray(x, np.float64)
  mean, var = np.array(running_mean, np.float64), np.array(running_var, np.float64)
  outputs = []
  for chunk in np.split(x, x.shape[0] // ghost):
    values = chunk.reshape(-1, chunk.shape[-1])
    mu, sigma2 = values.mean(axis=0), values.var(axis=0)
    outputs.append(scale * (chunk - mu) / np.sqrt(sigma2 + eps) + bias)
    mean = momentum * mean + (1 - momentum) * mu
    var = momentum * var + (1 - momentum) * sigma2
  return np.concatenate(outputs), mean, var


def _inputs(shape, seed=0):
  rng = np.random.default_rng(seed)
  return (2.0 * rng.normal(size=shape) + 1.0).astype(np.float32)


@pytest.mark.parametrize("shape,ghost", [((12, 3), 4), ((8, 2, 2, 3), 2)])
def test_matches_the_official_sequential_loop(shape, ghost):
  x = _inputs(shape)
  rng = np.random.default_rng(1)
  scale, bias = rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
  mean0, var0 = rng.normal(size=3), rng.uniform(0.5, 2.0, 3)
  y, mean, var = jnn.ghost_batch_normalize(
      jnp.asarray(x), running_mean=jnp.asarray(mean0, jnp.float32),
      running_var=jnp.asarray(var0, jnp.float32), scale=jnp.asarray(scale, jnp.float32),
      bias=jnp.asarray(bias, jnp.float32), ghost_batch_size=ghost, use_running_average=False,
      momentum=0.9)
  y_ref, mean_ref, var_ref = np_official_loop(x, scale, bias, mean0, var0, ghost=ghost,
                                              momentum=0.9)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mean, mean_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(var, var_ref, rtol=1e-5, atol=1e-6)


def test_ghost_batch_of_the_whole_batch_is_flax_batchnorm():
  x = jnp.asarray(_inputs((6, 2, 3)))
  bn = linen.BatchNorm(momentum=0.9, epsilon=EPS, use_fast_variance=False)
  variables = bn.init(jax.random.key(0), x, use_running_average=True)
  y_ref, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  gbn = jnn.GhostBatchNorm(3, ghost_batch_size=6, momentum=0.9)
  np.testing.assert_allclose(gbn(x), y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gbn.mean[...], updates["batch_stats"]["mean"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(gbn.var[...], updates["batch_stats"]["var"], rtol=1e-6, atol=1e-7)
  gbn.eval()
  np.testing.assert_allclose(
      gbn(x), bn.apply({**variables, **updates}, x, use_running_average=True), rtol=1e-5,
      atol=1e-5)
  # None is the same as the whole batch.
  y_none = jnn.ghost_batch_normalize(
      x, running_mean=jnp.zeros(3), running_var=jnp.ones(3), scale=jnp.ones(3),
      bias=jnp.zeros(3), ghost_batch_size=None, use_running_average=False)[0]
  np.testing.assert_allclose(y_none, y_ref, rtol=1e-5, atol=1e-5)


def test_pytorch_batchnorm_run_chunk_by_chunk():
  """The official loop with torch's BN: same outputs and running mean (torch momentum 0.1 = flax
  0.9); torch's running variance uses the unbiased chunk variance (a factor b / (b - 1))."""
  torch = pytest.importorskip("torch")
  x, ghost = _inputs((12, 3), seed=3), 4
  bn = torch.nn.BatchNorm1d(3, momentum=0.1, eps=EPS)
  bn.train()
  with torch.no_grad():
    y_torch = torch.cat([bn(chunk) for chunk in torch.from_numpy(x).split(ghost)]).numpy()
  y, mean, var = jnn.ghost_batch_normalize(
      jnp.asarray(x), running_mean=jnp.zeros(3), running_var=jnp.ones(3), scale=jnp.ones(3),
      bias=jnp.zeros(3), ghost_batch_size=ghost, use_running_average=False, momentum=0.9)
  np.testing.assert_allclose(y, y_torch, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mean, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  chunks = x.reshape(3, ghost, 3).astype(np.float64)
  unbiased = chunks.var(axis=1) * ghost / (ghost - 1)
  expected_torch_var = 0.9**3 + sum(0.1 * 0.9 ** (2 - g) * unbiased[g] for g in range(3))
  np.testing.assert_allclose(bn.running_var.numpy(), expected_torch_var, rtol=1e-5)
  assert not np.allclose(var, bn.running_var.numpy(), rtol=1e-3)  # ours: biased (flax)


def test_gradient_equals_the_official_average_of_chunk_gradients():
  x, ghost = jnp.asarray(_inputs((8, 3), seed=4)), 2
  targets = jnp.asarray(np.random.default_rng(5).normal(size=(8, 3)), jnp.float32)
  kernel = jnp.asarray(np.random.default_rng(6).normal(size=(3, 3)), jnp.float32)

  def loss(kernel, x, targets, ghost_batch_size):
    y = jnn.ghost_batch_normalize(
        x @ kernel, running_mean=jnp.zeros(3), running_var=jnp.ones(3), scale=jnp.ones(3),
        bias=jnp.zeros(3), ghost_batch_size=ghost_batch_size, use_running_average=False)[0]
    return jnp.mean((y - targets) ** 2)

  grad = jax.jit(jax.grad(loss), static_argnums=3)  # two programs instead of many eager ops
  full = grad(kernel, x, targets, ghost)
  chunks = [grad(kernel, x[i:i + ghost], targets[i:i + ghost], None) for i in range(0, 8, ghost)]
  np.testing.assert_allclose(full, sum(chunks) / len(chunks), rtol=1e-4, atol=1e-6)


def test_running_statistics_follow_the_global_order_under_vmap():
  """With axis_name the devices' ghost batches are updated in device-major order: the same as one
  device holding the concatenated batch (two ghost batches per device here)."""
  x = jnp.asarray(_inputs((8, 3), seed=7))
  kwargs = dict(running_mean=jnp.zeros(3), running_var=jnp.ones(3), scale=jnp.ones(3),
                bias=jnp.zeros(3), ghost_batch_size=2, use_running_average=False, momentum=0.5)
  y, mean, var = jnn.ghost_batch_normalize(x, **kwargs)
  sharded = jax.vmap(lambda s: jnn.ghost_batch_normalize(s, axis_name="d", **kwargs),
                     axis_name="d")(x.reshape(2, 4, 3))
  np.testing.assert_allclose(sharded[0].reshape(8, 3), y, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(sharded[1][0], mean, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(sharded[2][1], var, rtol=1e-6, atol=1e-7)


def test_bad_ghost_batch_size_and_hyperparameters_raise():
  x = jnp.ones((10, 3))
  with pytest.raises(ValueError, match="ghost_batch_size must divide"):
    jnn.GhostBatchNorm(3, ghost_batch_size=4)(x)
  for bad in (0, -2, 2.0, True):
    with pytest.raises(ValueError, match="ghost_batch_size"):
      jnn.GhostBatchNorm(3, ghost_batch_size=bad)
  for name, value in (("momentum", 1.5), ("momentum", float("nan")), ("epsilon", 0.0)):
    with pytest.raises(ValueError, match=name):
      jnn.GhostBatchNorm(3, ghost_batch_size=2, **{name: value})


def test_learning_rate_scaling_and_regime_adaptation():
  """The official `--lr_bb_fix` (lr * sqrt(B / b)) and `--regime_bb_fix` (times ceil(B / b))."""
  assert jnn.sqrt_batch_lr_scaling(0.1, 2048, 128) == pytest.approx(0.4)
  schedule = jnn.sqrt_batch_lr_scaling(lambda step: 0.1 / (1 + step), 512, 128)
  assert schedule(1) == pytest.approx(0.1)
  assert jnn.adapt_regime(5, batch_size=300, base_batch_size=128, milestones=(2, 4)) == (
      15, (6, 12))
  with pytest.raises(ValueError, match="learning_rate"):
    jnn.sqrt_batch_lr_scaling(-0.1, 512, 128)
  with pytest.raises(ValueError, match="base_batch_size"):
    jnn.adapt_regime(5, batch_size=512, base_batch_size=0)
