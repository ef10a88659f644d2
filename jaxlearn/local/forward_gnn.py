r"""ForwardGNN: forward learning of graph neural networks, layer by layer, with virtual class nodes.

Park et al., "Forward Learning of Graph Neural Networks", ICLR 2024 (arXiv:2403.11004). The
equations below are the official code's (github.com/facebookresearch/forwardgnn,
`src/forward_learning/nodeclass/gnn_sf.py`, `gnn_top2loss_sf.py`, `exp/nodeclass/*.sh`).

**Virtual class nodes.** The graph (N real nodes) gets C virtual nodes, one per class, with
features drawn once from N(0, 1) (PyTorch's `nn.Embedding` default) and kept fixed. Every
*training* node i is joined to the virtual node of its class y_i, in both directions by default
(`bidirectional=False`: only the edge from the real node to the virtual one).

**Single forward (SF).** Layer k maps the previous layer's (detached) node states H by

.. math::

   \bar H = \mathrm{diag}(\lVert H_{i\cdot} \rVert_2 + 10^{-8})^{-1} H, \qquad
   H' = \mathrm{ReLU}(\mathrm{conv}(\bar H)),

with a GCN convolution :math:`\hat A \bar H W + b`,
:math:`\hat A = D^{-1/2}(A + I)D^{-1/2}` (`gcn_normalize`), or a mean-aggregation SAGE
convolution :math:`\mathrm{mean}_{j \in N(i)} \bar H_j W_1 + b + \bar H_i W_2`
(`mean_aggregation`). Its objective is the cross-entropy of the similarities between the
training nodes' and the virtual nodes' new states,

.. math::

   z_{ic} = \langle H'_i, H'_{N+c} \rangle / \tau, \qquad
   L_k = \frac{1}{|\mathcal{T}|} \sum_{i \in \mathcal{T}} -\log \mathrm{softmax}(z_i)_{y_i},

:math:`\tau = 1`. Layers are trained greedily (`jaxlearn.local.greedy_train`): layer k alone with
Adam (lr 1e-3, coupled L2 weight decay 5e-4: PyTorch Adam's `weight_decay`) for up to 1000
epochs, validating every 2 epochs and stopping after 100 validations without improvement, its best
parameters restored; then layer k+1 starts on its outputs. A prediction sums each layer's class
probabilities :math:`\mathrm{softmax}(z_i)` over the layers trained so far and takes the argmax.

**Top-down (`ForwardGNNTopDown`, the official `top2loss` variant).** The rule state holds node
states :math:`S_0 = \bar X, S_{k+1} = \overline{H_k}` from the previous time step (initialized by
one bottom-up pass :math:`H_{k+1} = f_k(H_k)` without normalization, whose outputs are then
normalized). At every step each layer reads the previous step's state,
:math:`H'_k = \mathrm{ReLU}(\mathrm{conv}(S_k))` (no normalization inside the layer), and its
objective is the same cross-entropy of the mean of its own new output and the previous step's
(detached) states of the layers above the next one,

.. math::

   E_k = \mathrm{mean}(H'_k, S_{k+2}, \ldots, S_K),

then every state is replaced, :math:`S_{k+1} \leftarrow \overline{H'_k}`. All layers train at
every step (gradient norm clipped to 1 per layer), with early stopping on the whole model.
Prediction: one bottom-up pass for the states, then the sum over layers of
:math:`\mathrm{softmax}` of the similarities of :math:`E_k`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import _checks
from jaxlearn import registry
from jaxlearn.local.framework import (
    Block,
    LocalContext,
    LocalModel,
    LocalParams,
    LocalRule,
    per_block_optimizer,
)

__all__ = [
    "ForwardGNN",
    "ForwardGNNTopDown",
    "forward_gnn_batch",
    "forward_gnn_optimizer",
    "add_virtual_nodes",
    "gcn_normalize",
    "mean_aggregation",
    "gcn_layer",
    "sage_layer",
    "l2_normalize_rows",
]

PyTree = Any


def gcn_normalize(adjacency: jax.Array) -> jax.Array:
  r""":math:`D^{-1/2}(A + I)D^{-1/2}` with D the row sums of A + I (rows receive messages).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import gcn_normalize
    >>> print(gcn_normalize(jnp.array([[0.0, 1.0], [1.0, 0.0]])))
    [[0.5 0.5]
     [0.5 0.5]]
  """
  a = jnp.asarray(adjacency, jnp.float32)
  a = a + jnp.eye(a.shape[0], dtype=a.dtype)
  degree = jnp.sum(a, axis=1)
  return a / jnp.sqrt(degree[:, None] * degree[None, :])


def mean_aggregation(adjacency: jax.Array) -> jax.Array:
  """A / (row sums of A): row i averages node i's neighbours (zero rows stay zero).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import mean_aggregation
    >>> print(mean_aggregation(jnp.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])))
    [[0.  0.5 0.5]
     [1.  0.  0. ]
     [0.  0.  0. ]]
  """
  a = jnp.asarray(adjacency, jnp.float32)
  degree = jnp.sum(a, axis=1, keepdims=True)
  return a / jnp.where(degree > 0, degree, 1.0)


def l2_normalize_rows(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """x / (||x_i||_2 + eps) per row (node), in float32, returned in x's dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import l2_normalize_rows
    >>> print(l2_normalize_rows(jnp.array([[3.0, 4.0]])))
    [[0.6 0.8]]
  """
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
  return (x32 / (norm + eps)).astype(x.dtype)


def add_virtual_nodes(
    features: jax.Array,
    adjacency: jax.Array,
    labels: jax.Array,
    train_mask: jax.Array,
    num_classes: int,
    *,
    key: jax.Array,
    bidirectional: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Appends C virtual class nodes (features ~ N(0, 1)) linked to the training nodes of each class.

  Args:
    features: (N, F) node features.
    adjacency: (N, N); entry (i, j) = 1 for an edge that sends node j's message to node i.
    labels: (N,) int classes.
    train_mask: (N,) bool: the nodes linked to their class's virtual node.
    num_classes: C.
    key: draws the virtual nodes' features.
    bidirectional: edges in both directions (the official default); else real -> virtual only.

  Returns:
    `(features (N + C, F), adjacency (N + C, N + C))`; virtual node c is node N + c.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import add_virtual_nodes
    >>> x, a = add_virtual_nodes(jnp.ones((3, 2)), jnp.zeros((3, 3)), jnp.array([0, 1, 1]),
    ...                          jnp.array([True, True, False]), 2, key=jax.random.key(0))
    >>> x.shape, a[3:, :3].tolist()  # node 0 -> class 0's node, node 1 -> class 1's
    ((5, 2), [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  """
  _checks.check_positive_int("num_classes", num_classes)
  _checks.check_bool("bidirectional", bidirectional)
  features = jnp.asarray(features, jnp.float32)
  n = features.shape[0]
  adjacency = jnp.asarray(adjacency, jnp.float32)
  if adjacency.shape != (n, n):
    raise ValueError(f"adjacency must have shape ({n}, {n}), got {adjacency.shape}")
  virtual = jax.random.normal(key, (num_classes, features.shape[1]), jnp.float32)
  # link[c, i] = 1 if training node i has class c.
  link = (jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
          * jnp.asarray(train_mask, jnp.float32)[:, None]).T
  top = jnp.concatenate([adjacency, link.T if bidirectional else jnp.zeros_like(link.T)], 1)
  bottom = jnp.concatenate([link, jnp.zeros((num_classes, num_classes), jnp.float32)], 1)
  return jnp.concatenate([features, virtual], 0), jnp.concatenate([top, bottom], 0)


