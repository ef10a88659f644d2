"""Optimistic AMSGrad vs AMSGrad: training steps needed to reach a target loss.

Tests the claim of "An Optimistic Acceleration of AMSGrad for Nonconvex Optimization"
(arXiv:1903.01435) that predicting the next gradient speeds up AMSGrad's convergence. CPU
version on the bundled digits data, minibatch 64 as in the paper's code, three seeds, every
optimizer with the official hyperparameters (β1 = 0.9, β2 = 0.99, eps 1e-8; span 5 for the
optimistic one) at the same learning rates (1e-3, the official value, and 3e-3):

* multinomial logistic regression (a linear model);
* an MLP 64-64-64-10.

Two AMSGrad baselines, because conventions differ: the paper's (its code's baseline is PyTorch's
`Adam(amsgrad=True)`: the maximum is taken over the raw second moments, and the bias correction
divides it afterwards) and `optax.amsgrad` (the maximum is taken over bias-corrected second
moments, which keeps the large early values for longer and slows it down).

For each (model, learning rate) the target is set before looking at Optimistic AMSGrad: twice the
paper-convention AMSGrad's final full-train-set loss (mean over seeds). Steps to target = first
evaluation step (every 25 steps) at which a run's full-train-set loss is at or below it (the step
budget plus one evaluation if never). The claim counts as held if Optimistic AMSGrad needs fewer
steps on average than both baselines in every (model, learning rate) cell. NB: the gradient
predictor differs from the official code's (see `jaxlearn.optim.optimistic_amsgrad`).
Writes optimistic_amsgrad_steps_to_target.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, fit_each
from jaxlearn.optim import optimistic_amsgrad
from jaxlearn.train import classifier, experiment_main, fit, grid, mlp, new_figure, save_result

BETAS = dict(b1=0.9, b2=0.99, eps=1e-8)


def torch_amsgrad(learning_rate, b1=0.9, b2=0.99, eps=1e-8) -> optax.GradientTransformation:
  """PyTorch's Adam(amsgrad=True): lr (m / (1 - b1^t)) / (sqrt(max_s v_s / (1 - b2^t)) + eps)."""

  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return (jnp.zeros([], jnp.int32), zeros, zeros, zeros)

  def update_fn(updates, state, params=None):
    del params
    count, mu, nu, nu_max = state
    count = count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, updates)
    nu_max = jax.tree.map(jnp.maximum, nu_max, nu)
    c1, c2 = 1 - b1**count, 1 - b2**count
    step = jax.tree.map(
        lambda m, v: -learning_rate * (m / c1) / (jnp.sqrt(v / c2) + eps), mu, nu_max)
    return step, (count, mu, nu, nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


OPTIMIZERS = {
    "optimistic": lambda learning_rate: optimistic_amsgrad(learning_rate, **BETAS, span=5),
    "amsgrad": lambda learning_rate: torch_amsgrad(learning_rate, **BETAS),
    "optax_amsgrad": lambda learning_rate: optax.amsgrad(learning_rate, **BETAS),
}
BASELINES = ("amsgrad", "optax_amsgrad")


def _models(num_classes):
  linear_init = lambda key: {"w": jnp.zeros((64, num_classes)), "b": jnp.zeros(num_classes)}
  linear_apply = lambda params, x: x @ params["w"] + params["b"]
  return {"logistic": (linear_init, linear_apply), "mlp": mlp((64,), (64, 64), num_classes)}


def _steps_to(curves: np.ndarray, steps_axis: np.ndarray, target: float, budget: int):
  """Per run (rows of `curves`), the first eval step with loss <= target, else budget + 1 eval."""
  reached = curves <= target
  first = np.where(reached.any(axis=1), steps_axis[np.argmax(reached, axis=1)],
                   budget + (steps_axis[1] - steps_axis[0] if len(steps_axis) > 1 else budget))
  return first.astype(float)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  steps, eval_every = (20, 5) if quick else (1500, 25)
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  learning_rates = (1e-3,) if quick else (1e-3, 3e-3)

  start = time.perf_counter()
  table, plots = [], {}
  models = _models(data.num_classes)
  if quick:  # smoke run: one model, the three optimizers in one compiled program
    models = {"logistic": models["logistic"]}
  for model_name, (init_params, apply_fn) in models.items():
    loss_fn, eval_fn = classifier(apply_fn)
    common = dict(steps=steps, eval_every=eval_every, batch_size=64, seeds=seeds,
                  eval_fn=eval_fn)
    configs = grid(learning_rate=learning_rates)
    if quick:
      results = fit_each(list(OPTIMIZERS.values()), loss_fn, init_params, data, progress=False,
                         configs=[configs] * len(OPTIMIZERS), **common)
    else:
      results = [fit(loss_fn, init_params, make, data, configs=configs,
                     desc=f"{model_name}/{name}", **common) for name, make in OPTIMIZERS.items()]
    histories = {name: r.history["train_loss"] for name, r in zip(OPTIMIZERS, results)}
    steps_axis = results[0].eval_steps  # histories: (lrs, seeds, evals)
    for i, lr in enumerate(learning_rates):
      target = 2.0 * float(histories["amsgrad"][i, :, -1].mean())
      to_target = {n: _steps_to(h[i], steps_axis, target, steps) for n, h in histories.items()}
      row = {"model": model_name, "learning_rate": lr, "target_loss": target}
      for name in OPTIMIZERS:
        row[f"steps_{name}"] = float(to_target[name].mean())
        row[f"final_loss_{name}"] = float(histories[name][i, :, -1].mean())
      table.append(row)
      plots[f"{model_name}, lr {lr:g}"] = (
          steps_axis, {n: h[i].mean(axis=0) for n, h in histories.items()}, target)
  wall_time = time.perf_counter() - start

  fig, axes = new_figure(ncols=len(plots), width=4.0)
  for ax, (title, (steps_axis, curves, target)) in zip(axes[0], plots.items()):
    for name, curve in curves.items():
      ax.plot(steps_axis, curve, label=name)
    ax.axhline(target, color="gray", ls=":", label="target")
    ax.set(title=title, xlabel="step", yscale="log")
  axes[0, 0].set_ylabel("full train loss (mean of seeds)")
  axes[0, 0].legend()

  faster = [all(r["steps_optimistic"] < r[f"steps_{b}"] for b in BASELINES) for r in table]
  measured = "; ".join(
      f"{r['model']} lr {r['learning_rate']:g}: steps to loss {r['target_loss']:.3f} optimistic "
      f"{r['steps_optimistic']:.0f}, AMSGrad (paper) {r['steps_amsgrad']:.0f}, optax.amsgrad "
      f"{r['steps_optax_amsgrad']:.0f} (final loss {r['final_loss_optimistic']:.3f} / "
      f"{r['final_loss_amsgrad']:.3f} / {r['final_loss_optax_amsgrad']:.3f})" for r in table
  ) + f". Optimistic faster than both baselines in {sum(faster)}/{len(faster)} cells."
  return save_result(
      "optimistic_amsgrad_steps_to_target", out,
      claim="Optimistic AMSGrad reaches a given training loss in fewer steps than AMSGrad.",
      measured=measured,
      claim_held=all(faster),
      config={"steps": steps, "eval_every": eval_every, "batch_size": 64, **BETAS, "span": 5,
              "learning_rates": learning_rates, "models": ["logistic", "MLP 64-64-64-10"]},
      metrics={"table": table}, seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
