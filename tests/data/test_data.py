"""`jaxlearn.data`: MNIST-1D, modular arithmetic, the stochastic block model and label noise.

Each loader is checked for determinism under its seed, shapes, dtypes and label ranges; the
modular labels are recomputed with Python integers, the graph's edge densities are compared
with the block probabilities, and label noise is checked for its exact rate and uniform new labels.
"""

import random

import numpy as np
import pytest

from jaxlearn.data import (
    Dataset,
    Graph,
    load_mnist1d,
    modular_arithmetic,
    one_hot_pairs,
    stochastic_block_model,
    symmetric_label_noise,
)


def _assert_same(first, second):
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


def _differs(first, second) -> bool:
  return any(
      isinstance(a, np.ndarray) and (a.shape != b.shape or not np.array_equal(a, b))
      for a, b in zip(first, second)
  )


# MNIST-1D ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d_small():
  return load_mnist1d(seed=0, num_samples=500)


def test_mnist1d_shapes_dtypes_and_labels(mnist1d_small):
  data = mnist1d_small
  assert isinstance(data, Dataset) and data.num_classes == 10
  assert data.x_train.shape == (400, 40) and data.x_test.shape == (100, 40)
  assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
  labels = np.concatenate([data.y_train, data.y_test])
  # Balanced: num_samples // 10 examples of every class.
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 50))
  x = np.concatenate([data.x_train, data.x_test])
  assert np.all(np.isfinite(x))
  np.testing.assert_allclose([x.mean(), x.std()], [0.0, 1.0], atol=1e-4)


def test_mnist1d_is_deterministic_and_leaves_global_rng_alone(mnist1d_small):
  np.random.seed(123)
  random.seed(123)
  expected_numpy, expected_python = np.random.rand(), random.random()
  np.random.seed(123)
  random.seed(123)
  again = load_mnist1d(seed=0, num_samples=500)
  assert (np.random.rand(), random.random()) == (expected_numpy, expected_python)
  _assert_same(mnist1d_small, again)
  assert _differs(mnist1d_small, load_mnist1d(seed=1, num_samples=500))


def test_mnist1d_options():
  data = load_mnist1d(num_samples=100, train_split=0.5, final_seq_length=24)
  assert data.x_train.shape == (50, 24) and data.x_test.shape == (50, 24)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 505}, "num_samples"),
        ({"train_split": 1.0}, "train_split"),
        ({"train_split": 0.0}, "train_split"),
        ({"num_samples": 10, "train_split": 0.05}, "train_split"),
        ({"seed": -1}, "seed"),
        ({"final_seq_length": 0}, "final_seq_length"),
    ],
)
def test_mnist1d_rejects_bad_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name):
    load_mnist1d(**kwargs)


# Modular arithmetic ---------------------------------------------------------------------------


def _python_label(a: int, b: int, p: int, operation: str) -> int:
  if operation == "add":
    return (a + b) % p
  if operation == "sub":
    return (a - b) % p
  if operation == "mul":
    return (a * b) % p
  # The c with c * b = a (mod p), found by search: independent of the Fermat inverse.
  return next(c for c in range(p) if (c * b) % p == a)


@pytest.mark.parametrize("operation", ["add", "sub", "mul", "div"])
def test_modular_labels_and_table(operation):
  p = 11
  data = modular_arithmetic(p, operation=operation, train_fraction=0.5, seed=3)
  x = np.concatenate([data.x_train, data.x_test])
  y = np.concatenate([data.y_train, data.y_test])
  assert x.dtype == np.int32 and y.dtype == np.int32 and data.num_classes == p
  expected_pairs = {(a, b) for a in range(p) for b in range(p) if operation != "div" or b}
  assert {tuple(pair) for pair in x.tolist()} == expected_pairs
  assert len(x) == len(expected_pairs)
  for (a, b), label in zip(x.tolist(), y.tolist()):
    assert label == _python_label(a, b, p, operation)


def test_modular_split_sizes_and_determinism():
  data = modular_arithmetic(23, train_fraction=0.4, seed=0)
  n = 23 * 23
  assert len(data.x_train) + len(data.x_test) == n
  assert len(data.x_train) == n - round(n * 0.6)
  _assert_same(data, modular_arithmetic(23, train_fraction=0.4, seed=0))
  assert _differs(data, modular_arithmetic(23, train_fraction=0.4, seed=1))


def test_one_hot_pairs():
  x = np.array([[0, 2], [3, 1]], np.int32)
  encoded = one_hot_pairs(x, 4)
  assert encoded.dtype == np.float32 and encoded.shape == (2, 8)
  np.testing.assert_array_equal(
      encoded, [[1, 0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 1, 0, 1, 0, 0]]
  )


@pytest.mark.parametrize(
    "p, kwargs, name",
    [
        (1, {}, "p"),
        (2.0, {}, "p"),
        (12, {"operation": "div"}, "prime"),
        (7, {"operation": "pow"}, "operation"),
        (7, {"train_fraction": 0.0}, "train_fraction"),
        (7, {"train_fraction": 1.0}, "train_fraction"),
        (2, {"train_fraction": 0.01}, "train_fraction"),
        (7, {"seed": -3}, "seed"),
    ],
)
def test_modular_rejects_bad_arguments(p, kwargs, name):
  with pytest.raises(ValueError, match=name):
    modular_arithmetic(p, **kwargs)