def forward_gnn_batch(graph, conv: str = "gcn", *, key: jax.Array,
                      bidirectional: bool = True) -> dict[str, jax.Array]:
  """The batch pytree the ForwardGNN rules read, from a `jaxlearn.data.Graph`.

  Returns `{'x': (N + C, F) features with the virtual nodes, 'prop': the (N + C, N + C)
  propagation matrix of `conv` ('gcn': `gcn_normalize`, 'sage': `mean_aggregation`), 'y',
  'train_mask', 'val_mask', 'test_mask'}` (labels and masks for the N real nodes).

  Example:
    >>> import jax
    >>> from jaxlearn.data import stochastic_block_model
    >>> from jaxlearn.local import forward_gnn_batch
    >>> batch = forward_gnn_batch(stochastic_block_model(num_nodes=30), key=jax.random.key(0))
    >>> batch["x"].shape, batch["prop"].shape  # 3 virtual class nodes appended
    ((33, 16), (33, 33))
  """
  _checks.check_choice("conv", conv, ("gcn", "sage"))
  x, a = add_virtual_nodes(graph.features, graph.adjacency, graph.labels, graph.train_mask,
                           graph.num_classes, key=key, bidirectional=bidirectional)
  prop = gcn_normalize(a) if conv == "gcn" else mean_aggregation(a)
  return {
      "x": x,
      "prop": prop,
      "y": jnp.asarray(graph.labels, jnp.int32),
      "train_mask": jnp.asarray(graph.train_mask),
      "val_mask": jnp.asarray(graph.val_mask),
      "test_mask": jnp.asarray(graph.test_mask),
  }


