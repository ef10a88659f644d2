"""ForwardGNN against a float64 NumPy transcription of the official code's edge-list computation.

The reference follows facebookresearch/forwardgnn (`gnn_sf.py`, `gnn_top2loss_sf.py`) and PyG's
GCNConv / SAGEConv message passing over an edge list (messages from `src` to `dst`, GCN degrees
counted at `dst` with self loops), independently of our dense propagation matrices.
"""

import jax
import numpy as np
import pytest

from jaxlearn import local
from jaxlearn.data import Graph
from tests.local._checks import assert_no_gradient_crosses_blocks
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")

N, C, F, WIDTH = 7, 2, 3, 4


def make_graph(seed=0):
  rng = np.random.default_rng(seed)
  upper = np.triu(rng.random((N, N)) < 0.4, 1)
  adjacency = (upper | upper.T).astype(np.float32)
  labels = np.array([0, 1, 0, 1, 1, 0, 0], np.int32)
  train = np.array([1, 1, 1, 0, 1, 0, 0], bool)
  val = np.array([0, 0, 0, 1, 0, 1, 0], bool)
  test = ~(train | val)
  return Graph(adjacency, rng.normal(size=(N, F)).astype(np.float32), labels, train, val, test, C)


def edge_list(graph, bidirectional=True):
  """PyG-style (src, dst) edges: the graph's edges and the virtual-node edges."""
  src, dst = np.nonzero(graph.adjacency.T)  # adjacency[dst, src] = 1
  train = np.nonzero(graph.train_mask)[0]
  virtual = N + graph.labels[train]
  edges = [(src, dst), (train, virtual)] + ([(virtual, train)] if bidirectional else [])
  return np.concatenate([e[0] for e in edges]), np.concatenate([e[1] for e in edges])


def gcn_conv(x, params, src, dst):
  n = x.shape[0]
  src, dst = np.concatenate([src, np.arange(n)]), np.concatenate([dst, np.arange(n)])
  deg = np.bincount(dst, minlength=n).astype(np.float64)
  norm = deg[src] ** -0.5 * deg[dst] ** -0.5
  xw = x @ np.asarray(params["kernel"], np.float64)
  out = np.zeros((n, xw.shape[1]))
  np.add.at(out, dst, norm[:, None] * xw[src])
  return out + np.asarray(params["bias"], np.float64)


def sage_conv(x, params, src, dst):
  n = x.shape[0]
  total = np.zeros_like(x)
  np.add.at(total, dst, x[src])
  count = np.bincount(dst, minlength=n)[:, None]
  mean = total / np.maximum(count, 1)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  return mean @ p["kernel_neighbors"] + p["bias"] + x @ p["kernel_root"]


def normalize(x):
  return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)


def similarity_ce(states, graph):
  logits = states[:N] @ states[N:].T
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  train = graph.train_mask
  return -logp[train, graph.labels[train]].mean(), np.exp(logp)


CONVS = {"gcn": (local.gcn_layer, gcn_conv), "sage": (local.sage_layer, sage_conv)}


@pytest.mark.parametrize("conv", ["gcn", "sage"])
def test_single_forward_losses_and_prediction_follow_the_official_code(conv):
  graph = make_graph()
  layer, reference_conv = CONVS[conv]
  batch = local.forward_gnn_batch(graph, conv, key=jax.random.PRNGKey(0))
  model = local.LocalModel((layer(WIDTH), layer(WIDTH)))
  rule = local.ForwardGNN(C)
  params, state = model.init(jax.random.PRNGKey(1), rule, batch)

  @jax.jit
  def run(params):
    losses, _ = local.block_losses(model, rule, params, state, batch, None)
    return losses, rule.predict(model, params, batch), rule.predict(model, params, batch, 1)

  losses, predicted, predicted_first = run(params)
  src, dst = edge_list(graph)
  h = np.asarray(batch["x"], np.float64)
  want, probs = [], []
  for block_params in params.blocks:
    h = np.maximum(reference_conv(normalize(h), block_params, src, dst), 0.0)
    loss, p = similarity_ce(h, graph)
    want.append(loss)
    probs.append(p)
  np.testing.assert_allclose(losses, want, rtol=1e-5)
  np.testing.assert_array_equal(predicted, np.argmax(probs[0] + probs[1], 1))
  np.testing.assert_array_equal(predicted_first, np.argmax(probs[0], 1))
  assert_no_gradient_crosses_blocks(model, rule, params, state, batch)


