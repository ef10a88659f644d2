"""NovoGrad's robustness to the learning rate, against Adam and SGD with momentum.

Tests two claims of the NovoGrad paper (arXiv:1905.11286) at CPU scale: NovoGrad is robust to the
choice of learning rate, and it needs about half of Adam's optimizer memory (one momentum buffer
plus one scalar per layer).

Setup: an MLP (64-128-128-10) on the bundled digits data, minibatch 64, 1500 steps, three seeds;
each optimizer (NovoGrad with the official defaults β = (0.95, 0.98); Adam; SGD with momentum
0.9) is vmapped over the same 13 learning rates from 1e-4 to 1 (a third of a decade apart) with
`jaxlearn.train.fit`. Robustness is the width of each optimizer's good window: the number of
grid learning rates whose mean final test accuracy is within 2 points of that optimizer's best
(diverged runs count as 0 accuracy). The claim is counted as held if NovoGrad's window is at least
as wide as Adam's and SGD's, its best accuracy is within 1 point of theirs, and its state has at
most 0.55 of Adam's bytes. Writes novograd_lr_robustness.json and .png.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxlearn import optim
from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, fit_each
from jaxlearn.train import classifier, experiment_main, fit, grid, mlp, new_figure, save_result

OPTIMIZERS = {
    "novograd": lambda learning_rate: optim.novograd(learning_rate),
    "adam": lambda learning_rate: optax.adam(learning_rate),
    "sgd_momentum": lambda learning_rate: optax.sgd(learning_rate, momentum=0.9),
}
LEARNING_RATES = tuple(float(lr) for lr in np.logspace(-4, 0, 13))
WINDOW = 0.02  # accuracy within 2 points of the optimizer's best


def _nbytes(tree) -> int:
  """Bytes of a tree of arrays or shapes."""
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _state_bytes(make, params) -> int:
  """Bytes of the optimizer state, from the shapes alone (nothing is compiled)."""
  return _nbytes(jax.eval_shape(make(1e-3).init, params))


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  init_params, apply_fn = mlp((64,), (128, 128), data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (20, 10) if quick else (1500, 150)
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  lrs = LEARNING_RATES[3::4] if quick else LEARNING_RATES

  start = time.perf_counter()
  common = dict(steps=steps, eval_every=eval_every, batch_size=64, seeds=seeds, eval_fn=eval_fn,
                progress=False)
  if quick:  # smoke run: every optimizer in one compiled program
    results = fit_each(list(OPTIMIZERS.values()), loss_fn, init_params, data,
                       configs=[grid(learning_rate=lrs)] * len(OPTIMIZERS), **common)
  else:
    results = [fit(loss_fn, init_params, make, data, configs=grid(learning_rate=lrs), desc=name,
                   **common) for name, make in OPTIMIZERS.items()]
  sweeps = {}
  for name, result in zip(OPTIMIZERS, results):
    accuracy = np.nan_to_num(result.final("test_accuracy"), nan=0.0).mean(axis=1)
    loss = np.nan_to_num(result.final("train_loss"), nan=np.inf).mean(axis=1)
    good = accuracy >= accuracy.max() - WINDOW
    sweeps[name] = {
        "test_accuracy_per_lr": accuracy,
        "final_train_loss_per_lr": np.minimum(loss, 1e6),  # JSON-friendly cap for diverged runs
        "best_test_accuracy": float(accuracy.max()),
        "best_learning_rate": lrs[int(np.argmax(accuracy))],
        "good_window_size": int(good.sum()),
        "good_window_decades": float(np.log10(max(np.array(lrs)[good]) / min(np.array(lrs)[good]))),
        "good_learning_rates": [lr for lr, ok in zip(lrs, good) if ok],
    }
  wall_time = time.perf_counter() - start

  params = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  memory = {name: _state_bytes(make, params) for name, make in OPTIMIZERS.items()}
  param_bytes = _nbytes(params)
  ratio = memory["novograd"] / memory["adam"]
  ng, others = sweeps["novograd"], [sweeps["adam"], sweeps["sgd_momentum"]]
  robust = all(ng["good_window_size"] >= o["good_window_size"] for o in others)
  accurate = all(ng["best_test_accuracy"] >= o["best_test_accuracy"] - 0.01 for o in others)
  lean = ratio <= 0.55

  fig, axes = new_figure(ncols=2)
  for name, sweep in sweeps.items():
    axes[0, 0].plot(lrs, sweep["test_accuracy_per_lr"], marker="o", label=name)
  axes[0, 0].set(xscale="log", xlabel="learning rate", ylabel="final test accuracy",
                 title="digits MLP, mean of seeds")
  axes[0, 0].legend()
  axes[0, 1].bar(list(memory), [memory[n] / param_bytes for n in memory])
  axes[0, 1].set(ylabel="optimizer state / parameter bytes", title="memory")

  measured = (
      "good-lr window (lrs within 2 points of the best, out of "
      f"{len(lrs)} spanning 4 decades): "
      + ", ".join(f"{n} {s['good_window_size']} ({s['good_window_decades']:.2f} decades, best "
                  f"{s['best_test_accuracy']:.3f} at lr {s['best_learning_rate']:.2g})"
                  for n, s in sweeps.items())
      + f"; NovoGrad state / Adam state = {ratio:.3f}. NovoGrad window at least as wide: "
      f"{robust}; best accuracy within 1 point: {accurate}."
  )
  return save_result(
      "novograd_lr_robustness", out,
      claim=("NovoGrad performs on par with Adam and SGD with momentum, is robust to the choice "
             "of learning rate, and has half of Adam's memory footprint."),
      measured=measured,
      claim_held=robust and accurate and lean,
      config={"data": "digits", "model": "MLP 64-128-128-10", "steps": steps, "batch_size": 64,
              "learning_rates": list(lrs), "window": WINDOW,
              "novograd": "jaxlearn.optim.novograd defaults (b1 0.95, b2 0.98, eps 1e-8)",
              "adam": "optax.adam defaults", "sgd_momentum": "optax.sgd momentum 0.9"},
      metrics={
          "sweeps": sweeps,
          "good_window_size": {n: s["good_window_size"] for n, s in sweeps.items()},
          "best_test_accuracy": {n: s["best_test_accuracy"] for n, s in sweeps.items()},
          "state_bytes": memory,
          "novograd_over_adam_state_bytes": ratio,
      },
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
