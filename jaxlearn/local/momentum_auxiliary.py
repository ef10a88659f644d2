r"""Momentum Auxiliary Network (MAN): local heads from an EMA of the next block plus a bias net.

Su, Cai, Zhu, He, Xu, Guan, Si, "Momentum Auxiliary Network for Supervised Local Learning",
arXiv:2407.05623 (ECCV 2024). Official code: github.com/JunhaoSu0/MAN
(``networks/resnetInfoPro_MAN.py`` of its CIFAR-SVHN-STL experiments).

Supervised local learning trains block :math:`i` on an auxiliary objective of its own output
:math:`h_i` only (its input is stopped). MAN feeds the auxiliary network of block :math:`i` with

.. math::

   y_i = \mathrm{LB}_i(h_i) + \mathrm{EMA}_i(h_i),

where :math:`\mathrm{EMA}_i` and the learnable bias network :math:`\mathrm{LB}_i` both have the
structure of block :math:`i + 1` (the first layer of the next local module). :math:`\mathrm{LB}_i`
is trained by block :math:`i`'s objective; :math:`\mathrm{EMA}_i` receives no gradient and follows
the next block's parameters after every step,

.. math::

   \theta^{\mathrm{EMA}}_i \leftarrow m\, \theta^{\mathrm{EMA}}_i + (1 - m)\, \theta_{i+1},

with :math:`\theta_{i+1}` the parameters the step's objectives were computed with (the official
code updates the EMA after the local backward pass and before the optimizer step). The local
objective of block :math:`i < K` is the cross-entropy of an auxiliary classifier on :math:`y_i`;
the last block is trained with plain cross-entropy of its classifier head. :math:`\mathrm{LB}_i`
and :math:`\mathrm{EMA}_i` are independent random initializations (the official code copies the
next layer before its global re-initialization loop, so neither equals the next block's initial
weights).

Deviations from the official code: the auxiliary classifier is linear (the official
``AuxClassifier`` is a conv + 2 FC net), and the reconstruction term
``ixx_r * recon(decoder(y), image)`` of the official local loss is left out (``ixy``
cross-entropy only), so the objective of block :math:`i` is
:math:`\mathrm{CE}(W_i y_i + c_i, y)`.

References:
  Su, Cai, Zhu, He, Xu, Guan, Si, "Momentum Auxiliary Network for Supervised Local Learning",
  https://arxiv.org/abs/2407.05623, ECCV 2024; official code: https://github.com/JunhaoSu0/MAN.
"""

from __future__ import annotations

import dataclasses

import flax.linen as linen
import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks
from jaxlearn import registry
from jaxlearn.local.framework import LocalContext, LocalModel, LocalParams, LocalRule

__all__ = ["MomentumAuxiliary", "ema_update"]


def ema_update(ema, target, momentum):
  r""":math:`m \cdot \text{ema} + (1 - m) \cdot \text{target}` leaf by leaf (no gradient flows into
  the result), in the EMA's dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import ema_update
    >>> ema_update({"w": jnp.array([1.0])}, {"w": jnp.array([3.0])}, 0.75)
    {'w': Array([1.5], dtype=float32)}
  """
  momentum = jnp.asarray(momentum, jnp.float32)

  def update(e, t):
    new = momentum * e.astype(jnp.float32) + (1.0 - momentum) * t.astype(jnp.float32)
    return jax.lax.stop_gradient(new).astype(e.dtype)

  return jax.tree.map(update, ema, target)


def _dense_classifier(num_classes: int) -> linen.Dense:
  return linen.Dense(num_classes)


