"""The battery every jaxlearn loss passes: one row per loss in `CASES`.

For every row: the value against an independent float64 NumPy reference; gradients against
central finite differences in float64; finite values and gradients at extreme inputs (+-1e4);
a ValueError naming the argument for mismatched shapes and (with concrete labels) out-of-range
labels; and, under `jit` where labels are traced, NaN (not a clamped value) for the example with
the out-of-range label. Every registered method of kind "loss" or "regularizer" must have a row.

A row's `make_inputs(rng, scale)` returns the loss's positional arguments as NumPy arrays; the
first one (logits, predictions or parameters) is the one differentiated and scaled. To add a
loss, add one `LossCase` above the marker line.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn import losses, registry

Inputs = tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True)
class LossCase:
  """One loss under test.

  Attributes:
    name: the pytest id.
    slug: the registry slug of the method the loss belongs to.
    loss: `loss(*inputs) -> per-example losses`.
    make_inputs: `make_inputs(rng, scale) -> inputs` (NumPy); the first input is differentiated,
      drawn with magnitude about `scale`.
    reference: `reference(*inputs) -> per-example losses`, an independent float64 NumPy
      transcription of the paper's equations.
    bad_shape: `bad_shape(inputs) -> (inputs with mismatched shapes, argument name)`.
    bad_labels: `bad_labels(inputs) -> (inputs whose first example's labels are out of range,
      argument name)`; None for losses without labels.
  """

  name: str
  slug: str
  loss: Callable[..., jax.Array]
  make_inputs: Callable[[np.random.Generator, float], Inputs]
  reference: Callable[..., np.ndarray]
  bad_shape: Callable[[Inputs], tuple[Inputs, str]]
  bad_labels: Callable[[Inputs], tuple[Inputs, str]] | None = None


# Builders shared by classification losses with logits of shape (batch, classes).

BATCH, CLASSES = 4, 5


def _logits_and_labels(rng, scale):
  return rng.normal(size=(BATCH, CLASSES)) * scale, rng.integers(0, CLASSES, size=BATCH)


def _logits_and_probs(rng, scale):
  probs = rng.dirichlet(np.ones(CLASSES), size=BATCH)
  return rng.normal(size=(BATCH, CLASSES)) * scale, probs


def _drop_last_label(inputs):
  logits, labels = inputs
  return (logits, labels[:-1]), "labels"


def _label_out_of_range(inputs):
  logits, labels = inputs
  return (logits, np.concatenate([[CLASSES], labels[1:]])), "labels"


def _drop_last_class_of_targets(inputs):
  logits, targets = inputs
  return (logits, targets[:, :-1]), "targets"


def _negative_target(inputs):
  logits, targets = inputs
  bad = targets.copy()
  bad[0] = 0.0
  bad[0, :2] = [1.5, -0.5]  # still sums to 1: only the sign is wrong
  return (logits, bad), "targets"


# Independent references (float64 NumPy, from the papers' equations).


def _stablemax_log_probs(logits):
  """log(s(x) / sum s(x)) with the paper's s (arXiv:2501.04697)."""
  x = np.asarray(logits, np.float64)
  s = np.where(x >= 0, x + 1, 1 / (1 - np.minimum(x, 0)))
  return np.log(s / s.sum(-1, keepdims=True))


def _stablemax_ce_reference(logits, labels):
  return -_stablemax_log_probs(logits)[np.arange(len(labels)), labels]


def _stablemax_ce_probs_reference(logits, targets):
  return -(targets * _stablemax_log_probs(logits)).sum(-1)


CASES = [
    LossCase(
        name="stablemax_cross_entropy",
        slug="stablemax",
        loss=losses.stablemax_cross_entropy,
        make_inputs=_logits_and_labels,
        reference=_stablemax_ce_reference,
        bad_shape=_drop_last_label,
        bad_labels=_label_out_of_range,
    ),
    LossCase(
        name="stablemax_cross_entropy_with_probs",
        slug="stablemax",
        loss=losses.stablemax_cross_entropy_with_probs,
        make_inputs=_logits_and_probs,
        reference=_stablemax_ce_probs_reference,
        bad_shape=_drop_last_class_of_targets,
        bad_labels=_negative_target,
    ),
    # Add new losses above this line
]

