"""⊥Grad vs plain AdamW on modular addition: weight-norm growth and fast generalization.

"Grokking at the Edge of Numerical Stability" (arXiv:2501.04697) argues that after fitting the
training set, an unregularized model keeps lowering its loss by scaling its weights up (the naive
loss minimization direction), which delays generalization; ⊥Grad removes the component of every
gradient along its weights and is claimed to generalize fast without any regularization (the
paper: ⊥AdamW groks modular addition within ~300 epochs).

Setup (the paper's, at CPU scale): all pairs (a, b) mod p = 47, 40% for training, concatenated
one-hot inputs, a bias-free MLP [200, 200] with PyTorch's default initialization, full-batch AdamW
(lr 0.01, beta2 0.99, eps 1e-25, weight decay 0), float32, with and without
`jaxlearn.optim.orthogonalize_gradients` chained in front, 3 seeds vmapped by `fit`. We record the
global weight norm relative to its initial value and the test accuracy every 25 steps.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import modular_arithmetic
from jaxlearn.experiments._shared import fast_compile_when_quick, fit_each
from jaxlearn.optim import orthogonalize_gradients
from jaxlearn.train import experiment_main, fit, new_figure, save_result

NAME = "perpgrad_weight_norm"
HIDDEN = (200, 200)
VARIANTS = ("adamw", "perp_adamw")


def _init_mlp(key, sizes):
  """Bias-free weights, PyTorch's nn.Linear default U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [
      jax.random.uniform(k, (n_in, n_out), jnp.float32, -1.0, 1.0) / np.sqrt(n_in)
      for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])
  ]


def _apply_mlp(weights, tokens):
  """The MLP on the one-hot pair code: one_hot_pairs(x) @ W1 is a sum of two rows of W1."""
  p = weights[-1].shape[1]
  x = jax.nn.relu(weights[0][tokens[:, 0]] + weights[0][p + tokens[:, 1]])
  for w in weights[1:-1]:
    x = jax.nn.relu(x @ w)
  return x @ weights[-1]


def _make_optimizer(variant):
  adamw = lambda: optax.adamw(0.01, b1=0.9, b2=0.99, eps=1e-25, weight_decay=0.0)
  if variant == "perp_adamw":
    return lambda: optax.chain(orthogonalize_gradients(), adamw())
  return adamw


def _train(data, sizes, *, steps, eval_every, seeds, one_program):
  """Every variant's summary; with `one_program`, both variants as one compiled program."""
  loss = optax.losses.softmax_cross_entropy_with_integer_labels

  def loss_fn(weights, x, y):
    return jnp.mean(loss(_apply_mlp(weights, x), y))

  def eval_fn(weights, x, y):
    return {
        "accuracy": jnp.mean(jnp.argmax(_apply_mlp(weights, x), -1) == y),
        "weight_norm": optax.tree.norm(weights),
    }

  init = lambda key: _init_mlp(key, sizes)
  common = dict(steps=steps, batch_size=None, seeds=seeds, eval_every=eval_every,
                eval_fn=eval_fn, progress=False)
  if one_program:
    results = fit_each([_make_optimizer(v) for v in VARIANTS], loss_fn, init, data,
                       configs=[[{}]] * len(VARIANTS), **common)
  else:
    results = [fit(loss_fn, init, _make_optimizer(v), data, desc=v, **common) for v in VARIANTS]
  initial_norm = np.asarray([float(optax.tree.norm(_init_mlp(
      jax.random.split(jax.random.PRNGKey(s))[0], sizes))) for s in seeds])
  return {v: _summary(result, initial_norm) for v, result in zip(VARIANTS, results)}


