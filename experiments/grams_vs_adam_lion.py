"""Grams vs Adam vs Lion, each at the best learning rate of its own grid.

Tests the Grams paper's headline claim (arXiv:2412.17107) at CPU scale: Grams converges faster
than Adam and Lion and generalizes better. Two problems:

* an MLP (64-64-64-10) on the bundled digits data, minibatch 64, three seeds, every optimizer
  vmapped over a 5-point learning-rate grid with `jaxlearn.train.fit`; the best learning rate is
  chosen by the final full-train-set loss (mean over seeds), and its test accuracy is reported;
* the 2-D Rosenbrock function from three jittered starts near (-1.5, 2), full gradients.

The claim is counted as held only if Grams reaches the lowest final training loss on digits, the
lowest final Rosenbrock value, and the highest digits test accuracy of the three optimizers.
Writes grams_vs_adam_lion.json and .png.
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
from jaxlearn.optim import grams
from jaxlearn.train import classifier, experiment_main, fit, grid, mlp, new_figure, save_result

# Grams and Adam share a grid, so they can also be compared rate by rate (the training loss of
# both keeps falling up to the largest rate; `metrics.digits_grams_vs_adam_per_lr` records it).
OPTIMIZERS = {
    "grams": (grams, (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    "adam": (optax.adam, (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    # Lion's sign update has unit size per coordinate: its usual learning rates are 3-10x smaller.
    "lion": (optax.lion, (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)),
}
ROSENBROCK_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def rosenbrock(xy: jax.Array) -> jax.Array:
  return (1.0 - xy[0]) ** 2 + 100.0 * (xy[1] - xy[0] ** 2) ** 2


def _rosenbrock_runs(make, learning_rates, starts, steps):
  """Final values and value curves, shape (lrs, starts[, steps]), one compiled program."""

  def run(lr, start):
    opt = make(lr)

    def step(carry, _):
      xy, state = carry
      value, grad = jax.value_and_grad(rosenbrock)(xy)
      updates, state = opt.update(grad, state, xy)
      return (optax.apply_updates(xy, updates), state), value

    (xy, _), values = jax.lax.scan(step, (start, opt.init(start)), None, length=steps)
    return rosenbrock(xy), values

  per_start = jax.vmap(run, in_axes=(None, 0))
  finals, curves = jax.jit(jax.vmap(per_start, in_axes=(0, None)))(
      jnp.asarray(learning_rates, jnp.float32), starts
  )
  return np.asarray(finals), np.asarray(curves)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  init_params, apply_fn = mlp((64,), (64, 64), data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (20, 10) if quick else (1500, 100)
  rosen_steps = 50 if quick else 3000
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  rng = np.random.default_rng(seed)
  starts = jnp.asarray(np.array([-1.5, 2.0]) + 0.1 * rng.normal(size=(len(seeds), 2)),
                       jnp.float32)

  start = time.perf_counter()
  grids = {name: lrs[1:2] if quick else lrs for name, (_, lrs) in OPTIMIZERS.items()}
  makers = [lambda learning_rate, make=make: make(learning_rate) for make, _ in OPTIMIZERS.values()]
  common = dict(steps=steps, eval_every=eval_every, batch_size=64, seeds=seeds, eval_fn=eval_fn)
  if quick:  # smoke run: the three optimizers in one compiled program
    results = fit_each(makers, loss_fn, init_params, data, progress=False,
                       configs=[grid(learning_rate=lrs) for lrs in grids.values()], **common)
  else:
    results = [fit(loss_fn, init_params, make, data, configs=grid(learning_rate=grids[name]),
                   desc=name, **common) for name, make in zip(OPTIMIZERS, makers)]
  digits, rosen, curves = {}, {}, {}
  for (name, (make, _)), result in zip(OPTIMIZERS.items(), results):
    lrs = grids[name]
    final_loss = result.final("train_loss").mean(axis=1)
    best = int(np.argmin(final_loss))
    digits[name] = {
        "learning_rate": lrs[best],
        "final_train_loss": float(final_loss[best]),
        "test_accuracy": float(result.final("test_accuracy")[best].mean()),
        "test_accuracy_per_seed": result.final("test_accuracy")[best],
        "final_train_loss_per_lr": final_loss,
        "learning_rates": list(lrs),
    }
    curves[name] = (result.eval_steps, result.history["train_loss"][best].mean(axis=0))
    rosen_lrs = ROSENBROCK_LRS[2:3] if quick else ROSENBROCK_LRS
    finals, values = _rosenbrock_runs(make, rosen_lrs, starts, rosen_steps)
    # Geometric mean over starts: the values span decades.
    log_final = np.log10(np.maximum(finals, 1e-30)).mean(axis=1)
    best_r = int(np.argmin(log_final))
    rosen[name] = {
        "learning_rate": rosen_lrs[best_r],
        "final_value": float(10.0 ** log_final[best_r]),
        "curve": values[best_r].mean(axis=0),
    }
  wall_time = time.perf_counter() - start

  fig, axes = new_figure(ncols=2)
  for name in OPTIMIZERS:
    steps_axis, loss_curve = curves[name]
    axes[0, 0].plot(steps_axis, loss_curve, label=f"{name} (lr {digits[name]['learning_rate']:g})")
    axes[0, 1].plot(rosen[name]["curve"], label=f"{name} (lr {rosen[name]['learning_rate']:g})")
  axes[0, 0].set(xlabel="step", ylabel="digits train loss", yscale="log", title="MLP on digits")
  axes[0, 1].set(xlabel="step", ylabel="f(x, y)", yscale="log", title="Rosenbrock")
  for ax in axes[0]:
    ax.legend()

  others = ("adam", "lion")
  final = lambda name: digits[name]["final_train_loss"]
  loss_ok = all(final("grams") <= final(o) for o in others)
  rosen_ok = all(rosen["grams"]["final_value"] <= rosen[o]["final_value"] for o in others)
  acc_ok = all(digits["grams"]["test_accuracy"] >= digits[o]["test_accuracy"] for o in others)
  measured = (
      "digits final train loss "
      + ", ".join(f"{n} {digits[n]['final_train_loss']:.2e}" for n in OPTIMIZERS)
      + "; test accuracy "
      + ", ".join(f"{n} {digits[n]['test_accuracy']:.3f}" for n in OPTIMIZERS)
      + "; Rosenbrock final value (geometric mean over starts) "
      + ", ".join(f"{n} {rosen[n]['final_value']:.2e}" for n in OPTIMIZERS)
      + f". Lowest loss on digits: {loss_ok}; on Rosenbrock: {rosen_ok}; best accuracy: {acc_ok}."
  )
  return save_result(
      "grams_vs_adam_lion", out,
      claim=("Grams converges faster and generalizes better than Adam and Lion "
             "(each optimizer at a tuned learning rate)."),
      measured=measured,
      claim_held=loss_ok and rosen_ok and acc_ok,
      config={"model": "MLP 64-64-64-10", "steps": steps, "batch_size": 64,
              "rosenbrock_steps": rosen_steps,
              "learning_rates": {n: list(lrs) for n, (_, lrs) in OPTIMIZERS.items()},
              "rosenbrock_learning_rates": list(ROSENBROCK_LRS)},
      metrics={
          "digits": digits,
          "rosenbrock": rosen,
          "digits_final_train_loss": {n: digits[n]["final_train_loss"] for n in OPTIMIZERS},
          "digits_test_accuracy": {n: digits[n]["test_accuracy"] for n in OPTIMIZERS},
          "rosenbrock_final_value": {n: rosen[n]["final_value"] for n in OPTIMIZERS},
          "digits_grams_vs_adam_per_lr": {
              "learning_rates": digits["grams"]["learning_rates"],
              "grams_below_adam": digits["grams"]["final_train_loss_per_lr"]
              < digits["adam"]["final_train_loss_per_lr"],
          },
      },
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
