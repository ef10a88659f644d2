"""Annealed gradient noise lets plain SGD train a 20-layer MLP from a poor initialization.

Tests the claim of Neelakantan et al. (arXiv:1511.06807, Section 4.1) at CPU scale: a fully
connected ReLU network with 20 hidden layers of 50 units, initialized with the "simple" scheme
(weights N(0, 0.1^2), zero biases, under which the forward signal shrinks by about half per
layer), does not train with SGD, while SGD on gradients with added noise N(0, η/(1+t)^0.55)
escapes the initialization.

Setup: the bundled digits data, minibatch 32, plain SGD, three seeds; the same learning-rate grid
{0.01, 0.03, 0.1} for every arm and η in {0 (no noise), 0.01, 0.3} (the paper's grid is
{0.01, 0.3, 1.0}), all 9 configurations vmapped in one `jaxlearn.train.fit` program. The noise
key is fixed, so the seeds vary the initialization and the minibatches. Each arm is scored at its
best learning rate (lowest mean final training loss). A run "trains" if its final training
accuracy exceeds 50% (chance is 10%). The claim is counted as held if the best noisy arm trains
in more seeds than no noise and reaches a lower final training loss.
Writes gradient_noise_deep_mlp.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import optim
from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.train import classifier, experiment_main, fit, grid, new_figure, save_result

DEPTH, WIDTH, INIT_STD = 20, 50, 0.1
GAMMA = 0.55
LEARNING_RATES = (0.01, 0.03, 0.1)
ETAS = (0.0, 0.01, 0.3)
TRAINS = 0.5  # final training accuracy above which a run counts as trained


def deep_mlp(num_inputs: int, num_classes: int):
  """`(init_params, apply_fn)` of a ReLU MLP with the paper's simple Gaussian initialization.

  The 19 hidden-to-hidden layers are stacked and applied with `lax.scan` (fast to compile).
  """

  def dense(key, n_in, n_out, *stack):
    w = INIT_STD * jax.random.normal(key, (*stack, n_in, n_out))
    return {"w": w, "b": jnp.zeros((*stack, n_out))}

  def init_params(key):
    k_in, k_hidden, k_out = jax.random.split(key, 3)
    return {
        "input": dense(k_in, num_inputs, WIDTH),
        "hidden": dense(k_hidden, WIDTH, WIDTH, DEPTH - 1),
        "output": dense(k_out, WIDTH, num_classes),
    }

  def apply_fn(params, x):
    x = jax.nn.relu(x @ params["input"]["w"] + params["input"]["b"])
    x, _ = jax.lax.scan(lambda h, layer: (jax.nn.relu(h @ layer["w"] + layer["b"]), None),
                        x, params["hidden"])
    return x @ params["output"]["w"] + params["output"]["b"]

  return init_params, apply_fn


def make_optimizer(learning_rate, eta):
  # eta = 0 gives exactly zero noise, so the baseline runs through the same program.
  return optax.chain(optim.add_gradient_noise(eta, GAMMA, key=0), optax.sgd(learning_rate))


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  init_params, apply_fn = deep_mlp(data.x_train.shape[1], data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (20, 10) if quick else (4000, 400)
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  lrs = LEARNING_RATES[1:2] if quick else LEARNING_RATES
  etas = ETAS[::2] if quick else ETAS

  start = time.perf_counter()
  result = fit(
      loss_fn, init_params, make_optimizer, data, steps=steps, eval_every=eval_every,
      batch_size=32, configs=grid(eta=etas, learning_rate=lrs), seeds=seeds, eval_fn=eval_fn,
      desc="20-layer MLP", progress=False,
  )
  wall_time = time.perf_counter() - start

  # Diverged runs (NaN loss) count as the worst possible loss, not as missing.
  final_loss = np.nan_to_num(result.final("train_loss"), nan=np.inf)
  final_acc = np.nan_to_num(result.final("train_accuracy"), nan=0.0)
  test_acc = np.nan_to_num(result.final("test_accuracy"), nan=0.0)
  arms = {}
  for eta in etas:
    rows = [i for i, c in enumerate(result.configs) if c["eta"] == eta]
    best = rows[int(np.argmin([final_loss[i].mean() for i in rows]))]
    arms[f"eta={eta:g}"] = {
        "eta": eta,
        "learning_rate": result.configs[best]["learning_rate"],
        "final_train_loss": float(final_loss[best].mean()),
        "final_train_accuracy_per_seed": final_acc[best],
        "test_accuracy": float(test_acc[best].mean()),
        "seeds_trained": int(np.sum(final_acc[best] > TRAINS)),
        "config_index": best,
    }
  baseline = arms["eta=0"]
  noisy = min((a for a in arms.values() if a["eta"] > 0), key=lambda a: a["final_train_loss"])
  held = (noisy["seeds_trained"] > baseline["seeds_trained"]
          and noisy["final_train_loss"] < baseline["final_train_loss"])

  fig, axes = new_figure(ncols=2)
  for name, arm in arms.items():
    history = result.history["train_loss"][arm["config_index"]]
    for s, curve in enumerate(history):
      axes[0, 0].plot(result.eval_steps, curve, color=f"C{list(arms).index(name)}",
                      label=f"{name}, lr {arm['learning_rate']:g}" if s == 0 else None)
  axes[0, 0].set(xlabel="step", ylabel="train loss (per seed)",
                 title="20x50 ReLU MLP, N(0, 0.1²) init")
  axes[0, 0].legend()
  names = list(arms)
  axes[0, 1].bar(names, [arms[n]["seeds_trained"] for n in names])
  axes[0, 1].set(ylabel=f"seeds with train accuracy > {TRAINS:.0%}", title=f"{len(seeds)} seeds")

  measured = "; ".join(
      f"{n} (best lr {a['learning_rate']:g}): final train loss {a['final_train_loss']:.3f}, "
      f"{a['seeds_trained']}/{len(seeds)} seeds trained, test accuracy {a['test_accuracy']:.3f}"
      for n, a in arms.items()
  ) + f". Best noisy arm beats no noise: {held}."
  return save_result(
      "gradient_noise_deep_mlp", out,
      claim=("Adding annealed Gaussian noise (variance η/(1+t)^0.55) to the gradient lets plain "
             "SGD train a 20-layer fully connected network from a poor initialization that SGD "
             "alone does not escape."),
      measured=measured,
      claim_held=held,
      config={"data": "digits", "depth": DEPTH, "width": WIDTH, "init_std": INIT_STD,
              "steps": steps, "batch_size": 32, "optimizer": "SGD", "gamma": GAMMA,
              "etas": list(etas), "learning_rates": list(lrs),
              "selection": "per eta, the lr with the lowest mean final train loss"},
      metrics={
          "arms": arms,
          "final_train_loss": {n: a["final_train_loss"] for n, a in arms.items()},
          "seeds_trained": {n: a["seeds_trained"] for n, a in arms.items()},
          "test_accuracy": {n: a["test_accuracy"] for n, a in arms.items()},
      },
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
