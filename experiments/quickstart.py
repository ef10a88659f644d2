"""Quickstart: one MLP on the bundled digits data, trained with several registered optimizers.

Each optimizer runs as one compiled program vmapped over a small learning-rate grid and two seeds
(`jaxlearn.train.fit`). The best learning rate of each optimizer is chosen by final TRAIN loss
(the test set is never used for selection); the table reports its train/test accuracy and loss.
The --quick smoke run trains a smaller model with every optimizer in a single program.
Writes quickstart.json and quickstart.png (learning curves) to --out.
"""

from __future__ import annotations

import time
from pathlib import Path

import optax

from jaxlearn import optim
from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import compare_in_one_program, fast_compile_when_quick
from jaxlearn.train import classifier, experiment_main, mlp, new_figure, save_result
from jaxlearn.train.compare import Entry, compare_optimizers, plot_curves, print_table

# optax's AdamW is the reference point; the rest are jaxlearn's registered optimizers.
OPTIMIZERS = (
    Entry("adamw (optax)", lambda learning_rate: optax.adamw(learning_rate, weight_decay=1e-4),
          (3e-4, 1e-3, 3e-3)),
    Entry("adamp", lambda learning_rate: optim.adamp(learning_rate, weight_decay=1e-4),
          (3e-4, 1e-3, 3e-3)),
    Entry("sgdp", lambda learning_rate: optim.sgdp(learning_rate, momentum=0.9),
          (0.01, 0.03, 0.1)),
    Entry("lion", lambda learning_rate: optim.lion(learning_rate, weight_decay=1e-3),
          (1e-4, 3e-4, 1e-3)),
    Entry("novograd", optim.novograd, (3e-3, 1e-2, 3e-2)),
    Entry("grams", optim.grams, (3e-4, 1e-3, 3e-3)),
)

TARGET_ACCURACY = 0.9


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  hidden = (32,) if quick else (128, 128)
  init_params, apply_fn = mlp((64,), hidden, data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (200, 100) if quick else (1500, 100)
  seeds = [seed] if quick else [seed, seed + 1]
  entries = [e._replace(learning_rates=e.learning_rates[1:2]) if quick else e for e in OPTIMIZERS]

  start = time.perf_counter()
  compare = compare_in_one_program if quick else compare_optimizers
  rows, curves = compare(
      entries, data, init_params, loss_fn, eval_fn, steps=steps, eval_every=eval_every,
      seeds=seeds,
  )
  wall_time = time.perf_counter() - start
  print_table(rows)
  fig, axes = new_figure(ncols=2)
  plot_curves(axes[0], curves)
  fig.suptitle("digits MLP: best learning rate per optimizer (mean of seeds)")

  worst = min(rows, key=lambda r: r["test_accuracy"])
  return save_result(
      "quickstart", out,
      claim=(f"Sanity check, not a paper claim: every optimizer, at the best learning rate of its "
             f"grid, trains the MLP to at least {TARGET_ACCURACY:.0%} test accuracy on digits."),
      measured=(f"Lowest test accuracy: {worst['optimizer']} with {worst['test_accuracy']:.3f}; "
                + ", ".join(f"{r['optimizer']} {r['test_accuracy']:.3f}" for r in rows) + "."),
      claim_held=all(r["test_accuracy"] >= TARGET_ACCURACY for r in rows),
      config={"model": "MLP " + "-".join(map(str, (64, *hidden, 10))), "steps": steps,
              "batch_size": 64},
      metrics={"table": rows, "curves": curves}, seeds=seeds, wall_time_s=wall_time,
      figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
