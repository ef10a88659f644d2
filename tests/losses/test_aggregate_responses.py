"""Aggregate-response losses (arXiv:2401.11081): the bag/instance identity and bag bookkeeping.

The battery checks values against a NumPy reference, gradients, weights and dtypes; here: the
paper's "instance-level loss = bag-level loss + a regularizer" identity, the variance, and the
handling of invalid bags.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.losses import bag_level_loss, instance_level_loss, within_bag_variance

BAG_IDS = np.array([2, 0, 1, 0, 2, 2, 1, 0, 0, 2], np.int32)  # sizes 4, 2, 4


def _inputs(offset=0.0):
  rng = np.random.default_rng(0)
  return (rng.normal(size=10).astype(np.float32) + offset, BAG_IDS,
          rng.normal(size=3).astype(np.float32) + offset)


@fast_jit
def _all(predictions, responses):
  return (bag_level_loss(predictions, BAG_IDS, responses, reduction="none"),
          instance_level_loss(predictions, BAG_IDS, responses, reduction="none"),
          instance_level_loss(predictions, BAG_IDS, responses),
          within_bag_variance(predictions, BAG_IDS, 3))


def test_instance_loss_is_bag_loss_plus_within_bag_variance():
  predictions, bag_ids, responses = _inputs()
  bag, instance, instance_mean, variance = map(np.asarray, _all(predictions, responses))
  f = predictions.astype(np.float64)
  sizes = np.bincount(bag_ids, minlength=3)
  # Hand: per bag, sum_i (y_B - f_i)^2 = |B| (y_B - mean f)^2 + sum_i (f_i - mean f)^2.
  expected_variance = np.array([f[bag_ids == b].var() for b in range(3)])
  np.testing.assert_allclose(variance, expected_variance, rtol=1e-5)
  per_bag_instance = np.bincount(bag_ids, weights=instance, minlength=3)
  np.testing.assert_allclose(per_bag_instance, sizes * (bag + variance), rtol=1e-5)
  np.testing.assert_allclose(instance_mean, np.sum(sizes / 10 * (bag + variance)), rtol=1e-5)


def test_variance_is_centred_for_large_predictions():
  # Around 1e4 a raw E[f^2] - E[f]^2 in float32 loses every digit of a variance of ~1.
  predictions, _, responses = _inputs(offset=1e4)
  _, _, _, variance = _all(predictions, responses)
  f = predictions.astype(np.float64)
  expected = np.array([f[BAG_IDS == b].var() for b in range(3)])
  np.testing.assert_allclose(variance, expected, rtol=1e-3)


def test_invalid_bags():
  predictions, bag_ids, responses = _inputs()
  with pytest.raises(ValueError, match=r"bag_ids must be in \[0, 3\)"):
    bag_level_loss(predictions, np.where(bag_ids == 2, 3, bag_ids), responses)
  with pytest.raises(ValueError, match="every bag at least one instance"):
    instance_level_loss(predictions, np.where(bag_ids == 1, 0, bag_ids), responses)
  with pytest.raises(ValueError, match="bag_ids must be integer"):
    bag_level_loss(predictions, bag_ids.astype(np.float32), responses)
  with pytest.raises(ValueError, match="num_bags"):
    within_bag_variance(predictions, bag_ids, 0)

  @fast_jit
  def traced(ids):
    return (bag_level_loss(predictions, ids, responses, reduction="none"),
            instance_level_loss(predictions, ids, responses, reduction="none"))

  # An empty bag: its bag loss is NaN (no mean prediction), the others are unchanged.
  bag, instance = map(np.asarray, traced(np.where(bag_ids == 1, 0, bag_ids)))
  assert np.isnan(bag[1]) and np.all(np.isfinite(bag[[0, 2]])) and np.all(np.isfinite(instance))
  # An out-of-range id: its instance is NaN; no bag can be trusted, every bag loss is NaN.
  bag, instance = map(np.asarray, traced(np.where(np.arange(10) == 0, 5, bag_ids)))
  assert np.all(np.isnan(bag)) and np.isnan(instance[0]) and np.all(np.isfinite(instance[1:]))
