"""Weight normalization vs plain and batch-normalized MLPs on digits, with SGD; and batch size 1.

Tests the headline claim of arXiv:1602.07868 at CPU scale: weight normalization speeds up the
convergence of stochastic gradient descent and gives much of batch normalization's speed-up,
without a dependence between the examples of a minibatch (so it also works at batch size 1).

Setup: scikit-learn digits as 64-feature vectors (1438 train / 359 test), an MLP 64-100-100-10
with ReLU. Variants: `plain` (flax Dense, LeCun-normal init), `wn` (every Dense weight-normalized,
v ~ N(0, 0.05), g = 1, b = 0), `wn_init` (the same plus the official data-dependent
initialization from a batch of 256 training images, init_scale 1) and `bn` (plain Dense + flax
BatchNorm before each ReLU, momentum 0.9). SGD with momentum 0.9 at batch 32, learning rates
{0.003, 0.01, 0.03, 0.1, 0.3} vmapped, 3 seeds, 1000 steps (about 22 epochs); the full-training-set
cross-entropy is recorded every 25 steps. Steps to target: the first recorded step at which it
is <= 0.05; per variant the learning rate with the fewest steps (median over seeds) is reported.
The claim is counted as held if both WN variants' best steps are below plain's and WN+init
recovers at least half of BN's reduction: (plain - wn_init) >= 0.5 * (plain - bn). A first run
with learning rates {0.01, ..., 0.3} found WN+init's best at the grid's low edge (200 steps, 43%
of BN's reduction: not held); the grid was then extended down to 0.003. Taking the best over a
larger grid can only lower a variant's steps, so a WN+init optimum at the low edge can only
move the verdict towards "held"; the record names any variant whose best is at the edge.

Batch size 1 (context, not part of the verdict): plain, wn_init and bn trained with SGD at batch 1
for 1000 steps (0.7 epoch), learning rates {0.001, 0.003, 0.01}, 3 seeds; test accuracy
(BN in evaluation mode with its running statistics) at the best learning rate. With a single
example BN's batch statistics are the example itself: every unit is normalized to 0.

Writes weight_norm_digits.json and .png.
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
from jaxlearn.train import experiment_main, fit, grid, new_figure, save_result

HIDDEN = (100, 100)
VARIANTS = ("plain", "wn", "wn_init", "bn")
LRS = (0.003, 0.01, 0.03, 0.1, 0.3)
BATCH1_VARIANTS = ("plain", "wn_init", "bn")
BATCH1_LRS = (0.001, 0.003, 0.01)
TARGET_LOSS = 0.05
INIT_BATCH = 256


class MLP(linen.Module):
  """Dense (plain, WN) -> [BN] -> ReLU for each hidden layer, then a Dense read-out."""

  variant: str
  hidden: tuple[int, ...] = HIDDEN

  @linen.compact
  def __call__(self, x, train: bool):
    dense = linen.Dense if self.variant in ("plain", "bn") else jnn_linen.WNDense
    for width in self.hidden:
      x = dense(width)(x)
      if self.variant == "bn":
        x = linen.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = linen.relu(x)
    return dense(10)(x)


def _model_fns(model: MLP, x_init: jax.Array):
  def init(key):
    variables = model.init(key, x_init[:1], train=False)
    if model.variant == "wn_init":  # the official data-dependent initialization
      _, variables = jnn_linen.wn_init_from_batch(model, variables, x_init, train=False)
    return variables["params"], variables.get("batch_stats", {})

  def loss_fn(params, stats, x, y):
    logits, updates = model.apply(
        {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
    loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, updates.get("batch_stats", stats)

  def eval_fn(params, stats, x, y):
    logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
    return {
        "xent": optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
    }

  return init, loss_fn, eval_fn


def _train(variant, data, *, batch_size, steps, eval_every, lrs, seeds, x_init):
  init, loss_fn, eval_fn = _model_fns(MLP(variant), x_init)
  return fit(
      loss_fn, init, lambda lr: optax.sgd(lr, momentum=0.9), data, steps=steps,
      eval_every=eval_every, batch_size=batch_size, configs=grid(lr=lrs), seeds=seeds,
      eval_fn=eval_fn, has_state=True, progress=False, desc=variant,
  )


def _steps_to_target(result) -> np.ndarray:
  """(K, S): the first recorded step with full-train cross-entropy <= target (inf if never)."""
  reached = result.history["train_xent"] <= TARGET_LOSS
  first = np.where(reached.any(-1), reached.argmax(-1), -1)
  return np.where(first >= 0, np.asarray(result.eval_steps)[first], np.inf)


def _json_steps(steps):
  """Steps for the JSON record: None where the target was never reached."""
  if np.ndim(steps) == 0:
    return float(steps) if np.isfinite(steps) else None
  return [_json_steps(s) for s in steps]


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(flat=True, seed=seed)
  x_init = jnp.asarray(data.x_train[:INIT_BATCH])
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  steps, eval_every = (50, 25) if quick else (1000, 25)
  lrs = LRS[3:4] if quick else LRS
  b1_steps, b1_lrs = (20, BATCH1_LRS[1:2]) if quick else (1000, BATCH1_LRS)
  variants = ("wn_init",) if quick else VARIANTS
  b1_variants = () if quick else BATCH1_VARIANTS  # smoke run: batch 32 only

  start = time.perf_counter()
  results, curves = {}, {}
  for variant in variants:
    result = _train(variant, data, batch_size=32, steps=steps, eval_every=eval_every, lrs=lrs,
                    seeds=seeds, x_init=x_init)
    to_target = _steps_to_target(result)  # (K, S)
    median = np.median(to_target, axis=1)
    best = int(np.argmin(median))
    results[variant] = {
        "best_lr": lrs[best],
        "steps_to_target": _json_steps(median[best]),
        "steps_to_target_per_seed": _json_steps(to_target[best]),
        "steps_to_target_per_lr": _json_steps(median),
        "initial_train_xent": float(result.history["train_xent"][best, :, 0].mean()),
        "final_train_xent": float(result.final("train_xent")[best].mean()),
        "final_test_accuracy": float(result.final("test_accuracy")[best].mean()),
    }
    curves[variant] = (result.eval_steps, result.history["train_xent"][best].mean(0))

  batch1 = {}
  for variant in b1_variants:
    result = _train(variant, data, batch_size=1, steps=b1_steps, eval_every=b1_steps,
                    lrs=b1_lrs, seeds=seeds, x_init=x_init)
    acc = result.final("test_accuracy")  # (K, S)
    best = int(np.argmax(acc.mean(1)))
    batch1[variant] = {"best_lr": b1_lrs[best], "test_accuracy": float(acc[best].mean()),
                       "test_accuracy_per_lr": acc.mean(1)}
  wall_time = time.perf_counter() - start

  held = None
  if not quick:
    plain, wn, wn_init, bn = (
        np.inf if results[v]["steps_to_target"] is None else results[v]["steps_to_target"]
        for v in VARIANTS)
    held = bool(wn < plain and wn_init < plain and (plain - wn_init) >= 0.5 * (plain - bn))

  fig, axes = new_figure(ncols=2)
  for variant, (steps_axis, loss) in curves.items():
    axes[0, 0].semilogy(steps_axis, loss, label=f"{variant} (lr {results[variant]['best_lr']:g})")
  axes[0, 0].axhline(TARGET_LOSS, color="k", linestyle=":", label="target")
  axes[0, 0].set(xlabel="SGD step (batch 32)", ylabel="full-train cross-entropy",
                 title="digits MLP, best lr per variant")
  axes[0, 0].legend(fontsize=7)
  names = list(batch1)
  axes[0, 1].bar(names, [batch1[n]["test_accuracy"] for n in names])
  axes[0, 1].set(ylabel="test accuracy", title=f"batch size 1, {b1_steps} steps", ylim=(0, 1))

  fmt = lambda s: "never" if s is None else f"{s:.0f}"
  measured = (
      f"steps to full-train cross-entropy <= {TARGET_LOSS} at batch 32 (median of {len(seeds)} "
      "seeds, best lr): "
      + "; ".join(f"{v} {fmt(r['steps_to_target'])} (lr {r['best_lr']:g})"
                  for v, r in results.items())
      + ". Batch size 1, test accuracy after {} steps: ".format(b1_steps)
      + "; ".join(f"{v} {r['test_accuracy']:.3f}" for v, r in batch1.items())
      + (f". WN faster than plain and WN+init recovering >= half of BN's reduction: {held}."
         if held is not None else " (smoke run: no verdict).")
  )
  at_edge = [v for v, r in results.items() if r["best_lr"] == min(lrs) and len(lrs) > 1]
  at_edge += [f"{v} (batch 1)" for v, r in batch1.items()
              if r["best_lr"] == min(b1_lrs) and len(b1_lrs) > 1]
  if at_edge:  # a smaller lr might do better still (for the verdict: only in WN's favour)
    measured += f" Best lr at the low edge of the grid for: {', '.join(at_edge)}."
  return save_result(
      "weight_norm_digits", out,
      claim=("Weight normalization speeds up SGD convergence and provides much of batch "
             "normalization's speed-up without dependencies between the examples of a "
             "minibatch (usable at batch size 1)."),
      measured=measured,
      claim_held=held,
      config={"data": "digits 64 features (1438 train / 359 test)",
              "model": f"MLP 64-{'-'.join(map(str, HIDDEN))}-10, ReLU",
              "optimizer": "SGD momentum 0.9", "batch_size": 32, "steps": steps,
              "learning_rates": list(lrs), "target_train_xent": TARGET_LOSS,
              "eval_every": eval_every, "wn_init": f"official data-dependent init, "
              f"{INIT_BATCH} training images, init_scale 1", "bn_momentum": 0.9,
              "batch1_steps": b1_steps, "batch1_learning_rates": list(b1_lrs)},
      metrics={"steps_to_target": {v: r["steps_to_target"] for v, r in results.items()},
               "runs": results, "batch_size_1": batch1},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
