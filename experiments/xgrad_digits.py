"""XGrad vs its base optimizers: SGD with momentum and Adam, with and without weight prediction.

Tests the XGrad paper's claim (arXiv:2305.18240) that taking every gradient at the predicted
weights (s = 1 step ahead) makes the base optimizer converge faster and reach a higher accuracy.
CPU version: an MLP 64-64-64-10 on the bundled digits data, minibatch 64, 1500 steps, five seeds.
Both optimizers (`optax.sgd` with momentum 0.9 and `optax.adam`, the rules of `xgrad_sgd` and
`xgrad_adam` without weight decay) run through the same code, `jaxlearn.optim.xgrad_step` with
`jaxlearn.optim.xgrad`; without prediction is s = 0, which takes the gradient at the current
weights. With and without prediction share the learning-rate grid, the initializations and the
minibatches (one seed = one initialization and one batch order), all in one compiled program per
optimizer.

Per optimizer, the learning rate is the one with the lowest final full-train-set loss of the base
optimizer (mean over seeds), and the target loss is twice that base optimizer's final loss; both
are fixed before XGrad's runs are looked at. Steps to target = first evaluation (every 25 steps)
at or below the target (the budget plus one evaluation if never). XGrad is compared with its base
at that learning rate, seed by seed: mean differences in steps to target and in final test
accuracy, with 95% t-intervals over the seeds. The claim counts as held if XGrad is better on both
for both optimizers with intervals excluding 0, as not reproduced if it is worse on either for
either optimizer with an interval excluding 0, and as undecided otherwise. Also reported,
outside the verdict: each at its own best learning rate, the final train loss per learning rate,
and the train loss early on (at about 1/6 and 1/3 of the steps). Writes xgrad_digits.json and
.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, one_of
from jaxlearn.optim import xgrad, xgrad_step
from jaxlearn.train import classifier, experiment_main, new_figure, save_result

# The base optimizers, wrapped by `xgrad` (the same rules as `xgrad_sgd` and `xgrad_adam` without
# weight decay), and the shared learning-rate grid of each.
OPTIMIZERS = {
    "sgdm": (lambda learning_rate: optax.sgd(learning_rate, momentum=0.9), (0.01, 0.03, 0.1, 0.3)),
    "adam": (lambda learning_rate: optax.adam(learning_rate), (3e-4, 1e-3, 3e-3, 1e-2)),
}
PREDICTION_STEPS = (0.0, 1.0)  # without, with
BATCH_SIZE = 64
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}  # Student t quantiles by degrees of freedom


def _mlp(widths):
  """A plain-JAX MLP (lecun-normal kernels, zero biases, as flax's Dense): quick to trace."""

  def init_params(key):
    keys = jax.random.split(key, len(widths) - 1)
    kernel = jax.nn.initializers.lecun_normal()
    return [{"kernel": kernel(k, (m, n)), "bias": jnp.zeros(n)}
            for k, m, n in zip(keys, widths[:-1], widths[1:])]

  def apply_fn(params, x):
    for layer in params[:-1]:
      x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
    return x @ params[-1]["kernel"] + params[-1]["bias"]

  return init_params, apply_fn


def _curves(names, grids, keys, data, steps, eval_every):
  """Full-train loss and test accuracy every `eval_every` steps, {name: (s, lr, seed, T)}.

  One compiled program for all `names`: with several, `one_of` keeps every base optimizer's
  state and steps with the one a traced index selects (the quick run's single program)."""
  init_params, apply_fn = _mlp((64, 64, 64, data.num_classes))
  loss_fn, eval_fn = classifier(apply_fn)
  x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in (
      data.x_train, data.y_train, data.x_test, data.y_test))
  n = len(x_train)
  makers = [OPTIMIZERS[name][0] for name in names]
  base = one_of(makers) if len(makers) > 1 else lambda which, learning_rate: makers[0](
      learning_rate)

  def run(which, s, lr, key):
    init_key, data_key = jax.random.split(key)
    training = xgrad_step(loss_fn, xgrad(base(which, learning_rate=lr), s))
    state = training.init(init_params(init_key), init_key)

    def train(state, t):
      idx = jax.random.randint(jax.random.fold_in(data_key, t), (BATCH_SIZE,), 0, n)
      return training.step(state, (x_train[idx], y_train[idx]), data_key)[0], None

    def chunk(state, c):
      state, _ = jax.lax.scan(train, state, c * eval_every + jnp.arange(eval_every))
      return state, (eval_fn(state.params, x_train, y_train)["loss"],
                     eval_fn(state.params, x_test, y_test)["accuracy"])

    return jax.lax.scan(chunk, state, jnp.arange(steps // eval_every))[1]

  # One flat vmap over every (optimizer, s, lr, seed) run.
  runs = [(w, s, lr, k) for w, name in enumerate(names) for s in PREDICTION_STEPS
          for lr in grids[name] for k in range(len(keys))]
  which, s, lr, k = (np.asarray(column) for column in zip(*runs))
  loss, accuracy = jax.jit(jax.vmap(run))(jnp.asarray(which), jnp.asarray(s, jnp.float32),
                                          jnp.asarray(lr, jnp.float32), keys[k])
  loss, accuracy = np.asarray(loss, np.float64), np.asarray(accuracy, np.float64)
  out, start = {}, 0
  for name in names:
    shape = (len(PREDICTION_STEPS), len(grids[name]), len(keys), -1)
    size = int(np.prod(shape[:3]))
    out[name] = (loss[start:start + size].reshape(shape),
                 accuracy[start:start + size].reshape(shape))
    start += size
  return out


def _steps_to(loss, target, eval_steps, budget):
  """First evaluation step with loss <= target along the last axis (budget if never)."""
  reached = loss <= target
  first = np.argmax(reached, axis=-1)
  return np.where(reached.any(axis=-1), eval_steps[first], budget)


def _interval(differences):
  """Mean and 95% t-interval half-width of per-seed differences."""
  n = len(differences)
  mean = float(np.mean(differences))
  if n < 2:
    return mean, None  # one seed: no interval
  return mean, T_975.get(n - 1, 1.96) * float(np.std(differences, ddof=1)) / np.sqrt(n)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  steps, eval_every = (20, 10) if quick else (1500, 25)
  seeds = [seed] if quick else [seed + i for i in range(5)]
  keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  eval_steps = eval_every * np.arange(1, steps // eval_every + 1)
  budget = steps + eval_every

  start = time.perf_counter()
  grids = {name: lrs[2:3] if quick else lrs for name, (_, lrs) in OPTIMIZERS.items()}
  if quick:  # smoke run: both optimizers in one compiled program
    runs = _curves(list(OPTIMIZERS), grids, keys, data, steps, eval_every)
  else:
    runs = {name: _curves([name], grids, keys, data, steps, eval_every)[name]
            for name in OPTIMIZERS}
  results, curves = {}, {}
  early = sorted({len(eval_steps) // 6, len(eval_steps) // 3} - {0}) or [0]  # ~1/6, 1/3 of it
  for name, (loss, accuracy) in runs.items():
    lrs = grids[name]
    base, ahead = 0, 1  # indices into PREDICTION_STEPS
    # Fixed on the base optimizer alone: its best learning rate and the target loss.
    best = int(np.argmin(loss[base, :, :, -1].mean(axis=1)))
    target = 2.0 * float(loss[base, best, :, -1].mean())
    to_target = _steps_to(loss, target, eval_steps, budget)  # (s, lr, seed)
    final_accuracy = accuracy[..., -1]
    steps_diff = _interval(to_target[ahead, best] - to_target[base, best])
    acc_diff = _interval(final_accuracy[ahead, best] - final_accuracy[base, best])
    own_best = int(np.argmin(loss[ahead, :, :, -1].mean(axis=1)))
    results[name] = {
        "learning_rates": list(lrs),
        "base_best_learning_rate": lrs[best],
        "target_train_loss": target,
        "steps_to_target": {"base": to_target[base, best], "xgrad": to_target[ahead, best]},
        "final_test_accuracy": {"base": final_accuracy[base, best],
                                "xgrad": final_accuracy[ahead, best]},
        "xgrad_minus_base": {"steps_to_target": steps_diff, "final_test_accuracy": acc_diff},
        "final_train_loss_per_lr": {"base": loss[base, :, :, -1].mean(axis=1),
                                    "xgrad": loss[ahead, :, :, -1].mean(axis=1)},
        "final_test_accuracy_per_lr": {"base": final_accuracy[base].mean(axis=1),
                                       "xgrad": final_accuracy[ahead].mean(axis=1)},
        # Descriptive, not part of the verdict: the train loss early in training.
        "train_loss_early": {
            "steps": [int(eval_steps[i]) for i in early],
            "base": loss[base, best][:, early].mean(axis=0),
            "xgrad": loss[ahead, best][:, early].mean(axis=0)},
        "each_at_own_best_lr": {
            "xgrad_learning_rate": lrs[own_best],
            "base_final_test_accuracy": float(final_accuracy[base, best].mean()),
            "xgrad_final_test_accuracy": float(final_accuracy[ahead, own_best].mean()),
            "base_final_train_loss": float(loss[base, best, :, -1].mean()),
            "xgrad_final_train_loss": float(loss[ahead, own_best, :, -1].mean()),
        },
    }
    curves[name] = (loss[base, best].mean(axis=0), loss[ahead, best].mean(axis=0), lrs[best])
  wall_time = time.perf_counter() - start

  fig, axes = new_figure(ncols=len(OPTIMIZERS))
  for ax, (name, (base_curve, ahead_curve, lr)) in zip(axes[0], curves.items()):
    ax.plot(eval_steps, base_curve, label=f"{name} (lr {lr:g})")
    ax.plot(eval_steps, ahead_curve, label=f"xgrad {name}, s = 1")
    ax.axhline(results[name]["target_train_loss"], color="gray", ls=":", label="target")
    ax.set(xlabel="step", ylabel="full train loss (mean over seeds)", yscale="log",
           title=f"digits MLP, {name}")
    ax.legend()

  def verdict(name):
    (ds, hs), (da, ha) = (results[name]["xgrad_minus_base"][k]
                          for k in ("steps_to_target", "final_test_accuracy"))
    if hs is None or ha is None:
      return False, False
    better = ds + hs < 0 and da - ha > 0
    worse = ds - hs > 0 or da + ha < 0
    return better, worse

  verdicts = {name: verdict(name) for name in OPTIMIZERS}
  if all(better for better, _ in verdicts.values()):
    held = True
  elif any(worse for _, worse in verdicts.values()):
    held = False
  else:
    held = None
  measured = "; ".join(
      f"{name} at lr {r['base_best_learning_rate']:g}: steps to target (train loss "
      f"{r['target_train_loss']:.3g}) {np.mean(r['steps_to_target']['base']):.0f} -> "
      f"{np.mean(r['steps_to_target']['xgrad']):.0f} with prediction (difference "
      f"{r['xgrad_minus_base']['steps_to_target'][0]:+.0f} +/- "
      f"{r['xgrad_minus_base']['steps_to_target'][1] or 0:.0f}), final test accuracy "
      f"{np.mean(r['final_test_accuracy']['base']):.4f} -> "
      f"{np.mean(r['final_test_accuracy']['xgrad']):.4f} (difference "
      f"{r['xgrad_minus_base']['final_test_accuracy'][0]:+.4f} +/- "
      f"{r['xgrad_minus_base']['final_test_accuracy'][1] or 0:.4f})"
      for name, r in results.items()
  ) + f" (means over {len(seeds)} seeds, 95% t-intervals of the paired differences). Final " + (
      "; ".join(f"{name} train loss per lr " + ", ".join(
          f"{lr:g}: {b:.2g} -> {x:.2g}" for lr, b, x in zip(
              r["learning_rates"], r["final_train_loss_per_lr"]["base"],
              r["final_train_loss_per_lr"]["xgrad"])) for name, r in results.items())
  ) + " (without -> with prediction). Early train loss at the base's lr (not part of the " + (
      "verdict): " + "; ".join(f"{name} " + ", ".join(
          f"step {t}: {b:.2g} -> {x:.2g}" for t, b, x in zip(
              r["train_loss_early"]["steps"], r["train_loss_early"]["base"],
              r["train_loss_early"]["xgrad"])) for name, r in results.items())) + "."
  return save_result(
      "xgrad_digits", out,
      claim=("Weight prediction (gradients at the weights s = 1 step ahead) makes SGD with "
             "momentum and Adam converge faster and reach a higher accuracy than without it."),
      measured=measured,
      claim_held=held,
      config={"model": "MLP 64-64-64-10", "steps": steps, "batch_size": BATCH_SIZE,
              "eval_every": eval_every, "prediction_steps": list(PREDICTION_STEPS),
              "learning_rates": {n: list(lrs) for n, (_, lrs) in OPTIMIZERS.items()},
              "sgdm_momentum": 0.9, "adam": "b1 0.9, b2 0.999, eps 1e-8"},
      metrics={"optimizers": results},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