def gcn_layer(features: int, activation=linen.relu) -> Block:
  """`activation(prop @ (x @ W) + b)` on input `(x, prop)`; W Glorot-uniform, b = 0 (PyG GCNConv).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import gcn_layer
    >>> layer = gcn_layer(4)
    >>> inputs = (jnp.ones((5, 3)), jnp.eye(5))
    >>> params = layer.init(jax.random.key(0), inputs)
    >>> layer.apply(params, inputs).shape
    (5, 4)
  """
  _checks.check_positive_int("features", features)

  def init(key, inputs):
    x = inputs[0]
    return {"kernel": linen.initializers.glorot_uniform()(key, (x.shape[-1], features)),
            "bias": jnp.zeros((features,), jnp.float32)}

  def apply(params, inputs):
    x, prop = inputs
    out = prop @ (x @ params["kernel"].astype(x.dtype)) + params["bias"].astype(x.dtype)
    return out if activation is None else activation(out)

  return Block(init, apply)


def sage_layer(features: int, activation=linen.relu) -> Block:
  """`activation(mean @ x @ W1 + b + x @ W2)` on input `(x, mean)` (PyG SAGEConv, mean aggr).

  Weights and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's Linear default).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import sage_layer
    >>> layer = sage_layer(4)
    >>> inputs = (jnp.ones((5, 3)), jnp.eye(5))
    >>> params = layer.init(jax.random.key(0), inputs)
    >>> sorted(params), layer.apply(params, inputs).shape
    (['bias', 'kernel_neighbors', 'kernel_root'], (5, 4))
  """
  _checks.check_positive_int("features", features)
  uniform = linen.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

  def init(key, inputs):
    x = inputs[0]
    k1, k2, k3 = jax.random.split(key, 3)
    fan_in = x.shape[-1]
    bound = 1.0 / np.sqrt(fan_in)
    return {"kernel_neighbors": uniform(k1, (fan_in, features)),
            "bias": jax.random.uniform(k2, (features,), jnp.float32, -bound, bound),
            "kernel_root": uniform(k3, (fan_in, features))}

  def apply(params, inputs):
    x, mean = inputs
    out = ((mean @ x) @ params["kernel_neighbors"].astype(x.dtype)
           + params["bias"].astype(x.dtype) + x @ params["kernel_root"].astype(x.dtype))
    return out if activation is None else activation(out)

  return Block(init, apply)


def forward_gnn_optimizer(
    learning_rate: float = 1e-3, weight_decay: float = 5e-4, max_norm: float | None = None
) -> optax.GradientTransformationExtraArgs:
  """The official per-layer optimizer: PyTorch Adam with coupled L2 `weight_decay` (added to the
  gradient before Adam, not AdamW), after per-layer gradient-norm clipping to `max_norm` (the
  top-down variant: 1.0), one independent copy per layer (`per_block_optimizer`).

  Example:
    >>> from jaxlearn.local import forward_gnn_optimizer
    >>> optimizer = forward_gnn_optimizer(max_norm=1.0)  # as the top-down variant
  """
  _checks.check_non_negative("weight_decay", weight_decay)
  if max_norm is not None:
    _checks.check_positive("max_norm", max_norm)
  parts = [] if max_norm is None else [optax.clip_by_global_norm(max_norm)]
  parts += [optax.add_decayed_weights(weight_decay), optax.adam(learning_rate)]
  return per_block_optimizer(optax.chain(*parts))


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = jnp.asarray(mask, values.dtype)
  return jnp.sum(values * mask) / jnp.sum(mask)


