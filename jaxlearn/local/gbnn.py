r"""GBNN: a one-hidden-layer network trained by gradient boosting, J hidden units at a time.

Emami and Martínez-Muñoz, "Sequential Training of Neural Networks with Gradient Boosting"
(arXiv:1909.12098), as implemented in the official package `gbnn` (PyPI 0.0.2, github.com/GAA-UAM/GBNN,
`gbnn/GBNN.py`, class `GNEGNE`), multi-class classification.

With one-hot targets :math:`Y` and :math:`F_0 = 0`, stage :math:`t = 1 \dots T`:

.. math::

   r_t &= Y - \mathrm{softmax}(F_{t-1}) \qquad \text{(pseudo-residuals)} \\
   f_t &= \arg\min_{f \in \mathcal{N}_J}\; \tfrac12\,\mathrm{mean}_{S_t}\lVert r_t - f(x)\rVert^2
          + \tfrac{\lambda}{2 |S_t|}\lVert W\rVert^2
          \qquad f(x) = \sigma(x W^{(1)}_t + b^{(1)}_t) W^{(2)}_t + b^{(2)}_t \\
   \rho_t &= \eta \cdot \text{Newton step of the cross-entropy along } f_t(X)
            \quad (\texttt{boosting\_newton\_step}) \\
   F_t &= F_{t-1} + \rho_t f_t ,

where :math:`\mathcal{N}_J` is a network with :math:`J` hidden units (logistic :math:`\sigma`) and
:math:`K` linear outputs, fitted on a random subsample :math:`S_t` (a fraction `subsample` of the
data, without replacement); the Newton step uses all the data. All stages **collapse exactly** into
one hidden layer of :math:`T J` units (`gbnn_to_mlp`, the official `to_NN`):

.. math::

   W^{(1)} = [W^{(1)}_1 \dots W^{(1)}_T],\quad b^{(1)} = [b^{(1)}_1 \dots b^{(1)}_T],\quad
   W^{(2)} = \begin{bmatrix}\rho_1 W^{(2)}_1\\ \vdots \\ \rho_T W^{(2)}_T\end{bmatrix},\quad
   b^{(2)} = F_0 + \textstyle\sum_t \rho_t b^{(2)}_t .

Because the units are ordered by stage, dropping the last stages' units leaves the model of the
first stages (the paper's "switch off the last-trained units").

Deviation: the official code fits each stage with scikit-learn's `MLPRegressor` (L-BFGS from SciPy,
`max_iter` iterations, L2 penalty `alpha` = 1e-4, Glorot-uniform initialization). Here each stage
runs `max_iter` iterations of `optax.lbfgs` (zoom line search) on the same objective, from the same
initialization distribution; the iterates differ from SciPy's. The binary log-exponential loss and
the regression variant of the package are not implemented.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks
from jaxlearn import registry
from jaxlearn.local._boosting import boosting_newton_step, boosting_residuals, one_hot_targets

__all__ = [
    "gbnn_fit", "GBNNModel", "gbnn_decision", "gbnn_to_mlp", "boosting_residuals",
    "boosting_newton_step",
]

_ACTIVATIONS = {"logistic": (jax.nn.sigmoid, 2.0), "tanh": (jnp.tanh, 6.0),
                "relu": (jax.nn.relu, 6.0)}


class GBNNModel(NamedTuple):
  """A fitted GBNN: `T` stages of `J` hidden units, stacked along a leading stage axis.

  Attributes:
    intercept: :math:`F_0`, `(K,)` (zeros for the cross-entropy).
    hidden_kernel: `(T, d, J)`.
    hidden_bias: `(T, J)`.
    output_kernel: `(T, J, K)`.
    output_bias: `(T, K)`.
    steps: the stages' step sizes :math:`\\rho_t`, `(T,)` (with :math:`\\eta` included).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import GBNNModel
    >>> stages, inputs, units, classes = 3, 4, 2, 5
    >>> model = GBNNModel(jnp.zeros(classes), jnp.ones((stages, inputs, units)),
    ...                   jnp.zeros((stages, units)), jnp.ones((stages, units, classes)),
    ...                   jnp.zeros((stages, classes)), jnp.full(stages, 0.5))
    >>> model.hidden_kernel.shape
    (3, 4, 2)
  """

  intercept: jax.Array
  hidden_kernel: jax.Array
  hidden_bias: jax.Array
  output_kernel: jax.Array
  output_bias: jax.Array
  steps: jax.Array


def _stage_outputs(model: GBNNModel, x: jax.Array, activation: str) -> jax.Array:
  """`(T, n, K)`: every stage's network on `x` (not yet scaled by its step)."""
  act = _ACTIVATIONS[activation][0]
  hidden = act(jnp.einsum("nd,tdj->tnj", x, model.hidden_kernel) + model.hidden_bias[:, None])
  return jnp.einsum("tnj,tjk->tnk", hidden, model.output_kernel) + model.output_bias[:, None]