def _summary(result, initial_norm):
  norm_ratio = result.history["train_weight_norm"][0] / initial_norm[:, None]  # (S, T)
  test = result.history["test_accuracy"][0]
  reached = [np.flatnonzero(run >= 0.9) for run in test]
  first = [int(result.eval_steps[r[0]]) if len(r) else None for r in reached]
  return {
      "weight_norm_ratio": norm_ratio.mean(0),
      "test_accuracy": test.mean(0),
      "train_accuracy": result.history["train_accuracy"][0].mean(0),
      "final_weight_norm_ratio": float(norm_ratio[:, -1].mean()),
      "final_test_accuracy": float(test[:, -1].mean()),
      "steps_to_90_test_per_seed": first,
  }


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  p = 11 if quick else 47
  steps, eval_every = (20, 10) if quick else (1000, 25)
  seeds = [seed, seed + 1] if quick else [seed, seed + 1, seed + 2]
  data = modular_arithmetic(p, operation="add", train_fraction=0.4, seed=seed)
  sizes = (2 * p, *HIDDEN, p)
  start = time.perf_counter()
  runs = _train(data, sizes, steps=steps, eval_every=eval_every, seeds=seeds, one_program=quick)
  wall = time.perf_counter() - start
  plain, perp = runs["adamw"], runs["perp_adamw"]

  # Criteria fixed before the first full run: every ⊥AdamW seed reaches 90% test accuracy within
  # 500 steps, its final weight norm grows less than plain AdamW's, and it ends above AdamW's
  # final test accuracy.
  fast = all(s is not None and s <= 500 for s in perp["steps_to_90_test_per_seed"])
  smaller_norm = perp["final_weight_norm_ratio"] < plain["final_weight_norm_ratio"]
  better = perp["final_test_accuracy"] > plain["final_test_accuracy"]
  claim_held = bool(fast and smaller_norm and better)
  measured = (
      f"p={p}, {steps} full-batch steps, {len(seeds)} seeds. AdamW: weight norm x"
      f"{plain['final_weight_norm_ratio']:.2f} of its initial value, final test accuracy "
      f"{plain['final_test_accuracy']:.3f}, steps to 90% test {plain['steps_to_90_test_per_seed']}."
      f" ⊥AdamW: weight norm x{perp['final_weight_norm_ratio']:.2f}, final test accuracy "
      f"{perp['final_test_accuracy']:.3f}, steps to 90% test {perp['steps_to_90_test_per_seed']}."
  )

  eval_steps = np.arange(1, steps // eval_every + 1) * eval_every
  fig, axes = new_figure(ncols=2)
  for variant, color in zip(VARIANTS, ("tab:red", "tab:blue")):
    axes[0, 0].plot(eval_steps, runs[variant]["weight_norm_ratio"], color=color, label=variant)
    axes[0, 1].plot(eval_steps, runs[variant]["test_accuracy"], color=color, label=variant)
    axes[0, 1].plot(eval_steps, runs[variant]["train_accuracy"], color=color, ls=":")
  axes[0, 0].set_title("||w|| / ||w_0||")
  axes[0, 1].set_title("test (solid) and train (dotted) accuracy")
  for ax in axes[0]:
    ax.set_xlabel("full-batch step")
    ax.legend(fontsize=8)

  return save_result(
      NAME, out,
      claim=("Without regularization, ⊥Grad (gradients orthogonalized to the weights) stops the "
             "weight-norm growth of plain AdamW and generalizes on modular addition within a few "
             "hundred steps."),
      measured=measured,
      claim_held=claim_held,
      config={"p": p, "train_fraction": 0.4, "hidden": list(HIDDEN), "bias": False,
              "optimizer": "adamw", "learning_rate": 0.01, "beta2": 0.99, "eps": 1e-25,
              "weight_decay": 0.0, "batch": "full", "steps": steps, "eval_every": eval_every},
      metrics={
          "eval_steps": eval_steps,
          "weight_norm_ratio": {v: runs[v]["weight_norm_ratio"] for v in VARIANTS},
          "test_accuracy": {v: runs[v]["test_accuracy"] for v in VARIANTS},
          "final_weight_norm_ratio": {v: runs[v]["final_weight_norm_ratio"] for v in VARIANTS},
          "final_test_accuracy": {v: runs[v]["final_test_accuracy"] for v in VARIANTS},
          "steps_to_90_test": {v: runs[v]["steps_to_90_test_per_seed"] for v in VARIANTS},
      },
      seeds=seeds, wall_time_s=wall, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
