"""The random-teacher distillation loss (arXiv:2302.12091; dinopl core.py): the math.

Kind "experiment" (no loss-battery row): the value against a float64 NumPy transcription of the
official cross-entropy, the stopped teacher and the analytic student gradient, large logits and
bfloat16, weights and argument errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.losses import random_teacher_distillation_loss


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference(student, teacher, tau_s, tau_t):
  """dinopl: cross_entropy(log_softmax(s / tau_s), softmax(t / tau_t)), float64."""
  s, t = np.asarray(student, np.float64) / tau_s, np.asarray(teacher, np.float64) / tau_t
  log_probs = s - s.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  return -(_softmax(t) * log_probs).sum(-1)


@fast_jit
def _program(student, teacher, tau_s, tau_t, weights):
  loss = lambda s, t: random_teacher_distillation_loss(
      s, t, student_temperature=tau_s, teacher_temperature=tau_t)
  total = lambda s, t: jnp.sum(loss(s, t))
  grad_s, grad_t = jax.grad(total, argnums=(0, 1))(student, teacher)
  low = student.astype(jnp.bfloat16)
  return {
      "none": loss(student, teacher), "grad_s": grad_s, "grad_t": grad_t,
      "bf16": loss(low, teacher), "bf16_as_f32": loss(low.astype(jnp.float32), teacher),
      "mean_w": random_teacher_distillation_loss(
          student, teacher, student_temperature=tau_s, teacher_temperature=tau_t,
          weights=weights, reduction="mean"),
  }


def test_value_and_gradient_match_the_official_cross_entropy():
  rng = np.random.default_rng(0)
  student = rng.normal(size=(4, 6)).astype(np.float32) * 3
  teacher = rng.normal(size=(4, 6)).astype(np.float32) * 3
  weights = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
  tau_s, tau_t = 0.1, 0.04  # the official MNIST configuration
  out = _program(student, teacher, tau_s, tau_t, weights)
  expected = _reference(student, teacher, tau_s, tau_t)
  np.testing.assert_allclose(out["none"], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["mean_w"], np.sum(weights * expected) / np.sum(weights),
                             rtol=1e-5)
  # d/ds of -sum_c q_c log softmax(s / tau_s)_c = (softmax(s / tau_s) - q) / tau_s.
  analytic = (_softmax(student / tau_s) - _softmax(teacher.astype(np.float64) / tau_t)) / tau_s
  np.testing.assert_allclose(out["grad_s"], analytic, rtol=1e-4, atol=1e-4)
  assert np.all(np.asarray(out["grad_t"]) == 0)  # the teacher is frozen
  assert out["bf16"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out["bf16"], np.float32), out["bf16_as_f32"], rtol=1e-2)

  signs = np.where(rng.random((4, 6)) < 0.5, -1.0, 1.0).astype(np.float32)
  extreme = _program(signs * 1e4, signs[::-1] * 1e4, 1.0, 1.0, weights)
  for key in ("none", "grad_s", "mean_w"):
    assert np.all(np.isfinite(extreme[key])), key
  np.testing.assert_allclose(extreme["none"], _reference(signs * 1e4, signs[::-1] * 1e4, 1, 1),
                             rtol=1e-5)


def test_invalid_arguments_raise():
  s = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match="teacher_logits must have the shape"):
    random_teacher_distillation_loss(s, s[:, :2])
  with pytest.raises(ValueError, match="student_temperature"):
    random_teacher_distillation_loss(s, s, student_temperature=0.0)
  with pytest.raises(ValueError, match="teacher_temperature"):
    random_teacher_distillation_loss(s, s, teacher_temperature=float("nan"))
  with pytest.raises(ValueError, match="weights"):
    random_teacher_distillation_loss(s, s, weights=np.ones(3, np.float32))
