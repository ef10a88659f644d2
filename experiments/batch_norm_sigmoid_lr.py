"""Batch Normalization with sigmoid units: higher learning rates and fewer steps (digits MLP).

Tests the headline claim of arXiv:1502.03167 at CPU scale: batch normalization allows much higher
learning rates, makes networks with saturating nonlinearities trainable, and reaches a given
accuracy in far fewer training steps.

Setup (after the paper's MNIST experiment, section 4.1: three fully-connected hidden layers of 100
sigmoid units, mini-batches of 60, BN before every nonlinearity): scikit-learn digits (8x8 pixels
flattened, 1437 train / 360 test), the same MLP with and without BN (`jaxlearn.nn.linen.BatchNorm`,
flax's layer, momentum 0.9; the Dense layers before BN have no bias), LeCun-normal init, plain SGD
over a learning-rate grid (0.03 to 30, factor ~3) and 3 seeds, every run vmapped by
`jaxlearn.train.fit`, 2000 steps (~84 epochs), test accuracy (BN in evaluation mode, running
statistics) every 50 steps.

Measured, per variant and learning rate: the number of steps until the mean test accuracy over
the seeds first reaches 90% (target), and the final accuracy. Criterion fixed before the run:
the claim is counted as held if (a) BN reaches the target at a learning rate at least 3x larger
than the largest at which the plain network reaches it, and (b) BN's fewest steps to the target
(over the grid) are at most half of the plain network's. Writes batch_norm_sigmoid_lr.json/.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.nn import linen as jnn_linen
from jaxlearn.train import experiment_main, fit, grid, new_figure, save_result, stateful_classifier

HIDDEN = (100, 100, 100)
LEARNING_RATES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
TARGET = 0.9
BATCH_SIZE = 60
MOMENTUM = 0.9  # running statistics (flax convention; PyTorch's 0.1)


class SigmoidMLP(linen.Module):
  """Dense → [BN] → sigmoid for every hidden layer, then a Dense read-out."""

  hidden: tuple[int, ...]
  batch_norm: bool
  num_classes: int = 10

  @linen.compact
  def __call__(self, x, train: bool):
    for width in self.hidden:
      x = linen.Dense(width, use_bias=not self.batch_norm)(x)
      if self.batch_norm:
        x = jnn_linen.BatchNorm(momentum=MOMENTUM)(x, use_running_average=not train)
      x = linen.sigmoid(x)
    return linen.Dense(self.num_classes)(x)


def _steps_to_target(steps: np.ndarray, accuracy: np.ndarray) -> float | None:
  reached = np.nonzero(accuracy >= TARGET)[0]
  return int(steps[reached[0]]) if reached.size else None


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  hidden = HIDDEN[:1] if quick else HIDDEN
  learning_rates = LEARNING_RATES[3:4] if quick else LEARNING_RATES
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  steps, eval_every = (20, 20) if quick else (2000, 50)

  start = time.perf_counter()
  results, curves = {}, {}
  for name, batch_norm in (("plain", False), ("bn", True)):
    init, loss_fn, eval_fn = stateful_classifier(
        SigmoidMLP(hidden, batch_norm), jnp.zeros((1, data.x_train.shape[1])))
    result = fit(
        loss_fn, init, lambda learning_rate: optax.sgd(learning_rate), data, steps=steps,
        eval_every=eval_every, batch_size=BATCH_SIZE, configs=grid(learning_rate=learning_rates),
        seeds=seeds, eval_fn=eval_fn, has_state=True, progress=False, desc=name,
    )
    accuracy = result.history["test_accuracy"].mean(axis=1)  # (lr, evals), mean over seeds
    final = result.final("test_accuracy")  # (lr, seeds)
    results[name] = {
        str(lr): {
            "steps_to_target": _steps_to_target(result.eval_steps, accuracy[k]),
            "final_test_accuracy": float(final[k].mean()),
            "final_test_accuracy_std": float(final[k].std()),
            "final_train_loss": float(np.nanmean(result.final("train_loss")[k])),
        }
        for k, lr in enumerate(learning_rates)
    }
    curves[name] = (result.eval_steps, accuracy)
  wall_time = time.perf_counter() - start

  def summary(name):
    reached = {float(lr): r["steps_to_target"] for lr, r in results[name].items()
               if r["steps_to_target"] is not None}
    return (max(reached) if reached else None, min(reached.values()) if reached else None)

  (plain_lr, plain_steps), (bn_lr, bn_steps) = summary("plain"), summary("bn")
  if bn_lr is None:
    held = False
  elif plain_lr is None:
    held = True  # BN reaches the target, the plain network at no learning rate of the grid
  else:
    held = bn_lr >= 3 * plain_lr and bn_steps <= plain_steps / 2
  if quick:
    held = None  # a smoke run cannot decide

  fig, axes = new_figure(ncols=3)
  for name, (eval_steps, accuracy) in curves.items():
    lrs = [float(lr) for lr in results[name]]
    axes[0, 0].plot(lrs, [r["final_test_accuracy"] for r in results[name].values()],
                    marker="o", label=name)
    steps_needed = [np.nan if r["steps_to_target"] is None else r["steps_to_target"]
                    for r in results[name].values()]
    axes[0, 1].plot(lrs, steps_needed, marker="o", label=name)
    best = int(np.argmax(accuracy[:, -1]))
    axes[0, 2].plot(eval_steps, accuracy[best], label=f"{name}, lr {lrs[best]:g}")
  axes[0, 0].set(xscale="log", xlabel="learning rate", ylabel="final test accuracy",
                 title=f"sigmoid MLP {'-'.join(map(str, hidden))}, digits")
  axes[0, 1].set(xscale="log", xlabel="learning rate", ylabel=f"steps to {TARGET:.0%} test acc.",
                 title="missing: target not reached")
  axes[0, 2].axhline(TARGET, color="k", linestyle=":")
  axes[0, 2].set(xlabel="step", ylabel="test accuracy (mean of seeds)",
                 title="best learning rate of each")
  for ax in axes[0]:
    ax.legend(fontsize=7)

  fmt = lambda v: "never" if v is None else f"{v:g}"
  measured = (
      f"largest learning rate reaching {TARGET:.0%} test accuracy within {steps} steps: plain "
      f"{fmt(plain_lr)}, BN {fmt(bn_lr)}; fewest steps to it: plain {fmt(plain_steps)}, BN "
      f"{fmt(bn_steps)}. Final test accuracy per lr, plain: "
      + ", ".join(f"{lr}: {r['final_test_accuracy']:.3f}" for lr, r in results["plain"].items())
      + "; BN: "
      + ", ".join(f"{lr}: {r['final_test_accuracy']:.3f}" for lr, r in results["bn"].items())
      + "."
  )
  return save_result(
      "batch_norm_sigmoid_lr", out,
      claim=("Batch Normalization allows much higher learning rates, makes saturating "
             "nonlinearities trainable, and reaches the same accuracy in far fewer steps."),
      measured=measured,
      claim_held=held,
      config={"data": "digits 8x8 flattened (1437 train / 360 test)",
              "model": f"MLP {'-'.join(map(str, hidden))} sigmoid, BN before every sigmoid",
              "optimizer": "SGD", "learning_rates": list(learning_rates), "steps": steps,
              "batch_size": BATCH_SIZE, "bn_momentum": MOMENTUM, "target": TARGET,
              "criterion": "BN max lr reaching target >= 3x plain's, and BN fewest steps <= "
                           "half of plain's"},
      metrics={"runs": results,
               "max_lr_reaching_target": {"plain": plain_lr, "bn": bn_lr},
               "fewest_steps_to_target": {"plain": plain_steps, "bn": bn_steps}},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
