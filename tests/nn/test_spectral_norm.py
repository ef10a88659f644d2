"""Spectral Normalization against independent references.

References: a NumPy (float64) transcription of the paper's Algorithm 1 (one power iteration per
step from the persistent u: v = W^T u/|W^T u|, u = W v/|W v|, sigma = u^T W v, with W of shape
(out, in)), `np.linalg.svd`, `flax.linen.SpectralNorm` (the same iteration, identical u) and
`torch.nn.utils.parametrizations.spectral_norm` (parity tests). A training-step test documents
that `flax.nnx.SpectralNorm` (0.12.8) writes W/sigma back into the parameter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

import jaxlearn.nn as jnn
from jaxlearn.nn import linen as jnn_linen

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 6)).astype(np.float32)
KERNEL = RNG.normal(size=(6, 4)).astype(np.float32)  # flax layout (in, out)
B = RNG.normal(size=4).astype(np.float32)
U0 = RNG.normal(size=4).astype(np.float32)
X_IMG = RNG.normal(size=(2, 5, 5, 3)).astype(np.float32)
KERNEL_CONV = RNG.normal(size=(3, 3, 3, 4)).astype(np.float32)


def np_power_step(w_out_in, u):
  """The paper's Algorithm 1, one step, float64: returns (u, v, sigma)."""
  w = np.asarray(w_out_in, np.float64)
  v = w.T @ u
  v /= np.linalg.norm(v)
  u = w @ v
  u /= np.linalg.norm(u)
  return u, v, u @ w @ v


def build(factory, state):
  """An NNX model holding `state` (a pure dict), built without an eager random draw."""
  graphdef, abstract = nnx.split(nnx.eval_shape(factory))
  nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, state))
  return nnx.merge(graphdef, abstract)


def sn_state(kernel=KERNEL, u=U0):
  return {"kernel": kernel, "bias": B, "u": u, "sigma": np.float32(1.0)}


def test_power_iteration_follows_algorithm_1_and_converges_to_the_top_singular_value():
  step = jax.jit(jnn.spectral_normalize)
  u, u_ref = jnp.asarray(U0), U0.astype(np.float64)
  for _ in range(3):
    _, u, sigma = step(KERNEL, u)
    u_ref, _, sigma_ref = np_power_step(KERNEL.T, u_ref)
    np.testing.assert_allclose(u, u_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-5)
  singular_values = np.linalg.svd(KERNEL.astype(np.float64), compute_uv=False)
  assert float(sigma) < singular_values[0] * (1 - 1e-3)  # 3 steps from a random u: not there
  # k = 40 more steps (the layer's persistent u), dense and conv ((-1, out) matrix view).
  for kernel, u in ((KERNEL, u), (KERNEL_CONV, U0)):
    normalized, _, sigma = jnn.spectral_normalize(kernel, u, n_power_iterations=40)
    matrix = kernel.reshape(-1, 4).astype(np.float64)
    top = np.linalg.svd(matrix, compute_uv=False)[0]
    np.testing.assert_allclose(sigma, top, rtol=1e-5)
    np.testing.assert_allclose(normalized, kernel / float(sigma), rtol=1e-6)
    np.testing.assert_allclose(
        np.linalg.svd(np.asarray(normalized, np.float64).reshape(-1, 4), compute_uv=False)[0],
        1.0, rtol=1e-5)


