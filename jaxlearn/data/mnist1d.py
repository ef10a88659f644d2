"""MNIST-1D (Greydanus, 2020, arXiv:2011.14439), generated locally by the `mnist1d` package.

Ten 1-D templates of the digits are padded, randomly scaled, sheared and translated, and given
correlated and i.i.d. noise, then resampled to 40 points. The package can also download a
pickled copy; this loader only ever calls its local generator (`mnist1d.data.make_dataset`), so
nothing is fetched from the network.
"""

from __future__ import annotations

import random

import numpy as np

from jaxlearn import _checks
from jaxlearn.data._dataset import Dataset, check_seed

__all__ = ["load_mnist1d"]


def load_mnist1d(
    *,
    seed: int = 0,
    num_samples: int = 5000,
    train_split: float = 0.8,
    final_seq_length: int = 40,
    shuffle_seq: bool = False,
) -> Dataset:
  """Generates MNIST-1D deterministically from `seed`.

  The generator uses the package's default transformation parameters (template length 12,
  padding [36, 60], scale 0.4, max translation 48, correlated noise 0.25, i.i.d. noise 0.02,
  shear 0.75). The package's own default seed is 42 (the seed of the published data file);
  pass `seed=42` to request it. Samples are balanced across the ten classes, shuffled, and
  standardized to zero mean and unit standard deviation over the whole set (as the package does).
  The global `random`/`np.random` state, which the package reseeds, is restored afterwards.

  Args:
    seed: seed of the generator.
    num_samples: total number of examples; a positive multiple of 10 (one tenth per class).
    train_split: fraction of the examples in the training split, in (0, 1); both splits must be
      non-empty.
    final_seq_length: length of each signal.
    shuffle_seq: if True, apply one fixed random permutation to the time axis of every signal
      (the package's "shuffled" variant, which destroys spatial structure).

  Returns:
    A `Dataset` with x of shape (n, final_seq_length) float32 and labels int32 in [0, 10);
    n_train = floor(num_samples * train_split).

  Example:
    >>> from jaxlearn.data import load_mnist1d
    >>> data = load_mnist1d(num_samples=100)
    >>> data.x_train.shape, data.num_classes
    ((80, 40), 10)
  """
  _checks.check_positive_int("num_samples", num_samples)
  if num_samples % 10:
    raise ValueError(f"num_samples must be a multiple of 10 (balanced classes), got {num_samples}")
  _checks.check_range(
      "train_split", train_split, 0.0, 1.0, low_inclusive=False, high_inclusive=False
  )
  n_train = int(num_samples * train_split)
  if not 1 <= n_train < num_samples:
    raise ValueError(
        f"train_split must leave both splits non-empty for num_samples={num_samples}, "
        f"got {train_split!r}"
    )
  _checks.check_positive_int("final_seq_length", final_seq_length)
  check_seed(seed)
  try:
    from mnist1d.data import get_dataset_args, make_dataset
    from mnist1d.utils import ObjectView
  except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError("load_mnist1d needs mnist1d: pip install 'jaxlearn[experiments]'") from error

  args = get_dataset_args(as_dict=True)
  args.update(
      seed=seed,
      num_samples=num_samples,
      train_split=train_split,
      final_seq_length=final_seq_length,
      shuffle_seq=shuffle_seq,
  )
  numpy_state, python_state = np.random.get_state(), random.getstate()
  try:
    data = make_dataset(ObjectView(args))
  finally:
    np.random.set_state(numpy_state)
    random.setstate(python_state)
  return Dataset(
      x_train=data["x"].astype(np.float32),
      y_train=data["y"].astype(np.int32),
      x_test=data["x_test"].astype(np.float32),
      y_test=data["y_test"].astype(np.int32),
      num_classes=10,
  )
