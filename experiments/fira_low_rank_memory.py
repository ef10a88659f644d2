"""Fira vs GaLore vs full-rank Adam under a rank-8 optimizer-state budget, on MNIST-1D.

Tests the Fira paper's headline claim (arXiv:2410.01623) at CPU scale: with the optimizer state
of a low-rank method, Fira trains close to full-rank Adam, and better than GaLore.

Setup: an MLP 40-256-256-10 on MNIST-1D (4000 training signals, generated locally), minibatch
64, 1500 steps (24 epochs), two seeds (sizes that keep the full run within a few CPU minutes).
Every kernel (40 x 256, 256 x 256, 256 x 10) is projected at rank 8 with the official gap 200
and the official pre-training scripts' alpha 0.25; GaLore is Fira without the residual
(`residual=False`, the official `GaLoreAdamW`); the baseline is `optax.adam`. Each optimizer is
vmapped over four learning rates (Adam {3e-4 ... 1e-2}, GaLore and Fira {1e-2 ... 3e-1}: alpha
shrinks their low-rank step) and judged at its best rate by the final full-train-set loss (mean
over seeds); a best rate at a grid edge is reported. State bytes come from
`jax.eval_shape(opt.init, params)`.

The claim counts as held if (1) Fira's best final training loss is below GaLore's, (2) it closes
at least 75% of GaLore's gap to Adam (fira <= adam + 0.25 (galore - adam)), and (3) Fira's state
is under half of Adam's. Test accuracy is reported too (MNIST-1D MLPs overfit, so it is not the
criterion). Writes fira_low_rank_memory.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxlearn.data import load_mnist1d
from jaxlearn.experiments._shared import fast_compile_when_quick, fit_each
from jaxlearn.optim import fira
from jaxlearn.train import classifier, experiment_main, fit, grid, mlp, new_figure, save_result

RANK, GAP, ALPHA = 8, 200, 0.25
# alpha = 0.25 shrinks the low-rank step: GaLore's and Fira's best rates lie above Adam's.
LEARNING_RATES = {"adam": (3e-4, 1e-3, 3e-3, 1e-2), "galore": (1e-2, 3e-2, 1e-1, 3e-1),
                  "fira": (1e-2, 3e-2, 1e-1, 3e-1)}
OPTIMIZERS = {
    "adam": lambda learning_rate: optax.adam(learning_rate),
    "galore": lambda learning_rate: fira(learning_rate, alpha=ALPHA, rank=RANK,
                                         update_proj_gap=GAP, residual=False),
    "fira": lambda learning_rate: fira(learning_rate, alpha=ALPHA, rank=RANK,
                                       update_proj_gap=GAP),
}


def state_bytes(make, params) -> int:
  """Bytes of the optimizer state, from its abstract shapes (nothing is allocated)."""
  state = jax.eval_shape(make(1e-3).init, params)
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)))


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_mnist1d(seed=seed, num_samples=200 if quick else 5000)
  hidden = (32, 32) if quick else (256, 256)  # the smoke run only checks that it runs
  init_params, apply_fn = mlp((40,), hidden, data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (10, 10) if quick else (1500, 150)
  seeds = [seed] if quick else [seed, seed + 1]
  params = jax.eval_shape(init_params, jax.random.key(0))
  memory = {name: state_bytes(make, params) for name, make in OPTIMIZERS.items()}
  param_bytes = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))

  start = time.perf_counter()
  common = dict(steps=steps, eval_every=eval_every, batch_size=64, seeds=seeds, eval_fn=eval_fn)
  grids = {name: lrs[1:2] if quick else lrs for name, lrs in LEARNING_RATES.items()}
  if quick:  # smoke run: the three optimizers in one compiled program
    results = fit_each(list(OPTIMIZERS.values()), loss_fn, init_params, data, progress=False,
                       configs=[grid(learning_rate=grids[name]) for name in OPTIMIZERS], **common)
  else:
    results = [fit(loss_fn, init_params, make, data, configs=grid(learning_rate=grids[name]),
                   desc=name, **common) for name, make in OPTIMIZERS.items()]
  wall_time = time.perf_counter() - start

  summary, curves = {}, {}
  for name, result in zip(OPTIMIZERS, results):
    final = result.final("train_loss").mean(axis=1)
    best = int(np.argmin(final))
    summary[name] = {
        "learning_rate": grids[name][best],
        "best_at_grid_edge": best in (0, len(grids[name]) - 1) and len(grids[name]) > 1,
        "learning_rates": list(grids[name]),
        "final_train_loss": float(final[best]),
        "final_train_loss_per_lr": final,
        "test_accuracy": float(result.final("test_accuracy")[best].mean()),
        "state_bytes": memory[name],
    }
    curves[name] = (result.eval_steps, result.history["train_loss"][best].mean(axis=0))

  loss = {name: summary[name]["final_train_loss"] for name in OPTIMIZERS}
  beats_galore = loss["fira"] < loss["galore"]
  closes_gap = loss["fira"] <= loss["adam"] + 0.25 * (loss["galore"] - loss["adam"])
  small_state = memory["fira"] < 0.5 * memory["adam"]
  measured = (
      "final train loss (best lr, mean of seeds) "
      + ", ".join(f"{n} {loss[n]:.3e} (lr {summary[n]['learning_rate']:g})" for n in OPTIMIZERS)
      + "; test accuracy " + ", ".join(f"{n} {summary[n]['test_accuracy']:.3f}" for n in OPTIMIZERS)
      + "; optimizer state " + ", ".join(f"{n} {memory[n] / 1024:.0f} KiB" for n in OPTIMIZERS)
      + f" (params {param_bytes / 1024:.0f} KiB). Best rate at a grid edge: "
      + (", ".join(n for n in OPTIMIZERS if summary[n]["best_at_grid_edge"]) or "none")
      + f". Fira below GaLore: {beats_galore}; closes "
      f"75% of GaLore's gap to Adam: {closes_gap}; state under half of Adam's: {small_state}."
  )

  fig, axes = new_figure(ncols=2)
  for name in OPTIMIZERS:
    axes[0, 0].plot(*curves[name], label=f"{name} (lr {summary[name]['learning_rate']:g})")
    axes[0, 1].plot(grids[name], summary[name]["final_train_loss_per_lr"], marker="o",
                    label=name)
  axes[0, 0].set(xlabel="step", ylabel="train loss", yscale="log",
                 title=f"MNIST-1D MLP, rank {RANK}")
  axes[0, 1].set(xlabel="learning rate", ylabel="final train loss", xscale="log", yscale="log",
                 title="learning-rate sweep")
  for ax in axes[0]:
    ax.legend()
  return save_result(
      "fira_low_rank_memory", out,
      claim=("Under a low-rank optimizer-state budget, Fira trains close to full-rank Adam and "
             "better than GaLore."),
      measured=measured,
      claim_held=beats_galore and closes_gap and small_state,
      config={"model": f"MLP 40-{hidden[0]}-{hidden[1]}-10", "data": "MNIST-1D", "steps": steps,
              "batch_size": 64, "rank": RANK, "update_proj_gap": GAP, "alpha": ALPHA,
              "learning_rates": {n: list(v) for n, v in grids.items()}},
      metrics={"summary": summary, "final_train_loss": loss, "state_bytes": memory,
               "param_bytes": param_bytes},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