def gbnn_decision(
    model: GBNNModel, x: jax.Array, num_stages=None, *, activation: str = "logistic"
) -> jax.Array:
  r"""The raw prediction :math:`F_0 + \sum_{t \le \text{num\_stages}} \rho_t f_t(x)`, `(n, K)`.

  Args:
    model: a `GBNNModel`.
    x: inputs `(n, d)`.
    num_stages: keep the first stages only (the units trained last are switched off); all by
      default; may be traced.
    activation: the activation the model was fitted with (static).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import GBNNModel, gbnn_decision
    >>> model = GBNNModel(jnp.zeros(2), jnp.ones((3, 1, 1)), jnp.zeros((3, 1)),
    ...                   jnp.ones((3, 1, 2)), jnp.zeros((3, 2)), jnp.array([1.0, 2.0, 4.0]))
    >>> x = jnp.zeros((1, 1))  # every stage's unit outputs sigmoid(0) = 0.5
    >>> gbnn_decision(model, x), gbnn_decision(model, x, num_stages=2)
    (Array([[3.5, 3.5]], dtype=float32), Array([[1.5, 1.5]], dtype=float32))
  """
  _checks.check_choice("activation", activation, tuple(_ACTIVATIONS))
  outputs = _stage_outputs(model, x, activation)
  steps = model.steps
  if num_stages is not None:
    steps = jnp.where(jnp.arange(steps.shape[0]) < num_stages, steps, 0.0)
  return model.intercept + jnp.einsum("t,tnk->nk", steps, outputs)


def gbnn_to_mlp(model: GBNNModel) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  r"""The exact collapse into one hidden layer of :math:`TJ` units (the official `to_NN`).

  Returns:
    `(hidden_kernel (d, T*J), hidden_bias (T*J,), output_kernel (T*J, K), output_bias (K,))`:
    :math:`\sigma(x W^{(1)} + b^{(1)}) W^{(2)} + b^{(2)}` equals `gbnn_decision(model, x)`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import GBNNModel, gbnn_decision, gbnn_to_mlp
    >>> k = jax.random.split(jax.random.key(0), 6)
    >>> model = GBNNModel(jnp.zeros(2), jax.random.normal(k[0], (3, 3, 2)),
    ...                   jax.random.normal(k[1], (3, 2)), jax.random.normal(k[2], (3, 2, 2)),
    ...                   jax.random.normal(k[3], (3, 2)), jnp.array([1.0, 0.5, 0.25]))
    >>> x = jax.random.normal(k[4], (40, 3))
    >>> w1, b1, w2, b2 = gbnn_to_mlp(model)
    >>> w1.shape, w2.shape
    ((3, 6), (6, 2))
    >>> bool(jnp.allclose(jax.nn.sigmoid(x @ w1 + b1) @ w2 + b2, gbnn_decision(model, x),
    ...                   atol=1e-5))
    True
  """
  t, d, j = model.hidden_kernel.shape
  w1 = jnp.transpose(model.hidden_kernel, (1, 0, 2)).reshape(d, t * j)
  b1 = model.hidden_bias.reshape(t * j)
  w2 = (model.steps[:, None, None] * model.output_kernel).reshape(t * j, -1)
  b2 = model.intercept + jnp.einsum("t,tk->k", model.steps, model.output_bias)
  return w1, b1, w2, b2


