r"""Mix-LN: Post-LN for the shallow transformer blocks, Pre-LN for the deep ones.

Paper: Li, Yin and Liu, "Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and
Post-LN", arXiv:2412.13795. Official code: pixeli99/MixLN (`peft_pretraining/modeling_llama.py`,
`NORM_TYPE=post_pre`, `POST_NUM`; `scripts/run_71m.sh`).

A LLaMA-style block has a causal multi-head self-attention A and a SwiGLU MLP F, each with a
residual connection and an RMSNorm N (a learned per-feature scale, no bias, ε = 1e-6):

.. math::

  N(h) = w \odot \frac{h}{\sqrt{\operatorname{mean}(h^2) + \epsilon}}.

* Post-LN block: :math:`h \leftarrow N_1(h + A(h))`, then :math:`h \leftarrow N_2(h + F(h))`.
* Pre-LN block: :math:`h \leftarrow h + A(N_1(h))`, then :math:`h \leftarrow h + F(N_2(h))`.

In an L-block Mix-LN stack the first ⌊αL⌋ blocks are Post-LN and the others Pre-LN (α =
`post_fraction`; the paper's default 0.25, the official 71M/12-block run sets POST_NUM = 3). A
final RMSNorm follows the last block (LLaMA's `model.norm`, present whatever the blocks are).
α = 0 is a Pre-LN stack, α = 1 a Post-LN one.

:math:`A(h) = \mathrm{softmax}(Q K^\top / \sqrt{d_h} + \text{causal mask}) V W_o` with
:math:`Q = h W_q`, ... split into heads; :math:`F(h) = (\mathrm{silu}(h W_g) \odot h W_u) W_d`.
No biases, as in LLaMA. Deviation: no rotary position embedding (the official model uses RoPE):
positions are the caller's business (e.g. learned embeddings added to the input). Kernels are
initialized N(0, 0.02²) (LLaMA's `initializer_range`), norm scales to one.

Parameters of a block (a flat mapping): `attention_norm` (d,), `query`, `key`, `value`, `out`
(d, d), `mlp_norm` (d,), `gate`, `up` (d, f), `down` (f, d). In Post-LN blocks `attention_norm` /
`mlp_norm` are applied after the residual additions (official `post_attention_layernorm` /
`post_feedforward_layernorm`), in Pre-LN blocks before the sub-layers (official
`input_layernorm` / `post_attention_layernorm`). A stack keeps every block parameter stacked
along a leading layer axis (L, ...) plus `final_norm` (d,).

Computation in float32 (>= float32), output in `dtype` (default: the input's dtype).

Public API: the pure functions `rms_normalize`, `num_post_ln_layers`, `mix_ln_layer_types`,
`mix_ln_block` and `mix_ln_transformer`; the NNX modules `MixLNBlock` and `MixLNTransformer`;
their Linen twins `LinenMixLNBlock`, `LinenMixLNTransformer` (exported from `jaxlearn.nn.linen`
without the prefix).

References:
  Li, P., Yin, L. and Liu, S. "Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN
  and Post-LN" (https://arxiv.org/abs/2412.13795), ICLR 2025. Official code:
  https://github.com/pixeli99/MixLN
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_bool, check_positive, check_positive_int, check_range

__all__ = [
    "MixLNTransformer",
    "MixLNBlock",
    "LinenMixLNBlock",
    "LinenMixLNTransformer",
    "mix_ln_block",
    "mix_ln_layer_types",
    "mix_ln_transformer",
    "num_post_ln_layers",
    "rms_normalize",
]

DEFAULT_POST_FRACTION = 0.25
DEFAULT_EPSILON = 1e-6
INIT_STD = 0.02
NORMS = ("attention_norm", "mlp_norm")
KERNELS = ("query", "key", "value", "out", "gate", "up", "down")
BLOCK_PARAMS = ("attention_norm", "query", "key", "value", "out", "mlp_norm", "gate", "up", "down")


def _block_shapes(features: int, hidden_features: int) -> dict[str, tuple[int, ...]]:
  d, f = features, hidden_features
  return {"attention_norm": (d,), "query": (d, d), "key": (d, d), "value": (d, d),
          "out": (d, d), "mlp_norm": (d,), "gate": (d, f), "up": (d, f), "down": (f, d)}


def _check_input(name: str, x: jax.Array, features: int | None = None) -> None:
  if x.ndim != 3:
    raise ValueError(f"{name} expects inputs (batch, sequence, features), got shape {x.shape}")
  if features is not None and x.shape[-1] != features:
    raise ValueError(f"{name} expects {features} features on the last axis, got {x.shape}")


def _check_heads(features: int, num_heads: int) -> None:
  check_positive_int("num_heads", num_heads)
  if features % num_heads:
    raise ValueError(f"num_heads must divide features ({features}), got {num_heads}")


def rms_normalize(
    x: jax.Array, scale: jax.Array | None = None, *, epsilon: float = DEFAULT_EPSILON
) -> jax.Array:
  r"""RMSNorm over the last axis, :math:`w \odot h / \sqrt{\operatorname{mean}(h^2) + \epsilon}`.

  Args:
    x: input (..., d).
    scale: per-feature w, shape (d,), or None.
    epsilon: added to the mean square (LLaMA: 1e-6).

  Returns:
    The normalized input, dtype >= float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import rms_normalize
    >>> y = rms_normalize(jnp.array([3.0, 4.0]), epsilon=0.0)
    >>> round(float(jnp.mean(y**2)), 4)  # unit mean square
    1.0
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon)
  return y if scale is None else y * scale


