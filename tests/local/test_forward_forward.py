"""Forward-Forward against a NumPy transcription of the paper's per-layer objective and prediction
rule (with the details of Hinton's Matlab release: RMS length normalization, threshold = width,
goodness accumulated over all but the first hidden layer), and its update against the Matlab
code's hand-written gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import local

C = 4  # classes
FEATURES = 7
WIDTHS = (6, 5, 3)


def make_batch(seed=0, batch_size=9):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, C, size=batch_size)
  y_neg = (y + rng.integers(1, C, size=batch_size)) % C
  return {
      "x": jnp.asarray(rng.uniform(size=(batch_size, FEATURES)), jnp.float32),
      "y": jnp.asarray(y, jnp.int32),
      "y_neg": jnp.asarray(y_neg, jnp.int32),
  }


def make(rule, seed=0):
  model = local.LocalModel.mlp(WIDTHS)
  params, _ = model.init(jax.random.PRNGKey(seed), rule, make_batch())
  # Random biases so that the ReLUs are partly off and the objective is not symmetric.
  blocks = tuple(
      dict(p, bias=0.3 * jax.random.normal(jax.random.PRNGKey(10 + k), p["bias"].shape))
      for k, p in enumerate(params.blocks))
  return model, params._replace(blocks=blocks)


# ---- NumPy transcription of the paper / Matlab equations ----------------------------------------


def np_embed(x, labels, value=1.0):
  x = np.array(x, np.float64)
  x[:, :C] = 0.0
  x[np.arange(len(x)), labels] = value
  return x


def np_normalize(x, eps=1e-8):
  return x / (np.sqrt(np.mean(x**2, axis=1, keepdims=True)) + eps)


def np_layers(params, x):
  """Per layer: (normalized input, post-ReLU activities)."""
  layers = []
  for p in params.blocks:
    xn = np_normalize(x)
    w, b = np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)
    h = np.maximum(0.0, xn @ w + b)
    layers.append((xn, h))
    x = h
  return layers


def np_softplus(z):
  return np.logaddexp(0.0, z)


def np_layer_objectives(params, batch, threshold=None, temperature=1.0):
  pos = np_layers(params, np_embed(batch["x"], batch["y"]))
  neg = np_layers(params, np_embed(batch["x"], batch["y_neg"]))
  losses = []
  for (_, hp), (_, hn) in zip(pos, neg):
    theta = hp.shape[1] if threshold is None else threshold
    gp, gn = np.sum(hp**2, 1), np.sum(hn**2, 1)
    losses.append(np.mean(np_softplus(-(gp - theta) / temperature))
                  + np.mean(np_softplus((gn - theta) / temperature)))
  return np.array(losses)


def np_predict_scores(params, x, first=1):
  scores = np.zeros((len(x), C))
  for label in range(C):
    layers = np_layers(params, np_embed(x, np.full(len(x), label)))
    scores[:, label] = sum(np.sum(h**2, 1) for _, h in layers[first:])
  return scores


# ---- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold, temperature", [(None, 1.0), (2.5, 1.0), (None, 3.0)])
def test_layer_objectives_match_numpy_transcription(threshold, temperature):
  rule = local.ForwardForward(C, threshold=threshold, temperature=temperature)
  model, params = make(rule)
  batch = make_batch(1)
  losses = jax.jit(lambda p: local.block_losses(model, rule, p, (), batch, None)[0])(params)
  np.testing.assert_allclose(losses, np_layer_objectives(params, batch, threshold, temperature),
                             rtol=2e-5)


def test_gradient_matches_the_matlab_update_rule():
  # ffnew.m ascends sum_pos log p + sum_neg log(1 - p), p = logistic(G - theta), dividing by the
  # batch size; its dC/d(total input) is (1 - p) h on positives and -p h on negatives, i.e. half
  # the exact derivative (d h^2 = 2 h dh). Our gradient descends the negated objective, so it
  # equals -2 x (the Matlab weight gradient).
  rule = local.ForwardForward(C)
  model, params = make(rule)
  batch = make_batch(2)
  grads = jax.jit(jax.grad(lambda p: local.local_loss(model, rule, p, (), batch, None)[0]))(params)
  pos = np_layers(params, np_embed(batch["x"], batch["y"]))
  neg = np_layers(params, np_embed(batch["x"], batch["y_neg"]))
  n = len(batch["x"])
  for k, ((xp, hp), (xn, hn)) in enumerate(zip(pos, neg)):
    logistic = lambda h: 1.0 / (1.0 + np.exp(-(np.sum(h**2, 1) - h.shape[1])))
    din_pos = (1.0 - logistic(hp))[:, None] * hp
    din_neg = -logistic(hn)[:, None] * hn
    matlab_dw = (xp.T @ din_pos + xn.T @ din_neg) / n
    matlab_db = (din_pos.sum(0) + din_neg.sum(0)) / n
    np.testing.assert_allclose(grads.blocks[k]["kernel"], -2 * matlab_dw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads.blocks[k]["bias"], -2 * matlab_db, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("first", [0, 1, 2])
def test_prediction_matches_numpy_goodness_accumulation(first):
  rule = local.ForwardForward(C, first_scored_block=first)
  model, params = make(rule)
  x = make_batch(3, batch_size=11)["x"]
  want = np_predict_scores(params, x, first)
  np.testing.assert_allclose(rule.goodness_per_label(model, params, x), want, rtol=2e-5)
  np.testing.assert_array_equal(rule.predict(model, params, x), np.argmax(want, 1))


def test_default_prediction_skips_the_first_hidden_layer():
  rule = local.ForwardForward(C)
  model, params = make(rule)
  x = make_batch(4)["x"]
  all_layers = np_predict_scores(params, x, first=0)
  np.testing.assert_allclose(rule.goodness_per_label(model, params, x),
                             np_predict_scores(params, x, first=1), rtol=2e-5)
  assert not np.allclose(rule.goodness_per_label(model, params, x), all_layers)


def test_negative_labels_are_never_the_true_label_and_cover_the_others():
  labels = jnp.asarray(np.arange(20000) % C, jnp.int32)
  neg = np.asarray(local.sample_negative_labels(jax.random.PRNGKey(0), labels, C))
  assert neg.dtype == np.int32
  assert not np.any(neg == np.asarray(labels))
  for label in range(C):
    counts = np.bincount(neg[np.asarray(labels) == label], minlength=C)
    others = np.delete(counts, label)
    np.testing.assert_allclose(others / others.sum(), 1 / (C - 1), atol=0.03)  # uniform


def test_hard_negative_labels_follow_the_softmax_of_the_wrong_classes():
  labels = jnp.zeros(20000, jnp.int32)
  logits = jnp.tile(jnp.asarray([50.0, 0.0, np.log(3.0), -1e9]), (20000, 1))
  neg = np.asarray(local.sample_negative_labels(jax.random.PRNGKey(1), labels, C, logits))
  assert not np.any(neg == 0)  # even with an overwhelming logit for the true class
  counts = np.bincount(neg, minlength=C) / len(neg)
  np.testing.assert_allclose(counts, [0.0, 0.25, 0.75, 0.0], atol=0.02)


def test_prepared_data_is_positive_then_negative_with_a_wrong_label():
  rule = local.ForwardForward(C)
  batch = make_batch(5, batch_size=200)
  del batch["y_neg"]  # sampled by the rule
  ctx = local.LocalContext(batch, (), jax.random.PRNGKey(3))
  signal = np.asarray(rule.prepare(ctx))
  assert signal.shape == (400, FEATURES)
  pos_labels, neg_labels = signal[:200, :C].argmax(1), signal[200:, :C].argmax(1)
  np.testing.assert_array_equal(pos_labels, batch["y"])
  assert not np.any(neg_labels == np.asarray(batch["y"]))
  np.testing.assert_allclose(signal[:, :C].sum(1), 1.0)  # exactly one label unit on
  np.testing.assert_array_equal(signal[:200, C:], batch["x"][:, C:])  # the rest is the image
  np.testing.assert_array_equal(signal[200:, C:], batch["x"][:, C:])


def test_normalization_and_goodness_precision():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 16)), jnp.bfloat16)
  y = local.rms_normalize(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.mean(np.asarray(y, np.float32) ** 2, 1), 1.0, rtol=2e-2)
  g = local.goodness(x)
  assert g.dtype == jnp.float32
  np.testing.assert_allclose(g, np.sum(np.asarray(x, np.float32) ** 2, 1), rtol=1e-6)
  np.testing.assert_array_equal(local.rms_normalize(jnp.zeros((2, 5))), 0.0)  # no NaN at zero


def test_hyperparameters_can_be_vmapped():
  model, params = make(local.ForwardForward(C))
  batch = make_batch(6)

  def loss(threshold, temperature):
    rule = local.ForwardForward(C, threshold=threshold, temperature=temperature)
    return local.local_loss(model, rule, params, (), batch, None)[0]

  thresholds, temperatures = jnp.asarray([1.0, 4.0, 9.0]), jnp.asarray([0.5, 1.0, 2.0])
  batched = jax.jit(jax.vmap(loss))(thresholds, temperatures)
  for i in range(3):
    want = np_layer_objectives(params, batch, float(thresholds[i]), float(temperatures[i])).sum()
    np.testing.assert_allclose(batched[i], want, rtol=2e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=2.5), "num_classes"),
        (dict(threshold=0.0), "threshold"),
        (dict(threshold=float("nan")), "threshold"),
        (dict(temperature=-1.0), "temperature"),
        (dict(label_value=0.0), "label_value"),
        (dict(eps=0.0), "eps"),
        (dict(first_scored_block=-1), "first_scored_block"),
        (dict(first_scored_block=True), "first_scored_block"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    local.ForwardForward(**kwargs)


def test_invalid_shapes_raise():
  rule = local.ForwardForward(C, first_scored_block=3)
  model, params = make(local.ForwardForward(C))
  with pytest.raises(ValueError, match="first_scored_block"):
    rule.goodness_per_label(model, params, make_batch()["x"])
  with pytest.raises(ValueError, match="features"):
    local.embed_label(jnp.zeros((2, C - 1)), jnp.zeros(2, jnp.int32), C)