@dataclasses.dataclass(frozen=True)
class ForwardGNN(LocalRule):
  """ForwardGNN's single-forward rule (SF) with virtual class nodes (module docstring).

  Batches: `forward_gnn_batch(graph, conv, key=...)`: 'x' (N + C, F) with the C virtual nodes
  last, 'prop' the convolution's propagation matrix, 'y' and 'train_mask' for the N real nodes.
  Blocks: `gcn_layer` / `sage_layer` (input `(x, prop)`).

  Attributes:
    num_classes: C (>= 2): the last C nodes of every state are the virtual nodes.
    temperature: tau > 0 dividing the similarities (default 1).
    eps: added to the row norm (default 1e-8).

  Example:
    >>> import jax, optax
    >>> from jaxlearn import local
    >>> from jaxlearn.data import stochastic_block_model
    >>> graph = stochastic_block_model(num_nodes=30)
    >>> batch = local.forward_gnn_batch(graph, key=jax.random.key(0))
    >>> model = local.LocalModel((local.gcn_layer(8), local.gcn_layer(8)))
    >>> rule = local.ForwardGNN(num_classes=3)
    >>> optimizer = local.forward_gnn_optimizer()
    >>> state = local.init_train_state(model, rule, optimizer, jax.random.key(1), batch)
    >>> state, metrics = local.local_train_step(model, rule, optimizer)(
    ...     state, batch, jax.random.key(2))
    >>> rule.predict(model, state.params, batch).shape  # one class per real node
    (30,)

  References:
    Park et al., `Forward Learning of Graph Neural Networks
    <https://arxiv.org/abs/2403.11004>`_, ICLR 2024. Official code:
    https://github.com/facebookresearch/forwardgnn
  """

  num_classes: int = 2
  _: dataclasses.KW_ONLY
  temperature: float = 1.0
  eps: float = 1e-8

  def __post_init__(self):
    _checks.check_positive_int("num_classes", self.num_classes)
    _checks.check_range("num_classes", self.num_classes, 2, None)
    _checks.check_positive("temperature", self.temperature)
    _checks.check_positive("eps", self.eps)

  def block_input(self, index: int, signal: jax.Array, ctx: LocalContext):
    del index
    return l2_normalize_rows(signal, self.eps), ctx.batch["prop"]

  def logits(self, states: jax.Array) -> jax.Array:
    """(N, C) similarities of the real nodes' states with the virtual nodes' states, / tau."""
    states = states.astype(jnp.promote_types(states.dtype, jnp.float32))
    real, virtual = states[:-self.num_classes], states[-self.num_classes:]
    return real @ virtual.T / self.temperature

  def loss_of_states(self, states: jax.Array, batch: PyTree) -> jax.Array:
    """The cross-entropy of the training nodes' similarities (float32)."""
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(self.logits(states), batch["y"])
    return _masked_mean(ce, batch["train_mask"])

  def block_loss(self, index: int, output: jax.Array, head, ctx: LocalContext) -> jax.Array:
    del index, head
    return self.loss_of_states(output, ctx.batch)

  def layer_probabilities(self, model: LocalModel, params: LocalParams, batch: PyTree):
    """(num_layers, N, C): every layer's softmax over the virtual-node similarities."""
    ctx = LocalContext(batch, None, None)
    outputs = model.outputs(params.blocks, self, ctx)
    return jnp.stack([jax.nn.softmax(self.logits(h), axis=-1) for h in outputs])

  def predict(self, model: LocalModel, params: LocalParams, batch: PyTree,
              num_layers: int | jax.Array | None = None) -> jax.Array:
    """argmax of the class probabilities summed over the first `num_layers` layers (default all;
    may be traced, as in a greedy phase's validation)."""
    probs = self.layer_probabilities(model, params, batch)
    if num_layers is not None:
      use = jnp.arange(probs.shape[0]) < num_layers
      probs = probs * use[:, None, None].astype(probs.dtype)
    return jnp.argmax(jnp.sum(probs, axis=0), axis=-1)

  def accuracy(self, model: LocalModel, params: LocalParams, batch: PyTree, mask: jax.Array,
               num_layers: int | jax.Array | None = None) -> jax.Array:
    """Accuracy of `predict` on the real nodes selected by `mask`.

    Example:
      >>> import jax
      >>> from jaxlearn import local
      >>> from jaxlearn.data import stochastic_block_model
      >>> batch = local.forward_gnn_batch(stochastic_block_model(num_nodes=30),
      ...                                 key=jax.random.key(0))
      >>> model, rule = local.LocalModel((local.gcn_layer(8),)), local.ForwardGNN(3)
      >>> params, _ = model.init(jax.random.key(1), rule, batch)
      >>> float(rule.accuracy(model, params, batch, batch["val_mask"])) <= 1.0
      True
    """
    correct = self.predict(model, params, batch, num_layers) == batch["y"]
    return _masked_mean(correct.astype(jnp.float32), mask)


