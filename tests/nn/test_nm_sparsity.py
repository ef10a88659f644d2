"""N:M masks, STE / SR-STE / MDGF gradients and SDGF schedules against NumPy transcriptions of the
official code (abhibambhaniya/progressive_gradient_flow_nm_sparsity,
``timm/sparse_pruning/sparse_functions.py``).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlearn.nn as jnn
from jaxlearn.nn import linen as jnn_linen
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")  # few-step programs: compile unoptimized


def np_sparse_mask(weight_out_in, n, m):
  """Official `get_sparse_mask` (row-wise, linear): torch (out, in) weight, groups of m along in;
  the m - n smallest |w| of every group are zeroed (stable sort: ties prune the earlier)."""
  w = np.abs(weight_out_in).reshape(-1, m)
  index = np.argsort(w, axis=1, kind="stable")[:, : m - n]
  mask = np.ones_like(w)
  np.put_along_axis(mask, index, 0.0, axis=1)
  return mask.reshape(weight_out_in.shape)


def np_effective_and_grad(w, mask, decay, sr_ste, upstream):
  """MDGF forward w (mask + (1 - mask) d); STE backward plus SR-STE's lambda (1 - mask) w."""
  return w * (mask + (1 - mask) * decay), upstream + sr_ste * (1 - mask) * w


def test_mask_effective_weight_and_gradient_match_the_official_functions():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(16, 6)).astype(np.float32)  # flax (in, out)
  kernel[4:8, 0] = 0.5  # ties inside one group
  upstream = rng.normal(size=kernel.shape).astype(np.float32)
  cases = [(1, 8, 0.0, 0.0), (2, 4, 0.0, 2e-4), (1, 4, 0.37, 0.0)]  # STE, SR-STE, MDGF

  @jax.jit
  def run(kernel, upstream):
    out = []
    for n, m, decay, sr_ste in cases:
      y, vjp = jax.vjp(lambda w: jnn.nm_sparsify(w, n, m, decay=decay, sr_ste=sr_ste), kernel)
      out.append((jnn.nm_mask(kernel, n, m), y, vjp(upstream)[0]))
    return out

  for (n, m, decay, sr_ste), (mask, y, grad) in zip(cases, run(kernel, upstream)):
    expected_mask = np_sparse_mask(kernel.T, n, m).T  # torch layout -> flax layout
    np.testing.assert_array_equal(mask, expected_mask)
    assert mask.dtype == jnp.float32
    np.testing.assert_array_equal(mask.reshape(-1, m, 6).sum(axis=1), n)  # n kept per group
    want_y, want_grad = np_effective_and_grad(kernel, expected_mask, decay, sr_ste, upstream)
    np.testing.assert_allclose(y, want_y, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)


def test_conv_layout_groups_along_input_channels():
  """HWIO kernels: the official code permutes (O, I, H, W) to (O, H, W, I) and groups along I."""
  kernel = np.random.default_rng(1).normal(size=(3, 3, 8, 5))
  mask = np.asarray(jax.jit(lambda k: jnn.nm_mask(k, 2, 4, axis=-2))(jnp.asarray(kernel)))
  torch_layout = np.transpose(kernel, (3, 0, 1, 2))  # (O, H, W, I)
  expected = np.transpose(np_sparse_mask(torch_layout, 2, 4), (1, 2, 3, 0))
  np.testing.assert_array_equal(mask, expected)


def test_decay_schedules():
  steps = np.array([-5, 0, 1000, 4000, 20000])
  c = 2e-4
  linear, exp = jax.jit(lambda t: (jnn.gradient_flow_decay(t, coefficient=c, kind="linear"),
                                   jnn.gradient_flow_decay(t, coefficient=c)))(steps)
  np.testing.assert_allclose(linear, [1.0] + [max(1 - c * t, 0.0) for t in steps[1:]],
                             rtol=1e-6)
  np.testing.assert_allclose(exp, [1.0] + [math.exp(-c * t) for t in steps[1:]], rtol=1e-5)


def np_decay_config(kind, n, m, total, dense, fine_tune):
  """Official `get_decay_config`."""
  if kind == "sparsify":
    frames = int(math.log2(m / n)) + 1
    size = (total - dense - fine_tune) / frames
    return {int(dense) + int(i * size): f"{(m - 1) if i == 0 else int(m / math.pow(2, i))}:{m}"
            for i in range(frames)}
  size = (total - dense - fine_tune) / 4
  if kind == "densify":
    return {int(dense) + int(i * size): f"{n}:{int(m * math.pow(2, 4 - i - 1))}"
            for i in range(4)}
  return {int(dense) + int(i * size):
          f"{int(n * math.pow(2, 4 - i - 1))}:{int(m * math.pow(2, 4 - i - 1))}"
          for i in range(4)}


@pytest.mark.parametrize("kind", ["sparsify", "densify", "fine"])
def test_structure_decay_schedule_matches_the_official_config(kind):
  for n, m, total, dense, fine in [(1, 8, 350, 0, 0), (1, 32, 100, 10, 15), (2, 16, 37, 3, 4)]:
    ours = jnn.structure_decay_schedule(n, m, kind=kind, total_epochs=total, dense_epochs=dense,
                                        fine_tune_epochs=fine)
    expected = np_decay_config(kind, n, m, total, dense, fine)
    assert {k: f"{a}:{b}" for k, (a, b) in ours.items()} == expected


def test_layers_validate_their_arguments():
  with pytest.raises(ValueError, match="in_features"):
    jnn.NMSparseLinear(10, 3, n=1, m=4, rngs=None)
  with pytest.raises(ValueError, match="n must be"):
    jnn.NMSparseLinear(8, 3, n=5, m=4, rngs=None)
  with pytest.raises(ValueError, match="decay"):
    jnn.nm_sparsify(jnp.ones((4, 1)), 2, 4, decay=1.5)
  with pytest.raises(ValueError, match="in_features"):
    jnn_linen.NMSparseDense(3, n=1, m=4).init(jax.random.key(0), jnp.ones((2, 6)))
