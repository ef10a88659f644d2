r"""DeeperGCN: the generalized graph convolution GENConv with message normalization (MsgNorm).

Paper: Li, Xiong, Thabet and Ghanem, "DeeperGCN: All You Need to Train Deeper GCNs",
arXiv:2006.07739. Official code: github.com/lightaime/deep_gcns_torch (`gcn_lib/sparse/
torch_message.py`: `GenMessagePassing`, `MsgNorm`; `gcn_lib/sparse/torch_vertex.py`: `GENConv`;
`examples/ogb/*/model.py`: the res+ block). The equations below were read from the official code.

Graphs are dense: node features x of shape (..., N, C) and an adjacency A of shape (N, N) (or
broadcastable to (..., N, N)) with A_ij ≠ 0 when node i receives a message from node j (for an
undirected graph A is symmetric). Entries are used as a 0/1 mask: edge weights are ignored, as in
the official code, which takes an edge list. Self loops are whatever A contains.

**Messages.** Every neighbour j of i sends (no edge features)

.. math::

   m_{j} = \mathrm{ReLU}(x_j) + \epsilon, \qquad \epsilon = 10^{-7}.

**Aggregators** (`aggr`), per feature c, over the neighbourhood N(i):

* ``"softmax"``: :math:`\sum_{j\in N(i)} w_{ijc} m_{jc}`, with
  :math:`w_{ijc} = \exp(t\,m_{jc}) / \sum_{k\in N(i)} \exp(t\,m_{kc})`. As in the official code the
  weights are computed WITHOUT gradient unless the inverse temperature t is learned
  (`learn_t=True`); ``"softmax_sg"`` always stops the gradient through the weights.
* ``"power"``: :math:`\big(\operatorname{clip}(\frac{1}{|N(i)|}\sum_{j\in N(i)}
  \operatorname{clip}(m_{jc})^p)\big)^{1/p}` with clip to [1e-7, 10] on both sides (official);
  p is learned if `learn_p`.
* ``"add"``, ``"mean"``, ``"max"``: sum, mean, maximum over N(i).

A node without neighbours aggregates 0 (the scatter convention of the official code; the power
mean then gives :math:`(10^{-7})^{1/p}` because of the clip).

**MsgNorm** (official `MsgNorm.forward`, with p = 2):

.. math::

   \mathrm{MsgNorm}(x_i, m_i) = s\,\lVert x_i\rVert_2\,\frac{m_i}{\max(\lVert m_i\rVert_2,
   10^{-12})},

with one scalar s initialized to 1, trained only if `learn_msg_scale` (otherwise the constant 1).

**GENConv**: :math:`x_i' = \mathrm{MLP}(x_i + \mathrm{MsgNorm}(x_i, m_i))` (without MsgNorm:
:math:`\mathrm{MLP}(x_i + m_i)`). The MLP has `mlp_layers` linear layers of widths C → 2C → … →
out; hidden layers are followed by a ReLU.

**res+ block** (official `DeeperGCN.forward`, `block='res+'`): h = conv_0(h); then for every
later layer h = conv_l(ReLU(norm(h))) + h; finally ReLU(norm(h)). It is a stacking convention
(see `experiments/msgnorm_deep_gcn.py`), not a layer here.

Deviations: the official MLP puts its `norm` (batch norm by default) between each hidden linear
layer and its ReLU; here hidden layers have no normalization (the default `mlp_layers=1`, the
official ogbn-arxiv default, has no hidden layer, so no difference there). The ``softmax_sum`` /
``power_sum`` aggregators (degree scaling by deg^sigmoid(y)) and edge features are not
implemented. The softmax and max aggregators form an (..., N, N, C) array: this dense form is for
small graphs.

Numerics: messages, aggregation and MsgNorm in float32 (>= float32 for float64 inputs); the output
has `dtype` (default: the input's dtype). The norms in MsgNorm have gradient 0 at the zero vector
(as torch's `norm`), so an isolated node (zero aggregate) or an all-zero feature row gives no NaN.

Public API: the pure functions `msg_norm`, `aggregate_messages` and `gen_conv_message`; the NNX
layer `GENConv` and the Linen layer `LinenGENConv` (exported as `jaxlearn.nn.linen.GENConv`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive_int, check_range

__all__ = [
    "GENConv",
    "LinenGENConv",
    "msg_norm",
    "aggregate_messages",
    "gen_conv_message",
]

AGGREGATORS = ("softmax", "softmax_sg", "power", "add", "mean", "max")
MSG_NORM_EPSILON = 1e-12  # torch.nn.functional.normalize's default
POWER_CLIP = (1e-7, 1e1)  # the official power-mean clip
DEFAULT_MESSAGE_EPSILON = 1e-7


def _compute_dtype(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _norm(v: jax.Array) -> jax.Array:
  """The L2 norm over the last axis, with gradient 0 (not NaN) at the zero vector, as torch's."""
  squared = jnp.sum(jnp.square(v), axis=-1, keepdims=True)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def msg_norm(x: jax.Array, message: jax.Array, scale: Any = 1.0) -> jax.Array:
  r"""MsgNorm: rescales each node's aggregated message to the norm of its features.

  .. math::

     \mathrm{MsgNorm}(x_i, m_i) = s\,\lVert x_i\rVert_2\, m_i / \max(\lVert m_i\rVert_2, 10^{-12}),

  norms over the last (feature) axis.

  Args:
    x: node features, shape (..., C).
    message: aggregated messages, same shape as `x`.
    scale: the scalar s (learnable in `GENConv` when `learn_msg_scale`).

  Returns:
    The normalized messages, shape of `message`, dtype >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import msg_norm
    >>> msg_norm(jnp.array([[3.0, 4.0]]), jnp.array([[0.0, 2.0]]))
    Array([[0., 5.]], dtype=float32)
  """
  if x.shape != message.shape:
    raise ValueError(f"msg_norm expects `x` and `message` of one shape, got {x.shape} and "
                     f"{message.shape}")
  dtype = _compute_dtype(jnp.result_type(x, message))
  x = x.astype(dtype)
  message = message.astype(dtype)
  x_norm = _norm(x)
  m_norm = _norm(message)
  return jnp.asarray(scale, dtype) * x_norm * message / jnp.maximum(m_norm, MSG_NORM_EPSILON)