@pytest.mark.parametrize(
    "x, p, name",
    [
        (np.array([[0, 4]]), 4, r"x must have values in \[0, 4\)"),
        (np.array([[0, -1]]), 4, "x must have values"),
        (np.array([0, 1]), 4, r"shape \(n, 2\)"),
        (np.array([[0.0, 1.0]]), 4, "integer"),
        (np.array([[0, 1]]), 0, "p"),
    ],
)
def test_one_hot_pairs_rejects_bad_input(x, p, name):
  with pytest.raises(ValueError, match=name):
    one_hot_pairs(x, p)


# Stochastic block model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sbm():
  return stochastic_block_model(
      num_nodes=400, num_classes=4, p_in=0.2, p_out=0.02, feature_dim=8, feature_noise=0.5,
      train_fraction=0.1, val_fraction=0.2, test_fraction=0.5, seed=0,
  )


def test_sbm_structure(sbm):
  assert isinstance(sbm, Graph) and sbm.num_classes == 4
  adjacency = sbm.adjacency
  assert adjacency.shape == (400, 400) and adjacency.dtype == np.float32
  np.testing.assert_array_equal(adjacency, adjacency.T)
  np.testing.assert_array_equal(np.diag(adjacency), 0)
  assert set(np.unique(adjacency)) <= {0.0, 1.0}
  assert sbm.features.shape == (400, 8) and sbm.features.dtype == np.float32
  assert sbm.labels.shape == (400,) and sbm.labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(sbm.labels), [100] * 4)
  masks = np.stack([sbm.train_mask, sbm.val_mask, sbm.test_mask])
  assert masks.dtype == bool
  np.testing.assert_array_equal(masks.sum(axis=1), [40, 80, 200])
  assert masks.sum(axis=0).max() == 1  # disjoint


def test_sbm_edge_densities_match_block_probabilities(sbm):
  same = sbm.labels[:, None] == sbm.labels[None, :]
  off_diagonal = ~np.eye(len(sbm.labels), dtype=bool)
  inside = sbm.adjacency[same & off_diagonal]
  across = sbm.adjacency[~same]
  # Binomial standard errors: ~0.0029 (19800 pairs) and ~0.0008 (120000 pairs); allow 4 of them.
  assert abs(inside.mean() - 0.2) < 4 * np.sqrt(0.2 * 0.8 / (inside.size / 2))
  assert abs(across.mean() - 0.02) < 4 * np.sqrt(0.02 * 0.98 / (across.size / 2))


def test_sbm_features_carry_the_class(sbm):
  """Class means are unit-variance vectors; with noise 0.5 the nearest class mean is the label."""
  means = np.stack([sbm.features[sbm.labels == c].mean(0) for c in range(4)])
  nearest = np.argmin(((sbm.features[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
  assert np.mean(nearest == sbm.labels) > 0.9


def test_sbm_is_deterministic(sbm):
  kwargs = dict(
      num_nodes=400, num_classes=4, p_in=0.2, p_out=0.02, feature_dim=8, feature_noise=0.5,
      train_fraction=0.1, val_fraction=0.2, test_fraction=0.5,
  )
  _assert_same(sbm, stochastic_block_model(**kwargs, seed=0))
  assert _differs(sbm, stochastic_block_model(**kwargs, seed=1))


def test_sbm_mask_sizes_never_exceed_the_nodes():
  graph = stochastic_block_model(
      num_nodes=10, train_fraction=0.35, val_fraction=0.35, test_fraction=0.3
  )
  sizes = [graph.train_mask.sum(), graph.val_mask.sum(), graph.test_mask.sum()]
  assert sum(sizes) == 10 and min(sizes) >= 3


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_nodes": 2, "num_classes": 3}, "num_nodes"),
        ({"p_in": 1.5}, "p_in"),
        ({"p_out": -0.1}, "p_out"),
        ({"feature_dim": 0}, "feature_dim"),
        ({"feature_noise": -1.0}, "feature_noise"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"train_fraction": 0.5, "val_fraction": 0.3, "test_fraction": 0.5}, "sum|<= 1"),
        ({"num_nodes": 10, "train_fraction": 0.01}, "at least one"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_sbm_rejects_bad_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name):
    stochastic_block_model(**kwargs)


def test_symmetric_label_noise_corrupts_exactly_the_chosen_fraction_uniformly():
  labels = np.arange(5000) % 4
  noisy, is_noisy = symmetric_label_noise(labels, 0.3, num_classes=4, seed=1)
  assert noisy.dtype == np.int32 and is_noisy.sum() == 1500
  np.testing.assert_array_equal(noisy != labels, is_noisy)  # a corrupted label always changes
  # The new label is uniform over the 3 other classes: each offset about a third of the time.
  offsets = (noisy[is_noisy] - labels[is_noisy]) % 4
  np.testing.assert_allclose(np.bincount(offsets, minlength=4)[1:] / 1500, 1 / 3, atol=0.04)
  again, _ = symmetric_label_noise(labels, 0.3, num_classes=4, seed=1)
  np.testing.assert_array_equal(noisy, again)
  unchanged, none = symmetric_label_noise(labels, 0.0, num_classes=4, seed=1)
  assert not none.any() and np.array_equal(unchanged, labels)


def test_symmetric_label_noise_rejects_bad_arguments():
  labels = np.arange(10) % 2
  for rate in (-0.1, 1.5, float("nan")):
    with pytest.raises(ValueError, match="rate"):
      symmetric_label_noise(labels, rate, num_classes=2, seed=0)
  with pytest.raises(ValueError, match="num_classes"):
    symmetric_label_noise(labels, 0.1, num_classes=1, seed=0)
  with pytest.raises(ValueError, match="labels must be in"):
    symmetric_label_noise(labels + 1, 0.1, num_classes=2, seed=0)