def test_top_down_step_follows_the_official_code():
  graph = make_graph(1)
  batch = local.forward_gnn_batch(graph, "gcn", key=jax.random.PRNGKey(0))
  model = local.LocalModel(tuple(local.gcn_layer(WIDTH) for _ in range(3)))
  rule = local.ForwardGNNTopDown(C)
  optimizer = local.forward_gnn_optimizer(learning_rate=0.05, max_norm=1.0)
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(1), batch)
  src, dst = edge_list(graph)
  conv = lambda x, p: np.maximum(gcn_conv(x, p, src, dst), 0.0)
  # Bottom-up initialization: raw outputs chained, states normalized.
  x = np.asarray(batch["x"], np.float64)
  raw = [x]
  for p in state.params.blocks:
    raw.append(conv(raw[-1], p))
  states = [normalize(h) for h in raw]
  for got, want in zip(state.rule_state, states):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # One time step: layer j reads S_j, averages with S_{j+2..K}; states become the new outputs.
  step = jax.jit(local.local_train_step(model, rule, optimizer))
  new, metrics = step(state, batch, jax.random.PRNGKey(2))
  want_losses, new_states = [], [states[0]]
  for j, p in enumerate(state.params.blocks):
    out = conv(states[j], p)
    embedding = np.mean(np.stack([out] + states[j + 2:]), axis=0)
    want_losses.append(similarity_ce(embedding, graph)[0])
    new_states.append(normalize(out))
  np.testing.assert_allclose(metrics["block_losses"], want_losses, rtol=1e-5)
  for got, want in zip(new.rule_state, new_states):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert_no_gradient_crosses_blocks(model, rule, state.params, state.rule_state, batch)
  # Prediction: a fresh bottom-up pass, then the summed per-layer probabilities.
  raw = [x]
  for p in new.params.blocks:
    raw.append(conv(raw[-1], p))
  states = [normalize(h) for h in raw]
  total = sum(similarity_ce(np.mean(np.stack([conv(states[j], p)] + states[j + 2:]), 0),
                            graph)[1] for j, p in enumerate(new.params.blocks))
  np.testing.assert_array_equal(jax.jit(lambda p: rule.predict(model, p, batch))(new.params),
                                np.argmax(total, 1))


def test_virtual_nodes_and_propagation_matrices():
  graph = make_graph(2)
  for bidirectional in (True, False):
    x, a = local.add_virtual_nodes(graph.features, graph.adjacency, graph.labels,
                                   graph.train_mask, C, key=jax.random.PRNGKey(0),
                                   bidirectional=bidirectional)
    src, dst = edge_list(graph, bidirectional)
    want = np.zeros((N + C, N + C))
    want[dst, src] = 1.0
    np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(x[:N], graph.features)
  a = want + want.T
  a_hat = np.asarray(local.gcn_normalize(a))
  d = (a + np.eye(N + C)).sum(1)
  np.testing.assert_allclose(a_hat, (a + np.eye(N + C)) / np.sqrt(np.outer(d, d)), rtol=1e-6)
  with pytest.raises(ValueError, match="conv"):
    local.forward_gnn_batch(graph, "gat", key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="num_classes"):
    local.ForwardGNN(1)
  with pytest.raises(ValueError, match="temperature"):
    local.ForwardGNN(2, temperature=0.0)
  with pytest.raises(ValueError, match="same width"):
    model = local.LocalModel((local.gcn_layer(4), local.gcn_layer(3), local.gcn_layer(3)))
    batch = local.forward_gnn_batch(graph, key=jax.random.PRNGKey(0))
    params, states = model.init(jax.random.PRNGKey(0), local.ForwardGNNTopDown(C), batch)
    local.block_losses(model, local.ForwardGNNTopDown(C), params, states, batch, None)