def aggregate_messages(
    messages: jax.Array,
    adjacency: jax.Array,
    *,
    aggr: str = "softmax",
    t: Any = 1.0,
    p: Any = 1.0,
    learn_t: bool = False,
) -> jax.Array:
  r"""Aggregates per-source-node messages over each node's in-neighbourhood (dense adjacency).

  Args:
    messages: m_j of shape (..., N, C): the message node j sends to every neighbour.
    adjacency: (N, N) or broadcastable to (..., N, N); A_ij ≠ 0 iff j sends to i.
    aggr: one of "softmax", "softmax_sg", "power", "add", "mean", "max" (module docstring).
    t: inverse temperature of the softmax aggregators.
    p: exponent of the power mean.
    learn_t: whether gradients flow through the softmax weights (official: only when t is
      learned; "softmax_sg" never).

  Returns:
    The aggregated messages, shape (..., N, C), dtype >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import aggregate_messages
    >>> m = jnp.array([[1.0], [2.0], [4.0]])
    >>> a = jnp.array([[0, 1, 1], [1, 0, 0], [0, 0, 0]])
    >>> aggregate_messages(m, a, aggr="mean")
    Array([[3.],
           [1.],
           [0.]], dtype=float32)
  """
  if aggr not in AGGREGATORS:
    raise ValueError(f"aggr must be one of {AGGREGATORS}, got {aggr!r}")
  if messages.ndim < 2:
    raise ValueError(f"aggregate_messages expects messages of rank >= 2 (..., nodes, features), "
                     f"got shape {messages.shape}")
  num_nodes = messages.shape[-2]
  adjacency = jnp.asarray(adjacency)
  if adjacency.ndim < 2 or adjacency.shape[-2:] != (num_nodes, num_nodes):
    raise ValueError(f"aggregate_messages expects an adjacency of shape (..., {num_nodes}, "
                     f"{num_nodes}) for {num_nodes} nodes, got shape {adjacency.shape}")
  dtype = _compute_dtype(messages.dtype)
  m = messages.astype(dtype)
  mask = adjacency != 0
  weights = mask.astype(dtype)
  degree = jnp.sum(weights, axis=-1, keepdims=True)  # (..., N, 1)

  if aggr == "add":
    return weights @ m
  if aggr == "mean":
    return (weights @ m) / jnp.maximum(degree, 1.0)
  if aggr == "power":
    p = jnp.asarray(p, dtype)
    powered = jnp.clip(m, *POWER_CLIP) ** p
    mean = (weights @ powered) / jnp.maximum(degree, 1.0)
    return jnp.clip(mean, *POWER_CLIP) ** (1.0 / p)

  # (..., N_i, N_j, C): every receiver i sees the messages of every sender j.
  edge_mask = mask[..., :, :, None]
  senders = m[..., None, :, :]
  if aggr == "max":
    best = jnp.max(jnp.where(edge_mask, senders, -jnp.inf), axis=-2)
    return jnp.where(degree > 0, best, 0.0)
  logits = jnp.asarray(t, dtype) * senders
  shift = jax.lax.stop_gradient(jnp.max(jnp.where(edge_mask, logits, -jnp.inf), axis=-2,
                                        keepdims=True))
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  # exp(-inf) = 0 for non-edges, and its gradient is 0 too (no NaN through the unused branch).
  expo = jnp.exp(jnp.where(edge_mask, logits - shift, -jnp.inf))
  total = jnp.sum(expo, axis=-2, keepdims=True)
  softmax = expo / jnp.where(total > 0, total, 1.0)
  if aggr == "softmax_sg" or not learn_t:
    softmax = jax.lax.stop_gradient(softmax)
  return jnp.sum(softmax * senders, axis=-2)


