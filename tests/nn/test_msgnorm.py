"""DeeperGCN's GENConv + MsgNorm against a NumPy edge-list transcription of the official code.

The reference loops over edges and scatters per target node, as the official
`GenMessagePassing.aggregate` (torch_scatter) does, instead of the dense masked form of the
implementation: message ReLU(x_j) + eps, softmax / power-mean / add / mean / max aggregation,
MsgNorm s·‖x‖·m/max(‖m‖, 1e-12), x' = MLP(x + m).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn.nn import linen as jnn_linen

RNG = np.random.default_rng(0)
NODES, FEATURES = 6, 3
# Directed edges j -> i (A[i, j] = 1); node 5 receives nothing (isolated as a target).
EDGES = [(1, 0), (2, 0), (3, 0), (0, 1), (4, 1), (0, 2), (5, 3), (2, 3), (3, 4), (1, 4), (0, 4)]
ADJACENCY = np.zeros((NODES, NODES), np.float32)
for _j, _i in EDGES:
  ADJACENCY[_i, _j] = 1.0
X = RNG.normal(size=(NODES, FEATURES)).astype(np.float32)


def reference_aggregate(messages, aggr, t=1.0, p=1.0):
  """Edge-list scatter aggregation, per target node (official GenMessagePassing.aggregate)."""
  out = np.zeros_like(messages, dtype=np.float64)
  for i in range(NODES):
    incoming = np.array([messages[j] for j, target in EDGES if target == i], np.float64)
    if aggr == "power":
      mean = np.zeros(FEATURES) if not len(incoming) else np.mean(
          np.clip(incoming, 1e-7, 10.0) ** p, axis=0)
      out[i] = np.clip(mean, 1e-7, 10.0) ** (1.0 / p)
      continue
    if not len(incoming):
      continue  # scatter leaves 0
    if aggr in ("softmax", "softmax_sg"):
      e = np.exp(t * incoming - np.max(t * incoming, axis=0))
      out[i] = np.sum(e / e.sum(axis=0) * incoming, axis=0)
    elif aggr == "add":
      out[i] = incoming.sum(axis=0)
    elif aggr == "mean":
      out[i] = incoming.mean(axis=0)
    elif aggr == "max":
      out[i] = incoming.max(axis=0)
  return out


def reference_msg_norm(x, m, s=1.0):
  return s * np.linalg.norm(x, axis=-1, keepdims=True) * m / np.maximum(
      np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)


@pytest.mark.parametrize("aggr,t,p", [("softmax", 2.0, 1.0), ("power", 1.0, 3.0), ("add", 1, 1),
                                      ("mean", 1, 1), ("max", 1, 1)])
def test_aggregators_match_the_edge_list_reference(aggr, t, p):
  messages = np.maximum(X, 0) + 1e-7
  aggregate = jax.jit(jnn.aggregate_messages, static_argnames="aggr")  # one program, not per op
  got = aggregate(jnp.asarray(messages), ADJACENCY, aggr=aggr, t=t, p=p)
  np.testing.assert_allclose(got, reference_aggregate(messages, aggr, t, p), rtol=2e-5, atol=1e-6)


def test_msg_norm_rescales_messages_to_the_feature_norm():
  m = RNG.normal(size=(NODES, FEATURES)).astype(np.float32)
  m[2] = 0.0  # a zero message stays zero (the 1e-12 floor), no NaN
  got = jax.jit(jnn.msg_norm)(jnp.asarray(X), jnp.asarray(m), 0.7)
  np.testing.assert_allclose(got, reference_msg_norm(X, m, 0.7), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.linalg.norm(got[0]), 0.7 * np.linalg.norm(X[0]), rtol=1e-5)
  assert np.all(np.asarray(got[2]) == 0)


def test_genconv_forward_matches_reference_in_nnx_and_linen():
  # Built under nnx.jit: an eager random initializer compiles every primitive separately.
  conv = nnx.jit(lambda: jnn.GENConv(FEATURES, 4, msg_norm=True, mlp_layers=2, t=1.5,
                                     rngs=nnx.Rngs(1)))()
  conv.msg_scale[...] = jnp.asarray(0.8)
  kernels = [np.asarray(conv.linear_0.kernel[...]), np.asarray(conv.linear_1.kernel[...])]
  biases = [RNG.normal(size=(2 * FEATURES,)), RNG.normal(size=(4,))]
  conv.linear_0.bias[...] = jnp.asarray(biases[0], jnp.float32)
  conv.linear_1.bias[...] = jnp.asarray(biases[1], jnp.float32)

  m = reference_aggregate(np.maximum(X, 0) + 1e-7, "softmax", t=1.5)
  h = X + reference_msg_norm(X, m, 0.8)
  expected = np.maximum(h @ kernels[0] + biases[0], 0) @ kernels[1] + biases[1]
  got = jax.jit(lambda x: conv(x, adjacency=ADJACENCY))(jnp.asarray(X))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

  params = nnx.to_pure_dict(nnx.state(conv, nnx.Param))
  linen_conv = jnn_linen.GENConv(4, msg_norm=True, mlp_layers=2, t=1.5, adjacency=ADJACENCY)
  np.testing.assert_allclose(jax.jit(linen_conv.apply)({"params": params}, jnp.asarray(X)), got,
                             rtol=1e-6, atol=1e-6)


def test_softmax_weights_get_gradients_only_when_t_is_learned():
  """Official: the softmax weights are computed under no_grad unless learn_t (softmax_sg: never)."""
  messages = jnp.asarray(np.abs(X) + 0.1)
  loss = lambda m, t, learn_t, aggr: jnp.sum(
      jnn.aggregate_messages(m, ADJACENCY, aggr=aggr, t=t, learn_t=learn_t) ** 2)
  # Frozen weights: d/dm_j of sum_i (sum_j w_ij m_j)^2 = sum_i 2 out_i w_ij (w constant).
  out = reference_aggregate(np.asarray(messages), "softmax", t=2.0)
  weights = np.zeros((NODES, NODES, FEATURES))
  for i in range(NODES):
    senders = [j for j, target in EDGES if target == i]
    e = np.exp(2.0 * np.asarray(messages)[senders])
    weights[i, senders] = e / e.sum(axis=0)
  expected = np.einsum("ic,ijc->jc", 2 * out, weights)
  grad = jax.jit(jax.grad(loss, (0, 1)), static_argnums=(2, 3))
  frozen = grad(messages, 2.0, False, "softmax")[0]
  np.testing.assert_allclose(frozen, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grad(messages, 2.0, True, "softmax_sg")[0], frozen, rtol=1e-6)
  learned, grad_t = grad(messages, 2.0, True, "softmax")
  assert not np.allclose(learned, frozen, rtol=1e-3) and abs(float(grad_t)) > 0


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="aggr"):
    jnn.GENConv(3, 3, aggr="median", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="p must"):
    jnn.GENConv(3, 3, aggr="power", p=0.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="t must"):
    jnn.GENConv(3, 3, t=float("nan"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="learn_t applies"):
    jnn.GENConv(3, 3, aggr="power", learn_t=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="mlp_layers"):
    jnn.GENConv(3, 3, mlp_layers=0, rngs=nnx.Rngs(0))
  conv = nnx.jit(lambda: jnn.GENConv(FEATURES, 2, rngs=nnx.Rngs(0)))()
  with pytest.raises(ValueError, match="expects an adjacency"):
    conv(jnp.asarray(X))
  with pytest.raises(ValueError, match="expects an adjacency of shape"):
    conv(jnp.asarray(X), adjacency=np.ones((NODES + 1, NODES + 1)))
