"""Symmetric label noise: the corrupted training sets of the noisy-label papers (ELR, GCE, LDR...).

A fraction `rate` of the training examples, chosen uniformly without replacement, gets a label
drawn uniformly from the *other* classes. The realized noise rate is therefore exactly
`round(rate * n) / n` and a corrupted label is never the true one. (Some papers draw the new
label from all classes, so that about `rate / num_classes` of the "corrupted" examples keep their
label; state which convention an experiment uses when comparing with a paper's numbers.) The test
split is never corrupted.
"""

from __future__ import annotations

import numpy as np

from jaxlearn import _checks
from jaxlearn.data._dataset import Dataset, check_seed

__all__ = ["symmetric_label_noise", "with_label_noise"]


def symmetric_label_noise(
    labels: np.ndarray, rate: float, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Corrupts a fraction `rate` of `labels`, each to a uniformly drawn different class.

  Args:
    labels: integer class indices in [0, num_classes), shape (n,).
    rate: the fraction of examples to corrupt, in [0, 1].
    num_classes: the number of classes, >= 2.
    seed: the NumPy seed choosing the examples and their new labels.

  Returns:
    `(noisy_labels, is_noisy)`: int32 labels of shape (n,), and a bool mask of the corrupted
    examples (exactly `round(rate * n)` of them; `noisy_labels != labels` exactly there).

  Example:
    >>> import numpy as np
    >>> from jaxlearn.data import symmetric_label_noise
    >>> labels = np.arange(10) % 5
    >>> noisy, is_noisy = symmetric_label_noise(labels, 0.4, num_classes=5, seed=0)
    >>> int(is_noisy.sum()), bool(np.all((noisy != labels) == is_noisy))
    (4, True)
  """
  _checks.check_range("rate", rate, 0.0, 1.0)
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
      or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  check_seed(seed)
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
  rng = np.random.default_rng(seed)
  n = labels.size
  corrupted = rng.choice(n, size=int(round(rate * n)), replace=False)
  # An offset in [1, num_classes) modulo num_classes: uniform over the other classes.
  offsets = rng.integers(1, num_classes, size=corrupted.size)
  noisy = labels.astype(np.int32).copy()
  noisy[corrupted] = (noisy[corrupted] + offsets) % num_classes
  is_noisy = np.zeros(n, bool)
  is_noisy[corrupted] = True
  return noisy, is_noisy


def with_label_noise(data: Dataset, rate: float, seed: int) -> tuple[Dataset, np.ndarray]:
  """`data` with symmetric noise on its training labels (the test labels stay clean).

  Returns:
    `(noisy dataset, is_noisy mask over the training examples)`.

  Example:
    >>> from jaxlearn.data import load_digits, with_label_noise
    >>> data = load_digits(seed=0)
    >>> noisy, is_noisy = with_label_noise(data, 0.2, seed=0)
    >>> round(float(is_noisy.mean()), 2), bool((noisy.y_test == data.y_test).all())
    (0.2, True)
  """
  noisy_labels, is_noisy = symmetric_label_noise(data.y_train, rate, data.num_classes, seed)
  return data._replace(y_train=noisy_labels), is_noisy
