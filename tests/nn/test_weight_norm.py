"""Weight Normalization against independent references.

References: NumPy (float64) transcriptions of the paper's reparametrization and of the official
data-dependent initialization (openai/weightnorm, `tensorflow/nn.py`), `flax.linen.WeightNorm`,
and `torch.nn.utils.parametrizations.weight_norm` (parity tests). A training-step test documents
that `flax.nnx.WeightNorm` (0.12.8) is a different parametrization.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

import jaxlearn.nn as jnn
from jaxlearn.nn import linen as jnn_linen

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 6)).astype(np.float32) * 1.5 + 0.5
V = RNG.normal(size=(6, 4)).astype(np.float32)
G = RNG.uniform(0.5, 2.0, size=4).astype(np.float32)
B = RNG.normal(size=4).astype(np.float32)
X_IMG = RNG.normal(size=(2, 5, 5, 3)).astype(np.float32)
V_CONV = RNG.normal(size=(3, 3, 3, 4)).astype(np.float32)


def np_weight_norm(v, g, fan_in_axes):
  v = np.asarray(v, np.float64)
  return np.asarray(g, np.float64) * v / np.sqrt((v * v).sum(axis=fan_in_axes, keepdims=True))


def build(factory, params):
  """An NNX model holding `params` (a pure dict), built without an eager random draw."""
  graphdef, state = nnx.split(nnx.eval_shape(factory))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def wn_params(v=V, g=G, b=B):
  return {"v": v, "g": g, "bias": b}


DENSE = jnn_linen.WNDense(4)
CONV = jnn_linen.WNConv(4, (3, 3))
apply_dense = jax.jit(DENSE.apply)


def test_kernel_matches_the_numpy_transcription_and_ignores_the_scale_of_v():
  np.testing.assert_allclose(
      jnn.weight_normalize(V_CONV, G), np_weight_norm(V_CONV, G, (0, 1, 2)), rtol=1e-5)
  y = apply_dense({"params": wn_params()}, X)
  np.testing.assert_allclose(y, X.astype(np.float64) @ np_weight_norm(V, G, 0) + B, rtol=1e-5,
                             atol=1e-5)
  rescaled = V * np.array([7.3, 0.01, 1.0, 250.0], np.float32)  # per output unit
  np.testing.assert_allclose(apply_dense({"params": wn_params(v=rescaled)}, X), y, rtol=1e-5,
                             atol=1e-5)


def test_gradient_wrt_v_is_orthogonal_to_v_and_a_forward_call_keeps_v():
  layer = build(lambda: jnn.WNLinear(6, 4, rngs=nnx.Rngs(0)), wn_params())
  layer(jnp.asarray(X))
  np.testing.assert_array_equal(layer.v[...], V)  # ||v|| is not reset by a call

  loss = lambda params: jnp.sum(jnp.sin(DENSE.apply({"params": params}, X)))
  grad_v = np.asarray(jax.jit(jax.grad(loss))(wn_params())["v"], np.float64)
  cosine = (grad_v * V).sum(0) / (np.linalg.norm(grad_v, axis=0) * np.linalg.norm(V, axis=0))
  np.testing.assert_allclose(cosine, 0.0, atol=1e-5)
  assert np.all(np.linalg.norm(grad_v, axis=0) > 1e-3)
  # The paper's projection: grad_v = g/||v|| (I - w w^T/||w||^2) grad_w.
  w = np_weight_norm(V, G, 0)
  grad_w = X.T.astype(np.float64) @ np.cos(X.astype(np.float64) @ w + B)
  norm = np.linalg.norm(V, axis=0)
  expected = G / norm * (grad_w - w * (w * grad_w).sum(0) / (w * w).sum(0))
  np.testing.assert_allclose(grad_v, expected, rtol=1e-4, atol=1e-5)


def test_matches_flax_linen_weight_norm_dense_and_conv():
  def both(x, x_img):
    ours = (DENSE.apply({"params": wn_params()}, x),
            CONV.apply({"params": wn_params(v=V_CONV)}, x_img))
    theirs = []
    for layer, kernel, inputs in ((linen.Dense(4), V, x),
                                  (linen.Conv(4, (3, 3), padding="SAME"), V_CONV, x_img)):
      theirs.append(linen.WeightNorm(layer).apply({"params": {
          "layer_instance": {"kernel": kernel, "bias": B},
          "layer_instance/kernel/scale": G,
      }}, inputs))
    return ours, theirs

  ours, theirs = jax.jit(both)(X, X_IMG)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parity
def test_matches_torch_weight_norm_outputs_and_gradients():
  torch = pytest.importorskip("torch")
  from torch.nn.utils.parametrizations import weight_norm

  def ours(params, x, x_img):
    def loss(params):
      ys = (DENSE.apply({"params": params[0]}, x), CONV.apply({"params": params[1]}, x_img))
      return sum(jnp.sum(y * jnp.cos(y)) for y in ys), ys
    grads, ys = jax.grad(loss, has_aux=True)(params)
    return ys, grads

  ys, grads = jax.jit(ours)((wn_params(), wn_params(v=V_CONV)), X, X_IMG)
  cases = [
      (torch.nn.Linear(6, 4), X, V.T, (1, 0)),
      (torch.nn.Conv2d(3, 4, 3, padding=1), X_IMG.transpose(0, 3, 1, 2),
       V_CONV.transpose(3, 2, 0, 1), (2, 3, 1, 0)),
  ]
  for (module, x, v_torch, to_flax), y, grad in zip(cases, ys, grads):
    module = weight_norm(module, dim=0)
    params = module.parametrizations.weight
    with torch.no_grad():
      params.original0.copy_(torch.tensor(G).reshape(params.original0.shape))
      params.original1.copy_(torch.tensor(v_torch.copy()))
      module.bias.copy_(torch.tensor(B))
    y_torch = module(torch.tensor(x.copy()))
    (y_torch * torch.cos(y_torch)).sum().backward()
    if x.ndim == 4:
      y_torch = y_torch.permute(0, 2, 3, 1)
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad["g"], params.original0.grad.numpy().reshape(-1), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(grad["v"], params.original1.grad.numpy().transpose(to_flax),
                               rtol=1e-4, atol=1e-5)


def np_data_init(x, v, eps, init_scale=1.0):
  """The official `dense(init=True)`: (g, b, output) from one batch, in float64."""
  t = np.asarray(x, np.float64) @ (v / np.linalg.norm(v, axis=0))
  mean, var = t.mean(0), t.var(0)
  g = init_scale / np.sqrt(var + eps)
  return g, -mean * g, g * (t - mean)


class TwoLayers(nnx.Module):

  def __init__(self, rngs):  # noqa: D107
    self.first = jnn.WNLinear(6, 5, rngs=rngs)
    self.second = jnn.WNLinear(5, 3, rngs=rngs)

  def __call__(self, x):
    return self.second(jnp.tanh(self.first(x)))


class LinenTwoLayers(linen.Module):

  @linen.compact
  def __call__(self, x):
    hidden = jnn_linen.WNDense(5, name="first")(x)
    return jnn_linen.WNDense(3, name="second")(jnp.tanh(hidden))


def test_data_dependent_init_follows_the_official_code_layer_by_layer():
  v1, v2 = 0.05 * RNG.normal(size=(6, 5)), 0.05 * RNG.normal(size=(5, 3))  # official: N(0, .05)
  v1, v2 = v1.astype(np.float32), v2.astype(np.float32)
  ones, zeros = np.ones, np.zeros
  params = {"first": wn_params(v1, ones(5, np.float32), zeros(5, np.float32)),
            "second": wn_params(v2, ones(3, np.float32), zeros(3, np.float32))}
  model = build(lambda: TwoLayers(nnx.Rngs(0)), params)
  y = jnn.wn_init_from_batch(model, jnp.asarray(X), init_scale=0.5)
  g1, b1, h = np_data_init(X, v1, 1e-10, 0.5)
  g2, b2, expected = np_data_init(np.tanh(h), v2, 1e-10, 0.5)  # sees the initialized layer 1
  for got, want in ((model.first.g, g1), (model.first.bias, b1), (model.second.g, g2),
                    (model.second.bias, b2)):
    np.testing.assert_allclose(got[...], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(model.first.v[...], v1)  # v keeps its value

  # Linen: the same pass, the same numbers; a normal call afterwards gives the same output.
  module = LinenTwoLayers()
  y_linen, initialized = jnn_linen.wn_init_from_batch(module, {"params": params}, X,
                                                      init_scale=0.5)
  np.testing.assert_allclose(y_linen, y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(initialized["params"]["second"]["g"], g2, rtol=1e-4)
  np.testing.assert_allclose(module.apply(initialized, X), y, rtol=1e-5, atol=1e-6)


def test_conv_data_dependent_init_uses_the_spatial_moments():
  conv = build(lambda: jnn.WNConv(3, 4, (3, 3), rngs=nnx.Rngs(0)), wn_params(v=V_CONV))
  y = np.asarray(jnn.wn_init_from_batch(conv, jnp.asarray(X_IMG)), np.float64)
  np.testing.assert_allclose(y.mean((0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var((0, 1, 2)), 1.0, rtol=1e-4)  # eps0 = 1e-8: negligible here
  assert conv.init_epsilon is None and jnn.weight_norm.CONV_INIT_EPSILON == 1e-8


def test_flax_nnx_weight_norm_is_a_different_parametrization():
  """flax.nnx.WeightNorm (0.12.8) writes the normalized kernel into the wrapped parameter, so a
  call resets ||v|| to 1, and keeps its gains out of nnx.Param, so an optimizer step with
  `wrt=nnx.Param` does not train them. Ours keeps v and trains g."""
  import optax

  flax_wn = nnx.jit(lambda: nnx.WeightNorm(nnx.Linear(6, 4, rngs=nnx.Rngs(0)),
                                           rngs=nnx.Rngs(0)))()
  flax_wn.layer_instance.kernel[...] = jnp.asarray(V)
  ours = build(lambda: jnn.WNLinear(6, 4, rngs=nnx.Rngs(0)),
               wn_params(g=np.ones(4, np.float32), b=np.zeros(4, np.float32)))
  x, target = jnp.asarray(X), jnp.asarray(RNG.normal(size=(8, 4)).astype(np.float32))

  @nnx.jit
  def sgd_step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
    optimizer.update(model, grads)

  sgd_step(ours, nnx.Optimizer(ours, optax.sgd(0.1), wrt=nnx.Param))
  assert not np.allclose(ours.g[...], 1.0)  # g is trained
  np.testing.assert_allclose(np.linalg.norm(ours.v[...], axis=0),
                             np.linalg.norm(V, axis=0), rtol=1e-2)  # ||v|| kept (grad ⟂ v)

  scales_before = jax.tree.map(np.asarray, flax_wn.scales)
  gains_are_params = any(
      "scale" in str(path) for path, _ in nnx.to_flat_state(nnx.state(flax_wn, nnx.Param)))
  sgd_step(flax_wn, nnx.Optimizer(flax_wn, optax.sgd(0.1), wrt=nnx.Param))
  norms = np.linalg.norm(flax_wn.layer_instance.kernel[...], axis=0)
  reset = np.allclose(norms, 1.0, atol=0.05)  # the forward pass wrote v/||v|| into the kernel
  if not reset and gains_are_params:
    pytest.skip("flax.nnx.WeightNorm no longer writes back and trains its gains: re-check")
  assert reset, norms  # observed with flax 0.12.8 (norms were 1.5 to 3.4 before the step)
  assert not gains_are_params
  for before, after in zip(jax.tree.leaves(scales_before), jax.tree.leaves(flax_wn.scales)):
    np.testing.assert_array_equal(before, after)  # the gains were not trained


def test_bad_kernels_and_hyperparameters_raise():
  with pytest.raises(ValueError, match="expects"):
    jnn.weight_normalize(jnp.ones(3), jnp.ones(3))
  with pytest.raises(ValueError, match="epsilon"):
    jnn.weight_normalize(V, G, epsilon=float("nan"))
  with pytest.raises(ValueError, match="epsilon"):
    jnn.WNLinear(3, 2, epsilon=0.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="init_scale"):
    jnn.wn_init_from_batch(None, jnp.asarray(X), init_scale=-1.0)
  with pytest.raises(ValueError, match="feature_group_count"):
    jnn.WNConv(3, 4, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
