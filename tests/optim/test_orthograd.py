"""⊥Grad against a NumPy transcription of the paper's rule and pytorch-optimizer's OrthoGrad."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {
      "kernel": rng.normal(size=(5, 3)).astype(np.float32),
      "conv": rng.normal(size=(2, 2, 2, 3)).astype(np.float32),
      "bias": rng.normal(size=3).astype(np.float32),
  }


def _numpy_orthograd(g, w, eps=1e-30):
  """arXiv:2501.04697: g_perp = g - <w,g>/(<w,w>+eps) w, then rescaled to ||g||, in float64."""
  g64, w64 = g.astype(np.float64).ravel(), w.astype(np.float64).ravel()
  perp = g64 - (w64 @ g64) / (w64 @ w64 + eps) * w64
  return (perp * np.linalg.norm(g64) / (np.linalg.norm(perp) + eps)).reshape(g.shape)


def _apply(grads, params, **kwargs):
  transform = optim.orthogonalize_gradients(**kwargs)
  return jax.jit(transform.update)(grads, transform.init(params), params)[0]


def test_matches_the_numpy_transcription_and_is_orthogonal_with_the_gradient_norm():
  grads, params = _tree(0), _tree(1)
  out = _apply(grads, params)
  for name in grads:
    np.testing.assert_allclose(out[name], _numpy_orthograd(grads[name], params[name]),
                               rtol=1e-5, atol=1e-6)
    o = np.asarray(out[name], np.float64).ravel()
    assert abs(o @ params[name].ravel()) < 1e-4 * np.linalg.norm(o) * np.linalg.norm(params[name])
    np.testing.assert_allclose(np.linalg.norm(o), np.linalg.norm(grads[name]), rtol=1e-5)


def test_the_component_along_the_weights_is_removed_and_the_norm_restored():
  """g = 3 w + u with u orthogonal to w gives u rescaled to ||g||. (A gradient exactly parallel to
  w leaves only rounding noise, which the rule, like both references, rescales to ||g||.)"""
  w = np.asarray([[1.0, 2.0], [0.0, -1.0]], np.float32)
  u = np.asarray([[2.0, -1.0], [3.0, 0.0]], np.float32)  # <w, u> = 0
  g = 3.0 * w + u
  out = _apply({"w": g}, {"w": w})["w"]
  np.testing.assert_allclose(out, u * np.linalg.norm(g) / np.linalg.norm(u), rtol=1e-6)


def test_zero_gradients_and_zero_weights_give_finite_results_in_float16():
  params = {"w": jnp.zeros((4, 3), jnp.float16), "v": jnp.ones(3, jnp.float16)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  out = _apply(zeros, params)
  for leaf in jax.tree.leaves(out):
    assert leaf.dtype == jnp.float16
    np.testing.assert_array_equal(leaf, 0.0)
  grads = {"w": jnp.ones((4, 3), jnp.float16), "v": jnp.asarray([1.0, -1.0, 0.0], jnp.float16)}
  out = _apply(grads, params)
  np.testing.assert_array_equal(out["w"], 1.0)  # zero weights: nothing to remove
  np.testing.assert_array_equal(out["v"], grads["v"])  # already orthogonal to v = ones


def test_update_without_params_raises():
  transform = optim.orthogonalize_gradients()
  with pytest.raises(ValueError, match="params"):
    transform.update(_tree(0), transform.init(_tree(0)))


@pytest.mark.parametrize("eps", [0.0, -1e-30, float("nan")])
def test_bad_eps_raises(eps):
  with pytest.raises(ValueError, match="eps"):
    optim.orthogonalize_gradients(eps)


def test_stops_weight_norm_growth_on_a_separable_problem():
  """Without regularization, gradient descent on a separable logistic regression keeps growing
  ||w||; with ⊥Grad each step is orthogonal to w, so ||w||^2 grows only by ||step||^2."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
  labels = (x @ jnp.asarray(rng.normal(size=5), jnp.float32) > 0).astype(jnp.int32)
  loss = lambda w: optax.losses.softmax_cross_entropy_with_integer_labels(x @ w, labels).mean()
  start = jnp.asarray(0.3 * rng.normal(size=(5, 2)), jnp.float32)

  def train(opt):
    def step(carry, _):
      w, state = carry
      updates, state = opt.update(jax.grad(loss)(w), state, w)
      return (optax.apply_updates(w, updates), state), None
    return jax.lax.scan(step, (start, opt.init(start)), None, length=300)[0][0]

  plain = train(optax.sgd(0.5))
  ortho = train(optax.chain(optim.orthogonalize_gradients(), optax.sgd(0.5)))
  norm0 = float(jnp.linalg.norm(start))
  assert float(jnp.linalg.norm(plain)) > 4 * norm0
  assert float(jnp.linalg.norm(ortho)) < 2 * norm0
  assert float(loss(ortho)) < 0.5 * float(loss(start))


@pytest.mark.parity
def test_matches_pytorch_optimizer_orthograd_over_several_sgd_steps():
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  params = _tree(4)
  grads = [_tree(10 + t) for t in range(3)]
  torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
  reference = pytorch_optimizer.OrthoGrad(
      torch.optim.SGD(list(torch_params.values()), lr=0.1, momentum=0.9))
  opt = optax.chain(optim.orthogonalize_gradients(), optax.sgd(0.1, momentum=0.9))
  ours, state = jax.tree.map(jnp.asarray, params), None
  state = opt.init(ours)
  for g in grads:
    for name, p in torch_params.items():
      p.grad = torch.tensor(g[name])
    reference.step()
    updates, state = opt.update(jax.tree.map(jnp.asarray, g), state, ours)
    ours = optax.apply_updates(ours, updates)
  for name, p in torch_params.items():
    np.testing.assert_allclose(ours[name], p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_experiment_quick_run(tmp_path):
  from experiments import perpgrad_weight_norm

  record = perpgrad_weight_norm.run(quick=True, out=tmp_path, seed=0)
  saved = json.loads((tmp_path / "perpgrad_weight_norm.json").read_text())
  assert (tmp_path / "perpgrad_weight_norm.png").exists()
  assert saved["claim_held"] is None and record["quick"]
  for key in ("final_weight_norm_ratio", "final_test_accuracy", "steps_to_90_test"):
    assert set(saved["metrics"][key]) == {"adamw", "perp_adamw"}
  for value in saved["metrics"]["final_weight_norm_ratio"].values():
    assert np.isfinite(value)
