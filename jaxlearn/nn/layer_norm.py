r"""Layer Normalization: flax's `LayerNorm`, registered, and the paper's layer-normalized RNNs.

Paper: Ba, Kiros and Hinton, "Layer Normalization", arXiv:1607.06450. Official code:
github.com/ryankiros/layer-norm (`layers.py`: `ln`, `lngru_layer`, `lnlstm_layer`).

**Layer normalization.** For the :math:`H` summed inputs :math:`a` of one layer on ONE training
case (no batch statistics, the same computation in training and evaluation):

.. math::

  \mu = \frac{1}{H}\sum_{i=1}^H a_i, \qquad
  \sigma = \sqrt{\frac{1}{H}\sum_{i=1}^H (a_i - \mu)^2 + \epsilon}, \qquad
  \mathrm{LN}(a; \alpha, \beta) = \alpha \odot \frac{a - \mu}{\sigma} + \beta,

with a per-unit gain :math:`\alpha` (init 1) and bias :math:`\beta` (init 0). flax's
`nnx.LayerNorm` / `linen.LayerNorm` compute exactly this; `LayerNorm` and `LinenLayerNorm` here are
those classes (subclasses) with jaxlearn's input and `epsilon` checks added. flax's default ε is
1e-6, PyTorch's `nn.LayerNorm` 1e-5 and the official code's 1e-5: pass `epsilon=1e-5` for parity
(tested).

**Recurrent networks.** The paper normalizes the summed inputs of a recurrent layer separately
at every time step, and the input-to-hidden and hidden-to-hidden terms separately (each with its
own gain and bias). Wrapping a `LayerNorm` around an unnormalized cell is NOT this method, so the
cells are written here. With :math:`\sigma` the logistic sigmoid:

LN-GRU (the paper's supplementary material, as in its order-embedding and skip-thought runs):

.. math::

  \begin{pmatrix} z_t \\ r_t \end{pmatrix} &=
      \mathrm{LN}(W_h h_{t-1}; \alpha_1, \beta_1) + \mathrm{LN}(W_x x_t; \alpha_2, \beta_2) \\
  \hat h_t &= \tanh\big(\mathrm{LN}(W x_t; \alpha_3, \beta_3)
      + \sigma(r_t) \odot \mathrm{LN}(U h_{t-1}; \alpha_4, \beta_4)\big) \\
  h_t &= (1 - \sigma(z_t)) \odot h_{t-1} + \sigma(z_t) \odot \hat h_t

LN-LSTM (its attentive-reader and handwriting runs):

.. math::

  \begin{pmatrix} f_t \\ i_t \\ o_t \\ g_t \end{pmatrix} &=
      \mathrm{LN}(W_h h_{t-1}; \alpha_1, \beta_1) + \mathrm{LN}(W_x x_t; \alpha_2, \beta_2) + b \\
  c_t &= \sigma(f_t) \odot c_{t-1} + \sigma(i_t) \odot \tanh(g_t) \\
  h_t &= \sigma(o_t) \odot \tanh(\mathrm{LN}(c_t; \alpha_3, \beta_3))

Each LN of a gate block normalizes over the whole block (2H units for the GRU gates, 4H for the
LSTM gates), as written in the paper and done by the official `ln`. ε = 1e-5 (official code).

Deviations from the official code (the equations above are the paper's): the official LN-GRU
adds a bias before the gate and candidate input LNs and gates as
:math:`h_t = u \odot h_{t-1} + (1 - u) \odot \hat h_t`, a relabelling of the same family
(:math:`u = \sigma(-z)`); its LN-LSTM adds its bias :math:`b` also inside the input LN and
orders its gates (i, f, o, g). Here the GRU has no bias but the LN biases (as in the paper) and
the LSTM adds :math:`b` outside the LNs only (as in the paper). Initialization: input kernels
LeCun normal, recurrent kernels orthogonal per H×H gate block (as flax's `GRUCell`; the official
code draws N(0, 0.01²) or orthogonal input kernels), gains 1, biases 0.

The recurrence runs in float32 whatever the input dtype (statistics, carries and gates); the
outputs are cast to `dtype` (default: the input's dtype). Inputs are (..., T, F): any leading
batch axes, time on axis −2, features last; outputs (..., T, H).

Public API: `LayerNorm` / `LinenLayerNorm` (flax's), the pure functions `layer_normalize`,
`ln_gru_cell`, `ln_lstm_cell`, `ln_gru`, `ln_lstm` (scan over time), `init_ln_gru`,
`init_ln_lstm`, and the sequence layers `LNGRU` / `LNLSTM` (NNX) and `LinenLNGRU` / `LinenLNLSTM`
(exported as `jaxlearn.nn.linen.LNGRU` / `LNLSTM`).

References:
  Jimmy Lei Ba, Jamie Ryan Kiros and Geoffrey E. Hinton, "Layer Normalization", arXiv 2016.
  https://arxiv.org/abs/1607.06450. Official code: https://github.com/ryankiros/layer-norm
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive, check_positive_int

__all__ = [
    "LayerNorm",
    "LNGRU",
    "LNLSTM",
    "LinenLayerNorm",
    "LinenLNGRU",
    "LinenLNLSTM",
    "layer_normalize",
    "ln_gru_cell",
    "ln_lstm_cell",
    "ln_gru",
    "ln_lstm",
    "init_ln_gru",
    "init_ln_lstm",
]

DEFAULT_EPSILON = 1e-5  # the official code's `ln`; flax's LayerNorm defaults to 1e-6

Params = Mapping[str, jax.Array]


def _traced(*trees) -> bool:
  """Whether any leaf is a tracer: the pure functions jit themselves only for eager callers
  (inside a traced program a nested jit only adds tracing and compile work)."""
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


# ------------------------------------------------------------------------------------------------
# flax's LayerNorm with jaxlearn's checks


def _check_ln_input(x: jax.Array, feature_axes: Any, num_features: int | None) -> None:
  if x.ndim < 1:
    raise ValueError(f"LayerNorm expects inputs of rank >= 1 (..., features), got shape {x.shape}")
  if num_features is not None and feature_axes in (-1, (-1,)) and x.shape[-1] != num_features:
    raise ValueError(
        f"LayerNorm expects {num_features} features on the last axis, got shape {x.shape}"
    )


class LayerNorm(nnx.LayerNorm):
  r"""flax's `nnx.LayerNorm` with input and `epsilon` checks (arXiv:1607.06450).

  :math:`y = \alpha \odot (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`, statistics over
  `reduction_axes` (default: the last axis) of each sample. ε defaults to flax's 1e-6 (PyTorch:
  1e-5).

  Args:
    num_features: the size of the feature axis.
    epsilon: added to the variance inside the square root (> 0).
    rngs: the random number generators.
    **kwargs: every other argument of `nnx.LayerNorm`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> ln = jnn.LayerNorm(4, rngs=nnx.Rngs(0))
    >>> [round(float(v), 3) for v in ln(jnp.array([1.0, 2.0, 3.0, 4.0]))]
    [-1.342, -0.447, 0.447, 1.342]
  """

  def __init__(self, num_features: int, *, epsilon: float = 1e-6, rngs: nnx.Rngs, **kwargs: Any):
    check_positive_int("num_features", num_features)
    check_positive("epsilon", epsilon)
    super().__init__(num_features, epsilon=epsilon, rngs=rngs, **kwargs)
    self.num_features = num_features

  def __call__(self, x, *, mask=None):
    """Normalizes every sample of `x` over its features."""
    _check_ln_input(x, self.feature_axes, self.num_features)
    return super().__call__(x, mask=mask)


class LinenLayerNorm(linen.LayerNorm):
  """flax's `linen.LayerNorm` with input and `epsilon` checks; `jaxlearn.nn.linen.LayerNorm`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> ln = jnn_linen.LayerNorm(epsilon=1e-5)
    >>> x = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    >>> variables = ln.init(jax.random.key(0), x)
    >>> ln.apply(variables, x).shape
    (1, 4)
  """

  def __call__(self, x, *, mask=None):
    """Normalizes every sample of `x` over its features."""
    check_positive("epsilon", self.epsilon)
    features = None
    if self.use_scale and self.has_variable("params", "scale"):
      features = self.get_variable("params", "scale").shape[-1]
    elif self.use_bias and self.has_variable("params", "bias"):
      features = self.get_variable("params", "bias").shape[-1]
    _check_ln_input(x, self.feature_axes, features)
    return super().__call__(x, mask=mask)


# ------------------------------------------------------------------------------------------------
# Pure functional core


def layer_normalize(
    a: jax.Array, scale: jax.Array, bias: jax.Array, *, epsilon: float = DEFAULT_EPSILON
) -> jax.Array:
  r"""LN(a; α, β) over the last axis: α ⊙ (a − μ) / sqrt(σ² + ε) + β (float32 statistics).

  Args:
    a: summed inputs (..., H).
    scale: the gain α, shape (H,).
    bias: the bias β, shape (H,).
    epsilon: added to the (biased) variance inside the square root.

  Returns:
    The normalized array in float32 (or wider).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import layer_normalize
    >>> y = layer_normalize(jnp.array([1.0, 3.0]), jnp.ones(2), jnp.zeros(2), epsilon=0.0)
    >>> [float(v) for v in y]
    [-1.0, 1.0]
  """
  dtype = jnp.promote_types(a.dtype, jnp.float32)
  a = a.astype(dtype)
  mean = jnp.mean(a, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(a - mean), axis=-1, keepdims=True)
  return (a - mean) * jax.lax.rsqrt(var + epsilon) * scale.astype(dtype) + bias.astype(dtype)


def _gru_shapes(in_features: int, hidden: int) -> dict[str, tuple[int, ...]]:
  return {
      "gate_input_kernel": (in_features, 2 * hidden),  # W_x -> (z, r)
      "gate_recurrent_kernel": (hidden, 2 * hidden),  # W_h -> (z, r)
      "candidate_input_kernel": (in_features, hidden),  # W
      "candidate_recurrent_kernel": (hidden, hidden),  # U
      "gate_recurrent_ln_scale": (2 * hidden,),  # alpha_1
      "gate_recurrent_ln_bias": (2 * hidden,),  # beta_1
      "gate_input_ln_scale": (2 * hidden,),  # alpha_2
      "gate_input_ln_bias": (2 * hidden,),  # beta_2
      "candidate_input_ln_scale": (hidden,),  # alpha_3
      "candidate_input_ln_bias": (hidden,),  # beta_3
      "candidate_recurrent_ln_scale": (hidden,),  # alpha_4
      "candidate_recurrent_ln_bias": (hidden,),  # beta_4
  }


def _lstm_shapes(in_features: int, hidden: int) -> dict[str, tuple[int, ...]]:
  return {
      "input_kernel": (in_features, 4 * hidden),  # W_x -> (f, i, o, g)
      "recurrent_kernel": (hidden, 4 * hidden),  # W_h -> (f, i, o, g)
      "bias": (4 * hidden,),  # b
      "recurrent_ln_scale": (4 * hidden,),  # alpha_1
      "recurrent_ln_bias": (4 * hidden,),  # beta_1
      "input_ln_scale": (4 * hidden,),  # alpha_2
      "input_ln_bias": (4 * hidden,),  # beta_2
      "cell_ln_scale": (hidden,),  # alpha_3
      "cell_ln_bias": (hidden,),  # beta_3
  }


def _blockwise(init: Callable, hidden: int) -> Callable:
  """An initializer applied to every (rows, hidden) block of a (rows, k * hidden) kernel."""

  def init_blocks(key, shape, dtype=jnp.float32):
    blocks = shape[-1] // hidden
    keys = jax.random.split(key, blocks)
    return jnp.concatenate([init(k, (*shape[:-1], hidden), dtype) for k in keys], axis=-1)

  return init_blocks


def _initializer(name: str, hidden: int, kernel_init: Callable, recurrent_kernel_init: Callable):
  if name.endswith("recurrent_kernel"):
    return _blockwise(recurrent_kernel_init, hidden)
  if name.endswith("input_kernel"):
    return kernel_init
  if name.endswith("scale"):
    return jax.nn.initializers.ones
  return jax.nn.initializers.zeros


DEFAULT_KERNEL_INIT = jax.nn.initializers.lecun_normal()
DEFAULT_RECURRENT_KERNEL_INIT = jax.nn.initializers.orthogonal()


def _init_impl(key, shapes, hidden, kernel_init, recurrent_kernel_init, dtype):
  keys = jax.random.split(key, len(shapes))
  return {
      name: _initializer(name, hidden, kernel_init, recurrent_kernel_init)(k, shape, dtype)
      for k, (name, shape) in zip(keys, shapes)
  }


_init_jit = jax.jit(_init_impl, static_argnums=(1, 2, 3, 4, 5))


def _init(shapes, key, hidden, kernel_init, recurrent_kernel_init, dtype):
  """Every parameter, drawn by one compiled program when called eagerly (not one per op)."""
  args = (tuple(shapes.items()), hidden, kernel_init, recurrent_kernel_init, dtype)
  try:
    hash(args)
  except TypeError:  # an unhashable initializer: run op by op
    return _init_impl(key, *args)
  return (_init_impl if _traced(key) else _init_jit)(key, *args)


def init_ln_gru(
    key: jax.Array,
    in_features: int,
    hidden_features: int,
    *,
    kernel_init: Callable = DEFAULT_KERNEL_INIT,
    recurrent_kernel_init: Callable = DEFAULT_RECURRENT_KERNEL_INIT,
    dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
  """The LN-GRU parameters (see the module docstring for the names' roles).

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_ln_gru
    >>> params = init_ln_gru(jax.random.key(0), 3, 5)
    >>> params["gate_recurrent_kernel"].shape
    (5, 10)
  """
  check_positive_int("in_features", in_features)
  check_positive_int("hidden_features", hidden_features)
  shapes = _gru_shapes(in_features, hidden_features)
  return _init(shapes, key, hidden_features, kernel_init, recurrent_kernel_init, dtype)


def init_ln_lstm(
    key: jax.Array,
    in_features: int,
    hidden_features: int,
    *,
    kernel_init: Callable = DEFAULT_KERNEL_INIT,
    recurrent_kernel_init: Callable = DEFAULT_RECURRENT_KERNEL_INIT,
    dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
  """The LN-LSTM parameters (see the module docstring for the names' roles).

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_ln_lstm
    >>> params = init_ln_lstm(jax.random.key(0), 3, 5)
    >>> params["recurrent_kernel"].shape
    (5, 20)
  """
  check_positive_int("in_features", in_features)
  check_positive_int("hidden_features", hidden_features)
  shapes = _lstm_shapes(in_features, hidden_features)
  return _init(shapes, key, hidden_features, kernel_init, recurrent_kernel_init, dtype)


def _f32(params: Params) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v).astype(jnp.promote_types(jnp.asarray(v).dtype, jnp.float32))
          for k, v in params.items()}


def _gru_input_terms(p, x, epsilon):
  """The input-to-hidden terms of every step: LN(W_x x; α2, β2) and LN(W x; α3, β3)."""
  gates = layer_normalize(x @ p["gate_input_kernel"], p["gate_input_ln_scale"],
                          p["gate_input_ln_bias"], epsilon=epsilon)
  candidate = layer_normalize(x @ p["candidate_input_kernel"], p["candidate_input_ln_scale"],
                              p["candidate_input_ln_bias"], epsilon=epsilon)
  return gates, candidate


def _gru_recurrent_step(p, h, gate_inputs, candidate_inputs, epsilon):
  gates = gate_inputs + layer_normalize(
      h @ p["gate_recurrent_kernel"], p["gate_recurrent_ln_scale"], p["gate_recurrent_ln_bias"],
      epsilon=epsilon)
  z, r = jnp.split(gates, 2, axis=-1)
  recurrent = layer_normalize(
      h @ p["candidate_recurrent_kernel"], p["candidate_recurrent_ln_scale"],
      p["candidate_recurrent_ln_bias"], epsilon=epsilon)
  candidate = jnp.tanh(candidate_inputs + jax.nn.sigmoid(r) * recurrent)
  update = jax.nn.sigmoid(z)
  return (1.0 - update) * h + update * candidate


def _lstm_input_terms(p, x, epsilon):
  """LN(W_x x; α2, β2) + b for every step."""
  return layer_normalize(x @ p["input_kernel"], p["input_ln_scale"], p["input_ln_bias"],
                         epsilon=epsilon) + p["bias"]


def _lstm_recurrent_step(p, carry, input_terms, epsilon):
  c, h = carry
  gates = input_terms + layer_normalize(
      h @ p["recurrent_kernel"], p["recurrent_ln_scale"], p["recurrent_ln_bias"], epsilon=epsilon)
  f, i, o, g = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(
      layer_normalize(c, p["cell_ln_scale"], p["cell_ln_bias"], epsilon=epsilon))
  return c, h


def ln_gru_cell(
    params: Params, h: jax.Array, x: jax.Array, *, epsilon: float = DEFAULT_EPSILON
) -> jax.Array:
  r"""One LN-GRU step: :math:`h_t` from :math:`h_{t-1}` (..., H) and :math:`x_t` (..., F).

  Computed in float32 (or wider). See the module docstring for the equations.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_ln_gru, ln_gru_cell
    >>> params = init_ln_gru(jax.random.key(0), 3, 5)
    >>> ln_gru_cell(params, jnp.zeros((2, 5)), jnp.ones((2, 3))).shape
    (2, 5)
  """
  check_positive("epsilon", epsilon)
  run = _ln_gru_cell if _traced(params, h, x) else _ln_gru_cell_jit
  return run(params, h, x, epsilon=float(epsilon))


def _ln_gru_cell(params, h, x, epsilon):
  p = _f32(params)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
  return _gru_recurrent_step(p, h, *_gru_input_terms(p, x, epsilon), epsilon)


_ln_gru_cell_jit = jax.jit(_ln_gru_cell, static_argnames=("epsilon",))


def ln_lstm_cell(
    params: Params,
    carry: tuple[jax.Array, jax.Array],
    x: jax.Array,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> tuple[jax.Array, jax.Array]:
  r"""One LN-LSTM step: :math:`(c_t, h_t)` from :math:`(c_{t-1}, h_{t-1})` and :math:`x_t`.

  Computed in float32 (or wider). See the module docstring for the equations.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_ln_lstm, ln_lstm_cell
    >>> params = init_ln_lstm(jax.random.key(0), 3, 5)
    >>> c, h = ln_lstm_cell(params, (jnp.zeros((2, 5)), jnp.zeros((2, 5))), jnp.ones((2, 3)))
    >>> h.shape
    (2, 5)
  """
  check_positive("epsilon", epsilon)
  run = _ln_lstm_cell if _traced(params, carry, x) else _ln_lstm_cell_jit
  return run(params, tuple(carry), x, epsilon=float(epsilon))


def _ln_lstm_cell(params, carry, x, epsilon):
  p = _f32(params)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  c, h = (a.astype(jnp.promote_types(a.dtype, jnp.float32)) for a in carry)
  return _lstm_recurrent_step(p, (c, h), _lstm_input_terms(p, x, epsilon), epsilon)


_ln_lstm_cell_jit = jax.jit(_ln_lstm_cell, static_argnames=("epsilon",))


def _check_sequence(layer: str, inputs: jax.Array, in_features: int | None) -> None:
  if inputs.ndim < 2:
    raise ValueError(
        f"{layer} expects inputs of rank >= 2 (..., time, features), got shape {inputs.shape}"
    )
  if in_features is not None and inputs.shape[-1] != in_features:
    raise ValueError(
        f"{layer} expects {in_features} input features on the last axis, got shape {inputs.shape}"
    )


def _scan(step, carry, terms):
  """Runs `step(carry, terms_t) -> (carry, h_t)` over axis −2 of every leaf of `terms`."""
  terms = jax.tree.map(lambda a: jnp.moveaxis(a, -2, 0), terms)
  carry, outputs = jax.lax.scan(step, carry, terms)
  return carry, jnp.moveaxis(outputs, 0, -2)


def _ln_gru(params, inputs, h0, epsilon):
  p = _f32(params)
  x = inputs.astype(jnp.promote_types(inputs.dtype, jnp.float32))
  terms = _gru_input_terms(p, x, epsilon)  # every step at once: LN is per sample and step

  def step(h, t):
    h = _gru_recurrent_step(p, h, *t, epsilon)
    return h, h

  return _scan(step, h0.astype(x.dtype), terms)


def _ln_lstm(params, inputs, carry, epsilon):
  p = _f32(params)
  x = inputs.astype(jnp.promote_types(inputs.dtype, jnp.float32))
  terms = _lstm_input_terms(p, x, epsilon)

  def step(carry, t):
    carry = _lstm_recurrent_step(p, carry, t, epsilon)
    return carry, carry[1]

  return _scan(step, tuple(a.astype(x.dtype) for a in carry), terms)


# Jitted for eager calls (one program instead of one per op); traced callers inline the functions
# (a nested jit only adds tracing and compile work inside their programs).
_ln_gru_jit = jax.jit(_ln_gru, static_argnames=("epsilon",))
_ln_lstm_jit = jax.jit(_ln_lstm, static_argnames=("epsilon",))


def ln_gru(
    params: Params,
    inputs: jax.Array,
    initial_carry: jax.Array | None = None,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> tuple[jax.Array, jax.Array]:
  """Runs the LN-GRU over a sequence (..., T, F).

  Args:
    params: from `init_ln_gru`.
    inputs: (..., T, F), time on axis −2.
    initial_carry: :math:`h_0` (..., H); zeros by default.
    epsilon: ε of every LN.

  Returns:
    (the final hidden state (..., H), every hidden state (..., T, H)), in float32 (or wider).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_ln_gru, ln_gru
    >>> params = init_ln_gru(jax.random.key(0), 3, 5)
    >>> h_T, hs = ln_gru(params, jnp.ones((2, 7, 3)))
    >>> hs.shape
    (2, 7, 5)
  """
  check_positive("epsilon", epsilon)
  in_features, hidden = params["candidate_input_kernel"].shape
  _check_sequence("ln_gru", inputs, in_features)
  if initial_carry is None:
    initial_carry = jnp.zeros((*inputs.shape[:-2], hidden), jnp.float32)
  run = _ln_gru if _traced(params, inputs, initial_carry) else _ln_gru_jit
  return run(params, inputs, initial_carry, epsilon=float(epsilon))


def ln_lstm(
    params: Params,
    inputs: jax.Array,
    initial_carry: tuple[jax.Array, jax.Array] | None = None,
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
  """Runs the LN-LSTM over a sequence (..., T, F).

  Args:
    params: from `init_ln_lstm`.
    inputs: (..., T, F), time on axis −2.
    initial_carry: :math:`(c_0, h_0)`, each (..., H); zeros by default.
    epsilon: ε of every LN.

  Returns:
    (the final (c, h), every hidden state h (..., T, H)), in float32 (or wider).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_ln_lstm, ln_lstm
    >>> params = init_ln_lstm(jax.random.key(0), 3, 5)
    >>> (c_T, h_T), hs = ln_lstm(params, jnp.ones((2, 7, 3)))
    >>> hs.shape
    (2, 7, 5)
  """
  check_positive("epsilon", epsilon)
  in_features, four_hidden = params["input_kernel"].shape
  _check_sequence("ln_lstm", inputs, in_features)
  if initial_carry is None:
    zeros = jnp.zeros((*inputs.shape[:-2], four_hidden // 4), jnp.float32)
    initial_carry = (zeros, zeros)
  run = _ln_lstm if _traced(params, inputs, initial_carry) else _ln_lstm_jit
  return run(params, inputs, tuple(initial_carry), epsilon=float(epsilon))


# ------------------------------------------------------------------------------------------------
# NNX and Linen sequence layers


class _NNXRecurrent(nnx.Module):
  """The NNX sequence layer shared by `LNGRU` and `LNLSTM` (subclasses set the three below)."""

  _layer = ""
  _shapes = None
  _run = None

  def __init__(
      self,
      in_features: int,
      hidden_features: int,
      *,
      epsilon: float = DEFAULT_EPSILON,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      kernel_init: Callable = DEFAULT_KERNEL_INIT,
      recurrent_kernel_init: Callable = DEFAULT_RECURRENT_KERNEL_INIT,
      rngs: nnx.Rngs,
  ):
    check_positive_int("in_features", in_features)
    check_positive_int("hidden_features", hidden_features)
    check_positive("epsilon", epsilon)
    self.in_features = in_features
    self.hidden_features = hidden_features
    self.epsilon = epsilon
    self.dtype = dtype
    shapes = type(self)._shapes(in_features, hidden_features)
    params = _init(shapes, rngs.params(), hidden_features, kernel_init, recurrent_kernel_init,
                   param_dtype)
    for name, value in params.items():
      setattr(self, name, nnx.Param(value))

  def _params(self) -> dict[str, jax.Array]:
    names = type(self)._shapes(self.in_features, self.hidden_features)
    return {name: getattr(self, name)[...] for name in names}

  def __call__(self, inputs: jax.Array, initial_carry=None, *, return_carry: bool = False):
    """Runs the layer over `inputs` (..., T, F); returns (..., T, H) (and the final carry)."""
    _check_sequence(self._layer, inputs, self.in_features)
    carry, outputs = type(self)._run(self._params(), inputs, initial_carry, epsilon=self.epsilon)
    outputs = outputs.astype(self.dtype or inputs.dtype)
    return (outputs, carry) if return_carry else outputs


class LNGRU(_NNXRecurrent):
  r"""A layer-normalized GRU over a sequence (arXiv:1607.06450), NNX.

  Equations in the module docstring (`ln_gru_cell`); inputs (..., T, F) → outputs (..., T, H).
  There are no batch statistics: training and evaluation compute the same thing.

  Args:
    in_features: F.
    hidden_features: H.
    epsilon: ε of every LN (default 1e-5, the official code's).
    dtype: the output dtype (default: the input's); the recurrence runs in float32.
    param_dtype: the parameters' dtype.
    kernel_init: initializer of the input kernels.
    recurrent_kernel_init: initializer of every H×H block of the recurrent kernels.
    rngs: the random number generators.

  Call arguments: `inputs`, `initial_carry` (:math:`h_0`, default zeros), `return_carry`
  (also return the final hidden state).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> rnn = jnn.LNGRU(3, 5, rngs=nnx.Rngs(0))
    >>> rnn(jnp.ones((2, 7, 3))).shape
    (2, 7, 5)
  """

  _layer = "LNGRU"
  _shapes = staticmethod(_gru_shapes)
  _run = staticmethod(ln_gru)


class LNLSTM(_NNXRecurrent):
  r"""A layer-normalized LSTM over a sequence (arXiv:1607.06450), NNX.

  Equations in the module docstring (`ln_lstm_cell`); inputs (..., T, F) → hidden states
  (..., T, H). Arguments as `LNGRU`; the carry is (c, h).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> rnn = jnn.LNLSTM(3, 5, rngs=nnx.Rngs(0))
    >>> rnn(jnp.ones((2, 7, 3))).shape
    (2, 7, 5)
  """

  _layer = "LNLSTM"
  _shapes = staticmethod(_lstm_shapes)
  _run = staticmethod(ln_lstm)


class _LinenRecurrent(linen.Module):
  hidden_features: int
  epsilon: float = DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = DEFAULT_KERNEL_INIT
  recurrent_kernel_init: Callable = DEFAULT_RECURRENT_KERNEL_INIT

  # Set by the subclasses; not annotated, so not dataclass fields.
  _layer = ""
  _shapes = None
  _run = None

  @linen.compact
  def __call__(self, inputs: jax.Array, initial_carry=None, *, return_carry: bool = False):
    """Runs the layer over `inputs` (..., T, F); returns (..., T, H) (and the final carry)."""
    check_positive_int("hidden_features", self.hidden_features)
    check_positive("epsilon", self.epsilon)
    shapes = type(self)._shapes
    in_features = None
    first = next(iter(shapes(1, 1)))  # the input kernel's name
    if self.has_variable("params", first):
      in_features = self.get_variable("params", first).shape[0]
    _check_sequence(self._layer, inputs, in_features)
    params = {
        name: self.param(
            name,
            _initializer(name, self.hidden_features, self.kernel_init,
                         self.recurrent_kernel_init),
            shape, self.param_dtype)
        for name, shape in shapes(inputs.shape[-1], self.hidden_features).items()
    }
    carry, outputs = type(self)._run(params, inputs, initial_carry, epsilon=self.epsilon)
    outputs = outputs.astype(self.dtype or inputs.dtype)
    return (outputs, carry) if return_carry else outputs


class LinenLNGRU(_LinenRecurrent):
  """A layer-normalized GRU over a sequence, Linen; exported as `jaxlearn.nn.linen.LNGRU`.

  Same numbers and parameter names as `LNGRU`; the input features are inferred at `init`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> rnn = jnn_linen.LNGRU(5)
    >>> x = jnp.ones((2, 7, 3))
    >>> variables = jax.eval_shape(rnn.init, jax.random.key(0), x)  # shapes only: no compiling
    >>> variables["params"]["gate_recurrent_kernel"].shape
    (5, 10)
    >>> jax.eval_shape(rnn.apply, variables, x).shape
    (2, 7, 5)
  """

  _layer = "LNGRU"
  _shapes = staticmethod(_gru_shapes)
  _run = staticmethod(ln_gru)


class LinenLNLSTM(_LinenRecurrent):
  """A layer-normalized LSTM over a sequence, Linen; exported as `jaxlearn.nn.linen.LNLSTM`.

  Same numbers and parameter names as `LNLSTM`; the input features are inferred at `init`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> rnn = jnn_linen.LNLSTM(5)
    >>> x = jnp.ones((2, 7, 3))
    >>> variables = jax.eval_shape(rnn.init, jax.random.key(0), x)  # shapes only: no compiling
    >>> variables["params"]["recurrent_kernel"].shape
    (5, 20)
    >>> jax.eval_shape(rnn.apply, variables, x).shape
    (2, 7, 5)
  """

  _layer = "LNLSTM"
  _shapes = staticmethod(_lstm_shapes)
  _run = staticmethod(ln_lstm)


RECORD = registry.record(
    slug="layer_norm",
    kind="normalization",
    title="Layer Normalization",
    reference="arXiv:1607.06450",
    experiment="layer_norm_rnn",
    notes=(
        "Registers flax's LayerNorm (flax.nnx.LayerNorm, flax.linen.LayerNorm): jaxlearn's "
        "LayerNorm / linen.LayerNorm are subclasses that only add input-shape and epsilon checks; "
        "flax's default eps is 1e-6, PyTorch's and the official code's 1e-5 (parity with "
        "torch.nn.LayerNorm at matching eps is tested). The paper's recurrent setting is written "
        "here: LN-GRU and LN-LSTM with separate LNs of the input-to-hidden and hidden-to-hidden "
        "terms (over the whole 2H / 4H gate block) and, for the LSTM, of the cell state, eps 1e-5, "
        "following the paper's equations; the official LN-GRU's extra pre-LN input biases and "
        "its u*h + (1-u)*h_hat gate convention (a relabelling) are not copied, nor the bias "
        "inside the official LN-LSTM's input LN. Initialization follows flax's GRUCell "
        "(LeCun-normal input kernels, orthogonal recurrent blocks), not the official N(0, 0.01^2). "
        "The recurrence runs in float32 whatever the input dtype."
    ),
)
