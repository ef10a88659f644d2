"""Layer Normalization: flax's LayerNorm (registered) and the paper's LN-GRU / LN-LSTM.

References: `torch.nn.LayerNorm` (parity at matching epsilon) and a NumPy (float64) transcription
of the paper's layer-normalized recurrent equations (arXiv:1607.06450, supplementary material).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn
from jaxlearn.nn import linen as jnn_linen

EPS = 1e-5


def np_ln(a, alpha, beta, eps=EPS):
  mu = a.mean(-1, keepdims=True)
  sigma = np.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + eps)
  return (a - mu) / sigma * alpha + beta


def sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def np_ln_gru(p, xs, h):
  """The paper's LN-GRU, one time step after the other over axis 1 of xs (B, T, F)."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  outputs = []
  for t in range(xs.shape[1]):
    x = xs[:, t].astype(np.float64)
    zr = (np_ln(h @ p["gate_recurrent_kernel"], p["gate_recurrent_ln_scale"],
                p["gate_recurrent_ln_bias"])
          + np_ln(x @ p["gate_input_kernel"], p["gate_input_ln_scale"], p["gate_input_ln_bias"]))
    hidden = h.shape[-1]
    z, r = zr[:, :hidden], zr[:, hidden:]
    h_hat = np.tanh(
        np_ln(x @ p["candidate_input_kernel"], p["candidate_input_ln_scale"],
              p["candidate_input_ln_bias"])
        + sigmoid(r) * np_ln(h @ p["candidate_recurrent_kernel"],
                             p["candidate_recurrent_ln_scale"], p["candidate_recurrent_ln_bias"]))
    h = (1 - sigmoid(z)) * h + sigmoid(z) * h_hat
    outputs.append(h)
  return np.stack(outputs, 1)


