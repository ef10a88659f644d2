"""Class-incremental continual-learning splits: a dataset cut into tasks by class.

Split digits (the CPU stand-in for split MNIST / split CIFAR): task t holds the examples of its
classes only, in both the train and the test split. Labels keep their global values (class
incremental, one shared output head), so a model evaluated on the union of the tasks seen so far
must tell all their classes apart.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxlearn.data._dataset import Dataset
from jaxlearn.data.digits import load_digits

__all__ = ["split_by_class", "merge", "split_digits"]


def split_by_class(data: Dataset, tasks: Sequence[Sequence[int]]) -> list[Dataset]:
  """Cuts `data` into one `Dataset` per task, each with only the task's classes.

  Args:
    data: the dataset to split.
    tasks: the classes of each task, e.g. ((0, 1), (2, 3)); no class may appear twice.

  Returns:
    One `Dataset` per task (same `num_classes` as `data`, labels unchanged).

  Example:
    >>> import numpy as np
    >>> from jaxlearn.data import Dataset
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> data = Dataset(x[:48], y[:48], x[48:], y[48:], num_classes=2)
    >>> from jaxlearn.data import split_by_class
    >>> first, second = split_by_class(data, [(0,), (1,)])
    >>> set(first.y_train.tolist()), set(second.y_train.tolist())
    ({0}, {1})
  """
  seen = [int(c) for task in tasks for c in task]
  if not tasks or any(len(task) == 0 for task in tasks):
    raise ValueError(f"tasks must be a non-empty sequence of non-empty class lists, got {tasks!r}")
  if len(set(seen)) != len(seen) or min(seen) < 0 or max(seen) >= data.num_classes:
    raise ValueError(
        f"tasks must list distinct classes in [0, {data.num_classes}), got {tasks!r}"
    )
  out = []
  for task in tasks:
    train = np.isin(data.y_train, task)
    test = np.isin(data.y_test, task)
    out.append(Dataset(data.x_train[train], data.y_train[train], data.x_test[test],
                       data.y_test[test], data.num_classes))
  return out


def merge(tasks: Sequence[Dataset]) -> Dataset:
  """The union of several tasks (e.g. all tasks seen so far, for the average-accuracy metric).

  Example:
    >>> from jaxlearn.data import merge_tasks, split_digits
    >>> tasks = split_digits(classes_per_task=5)
    >>> seen = merge_tasks(tasks[:2])  # all tasks so far, for the average accuracy
    >>> sorted(set(seen.y_test.tolist()))
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  """
  if not tasks:
    raise ValueError("tasks must be non-empty")
  cat = lambda field: np.concatenate([getattr(t, field) for t in tasks])
  return Dataset(cat("x_train"), cat("y_train"), cat("x_test"), cat("y_test"),
                 tasks[0].num_classes)


def split_digits(
    classes_per_task: int = 2, *, test_fraction: float = 0.2, seed: int = 0
) -> list[Dataset]:
  """scikit-learn digits cut into 10 / `classes_per_task` tasks of consecutive classes.

  Args:
    classes_per_task: a divisor of 10 (2 gives the usual 5 tasks: {0,1}, {2,3}, ...).
    test_fraction: passed to `load_digits`.
    seed: the seed of `load_digits`'s train/test split.

  Returns:
    The list of task datasets, `Dataset` (flat float32 inputs of 64 pixels, global int32 labels).

  Example:
    >>> from jaxlearn.data import split_digits
    >>> tasks = split_digits(classes_per_task=2)  # {0, 1}, {2, 3}, ..., {8, 9}
    >>> len(tasks), sorted(set(tasks[1].y_train.tolist()))
    (5, [2, 3])
  """
  if isinstance(classes_per_task, bool) or classes_per_task not in (1, 2, 5, 10):
    raise ValueError(f"classes_per_task must be one of (1, 2, 5, 10), got {classes_per_task!r}")
  data = load_digits(test_fraction=test_fraction, seed=seed)
  tasks = [tuple(range(s, s + classes_per_task)) for s in range(0, 10, classes_per_task)]
  return split_by_class(data, tasks)
