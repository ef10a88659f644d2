"""The container every jaxlearn classification dataset is returned in."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
  """A train/test split as NumPy arrays.

  Attributes:
    x_train: inputs, float32, shape `(n_train, *input_shape)` (or int32 tokens).
    y_train: integer labels, int32, shape (n_train,).
    x_test: inputs, shape `(n_test, *input_shape)`.
    y_test: labels, shape (n_test,).
    num_classes: number of classes.

  Example:
    >>> import numpy as np
    >>> from jaxlearn.data import Dataset
    >>> x, y = np.zeros((10, 4), np.float32), np.arange(10, dtype=np.int32) % 2
    >>> data = Dataset(x[:8], y[:8], x[8:], y[8:], num_classes=2)
    >>> data.x_train.shape, data.num_classes
    ((8, 4), 2)
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def check_seed(seed) -> None:
  """Seeds are integers in [0, 2**32) (the range NumPy's legacy seeding accepts)."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")


def split_train_test(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, num_classes: int
) -> Dataset:
  """Shuffles with `seed` and splits off `test_fraction` of the examples as the test set.

  Example:
    >>> import numpy as np
    >>> from jaxlearn.data import split_train_test
    >>> x, y = np.zeros((10, 4), np.float32), np.arange(10, dtype=np.int32) % 2
    >>> data = split_train_test(x, y, test_fraction=0.2, seed=0, num_classes=2)
    >>> len(data.x_train), len(data.x_test)
    (8, 2)
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
  order = np.random.default_rng(seed).permutation(len(x))
  n_test = int(round(len(x) * test_fraction))
  test, train = order[:n_test], order[n_test:]
  return Dataset(x[train], y[train], x[test], y[test], num_classes)
