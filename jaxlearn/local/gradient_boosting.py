r"""GB-DNN: a deep network grown by gradient boosting, one frozen dense layer per stage.

Emami and Martínez-Muñoz, "A Gradient Boosting Approach for Training Convolutional and Deep Neural
Networks" (arXiv:2302.11327); official code github.com/GAA-UAM/GB-CNN (`models/gbdnn.py`,
`Base/_base.py`, `Base/_losses.py`, `Libs/config.py`), multi-class classification.

With one-hot targets :math:`Y`, :math:`F_0 = 0` and :math:`h_0 = x`, stage :math:`t = 1 \dots T`
adds one dense layer :math:`D_t` (width `units`, ReLU) between the layers trained so far (frozen) and
the output layer :math:`O_t`:

.. math::

   r_t &= Y - \mathrm{softmax}(F_{t-1}) \\
   f_t(x) &= O_t\big(\mathrm{relu}(h_{t-1}(x) W_t + b_t)\big), \qquad
   (W_t, b_t, O_t) \text{ fitted to } r_t \text{ by mean squared error (Adam, minibatches)} \\
   \rho_t &= \eta\cdot\Big(-\frac{\sum f_t(X)(Y - P)}{\sum f_t(X)^2 P (P - 1)}\Big),
            \quad P = Y - r_t \\
   F_t &= F_{t-1} + \rho_t f_t, \qquad h_t = \mathrm{relu}(h_{t-1} W_t + b_t) \text{ (frozen).}

Only :math:`D_t` and :math:`O_t` are trained in stage :math:`t`; :math:`O_t` starts from
:math:`O_{t-1}` (the official GB-CNN code carries the output weights over), :math:`D_t` and
:math:`O_1` from Keras' defaults (Glorot-uniform kernels, zero biases). The stored model is the
frozen layers, every stage's output layer and :math:`\rho_t`; prediction is
:math:`F_0 + \sum_t \rho_t f_t(x)` (the official code stores a clone of each stage's model; since the
earlier layers are frozen, sharing them is the same function). Early stopping as Keras'
`EarlyStopping(monitor="mean_squared_error", patience)`: training stops once the epoch's training
MSE has not improved for `patience` epochs (the weights at that point are kept). Defaults are the
official `Libs/config.py`: 40 boosting units / 20 units = 2 stages, :math:`\eta` = 0.1, 200 epochs,
batch 128, Adam (learning rate 1e-3, epsilon 1e-7), patience 3.

Deviations (see the record): the official GB-DNN code (`BaseGBDNN._regressor`) rebuilds a fresh
trainable input layer each stage, adds batch normalization and dropout before the output, and its
`_layer_freezing` freezes `model.layers[-2]` (the dropout layer in that model); this follows the
paper's description (one new dense layer per stage on top of the frozen ones, as the official
GB-CNN code does for its dense part). Each epoch drops the last partial minibatch; Adam restarts at
every stage (the official code reuses one Keras optimizer).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks
from jaxlearn import registry
from jaxlearn.local._boosting import boosting_newton_step, boosting_residuals, one_hot_targets

__all__ = ["gb_dnn_fit", "GBDNNModel", "gb_dnn_decision", "gb_dnn_stage"]


class GBDNNModel(NamedTuple):
  r"""A fitted GB-DNN.

  Attributes:
    intercept: :math:`F_0`, `(K,)`.
    hidden: the dense layers `(kernel, bias)`, one per stage, in order (all frozen once fitted).
    outputs: each stage's output layer `(kernel (units, K), bias (K,))`.
    steps: :math:`\rho_t` (with :math:`\eta`), `(T,)`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import gb_dnn_fit
    >>> from jaxlearn.local import GBDNNModel
    >>> model = GBDNNModel(jnp.zeros(2), ((jnp.ones((3, 4)), jnp.zeros(4)),),
    ...                    ((jnp.ones((4, 2)), jnp.zeros(2)),), jnp.array([0.1]))
    >>> [w.shape for w, _ in model.hidden]
    [(3, 4)]
  """

  intercept: jax.Array
  hidden: tuple[tuple[jax.Array, jax.Array], ...]
  outputs: tuple[tuple[jax.Array, jax.Array], ...]
  steps: jax.Array


def _glorot(key, fan_in, fan_out, dtype):
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  return jax.random.uniform(key, (fan_in, fan_out), dtype, -limit, limit)


def gb_dnn_stage(
    key: jax.Array,
    features: jax.Array,
    residuals: jax.Array,
    layer: tuple[jax.Array, jax.Array],
    output: tuple[jax.Array, jax.Array],
    learning_rate=1e-3,
    *,
    epochs: int = 200,
    batch_size: int = 128,
    patience: int = 3,
):
  r"""Trains one stage: a dense ReLU layer on the frozen `features` plus the output layer, fitted to
  `residuals` by mean squared error with Adam and Keras-style early stopping.

  Args:
    key: PRNG key (the minibatch order of each epoch).
    features: :math:`h_{t-1}(X)`, the frozen layers' output on the training set `(n, d)`.
    residuals: the pseudo-residuals `(n, K)`.
    layer: the new layer's initial `(kernel (d, units), bias (units,))`.
    output: the output layer's initial `(kernel (units, K), bias (K,))`.
    learning_rate: Adam's learning rate (traceable).
    epochs, batch_size, patience: static; `patience` epochs without improvement of the epoch's
      training MSE stop the stage.

  Returns:
    `(layer, output, epoch_losses)`: the trained layers and the mean training MSE of every epoch
    (NaN after the stop).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import gb_dnn_stage
    >>> f, r = jnp.ones((8, 2)), jnp.ones((8, 1))
    >>> layer, output = (jnp.full((2, 3), 0.1), jnp.zeros(3)), (jnp.zeros((3, 1)), jnp.zeros(1))
    >>> stage = lambda key: gb_dnn_stage(key, f, r, layer, output, epochs=3, batch_size=4)
    >>> layer, output, losses = jax.eval_shape(stage, jax.random.key(0))  # shapes only
    >>> losses.shape
    (3,)
  """
  for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
    _checks.check_positive_int(name, value)
  _checks.check_positive("learning_rate", learning_rate)
  if batch_size > features.shape[0]:
    raise ValueError(f"batch_size must be <= the number of examples ({features.shape[0]}), got "
                     f"{batch_size}")
  return _train_stage(key, features, residuals, layer, output, learning_rate, epochs=epochs,
                      batch_size=batch_size, patience=patience)


def _train_stage_impl(key, features, residuals, layer, output, learning_rate, *, epochs, batch_size,
                      patience):
  """One stage's training loop (jitted by `_train_stage`)."""
  n = features.shape[0]
  batches = n // batch_size
  optimizer = optax.adam(learning_rate, eps=1e-7)

  def predict(params, f):
    (w, b), (wo, bo) = params
    return jax.nn.relu(f @ w + b) @ wo + bo

  def mse(params, f, r):
    return jnp.mean((predict(params, f) - r) ** 2)

  def batch_step(carry, rows):
    params, opt_state = carry
    value, grads = jax.value_and_grad(mse)(params, features[rows], residuals[rows])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value

  def epoch(carry, key):
    params, opt_state, best, wait, stopped = carry
    order = jax.random.permutation(key, n)[: batches * batch_size].reshape(batches, batch_size)
    (new_params, new_opt), values = jax.lax.scan(batch_step, (params, opt_state), order)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(stopped, b, a), new, old)
    params, opt_state = keep((new_params, new_opt), (params, opt_state))
    loss = jnp.mean(values)
    improved = loss < best
    best = jnp.where(stopped | ~improved, best, loss)
    wait = jnp.where(stopped, wait, jnp.where(improved, 0, wait + 1))
    logged = jnp.where(stopped, jnp.nan, loss)
    return (params, opt_state, best, wait, stopped | (wait >= patience)), logged

  params = (layer, output)
  carry = (params, optimizer.init(params), jnp.asarray(jnp.inf, jnp.float32),
           jnp.zeros([], jnp.int32), jnp.asarray(False))
  (params, *_), losses = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
  return params[0], params[1], losses


