"""scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes): the default data.

The data ships inside scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

from jaxlearn.data._dataset import Dataset, split_train_test

__all__ = ["load_digits"]


def load_digits(*, flat: bool = True, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """Loads the digits, scaled to [0, 1], split deterministically by `seed`.

  Args:
    flat: if True inputs have shape (N, 64); otherwise NHWC images of shape (N, 8, 8, 1).
    test_fraction: fraction of the 1797 examples held out for testing.
    seed: seed of the shuffle that decides the split.

  Returns:
    A `Dataset` with float32 inputs and int32 labels in [0, 10).

  Example:
    >>> from jaxlearn.data import load_digits
    >>> data = load_digits(flat=False)
    >>> data.x_train.shape[1:], data.num_classes
    ((8, 8, 1), 10)
  """
  try:
    from sklearn.datasets import load_digits as sklearn_digits
  except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "load_digits needs scikit-learn: pip install 'jaxlearn[experiments]'"
    ) from error
  bunch = sklearn_digits()
  x = (bunch.images / 16.0).astype(np.float32)
  x = x.reshape(len(x), 64) if flat else x[..., None]
  y = bunch.target.astype(np.int32)
  return split_train_test(x, y, test_fraction, seed, num_classes=10)
