"""LDR-KL and ALDR-KL vs cross-entropy on digits with 0%, 30% and 60% uniform label noise.

Zhu, Ying and Yang (arXiv:2112.14869) propose the label-distributionally robust losses LDR-KL and
its adaptive per-example form ALDR-KL, and report stable, competitive clean test accuracy under
label noise against many losses (tabular and image benchmarks, 6 noise settings). The catalogue's
expectation for this CPU check: similar accuracy without noise, and ALDR-KL >= LDR-KL > CE at 60%
noise.

Setup: scikit-learn digits, a fraction of the training labels replaced by a uniformly drawn other
class (`jaxlearn.data.with_label_noise`; the paper's "uniform" noise may also redraw the true
class, a slightly weaker corruption at the same rate); test labels clean. The official tabular
recipe: a feed-forward network (here tanh, 64-256-256-10), SGD with momentum 0.9, lr 0.01 (the
official CLI default), weight decay 5e-3 (coupled, as torch's SGD), batch 64, 100 epochs with the
learning rate divided by 10 at epochs 50 and 75; margin 0.1, lambda (lambda_0) = 10, alpha = 2.
ALDR-KL keeps its per-example lambdas in `fit`'s model state (`buffered_classifier`). Three seeds
vmapped; they vary the initialization and the batch order, on one corrupted training set per
noise rate (drawn with the base seed). We report the final clean test accuracy (the official
script selects by validation accuracy; we report the last epoch for all losses alike).

Decision rule, fixed before the first full run: the claim holds if at 60% noise both LDR losses
beat cross-entropy's final test accuracy (seed means) and ALDR-KL is at least LDR-KL - 1 point,
while at 0% noise every LDR loss is within 2 points of cross-entropy; False otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits, with_label_noise
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.losses import aldr_kl_loss, buffered_classifier, ldr_kl_loss
from jaxlearn.train import experiment_main, fit, mlp, new_figure, save_result

NAME = "ldr_label_noise"
MARGIN, LAMBDA, ALPHA = 0.1, 10.0, 2.0  # experiment.py / run_demo_ALDR.sh
LOSSES = ("cross-entropy", "LDR-KL", "ALDR-KL")


def _cross_entropy(z, y):
  return -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=-1)[:, 0]


def _functions(n_train, num_classes, *, hidden):
  """(init, loss_fn, eval_fn) per loss, built once so that every noise level reuses the
  compiled programs (only the data change)."""
  init_params, apply_fn = mlp((64,), hidden, num_classes, activation=jnp.tanh)
  per_example = {
      "cross-entropy": lambda z, y, rows, epoch: (_cross_entropy(z, y), rows),
      "LDR-KL": lambda z, y, rows, epoch: (ldr_kl_loss(z, y, margin=MARGIN, lam=LAMBDA), rows),
      "ALDR-KL": lambda z, y, rows, epoch: aldr_kl_loss(
          z, y, rows, margin=MARGIN, lam0=LAMBDA, alpha=ALPHA),
  }
  lambdas = jnp.full((n_train,), LAMBDA, jnp.float32)  # unused by the stateless two
  return {name: buffered_classifier(apply_fn, init_params, loss, lambdas)
          for name, loss in per_example.items()}


def _optimizer(steps_per_epoch, epochs):
  schedule = optax.piecewise_constant_schedule(
      0.01, {epochs // 2 * steps_per_epoch: 0.1, 3 * epochs // 4 * steps_per_epoch: 0.1})
  return optax.chain(optax.add_decayed_weights(5e-3), optax.sgd(schedule, momentum=0.9))


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  hidden = (16,) if quick else (256, 256)
  epochs, eval_epochs = (1, 1) if quick else (100, 5)
  noise_rates = (0.6,) if quick else (0.0, 0.3, 0.6)
  losses = ("cross-entropy", "ALDR-KL") if quick else LOSSES
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  batch_size = 64
  clean = load_digits(seed=seed)
  steps_per_epoch = len(clean.x_train) // batch_size
  functions = _functions(len(clean.x_train), clean.num_classes, hidden=hidden)
  make_optimizer = lambda: _optimizer(steps_per_epoch, epochs)

  start = time.perf_counter()
  curves, finals = {}, {}
  for rate in noise_rates:
    data, _ = with_label_noise(clean, rate, seed=seed)
    for name in losses:
      init, loss_fn, eval_fn = functions[name]
      result = fit(
          loss_fn, init, make_optimizer, data, steps=epochs * steps_per_epoch,
          batch_size=batch_size, seeds=seeds, eval_every=eval_epochs * steps_per_epoch,
          eval_fn=eval_fn, has_state=True, loss_takes_indices=True, progress=False,
          desc=f"{name} {rate}",
      )
      test = result.history["test_accuracy"][0]  # (seeds, T)
      curves[f"{name} @ {rate:.0%}"] = test.mean(0)
      finals.setdefault(name, {})[f"{rate:.1f}"] = test[:, -1]
  wall = time.perf_counter() - start

  mean = lambda name, rate: float(np.mean(finals[name][f"{rate:.1f}"]))
  if quick or len(losses) < 3:
    claim_held = None
  else:
    noisy = (mean("LDR-KL", 0.6) > mean("cross-entropy", 0.6)
             and mean("ALDR-KL", 0.6) > mean("cross-entropy", 0.6)
             and mean("ALDR-KL", 0.6) >= mean("LDR-KL", 0.6) - 0.01)
    clean_ok = all(abs(mean(name, 0.0) - mean("cross-entropy", 0.0)) <= 0.02
                   for name in ("LDR-KL", "ALDR-KL"))
    claim_held = bool(noisy and clean_ok)
  table = "; ".join(
      f"{rate:.0%} noise: " + ", ".join(f"{name} {mean(name, rate):.3f}" for name in losses)
      for rate in noise_rates)
  measured = (f"Final clean test accuracy (mean of {len(seeds)} seeds, {epochs} epochs): "
              f"{table}.")

  eval_axis = np.arange(1, epochs // eval_epochs + 1) * eval_epochs
  fig, axes = new_figure(ncols=len(noise_rates))
  colors = dict(zip(LOSSES, ("tab:red", "tab:green", "tab:blue")))
  for ax, rate in zip(axes[0], noise_rates):
    for name in losses:
      ax.plot(eval_axis, curves[f"{name} @ {rate:.0%}"], color=colors[name], label=name)
    ax.set_title(f"{rate:.0%} uniform label noise: clean test accuracy", fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylim(0.0, 1.0)
  axes[0, 0].legend(fontsize=8)

  return save_result(
      NAME,
      out,
      claim=(
          "The adaptive LDR loss (ALDR-KL) is stable and competitive under label noise: on "
          "noisy labels it matches or beats LDR-KL and beats cross-entropy, with similar "
          "accuracy on clean labels."
      ),
      measured=measured,
      claim_held=claim_held,
      config={
          "dataset": "sklearn digits", "noise": "symmetric (other classes)",
          "noise_rates": list(noise_rates), "hidden": list(hidden), "activation": "tanh",
          "optimizer": "sgd", "momentum": 0.9, "learning_rate": 0.01,
          "lr_decay": "x0.1 at epochs/2 and 3 epochs/4", "weight_decay": 5e-3,
          "batch_size": batch_size, "epochs": epochs, "margin": MARGIN, "lambda": LAMBDA,
          "alpha": ALPHA, "n_train": len(clean.x_train), "n_test": len(clean.x_test),
      },
      metrics={"eval_epochs": eval_axis, "test_accuracy_curves": curves,
               "final_test_accuracy_per_seed": finals},
      seeds=seeds,
      wall_time_s=wall,
      figure=fig,
      quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
