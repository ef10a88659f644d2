"""Forward-Forward (FF): each layer learns to tell positive from negative data by its goodness.

Hinton, "The Forward-Forward Algorithm: Some Preliminary Investigations", arXiv:2212.13345
(supervised version, paper section 3.3). The equations below are the paper's (goodness = sum of
squared activities, p(positive) = logistic(goodness - threshold), length normalization between
layers, label embedded in the input); every number the paper leaves open (threshold, temperature,
normalization, label value, which layers score a prediction) is taken from Hinton's Matlab release
that accompanies it (`ffnew.m`, `ffenergytest.m`).

For a layer with activities h (post-ReLU) on input x::

  goodness     G(h)        = sum_j h_j^2
  p(positive)              = sigmoid((G(h) - theta) / T)
  layer loss   L           = mean_pos softplus(-(G - theta) / T)
                             + mean_neg softplus((G - theta) / T)
                           = -mean_pos log p - mean_neg log(1 - p)

(the Matlab code ascends log p on positive and log(1 - p) on negative cases, summed over both and
divided by the batch size: exactly L above). Defaults: theta = the layer's width (Matlab
`layernums{l}`; with the normalization below this asks for a mean squared activity of 1 per unit),
T = 1 (Matlab `temp`).

Each layer's input is length-normalized first, x <- x / (sqrt(mean_j x_j^2) + eps) (Matlab
`ffnormrows`: a mean squared activity of 1, i.e. length sqrt(width)), so the goodness that one layer
computed cannot be read by the next; the raw input is normalized too.

Supervised data: positive = the input with its first `num_classes` features replaced by the one-hot
label (times `label_value`, Matlab `labelstrength` = 1); negative = the same input with a wrong
label. Prediction: run the input once per candidate label and pick the label with the largest
goodness summed over the layers from `first_scored_block` on (default 1: all but the first hidden
layer, Matlab `minlevelenergy = 3` with layer 1 the input).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.local.framework import LocalContext, LocalModel, LocalParams, LocalRule

__all__ = [
    "ForwardForward",
    "goodness",
    "layer_loss",
    "rms_normalize",
    "embed_label",
    "sample_negative_labels",
]


def _non_batch_axes(x: jax.Array) -> tuple[int, ...]:
  return tuple(range(1, x.ndim))


def goodness(h: jax.Array) -> jax.Array:
  """Sum of squared activities per example (over every non-batch axis), in float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import goodness
    >>> goodness(jnp.array([[1.0, 2.0], [0.0, 3.0]]))
    Array([5., 9.], dtype=float32)
  """
  h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
  return jnp.sum(jnp.square(h), axis=_non_batch_axes(h))


def rms_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """x / (sqrt(mean(x^2)) + eps) per example: removes the length (goodness), keeps the direction.

  Statistics in float32; the result has x's dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import rms_normalize
    >>> print(rms_normalize(jnp.array([[3.0, 4.0]])))  # mean square 12.5
    [[0.8485... 1.1313...]]
  """
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  rms = jnp.sqrt(jnp.mean(jnp.square(x32), axis=_non_batch_axes(x), keepdims=True))
  return (x32 / (rms + eps)).astype(x.dtype)


def embed_label(x: jax.Array, labels: jax.Array, num_classes: int, value: float = 1.0) -> jax.Array:
  """Replaces the first `num_classes` features of each flat example by `value * one_hot(label)`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import embed_label
    >>> embed_label(jnp.ones((1, 5)), jnp.array([1]), num_classes=3)
    Array([[0., 1., 0., 1., 1.]], dtype=float32)
  """
  x = jnp.asarray(x)  # NumPy batches are welcome
  if x.ndim != 2 or x.shape[1] < num_classes:
    raise ValueError(
        f"x must have shape (batch, features) with features >= num_classes ({num_classes}), "
        f"got {x.shape}"
    )
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=x.dtype) * jnp.asarray(value, x.dtype)
  return x.at[:, :num_classes].set(one_hot)


def sample_negative_labels(
    key: jax.Array, labels: jax.Array, num_classes: int, logits: jax.Array | None = None
) -> jax.Array:
  """A wrong label per example: uniform over the other classes, or drawn from softmax(logits).

  With `logits` (shape (batch, num_classes)) the true class is masked out before sampling, so the
  result is never the true label (Hinton's Matlab draws "hard" negatives this way from a softmax
  read-out; FF's own goodness per label also works as logits).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import sample_negative_labels
    >>> labels = jnp.array([0, 1, 2, 3])
    >>> negatives = sample_negative_labels(jax.random.key(0), labels, num_classes=4)
    >>> bool(jnp.all(negatives != labels))
    True
  """
  _checks.check_range("num_classes", num_classes, 2, None)
  if logits is None:
    offset = jax.random.randint(key, labels.shape, 1, num_classes)
    return ((labels + offset) % num_classes).astype(labels.dtype)
  is_true = jax.nn.one_hot(labels, num_classes, dtype=bool)
  masked = jnp.where(is_true, -jnp.inf, logits.astype(jnp.float32))
  return jax.random.categorical(key, masked).astype(labels.dtype)


@dataclasses.dataclass(frozen=True)
class ForwardForward(LocalRule):
  """The supervised Forward-Forward rule (see the module docstring for the equations).

  Batches are `{'x': (batch, features), 'y': int labels}`, optionally with 'y_neg' (the negative
  labels to use, e.g. hard negatives from `sample_negative_labels(..., logits=...)`); otherwise
  negative labels are drawn uniformly from the wrong classes with the step's key. Inside a block,
  positives are the first half of the batch axis and negatives the second.

  Attributes:
    num_classes: number of classes (>= 2); the first `num_classes` input features carry the label.
    threshold: theta, > 0; None (default) uses each layer's width.
    temperature: T > 0 (default 1).
    label_value: value of the embedded one-hot label (default 1).
    eps: added to the RMS in the length normalization (default 1e-8).
    first_scored_block: prediction sums goodness over blocks with index >= this (default 1: all
      but the first hidden layer, as in the paper and the Matlab code).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model = local.LocalModel.mlp([32, 32])
    >>> rule = local.ForwardForward(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> state = local.init_train_state(model, rule, optax.adam(1e-3), jax.random.key(0), batch)
    >>> predict = jax.jit(rule.predict, static_argnums=0)
    >>> predict(model, state.params, batch["x"]).shape  # the label of highest goodness
    (8,)
  """

  num_classes: int = 10
  _: dataclasses.KW_ONLY
  threshold: float | None = None
  temperature: float = 1.0
  label_value: float = 1.0
  eps: float = 1e-8
  first_scored_block: int = 1

  def __post_init__(self):
    _checks.check_positive_int("num_classes", self.num_classes)
    _checks.check_range("num_classes", self.num_classes, 2, None)
    if self.threshold is not None:
      _checks.check_positive("threshold", self.threshold)
    _checks.check_positive("temperature", self.temperature)
    _checks.check_positive("label_value", self.label_value)
    _checks.check_positive("eps", self.eps)
    first = self.first_scored_block
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)):
      raise ValueError(f"first_scored_block must be an integer >= 0, got {first!r}")
    _checks.check_non_negative("first_scored_block", first)

  # -- the rule ----------------------------------------------------------------------------------

  def prepare(self, ctx: LocalContext) -> jax.Array:
    """Positive data (true labels) stacked over negative data (wrong labels)."""
    x, y = ctx.batch["x"], ctx.batch["y"]
    y_neg = ctx.batch.get("y_neg")
    if y_neg is None:
      y_neg = sample_negative_labels(ctx.key, y, self.num_classes)
    embed = lambda labels: embed_label(x, labels, self.num_classes, self.label_value)
    return jnp.concatenate([embed(y), embed(y_neg)], axis=0)

  def block_input(self, index: int, signal: jax.Array, ctx: LocalContext) -> jax.Array:
    del index, ctx
    return rms_normalize(signal, self.eps)

  def block_loss(self, index: int, output: jax.Array, head, ctx: LocalContext) -> jax.Array:
    del index, head
    batch_size = ctx.batch["x"].shape[0]
    logits = self.logits(output)
    return layer_loss(logits[:batch_size], logits[batch_size:])

  # -- goodness and prediction -------------------------------------------------------------------

  def logits(self, output: jax.Array) -> jax.Array:
    """(G(h) - theta) / T per example: the logit of p(positive)."""
    threshold = math.prod(output.shape[1:]) if self.threshold is None else self.threshold
    return (goodness(output) - threshold) / self.temperature

  def goodness_per_label(self, model: LocalModel, params: LocalParams, x: jax.Array) -> jax.Array:
    """Goodness accumulated over blocks >= `first_scored_block`, per candidate label: (batch, C)."""
    num_blocks = len(model.blocks)
    if self.first_scored_block >= num_blocks:
      raise ValueError(
          f"first_scored_block must be in [0, {num_blocks - 1}] for a {num_blocks}-block model, "
          f"got {self.first_scored_block}"
      )
    batch_size = x.shape[0]
    candidates = jnp.repeat(jnp.arange(self.num_classes), batch_size)  # label-major
    signal = embed_label(jnp.tile(x, (self.num_classes, 1)), candidates, self.num_classes,
                         self.label_value)
    ctx = LocalContext({"x": x}, None, None)
    outputs = model.outputs(params.blocks, self, ctx, signal=signal)
    total = sum(goodness(h) for h in outputs[self.first_scored_block:])
    return total.reshape(self.num_classes, batch_size).T

  def predict(self, model: LocalModel, params: LocalParams, x: jax.Array) -> jax.Array:
    """The label with the highest accumulated goodness."""
    return jnp.argmax(self.goodness_per_label(model, params, x), axis=-1)


def layer_loss(positive_logits: jax.Array, negative_logits: jax.Array) -> jax.Array:
  """-mean log sigmoid(positive) - mean log(1 - sigmoid(negative)), in float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import layer_loss
    >>> print(layer_loss(jnp.array([0.0]), jnp.array([0.0])))  # 2 log 2: undecided
    1.386...
  """
  positive = jnp.mean(jax.nn.softplus(-positive_logits.astype(jnp.float32)))
  negative = jnp.mean(jax.nn.softplus(negative_logits.astype(jnp.float32)))
  return positive + negative


RECORD = registry.record(
    slug="forward_forward",
    kind="local_rule",
    title="The Forward-Forward Algorithm: Some Preliminary Investigations",
    reference="arXiv:2212.13345",
    experiment="forward_forward_digits",
    also=(
        "jaxlearn.local.LocalModel",
        "jaxlearn.local.LocalRule",
        "jaxlearn.local.Block",
        "jaxlearn.local.dense_block",
        "jaxlearn.local.from_linen",
        "jaxlearn.local.from_nnx",
        "jaxlearn.local.block_losses",
        "jaxlearn.local.local_loss",
        "jaxlearn.local.local_train_step",
        "jaxlearn.local.init_train_state",
        "jaxlearn.local.block_labels",
        "jaxlearn.local.fit_functions",
    ),
    notes=(
        "Not in the method index itself: Hinton's Forward-Forward is the base that "
        "`forward_gnn` and `model_free_forward_forward` build on; this record also carries the "
        "layer-local framework (`jaxlearn.local.framework`) every local rule uses. Details the "
        "paper leaves open follow Hinton's Matlab release: threshold = layer width on the sum "
        "of squares, RMS length normalization (inputs included), label value 1, prediction "
        "from all but the first hidden layer. Deviations: negatives are uniformly drawn wrong "
        "labels by default (Matlab draws hard negatives from a softmax read-out; pass `y_neg` "
        "from `sample_negative_labels(..., logits=)` for that); no peer normalization "
        "(Matlab's lambdamean=0.03 regularizer); the gradient is the exact one, twice Matlab's "
        "(it drops the 2 of d h^2), so learning rates differ by 2x. Popular PyTorch ports "
        "(mpezeshki) use mean instead of sum of squares with threshold 2, and random "
        "permutations that can pick the true label as a negative; ours never does."
    ),
)
