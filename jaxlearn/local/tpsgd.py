r"""Target Projection SGD (tpSGD): each hidden layer regresses a fixed random projection of y.

Lomnitz, Daniels, Zhang, Piacentino, "Learning with Local Gradients at the Edge",
arXiv:2208.08503 (2022). No official code was found. The paper generalizes Direct Random Target
Projection (DRTP; Frenkel, Lefebvre, Bol, arXiv:1909.01311, official code
github.com/ChFrenkel/DirectRandomTargetProjection) from DRTP's fixed error signal to a layer-wise
loss of the layer's output against a random projection of the one-hot label :math:`y^*`.

For hidden block :math:`i` with output :math:`y_i` (post-activation) and a fixed random matrix
:math:`P_i` (rule state, never trained), the local objective is

.. math::

   J_i = \lVert P_i y^* - y_i \rVert_2^2 \quad (\ell_2), \qquad
   J_i = \lVert P_i y^* - y_i \rVert_1 \quad (\ell_1),

averaged over the batch; its gradient with respect to the layer's pre-activation :math:`z_i` is
:math:`-2 (P_i y^* - y_i) \odot \sigma_i'(z_i)` (:math:`\ell_2`) or
:math:`-\operatorname{sign}(P_i y^* - y_i) \odot \sigma_i'(z_i)` (:math:`\ell_1`, the sign
variant). Every block sees its input through a stop-gradient, so the update of layer :math:`i`
needs layer :math:`i`'s activations only: no backward pass crosses a layer. The last block (whose
width must be the number of classes) is trained on its ordinary loss against :math:`y^*` (softmax
cross-entropy by default), as DRTP trains its output layer.

What could not be read from the paper (only its abstract and a secondary summary were readable) and
is pinned here: :math:`P_i` has shape (classes, width) with i.i.d. entries
:math:`\mathcal{U}(-\sqrt{6/\text{width}}, \sqrt{6/\text{width}})` (DRTP's official code:
``kaiming_uniform_`` of its fixed feedback matrix), the target of a batch is
:math:`\operatorname{onehot}(y) P_i`, the per-example loss is summed over units, and the output
layer's loss is softmax cross-entropy.

References:
  Lomnitz, Daniels, Zhang, Piacentino, "Learning with Local Gradients at the Edge",
  https://arxiv.org/abs/2208.08503, arXiv preprint, 2022 (no official code found).
  Frenkel, Lefebvre, Bol, "Learning without feedback: Direct random target projection as a
  feedback-alignment algorithm with layerwise feedforward training" (DRTP),
  https://arxiv.org/abs/1909.01311, arXiv preprint, 2019; official code:
  https://github.com/ChFrenkel/DirectRandomTargetProjection.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks
from jaxlearn import registry
from jaxlearn.local.framework import LocalContext, LocalModel, LocalParams, LocalRule

__all__ = ["TargetProjection", "projection_targets", "target_projection_loss"]

_HIDDEN_LOSSES = ("l2", "l1")
_OUTPUT_LOSSES = ("cross_entropy", "l2", "l1")


def projection_targets(labels: jax.Array, projection: jax.Array) -> jax.Array:
  r"""The local targets :math:`\operatorname{onehot}(y) P` of a batch, shape (batch, width).

  Args:
    labels: integer labels, shape (batch,).
    projection: the fixed matrix :math:`P`, shape (num_classes, width).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import projection_targets
    >>> projection = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> projection_targets(jnp.array([2, 0]), projection)  # rows of P picked by the labels
    Array([[5., 6.],
           [1., 2.]], dtype=float32)
  """
  one_hot = jax.nn.one_hot(labels, projection.shape[0], dtype=projection.dtype)
  return one_hot @ projection


def target_projection_loss(output: jax.Array, target: jax.Array, loss: str = "l2") -> jax.Array:
  r"""Batch mean of :math:`\lVert t - y \rVert_2^2` (``'l2'``) or :math:`\lVert t - y \rVert_1`
  (``'l1'``) over the non-batch axes, in float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import target_projection_loss
    >>> y, t = jnp.array([[1.0, 0.0], [0.0, 0.0]]), jnp.array([[0.0, 2.0], [1.0, 0.0]])
    >>> print(target_projection_loss(y, t), target_projection_loss(y, t, "l1"))  # (5 + 1) / 2
    3.0 2.0
  """
  _checks.check_choice("loss", loss, _HIDDEN_LOSSES)
  residual = target.astype(jnp.float32) - output.astype(jnp.float32)
  axes = tuple(range(1, residual.ndim))
  per_example = jnp.sum(jnp.square(residual) if loss == "l2" else jnp.abs(residual), axis=axes)
  return jnp.mean(per_example)


@dataclasses.dataclass(frozen=True)
class TargetProjection(LocalRule):
  r"""The tpSGD rule (see the module docstring for the equations).

  Blocks are the layers of an MLP, the last one producing ``num_classes`` logits (e.g.
  ``LocalModel((dense_block(256), dense_block(256), dense_block(10, None)))``). Batches are
  ``{'x': (batch, features), 'y': int labels}``. The rule state holds the fixed projections
  :math:`P_i`, one per hidden block.

  Attributes:
    num_classes: number of classes (>= 2); the last block's width.
    loss: hidden layers' loss, ``'l2'`` (default) or ``'l1'`` (the sign variant).
    output_loss: the last block's loss against the labels: ``'cross_entropy'`` (default, softmax
      cross-entropy on its outputs as logits), ``'l2'`` or ``'l1'`` against the one-hot label.
    projection_scale: the half-width of the uniform distribution of :math:`P_i`'s entries; None
      (default) uses :math:`\sqrt{6/\text{width}}` (DRTP's ``kaiming_uniform_``).

  References:
    Lomnitz et al., "Learning with Local Gradients at the Edge",
    https://arxiv.org/abs/2208.08503, 2022 (no official code).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model = local.LocalModel((local.dense_block(32), local.dense_block(10, None)))
    >>> rule = local.TargetProjection(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> state = local.init_train_state(model, rule, optax.adam(1e-3), jax.random.key(0), batch)
    >>> [p.shape for p in state.rule_state]  # one fixed projection per hidden block
    [(10, 32)]
    >>> step = local.local_train_step(model, rule, optax.adam(1e-3), sequential=True)
    >>> state, metrics = step(state, batch, jax.random.key(1))
    >>> rule.predict(model, state.params, batch["x"]).shape
    (8,)
  """

  num_classes: int = 10
  _: dataclasses.KW_ONLY
  loss: str = "l2"
  output_loss: str = "cross_entropy"
  projection_scale: float | None = None

  def __post_init__(self):
    _checks.check_positive_int("num_classes", self.num_classes)
    _checks.check_range("num_classes", self.num_classes, 2, None)
    _checks.check_choice("loss", self.loss, _HIDDEN_LOSSES)
    _checks.check_choice("output_loss", self.output_loss, _OUTPUT_LOSSES)
    if self.projection_scale is not None:
      _checks.check_positive("projection_scale", self.projection_scale)

  def init_state(self, key, outputs, batch):
    """The fixed projections: entries uniform in +-scale, shape (num_classes, width) per hidden
    block."""
    del batch
    last = outputs[-1]
    if last.ndim != 2 or last.shape[-1] != self.num_classes:
      raise ValueError(
          f"the last block must output (batch, num_classes={self.num_classes}) logits, got shape "
          f"{last.shape}"
      )
    projections = []
    for index, output in enumerate(outputs[:-1]):
      width = math.prod(output.shape[1:])
      scale = math.sqrt(6.0 / width) if self.projection_scale is None else self.projection_scale
      p = jax.random.uniform(jax.random.fold_in(key, index), (self.num_classes, width),
                             jnp.float32, -scale, scale)
      projections.append(p.reshape((self.num_classes,) + output.shape[1:]))
    return tuple(projections)

  def block_loss(self, index: int, output, head, ctx: LocalContext) -> jax.Array:
    del head
    labels = ctx.batch["y"]
    if index < len(ctx.state):  # a hidden block: regress its projected target
      projection = ctx.state[index]
      target = projection_targets(labels, projection.reshape(self.num_classes, -1))
      return target_projection_loss(output.reshape(output.shape[0], -1), target, self.loss)
    if self.output_loss == "cross_entropy":
      logits = output.astype(jnp.float32)
      return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    one_hot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    return target_projection_loss(output, one_hot, self.output_loss)

  def predict(self, model: LocalModel, params: LocalParams, x: jax.Array) -> jax.Array:
    """The argmax of the last block's output after a plain forward pass."""
    outputs = model.outputs(params.blocks, self, LocalContext({"x": x}, None, None))
    return jnp.argmax(outputs[-1], axis=-1)


RECORD = registry.record(
    slug="tpsgd",
    kind="local_rule",
    title="Learning with Local Gradients at the Edge",
    reference="arXiv:2208.08503",
    experiment="tpsgd_digits",
    notes=(
        "MLP only (the paper's CNN and RNN variants were not readable). Not verified against the "
        "paper (only its abstract and a secondary summary were readable; no official code): the "
        "distribution and scale of P_i (pinned to DRTP's official kaiming_uniform_, U(+-sqrt(6/"
        "width)), shape (classes, width)), the per-example reduction (sum over units, batch "
        "mean), the output layer's loss (softmax cross-entropy on the labels, as DRTP's output "
        "layer; 'l2'/'l1' against the one-hot label are options), learning rates. The l1 (sign) "
        "variant is the summary's. The update is the gradient of the layer loss computed by "
        "autodiff inside the layer (inputs stopped), not a hand-written delta rule; the values "
        "agree (tests)."
    ),
)