def _init_stage(key, fan_in, units, num_outputs, factor, dtype):
  """scikit-learn's MLP initialization: U(-s, s) with s = sqrt(factor / (fan_in + fan_out))."""
  keys = jax.random.split(key, 4)
  s1 = math.sqrt(factor / (fan_in + units))
  s2 = math.sqrt(factor / (units + num_outputs))
  u = lambda k, shape, s: jax.random.uniform(k, shape, dtype, -s, s)
  return (u(keys[0], (fan_in, units), s1), u(keys[1], (units,), s1),
          u(keys[2], (units, num_outputs), s2), u(keys[3], (num_outputs,), s2))


def gbnn_fit(
    key: jax.Array,
    x: jax.Array,
    labels,
    num_classes: int,
    *,
    stages: int = 200,
    units: int = 1,
    eta=1.0,
    subsample: float = 0.5,
    max_iter: int = 200,
    l2=1e-4,
    activation: str = "logistic",
    solver: optax.GradientTransformation | None = None,
) -> tuple[GBNNModel, jax.Array]:
  r"""Fits GBNN (module docstring): `stages` stages of `units` hidden units each.

  The whole procedure is one compiled program (a `lax.scan` over stages, each running
  `max_iter` L-BFGS iterations).

  Args:
    key: PRNG key (initializations and subsamples).
    x: inputs `(n, d)`, float.
    labels: integer labels `(n,)` in [0, num_classes).
    num_classes: K >= 2.
    stages: T >= 1, the number of stages (static; the official `total_nn / num_nn_step`).
    units: J >= 1, hidden units per stage (static; the official `num_nn_step`).
    eta: > 0, the shrinkage of the Newton step (traceable).
    subsample: in (0, 1], the fraction of examples each stage is fitted on (static: it fixes
      the subsample's size, `int(subsample * n)` as in the official code).
    max_iter: >= 1, L-BFGS iterations per stage (static).
    l2: >= 0, scikit-learn's `alpha`: the L2 penalty on the weights (traceable).
    activation: 'logistic' (the official default), 'tanh' or 'relu' (static).
    solver: the optimizer of each stage's fit, run for `max_iter` full-batch iterations and
      given `value`, `grad` and `value_fn`; None (default) is `optax.lbfgs()` (zoom line
      search), the counterpart of the official L-BFGS (static: build it once and reuse it).

  Returns:
    `(model, losses)`: the `GBNNModel` and the mean training cross-entropy after each stage,
    `(T,)`.

  References:
    Emami, Martínez-Muñoz, "Sequential Training of Neural Networks with Gradient Boosting",
    `arXiv:1909.12098 <https://arxiv.org/abs/1909.12098>`_, IEEE Access 2023. Official code:
    https://github.com/GAA-UAM/GBNN (PyPI `gbnn`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import gbnn_fit
    >>> x = jax.random.normal(jax.random.key(0), (60, 2))
    >>> y = (x[:, 0] * x[:, 1] > 0).astype(int)
    >>> fit = lambda key: gbnn_fit(key, x, y, 2, stages=4, units=2, max_iter=20)
    >>> model, losses = jax.eval_shape(fit, jax.random.key(1))  # shapes only: no compilation
    >>> model.hidden_kernel.shape, model.output_kernel.shape, losses.shape
    ((4, 2, 2), (4, 2, 2), (4,))
  """
  _checks.check_positive_int("num_classes", num_classes)
  if num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  _checks.check_positive_int("stages", stages)
  _checks.check_positive_int("units", units)
  _checks.check_positive_int("max_iter", max_iter)
  _checks.check_positive("eta", eta)
  _checks.check_range("subsample", subsample, 0.0, 1.0, low_inclusive=False)
  _checks.check_non_negative("l2", l2)
  _checks.check_choice("activation", activation, tuple(_ACTIVATIONS))
  x = jnp.asarray(x)
  if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be a 2-D float array, got dtype {x.dtype} and shape {x.shape}")
  targets = one_hot_targets(labels, num_classes)
  if targets.shape[0] != x.shape[0]:
    raise ValueError(f"labels must have one entry per row of x ({x.shape[0]}), got "
                     f"{targets.shape[0]}")
  size = int(subsample * x.shape[0])
  if size < 1:
    raise ValueError(f"subsample * n must be >= 1, got subsample={subsample!r} with n={x.shape[0]}")
  model, losses = _fit(key, x, targets, jnp.asarray(eta, jnp.float32),
                       jnp.asarray(l2, jnp.float32), stages=stages, units=units, size=size,
                       max_iter=max_iter, activation=activation,
                       solver=_DEFAULT_SOLVER if solver is None else solver)
  return model, losses


