"""⊥Grad against NumPy transcriptions of the paper's Eq. (11)-(12) (global, not rescaled) and of
the official code's per-tensor rescaled rule, and against pytorch-optimizer's OrthoGrad."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim
from tests.optim._helpers import run_optimizer


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


def _numpy_reference(grads, params, *, per_tensor, rescale, eps=1e-30):
  """⊥Grad in float64 over each tensor (`per_tensor`) or over the whole parameter vector.

  per_tensor=False, rescale=False is the paper's Eq. (11): g⊥ = g − (θᵀg / θᵀθ) θ with θ and g
  the concatenation of every leaf; rescale=True multiplies g⊥ by ‖g‖ / ‖g⊥‖ (official code).
  """
  names = sorted(grads)
  out = {}
  for group in ([[n] for n in names] if per_tensor else [names]):
    g = np.concatenate([np.asarray(grads[n], np.float64).ravel() for n in group])
    w = np.concatenate([np.asarray(params[n], np.float64).ravel() for n in group])
    perp = g - (w @ g) / (w @ w + eps) * w
    if rescale:
      perp = perp * np.linalg.norm(g) / (np.linalg.norm(perp) + eps)
    for n, piece in zip(group, np.split(perp, np.cumsum([grads[n].size for n in group])[:-1])):
      out[n] = piece.reshape(grads[n].shape)
  return out


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


def test_global_form_without_rescaling_is_the_papers_eq_11_12_over_sgd_steps():
  """Def. 7: θ_{t+1} = θ_t − η ∇⊥L(θ_t), ∇⊥L = ∇L − (θᵀ∇L / θᵀθ) θ, θ the WHOLE parameter vector:
  each step is orthogonal to θ as a whole, not to each tensor (unlike the official code)."""
  params, grads = _tree(5), [_tree(20 + t) for t in range(3)]
  opt = optax.chain(optim.orthogonalize_gradients(per_tensor=False, rescale=False), optax.sgd(0.1))
  ours, _ = run_optimizer(opt, params, grads)
  theta = {k: v.astype(np.float64) for k, v in params.items()}
  for g in grads:
    step = _numpy_reference(g, theta, per_tensor=False, rescale=False)
    theta = {k: theta[k] - 0.1 * step[k] for k in theta}
  for name in theta:
    np.testing.assert_allclose(ours[name], theta[name], rtol=1e-5, atol=1e-6)
  step = _apply(grads[0], params, per_tensor=False, rescale=False)
  flat = lambda tree: np.concatenate([np.asarray(tree[k], np.float64).ravel() for k in sorted(tree)])
  assert abs(flat(step) @ flat(params)) < 1e-5 * np.linalg.norm(flat(step)) * np.linalg.norm(flat(params))
  assert abs(np.asarray(step["kernel"]).ravel() @ params["kernel"].ravel()) > 1e-2


@pytest.mark.parametrize("per_tensor, rescale", [(True, True), (True, False), (False, True)],
                         ids=["official", "per_tensor_unscaled", "global_rescaled"])
def test_every_form_matches_its_numpy_transcription(per_tensor, rescale):
  grads, params = _tree(7), _tree(8)
  out = _apply(grads, params, per_tensor=per_tensor, rescale=rescale)
  expected = _numpy_reference(grads, params, per_tensor=per_tensor, rescale=rescale)
  for name in grads:
    np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_tensor, rescale", [(True, True), (False, False), (False, True)],
                         ids=["official", "paper", "global_rescaled"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_a_gradient_parallel_to_the_weights_gives_zero(per_tensor, rescale, dtype):
  """g = c w leaves only rounding noise after the projection; the official code rescaled that
  noise to ‖g‖, a full-size random step. It is now recognized as parallel and gives zero."""
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), _tree(9))
  grads = jax.tree.map(lambda w: (-0.37 * w.astype(jnp.float32)).astype(dtype), params)
  out = _apply(grads, params, per_tensor=per_tensor, rescale=rescale)
  for leaf in jax.tree.leaves(out):
    assert leaf.dtype == dtype
    np.testing.assert_array_equal(np.asarray(leaf, np.float32), 0.0)


def test_a_small_but_real_orthogonal_part_is_kept_and_the_threshold_is_relative():
  w = np.asarray([[1.0, 2.0], [0.5, -1.0]], np.float32)
  u = np.asarray([[2.0, -1.0], [2.0, 1.0]], np.float32)  # <w, u> = 0
  g = 3.0 * w + 1e-4 * np.linalg.norm(3.0 * w) / np.linalg.norm(u) * u  # ‖g⊥‖ = 1e-4 ‖g‖
  out = _apply({"w": g}, {"w": w})["w"]
  np.testing.assert_allclose(out, u * np.linalg.norm(g) / np.linalg.norm(u), rtol=1e-3)
  np.testing.assert_array_equal(_apply({"w": g}, {"w": w}, parallel_rtol=1e-3)["w"], 0.0)


@pytest.mark.parametrize("kwargs, name", [
    (dict(per_tensor="yes"), "per_tensor"), (dict(rescale=None), "rescale"),
    (dict(parallel_rtol=-1e-6), "parallel_rtol"), (dict(parallel_rtol=1.0), "parallel_rtol"),
])
def test_bad_options_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optim.orthogonalize_gradients(**kwargs)


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
  opt = optax.chain(optim.orthogonalize_gradients(per_tensor=True, rescale=True),
                    optax.sgd(0.1, momentum=0.9))
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


@pytest.mark.parity
def test_a_parallel_gradient_gives_no_step_here_and_in_pytorch_optimizer():
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  params = _tree(11)
  grads = {k: (-0.37 * v).astype(np.float32) for k, v in params.items()}
  torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
  reference = pytorch_optimizer.OrthoGrad(torch.optim.SGD(list(torch_params.values()), lr=0.1))
  for name, p in torch_params.items():
    p.grad = torch.tensor(grads[name])
  reference.step()
  ours, _ = run_optimizer(optax.chain(optim.orthogonalize_gradients(), optax.sgd(0.1)), params,
                          [grads])
  for name, p in torch_params.items():
    np.testing.assert_array_equal(p.detach().numpy(), params[name])
    np.testing.assert_array_equal(ours[name], params[name])