def num_post_ln_layers(num_layers: int, post_fraction: float = DEFAULT_POST_FRACTION) -> int:
  """⌊α L⌋, the number of leading Post-LN blocks (α·L rounded to 9 decimals before the floor,
  so that e.g. 0.29 · 100 gives 29, not 28).

  Args:
    num_layers: the number of blocks L.
    post_fraction: α, in [0, 1].

  Returns:
    The number of Post-LN blocks.

  Example:
    >>> from jaxlearn.nn import num_post_ln_layers
    >>> num_post_ln_layers(12, 0.25), num_post_ln_layers(32, 0.25), num_post_ln_layers(7, 0.5)
    (3, 8, 3)
  """
  check_positive_int("num_layers", num_layers)
  check_range("post_fraction", post_fraction, 0.0, 1.0)
  return math.floor(round(post_fraction * num_layers, 9))


def mix_ln_layer_types(
    num_layers: int, post_fraction: float = DEFAULT_POST_FRACTION
) -> tuple[str, ...]:
  """The block types of a Mix-LN stack: 'post' for the first ⌊αL⌋ blocks, then 'pre'.

  Args:
    num_layers: the number of blocks L.
    post_fraction: α, in [0, 1].

  Returns:
    A tuple of L strings, 'post' or 'pre'.

  Example:
    >>> from jaxlearn.nn import mix_ln_layer_types
    >>> mix_ln_layer_types(4, 0.5)
    ('post', 'post', 'pre', 'pre')
  """
  num_post = num_post_ln_layers(num_layers, post_fraction)
  return ("post",) * num_post + ("pre",) * (num_layers - num_post)


def _attention(h, params, num_heads, causal):
  batch, length, features = h.shape
  head_dim = features // num_heads

  def heads(kernel):
    return (h @ kernel).reshape(batch, length, num_heads, head_dim)

  q, k, v = heads(params["query"]), heads(params["key"]), heads(params["value"])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
  if causal:
    mask = jnp.tril(jnp.ones((length, length), bool))
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, features) @ params["out"]


def _mlp(h, params):
  return (jax.nn.silu(h @ params["gate"]) * (h @ params["up"])) @ params["down"]


def _block(h, params, post_ln, num_heads, causal, epsilon):
  norm = functools.partial(rms_normalize, epsilon=epsilon)
  if post_ln:
    h = norm(h + _attention(h, params, num_heads, causal), params["attention_norm"])
    return norm(h + _mlp(h, params), params["mlp_norm"])
  h = h + _attention(norm(h, params["attention_norm"]), params, num_heads, causal)
  return h + _mlp(norm(h, params["mlp_norm"]), params)


def _as_compute(params, dtype):
  return {name: jnp.asarray(params[name], dtype) for name in BLOCK_PARAMS}