def gen_conv_message(
    x: jax.Array,
    adjacency: jax.Array,
    *,
    aggr: str = "softmax",
    t: Any = 1.0,
    p: Any = 1.0,
    learn_t: bool = False,
    msg_scale: Any = None,
    eps: float = DEFAULT_MESSAGE_EPSILON,
) -> jax.Array:
  r"""The input of GENConv's MLP: x + MsgNorm(x, aggregate(ReLU(x) + eps)).

  Args:
    x: node features (..., N, C).
    adjacency: (N, N) or broadcastable to (..., N, N), A_ij ≠ 0 iff j sends to i.
    aggr, t, p, learn_t: see `aggregate_messages`.
    msg_scale: the MsgNorm scale s, or None for no MsgNorm.
    eps: added to the ReLU messages (official 1e-7).

  Returns:
    x + (normalized) aggregated messages, shape of `x`, dtype >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import gen_conv_message
    >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> h = gen_conv_message(x, jnp.array([[0, 1], [1, 0]]), aggr="add", eps=0.0, msg_scale=1.0)
    >>> print(h)
    [[1. 1.]
     [2. 2.]]
  """
  dtype = _compute_dtype(x.dtype)
  x32 = x.astype(dtype)
  messages = jax.nn.relu(x32) + eps
  aggregated = aggregate_messages(messages, adjacency, aggr=aggr, t=t, p=p, learn_t=learn_t)
  if msg_scale is not None:
    aggregated = msg_norm(x32, aggregated, msg_scale)
  return x32 + aggregated


def _check_config(aggr, t, p, mlp_layers, eps, learn_t=False, learn_p=False):
  if aggr not in AGGREGATORS:
    raise ValueError(f"aggr must be one of {AGGREGATORS}, got {aggr!r}")
  if learn_t and aggr != "softmax":
    raise ValueError(f"learn_t applies to aggr='softmax' only, got aggr={aggr!r}")
  if learn_p and aggr != "power":
    raise ValueError(f"learn_p applies to aggr='power' only, got aggr={aggr!r}")
  check_range("t", t)
  check_range("p", p)
  if float(p) == 0.0:
    raise ValueError("p must be a non-zero number (the power mean takes the 1/p-th root), got 0")
  check_positive_int("mlp_layers", mlp_layers)
  check_range("eps", eps, 0.0)


def _check_input(x: jax.Array, in_features: int | None) -> None:
  if x.ndim < 2:
    raise ValueError(f"GENConv expects node features of rank >= 2 (..., nodes, features), got "
                     f"shape {x.shape}")
  if in_features is not None and x.shape[-1] != in_features:
    raise ValueError(f"GENConv expects {in_features} features on the last axis, got shape "
                     f"{x.shape}")


def _resolve_adjacency(x, call_adjacency, stored_adjacency):
  adjacency = stored_adjacency if call_adjacency is None else call_adjacency
  if adjacency is None:
    raise ValueError("GENConv expects an adjacency: pass `adjacency` to the constructor or the "
                     "call")
  adjacency = jnp.asarray(adjacency)
  num_nodes = x.shape[-2]
  if adjacency.ndim < 2 or adjacency.shape[-2:] != (num_nodes, num_nodes):
    raise ValueError(f"GENConv expects an adjacency of shape (..., {num_nodes}, {num_nodes}) for "
                     f"inputs with {num_nodes} nodes, got shape {adjacency.shape}")
  return adjacency


