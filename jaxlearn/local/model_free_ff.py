r"""Model-free Forward-Forward training of physical neural networks (physical local learning).

Momeni et al., "Backpropagation-free Training of Deep Physical Neural Networks", Science, 2023
(arXiv:2304.11042). The equations are the official code's (github.com/MomeniAli/PhyLL,
`DNNs/main.py`, `Optics/optics_pnn.py`).

Block k applies a **physical system** :math:`\Phi_k` to its (detached) input -- a black box that
is only ever run forward, never differentiated, so no model of it is needed -- followed by a
trainable digital layer,

.. math::

   h_k = \sigma(P_k\, \Phi_k(\mathrm{sg}(h_{k-1})) + b_k),

(:math:`\sigma` = GELU in the DNN version, which has no physical layer; the optics version scores
:math:`|P_k \Phi_k(\cdot)|`). Its goodness is the cosine similarity with a fixed random unit
vector :math:`p_k` (drawn once, :math:`p_k = z / (\lVert z \rVert + 10^{-4})`, :math:`z \sim
N(0, I)`),

.. math::

   g_k(x) = \frac{\langle h_k, p_k \rangle}
                 {\max(\lVert h_k \rVert, \epsilon)\,\max(\lVert p_k \rVert, \epsilon)},
   \qquad \epsilon = 10^{-6},

and its objective contrasts *paired* positive and negative copies of the same input (the true label
vs a uniformly drawn wrong one, overlaid on the first C features: zeros, and the batch's maximum
at the label's position),

.. math::

   L_k = \mathrm{mean}_i \log\left(1 + e^{-\theta (g_k(x_i^+) - g_k(x_i^-))}\right),

:math:`\theta` = 4 (DNN) or 5 (optics). Each block takes 25 Adam steps per batch (lr 1e-4; the
optics code 20 steps at 5e-5) before its updated, detached outputs feed the next block:
`local_train_step(..., sequential=True, inner_steps=25)` with `per_block_optimizer`. Prediction:
the label whose overlay maximizes the goodness summed over all blocks.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn import _checks
from jaxlearn import registry
from jaxlearn.local.forward_forward import embed_label, sample_negative_labels
from jaxlearn.local.framework import LocalContext, LocalModel, LocalParams, LocalRule

__all__ = [
    "ModelFreeForwardForward",
    "cosine_goodness",
    "overlay_label",
    "paired_goodness_loss",
    "random_unit_vectors",
    "random_physical_system",
    "exact_gelu",
    "torch_linear_init",
]

_TORCH_LINEAR = linen.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """PyTorch's `nn.Linear` weight initialization, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for a
  (fan_in, fan_out) kernel.

  Example:
    >>> import jax
    >>> from jaxlearn.local import torch_linear_init
    >>> w = torch_linear_init(jax.random.key(0), (100, 3))
    >>> bool(abs(w).max() <= 0.1)
    True
  """
  return _TORCH_LINEAR(key, shape, dtype)


def exact_gelu(x: jax.Array) -> jax.Array:
  """GELU with the error function (PyTorch's `nn.GELU()` default; `jax.nn.gelu` approximates).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import exact_gelu
    >>> print(exact_gelu(jnp.array([0.0, 1.0])))
    [0.        0.8413447]
  """
  return jax.nn.gelu(x, approximate=False)


def cosine_goodness(h: jax.Array, p: jax.Array, eps: float = 1e-6) -> jax.Array:
  r"""Per-example cosine similarity of h (batch, features) with p (features,), in float32:
  :math:`\langle h, p \rangle / (\max(\lVert h \rVert, \epsilon) \max(\lVert p \rVert, \epsilon))`
  (PyTorch's `CosineSimilarity(dim=1, eps=1e-6)`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import cosine_goodness
    >>> print(cosine_goodness(jnp.array([[3.0, 4.0], [0.0, 2.0]]), jnp.array([1.0, 0.0])))
    [0.6 0. ]
  """
  h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
  p = jnp.asarray(p, h.dtype)
  h_norm = jnp.maximum(jnp.linalg.norm(h, axis=-1), eps)
  p_norm = jnp.maximum(jnp.linalg.norm(p), eps)
  return (h @ p) / (h_norm * p_norm)


def paired_goodness_loss(g_pos: jax.Array, g_neg: jax.Array, theta: float = 4.0) -> jax.Array:
  r""":math:`\mathrm{mean}\,\log(1 + \exp(-\theta (g^+ - g^-)))` over paired examples (float32).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import paired_goodness_loss
    >>> print(paired_goodness_loss(jnp.array([0.5]), jnp.array([0.5])))  # log 2: undecided
    0.6931472
  """
  delta = g_pos.astype(jnp.float32) - g_neg.astype(jnp.float32)
  return jnp.mean(jax.nn.softplus(-theta * delta))


def overlay_label(x: jax.Array, labels: jax.Array, num_classes: int,
                  value: float | jax.Array | None = None) -> jax.Array:
  """The first `num_classes` features zeroed, `value` at the label's position.

  `value` None: the maximum of the whole batch `x` (the official code's `x.max()`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import overlay_label
    >>> overlay_label(jnp.array([[0.5, 0.2, 3.0]]), jnp.array([1]), num_classes=2)
    Array([[0., 3., 3.]], dtype=float32)
  """
  x = jnp.asarray(x)
  value = jnp.max(x) if value is None else value
  return embed_label(x, labels, num_classes, value)


def random_unit_vectors(key: jax.Array, widths: Sequence[int]) -> tuple[jax.Array, ...]:
  """One fixed random direction per block: z / (||z|| + 1e-4), z ~ N(0, I) (the official p_k).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import random_unit_vectors
    >>> p = random_unit_vectors(jax.random.key(0), [5, 3])
    >>> [v.shape for v in p], round(float(jnp.linalg.norm(p[0])), 3)
    ([(5,), (3,)], 1.0)
  """
  vectors = []
  for index, width in enumerate(widths):
    z = jax.random.normal(jax.random.fold_in(key, index), (width,), jnp.float32)
    vectors.append(z / (jnp.linalg.norm(z) + 1e-4))
  return tuple(vectors)


def random_physical_system(
    seed: int, in_features: int, out_features: int, *, black_box: bool = True
) -> Callable[[jax.Array], jax.Array]:
  r"""A fixed random "physical" map :math:`x \mapsto |x R|`, R ~ N(0, 1/in_features) (a stand-in
  for a linear wave medium read out as amplitudes; not the paper's optics).

  With `black_box` (default) it runs as NumPy on the host through `jax.pure_callback`: JAX cannot
  differentiate it (any derivative through it raises), which is what model-free training needs.
  `black_box=False` is a differentiable JAX copy with identical outputs: what backprop through a
  perfect digital twin of the system would use.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import random_physical_system
    >>> phys = random_physical_system(0, 4, 3)
    >>> twin = random_physical_system(0, 4, 3, black_box=False)
    >>> x = jnp.ones((2, 4))
    >>> bool(jnp.allclose(phys(x), twin(x)))
    True
  """
  _checks.check_positive_int("in_features", in_features)
  _checks.check_positive_int("out_features", out_features)
  rng = np.random.default_rng(seed)
  medium = (rng.normal(size=(in_features, out_features)) / np.sqrt(in_features)).astype(np.float32)

  if not black_box:
    medium_jnp = jnp.asarray(medium)
    return lambda x: jnp.abs(x.astype(jnp.float32) @ medium_jnp)

  def host(x):
    return np.abs(np.asarray(x, np.float32) @ medium).astype(np.float32)

  def physical(x):
    shape = jax.ShapeDtypeStruct(x.shape[:-1] + (out_features,), jnp.float32)
    return jax.pure_callback(host, shape, x.astype(jnp.float32), vmap_method="sequential")

  return physical


@dataclasses.dataclass(frozen=True)
class ModelFreeForwardForward(LocalRule):
  """Physical local learning: black-box physics at each block's input, cosine goodness, pairs.

  Batches `{'x': (batch, features), 'y': labels}` (optionally 'y_neg'); positives are the first
  half of every block's batch axis, their paired negatives the second. Blocks are the trainable
  digital layers (e.g. `dense_block(width, exact_gelu, kernel_init=torch_linear_init)`); the
  rule applies `physical[k]` to block k's stopped input first. The fixed unit vectors p_k are
  the rule state.

  Attributes:
    num_classes: C (>= 2); the first C input features carry the label.
    physical: one map per block (e.g. `random_physical_system(...)`), or () for the DNN version
      without physics.
    theta: the loss scale theta > 0 (default 4, the DNN code; optics 5).
    label_value: the overlaid value; None (default): the batch maximum, as the official code.
    eps: the cosine's norm floor (default 1e-6).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> phys = tuple(local.random_physical_system(k, 16, 16) for k in range(2))
    >>> rule = local.ModelFreeForwardForward(num_classes=10, physical=phys)
    >>> model = local.LocalModel.mlp([16, 16], local.exact_gelu)
    >>> optimizer = local.per_block_optimizer(optax.adam(1e-4))
    >>> batch = {"x": jnp.ones((8, 16)), "y": jnp.arange(8) % 10}
    >>> state = local.init_train_state(model, rule, optimizer, jax.random.key(0), batch)
    >>> step = local.local_train_step(model, rule, optimizer, sequential=True, inner_steps=25)
    >>> state, metrics = step(state, batch, jax.random.key(1))  # physics never differentiated
    >>> rule.predict(model, state.params, state.rule_state, batch["x"]).shape
    (8,)

  References:
    Momeni, Rahmani, Mallejac, del Hougne, Fleury, `Backpropagation-free Training of Deep
    Physical Neural Networks <https://arxiv.org/abs/2304.11042>`_, Science, 2023. Official
    code: https://github.com/MomeniAli/PhyLL
  """

  num_classes: int = 10
  _: dataclasses.KW_ONLY
  physical: tuple[Callable[[jax.Array], jax.Array], ...] = ()
  theta: float = 4.0
  label_value: float | None = None
  eps: float = 1e-6

  def __post_init__(self):
    _checks.check_positive_int("num_classes", self.num_classes)
    _checks.check_range("num_classes", self.num_classes, 2, None)
    if not isinstance(self.physical, tuple) or not all(callable(f) for f in self.physical):
      raise ValueError(f"physical must be a tuple of callables, got {self.physical!r}")
    _checks.check_positive("theta", self.theta)
    if self.label_value is not None:
      _checks.check_range("label_value", self.label_value)
    _checks.check_positive("eps", self.eps)

  def _check_blocks(self, num_blocks: int) -> None:
    if self.physical and len(self.physical) != num_blocks:
      raise ValueError(
          f"physical has {len(self.physical)} maps for a {num_blocks}-block model")

  def prepare(self, ctx: LocalContext) -> jax.Array:
    """Positive overlays (true labels) stacked over the paired negatives (wrong labels)."""
    x, y = ctx.batch["x"], ctx.batch["y"]
    y_neg = ctx.batch.get("y_neg")
    if y_neg is None:
      y_neg = sample_negative_labels(ctx.key, y, self.num_classes)
    value = jnp.max(jnp.asarray(x)) if self.label_value is None else self.label_value
    overlay = lambda labels: overlay_label(x, labels, self.num_classes, value)
    return jnp.concatenate([overlay(y), overlay(y_neg)], axis=0)

  def block_input(self, index: int, signal: jax.Array, ctx: LocalContext) -> jax.Array:
    del ctx
    if not self.physical:
      return signal
    if index >= len(self.physical):
      raise ValueError(f"physical has {len(self.physical)} maps, block {index} has none")
    return self.physical[index](jax.lax.stop_gradient(signal))

  def init_state(self, key, outputs, batch, params=None):
    del batch, params
    self._check_blocks(len(outputs))
    return random_unit_vectors(key, [o.shape[-1] for o in outputs])

  def block_loss(self, index: int, output: jax.Array, head, ctx: LocalContext) -> jax.Array:
    del head
    goodness = cosine_goodness(output, ctx.state[index], self.eps)
    half = goodness.shape[0] // 2
    return paired_goodness_loss(goodness[:half], goodness[half:], self.theta)

  def goodness_per_label(self, model: LocalModel, params: LocalParams, rule_state,
                         x: jax.Array) -> jax.Array:
    """(batch, C): the cosine goodness summed over all blocks, per overlaid candidate label."""
    self._check_blocks(len(model.blocks))
    batch_size = x.shape[0]
    value = jnp.max(jnp.asarray(x)) if self.label_value is None else self.label_value
    candidates = jnp.repeat(jnp.arange(self.num_classes), batch_size)  # label-major
    signal = overlay_label(jnp.tile(x, (self.num_classes, 1)), candidates, self.num_classes,
                           value)
    outputs = model.outputs(params.blocks, self, LocalContext({"x": x}, rule_state, None),
                            signal=signal)
    total = sum(cosine_goodness(h, p, self.eps) for h, p in zip(outputs, rule_state))
    return total.reshape(self.num_classes, batch_size).T

  def predict(self, model: LocalModel, params: LocalParams, rule_state,
              x: jax.Array) -> jax.Array:
    """The label with the largest goodness summed over the blocks."""
    return jnp.argmax(self.goodness_per_label(model, params, rule_state, x), axis=-1)


RECORD = registry.record(
    slug="model_free_forward_forward",
    kind="local_rule",
    title="Backpropagation-free Training of Deep Physical Neural Networks",
    reference="arXiv:2304.11042",
    experiment="model_free_ff_digits",
    also=(
        "jaxlearn.local.per_block_optimizer",
        "jaxlearn.local.local_train_step",
    ),
    notes=(
        "Transcribed from the official code (MomeniAli/PhyLL DNNs/main.py, "
        "Optics/optics_pnn.py): cosine goodness with fixed random unit vectors "
        "(z / (|z| + 1e-4)), loss mean log(1 + exp(-theta (g+ - g-))) on paired positive / "
        "negative overlays (first C features zeroed, the batch maximum at the label), uniformly "
        "drawn wrong labels, 25 inner Adam steps per block and batch with updated outputs "
        "passed on, prediction by goodness summed over all blocks. The physical system sits "
        "at each block's INPUT (the official optics code), run as a jax.pure_callback that is "
        "never differentiated (tests prove it: the same step with the map downstream of the "
        "trainable layer raises). Deviations: the physics is a stand-in (fixed random "
        "projection + amplitude, `random_physical_system`), not the paper's optical, acoustic "
        "or microwave systems; the optics code scores |P x| but passes P x on, while a block "
        "here passes its activated output (the DNN code's convention); block biases start at "
        "zero (PyTorch draws them uniformly). Not verified: the paper's hardware results."
    ),
)