def np_ln_lstm(p, xs, c, h):
  """The paper's LN-LSTM, gates ordered (f, i, o, g)."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  outputs = []
  for t in range(xs.shape[1]):
    x = xs[:, t].astype(np.float64)
    gates = (np_ln(h @ p["recurrent_kernel"], p["recurrent_ln_scale"], p["recurrent_ln_bias"])
             + np_ln(x @ p["input_kernel"], p["input_ln_scale"], p["input_ln_bias"]) + p["bias"])
    f, i, o, g = np.split(gates, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(np_ln(c, p["cell_ln_scale"], p["cell_ln_bias"]))
    outputs.append(h)
  return np.stack(outputs, 1), c


def _random_params(init, seed):
  """Parameters with every LN gain and bias away from 1 and 0, drawn with NumPy."""
  shapes = jax.eval_shape(lambda: init(jax.random.key(0), 3, 4))
  rng = np.random.default_rng(seed)
  return {name: rng.uniform(0.5, 1.5, s.shape).astype(np.float32) * rng.choice([-1, 1], s.shape)
          for name, s in shapes.items()}


def _nnx_model(cls, params):
  """The NNX layer holding `params` (built abstractly: no eager initializer runs)."""
  model = nnx.eval_shape(lambda: cls(3, 4, rngs=nnx.Rngs(0)))
  nnx.update(model, nnx.State({k: jnp.asarray(v) for k, v in params.items()}))
  return model


@pytest.mark.parity
def test_layer_norm_matches_torch_at_matching_epsilon():
  torch = pytest.importorskip("torch")
  x = (1e-3 * np.random.default_rng(0).normal(size=(4, 6)) + 2.0).astype(np.float32)
  gamma, beta = np.linspace(0.5, 1.5, 6, dtype=np.float32), np.linspace(-1, 1, 6, dtype=np.float32)
  ref = torch.nn.LayerNorm(6)  # eps 1e-5
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(gamma))
    ref.bias.copy_(torch.from_numpy(beta))
  y_torch = ref(torch.from_numpy(x)).detach().numpy()
  assert jnn.LayerNorm(6, rngs=nnx.Rngs(0)).epsilon == 1e-6  # flax's default

  @jax.jit
  def layer_norms(x):  # torch's (and the official code's) epsilon, then flax's default
    return [jnn_linen.LayerNorm(epsilon=eps, use_fast_variance=False).apply(
        {"params": {"scale": gamma, "bias": beta}}, x) for eps in (1e-5, 1e-6)]

  outputs = dict(zip((1e-5, 1e-6), layer_norms(jnp.asarray(x))))
  np.testing.assert_allclose(outputs[1e-5], y_torch, rtol=1e-4, atol=1e-4)
  # At this input's variance (1e-6) the default epsilon gives visibly different numbers.
  assert np.max(np.abs(outputs[1e-6] - y_torch)) > 0.1


def test_ln_gru_matches_the_papers_equations():
  params = _random_params(jnn.init_ln_gru, 0)
  rng = np.random.default_rng(1)
  xs = rng.normal(size=(2, 5, 3)).astype(np.float32)
  h0 = (0.5 * rng.normal(size=(2, 4))).astype(np.float32)
  expected = np_ln_gru(params, xs, h0.astype(np.float64))

  h_last, hs = jnn.ln_gru(params, jnp.asarray(xs), jnp.asarray(h0))
  np.testing.assert_allclose(hs, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(h_last, expected[:, -1], rtol=1e-4, atol=1e-5)
  step = jax.jit(jnn.ln_gru_cell)(params, jnp.asarray(h0), jnp.asarray(xs[:, 0]))
  np.testing.assert_allclose(step, expected[:, 0], rtol=1e-4, atol=1e-5)

  # The NNX and Linen layers with these parameters compute the same thing.
  model = _nnx_model(jnn.LNGRU, params)
  y, carry = model(jnp.asarray(xs), jnp.asarray(h0), return_carry=True)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
  y_linen = jnn_linen.LNGRU(4).apply({"params": params}, jnp.asarray(xs), jnp.asarray(h0))
  np.testing.assert_allclose(y_linen, expected, rtol=1e-4, atol=1e-5)


def test_ln_lstm_matches_the_papers_equations():
  params = _random_params(jnn.init_ln_lstm, 2)
  rng = np.random.default_rng(3)
  xs = rng.normal(size=(2, 5, 3)).astype(np.float32)
  c0, h0 = (0.5 * rng.normal(size=(2, 2, 4))).astype(np.float32)
  expected, c_last = np_ln_lstm(params, xs, c0.astype(np.float64), h0.astype(np.float64))

  (c, h), hs = jnn.ln_lstm(params, jnp.asarray(xs), (jnp.asarray(c0), jnp.asarray(h0)))
  np.testing.assert_allclose(hs, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(c, c_last, rtol=1e-4, atol=1e-5)
  c1, h1 = jax.jit(jnn.ln_lstm_cell)(params, (jnp.asarray(c0), jnp.asarray(h0)),
                                     jnp.asarray(xs[:, 0]))
  np.testing.assert_allclose(h1, expected[:, 0], rtol=1e-4, atol=1e-5)


def test_recurrent_layers_are_per_sample_and_identical_in_train_and_eval():
  """No batch statistics: a sample's output ignores the batch, and eval == train."""
  # The shapes of the LN-GRU test above: the batched program is compiled already.
  xs = jnp.asarray(np.random.default_rng(4).normal(size=(2, 5, 3)).astype(np.float32))
  model = _nnx_model(jnn.LNGRU, _random_params(jnn.init_ln_gru, 5))
  model.train()
  y_train = model(xs)
  model.eval()
  np.testing.assert_array_equal(model(xs), y_train)
  np.testing.assert_allclose(model(xs[1:2]), y_train[1:2], rtol=1e-5, atol=1e-6)


def test_bad_hyperparameters_raise():
  for kwargs, name in (({"epsilon": 0.0}, "epsilon"), ({"epsilon": float("nan")}, "epsilon")):
    with pytest.raises(ValueError, match=name):
      jnn.LNGRU(3, 4, rngs=nnx.Rngs(0), **kwargs)
    with pytest.raises(ValueError, match=name):
      jnn.LayerNorm(3, rngs=nnx.Rngs(0), **kwargs)
  with pytest.raises(ValueError, match="hidden_features"):
    jnn.LNLSTM(3, 0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="hidden_features"):
    jax.eval_shape(lambda: jnn_linen.LNGRU(0).init(jax.random.key(0), jnp.ones((2, 3, 3))))
  with pytest.raises(ValueError, match="expects"):
    jnn.ln_gru(_random_params(jnn.init_ln_gru, 0), jnp.ones((2, 3, 5)))