@dataclasses.dataclass(frozen=True)
class MomentumAuxiliary(LocalRule):
  r"""The MAN rule (see the module docstring for the equations).

  Attributes:
    model: the `LocalModel` the rule trains (block :math:`i + 1` gives the structure and the
      forward map of :math:`\mathrm{LB}_i` and :math:`\mathrm{EMA}_i`).
    num_classes: number of classes (>= 2).
    momentum: :math:`m` in [0, 1) (default 0.999, the official constructor's default).

  Heads: block :math:`i < K` has ``{'bias_net': LB_i params, 'classifier': Dense params}``, the
  last block ``{'classifier': ...}``. Rule state: the EMA copies, one per block but the last.

  References:
    Su et al., "Momentum Auxiliary Network for Supervised Local Learning",
    https://arxiv.org/abs/2407.05623, ECCV 2024; code: https://github.com/JunhaoSu0/MAN.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model = local.LocalModel.mlp([16, 16, 16])
    >>> rule = local.MomentumAuxiliary(model, num_classes=10, momentum=0.99)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> optimizer = optax.adam(1e-3)
    >>> init = jax.jit(lambda key: local.init_train_state(model, rule, optimizer, key, batch))
    >>> state = init(jax.random.key(0))
    >>> len(state.rule_state)  # EMA copies of blocks 1 and 2, for the heads of blocks 0 and 1
    2
    >>> step = local.local_train_step(model, rule, optimizer)
    >>> state, metrics = step(state, batch, jax.random.key(1))  # the EMAs follow blocks 1 and 2
  """

  model: LocalModel
  num_classes: int = 10
  _: dataclasses.KW_ONLY
  momentum: float = 0.999

  def __post_init__(self):
    if not isinstance(self.model, LocalModel):
      raise ValueError(f"model must be a LocalModel, got {self.model!r}")
    _checks.check_positive_int("num_classes", self.num_classes)
    _checks.check_range("num_classes", self.num_classes, 2, None)
    _checks.check_unit_interval("momentum", self.momentum)

  def _next_block(self, index: int):
    return self.model.blocks[index + 1]

  def _is_last(self, index: int) -> bool:
    return index == len(self.model.blocks) - 1

  def init_head(self, index: int, key, output):
    classifier = _dense_classifier(self.num_classes)
    lb_key, cls_key = jax.random.split(key)
    if self._is_last(index):
      flat = output.reshape(output.shape[0], -1)
      return {"classifier": classifier.init(cls_key, flat)["params"]}
    block = self._next_block(index)
    bias_net = block.init(lb_key, output)
    y = block.apply(bias_net, output)
    return {"bias_net": bias_net,
            "classifier": classifier.init(cls_key, y.reshape(y.shape[0], -1))["params"]}

  def init_state(self, key, outputs, batch, params=None):
    """The EMA copies: independent initializations of blocks 1..K-1 (on blocks 0..K-2's outputs)."""
    del batch, params
    if len(outputs) != len(self.model.blocks):
      raise ValueError(
          f"the rule was built for {len(self.model.blocks)} blocks, the model has {len(outputs)}")
    return tuple(self._next_block(i).init(jax.random.fold_in(key, i), outputs[i])
                 for i in range(len(outputs) - 1))

  def auxiliary_input(self, index: int, output, head, ema):
    r""":math:`y_i = \mathrm{LB}_i(h_i) + \mathrm{EMA}_i(h_i)`, the EMA stopped."""
    block = self._next_block(index)
    return block.apply(head["bias_net"], output) + block.apply(jax.lax.stop_gradient(ema), output)

  def block_loss(self, index: int, output, head, ctx: LocalContext) -> jax.Array:
    if self._is_last(index):
      features = output
    else:
      features = self.auxiliary_input(index, output, head, ctx.state[index])
    features = features.reshape(features.shape[0], -1)
    logits = _dense_classifier(self.num_classes).apply({"params": head["classifier"]}, features)
    return optax.losses.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), ctx.batch["y"]).mean()

  def update_state(self, state, params: LocalParams, ctx: LocalContext):
    """EMA_i <- m EMA_i + (1 - m) theta_{i+1}, with the parameters this step's objectives used."""
    del ctx
    return tuple(ema_update(ema, params.blocks[i + 1], self.momentum)
                 for i, ema in enumerate(state))

  def predict(self, model: LocalModel, params: LocalParams, x: jax.Array) -> jax.Array:
    """The argmax of the last block's classifier after a plain forward pass."""
    outputs = model.outputs(params.blocks, self, LocalContext({"x": x}, None, None))
    last = outputs[-1].reshape(x.shape[0], -1)
    logits = _dense_classifier(self.num_classes).apply(
        {"params": params.heads[-1]["classifier"]}, last)
    return jnp.argmax(logits, axis=-1)


RECORD = registry.record(
    slug="momentum_auxiliary_network",
    kind="local_rule",
    title="Momentum Auxiliary Network for Supervised Local Learning",
    reference="arXiv:2407.05623",
    experiment="man_local_learning",
    notes=(
        "Follows the official code (JunhaoSu0/MAN, resnetInfoPro_MAN.py): y_i = LB_i(h_i) + "
        "EMA_i(h_i) with LB_i trainable and EMA_i gradient-free, both with the structure of the "
        "next block and independently initialized; EMA_i <- m EMA_i + (1 - m) theta_{i+1} from "
        "the pre-update parameters (the official EMA update runs after the local backward and "
        "before optimizer.step()); m = 0.999 (the constructor's default; the README's 0.995 not "
        "re-checked). Deviations: blocks are generic framework blocks (an MLP in the "
        "experiment) rather than ResNet stages; the auxiliary classifier is linear (official: "
        "conv + 2 FC), and the decoder's reconstruction term (ixx) is omitted, so every local "
        "objective is cross-entropy."
    ),
)
