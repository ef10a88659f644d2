"""The ECE against a hand computation and the PS-KD official metric (`utils/metric.py`)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlearn.diagnostics import expected_calibration_error


def _official_ece(confidences, truths, bin_size=0.1):
  """The ECE part of PS-KD's `metric_ece_aurc_eaurc`, in [0, 1] instead of percent."""
  predictions, max_confs = np.argmax(confidences, axis=1), np.max(confidences, axis=1)
  total = 0.0
  for upper in np.arange(bin_size, 1 + bin_size, bin_size):
    inside = (max_confs > upper - bin_size) & (max_confs <= upper)
    if inside.any():
      accuracy = np.mean(predictions[inside] == truths[inside])
      total += abs(accuracy - max_confs[inside].mean()) * inside.sum()
  return total / len(confidences)


def test_hand_computed_bins_with_an_inclusive_upper_edge():
  # 4 bins: (0, .25], (.25, .5], (.5, .75], (.75, 1]. Confidence 0.5 and 1.0 sit on upper edges.
  probs = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8],
                    [0.3, 0.3, 0.4]], np.float32)
  labels = np.array([0, 1, 1, 2, 0], np.int32)
  # (.25, .5]: conf 0.5 (correct: argmax 0) and 0.4 (wrong): |1/2 - 0.45| * 2 = 0.1
  # (.5, .75]: 0.7 correct: 0.3.  (.75, 1]: 1.0 wrong and 0.8 correct: |1/2 - 0.9| * 2 = 0.8
  expected = (0.1 + 0.3 + 0.8) / 5
  np.testing.assert_allclose(expected_calibration_error(probs, labels, num_bins=4), expected,
                             rtol=1e-6)


def test_matches_the_official_metric_with_ten_bins():
  rng = np.random.default_rng(0)
  logits = 3 * rng.normal(size=(200, 6))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  labels = rng.integers(0, 6, size=200).astype(np.int32)
  got = expected_calibration_error(probs.astype(np.float32), labels, num_bins=10)
  np.testing.assert_allclose(got, _official_ece(probs, labels), rtol=1e-5)


def test_invalid_arguments_raise():
  probs = np.full((3, 2), 0.5, np.float32)
  with pytest.raises(ValueError, match="num_bins"):
    expected_calibration_error(probs, np.zeros(3, np.int32), num_bins=0)
  with pytest.raises(ValueError, match="labels"):
    expected_calibration_error(probs, np.zeros(2, np.int32))
  with pytest.raises(ValueError, match="probabilities"):
    expected_calibration_error(probs[0], np.zeros(3, np.int32))
