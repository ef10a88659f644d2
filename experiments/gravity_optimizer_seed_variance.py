"""Gravity vs Adam vs RMSProp at their default hyperparameters: stability over seeds and epochs.

Tests the Gravity paper's claim (arXiv:2101.09192): with no tuning, Gravity performs more stably
than Adam and RMSProp, with a validation accuracy at least comparable. CPU version: an MLP
(64-128-128-10) on the bundled digits data, minibatch 128 as in the paper, eight seeds, every
optimizer at its default hyperparameters (Gravity lr 0.1, alpha 0.01, beta 0.9; Adam lr 1e-3;
RMSProp lr 1e-3, decay 0.9). Each Gravity run also draws its own initial velocity.

Stability is measured two ways on the test-accuracy curves: the spread over seeds (std of the
final accuracy) and the jitter within a run (mean absolute change between consecutive evaluations
over the second half of training, averaged over seeds). The claim counts as held if Gravity has
the lowest value of both measures and a mean final accuracy no more than one percentage point
below Adam's. Writes gravity_optimizer_seed_variance.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, fit_each
from jaxlearn.optim import gravity
from jaxlearn.train import classifier, experiment_main, fit, mlp, new_figure, save_result

ACCURACY_TOLERANCE = 0.01


def _gravity_factory(velocity_seed):
  return gravity(0.1, alpha=0.01, beta=0.9, key=jnp.asarray(velocity_seed, jnp.int32))


def _jitter(curves: np.ndarray) -> float:
  """Mean |Δ accuracy| between consecutive evaluations over the second half, curves (S, T)."""
  half = curves[:, curves.shape[1] // 2:]
  return float(np.abs(np.diff(half, axis=1)).mean())


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  init_params, apply_fn = mlp((64,), (128, 128), data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (20, 5) if quick else (1500, 50)
  seeds = [seed, seed + 1] if quick else [seed + i for i in range(8)]  # 2: a spread over seeds
  common = dict(steps=steps, eval_every=eval_every, batch_size=128, eval_fn=eval_fn)
  baselines = {"adam": lambda: optax.adam(1e-3),
               "rmsprop": lambda: optax.rmsprop(1e-3, decay=0.9)}

  start = time.perf_counter()
  curves = {}
  # Gravity: run k draws its initial velocity from seed k; fit pairs every config with every
  # seed, so keep the diagonal (velocity seed k with initialization/minibatch seed k).
  velocity_seeds = [{"velocity_seed": float(s)} for s in seeds]
  if quick:  # smoke run: the three optimizers in one compiled program
    ignore_seed = lambda make: lambda velocity_seed: make()
    gravity_result, *others = fit_each(
        [_gravity_factory, *map(ignore_seed, baselines.values())], loss_fn, init_params, data,
        seeds=seeds, configs=[velocity_seeds] * 3, progress=False, **common)
  else:
    gravity_result = fit(loss_fn, init_params, _gravity_factory, data, seeds=seeds,
                         configs=velocity_seeds, desc="gravity", **common)
    others = [fit(loss_fn, init_params, make, data, seeds=seeds, desc=name, **common)
              for name, make in baselines.items()]
  diagonal = np.arange(len(seeds))
  curves["gravity"] = gravity_result.history["test_accuracy"][diagonal, diagonal]
  steps_axis = gravity_result.eval_steps
  for name, result in zip(baselines, others):
    curves[name] = result.history["test_accuracy"][0]
  wall_time = time.perf_counter() - start

  final_mean = {n: float(c[:, -1].mean()) for n, c in curves.items()}
  final_std = {n: float(c[:, -1].std(ddof=1)) for n, c in curves.items()}
  jitter = {n: _jitter(c) for n, c in curves.items()}

  fig, axes = new_figure(ncols=2)
  for name, c in curves.items():
    mean, std = c.mean(axis=0), c.std(axis=0)
    axes[0, 0].plot(steps_axis, mean, label=name)
    axes[0, 0].fill_between(steps_axis, mean - std, mean + std, alpha=0.2)
    axes[0, 1].plot(steps_axis, c.std(axis=0), label=name)
  axes[0, 0].set(xlabel="step", ylabel="test accuracy (mean ± std over seeds)", ylim=(0.5, 1.0))
  axes[0, 1].set(xlabel="step", ylabel="std over seeds of test accuracy", yscale="log")
  axes[0, 0].legend()
  fig.suptitle("digits MLP, default hyperparameters")

  others = ("adam", "rmsprop")
  steadier = all(final_std["gravity"] < final_std[o] for o in others)
  smoother = all(jitter["gravity"] < jitter[o] for o in others)
  accurate = final_mean["gravity"] >= final_mean["adam"] - ACCURACY_TOLERANCE
  measured = (
      "final test accuracy mean/std over seeds: "
      + ", ".join(f"{n} {final_mean[n]:.4f}/{final_std[n]:.4f}" for n in curves)
      + "; within-run jitter (mean |Δacc| per eval, second half): "
      + ", ".join(f"{n} {jitter[n]:.4f}" for n in curves)
      + f". Lowest seed spread: {steadier}; lowest jitter: {smoother}; accuracy within "
      + f"{ACCURACY_TOLERANCE:.0%} of Adam or above: {accurate}."
  )
  return save_result(
      "gravity_optimizer_seed_variance", out,
      claim=("With default hyperparameters Gravity is more stable than Adam and RMSProp, with a "
             "comparable or higher validation accuracy."),
      measured=measured,
      claim_held=steadier and smoother and accurate,
      config={"model": "MLP 64-128-128-10", "steps": steps, "eval_every": eval_every,
              "batch_size": 128, "gravity": {"learning_rate": 0.1, "alpha": 0.01, "beta": 0.9},
              "adam": {"learning_rate": 1e-3}, "rmsprop": {"learning_rate": 1e-3, "decay": 0.9}},
      metrics={"final_test_accuracy_mean": final_mean, "final_test_accuracy_std": final_std,
               "within_run_jitter": jitter, "eval_steps": steps_axis,
               "test_accuracy_curves": curves},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