def _new_layers_impl(key, stage, features, units, num_classes):
  """Stage `stage`'s new dense layer and new output layer (Keras defaults) and training key (a
  function of `key` and `stage` only: T stages extend T - 1 stages)."""
  k_layer, k_out, k_train = jax.random.split(jax.random.fold_in(key, stage), 3)
  dtype = features.dtype
  layer = (_glorot(k_layer, features.shape[1], units, dtype), jnp.zeros((units,), dtype))
  output = (_glorot(k_out, units, num_classes, dtype), jnp.zeros((num_classes,), dtype))
  return layer, output, k_train


def _boost_impl(targets, raw, residuals, features, layer, output, eta):
  """After a stage: the frozen features, F, rho, the training cross-entropy, the next residuals."""
  features = jax.nn.relu(features @ layer[0] + layer[1])  # frozen from now on
  update = features @ output[0] + output[1]
  rho = eta * boosting_newton_step(targets, residuals, update)
  raw = raw + rho * update
  loss = jnp.mean(jax.nn.logsumexp(raw, axis=-1) - jnp.sum(targets * raw, axis=-1))
  return features, raw, rho, loss, boosting_residuals(targets, raw)


# The compiled programs (tests and smoke runs swap in fast-compiling versions of the same functions).
_STAGE_STATIC = ("epochs", "batch_size", "patience")
_train_stage = jax.jit(_train_stage_impl, static_argnames=_STAGE_STATIC)
_new_layers = jax.jit(_new_layers_impl, static_argnames=("units", "num_classes"))
_boost = jax.jit(_boost_impl)


