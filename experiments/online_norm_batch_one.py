"""Online Normalization at batch size 1 versus BatchNorm at batch 32, on a digits MLP.

Tests the headline claim of arXiv:1905.05894 at CPU scale: Online Normalization, which normalizes
a stream of samples and needs no batch, trains as accurately as Batch Normalization, including at
batch size 1.

Setup: scikit-learn digits flattened to 64 inputs (1150 train / 288 validation / 359 test); an MLP
64-128-128-10 with a normalization and a ReLU after each hidden Dense. Variants: Online Norm
(official defaults: alpha_fwd 0.999, alpha_bkw 0.99, activation clamping at 5), LayerNorm and no
normalization, all at batch size 1, and BatchNorm (flax, momentum 0.99) at batch size 32 as the
reference. Every variant trains for the same number of epochs with SGD (momentum 0.9) and
lr = base_lr * batch, base_lr over a 3-point grid, 2 seeds, vmapped; Online Norm's backward
statistics (u, v) get their increments after every step
(`jaxlearn.nn.apply_backward_stats_to_variables`).
The base_lr with the best mean validation accuracy is selected per variant and its TEST accuracy
(evaluation mode: the streamed / running statistics) reported. The claim is counted as held if
Online Norm at batch 1 is at most 1 point below BatchNorm at batch 32. Writes
online_norm_batch_one.json and .png.
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
from jaxlearn.experiments._shared import fast_compile_when_quick, validation_split
from jaxlearn.nn import apply_backward_stats_to_variables
from jaxlearn.nn import linen as jnn_linen
from jaxlearn.train import experiment_main, new_figure, save_result

HIDDEN = (128, 128)
BASE_LRS = (3e-4, 1e-3, 3e-3)
# name -> (normalization, batch size)
VARIANTS = {
    "online_norm_b1": ("online", 1),
    "layer_norm_b1": ("layer", 1),
    "none_b1": ("none", 1),
    "batch_norm_b32": ("batch", 32),
}
TOLERANCE = 0.01


class MLP(linen.Module):
  norm: str
  hidden: tuple[int, ...] = HIDDEN

  @linen.compact
  def __call__(self, x, train: bool):
    for width in self.hidden:
      x = linen.Dense(width)(x)
      if self.norm == "online":
        x = jnn_linen.OnlineNorm()(x, use_running_average=not train)
      elif self.norm == "batch":
        x = linen.BatchNorm(momentum=0.99)(x, use_running_average=not train)
      elif self.norm == "layer":
        x = linen.LayerNorm()(x)
      x = linen.relu(x)
    return linen.Dense(10)(x)


def _train(model, batch_size, tuning, test, *, epochs, base_lrs, seeds, num_evals):
  """Trains one variant for every (base_lr, seed), vmapped; returns accuracies and curves."""
  x_train, y_train = jnp.asarray(tuning.x_train), jnp.asarray(tuning.y_train)
  n = len(tuning.x_train)
  steps_per_epoch = n // batch_size
  steps = epochs * steps_per_epoch
  chunk = steps // num_evals
  orders = np.stack([
      np.concatenate([np.random.default_rng((s, e)).permutation(n)[: steps_per_epoch * batch_size]
                      for e in range(epochs)]).reshape(steps, batch_size)
      for s in seeds])  # (seeds, steps, batch)
  lrs = jnp.asarray([lr * batch_size for lr in base_lrs for _ in seeds], jnp.float32)
  run_orders = jnp.asarray(np.concatenate([orders] * len(base_lrs)))
  keys = jnp.stack([jax.random.key(s) for _ in base_lrs for s in seeds])

  def init(key, lr):
    variables = model.init(key, x_train[:1], train=False)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=0.9)
    return variables, tx.init(variables["params"])

  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0, momentum=0.9)

  def step(carry, idx):
    variables, opt_state = carry
    x, y = x_train[idx], y_train[idx]
    diff_names = [k for k in ("params", "backward_stats") if k in variables]

    def loss(diff):
      logits, updates = model.apply({**variables, **diff}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(
        {k: variables[k] for k in diff_names})
    variables, param_grads = apply_backward_stats_to_variables({**variables, **updates}, grads)
    param_updates, opt_state = tx.update(param_grads["params"], opt_state, variables["params"])
    variables = {**variables, "params": optax.apply_updates(variables["params"], param_updates)}
    return (variables, opt_state), value

  def accuracy(variables, x, y):
    return jnp.mean(jnp.argmax(model.apply(variables, x, train=False), -1) == y)

  @jax.jit
  def run_all(keys, lrs, orders):
    def one(key, lr, order):
      carry = init(key, lr)
      curve, losses = [], []
      for c in range(num_evals):
        carry, loss = jax.lax.scan(step, carry, order[c * chunk:(c + 1) * chunk])
        losses.append(loss.mean())
        curve.append(accuracy(carry[0], tuning.x_test, tuning.y_test))
      variables = carry[0]
      return (jnp.stack(curve), jnp.stack(losses), accuracy(variables, test.x_test, test.y_test))
    return jax.vmap(one)(keys, lrs, orders)

  curve, losses, test_acc = map(np.asarray, run_all(keys, lrs, run_orders))
  shape = (len(base_lrs), len(seeds))
  return {
      "val_curve": curve.reshape(*shape, num_evals),
      "train_loss": losses.reshape(*shape, num_evals),
      "test_accuracy": test_acc.reshape(shape),
      "steps": steps,
      "eval_epochs": (np.arange(1, num_evals + 1) * chunk) / steps_per_epoch,
  }


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(flat=True, seed=seed)
  tuning = validation_split(data, 0.2, seed)
  if quick:
    tuning = tuning._replace(x_train=tuning.x_train[:64], y_train=tuning.y_train[:64])
  epochs = 1 if quick else 3
  num_evals = 1 if quick else 6
  seeds = [seed] if quick else [seed, seed + 1]
  base_lrs = BASE_LRS[1:2] if quick else BASE_LRS
  variants = {k: v for k, v in VARIANTS.items() if not quick or k in ("online_norm_b1",
                                                                      "batch_norm_b32")}
  hidden = (32,) if quick else HIDDEN

  start = time.perf_counter()
  results = {}
  for name, (norm, batch_size) in variants.items():
    r = _train(MLP(norm, hidden), batch_size, tuning, data, epochs=epochs, base_lrs=base_lrs,
               seeds=seeds, num_evals=num_evals)
    val = r["val_curve"][..., -1].mean(axis=1)
    best = int(np.argmax(val))
    results[name] = {
        "batch_size": batch_size,
        "steps": r["steps"],
        "base_lr": base_lrs[best],
        "validation_accuracy_per_base_lr": val,
        "test_accuracy": float(r["test_accuracy"][best].mean()),
        "test_accuracy_std": float(r["test_accuracy"][best].std()),
        "test_accuracy_per_seed": r["test_accuracy"][best],
        "final_train_loss": float(r["train_loss"][best, :, -1].mean()),
        "_curve": (r["eval_epochs"], r["val_curve"][best].mean(axis=0)),
    }
  wall_time = time.perf_counter() - start

  reference = results["batch_norm_b32"]["test_accuracy"]
  gaps = {n: r["test_accuracy"] - reference for n, r in results.items() if n != "batch_norm_b32"}
  held = gaps["online_norm_b1"] >= -TOLERANCE

  fig, axes = new_figure(ncols=2)
  for name, r in results.items():
    epoch, acc = r.pop("_curve")
    axes[0, 0].plot(epoch, acc, marker=".", label=f"{name} (base lr {r['base_lr']:g})")
  axes[0, 0].set(xlabel="epoch", ylabel="validation accuracy", title="digits MLP, best base lr")
  axes[0, 0].legend(fontsize=7)
  names = list(results)
  axes[0, 1].bar(names, [results[n]["test_accuracy"] for n in names],
                 yerr=[results[n]["test_accuracy_std"] for n in names])
  axes[0, 1].axhline(reference - TOLERANCE, color="k", linestyle=":", label="BN b32 - 1 point")
  axes[0, 1].set(ylabel="test accuracy", title=f"{epochs} epochs for every variant",
                 ylim=(min(r["test_accuracy"] for r in results.values()) - 0.05, 1.0))
  axes[0, 1].tick_params(axis="x", labelrotation=20, labelsize=7)
  axes[0, 1].legend(fontsize=7)

  measured = (
      f"test accuracy after {epochs} epochs (mean of {len(seeds)} seeds, best validation base "
      f"lr): BatchNorm batch 32 {reference:.3f}; "
      + "; ".join(f"{n} {results[n]['test_accuracy']:.3f} ({gaps[n]:+.3f})" for n in gaps)
      + f". Online Norm at batch 1 within {TOLERANCE:.0%} of BatchNorm at batch 32: {held}."
  )
  return save_result(
      "online_norm_batch_one", out,
      claim=("Online Normalization does not use batches yet is as accurate as Batch "
             "Normalization; it works at batch size 1."),
      measured=measured,
      claim_held=held,
      config={"data": "digits flattened to 64 (1150 train / 288 validation / 359 test)",
              "model": "MLP 64-" + "-".join(map(str, hidden)) + "-10, norm + relu after each "
                       "hidden Dense",
              "epochs": epochs, "batch_sizes": {n: v[1] for n, v in variants.items()},
              "online_norm": "official defaults (alpha_fwd 0.999, alpha_bkw 0.99, eps 1e-5, "
                             "activation clamping at 5)",
              "batch_norm": "flax BatchNorm, momentum 0.99",
              "optimizer": "SGD momentum 0.9, lr = base_lr * batch",
              "base_lrs": list(base_lrs),
              "selection": "best mean validation accuracy; test accuracy reported",
              "tolerance": TOLERANCE},
      metrics={
          "test_accuracy": {n: r["test_accuracy"] for n, r in results.items()},
          "minus_batch_norm_b32": gaps,
          "runs": results,
      },
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
