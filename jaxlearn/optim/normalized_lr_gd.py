r"""Normalized LR+GD: gradient descent on the logistic loss with the step rescaled by the mean
logistic weight, the method the paper derives from the normalized batch perceptron.

Tyurin, "From Logistic Regression to the Perceptron Algorithm: Exploring Gradient Descent with
Large Step Sizes", AAAI 2025, arXiv:2412.08424 (Sections 3, 5 and 6 of the paper).

For binary labels `y_i ∈ {-1, 1}` and a linear model, the logistic loss
`f(θ) = (1/n) Σ_i log(1 + exp(-y_i a_i^T θ))` has the gradient
`∇f(θ) = -(1/n) Σ_i σ(-y_i a_i^T θ) y_i a_i`. As γ → ∞, `θ_t / γ` of plain gradient descent
(LR+GD) follows the batch perceptron, whose step `(1/n) Σ_{misclassified} y_i a_i` needs
`n R^2 / μ^2` iterations in the worst case (μ the margin, R the largest norm). Normalizing by the
number of misclassified points instead of n gives `R^2 / μ^2`. Normalized LR+GD is the smooth
version of that normalization (the paper's Section 6):

.. math::

  \theta_{t+1} = \theta_t - \gamma \beta_t \nabla f(\theta_t), \qquad
  \beta_t = \Big(\frac{1}{n} \sum_{i=1}^n
  \frac{1}{1 + \exp(y_i a_i^\top \theta_t)}\Big)^{-1},

which solves the classification problem after at most `R^2/μ^2 + 2 log(2n - 1) / (γ μ^2)` steps
from θ_0 = 0 (Theorem 6.1). β_t needs every example's margin `y_i a_i^T θ_t`, so the transform
takes them as the keyword argument `margins` of `update` (the paper's Future Work suggests the same
rule with `y_i g(a_i; θ)` for a nonlinear model g).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jaxlearn import registry
from jaxlearn.optim import _common

__all__ = [
    "normalized_lr_gd",
    "scale_by_normalized_lr_gd",
    "logistic_normalizer",
]

_NEEDS_MARGINS = (
    "scale_by_normalized_lr_gd needs the margins y_i * model(a_i; params) of every training "
    "example: call update(grads, state, params, margins=margins)"
)


def logistic_normalizer(margins: jax.Array) -> jax.Array:
  """β = 1 / mean_i σ(-m_i) for margins `m_i = y_i a_i^T θ`, computed in log space.

  `log σ(-m) = -softplus(m)`, so `log mean σ(-m) = logsumexp(-softplus(m)) - log n`; this stays
  accurate when every σ(-m_i) is far below float32's smallest normal number. β is between 1 (all
  margins very negative) and +inf (all margins above about 88 in float32).

  Args:
    margins: array of any shape; every element is one example's margin.

  Returns:
    β as a float32 (or wider) scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import logistic_normalizer
    >>> logistic_normalizer(jnp.array([0.0, 0.0]))  # 1 / sigmoid(0)
    Array(2., dtype=float32)
  """
  margins = jnp.asarray(margins)
  dtype = _common.wide_dtype(margins.dtype)
  m = margins.astype(dtype).reshape(-1)
  log_mean = jax.nn.logsumexp(-jax.nn.softplus(m)) - math.log(m.size)
  return jnp.exp(-log_mean)


def scale_by_normalized_lr_gd() -> optax.GradientTransformationExtraArgs:
  """Multiplies the gradient by β_t = 1 / mean_i σ(-y_i a_i^T θ_t) (see `logistic_normalizer`).

  `update(grads, state, params=None, *, margins, **extra_args)`: `margins` are the current
  margins `y_i a_i^T θ_t` (labels in {-1, 1}) of the examples whose mean logistic loss gave
  `grads`. If every example's logistic weight underflows (all margins above about 88 in float32,
  so the problem is solved with a huge margin and the float32 gradient is itself zero), β is
  infinite and the update is 0 rather than NaN: the method has stopped, as the paper's perceptron
  algorithms do once no example is misclassified. State: none.

  Returns:
    A stateless `GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import scale_by_normalized_lr_gd
    >>> opt = scale_by_normalized_lr_gd()
    >>> grads = {"w": jnp.array([0.1, -0.2])}
    >>> updates, _ = opt.update(grads, opt.init(grads), margins=jnp.array([0.0, 0.0]))
    >>> updates["w"]  # beta = 1 / mean sigmoid(0) = 2
    Array([ 0.2, -0.4], dtype=float32)

  References:
    Tyurin, `From Logistic Regression to the Perceptron Algorithm: Exploring Gradient Descent
    with Large Step Sizes <https://arxiv.org/abs/2412.08424>`_, AAAI 2025.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, margins=None, **extra_args):
    del extra_args
    _common.check_params(updates, params, "scale_by_normalized_lr_gd")
    if margins is None:
      raise ValueError(_NEEDS_MARGINS)
    beta = logistic_normalizer(margins)
    finite = jnp.isfinite(beta)

    def leaf(g):
      scaled = beta.astype(_common.wide_dtype(g.dtype)) * g
      return jnp.where(finite, scaled, 0.0).astype(g.dtype)

    return jax.tree.map(leaf, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def normalized_lr_gd(
    learning_rate: optax.ScalarOrSchedule = 1.0,
) -> optax.GradientTransformationExtraArgs:
  """Normalized LR+GD: `θ_{t+1} = θ_t - γ β_t ∇f(θ_t)` (see the module docstring).

  Meant for full-batch gradient descent on the mean logistic loss of a separable binary problem;
  pass the margins to every update: `opt.update(grads, state, params, margins=y * (x @ θ))`.
  The paper's theory favours large γ (its Table 1 runs γ from 0.1 to 100). It has no weight
  decay (an L2 term would change the separation problem it solves).

  Args:
    learning_rate: γ, >= 0, a number or a schedule.

  Returns:
    A `GradientTransformationExtraArgs` whose `update` requires `margins=`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import normalized_lr_gd
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([1.0, -1.0])
    >>> theta = jnp.zeros(2)
    >>> grad = -jnp.mean((y * 0.5)[:, None] * x, axis=0)   # ∇f at θ = 0
    >>> opt = normalized_lr_gd(1.0)
    >>> updates, _ = opt.update(grad, opt.init(theta), theta, margins=y * (x @ theta))
    >>> [float(u) for u in updates]   # β_0 = 2 at θ = 0
    [0.5, -0.5]
  """
  return optax.chain(scale_by_normalized_lr_gd(), _common.learning_rate_step(learning_rate))


RECORD = registry.record(
    slug="normalized_lr_gd",
    kind="optimizer",
    title=(
        "From Logistic Regression to the Perceptron Algorithm: Exploring Gradient Descent with "
        "Large Step Sizes"
    ),
    reference="arXiv:2412.08424",
    experiment="normalized_lr_gd_perceptron",
    update_extras=("margins",),
    notes=(
        "theta_{t+1} = theta_t - gamma beta_t grad f(theta_t), beta_t = 1/mean_i sigmoid(-y_i "
        "a_i^T theta_t) (paper, Sec. 6). beta_t needs every example's margin, passed as "
        "update(..., margins=y * logits); it is computed in log space. When every logistic "
        "weight underflows (all margins > ~88 in float32) the update is 0 instead of inf * 0 = "
        "NaN. The battery row fixes margins = 0 (beta = 2): it exercises the plumbing, the "
        "method-specific tests the normalization."
    ),
)
