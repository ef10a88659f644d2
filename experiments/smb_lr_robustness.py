"""SMB's robustness to the initial step size, against SGD and Adam on a digits MLP.

Tests the claims of Birbil et al. (arXiv:2111.07058) at CPU scale: SMB converges for a wide range
of initial step sizes, and it trains faster than SGD and Adam tuned for the problem.

Setup: an MLP (64-64-64-10) on the bundled digits data, minibatch 64, 1500 steps (about 70
epochs), three seeds, with `jaxlearn.train.fit` (which passes SMB the batch loss and `value_fn`).
SMB (official defaults η 0.99, c 0.1, no autoschedule) and plain SGD are vmapped over the same
learning rates {0.1, 0.5, 1, 3, 10}; Adam, whose usual rates are far smaller, over its own grid
{3e-4, 1e-3, 3e-3, 1e-2, 3e-2} (its best digits rate, 1e-2 to 3e-2, is inside it). Reported per learning rate: the final full-train-set loss and test
accuracy (mean over seeds) and, for SMB, the fraction of steps that were model steps. Each SMB
step costs one extra forward pass and, on a model step, one extra backward pass; under `vmap`
both branches run, so here every SMB step costs about 2.5 SGD steps of compute. Comparisons are
per step (per epoch), as in the paper's plots.

The claim counts as held if (1) SMB's final train loss is finite and below the chance-level loss
log 10 at every grid learning rate, and its number of grid rates whose test accuracy is within 2
points of its best is at least SGD's; and (2) SMB's best final train loss is below the best of SGD
and of Adam. Writes smb_lr_robustness.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, fit_each
from jaxlearn.optim import smb
from jaxlearn.train import classifier, experiment_main, fit, grid, mlp, new_figure, save_result

SHARED_LRS = (0.1, 0.5, 1.0, 3.0, 10.0)
OPTIMIZERS = {
    "smb": (lambda learning_rate: smb(learning_rate), SHARED_LRS),
    "sgd": (lambda learning_rate: optax.sgd(learning_rate), SHARED_LRS),
    "adam": (lambda learning_rate: optax.adam(learning_rate), (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
}
WINDOW = 0.02  # test accuracy within 2 points of the optimizer's best


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  init_params, apply_fn = mlp((64,), (64, 64), data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (20, 10) if quick else (1500, 100)
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  grids = {name: lrs[2:3] if quick else lrs for name, (_, lrs) in OPTIMIZERS.items()}
  makers = {name: make for name, (make, _) in OPTIMIZERS.items()}

  start = time.perf_counter()
  common = dict(steps=steps, eval_every=eval_every, batch_size=64, seeds=seeds, eval_fn=eval_fn,
                progress=False, update_extras=("value_fn",))
  if quick:  # smoke run: the three optimizers in one compiled program
    results = fit_each(list(makers.values()), loss_fn, init_params, data,
                       configs=[grid(learning_rate=lrs) for lrs in grids.values()], **common)
  else:
    results = [fit(loss_fn, init_params, makers[name], data,
                   configs=grid(learning_rate=grids[name]), desc=name, **common)
               for name in OPTIMIZERS]
  wall_time = time.perf_counter() - start
  chance_loss = float(np.log(data.num_classes))  # the loss of uniform predictions

  sweeps, curves = {}, {}
  for name, result in zip(OPTIMIZERS, results):
    lrs = grids[name]
    loss = np.nan_to_num(result.final("train_loss"), nan=np.inf).mean(axis=1)
    accuracy = np.nan_to_num(result.final("test_accuracy"), nan=0.0).mean(axis=1)
    best = int(np.argmin(loss))
    sweeps[name] = {
        "learning_rates": list(lrs),
        "final_train_loss_per_lr": np.minimum(loss, 1e6),  # JSON-friendly cap for diverged runs
        "test_accuracy_per_lr": accuracy,
        "best_learning_rate": lrs[best],
        "best_final_train_loss": float(loss[best]),
        "best_test_accuracy": float(accuracy.max()),
        "good_window_size": int((accuracy >= accuracy.max() - WINDOW).sum()),
    }
    curves[name] = (result.eval_steps, np.nan_to_num(
        result.history["train_loss"][best].mean(axis=0), nan=np.inf))
    if name == "smb":
      state = result.state.opt_state  # a ScaleBySMBState, one row per (lr, seed) run
      fraction = np.asarray(state.model_steps) / np.maximum(np.asarray(state.count), 1)
      sweeps[name]["model_step_fraction_per_lr"] = fraction.reshape(len(lrs), -1).mean(axis=1)

  smb_ok = sweeps["smb"]["final_train_loss_per_lr"] < chance_loss
  robust = bool(smb_ok.all()) and (sweeps["smb"]["good_window_size"]
                                   >= sweeps["sgd"]["good_window_size"])
  faster = all(sweeps["smb"]["best_final_train_loss"] < sweeps[o]["best_final_train_loss"]
               for o in ("sgd", "adam"))

  fig, axes = new_figure(ncols=3)
  for name, sweep in sweeps.items():
    axes[0, 0].plot(sweep["learning_rates"], sweep["final_train_loss_per_lr"], marker="o",
                    label=name)
    steps_axis, curve = curves[name]
    axes[0, 1].plot(steps_axis, np.minimum(curve, 1e6),
                    label=f"{name} (lr {sweep['best_learning_rate']:g})")
  axes[0, 0].set(xscale="log", yscale="log", xlabel="learning rate",
                 ylabel="final train loss (1e6: diverged)", title="digits MLP, mean of seeds")
  axes[0, 1].set(yscale="log", xlabel="step", ylabel="train loss", title="best learning rate")
  axes[0, 2].plot(sweeps["smb"]["learning_rates"], sweeps["smb"]["model_step_fraction_per_lr"],
                  marker="o")
  axes[0, 2].set(xscale="log", xlabel="learning rate", ylabel="fraction of model steps",
                 title="SMB")
  for ax in axes[0, :2]:
    ax.legend(fontsize=7)

  measured = (
      "final train loss per lr: "
      + "; ".join(f"{n} " + ", ".join(f"{lr:g}: {v:.2e}" for lr, v in zip(
          s["learning_rates"], s["final_train_loss_per_lr"])) for n, s in sweeps.items())
      + ". SMB model-step fraction per lr: " + ", ".join(
          f"{lr:g}: {f:.2f}" for lr, f in zip(sweeps["smb"]["learning_rates"],
                                              sweeps["smb"]["model_step_fraction_per_lr"]))
      + ". Best test accuracy: " + ", ".join(f"{n} {s['best_test_accuracy']:.4f}"
                                             for n, s in sweeps.items())
      + "; lrs within 2 points of the best: " + ", ".join(f"{n} {s['good_window_size']}"
                                                         for n, s in sweeps.items())
      + f". SMB trains at every grid lr and its window is at least SGD's: {robust}; SMB's best "
      f"final train loss below tuned SGD's and Adam's (per step): {faster}."
  )
  return save_result(
      "smb_lr_robustness", out,
      claim=("SMB is robust to the initial step size (it converges for a wide range of them) and "
             "trains faster than SGD and Adam tuned for the problem."),
      measured=measured,
      claim_held=robust and faster,
      config={"data": "digits", "model": "MLP 64-64-64-10", "steps": steps, "batch_size": 64,
              "learning_rates": {n: list(lrs) for n, (_, lrs) in OPTIMIZERS.items()},
              "smb": "official defaults (eta 0.99, c 0.1, no autoschedule)",
              "sgd": "optax.sgd, no momentum", "adam": "optax.adam defaults",
              "window": WINDOW, "chance_loss": chance_loss},
      metrics={
          "sweeps": sweeps,
          "best_final_train_loss": {n: s["best_final_train_loss"] for n, s in sweeps.items()},
          "best_test_accuracy": {n: s["best_test_accuracy"] for n, s in sweeps.items()},
          "good_window_size": {n: s["good_window_size"] for n, s in sweeps.items()},
          "smb_model_step_fraction_per_lr": sweeps["smb"]["model_step_fraction_per_lr"],
      },
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
