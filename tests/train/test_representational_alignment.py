"""Guidance (representational alignment) against float64 NumPy transcriptions of the official code:
`rep_sims.CKA` (centring matrices, no eps), `layer_sim.layer_supervision` + the `sim_scores`
dictionary of `layermap_sim`, and `total_loss` (CE + alpha * sum of 1 - CKA)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.train import alignment_loss, layer_mapping, linear_cka, representation_guidance


def _np_cka(x, y):
  """The official CKA.linear_CKA with H = I - 11^T / n, in float64."""
  n = x.shape[0]
  x, y = x.reshape(n, -1).astype(np.float64), y.reshape(n, -1).astype(np.float64)
  h = np.eye(n) - np.ones((n, n)) / n
  hsic = lambda a, b: np.sum((h @ a @ a.T @ h) * (h @ b @ b.T @ h))
  return hsic(x, y) / (np.sqrt(hsic(x, x)) * np.sqrt(hsic(y, y)))


def _official_pairs(num_guide, num_student):
  """layer_supervision, then the dict keyed by student layer that layermap_sim fills."""
  step = (num_student - 1) / (num_guide - 1) if num_guide > 1 else 1
  mapping = {i: min(round(i * step), num_student - 1) for i in range(num_guide)}
  scores = {}
  for guide_layer, student_layer in mapping.items():
    scores[student_layer] = guide_layer
  return sorted((g, s) for s, g in scores.items())


def test_linear_cka_matches_the_official_formula():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 2, 3)).astype(np.float32)  # flattened per example, as officially
  y = (x.reshape(12, -1) @ rng.normal(size=(6, 4)) + rng.normal(size=(12, 4))).astype(np.float32)
  z = rng.normal(size=(12, 1)).astype(np.float32)
  values = fast_jit(lambda x, y, z: jnp.stack(
      [linear_cka(x, y), linear_cka(x, z), linear_cka(y, z), linear_cka(x, x)]))(x, y, z)
  expected = [_np_cka(x, y), _np_cka(x, z), _np_cka(y, z), 1.0]
  np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parity
def test_linear_cka_matches_the_official_torch_class():
  torch = pytest.importorskip("torch")

  class OfficialCKA:  # rep_sim/rep_sims.py, transcribed (the repository is not a package)
    def centering(self, k):
      n = k.shape[0]
      h = torch.eye(n, dtype=k.dtype) - torch.ones([n, n], dtype=k.dtype) / n
      return h @ k @ h

    def linear_hsic(self, x, y):
      return torch.sum(self.centering(x @ x.T) * self.centering(y @ y.T))

    def linear_cka(self, x, y):
      return self.linear_hsic(x, y) / (
          torch.sqrt(self.linear_hsic(x, x)) * torch.sqrt(self.linear_hsic(y, y)))

  rng = np.random.default_rng(1)
  x = rng.normal(size=(16, 5)).astype(np.float32)
  y = np.tanh(x @ rng.normal(size=(5, 7))).astype(np.float32)
  expected = OfficialCKA().linear_cka(torch.from_numpy(x), torch.from_numpy(y)).item()
  np.testing.assert_allclose(fast_jit(linear_cka)(x, y), expected, rtol=1e-5)


def test_constant_features_give_zero_not_nan():
  x = np.ones((8, 3), np.float32)
  y = np.random.default_rng(2).normal(size=(8, 2)).astype(np.float32)
  value, grad = fast_jit(jax.value_and_grad(linear_cka))(x, y)
  assert float(value) == 0.0 and np.all(np.isfinite(grad))


def test_layer_mapping_is_the_official_one():
  for num_guide in range(1, 8):
    for num_student in range(1, 8):
      assert list(layer_mapping(num_guide, num_student)) == _official_pairs(num_guide, num_student)
  with pytest.raises(ValueError, match="num_guide_layers"):
    layer_mapping(0, 3)


def test_guided_step_matches_total_loss_and_its_gradient():
  """One SGD step on a 2-layer linear student guided by a 3-layer guide, vs the official
  objective CE + alpha * sum(1 - CKA) in float64 (gradient by central differences)."""
  rng = np.random.default_rng(3)
  n, d, hdim, c, alpha, lr = 10, 4, 3, 3, 0.7, 0.2
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.integers(0, c, size=n).astype(np.int32)
  guide_w = [rng.normal(size=s).astype(np.float32) for s in ((d, 5), (5, 5), (5, 2))]
  params = {"w1": rng.normal(size=(d, hdim)).astype(np.float32),
            "w2": rng.normal(size=(hdim, c)).astype(np.float32)}

  def student_layers(p, x):
    h = x @ p["w1"]
    return [h, jnp.tanh(h) @ p["w2"]]

  def guide_layers(x):
    out, layers = x, []
    for w in guide_w:
      out = out @ w
      layers.append(out)
      out = jnp.tanh(out)
    return layers

  def loss_fn(p, x, y):
    logits = student_layers(p, x)[-1]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  training = representation_guidance(loss_fn, student_layers, guide_layers, optax.sgd(lr), alpha)

  def one_step(p, x, y):
    state = training.init(p, jax.random.key(0))
    state, metrics = training.step(state, (x, y), jax.random.key(1))
    return state.params, metrics

  new, metrics = fast_jit(one_step)(params, x, y)

  g64 = [w.astype(np.float64) for w in guide_w]
  guide = []
  out = x.astype(np.float64)
  for w in g64:
    out = out @ w
    guide.append(out)
    out = np.tanh(out)

  def objective(w1, w2):
    h = x @ w1
    logits = np.tanh(h) @ w2
    z = logits - logits.max(1, keepdims=True)
    ce = -np.mean(z[np.arange(n), y] - np.log(np.exp(z).sum(1)))
    student = [h, logits]
    # 3 guide layers onto 2 student layers: guide 0 -> 0, 1 -> round(0.5) = 0, 2 -> 1; the
    # official dict keeps guide 1 for student layer 0.
    return ce + alpha * ((1 - _np_cka(student[0], guide[1])) + (1 - _np_cka(student[1], guide[2])))

  w1, w2 = params["w1"].astype(np.float64), params["w2"].astype(np.float64)
  np.testing.assert_allclose(metrics["loss"], objective(w1, w2), rtol=1e-5)
  h = 1e-6
  for name, value in (("w1", w1), ("w2", w2)):
    grad = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
      up, down = value.copy(), value.copy()
      up[idx] += h
      down[idx] -= h
      args = {"w1": w1, "w2": w2}
      grad[idx] = (objective(**{**args, name: up}) - objective(**{**args, name: down})) / (2 * h)
    np.testing.assert_allclose(new[name], value - lr * grad, rtol=1e-4, atol=1e-5)


def test_the_guide_receives_no_gradient():
  rng = np.random.default_rng(4)
  student = rng.normal(size=(8, 3)).astype(np.float32)
  guide = rng.normal(size=(8, 2)).astype(np.float32)
  grads = fast_jit(jax.grad(lambda s, g: alignment_loss([s], [g]), argnums=(0, 1)))(student, guide)
  assert np.any(np.asarray(grads[0]) != 0) and np.all(np.asarray(grads[1]) == 0)
