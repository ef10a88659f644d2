"""Side-by-side optimizer comparison on one model and dataset (quickstart, optimizers_digits).

Each optimizer runs as one compiled program vmapped over its learning-rate grid and the seeds
(`fit`). Its best learning rate is chosen by final TRAIN loss (mean over seeds); the test set is
never used for selection.
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple, Sequence

import numpy as np
import optax

from jaxlearn.data import Dataset
from jaxlearn.train.loop import fit, grid

__all__ = [
    "Entry", "required_arguments", "compare_optimizers", "summarize", "print_table", "plot_curves",
]


class Entry(NamedTuple):
  label: str
  make: Callable[..., optax.GradientTransformation]  # make(learning_rate=...)
  learning_rates: Sequence[float]
  update_extras: Sequence[str] = ()  # extra update() arguments (the registry record's)


def required_arguments(factory: Callable, num_iterations: int) -> dict[str, int]:
  """Values for arguments an alias needs beyond the learning rate (Ranger21's run length)."""
  return {"num_iterations": num_iterations} if "num_iterations" in inspect.signature(
      factory).parameters else {}


def compare_optimizers(
    entries: Sequence[Entry],
    data: Dataset,
    init_params: Callable,
    loss_fn: Callable,
    eval_fn: Callable,
    *,
    steps: int,
    eval_every: int,
    seeds: Sequence[int],
    batch_size: int = 64,
) -> tuple[list[dict], dict[str, dict]]:
  """Trains every entry; returns (one table row per entry, learning curves at the best lr)."""
  rows, curves = [], {}
  for entry in entries:
    result = fit(
        loss_fn, init_params, entry.make, data, steps=steps, eval_every=eval_every,
        batch_size=batch_size, configs=grid(learning_rate=list(entry.learning_rates)),
        seeds=list(seeds), eval_fn=eval_fn, desc=entry.label,
        update_extras=tuple(entry.update_extras),
    )
    row, curves[entry.label] = summarize(entry, result)
    rows.append(row)
  return rows, curves


def summarize(entry: Entry, result) -> tuple[dict, dict]:
  """(table row, learning curves) of one entry's `fit` result, at its best learning rate (the
  lowest final training loss, averaged over seeds)."""
  best = int(np.argmin(result.history["train_loss"][:, :, -1].mean(axis=1)))
  final = {name: float(values[best, :, -1].mean()) for name, values in result.history.items()}
  row = {
      "optimizer": entry.label,
      "learning_rate": entry.learning_rates[best],
      "learning_rates_tried": list(entry.learning_rates),
      **final,
      "time_s": result.wall_time_s,
  }
  curves = {
      "steps": result.eval_steps,
      "train_loss": result.history["train_loss"][best].mean(axis=0),
      "test_accuracy": result.history["test_accuracy"][best].mean(axis=0),
  }
  return row, curves


def print_table(rows: Sequence[dict]) -> None:
  width = max([len(r["optimizer"]) for r in rows] + [9]) + 2
  header = (f"{'optimizer':<{width}}{'lr':>9}{'train acc':>11}{'test acc':>10}"
            f"{'test loss':>11}{'time s':>8}")
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['optimizer']:<{width}}{r['learning_rate']:>9.0e}{r['train_accuracy']:>11.3f}"
          f"{r['test_accuracy']:>10.3f}{r['test_loss']:>11.3f}{r['time_s']:>8.1f}")


def plot_curves(axes, curves: dict[str, dict]) -> None:
  """Train loss and test accuracy against steps, one line per optimizer, on two axes."""
  import matplotlib

  colors = matplotlib.colormaps["tab20"].colors  # distinct colors for up to 20 optimizers
  for index, (label, curve) in enumerate(curves.items()):
    style = {"label": label, "color": colors[index % len(colors)]}
    axes[0].plot(curve["steps"], curve["train_loss"], **style)
    axes[1].plot(curve["steps"], curve["test_accuracy"], **style)
  axes[0].set(xlabel="step", ylabel="train loss (minibatch mean)", yscale="log")
  axes[1].set(xlabel="step", ylabel="test accuracy", ylim=(0.5, 1.0))
  # Outside the axes, so that it never hides a curve.
  axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