def _fit_impl(key, x, targets, eta, l2, *, stages, units, size, max_iter, activation, solver):
  """The whole procedure as one traceable function (jitted by `_fit`)."""
  act, factor = _ACTIVATIONS[activation]
  n, d = x.shape
  k = targets.shape[1]
  solver = optax.with_extra_args_support(solver)

  def fit_stage(key, xs, rs):
    init_key, _ = jax.random.split(key)
    params = _init_stage(init_key, d, units, k, factor, x.dtype)

    def objective(p):
      w1, b1, w2, b2 = p
      pred = act(xs @ w1 + b1) @ w2 + b2
      return (0.5 * jnp.mean((rs - pred) ** 2)
              + 0.5 * l2 * (jnp.sum(w1 ** 2) + jnp.sum(w2 ** 2)) / xs.shape[0])

    def iterate(carry, _):
      p, state = carry
      value, grad = jax.value_and_grad(objective)(p)
      updates, state = solver.update(grad, state, p, value=value, grad=grad,
                                     value_fn=objective)
      return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(iterate, (params, solver.init(params)), None,
                                  length=max_iter)
    return params

  def stage(raw, key):
    fit_key, sample_key = jax.random.split(key)
    residuals = boosting_residuals(targets, raw)
    rows = jax.random.permutation(sample_key, n)[:size]
    params = fit_stage(fit_key, x[rows], residuals[rows])
    w1, b1, w2, b2 = params
    update = act(x @ w1 + b1) @ w2 + b2
    rho = eta * boosting_newton_step(targets, residuals, update)
    raw = raw + rho * update
    loss = jnp.mean(jax.nn.logsumexp(raw, axis=-1) - jnp.sum(targets * raw, axis=-1))
    return raw, (params, rho, loss)

  intercept = jnp.zeros((k,), jnp.float32)
  raw0 = jnp.broadcast_to(intercept, (n, k))
  # Stage t's key does not depend on the number of stages: T stages extend T - 1 stages.
  stage_keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(stages))
  _, (params, steps, losses) = jax.lax.scan(stage, raw0, stage_keys)
  w1, b1, w2, b2 = params
  return GBNNModel(intercept, w1, b1, w2, b2, steps), losses


_STATIC = ("stages", "units", "size", "max_iter", "activation", "solver")
_fit = jax.jit(_fit_impl, static_argnames=_STATIC)
_DEFAULT_SOLVER = optax.lbfgs()


RECORD = registry.record(
    slug="gbnn_sequential_boosting",
    kind="local_rule",
    title="Sequential Training of Neural Networks with Gradient Boosting",
    reference="arXiv:1909.12098",
    experiment="gbnn_digits",
    notes=(
        "A procedure, not a jaxlearn.local.LocalRule: stage-wise gradient boosting of J-unit "
        "networks, transcribed from the official package gbnn 0.0.2 (GNEGNE.fit, "
        "multi_class_loss, to_NN). Each stage is fitted by optax.lbfgs (max_iter iterations, "
        "zoom line search; any optax solver may be passed) on scikit-learn MLPRegressor's "
        "objective (0.5 * mean squared error + alpha/2 * |W|^2 / n, Glorot-uniform init) "
        "instead of SciPy's L-BFGS, so iterates differ from the package's. The Newton step is "
        "0 where the official code divides 0 by 0. Multi-class cross-entropy only (also for "
        "K = 2, where the package uses its binary log-exponential loss); the regression "
        "variant is not implemented. gbnn 0.0.2 misdetects its classifier under scikit-learn "
        ">= 1.6 (is_classifier is False for GNEGNEClassifier): the parity test patches it."
    ),
)