_ids = [case.name for case in CASES]
_with_labels = [case for case in CASES if case.bad_labels is not None]


def _float32(inputs: Inputs) -> tuple:
  """The differentiated input as float32; labels keep an integer dtype (int32), others float32."""
  def convert(a):
    a = np.asarray(a)
    return a.astype(np.int32) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)
  return tuple(convert(a) for a in inputs)


def _summed_loss(case: LossCase, inputs: tuple) -> Callable[[jax.Array], jax.Array]:
  return lambda first: jnp.sum(case.loss(first, *inputs[1:]))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_value_matches_reference(case):
  for scale in (1.0, 10.0):
    inputs = case.make_inputs(np.random.default_rng(0), scale)
    values = case.loss(*_float32(inputs))
    assert values.dtype == jnp.float32
    np.testing.assert_allclose(values, case.reference(*inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_gradient_matches_central_differences(case):
  inputs = case.make_inputs(np.random.default_rng(1), 2.0)
  with jax.enable_x64(True):
    args = tuple(jnp.asarray(a) for a in inputs)
    grad = np.asarray(jax.grad(_summed_loss(case, args))(args[0]))
  first = np.asarray(inputs[0], np.float64)
  step = 1e-6
  numeric = np.zeros_like(first)
  for index in np.ndindex(first.shape):
    plus, minus = first.copy(), first.copy()
    plus[index] += step
    minus[index] -= step
    numeric[index] = (
        case.reference(plus, *inputs[1:]).sum() - case.reference(minus, *inputs[1:]).sum()
    ) / (2 * step)
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_extreme_inputs_give_finite_values_and_gradients(case):
  inputs = _float32(case.make_inputs(np.random.default_rng(2), 1.0))
  signs = np.where(np.random.default_rng(3).random(inputs[0].shape) < 0.5, -1.0, 1.0)
  extreme = (signs * 1e4).astype(np.float32)
  values = case.loss(extreme, *inputs[1:])
  grad = jax.grad(_summed_loss(case, inputs))(extreme)
  assert bool(jnp.all(jnp.isfinite(values))) and bool(jnp.all(jnp.isfinite(grad)))
  np.testing.assert_allclose(values, case.reference(extreme, *inputs[1:]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_mismatched_shapes_raise(case):
  inputs, argument = case.bad_shape(_float32(case.make_inputs(np.random.default_rng(4), 1.0)))
  with pytest.raises(ValueError, match=argument):
    case.loss(*inputs)


@pytest.mark.parametrize("case", _with_labels, ids=[c.name for c in _with_labels])
def test_concrete_out_of_range_labels_raise(case):
  inputs, argument = case.bad_labels(_float32(case.make_inputs(np.random.default_rng(5), 1.0)))
  with pytest.raises(ValueError, match=rf"{argument} must .*\["):
    case.loss(*inputs)


@pytest.mark.parametrize("case", _with_labels, ids=[c.name for c in _with_labels])
def test_traced_out_of_range_labels_give_nan_not_a_clamped_loss(case):
  good = _float32(case.make_inputs(np.random.default_rng(6), 1.0))
  bad, _ = case.bad_labels(good)
  values = jax.jit(case.loss)(*bad)
  assert bool(jnp.isnan(values[0]))
  np.testing.assert_allclose(values[1:], case.loss(*good)[1:], rtol=1e-6)
  summed = lambda first, *rest: jnp.sum(case.loss(first, *rest))
  grad = jax.jit(jax.grad(summed))(*bad)
  assert bool(jnp.all(jnp.isnan(grad[0]))) and bool(jnp.all(jnp.isfinite(grad[1:])))


def test_every_registered_loss_and_regularizer_has_a_row():
  covered = {case.slug for case in CASES}
  registered = registry.all_methods("loss") + registry.all_methods("regularizer")
  missing = sorted(m.slug for m in registered if m.slug not in covered)
  assert not missing, f"add a LossCase for: {missing}"
  unknown = sorted(covered - {m.slug for m in registered})
  assert not unknown, f"rows whose slug is not registered: {unknown}"
