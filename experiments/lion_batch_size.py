"""Lion vs AdamW across batch sizes on MNIST-1D, at a fixed number of epochs.

Tests three claims of the Lion paper (arXiv:2302.06675) at CPU scale: Lion, run with a 10x
smaller learning rate and a 10x larger weight decay than AdamW (the paper's advice), reaches
AdamW's accuracy; its advantage over AdamW grows with the batch size (paper, Section 5 /
Figure 7); and it keeps half of AdamW's optimizer state.

Setup: an MLP (40-128-128-10) on MNIST-1D, 3200 training / 800 validation / 1000 test examples,
batch sizes 32, 128 and 512, each trained for the same number of epochs (so larger batches take
fewer steps), three seeds; every optimizer is vmapped over a 7-point learning-rate grid
(3 decades; Lion's is AdamW's divided by 10) with `jaxlearn.train.fit`. For each (optimizer,
batch size) the learning rate with the best mean validation accuracy is selected and its TEST
accuracy reported. The claim is counted as held if
Lion is within 1 point of AdamW at every batch size, the Lion-minus-AdamW gap at batch 512 is
larger than at batch 32, and Lion's state has half of AdamW's bytes.
Writes lion_batch_size.json and .png.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxlearn import optim
from jaxlearn.data import load_mnist1d
from jaxlearn.experiments._shared import fast_compile_when_quick, fit_each, validation_split
from jaxlearn.train import classifier, experiment_main, fit, grid, mlp, new_figure, save_result

ADAMW_WEIGHT_DECAY = 0.01
OPTIMIZERS = {
    "adamw": (
        lambda learning_rate: optax.adamw(learning_rate, weight_decay=ADAMW_WEIGHT_DECAY),
        (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    ),
    # Paper's advice: 3-10x smaller lr, 3-10x larger weight decay (lr * wd kept equal here).
    "lion": (
        lambda learning_rate: optim.lion(learning_rate, weight_decay=10 * ADAMW_WEIGHT_DECAY),
        (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    ),
}
BATCH_SIZES = (32, 128, 512)


def _state_bytes(make, params) -> int:
  """Bytes of the optimizer state's parameter-shaped leaves (scalar counters excluded), from
  the shapes alone (nothing is compiled)."""
  state = jax.eval_shape(make(1e-3).init, params)
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state) if x.ndim > 0)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_mnist1d(seed=seed, num_samples=1000 if quick else 5000)
  tuning = validation_split(data, 0.2, seed)
  init_params, apply_fn = mlp((40,), (128, 128), data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  epochs = 2 if quick else 24
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  batch_sizes = BATCH_SIZES[1:2] if quick else BATCH_SIZES
  n_train = len(tuning.x_train)
  test_accuracy = jax.jit(jax.vmap(lambda p: eval_fn(p, data.x_test, data.y_test)["accuracy"]))
  grids = {name: lrs[2:3] if quick else lrs for name, (_, lrs) in OPTIMIZERS.items()}
  evals_every = {bs: max(1, epochs * n_train // bs // 8) for bs in batch_sizes}

  start = time.perf_counter()
  quick_results = {}
  if quick:  # smoke run: both optimizers in one compiled program
    (batch_size,) = batch_sizes
    makers = [lambda learning_rate, make=make: make(learning_rate)
              for make, _ in OPTIMIZERS.values()]
    quick_results = dict(zip(OPTIMIZERS, fit_each(
        makers, loss_fn, init_params, tuning, steps=evals_every[batch_size] * 8,
        eval_every=evals_every[batch_size], batch_size=batch_size, seeds=seeds,
        configs=[grid(learning_rate=lrs) for lrs in grids.values()], eval_fn=eval_fn,
        progress=False)))
  results, curves = {}, {}
  for name, (make, lrs) in OPTIMIZERS.items():
    lrs = grids[name]
    for batch_size in batch_sizes:
      eval_every = evals_every[batch_size]
      steps = eval_every * 8
      result = quick_results[name] if quick else fit(
          loss_fn, init_params, lambda learning_rate, make=make: make(learning_rate), tuning,
          steps=steps, eval_every=eval_every, batch_size=batch_size,
          configs=grid(learning_rate=lrs), seeds=seeds, eval_fn=eval_fn,
          desc=f"{name} bs{batch_size}", progress=False,
      )
      val_acc = result.final("test_accuracy").mean(axis=1)  # fit's "test" split is validation
      best = int(np.argmax(val_acc))
      test_acc = np.asarray(test_accuracy(result.state.params)).reshape(len(lrs), len(seeds))
      results[(name, batch_size)] = {
          "learning_rate": lrs[best],
          "steps": steps,
          "validation_accuracy_per_lr": val_acc,
          "test_accuracy": float(test_acc[best].mean()),
          "test_accuracy_per_seed": test_acc[best],
          "final_train_loss": float(result.final("train_loss")[best].mean()),
      }
      curves[(name, batch_size)] = (
          result.eval_steps / steps * epochs, result.history["test_accuracy"][best].mean(axis=0)
      )
  wall_time = time.perf_counter() - start

  params = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  memory = {name: _state_bytes(make, params) for name, (make, _) in OPTIMIZERS.items()}
  memory_ratio = memory["lion"] / memory["adamw"]
  gaps = {bs: results[("lion", bs)]["test_accuracy"] - results[("adamw", bs)]["test_accuracy"]
          for bs in batch_sizes}
  comparable = all(gap >= -0.01 for gap in gaps.values())
  grows = gaps[batch_sizes[-1]] > gaps[batch_sizes[0]]
  half_memory = abs(memory_ratio - 0.5) < 0.01

  fig, axes = new_figure(ncols=2)
  for (name, bs), (x, acc) in curves.items():
    axes[0, 0].plot(x, acc, label=f"{name} bs{bs} (lr {results[(name, bs)]['learning_rate']:g})",
                    linestyle="-" if name == "lion" else "--")
  axes[0, 0].set(xlabel="epoch", ylabel="validation accuracy", title="MNIST-1D, best lr")
  axes[0, 0].legend(fontsize=7)
  for name in OPTIMIZERS:
    axes[0, 1].plot(batch_sizes, [results[(name, bs)]["test_accuracy"] for bs in batch_sizes],
                    marker="o", label=name)
  axes[0, 1].set(xlabel="batch size", ylabel="test accuracy", xscale="log",
                 title=f"same epochs; state bytes lion/adamw = {memory_ratio:.2f}")
  axes[0, 1].legend()

  measured = (
      "test accuracy at the best validation lr, AdamW vs Lion: "
      + "; ".join(f"batch {bs}: {results[('adamw', bs)]['test_accuracy']:.3f} vs "
                  f"{results[('lion', bs)]['test_accuracy']:.3f} (gap {gaps[bs]:+.3f})"
                  for bs in batch_sizes)
      + f". Lion within 1 point everywhere: {comparable}; gap grows from batch "
      f"{batch_sizes[0]} to {batch_sizes[-1]}: {grows}; Lion state / AdamW state = "
      f"{memory_ratio:.2f}."
  )
  return save_result(
      "lion_batch_size", out,
      claim=("Lion (10x smaller lr, 10x larger weight decay) matches or beats AdamW, its gain "
             "over AdamW grows with the batch size, and it needs half of AdamW's optimizer "
             "memory."),
      measured=measured,
      claim_held=comparable and grows and half_memory,
      config={"data": "MNIST-1D (3200 train / 800 validation / 1000 test)",
              "model": "MLP 40-128-128-10", "epochs": epochs, "batch_sizes": list(batch_sizes),
              "learning_rates": {n: list(l) for n, (_, l) in OPTIMIZERS.items()},
              "weight_decay": {"adamw": ADAMW_WEIGHT_DECAY, "lion": 10 * ADAMW_WEIGHT_DECAY},
              "selection": "best mean validation accuracy; test accuracy reported"},
      metrics={
          "test_accuracy": {f"{n}_bs{bs}": r["test_accuracy"] for (n, bs), r in results.items()},
          "learning_rate": {f"{n}_bs{bs}": r["learning_rate"] for (n, bs), r in results.items()},
          "lion_minus_adamw": {f"bs{bs}": gap for bs, gap in gaps.items()},
          "state_bytes": memory,
          "lion_over_adamw_state_bytes": memory_ratio,
          "runs": {f"{n}_bs{bs}": r for (n, bs), r in results.items()},
      },
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