def test_training_updates_u_evaluation_updates_nothing_and_the_kernel_is_never_modified():
  layer = build(lambda: jnn.SNLinear(6, 4, rngs=nnx.Rngs(0)), sn_state())
  x = jnp.asarray(X)
  layer(x)
  layer(x)
  u_ref = U0.astype(np.float64)
  for _ in range(2):
    u_ref, _, sigma_ref = np_power_step(KERNEL.T, u_ref)
  np.testing.assert_allclose(layer.u[...], u_ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(layer.sigma[...], sigma_ref, rtol=1e-5)
  np.testing.assert_array_equal(layer.kernel[...], KERNEL)
  layer.eval()
  u_stored, sigma_stored = np.asarray(layer.u[...]), np.asarray(layer.sigma[...])
  y_eval = layer(x)
  np.testing.assert_array_equal(layer.u[...], u_stored)
  np.testing.assert_array_equal(layer.sigma[...], sigma_stored)
  np.testing.assert_array_equal(layer.kernel[...], KERNEL)
  # Evaluation iterates once from the stored u without storing it (as flax.linen).
  _, _, sigma_eval = np_power_step(KERNEL.T, u_ref)
  np.testing.assert_allclose(y_eval, X @ (KERNEL / sigma_eval) + B, rtol=1e-5, atol=1e-5)


def test_matches_flax_linen_spectral_norm_outputs_state_and_gradients():
  ours_dense, ours_conv = jnn_linen.SNDense(4), jnn_linen.SNConv(4, (3, 3))
  theirs_dense = linen.SpectralNorm(linen.Dense(4))
  theirs_conv = linen.SpectralNorm(linen.Conv(4, (3, 3), padding="SAME"))

  def run(kernel, kernel_conv, x, x_img, u, u_conv):
    out = []
    name = "layer_instance"
    for ours, theirs, k, inputs, u0 in (
        (ours_dense, theirs_dense, kernel, x, u),
        (ours_conv, theirs_conv, kernel_conv, x_img, u_conv)):
      ours_vars = {"params": {"kernel": k, "bias": B},
                   "batch_stats": {"u": u0, "sigma": jnp.float32(1)}}
      theirs_vars = {"params": {"layer_instance": {"kernel": k, "bias": B}},
                     "batch_stats": {f"{name}/kernel/u": u0[None], f"{name}/kernel/sigma":
                                     jnp.float32(1)}}
      for train in (True, False):
        def ours_loss(params, vars_=ours_vars, train=train):
          y, upd = ours.apply({**vars_, "params": params}, inputs,
                              use_running_average=not train, mutable=["batch_stats"])
          return jnp.sum(jnp.sin(y)), (y, upd)

        def theirs_loss(params, vars_=theirs_vars, train=train):
          y, upd = theirs.apply({**vars_, "params": params}, inputs, update_stats=train,
                                mutable=["batch_stats"])
          return jnp.sum(jnp.sin(y)), (y, upd)

        g1, (y1, upd1) = jax.grad(ours_loss, has_aux=True)(ours_vars["params"])
        g2, (y2, upd2) = jax.grad(theirs_loss, has_aux=True)(theirs_vars["params"])
        out.append((y1, y2, g1["kernel"], g2["layer_instance"]["kernel"],
                    upd1["batch_stats"]["u"], upd2["batch_stats"][f"{name}/kernel/u"][0],
                    upd1["batch_stats"]["sigma"], upd2["batch_stats"][f"{name}/kernel/sigma"]))
        ours_vars = {**ours_vars, **upd1}
        theirs_vars = {**theirs_vars, **upd2}
    return out

  results = jax.jit(run)(KERNEL, KERNEL_CONV, X, X_IMG, U0, U0)
  for step in results:
    for ours, theirs in zip(step[::2], step[1::2]):
      np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  # Evaluation (the second call of each layer) stored nothing in either implementation.
  for train_step, eval_step in (results[0:2], results[2:4]):
    np.testing.assert_array_equal(eval_step[4], train_step[4])
    np.testing.assert_array_equal(eval_step[5], train_step[5])


@pytest.mark.parity
def test_matches_torch_spectral_norm_u_and_converged_output():
  """torch keeps u and v and iterates u = W v, v = W^T u from its stored v: started from
  v = W^T u0/|W^T u0| it produces the same u as Algorithm 1 at every step; its sigma = u^T W v
  uses the v of the new u (half an iteration ahead of ours), so outputs agree once converged."""
  torch = pytest.importorskip("torch")
  from torch.nn.utils.parametrizations import spectral_norm

  module = spectral_norm(torch.nn.Linear(6, 4))
  w_out_in = KERNEL.T.astype(np.float64)
  params = module.parametrizations.weight
  with torch.no_grad():
    params.original.copy_(torch.tensor(KERNEL.T.copy()))
    module.bias.copy_(torch.tensor(B))
    v0 = w_out_in.T @ U0
    params[0]._v.copy_(torch.tensor((v0 / np.linalg.norm(v0)).astype(np.float32)))
  module.train()
  layer = build(lambda: jnn.SNLinear(6, 4, rngs=nnx.Rngs(0)), sn_state())
  step = nnx.jit(lambda m, x: m(x))
  x = jnp.asarray(X)
  for _ in range(30):
    y_torch = module(torch.tensor(X)).detach().numpy()
    y = step(layer, x)
    np.testing.assert_allclose(layer.u[...], params[0]._u.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(y, y_torch, rtol=1e-5, atol=1e-5)


def test_flax_nnx_spectral_norm_writes_the_normalized_kernel_back():
  """flax.nnx.SpectralNorm (0.12.8) stores W/sigma in the wrapped kernel, also in evaluation
  mode, so an optimizer step updates W/sigma instead of W. Ours leaves W to the optimizer."""
  import optax

  flax_sn = nnx.jit(lambda: nnx.SpectralNorm(nnx.Linear(6, 4, rngs=nnx.Rngs(0)),
                                             rngs=nnx.Rngs(0)))()
  flax_sn.layer_instance.kernel[...] = jnp.asarray(KERNEL)
  ours = build(lambda: jnn.SNLinear(6, 4, rngs=nnx.Rngs(0)), sn_state())
  x, target = jnp.asarray(X), jnp.asarray(RNG.normal(size=(8, 4)).astype(np.float32))

  @nnx.jit
  def sgd_step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
    optimizer.update(model, grads)

  top = lambda k: np.linalg.svd(np.asarray(k, np.float64), compute_uv=False)[0]
  s1 = top(KERNEL)
  sgd_step(ours, nnx.Optimizer(ours, optax.sgd(1e-3), wrt=nnx.Param))
  np.testing.assert_allclose(top(ours.kernel[...]), s1, rtol=1e-2)  # W itself, one small step

  flax_sn.eval()
  call = nnx.jit(lambda m, x: m(x))
  call(flax_sn, x)
  if np.allclose(flax_sn.layer_instance.kernel[...], KERNEL):
    pytest.skip("flax.nnx.SpectralNorm no longer writes W/sigma back: re-check")
  assert top(flax_sn.layer_instance.kernel[...]) < 0.9 * s1  # overwritten in evaluation mode
  flax_sn.train()
  sgd_step(flax_sn, nnx.Optimizer(flax_sn, optax.sgd(1e-3), wrt=nnx.Param))
  assert top(flax_sn.layer_instance.kernel[...]) < 0.9 * s1  # the step updated W/sigma, not W


def test_bad_kernels_and_hyperparameters_raise():
  with pytest.raises(ValueError, match="expects"):
    jnn.spectral_normalize(jnp.ones(3), jnp.ones(3))
  with pytest.raises(ValueError, match="expects"):
    jnn.spectral_normalize(KERNEL, jnp.ones(6))
  with pytest.raises(ValueError, match="n_power_iterations"):
    jnn.spectral_normalize(KERNEL, U0, n_power_iterations=0)
  with pytest.raises(ValueError, match="epsilon"):
    jnn.SNLinear(3, 2, epsilon=float("inf"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="n_power_iterations"):
    jnn_linen.SNDense(3, n_power_iterations=-1).init(jax.random.key(0), jnp.ones((1, 2)),
                                                     use_running_average=True)