def mix_ln_block(
    x: jax.Array,
    params: Mapping[str, jax.Array],
    *,
    post_ln: bool,
    num_heads: int,
    causal: bool = True,
    epsilon: float = DEFAULT_EPSILON,
    dtype: Any = None,
) -> jax.Array:
  r"""One transformer block, Post-LN or Pre-LN (the math is in the module docstring).

  Args:
    x: input (batch, sequence, d).
    params: the block parameters (module docstring), unstacked.
    post_ln: a Post-LN block if True, a Pre-LN block if False.
    num_heads: attention heads (must divide d).
    causal: mask attention to earlier positions.
    epsilon: the RMSNorms' ε.
    dtype: output dtype (default: the input's dtype).

  Returns:
    The block's output, shape of `x`.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from jaxlearn.nn import mix_ln_block
    >>> rng = np.random.default_rng(0)
    >>> shapes = {"attention_norm": (4,), "mlp_norm": (4,), "query": (4, 4), "key": (4, 4),
    ...           "value": (4, 4), "out": (4, 4), "gate": (4, 8), "up": (4, 8), "down": (8, 4)}
    >>> params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    >>> y = mix_ln_block(jnp.ones((2, 3, 4)), params, post_ln=True, num_heads=2)
    >>> print(jnp.mean(y**2 / params["mlp_norm"]**2, axis=-1).round(3))  # Post-LN: normalized
    [[1. 1. 1.]
     [1. 1. 1.]]
  """
  check_bool("post_ln", post_ln)
  _check_input("mix_ln_block", x, params["query"].shape[0])
  _check_heads(x.shape[-1], num_heads)
  check_positive("epsilon", epsilon)
  return _mix_ln_block(x, params, epsilon, post_ln=bool(post_ln), num_heads=num_heads,
                       causal=bool(causal), dtype=x.dtype if dtype is None else jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("post_ln", "num_heads", "causal", "dtype"))
def _mix_ln_block(x, params, epsilon, *, post_ln, num_heads, causal, dtype):
  compute = jnp.promote_types(x.dtype, jnp.float32)
  y = _block(x.astype(compute), _as_compute(params, compute), post_ln, num_heads, causal, epsilon)
  return y.astype(dtype)


def mix_ln_transformer(
    x: jax.Array,
    params: Mapping[str, jax.Array],
    *,
    layer_types: Sequence[str],
    num_heads: int,
    causal: bool = True,
    epsilon: float = DEFAULT_EPSILON,
    dtype: Any = None,
) -> jax.Array:
  r"""A stack of blocks of the given types, then the final RMSNorm.

  Args:
    x: input (batch, sequence, d).
    params: the block parameters stacked along a leading layer axis (L, ...) and `final_norm`
      (d,).
    layer_types: one of 'post' / 'pre' per block (`mix_ln_layer_types(L, α)` for Mix-LN; a
      subset of the blocks' types with the matching parameter slices removes blocks, as the
      paper's layer-removal study).
    num_heads: attention heads (must divide d).
    causal: mask attention to earlier positions.
    epsilon: the RMSNorms' ε.
    dtype: output dtype (default: the input's dtype).

  Returns:
    The normalized hidden states, shape of `x`.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from jaxlearn.nn import mix_ln_layer_types, mix_ln_transformer
    >>> L, d, f = 4, 4, 8
    >>> shapes = {"attention_norm": (d,), "mlp_norm": (d,), "query": (d, d), "key": (d, d),
    ...           "value": (d, d), "out": (d, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
    >>> rng = np.random.default_rng(0)
    >>> params = {k: jnp.asarray(rng.normal(size=(L, *s)), jnp.float32) for k, s in shapes.items()}
    >>> params["final_norm"] = jnp.ones(d)
    >>> y = mix_ln_transformer(jnp.ones((2, 3, d)), params,
    ...                        layer_types=mix_ln_layer_types(L, 0.25), num_heads=2)
    >>> y.shape
    (2, 3, 4)
  """
  layer_types = tuple(layer_types)
  for kind in layer_types:
    if kind not in ("post", "pre"):
      raise ValueError(f"layer_types must hold 'post' or 'pre', got {layer_types!r}")
  if params["query"].shape[0] != len(layer_types):
    raise ValueError(
        f"layer_types gives {len(layer_types)} blocks, the parameters {params['query'].shape[0]}"
    )
  _check_input("mix_ln_transformer", x, params["final_norm"].shape[-1])
  _check_heads(x.shape[-1], num_heads)
  check_positive("epsilon", epsilon)
  return _mix_ln_transformer(
      x, params, epsilon, layer_types=layer_types, num_heads=num_heads, causal=bool(causal),
      dtype=x.dtype if dtype is None else jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnames=("layer_types", "num_heads", "causal", "dtype"))
def _mix_ln_transformer(x, params, epsilon, *, layer_types, num_heads, causal, dtype):
  compute = jnp.promote_types(x.dtype, jnp.float32)
  stacked = _as_compute(params, compute)
  h = x.astype(compute)
  for index, kind in enumerate(layer_types):
    block = {name: value[index] for name, value in stacked.items()}
    h = _block(h, block, kind == "post", num_heads, causal, epsilon)
  h = rms_normalize(h, jnp.asarray(params["final_norm"], compute), epsilon=epsilon)
  return h.astype(dtype)