def _widths(in_features: int, out_features: int, mlp_layers: int) -> list[int]:
  return [in_features] + [2 * in_features] * (mlp_layers - 1) + [out_features]


class Adjacency(nnx.Variable):
  """A fixed graph stored in an NNX `GENConv` (not a parameter: no optimizer touches it)."""


class GENConv(nnx.Module):
  r"""GENConv with optional MsgNorm (DeeperGCN, arXiv:2006.07739) as an NNX layer.

  x' = MLP(x + MsgNorm(x, aggregate(ReLU(x) + eps))); the math and the aggregators are in the
  module docstring. Parameters (`nnx.Param`): the MLP's `linear_<k>` layers; the scalars `t`
  (if `learn_t`), `p` (if `learn_p`) and `msg_scale` (if `msg_norm` and `learn_msg_scale`).
  Untrained scalars are constants. Defaults follow the official `GENConv` constructor, except
  `mlp_layers=1` (the official ogbn-arxiv default; see the module docstring).

  The graph is given at the call (`adjacency=`) or, for a fixed graph as in transductive node
  classification, to the constructor (stored as an `Adjacency` variable, float32); the call's
  wins.

  Args:
    in_features: C, the node feature size.
    out_features: the output feature size.
    aggr: "softmax" (default), "softmax_sg", "power", "add", "mean" or "max".
    t: the softmax inverse temperature (initial value if learned).
    learn_t: learn t (only with "softmax", else ValueError; then the softmax weights get
      gradients).
    p: the power-mean exponent (initial value if learned), non-zero.
    learn_p: learn p (only with "power", else ValueError).
    msg_norm: apply MsgNorm to the aggregated messages.
    learn_msg_scale: learn the MsgNorm scale s (initialized to 1).
    mlp_layers: number of linear layers of the MLP (>= 1).
    eps: added to the ReLU messages (official 1e-7).
    adjacency: an optional fixed (N, N) adjacency.
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    rngs: random keys for the MLP initialization.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> adjacency = jnp.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    >>> conv = jnn.GENConv(4, 8, msg_norm=True, rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((3, 4)), adjacency=adjacency).shape
    (3, 8)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      aggr: str = "softmax",
      t: float = 1.0,
      learn_t: bool = False,
      p: float = 1.0,
      learn_p: bool = False,
      msg_norm: bool = False,
      learn_msg_scale: bool = True,
      mlp_layers: int = 1,
      eps: float = DEFAULT_MESSAGE_EPSILON,
      adjacency: Any = None,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    _check_config(aggr, t, p, mlp_layers, eps, learn_t, learn_p)
    self.in_features = in_features
    self.out_features = out_features
    self.aggr = aggr
    self.learn_t = bool(learn_t)
    self.learn_p = bool(learn_p)
    self.msg_norm = bool(msg_norm)
    self.learn_msg_scale = bool(learn_msg_scale)
    self.mlp_layers = mlp_layers
    self.eps = eps
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.t = nnx.Param(jnp.full((), t, param_dtype)) if self.learn_t else float(t)
    self.p = nnx.Param(jnp.full((), p, param_dtype)) if self.learn_p else float(p)
    if self.msg_norm and self.learn_msg_scale:
      self.msg_scale = nnx.Param(jnp.ones((), param_dtype))
    else:
      self.msg_scale = 1.0 if self.msg_norm else None
    self.adjacency = (None if adjacency is None
                      else Adjacency(jnp.asarray(np.asarray(adjacency), jnp.float32)))
    widths = _widths(in_features, out_features, mlp_layers)
    for k in range(mlp_layers):
      setattr(self, f"linear_{k}", nnx.Linear(widths[k], widths[k + 1], param_dtype=param_dtype,
                                              rngs=rngs))

  def __call__(self, x: jax.Array, adjacency: jax.Array | None = None) -> jax.Array:
    """GENConv of node features `x` (..., N, C) over the graph (call's or constructor's)."""
    _check_input(x, self.in_features)
    stored = None if self.adjacency is None else self.adjacency[...]
    adjacency = _resolve_adjacency(x, adjacency, stored)
    value = lambda v: v[...] if isinstance(v, nnx.Variable) else v
    h = gen_conv_message(x, adjacency, aggr=self.aggr, t=value(self.t), p=value(self.p),
                         learn_t=self.learn_t, msg_scale=value(self.msg_scale), eps=self.eps)
    for k in range(self.mlp_layers):
      layer = getattr(self, f"linear_{k}")
      h = h @ layer.kernel[...].astype(h.dtype) + layer.bias[...].astype(h.dtype)
      if k < self.mlp_layers - 1:
        h = jax.nn.relu(h)
    return h.astype(x.dtype if self.dtype is None else self.dtype)


class LinenGENConv(linen.Module):
  """GENConv with optional MsgNorm as a Linen layer; exported as `jaxlearn.nn.linen.GENConv`.

  Same math and numbers as the NNX `GENConv`. Variables: `params` {linear_<k>: {kernel, bias};
  t, p, msg_scale when learned}. The input feature size is read from the input.

  Attributes:
    out_features: the output feature size.
    aggr, t, learn_t, p, learn_p, msg_norm, learn_msg_scale, mlp_layers, eps: as in `GENConv`.
    adjacency: an optional fixed (N, N) adjacency (the call's `adjacency` wins).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> conv = jnn_linen.GENConv(8, msg_norm=True)
    >>> x, adjacency = jnp.ones((3, 4)), jnp.ones((3, 3))
    >>> variables = conv.init(jax.random.key(0), x, adjacency)
    >>> conv.apply(variables, x, adjacency).shape
    (3, 8)
  """

  out_features: int
  aggr: str = "softmax"
  t: float = 1.0
  learn_t: bool = False
  p: float = 1.0
  learn_p: bool = False
  msg_norm: bool = False
  learn_msg_scale: bool = True
  mlp_layers: int = 1
  eps: float = DEFAULT_MESSAGE_EPSILON
  adjacency: Any = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array, adjacency: jax.Array | None = None) -> jax.Array:
    """GENConv of node features `x` (..., N, C) over the graph (call's or attribute's)."""
    check_positive_int("out_features", self.out_features)
    _check_config(self.aggr, self.t, self.p, self.mlp_layers, self.eps, self.learn_t,
                  self.learn_p)
    _check_input(x, None)
    in_features = x.shape[-1]
    if self.has_variable("params", "linear_0"):
      _check_input(x, self.get_variable("params", "linear_0")["kernel"].shape[0])
    stored = None if self.adjacency is None else jnp.asarray(np.asarray(self.adjacency),
                                                             jnp.float32)
    adjacency = _resolve_adjacency(x, adjacency, stored)
    learn_t, learn_p = bool(self.learn_t), bool(self.learn_p)
    constant = lambda value: (lambda key, shape, dtype: jnp.full(shape, value, dtype))
    t = self.param("t", constant(self.t), (), self.param_dtype) if learn_t else self.t
    p = self.param("p", constant(self.p), (), self.param_dtype) if learn_p else self.p
    msg_scale = None
    if self.msg_norm:
      msg_scale = (self.param("msg_scale", linen.initializers.ones, (), self.param_dtype)
                   if self.learn_msg_scale else 1.0)
    h = gen_conv_message(x, adjacency, aggr=self.aggr, t=t, p=p, learn_t=learn_t,
                         msg_scale=msg_scale, eps=self.eps)
    widths = _widths(in_features, self.out_features, self.mlp_layers)
    for k in range(self.mlp_layers):
      h = linen.Dense(widths[k + 1], dtype=h.dtype, param_dtype=self.param_dtype,
                      name=f"linear_{k}")(h)
      if k < self.mlp_layers - 1:
        h = jax.nn.relu(h)
    return h.astype(x.dtype if self.dtype is None else self.dtype)


RECORD = registry.record(
    slug="deepergcn_msgnorm",
    kind="layer",
    title="DeeperGCN: All You Need to Train Deeper GCNs",
    reference="arXiv:2006.07739",
    experiment="msgnorm_deep_gcn",
    notes=(
        "Equations read from the official code (lightaime/deep_gcns_torch: torch_message.py "
        "GenMessagePassing and MsgNorm, torch_vertex.py GENConv, the res+ ordering of "
        "examples/ogb/*/model.py), not re-derived from the paper's text. Dense adjacency (0/1 "
        "mask; the softmax and max aggregators build an (N, N, C) array: small graphs only). "
        "As in the official code, the softmax weights carry no gradient unless t is learned. "
        "Deviations: hidden MLP layers (mlp_layers > 1) have no batch norm (official: norm "
        "between linear and ReLU); softmax_sum/power_sum aggregators and edge features are not "
        "implemented; the res+ block is a stacking convention shown in the experiment, not a "
        "layer. The default mlp_layers is 1 (official ogbn-arxiv default), not the GENConv "
        "constructor's 2."
    ),
)