def gb_dnn_decision(model: GBDNNModel, x: jax.Array, num_stages=None) -> jax.Array:
  r"""The raw prediction :math:`F_0 + \sum_t \rho_t f_t(x)`, `(n, K)`; with `num_stages`, only the
  first stages (static or traced).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.local import GBDNNModel, gb_dnn_decision
    >>> layer = (jnp.eye(2), jnp.zeros(2))
    >>> model = GBDNNModel(jnp.zeros(2), (layer, layer), (layer, layer), jnp.array([1.0, 0.5]))
    >>> x = jnp.array([[1.0, -1.0]])
    >>> gb_dnn_decision(model, x), gb_dnn_decision(model, x, num_stages=1)
    (Array([[1.5, 0. ]], dtype=float32), Array([[1., 0.]], dtype=float32))
  """
  raw = jnp.broadcast_to(model.intercept, (x.shape[0],) + model.intercept.shape)
  h = x
  for t, ((w, b), (wo, bo)) in enumerate(zip(model.hidden, model.outputs)):
    h = jax.nn.relu(h @ w + b)
    step = model.steps[t] if num_stages is None else jnp.where(t < num_stages, model.steps[t], 0.0)
    raw = raw + step * (h @ wo + bo)
  return raw


def gb_dnn_fit(
    key: jax.Array,
    x: jax.Array,
    labels,
    num_classes: int,
    *,
    stages: int = 2,
    units: int = 20,
    eta=0.1,
    epochs: int = 200,
    batch_size: int = 128,
    learning_rate=1e-3,
    patience: int = 3,
) -> tuple[GBDNNModel, dict]:
  r"""Fits GB-DNN (module docstring): `stages` boosting stages, one new frozen-after-training
  dense layer of `units` ReLU units each.

  Args:
    key: PRNG key.
    x: inputs `(n, d)`, float.
    labels: integer labels `(n,)` in [0, num_classes).
    num_classes: K >= 2.
    stages: T >= 1 (the official `boosting_epoch / units`; static).
    units: the width of each dense layer (static).
    eta: > 0, the boosting shrinkage (`boosting_eta`).
    epochs, batch_size, patience: each stage's training (`additive_epoch`, `batch`,
      `patience`; static).
    learning_rate: > 0, Adam's (`additive_eta`).

  Returns:
    `(model, history)` with history {'loss': the training cross-entropy after each stage (T,),
    'stage_mse': each stage's per-epoch training MSE (T, epochs), NaN after early stopping}.

  References:
    Emami, Martínez-Muñoz, "A Gradient Boosting Approach for Training Convolutional and Deep
    Neural Networks", `arXiv:2302.11327 <https://arxiv.org/abs/2302.11327>`_, 2023. Official
    code: https://github.com/GAA-UAM/GB-CNN.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import gb_dnn_fit
    >>> x = jax.random.normal(jax.random.key(0), (64, 3))
    >>> y = (x[:, 0] > 0).astype(int)
    >>> fit = lambda key: gb_dnn_fit(key, x, y, 2, stages=3, units=8, epochs=20, batch_size=16)
    >>> model, history = jax.eval_shape(fit, jax.random.key(1))  # shapes only: no compilation
    >>> [w.shape for w, _ in model.hidden], history["stage_mse"].shape
    ([(3, 8), (8, 8), (8, 8)], (3, 20))
  """
  _checks.check_positive_int("num_classes", num_classes)
  if num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  for name, value in (("stages", stages), ("units", units), ("epochs", epochs),
                      ("batch_size", batch_size), ("patience", patience)):
    _checks.check_positive_int(name, value)
  _checks.check_positive("eta", eta)
  _checks.check_positive("learning_rate", learning_rate)
  x = jnp.asarray(x)
  if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be a 2-D float array, got dtype {x.dtype} and shape {x.shape}")
  targets = one_hot_targets(labels, num_classes)
  if targets.shape[0] != x.shape[0]:
    raise ValueError(f"labels must have one entry per row of x ({x.shape[0]}), got "
                     f"{targets.shape[0]}")
  if batch_size > x.shape[0]:
    raise ValueError(f"batch_size must be <= the number of examples ({x.shape[0]}), got "
                     f"{batch_size}")
  intercept = jnp.zeros((num_classes,), jnp.float32)
  raw = jnp.broadcast_to(intercept, targets.shape)
  residuals = targets - 1.0 / num_classes  # Y - softmax(F_0) with F_0 = 0
  features = x
  hidden, outputs, steps, losses, stage_mse = [], [], [], [], []
  output = None
  for t in range(stages):
    layer, first_output, k_train = _new_layers(key, t, features, units, num_classes)
    output = first_output if output is None else output  # carried over after stage 1
    layer, output, mse = gb_dnn_stage(k_train, features, residuals, layer, output,
                                      learning_rate, epochs=epochs, batch_size=batch_size,
                                      patience=patience)
    features, raw, rho, loss, residuals = _boost(targets, raw, residuals, features, layer,
                                                 output, eta)
    hidden.append(layer)
    outputs.append(output)
    steps.append(rho)
    stage_mse.append(mse)
    losses.append(loss)
  model = GBDNNModel(intercept, tuple(hidden), tuple(outputs), jnp.stack(steps))
  return model, {"loss": jnp.stack(losses), "stage_mse": jnp.stack(stage_mse)}


