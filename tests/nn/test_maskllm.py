"""MaskLLM's candidate table, Gumbel-softmax mask, schedules, prior and regularizer against NumPy
transcriptions of the official code (NVlabs/MaskLLM, ``learnable_sparsity/differentiable_mask.py``
and ``pretrain_maskllm.py``), in PyTorch's (out, in) layout.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")  # few-step programs: compile unoptimized

# The official tables, written out as in DifferentiableMask.__init__.
OFFICIAL_2_4 = [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1],
                [0, 0, 1, 1]]
OFFICIAL_1_4 = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def to_torch_gate(gate):
  """Ours (in/4, out, C) -> the official (numel/4, C): weight (out, in) viewed as (-1, 4)."""
  return np.transpose(gate, (1, 0, 2)).reshape(-1, gate.shape[-1])


def np_official_mask(gate_t, options, noise_t, tau, kappa, shape_out_in):
  """DifferentiableMask.forward in training (hard=False): softmax((g kappa + G) / tau) @ S."""
  logits = (gate_t * kappa + noise_t) / tau
  choices = np.exp(logits - logits.max(-1, keepdims=True))
  choices /= choices.sum(-1, keepdims=True)
  return (choices @ options).reshape(shape_out_in)


def test_candidate_tables_are_the_official_ones():
  np.testing.assert_array_equal(jnn.candidate_masks(2, 4), OFFICIAL_2_4)
  np.testing.assert_array_equal(jnn.candidate_masks(1, 4), OFFICIAL_1_4)
  assert jnn.candidate_masks(2, 8).shape == (28, 8)


def test_soft_hard_and_evaluation_masks_match_the_official_forward():
  rng = np.random.default_rng(0)
  in_features, out = 12, 5
  gate = rng.normal(scale=0.01, size=(in_features // 4, out, 6)).astype(np.float32)
  noise = rng.gumbel(size=gate.shape).astype(np.float32)
  tau, kappa = jnn.maskllm_schedule(0.3)
  tau, kappa = float(tau), float(kappa)
  upstream = rng.normal(size=(in_features, out)).astype(np.float32)

  @jax.jit
  def run(gate, noise, upstream):
    soft = lambda g: jnn.maskllm_mask(g, noise=noise, temperature=tau, scale=kappa)
    hard = lambda g: jnn.maskllm_mask(g, noise=noise, temperature=tau, scale=kappa, hard=True)
    (mask, soft_vjp), (hard_mask, hard_vjp) = jax.vjp(soft, gate), jax.vjp(hard, gate)
    return (mask, hard_mask, jnn.maskllm_mask(gate), soft_vjp(upstream)[0],
            hard_vjp(upstream)[0])

  mask, hard_mask, eval_mask, soft_grad, hard_grad = run(gate, noise, upstream)
  expected = np_official_mask(to_torch_gate(gate), np.array(OFFICIAL_2_4, np.float32),
                              to_torch_gate(noise), tau, kappa, (out, in_features))
  np.testing.assert_allclose(mask, expected.T, rtol=1e-5, atol=1e-6)
  assert mask.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(mask).reshape(-1, 4, out).sum(1), 2.0, rtol=1e-5)
  # hard=True: the one-hot argmax candidate forward, the soft gradient backward.
  choice = np.argmax(to_torch_gate(gate) * kappa + to_torch_gate(noise), axis=-1)
  np.testing.assert_array_equal(
      hard_mask, np.array(OFFICIAL_2_4)[choice].reshape(out, in_features).T)
  np.testing.assert_allclose(hard_grad, soft_grad, rtol=1e-5, atol=1e-7)
  # Evaluation: the argmax of the logits, no noise.
  np.testing.assert_array_equal(
      eval_mask, np.array(OFFICIAL_2_4)[np.argmax(to_torch_gate(gate), -1)]
      .reshape(out, in_features).T)


def test_schedules_prior_and_weight_regularization():
  rng = np.random.default_rng(1)
  gate = rng.normal(scale=0.01, size=(2, 3, 6)).astype(np.float32)
  kernel = rng.normal(size=(8, 3)).astype(np.float32)
  progress = np.array([0.0, 0.25, 1.0], np.float32)

  @jax.jit
  def run(gate, kernel):
    prior = jnn.nm_mask(kernel, 2, 4)
    reg, grad = jax.value_and_grad(jnn.maskllm_weight_regularization)(kernel, prior)
    return (jnn.maskllm_schedule(progress), prior,
            jnn.maskllm_prior_gates(gate, prior, strength=3.0), reg, grad)

  (tau, kappa), prior, ours, reg, grad = (jax.tree.map(np.asarray, v) for v in run(gate, kernel))
  np.testing.assert_allclose(tau, 4 + (0.1 - 4) * progress, rtol=1e-6)
  np.testing.assert_allclose(kappa, 1e3 + (1e4 - 1e3) * progress, rtol=1e-6)
  # init_diff_mask_from_prior: priors = (S * mask.view(-1, 1, 4)).sum(2); torch.std is unbiased.
  priors = (np.array(OFFICIAL_2_4)[None] * prior.T.reshape(-1, 1, 4)).sum(2)
  expected = to_torch_gate(gate) + (priors - 1) * gate.std(ddof=1) * 3.0
  np.testing.assert_allclose(to_torch_gate(ours), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(reg, np.sum((kernel * prior) ** 2), rtol=1e-5)
  np.testing.assert_array_equal(grad, 0.0)  # the weights are detached


def test_layer_noise_sources_and_bad_input():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 8)), jnp.float32)

  @nnx.jit
  def run(x, key):
    layer = jnn.MaskLLMLinear(8, 4, scale_multiplier=(1.0, 1.0), rngs=nnx.Rngs(0, gumbel=1))
    outputs = layer(x), layer(x), layer(x, rngs=key), layer(x, deterministic=True)
    gate, kernel, bias = layer.gate[...], layer.kernel[...], layer.bias[...]
    noise = jax.random.gumbel(key, gate.shape)
    soft = jnn.maskllm_mask(gate, noise=noise, temperature=4.0, scale=1.0)
    return outputs, x @ (kernel * soft) + bias, x @ (kernel * jnn.maskllm_mask(gate)) + bias

  (first, second, keyed, evaluated), want_keyed, want_evaluated = run(x, jax.random.key(3))
  assert not np.allclose(first, second)  # the kept stream advances
  np.testing.assert_allclose(keyed, want_keyed, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(evaluated, want_evaluated, rtol=1e-5, atol=1e-6)
  without_stream = nnx.eval_shape(lambda: jnn.MaskLLMLinear(8, 4, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="rngs="):
    without_stream(x)  # no noise stream and no key
  with pytest.raises(ValueError, match="in_features"):
    jnn.MaskLLMLinear(10, 4, rngs=None)
  with pytest.raises(ValueError, match="n must be"):
    jnn.MaskLLMLinear(8, 4, n=5, rngs=None)
