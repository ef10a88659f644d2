"""Modular arithmetic tables, the standard grokking task (Power et al., 2022, arXiv:2201.02177).

Every pair (a, b) with a, b in [0, p) is one example, labelled (a op b) mod p; a random fraction
of the table is the training set and the rest the test set.
"""

from __future__ import annotations

import numpy as np

from jaxlearn import _checks
from jaxlearn.data._dataset import Dataset, check_seed, split_train_test

__all__ = ["modular_arithmetic", "one_hot_pairs"]

OPERATIONS = ("add", "sub", "mul", "div")


def _is_prime(n: int) -> bool:
  return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _labels(a: np.ndarray, b: np.ndarray, p: int, operation: str) -> np.ndarray:
  if operation == "add":
    return (a + b) % p
  if operation == "sub":
    return (a - b) % p
  if operation == "mul":
    return (a * b) % p
  # a / b = a * b^(p-2) mod p (Fermat's little theorem; p is prime and b != 0).
  inverses = np.array([pow(int(v), p - 2, p) for v in range(p)], dtype=np.int64)
  return (a * inverses[b]) % p


def modular_arithmetic(
    p: int, *, operation: str = "add", train_fraction: float = 0.4, seed: int = 0
) -> Dataset:
  """All pairs (a, b), labelled (a op b) mod p, split at random into train and test.

  Args:
    p: the modulus, an integer >= 2; it must be prime for "div".
    operation: "add", "sub", "mul", or "div" (a times the modular inverse of b; pairs with
      b = 0 are left out, leaving p * (p - 1) examples).
    train_fraction: fraction of the table used for training, in (0, 1); both splits must be
      non-empty.
    seed: seed of the shuffle that decides the split.

  Returns:
    A `Dataset` whose inputs are int32 token pairs (a, b) of shape (n, 2) (see `one_hot_pairs`
    for the (n, 2p) float encoding an MLP takes) and whose labels are int32 in [0, p);
    num_classes = p.

  Example:
    >>> from jaxlearn.data import modular_arithmetic
    >>> data = modular_arithmetic(7, operation="add", train_fraction=0.5)
    >>> len(data.x_train) + len(data.x_test)  # every pair (a, b) of Z_7 x Z_7
    49
  """
  _checks.check_choice("operation", operation, OPERATIONS)
  if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 2:
    raise ValueError(f"p must be an integer >= 2, got {p!r}")
  if operation == "div" and not _is_prime(p):
    raise ValueError(
        f"p must be prime for operation='div' (every b != 0 needs an inverse), got {p}"
    )
  _checks.check_range(
      "train_fraction", train_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False
  )
  check_seed(seed)
  a, b = (grid.ravel() for grid in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
  if operation == "div":
    a, b = a[b != 0], b[b != 0]
  n = len(a)
  n_test = int(round(n * (1.0 - train_fraction)))
  if not 1 <= n_test < n:
    raise ValueError(
        f"train_fraction must leave both splits non-empty for {n} examples, got {train_fraction!r}"
    )
  x = np.stack([a, b], axis=1).astype(np.int32)
  y = _labels(a, b, p, operation).astype(np.int32)
  return split_train_test(x, y, test_fraction=1.0 - train_fraction, seed=seed, num_classes=p)


def one_hot_pairs(x: np.ndarray, p: int) -> np.ndarray:
  """Concatenated one-hot codes of the two tokens: (n, 2) int -> (n, 2p) float32.

  Row i is one_hot(a_i, p) followed by one_hot(b_i, p), the input of the paper's MLPs.

  Raises:
    ValueError: if `x` is not an integer array of shape (n, 2) with values in [0, p).

  Example:
    >>> import numpy as np
    >>> from jaxlearn.data import one_hot_pairs
    >>> one_hot_pairs(np.array([[1, 2]]), p=3)
    array([[0., 1., 0., 0., 0., 1.]], dtype=float32)
  """
  x = np.asarray(x)
  if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
    raise ValueError(f"p must be an integer >= 1, got {p!r}")
  if x.ndim != 2 or x.shape[1] != 2 or not np.issubdtype(x.dtype, np.integer):
    raise ValueError(f"x must be an integer array of shape (n, 2), got {x.dtype} {x.shape}")
  if x.size and (x.min() < 0 or x.max() >= p):
    raise ValueError(f"x must have values in [0, {p}), got values in [{x.min()}, {x.max()}]")
  eye = np.eye(p, dtype=np.float32)
  return np.concatenate([eye[x[:, 0]], eye[x[:, 1]]], axis=1)