@dataclasses.dataclass(frozen=True)
class ForwardGNNTopDown(ForwardGNN):
  """ForwardGNN's top-down variant (official `top2loss`): layers read the previous step's states.

  The rule state is the tuple of node states `(S_0, ..., S_K)` (module docstring): block k reads
  `S_k` (its `signal` is ignored), its objective averages its output with `S_{k+2}, ..., S_K`,
  and `update_state` replaces `S_{k+1}` by block k's normalized output of this step. With the
  state absent (`LocalModel.init`, prediction) the blocks run bottom-up on the raw outputs.
  Train all blocks at every step (no greedy phases), with `forward_gnn_optimizer(max_norm=1.0)`.

  Example:
    >>> import jax
    >>> from jaxlearn import local
    >>> from jaxlearn.data import stochastic_block_model
    >>> batch = local.forward_gnn_batch(stochastic_block_model(num_nodes=30),
    ...                                 key=jax.random.key(0))
    >>> model = local.LocalModel((local.gcn_layer(8), local.gcn_layer(8)))
    >>> rule = local.ForwardGNNTopDown(num_classes=3)
    >>> params, states = model.init(jax.random.key(1), rule, batch)
    >>> len(states)  # the input's state and one per layer
    3

  References:
    Park et al., `Forward Learning of Graph Neural Networks
    <https://arxiv.org/abs/2403.11004>`_, ICLR 2024. Official code:
    https://github.com/facebookresearch/forwardgnn
  """

  def block_input(self, index: int, signal: jax.Array, ctx: LocalContext):
    if ctx.state is None:  # the bottom-up pass: raw (unnormalized) outputs feed the next layer
      return signal, ctx.batch["prop"]
    return ctx.state[index], ctx.batch["prop"]

  def _states(self, x: jax.Array, outputs) -> tuple[jax.Array, ...]:
    return tuple(l2_normalize_rows(h, self.eps) for h in (x, *outputs))

  def init_state(self, key, outputs, batch, params=None):
    del key, params
    return self._states(batch["x"], outputs)

  def _embedding(self, index: int, output: jax.Array, states) -> jax.Array:
    above = [jax.lax.stop_gradient(s).astype(output.dtype) for s in states[index + 2:]]
    if any(s.shape != output.shape for s in above):
      raise ValueError(
          "ForwardGNNTopDown averages a layer's output with the states of the layers above: "
          f"every layer must have the same width, got {output.shape} and "
          f"{[s.shape for s in above]}")
    return jnp.mean(jnp.stack([output, *above]), axis=0)

  def block_loss(self, index: int, output: jax.Array, head, ctx: LocalContext) -> jax.Array:
    del head
    return self.loss_of_states(self._embedding(index, output, ctx.state), ctx.batch)

  def update_state(self, state, params, ctx: LocalContext):
    del params
    return (state[0],) + tuple(l2_normalize_rows(h, self.eps) for h in ctx.outputs)

  def layer_probabilities(self, model: LocalModel, params: LocalParams, batch: PyTree):
    """(num_layers, N, C), from one bottom-up pass of states (the official evaluation)."""
    bottom_up = model.outputs(params.blocks, self, LocalContext(batch, None, None))
    states = self._states(batch["x"], bottom_up)
    ctx = LocalContext(batch, states, None)
    probs = []
    for index, (block, block_params) in enumerate(zip(model.blocks, params.blocks)):
      output = block.apply(block_params, self.block_input(index, None, ctx))
      probs.append(jax.nn.softmax(self.logits(self._embedding(index, output, states)), -1))
    return jnp.stack(probs)


RECORD = registry.record(
    slug="forward_gnn",
    kind="local_rule",
    title="Forward Learning of Graph Neural Networks",
    reference="arXiv:2403.11004",
    experiment="forward_gnn_sbm",
    also=(
        "jaxlearn.local.greedy_train",
        "jaxlearn.local.per_block_optimizer",
    ),
    notes=(
        "Transcribed from the official code (facebookresearch/forwardgnn: gnn_sf.py, "
        "gnn_top2loss_sf.py, nodeclass-sf*.sh): virtual class nodes with N(0,1) features, "
        "bidirectional edges to the training nodes, row L2 normalization inside SF layers, "
        "similarity logits with tau = 1, greedy layer-wise training with Adam(1e-3) + coupled "
        "weight decay 5e-4, validation every 2 epochs, patience 100 validations, best layer "
        "restored, prediction by summed per-layer softmax. Deviations: dense adjacency "
        "matrices (PyG uses sparse edge lists; same math); GCN and mean-SAGE only (no GAT, no "
        "R-GCN); the node-classification setting only (no link prediction, no FF-style "
        "label-appending baselines); the top-down variant's bottom-up initialization is "
        "transcribed as in the code (raw outputs chained, then normalized), which differs "
        "from chaining normalized states. In a greedy phase the later (frozen) layers are "
        "still computed each step (their results are unused); the official code runs only the "
        "layer in training. Not verified: the paper's tables (the experiment uses a synthetic "
        "stochastic block model, not the paper's datasets)."
    ),
)
