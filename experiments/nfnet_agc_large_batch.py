"""Adaptive gradient clipping keeps a normalizer-free net stable at large batch and learning rate.

Tests the NFNets paper's claim about AGC (arXiv:2102.06171, Section 4 / Figure 2) at CPU scale:
without batch normalization, training at large batch sizes becomes unstable as the learning rate
grows, and unit-wise adaptive gradient clipping extends the range of stable learning rates.

Setup: an unnormalized ReLU MLP (64-128-128-128-128-10, LeCun-normal init, no normalization
layer) on the bundled digits data, batch 1024 of the 1437 training images, 300 steps of SGD with
Nesterov momentum 0.9 (the paper's optimizer), learning rates {0.1, 0.3, 1, 3}, three seeds.
Arms: no clipping, and AGC with λ in {0.01, 0.04, 0.16} (the paper's sweep range), applied to
every layer but the final linear one (as in the paper). A run is stable if its loss stays finite
and its final training loss is below 0.5. The claim is counted as held if the largest learning
rate at which all seeds are stable is larger with AGC (best λ) than without, and AGC's best test
accuracy is within half a point of (or above) the unclipped best.
Writes nfnet_agc_large_batch.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optax

from jaxlearn import optim
from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, fit_each
from jaxlearn.train import classifier, experiment_main, fit, grid, mlp, new_figure, save_result

LEARNING_RATES = (0.1, 0.3, 1.0, 3.0)
CLIPPINGS = (0.01, 0.04, 0.16)
STABLE_LOSS = 0.5
BATCH_SIZE = 1024


def _all_but_last_layer(params):
  last = sorted(params, key=lambda name: int(name.split("_")[-1]))[-1]
  return {name: name != last for name in params}


def sgd(learning_rate):
  return optax.sgd(learning_rate, momentum=0.9, nesterov=True)


def agc_sgd(learning_rate, clipping):
  return optax.chain(
      optax.masked(optim.adaptive_grad_clip(clipping), _all_but_last_layer), sgd(learning_rate)
  )


def _summarize(result, lrs):
  """Per configuration: mean final loss, stable seeds, test accuracy (diverged -> 0)."""
  loss = result.final("train_loss")
  stable = np.isfinite(loss) & (np.nan_to_num(loss, nan=np.inf) < STABLE_LOSS)
  # A run that blew up and came back still counts as unstable: every recorded loss must be finite.
  stable &= np.isfinite(result.history["train_loss"]).all(axis=-1)
  accuracy = np.nan_to_num(result.final("test_accuracy"), nan=0.0)
  return stable, accuracy


def _max_stable_lr(stable_all_seeds, lrs):
  ok = [lr for lr, s in zip(lrs, stable_all_seeds) if s]
  return max(ok) if ok else 0.0


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  init_params, apply_fn = mlp((64,), (128,) * 4, data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (20, 10) if quick else (300, 50)
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  lrs = LEARNING_RATES[2:3] if quick else LEARNING_RATES
  clippings = CLIPPINGS[1:2] if quick else CLIPPINGS
  common = dict(steps=steps, eval_every=eval_every, batch_size=BATCH_SIZE, seeds=seeds,
                eval_fn=eval_fn, progress=False)

  start = time.perf_counter()
  if quick:  # smoke run: both arms in one compiled program (plain SGD ignores `clipping`)
    plain, clipped = fit_each(
        [lambda learning_rate, clipping: sgd(learning_rate), agc_sgd], loss_fn, init_params,
        data, configs=[grid(clipping=[0.0], learning_rate=lrs),
                       grid(clipping=clippings, learning_rate=lrs)], **common)
  else:
    plain = fit(loss_fn, init_params, sgd, data, configs=grid(learning_rate=lrs), desc="sgd",
                **common)
    clipped = fit(loss_fn, init_params, agc_sgd, data,
                  configs=grid(clipping=clippings, learning_rate=lrs), desc="agc", **common)
  wall_time = time.perf_counter() - start

  arms = {}
  stable, accuracy = _summarize(plain, lrs)
  arms["no clipping"] = (stable, accuracy, plain.final("train_loss"))
  stable_c, accuracy_c = _summarize(clipped, lrs)
  for i, clipping in enumerate(clippings):
    rows = slice(i * len(lrs), (i + 1) * len(lrs))
    arms[f"AGC λ={clipping:g}"] = (stable_c[rows], accuracy_c[rows],
                                   clipped.final("train_loss")[rows])

  summary = {}
  for name, (stable, accuracy, loss) in arms.items():
    all_stable = stable.all(axis=1)
    summary[name] = {
        "stable_seeds_per_lr": stable.sum(axis=1),
        "test_accuracy_per_lr": accuracy.mean(axis=1),
        "final_train_loss_per_lr": np.minimum(np.nan_to_num(loss, nan=1e6), 1e6).mean(axis=1),
        "max_stable_learning_rate": _max_stable_lr(all_stable, lrs),
        "best_test_accuracy": float(accuracy.mean(axis=1).max()),
    }
  base = summary["no clipping"]
  agc_names = [n for n in summary if n != "no clipping"]
  best_agc = max(agc_names, key=lambda n: (summary[n]["max_stable_learning_rate"],
                                           summary[n]["best_test_accuracy"]))
  wider = summary[best_agc]["max_stable_learning_rate"] > base["max_stable_learning_rate"]
  as_good = max(summary[n]["best_test_accuracy"] for n in agc_names) >= (
      base["best_test_accuracy"] - 0.005)

  fig, axes = new_figure(ncols=2)
  for name, s in summary.items():
    axes[0, 0].plot(lrs, s["final_train_loss_per_lr"], marker="o", label=name)
    axes[0, 1].plot(lrs, s["test_accuracy_per_lr"], marker="o", label=name)
  axes[0, 0].set(xscale="log", yscale="log", xlabel="learning rate",
                 ylabel="final train loss (diverged: 1e6)", title=f"batch {BATCH_SIZE}, no norm")
  axes[0, 1].set(xscale="log", xlabel="learning rate", ylabel="test accuracy (diverged: 0)")
  axes[0, 0].legend()

  measured = (
      "largest learning rate stable in every seed: "
      + ", ".join(f"{n} {s['max_stable_learning_rate']:g}" for n, s in summary.items())
      + "; best test accuracy: "
      + ", ".join(f"{n} {s['best_test_accuracy']:.3f}" for n, s in summary.items())
      + f". AGC widens the stable range: {wider}; AGC as accurate: {as_good}."
  )
  return save_result(
      "nfnet_agc_large_batch", out,
      claim=("Adaptive gradient clipping lets normalizer-free networks train stably at large "
             "batch sizes and learning rates where unclipped training becomes unstable."),
      measured=measured,
      claim_held=wider and as_good,
      config={"data": "digits", "model": "MLP 64-128x4-10, no normalization",
              "optimizer": "SGD, Nesterov momentum 0.9", "batch_size": BATCH_SIZE,
              "steps": steps, "learning_rates": list(lrs), "clippings": list(clippings),
              "agc_eps": 1e-3, "final_layer_clipped": False, "stable_loss": STABLE_LOSS},
      metrics={
          "arms": summary,
          "max_stable_learning_rate": {
              n: s["max_stable_learning_rate"] for n, s in summary.items()},
          "best_test_accuracy": {n: s["best_test_accuracy"] for n, s in summary.items()},
      },
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
