r"""Guidance: train a network while aligning its layers' representations with a frozen guide.

Paper: Vighnesh Subramaniam, David Mayo, Colin Conwell, Tomaso Poggio, Boris Katz, Brian Cheung and
Andrei Barbu, "Training the Untrainable: Introducing Inductive Bias via Representational
Alignment", arXiv:2410.20035, 2024. Official code: github.com/vsubramaniam851/untrainable-networks
(``rep_sim/rep_sims.py``: ``CKA``; ``rep_sim/layer_sim.py``: ``layer_supervision``,
``layermap_sim``; ``imagenet-comparison/image_class.py``: ``total_loss``).

The target ("student") network minimizes its task loss plus a layer-wise representational distance
to a guide network (random or trained, frozen, in eval mode):

.. math::

    \mathcal L(\theta) = L_{\text{task}}(\theta) + \alpha \sum_{(i, j) \in M}
    \big(1 - \operatorname{CKA}(h^{\text{student}}_j, h^{\text{guide}}_i)\big),

with linear CKA over the minibatch of per-example flattened features :math:`X, Y`
(:math:`H = I - \tfrac1n \mathbf 1\mathbf 1^\top`):

.. math::

    \operatorname{HSIC}(X, Y) = \textstyle\sum (H X X^\top H) \circ (H Y Y^\top H), \qquad
    \operatorname{CKA}(X, Y) = \frac{\operatorname{HSIC}(X, Y)}
    {\sqrt{\operatorname{HSIC}(X, X)}\,\sqrt{\operatorname{HSIC}(Y, Y)} + \varepsilon}.

The official code has no :math:`\varepsilon` (a constant feature gives 0/0); here it is 1e-12 by
default, with a zero-gradient square root at 0. The layer mapping :math:`M` is the official
``layer_supervision``: guide layer :math:`i` of :math:`n_g` maps to student layer
:math:`\min(\operatorname{round}(i (n_s - 1)/(n_g - 1)), n_s - 1)` (Python's round-half-to-even;
step 1 when :math:`n_g = 1`). When :math:`n_g > n_s` several guide layers map to one student
layer, and the official ``sim_scores[student_layer]`` dictionary keeps only the last of them: so
does `layer_mapping`. The official loss weight is ``--alpha`` = 1.0.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxlearn import _checks, registry
from jaxlearn.train.step import TrainingStep, TrainState, apply_guarded

__all__ = ["representation_guidance", "alignment_loss", "layer_mapping", "linear_cka"]


def linear_cka(x: jax.Array, y: jax.Array, *, eps: float = 1e-12) -> jax.Array:
  r"""Linear CKA between two representations of the same ``n`` examples (module docstring).

  Args:
    x: shape ``(n, ...)``, flattened per example.
    y: shape ``(n, ...)``, flattened per example.
    eps: :math:`\varepsilon \ge 0` added to the denominator.

  Returns:
    A scalar in [0, 1] (up to rounding), in float32 (float64 for float64 inputs).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.train import linear_cka
    >>> x = jax.random.normal(jax.random.key(0), (32, 5))
    >>> round(float(linear_cka(x, 3.0 * x @ jnp.eye(5)[::-1])), 5)  # scaled and rotated: 1
    1.0
  """
  _checks.check_non_negative("eps", eps)
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
    raise ValueError(
        f"x and y must share their leading example axis, got shapes {x.shape} and {y.shape}"
    )
  dtype = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
  n = x.shape[0]
  x = x.reshape(n, -1).astype(dtype)
  y = y.reshape(n, -1).astype(dtype)
  # H X X^T H = (H X)(H X)^T: centre the features, then form the Gram matrices.
  kx = (x - jnp.mean(x, axis=0)) @ (x - jnp.mean(x, axis=0)).T
  ky = (y - jnp.mean(y, axis=0)) @ (y - jnp.mean(y, axis=0)).T

  def safe_sqrt(value):
    positive = value > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, value, 1.0)), 0.0)

  hsic = jnp.sum(kx * ky)
  return hsic / (safe_sqrt(jnp.sum(kx * kx)) * safe_sqrt(jnp.sum(ky * ky)) + eps)


def layer_mapping(num_guide_layers: int, num_student_layers: int) -> tuple[tuple[int, int], ...]:
  r"""The official guide-to-student layer pairs ``((guide_index, student_index), ...)``.

  Guide layer ``i`` maps to student layer ``min(round(i * (n_s - 1) / (n_g - 1)), n_s - 1)``;
  where several guide layers land on one student layer only the last is kept (as the official
  dictionary keyed by student layer does). Pairs are ordered by student layer.

  Example:
    >>> from jaxlearn.train import layer_mapping
    >>> layer_mapping(3, 5)
    ((0, 0), (1, 2), (2, 4))
    >>> layer_mapping(5, 3)  # guide layers 0, 1->0 (round(0.5) = 0), 2, 3->2 (round(1.5) = 2), 4
    ((1, 0), (2, 1), (4, 2))
  """
  _checks.check_positive_int("num_guide_layers", num_guide_layers)
  _checks.check_positive_int("num_student_layers", num_student_layers)
  step = (num_student_layers - 1) / (num_guide_layers - 1) if num_guide_layers > 1 else 1
  chosen = {}
  for i in range(num_guide_layers):
    chosen[min(round(i * step), num_student_layers - 1)] = i
  return tuple((chosen[j], j) for j in sorted(chosen))


def alignment_loss(
    student: Sequence[jax.Array], guide: Sequence[jax.Array], *, eps: float = 1e-12
) -> jax.Array:
  r"""``sum over layer_mapping pairs of (1 - linear_cka(student[j], guide[i]))``.

  The guide's representations are treated as constants (``stop_gradient``), as the official
  guide runs under ``torch.no_grad``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.train import alignment_loss
    >>> h = jax.random.normal(jax.random.key(0), (16, 4))
    >>> round(float(alignment_loss([h, 2 * h], [h])), 5)  # guide layer 0 -> student layer 0
    0.0
  """
  student, guide = list(student), list(guide)
  if not student or not guide:
    raise ValueError(
        f"student and guide must each hold at least one layer, got {len(student)} and "
        f"{len(guide)}"
    )
  total = 0.0
  for i, j in layer_mapping(len(guide), len(student)):
    total = total + 1.0 - linear_cka(student[j], jax.lax.stop_gradient(guide[i]), eps=eps)
  return total


def representation_guidance(
    loss_fn: Callable[..., jax.Array],
    representations_fn: Callable[..., Sequence[jax.Array]],
    guide_fn: Callable[[jax.Array], Sequence[jax.Array]],
    optimizer: optax.GradientTransformation,
    alpha: Any = 1.0,
    *,
    eps: float = 1e-12,
) -> TrainingStep:
  r"""The guided training step: task loss plus ``alpha * alignment_loss`` (module docstring).

  Args:
    loss_fn: ``loss_fn(params, x, *rest) -> scalar``, the task loss (official: cross-entropy).
    representations_fn: ``representations_fn(params, x) -> [h_1, ..., h_{n_s}]``, the student's
      layer outputs, each ``(batch, ...)`` (official: the outputs of its Linear, Conv, LayerNorm,
      ... modules in call order).
    guide_fn: ``guide_fn(x) -> [g_1, ..., g_{n_g}]``, the frozen guide's layer outputs (close
      over its parameters; its gradient is stopped).
    optimizer: any optax transformation.
    alpha: :math:`\alpha \ge 0`, the alignment weight (official ``--alpha`` 1.0); traceable.
    eps: the CKA denominator's :math:`\varepsilon`.

  Returns:
    A `TrainingStep`; ``batch = (x, *rest)``. Metrics: 'loss' (the guided objective at the
    incoming parameters), 'task_loss', 'alignment' (the summed 1 - CKA), 'skipped'.

  References:
    V. Subramaniam, D. Mayo, C. Conwell, T. Poggio, B. Katz, B. Cheung, A. Barbu, "Training the
    Untrainable: Introducing Inductive Bias via Representational Alignment",
    `arXiv:2410.20035 <https://arxiv.org/abs/2410.20035>`_, 2024. Code:
    https://github.com/vsubramaniam851/untrainable-networks.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.train import representation_guidance
    >>> guide_w = jax.random.normal(jax.random.key(0), (4, 3))
    >>> def reps(params, x):
    ...   return [x @ params]
    >>> def loss_fn(params, x, y):
    ...   return jnp.mean((x @ params - y) ** 2)
    >>> training = representation_guidance(loss_fn, reps, lambda x: [x @ guide_w],
    ...                                    optax.sgd(0.1), alpha=1.0)
    >>> state = training.init(guide_w, jax.random.key(1))  # start equal to the guide
    >>> x, y = jax.random.normal(jax.random.key(2), (8, 4)), jnp.zeros((8, 3))
    >>> state, metrics = jax.jit(training.step)(state, (x, y), jax.random.key(3))
    >>> abs(float(metrics["alignment"])) < 1e-5
    True
  """
  _checks.check_non_negative("alpha", alpha)
  _checks.check_non_negative("eps", eps)

  def init(params, key):
    del key
    zero = jnp.zeros([], jnp.int32)
    return TrainState(params, optimizer.init(params), (), zero, zero)

  def step(state, batch, key):
    del key
    x, *rest = tuple(batch)
    guide = [jax.lax.stop_gradient(g) for g in guide_fn(x)]

    def objective(params):
      task = jnp.asarray(loss_fn(params, x, *rest), jnp.float32)
      alignment = alignment_loss(representations_fn(params, x), guide, eps=eps)
      return task + jnp.asarray(alpha, jnp.float32) * alignment, (task, alignment)

    (value, (task, alignment)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new, skipped = apply_guarded(state, updates, opt_state, value, grads)
    metrics = {"loss": value, "task_loss": task, "alignment": alignment, "skipped": skipped}
    return new, metrics

  return TrainingStep(init, step)


RECORD = registry.record(
    slug="guidance_representational_alignment",
    kind="training_step",
    title="Training the Untrainable: Introducing Inductive Bias via Representational Alignment",
    reference="arXiv:2410.20035",
    experiment="representational_alignment_guidance",
    notes=(
        "Follows the official code: task loss + alpha * sum over mapped layers of (1 - linear "
        "CKA), alpha = 1; CKA on per-example flattened features over the minibatch; the "
        "official layer_supervision mapping (round-half-to-even; with more guide than student "
        "layers only the last guide layer per student layer counts, as the official dict "
        "does); the guide's outputs are constants. Deviations: eps = 1e-12 in the CKA "
        "denominator with a zero-gradient sqrt at 0 (the official CKA divides 0/0 for a "
        "constant feature); the Gram matrices are formed from centred features (H X X^T H = "
        "(HX)(HX)^T, equal in exact arithmetic). The layer list is the caller's: "
        "representations_fn / guide_fn return it (the official code hooks Linear, Conv, "
        "LayerNorm, pooling, RNN and attention modules). Not implemented: noise inputs to the "
        "guide (--noise), the RSA alternative, token-wise CKA."
    ),
)
