"""Ghost Batch Normalization and the large-batch generalization gap on MNIST-1D.

Tests the claim of arXiv:1705.08741 at CPU scale: the test-accuracy gap of large-batch training
comes from making fewer updates; scaling the learning rate by sqrt(B / b), normalizing ghost
batches of b examples (GBN) and training for as many updates as the small batch did (regime
adaptation) closes it.

Setup: MNIST-1D (4000 train / 1000 test, 40 features), an MLP 40-128-128-10 with a
normalization (flax BatchNorm = GBN with the ghost batch the whole batch, or GBN) and a ReLU
after each hidden layer. The official code's optimizer for every variant: SGD, momentum 0.9,
weight decay 1e-4 (added to the gradient), gradient global norm clipped at 5; base learning rate
0.1 (the official default, not tuned). Running statistics with flax momentum 0.9 (PyTorch's 0.1).
Variants, 3 seeds each:
  * small: B = 64, lr 0.1, E epochs (the baseline);
  * large: B = 1024, lr 0.1, E epochs (16x fewer updates);
  * large_sqrt_lr_gbn: B = 1024, GBN(64), lr 0.1 * sqrt(16) = 0.4, E epochs;
  * large_sqrt_lr_regime: B = 1024, plain BN, lr 0.4, 16 E epochs (as many updates as small);
  * large_sqrt_lr_gbn_regime: B = 1024, GBN(64), lr 0.4, 16 E epochs (the full recipe).
Final test accuracy (mean over seeds) is reported. The claim is counted as held if the full recipe
ends within 1 point of the small-batch baseline while plain large-batch training does not.
Writes ghost_batch_norm_large_batch.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import flax.linen as linen
import jax.numpy as jnp
import optax

from jaxlearn.data import load_mnist1d
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.nn import adapt_regime, sqrt_batch_lr_scaling
from jaxlearn.nn import linen as jnn_linen
from jaxlearn.train import experiment_main, fit, new_figure, save_result, stateful_classifier

SMALL, LARGE, GHOST = 64, 1024, 64
BASE_LR = 0.1
WIDTH = 128
MOMENTUM_BN = 0.9
TOLERANCE = 0.01


class MLP(linen.Module):
  """Dense-norm-ReLU twice, then a dense read-out; the norm is GBN (None: plain BatchNorm)."""

  ghost_batch_size: int | None
  width: int = WIDTH

  @linen.compact
  def __call__(self, x, train: bool):
    for _ in range(2):
      x = linen.Dense(self.width)(x)
      x = jnn_linen.GhostBatchNorm(ghost_batch_size=self.ghost_batch_size,
                                   momentum=MOMENTUM_BN)(x, use_running_average=not train)
      x = linen.relu(x)
    return linen.Dense(10)(x)


def _optimizer(learning_rate):
  return optax.chain(optax.clip_by_global_norm(5.0), optax.add_decayed_weights(1e-4),
                     optax.sgd(learning_rate, momentum=0.9))


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_mnist1d(seed=seed)
  if quick:  # smoke run: a slice of the data, one epoch
    data = data._replace(x_train=data.x_train[:LARGE], y_train=data.y_train[:LARGE],
                         x_test=data.x_test[:256], y_test=data.y_test[:256])
  n_train = len(data.x_train)
  epochs = 1 if quick else 20
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  large_lr = sqrt_batch_lr_scaling(BASE_LR, LARGE, GHOST)
  regime_epochs, _ = adapt_regime(epochs, batch_size=LARGE, base_batch_size=SMALL)
  # name -> (batch size, ghost batch size, learning rate, epochs)
  variants = {
      "small": (SMALL, None, BASE_LR, epochs),
      "large": (LARGE, None, BASE_LR, epochs),
      "large_sqrt_lr_gbn": (LARGE, GHOST, large_lr, epochs),
      "large_sqrt_lr_regime": (LARGE, None, large_lr, regime_epochs),
      "large_sqrt_lr_gbn_regime": (LARGE, GHOST, large_lr, regime_epochs),
  }
  if quick:
    variants = {k: variants[k] for k in ("small", "large_sqrt_lr_gbn")}

  start = time.perf_counter()
  results, curves = {}, {}
  for name, (batch_size, ghost, lr, num_epochs) in variants.items():
    init, loss_fn, eval_fn = stateful_classifier(MLP(ghost), jnp.zeros((SMALL, data.x_train.shape[1])))
    steps = max(1, num_epochs * n_train // batch_size)
    num_evals = 1 if quick else 5
    eval_every = max(1, steps // num_evals)
    result = fit(loss_fn, init, lambda lr=lr: _optimizer(lr), data, steps=eval_every * num_evals,
                 eval_every=eval_every, batch_size=batch_size, seeds=seeds, eval_fn=eval_fn,
                 has_state=True, progress=False, desc=name)
    test_acc = result.final("test_accuracy")[0]
    results[name] = {
        "batch_size": batch_size, "ghost_batch_size": ghost, "learning_rate": lr,
        "epochs": num_epochs, "updates": eval_every * num_evals,
        "test_accuracy": float(test_acc.mean()), "test_accuracy_std": float(test_acc.std()),
        "test_accuracy_per_seed": test_acc,
        "final_train_accuracy": float(result.final("train_accuracy")[0].mean()),
        "final_train_loss": float(result.final("train_loss")[0].mean()),
    }
    curves[name] = (result.eval_steps * batch_size / n_train,
                    result.history["test_accuracy"][0].mean(axis=0))
  wall_time = time.perf_counter() - start

  reference = results["small"]["test_accuracy"]
  gaps = {name: r["test_accuracy"] - reference for name, r in results.items() if name != "small"}
  held = None
  if not quick:
    held = bool(gaps["large_sqrt_lr_gbn_regime"] >= -TOLERANCE and gaps["large"] < -TOLERANCE)

  fig, axes = new_figure(ncols=2)
  for name, (epoch, acc) in curves.items():
    axes[0, 0].plot(epoch, acc, marker=".", label=name)
  axes[0, 0].set(xlabel="epoch", ylabel="test accuracy", xscale="log",
                 title=f"MNIST-1D MLP, B={SMALL} vs B={LARGE}")
  axes[0, 0].legend(fontsize=7)
  names = list(results)
  axes[0, 1].bar(names, [results[n]["test_accuracy"] for n in names],
                 yerr=[results[n]["test_accuracy_std"] for n in names])
  axes[0, 1].axhline(reference - TOLERANCE, color="k", linestyle=":", label="small - 1 point")
  axes[0, 1].set(ylabel="final test accuracy",
                 ylim=(min(r["test_accuracy"] for r in results.values()) - 0.05, 1.0))
  axes[0, 1].tick_params(axis="x", labelrotation=30, labelsize=7)
  axes[0, 1].legend(fontsize=7)

  measured = (
      f"final test accuracy (mean of {len(seeds)} seeds): B={SMALL} {reference:.3f}; "
      + "; ".join(f"{n} {results[n]['test_accuracy']:.3f} ({gaps[n]:+.3f}, "
                  f"{results[n]['updates']} updates)" for n in gaps)
      + (f". Full recipe within {TOLERANCE:.0%} of B={SMALL} and plain large batch not: {held}."
         if held is not None else ".")
  )
  return save_result(
      "ghost_batch_norm_large_batch", out,
      claim=("The large-batch generalization gap closes with sqrt(B/b) learning-rate scaling, "
             "Ghost Batch Normalization and as many updates as small-batch training."),
      measured=measured, claim_held=held,
      config={"data": "MNIST-1D (4000 train / 1000 test)",
              "model": f"MLP 40-{WIDTH}-{WIDTH}-10, (G)BN + ReLU after each hidden layer",
              "optimizer": "SGD momentum 0.9, weight decay 1e-4, clip global norm 5",
              "base_lr": BASE_LR, "small_batch": SMALL, "large_batch": LARGE,
              "ghost_batch": GHOST, "epochs": epochs, "bn_momentum_flax": MOMENTUM_BN,
              "variants": {n: dict(zip(("batch", "ghost", "lr", "epochs"), v))
                           for n, v in variants.items()},
              "tolerance": TOLERANCE},
      metrics={"test_accuracy": {n: r["test_accuracy"] for n, r in results.items()},
               "minus_small": gaps, "runs": results},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
