"""AdaGO vs Muon vs Adam on MLP function regression (1-D, 2-D) and digits, over a lr grid.

Tests the AdaGO paper's claim (arXiv:2509.02981) at CPU scale: on function regression and image
classification AdaGO outperforms Muon and Adam.

* Regression: a tanh MLP (in-64-64-1) fits f(x) = sin(2 pi x) + 0.5 sin(6 pi x) on [-1, 1]
  (256 training points) and f(x, y) = sin(pi x) cos(2 pi y) + 0.3 x y on [-1, 1]^2 (512 points),
  mean squared error, minibatches of 64 drawn with replacement, 2000 steps, 3 seeds (each its
  own initialization, training points and minibatches); measured: the test MSE on a fixed grid.
* Digits: an MLP 64-64-64-10 on the bundled digits data, minibatch 64, 1000 steps, 3 seeds;
  measured: test accuracy and final train loss.

Each optimizer runs at its customary learning rate times {0.3, 1, 3, 10} (vmapped): AdaGO 0.05
(pytorch-optimizer's default; the paper's are unknown), Muon 0.02 (optax.contrib.muon, Keller
Jordan's default), Adam 1e-3; constant learning rates, no weight decay. Biases go to AdamW
(AdaGO's fallback) or Adam (optax's Muon), at the same learning rate. The claim counts as held if
AdaGO, at its best learning rate, has the lowest test MSE on both functions and the highest
digits test accuracy. The loss-vs-learning-rate curves are in the figure and the JSON (the
spread across the grid, in decades, measures robustness to the learning rate).
Writes adago_function_regression.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, one_of
from jaxlearn.optim import adago
from jaxlearn.train import classifier, experiment_main, fit, grid, mlp, new_figure, save_result
from jaxlearn._compile import fast_compile_options

MULTIPLIERS = (0.3, 1.0, 3.0, 10.0)
OPTIMIZERS = {  # name -> (make(learning_rate), customary learning rate)
    "adago": (lambda learning_rate: adago(learning_rate), 0.05),
    "muon": (lambda learning_rate: optax.contrib.muon(learning_rate), 0.02),
    "adam": (lambda learning_rate: optax.adam(learning_rate), 1e-3),
}
STEPS, DIGITS_STEPS, BATCH = 2000, 1000, 64


def _target_1d(x):
  return jnp.sin(2 * jnp.pi * x[:, 0]) + 0.5 * jnp.sin(6 * jnp.pi * x[:, 0])


def _target_2d(x):
  return jnp.sin(jnp.pi * x[:, 0]) * jnp.cos(2 * jnp.pi * x[:, 1]) + 0.3 * x[:, 0] * x[:, 1]


FUNCTIONS = {  # name -> (target, input dimension, training points, test grid per axis)
    "sine_1d": (_target_1d, 1, 256, 1000),
    "product_2d": (_target_2d, 2, 512, 40),
}


def _test_inputs(dim, per_axis):
  axis = np.linspace(-1.0, 1.0, per_axis)
  return np.stack(np.meshgrid(*[axis] * dim, indexing="ij"), -1).reshape(-1, dim)


def regression_runs(makers, learning_rates, seeds, function, steps, quick=False):
  """Test MSE (optimizers, lrs, seeds) and minibatch-loss curves (..., steps): one program.

  `makers[k](learning_rate)` at `learning_rates[k]`, vmapped over the learning rates and seeds;
  several makers share the program through `one_of` (every update is computed, the selected one
  kept: cheaper to compile, dearer to run; for the smoke run).
  """
  target, dim, n_train, per_axis = FUNCTIONS[function]
  init_params, apply_fn = mlp((dim,), (64, 64), 1, activation=nn.tanh)
  x_test = jnp.asarray(_test_inputs(dim, per_axis), jnp.float32)
  y_test = target(x_test)
  if len(makers) == 1:
    choose = lambda which, lr: makers[0](lr)
  else:
    chosen = one_of(makers)
    choose = lambda which, lr: chosen(which, learning_rate=lr)

  def mse(params, x, y):
    return jnp.mean((apply_fn(params, x)[:, 0] - y) ** 2)

  def run(which, lr, seed):
    init_key, data_key, batch_key = jax.random.split(jax.random.key(seed), 3)
    x_train = jax.random.uniform(data_key, (n_train, dim), minval=-1.0, maxval=1.0)
    y_train = target(x_train)
    params = init_params(init_key)
    opt = choose(which, lr)

    def step(carry, key):
      params, state = carry
      batch = jax.random.randint(key, (BATCH,), 0, n_train)
      loss, grads = jax.value_and_grad(mse)(params, x_train[batch], y_train[batch])
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    keys = jax.random.split(batch_key, steps)
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), keys)
    return mse(params, x_test, y_test), losses

  per_seed = jax.vmap(run, in_axes=(None, None, 0))
  swept = jax.vmap(jax.vmap(per_seed, in_axes=(None, 0, None)), in_axes=(0, 0, None))
  test, losses = jax.jit(swept, compiler_options=fast_compile_options(quick))(
      jnp.arange(len(makers)),
                                jnp.asarray(learning_rates, jnp.float32),
                                jnp.asarray(seeds, jnp.uint32))
  return np.asarray(test, np.float64), np.asarray(losses, np.float64)


def _geomean(x, axis):
  return 10.0 ** np.mean(np.log10(np.maximum(x, 1e-30)), axis=axis)


def _best(values, lower_is_better=True):
  """Index of the best entry, NaN and inf counted as worst."""
  values = np.where(np.isfinite(values), values, np.inf if lower_is_better else -np.inf)
  return int(np.argmin(values) if lower_is_better else np.argmax(values))


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  multipliers = MULTIPLIERS[1:2] if quick else MULTIPLIERS
  functions = ["sine_1d"] if quick else list(FUNCTIONS)
  steps = 20 if quick else STEPS
  start = time.perf_counter()

  regression, curves = {}, {}
  for function in functions:
    regression[function], curves[function] = {}, {}
    names = list(OPTIMIZERS)
    table = [[OPTIMIZERS[n][1] * m for m in multipliers] for n in names]
    makers = [OPTIMIZERS[n][0] for n in names]
    if quick:  # smoke run: the three optimizers in one program
      runs = [regression_runs(makers, table, seeds, function, steps, quick=True)]
    else:
      runs = [regression_runs([make], [lrs], seeds, function, steps)
              for make, lrs in zip(makers, table)]
    test = np.concatenate([t for t, _ in runs])
    losses = np.concatenate([c for _, c in runs])
    for k, (name, lrs) in enumerate(zip(names, table)):
      per_lr = _geomean(test[k], axis=1)  # over seeds
      best = _best(per_lr)
      spread = np.log10(np.max(per_lr) / np.min(per_lr)) if np.all(np.isfinite(per_lr)) else np.inf
      regression[function][name] = {
          "learning_rate": lrs[best], "test_mse": float(per_lr[best]),
          "test_mse_per_lr": per_lr, "learning_rates": lrs,
          "spread_over_grid_decades": float(spread)}
      curves[function][name] = losses[k, best].mean(axis=0)

  digits = {}
  if not quick:  # compiling three classifier programs takes longer than the smoke run's 5 s
    data = load_digits(seed=seed)
    init_params, apply_fn = mlp((64,), (64, 64), data.num_classes)
    loss_fn, eval_fn = classifier(apply_fn)
    for name, (make, base) in OPTIMIZERS.items():
      lrs = [base * m for m in multipliers]
      result = fit(loss_fn, init_params, lambda learning_rate, make=make: make(learning_rate),
                   data, steps=DIGITS_STEPS, eval_every=100, batch_size=BATCH, seeds=seeds,
                   eval_fn=eval_fn, configs=grid(learning_rate=lrs), desc=name)
      accuracy = result.final("test_accuracy").mean(axis=1)
      train_loss = result.final("train_loss").mean(axis=1)
      best = _best(accuracy, lower_is_better=False)
      digits[name] = {"learning_rate": lrs[best], "test_accuracy": float(accuracy[best]),
                      "final_train_loss": float(train_loss[best]),
                      "test_accuracy_per_lr": accuracy, "final_train_loss_per_lr": train_loss,
                      "learning_rates": lrs}
  wall_time = time.perf_counter() - start

  fig, axes = new_figure(ncols=len(functions) + 1 + bool(digits))
  for name in OPTIMIZERS:
    for i, function in enumerate(functions):
      axes[0, i].plot(multipliers, regression[function][name]["test_mse_per_lr"], "o-",
                      label=name)
    axes[0, len(functions)].plot(curves[functions[0]][name], label=name)
    if digits:
      axes[0, -1].plot(multipliers, digits[name]["test_accuracy_per_lr"], "o-", label=name)
  for i, function in enumerate(functions):
    axes[0, i].set(xscale="log", yscale="log", xlabel="learning rate / customary",
                   ylabel="test MSE", title=function)
  axes[0, len(functions)].set(yscale="log", xlabel="step", ylabel="minibatch MSE",
                              title=f"{functions[0]}, best learning rates")
  if digits:
    axes[0, -1].set(xscale="log", xlabel="learning rate / customary", ylabel="test accuracy",
                    title="digits MLP")
  for ax in axes[0]:
    ax.legend(fontsize=7)

  mse = lambda f, n: regression[f][n]["test_mse"]
  wins = {f: all(mse(f, "adago") < mse(f, o) for o in ("muon", "adam")) for f in functions}
  digits_win = (not digits) or all(
      digits["adago"]["test_accuracy"] > digits[o]["test_accuracy"] for o in ("muon", "adam"))
  measured = "; ".join(
      f"{f}: test MSE at the best lr " + ", ".join(
          f"{n} {mse(f, n):.2e} (x{regression[f][n]['learning_rate'] / OPTIMIZERS[n][1]:g}, "
          f"spread {regression[f][n]['spread_over_grid_decades']:.1f} decades)"
          for n in OPTIMIZERS)
      for f in functions)
  if digits:
    measured += "; digits test accuracy " + ", ".join(
        f"{n} {digits[n]['test_accuracy']:.3f} (x{digits[n]['learning_rate'] / OPTIMIZERS[n][1]:g})"
        for n in OPTIMIZERS)
  measured += (". AdaGO best on " + ", ".join(f"{f}: {w}" for f, w in wins.items())
               + (f", digits: {digits_win}" if digits else "") + ".")
  return save_result(
      "adago_function_regression", out,
      claim=("AdaGO outperforms Muon and Adam on function regression and image classification "
             "(CIFAR-10 in the paper)."),
      measured=measured,
      claim_held=all(wins.values()) and digits_win,
      config={"functions": functions, "mlp": "tanh in-64-64-1", "steps": steps,
              "batch_size": BATCH, "multipliers": list(multipliers),
              "customary_learning_rates": {n: b for n, (_, b) in OPTIMIZERS.items()},
              "digits": "MLP 64-64-64-10, 1000 steps" if digits else None},
      metrics={"regression": regression, "digits": digits,
               "adago_best": {**wins, **({"digits": digits_win} if digits else {})}},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
