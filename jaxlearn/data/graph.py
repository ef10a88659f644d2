"""A synthetic node-classification graph: a stochastic block model with class-dependent features.

Nodes belong to `num_classes` blocks of (almost) equal size. Each pair of distinct nodes is joined
independently, with probability `p_in` inside a block and `p_out` across blocks. A node's
features are its class mean (one standard-normal vector per class) plus i.i.d. Gaussian noise of
standard deviation `feature_noise`, so both the edges and the features carry the label.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxlearn import _checks
from jaxlearn.data._dataset import check_seed

__all__ = ["Graph", "stochastic_block_model"]


class Graph(NamedTuple):
  """A graph with node labels and a train/validation/test partition of the nodes.

  Attributes:
    adjacency: float32 (N, N), symmetric, entries in {0, 1}, zero diagonal (no self loops).
    features: float32 (N, F) node features.
    labels: int32 (N,) classes in [0, num_classes).
    train_mask: bool (N,); the three masks are disjoint.
    val_mask: bool (N,).
    test_mask: bool (N,).
    num_classes: number of classes.

  Example:
    >>> from jaxlearn.data import stochastic_block_model
    >>> graph = stochastic_block_model(num_nodes=30, num_classes=3, feature_dim=4)
    >>> graph.adjacency.shape, graph.features.shape, int(graph.train_mask.sum())
    ((30, 30), (30, 4), 6)
  """

  adjacency: np.ndarray
  features: np.ndarray
  labels: np.ndarray
  train_mask: np.ndarray
  val_mask: np.ndarray
  test_mask: np.ndarray
  num_classes: int


def _mask_sizes(num_nodes: int, fractions: tuple[float, ...]) -> np.ndarray:
  """Sizes from rounding the cumulative fractions, so they never sum to more than num_nodes."""
  bounds = np.round(np.cumsum((0.0, *fractions)) * num_nodes).astype(int)
  return np.diff(np.minimum(bounds, num_nodes))


def _split_masks(
    num_nodes: int, fractions: tuple[float, ...], rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
  """Disjoint random masks with `_mask_sizes` nodes each."""
  order = rng.permutation(num_nodes)
  masks, start = [], 0
  for size in _mask_sizes(num_nodes, fractions):
    mask = np.zeros(num_nodes, bool)
    mask[order[start:start + size]] = True
    masks.append(mask)
    start += size
  return tuple(masks)


def stochastic_block_model(
    *,
    num_nodes: int = 300,
    num_classes: int = 3,
    p_in: float = 0.1,
    p_out: float = 0.01,
    feature_dim: int = 16,
    feature_noise: float = 1.0,
    train_fraction: float = 0.2,
    val_fraction: float = 0.2,
    test_fraction: float = 0.6,
    seed: int = 0,
) -> Graph:
  """Samples a stochastic block model graph with Gaussian class-mean features.

  Args:
    num_nodes: N, at least `num_classes`.
    num_classes: number of blocks / classes, >= 2.
    p_in: edge probability between two nodes of the same class, in [0, 1].
    p_out: edge probability between nodes of different classes, in [0, 1].
    feature_dim: F, >= 1.
    feature_noise: standard deviation of the feature noise, >= 0.
    train_fraction: fraction of the nodes in the training mask, in (0, 1].
    val_fraction: fraction in the validation mask, in [0, 1).
    test_fraction: fraction in the test mask, in (0, 1]. The three fractions may sum to less than
      1 (the remaining nodes are unlabelled in every mask) but not to more.
    seed: seed of every random draw.

  Returns:
    A `Graph`; labels are balanced (class sizes differ by at most one) and assigned to nodes in a
    random order.

  Example:
    >>> import numpy as np
    >>> from jaxlearn.data import stochastic_block_model
    >>> graph = stochastic_block_model(num_nodes=30, num_classes=3, p_in=0.5, p_out=0.0)
    >>> a, y = graph.adjacency, graph.labels
    >>> bool(np.all(a[y[:, None] != y[None, :]] == 0))  # p_out = 0: no edge between classes
    True
  """
  _checks.check_positive_int("num_classes", num_classes)
  if num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  _checks.check_positive_int("num_nodes", num_nodes)
  if num_nodes < num_classes:
    raise ValueError(f"num_nodes must be >= num_classes ({num_classes}), got {num_nodes}")
  _checks.check_range("p_in", p_in, 0.0, 1.0)
  _checks.check_range("p_out", p_out, 0.0, 1.0)
  _checks.check_positive_int("feature_dim", feature_dim)
  _checks.check_non_negative("feature_noise", feature_noise)
  _checks.check_range("train_fraction", train_fraction, 0.0, 1.0, low_inclusive=False)
  _checks.check_range("val_fraction", val_fraction, 0.0, 1.0, high_inclusive=False)
  _checks.check_range("test_fraction", test_fraction, 0.0, 1.0, low_inclusive=False)
  fractions = (train_fraction, val_fraction, test_fraction)
  if sum(fractions) > 1.0 + 1e-9:
    raise ValueError(
        f"train_fraction + val_fraction + test_fraction must be <= 1, got {sum(fractions):g}"
    )
  sizes = _mask_sizes(num_nodes, fractions)
  if sizes[0] < 1 or sizes[2] < 1:
    raise ValueError(
        f"train_fraction and test_fraction must each select at least one of {num_nodes} nodes"
    )
  check_seed(seed)

  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(num_nodes) % num_classes).astype(np.int32)
  same_class = labels[:, None] == labels[None, :]
  probability = np.where(same_class, p_in, p_out)
  # Draw the upper triangle only and mirror it: symmetric, and the diagonal stays empty.
  upper = np.triu(rng.random((num_nodes, num_nodes)) < probability, k=1)
  adjacency = (upper | upper.T).astype(np.float32)
  means = rng.standard_normal((num_classes, feature_dim))
  noise = feature_noise * rng.standard_normal((num_nodes, feature_dim))
  features = (means[labels] + noise).astype(np.float32)
  train_mask, val_mask, test_mask = _split_masks(num_nodes, fractions, rng)
  return Graph(adjacency, features, labels, train_mask, val_mask, test_mask, num_classes)