def _initializer(name: str) -> Callable:
  return linen.initializers.ones if name in NORMS or name == "final_norm" else (
      linen.initializers.normal(INIT_STD))


class MixLNBlock(nnx.Module):
  r"""One LLaMA-style transformer block, Post-LN or Pre-LN (arXiv:2412.13795), in NNX.

  Parameters (`nnx.Param`): `attention_norm`, `query`, `key`, `value`, `out`, `mlp_norm`,
  `gate`, `up`, `down` (module docstring). `MixLNTransformer` is the Mix-LN stack.

  Args:
    features: model width d.
    num_heads: attention heads (must divide d).
    hidden_features: width f of the SwiGLU MLP.
    post_ln: a Post-LN block if True, a Pre-LN block if False.
    causal: mask attention to earlier positions.
    epsilon: the RMSNorms' ε (1e-6).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    rngs: the `params` stream initializes the kernels.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> block = jnn.MixLNBlock(8, 2, 16, post_ln=True, rngs=nnx.Rngs(0))
    >>> block(jnp.ones((2, 5, 8))).shape
    (2, 5, 8)
  """

  def __init__(
      self,
      features: int,
      num_heads: int,
      hidden_features: int,
      *,
      post_ln: bool = False,
      causal: bool = True,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    check_positive_int("features", features)
    check_positive_int("hidden_features", hidden_features)
    _check_heads(features, num_heads)
    check_bool("post_ln", post_ln)
    check_positive("epsilon", epsilon)
    for name, shape in _block_shapes(features, hidden_features).items():
      setattr(self, name, nnx.Param(_initializer(name)(rngs.params(), shape, param_dtype)))
    self.features, self.num_heads, self.post_ln, self.causal = features, num_heads, post_ln, causal
    self.epsilon, self.dtype = epsilon, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block to `x` (batch, sequence, features)."""
    _check_input("MixLNBlock", x, self.features)
    params = {name: getattr(self, name)[...] for name in BLOCK_PARAMS}
    return mix_ln_block(x, params, post_ln=self.post_ln, num_heads=self.num_heads,
                        causal=self.causal, epsilon=self.epsilon, dtype=self.dtype)


class LinenMixLNBlock(linen.Module):
  r"""`MixLNBlock` as a Linen module; exported as `jaxlearn.nn.linen.MixLNBlock`.

  Same parameters (`params` collection, same names) and numbers as the NNX `MixLNBlock`; the width
  is read from the input.

  Attributes:
    num_heads: attention heads (must divide the width).
    hidden_features: width of the SwiGLU MLP.
    post_ln: a Post-LN block if True, a Pre-LN block if False.
    causal: mask attention to earlier positions.
    epsilon: the RMSNorms' ε.
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> block = jnn_linen.MixLNBlock(2, 16)
    >>> x = jnp.ones((2, 5, 8))
    >>> y, variables = jax.jit(block.init_with_output)(jax.random.key(0), x)
    >>> y.shape
    (2, 5, 8)
  """

  num_heads: int
  hidden_features: int
  post_ln: bool = False
  causal: bool = True
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block to `x` (batch, sequence, features)."""
    _check_input("MixLNBlock", x)
    if self.has_variable("params", "query"):
      _check_input("MixLNBlock", x, self.get_variable("params", "query").shape[0])
    shapes = _block_shapes(x.shape[-1], self.hidden_features)
    params = {name: self.param(name, _initializer(name), shape, self.param_dtype)
              for name, shape in shapes.items()}
    return mix_ln_block(x, params, post_ln=self.post_ln, num_heads=self.num_heads,
                        causal=self.causal, epsilon=self.epsilon, dtype=self.dtype)


class MixLNTransformer(nnx.Module):
  r"""The Mix-LN block stack (arXiv:2412.13795) in NNX: ⌊αL⌋ Post-LN blocks, then Pre-LN ones.

  Parameters (`nnx.Param`): every block parameter stacked along a leading layer axis (L, ...),
  and `final_norm` (d,). `layer_types` holds the block types. Embeddings and the read-out are the
  caller's.

  Args:
    num_layers: the number of blocks L.
    features: model width d.
    num_heads: attention heads (must divide d).
    hidden_features: width f of the SwiGLU MLPs.
    post_fraction: α in [0, 1] (paper default 0.25; 0: Pre-LN; 1: Post-LN).
    causal: mask attention to earlier positions.
    epsilon: the RMSNorms' ε (1e-6).
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.
    rngs: the `params` stream initializes the kernels.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> model = jnn.MixLNTransformer(4, 8, 2, 16, rngs=nnx.Rngs(0))
    >>> model.layer_types
    ('post', 'pre', 'pre', 'pre')
    >>> model(jnp.ones((2, 5, 8))).shape
    (2, 5, 8)
  """

  def __init__(
      self,
      num_layers: int,
      features: int,
      num_heads: int,
      hidden_features: int,
      *,
      post_fraction: float = DEFAULT_POST_FRACTION,
      causal: bool = True,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.layer_types = mix_ln_layer_types(num_layers, post_fraction)
    check_positive_int("features", features)
    check_positive_int("hidden_features", hidden_features)
    _check_heads(features, num_heads)
    check_positive("epsilon", epsilon)
    for name, shape in _block_shapes(features, hidden_features).items():
      value = _initializer(name)(rngs.params(), (num_layers, *shape), param_dtype)
      setattr(self, name, nnx.Param(value))
    self.final_norm = nnx.Param(jnp.ones((features,), param_dtype))
    self.features, self.num_heads, self.causal = features, num_heads, causal
    self.epsilon, self.dtype = epsilon, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the stack and the final norm to `x` (batch, sequence, features)."""
    _check_input("MixLNTransformer", x, self.features)
    params = {name: getattr(self, name)[...] for name in (*BLOCK_PARAMS, "final_norm")}
    return mix_ln_transformer(x, params, layer_types=self.layer_types, num_heads=self.num_heads,
                              causal=self.causal, epsilon=self.epsilon, dtype=self.dtype)


class LinenMixLNTransformer(linen.Module):
  r"""`MixLNTransformer` as a Linen module; exported as `jaxlearn.nn.linen.MixLNTransformer`.

  Same parameters (stacked, same names) and numbers as the NNX `MixLNTransformer`; the width is
  read from the input.

  Attributes:
    num_layers: the number of blocks L.
    num_heads: attention heads (must divide the width).
    hidden_features: width of the SwiGLU MLPs.
    post_fraction: α in [0, 1].
    causal: mask attention to earlier positions.
    epsilon: the RMSNorms' ε.
    dtype: output dtype (default: the input's dtype).
    param_dtype: dtype of the parameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> model = jnn_linen.MixLNTransformer(4, 2, 16, post_fraction=0.5)
    >>> x = jnp.ones((2, 5, 8))
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only: nothing runs
    >>> variables["params"]["query"].shape
    (4, 8, 8)
  """

  num_layers: int
  num_heads: int
  hidden_features: int
  post_fraction: float = DEFAULT_POST_FRACTION
  causal: bool = True
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the stack and the final norm to `x` (batch, sequence, features)."""
    layer_types = mix_ln_layer_types(self.num_layers, self.post_fraction)
    _check_input("MixLNTransformer", x)
    if self.has_variable("params", "final_norm"):
      _check_input("MixLNTransformer", x, self.get_variable("params", "final_norm").shape[0])
    features = x.shape[-1]
    params = {name: self.param(name, _initializer(name), (self.num_layers, *shape),
                               self.param_dtype)
              for name, shape in _block_shapes(features, self.hidden_features).items()}
    params["final_norm"] = self.param("final_norm", linen.initializers.ones, (features,),
                                      self.param_dtype)
    return mix_ln_transformer(x, params, layer_types=layer_types, num_heads=self.num_heads,
                              causal=self.causal, epsilon=self.epsilon, dtype=self.dtype)


RECORD = registry.record(
    slug="mix_ln",
    kind="layer",
    title="Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and Post-LN",
    reference="arXiv:2412.13795",
    experiment="mix_ln_depth",
    notes=(
        "Block orders as the official post_pre mode of modeling_llama.py: Post-LN h = N(h + "
        "Attn(h)), h = N(h + MLP(h)) for the first floor(post_fraction * L) blocks, Pre-LN "
        "after; RMSNorm eps 1e-6, final RMSNorm after the stack, SwiGLU MLP, no biases, N(0, "
        "0.02^2) kernels. Deviation: no rotary embeddings (positions are the caller's). "
        "floor(alpha * L) is taken after rounding alpha * L to 9 decimals. Computation in "
        "float32 whatever the input dtype."
    ),
)