RECORD = registry.record(
    slug="gradient_boosting_dnn",
    kind="local_rule",
    title="A Gradient Boosting Approach for Training Convolutional and Deep Neural Networks",
    reference="arXiv:2302.11327",
    experiment="gb_dnn_digits",
    also=("jaxlearn.local.boosting_residuals", "jaxlearn.local.boosting_newton_step"),
    notes=(
        "A procedure, not a jaxlearn.local.LocalRule: stage-wise boosting with backprop inside "
        "each stage (only the new dense layer and the output layer are trained; earlier dense "
        "layers frozen). Residuals, Newton step, defaults and early stopping from the official "
        "code (GAA-UAM/GB-CNN). Follows the paper's structure (one new dense layer per stage "
        "on top of the frozen ones, output weights carried over as in the official GB-CNN "
        "code); the official GB-DNN class instead rebuilds a fresh trainable input layer each "
        "stage and its freezing hits the dropout layer (model.layers[-2]). Not implemented: "
        "the official GB-DNN's input Normalization (unadapted), BatchNormalization and "
        "Dropout(0.1) before the output, GB-CNN's convolutional part, the binary "
        "log-exponential loss. Each epoch drops the last partial minibatch; Adam restarts each "
        "stage. Not verified: the paper's per-dataset settings."
    ),
)
