"""Every registered optimizer on the same digits MLP, with a small vmapped learning-rate sweep each.

The optimizers are read from the registry (every alias of an "optimizer" method), each at its
default hyperparameters with learning rates {1/3, 1, 3} x its default learning rate (1e-3 when it
has none), two seeds, one compiled program per optimizer. The best learning rate is chosen by final
train loss. optax's AdamW is the reference. Gradient transformations that are not optimizers on
their own (clipping, noise, perpGrad...) are not included. Aliases that cannot train a softmax
classifier as they are (Normalized LR+GD needs the margins of a binary logistic regression) are
listed as skipped with the reason.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import optax

from jaxlearn import registry
from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import compare_in_one_program, fast_compile_when_quick
from jaxlearn.train import classifier, experiment_main, mlp, new_figure, save_result
from jaxlearn.train.compare import (
    Entry, compare_optimizers, plot_curves, print_table, required_arguments,
)

GRID = (1 / 3, 1.0, 3.0)


def default_learning_rate(factory) -> float:
  default = inspect.signature(factory).parameters["learning_rate"].default
  return float(default) if isinstance(default, (int, float)) and default > 0 else 1e-3


def registered_entries(steps: int) -> list[Entry]:
  entries = [Entry("adamw (optax)", optax.adamw, tuple(1e-3 * g for g in GRID))]
  for method, symbol in registry.optimizer_aliases():
    factory = registry.resolve(symbol)
    extra = required_arguments(factory, num_iterations=steps)
    lr = default_learning_rate(factory)
    make = lambda learning_rate, factory=factory, extra=extra: factory(learning_rate, **extra)
    entries.append(Entry(symbol, make, tuple(lr * g for g in GRID), method.update_extras))
  return entries


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  init_params, apply_fn = mlp((64,), (128,), data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (20, 10) if quick else (1000, 100)
  seeds = [seed] if quick else [seed, seed + 1]
  entries = registered_entries(steps)
  if quick:  # two optimizers, one learning rate, one program: a smoke run of the machinery
    entries = [e._replace(learning_rates=e.learning_rates[1:2]) for e in entries[:2]]

  start = time.perf_counter()
  rows, curves, skipped = [], {}, {}
  if quick:
    rows, curves = compare_in_one_program(entries, data, init_params, loss_fn, eval_fn,
                                          steps=steps, eval_every=eval_every, seeds=seeds)
  for entry in () if quick else entries:  # one program per optimizer, past those that fail
    try:
      new_rows, new_curves = compare_optimizers(
          [entry], data, init_params, loss_fn, eval_fn, steps=steps, eval_every=eval_every,
          seeds=seeds,
      )
    except (TypeError, ValueError) as error:
      skipped[entry.label] = str(error).splitlines()[0]
      print(f"skipped {entry.label}: {skipped[entry.label]}")
      continue
    rows += new_rows
    curves.update(new_curves)
  wall_time = time.perf_counter() - start
  print_table(rows)

  fig, axes = new_figure(ncols=2, width=6.5)
  plot_curves(axes[0], curves)
  fig.suptitle("digits MLP (64-128-10): every registered optimizer at its best learning rate")
  reference = rows[0]["test_accuracy"]
  within = [r["optimizer"] for r in rows[1:] if r["test_accuracy"] >= reference - 0.02]
  return save_result(
      "optimizers_digits", out,
      claim=("Comparison, not a single paper's claim: each paper says its optimizer matches or "
             "beats Adam-type baselines; here every registered optimizer, at default "
             "hyperparameters and its best learning rate of a 3-point grid, should reach within "
             "2 points of AdamW's test accuracy on digits."),
      measured=(f"AdamW test accuracy {reference:.3f}; {len(within)} of {len(rows) - 1} "
                f"optimizers within 2 points; below: "
                + (", ".join(f"{r['optimizer']} {r['test_accuracy']:.3f}" for r in rows[1:]
                             if r["optimizer"] not in within) or "none")
                + (f"; skipped: {', '.join(skipped)}" if skipped else "") + "."),
      claim_held=len(within) == len(rows) - 1,
      config={"model": "MLP 64-128-10", "steps": steps, "batch_size": 64, "grid": GRID},
      metrics={"table": rows, "curves": curves, "skipped": skipped}, seeds=seeds,
      wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
