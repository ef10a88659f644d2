"""Ranger21 vs AdamW on a 20-layer MLP without normalization (digits), with an ablation of its parts.

Paper claim (Wright & Demeure, arXiv:2106.13731): Ranger21 trains networks without normalization
layers (a ResNet50 without BatchNorm on ImageNet) on which AdamW "stays systematically stuck in a
bad initial state". CPU-scale test: a plain ReLU MLP with 20 hidden layers of width 32 and no
normalization, Flax's default (LeCun-normal) initialization, trained on the bundled digits.

Every variant runs a learning-rate grid (AdamW 1e-4..3e-3, Ranger21 1e-3..1e-2) and two seeds
(`jaxlearn.train.fit`, vmapped); the best learning rate of a variant is the one with the lowest final
TRAIN loss (mean over seeds). Variants: AdamW (weight decay 1e-4); AdamW with Ranger21's warmup/warmdown schedule (to
separate the schedule from the rest); full Ranger21 (paper defaults); and Ranger21 with one part
removed at a time. So that all Ranger21 variants share ONE compiled program, each part is switched by
a number: AGC, gradient centralization and gradient normalization through `gated` (exactly the part
or exactly the identity), PNM's negative momentum by b0 = 0, stable weight decay and norm loss by a
zero coefficient, Lookahead by α = 1 (the identity), the softplus by β = 1e8 (softplus(x) = x to
float32 precision for x > 1e-7), and the schedule by no warmup and min_lr = lr (a constant rate).

Decision rule, fixed before running: the claim holds when AdamW's best final train loss stays
above 90% of the chance-level loss ln(10) (stuck) while Ranger21's falls below 50% of it.
Writes ranger21_deep_mlp.json and ranger21_deep_mlp.png to --out.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import optax

from jaxlearn import optim
from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, fit_each
from jaxlearn.optim.ranger21 import default_warmup_iterations
from jaxlearn.train import classifier, experiment_main, fit, grid, mlp, new_figure, save_result

DEPTH, WIDTH, QUICK_DEPTH = 20, 32, 1
CHANCE_LOSS = math.log(10)


def gated(transform: optax.GradientTransformation, on) -> optax.GradientTransformationExtraArgs:
  """`on * transform(u) + (1 - on) * u` for a stateless transform: exactly it (on = 1) or the
  identity (on = 0), with `on` a traced number, so ablations share one compiled program."""
  transform = optax.with_extra_args_support(transform)

  def update_fn(updates, state, params=None, **extra_args):
    new, state = transform.update(updates, state, params, **extra_args)
    return jax.tree.map(lambda n, u: (on * n + (1 - on) * u).astype(u.dtype), new, updates), state

  return optax.GradientTransformationExtraArgs(transform.init, update_fn)


# Every Ranger21 part as a number: 1 keeps the part, 0 removes it (module docstring).
FULL = dict(agc=1.0, gc=1.0, gn=1.0, negative_momentum=1.0, stable_decay=1.0, norm_loss=1.0,
            softplus=1.0, lookahead=1.0, schedule=1.0)
ABLATIONS = tuple(FULL)
SOFTPLUS_OFF_BETA = 1e8  # softplus(x) = x to float32 precision for x > 1e-7


def make_ranger21(steps: int) -> Callable[..., optax.GradientTransformation]:
  """`make(learning_rate, **parts)`: Ranger21 with each part scaled in or out by a number."""

  def make(learning_rate, agc, gc, gn, negative_momentum, stable_decay, norm_loss, softplus,
           lookahead, schedule):
    core = optim.ranger21(
        learning_rate, steps, b0=negative_momentum, weight_decay=1e-4 * stable_decay,
        norm_loss_factor=1e-4 * norm_loss,
        softplus_beta=50.0 * softplus + SOFTPLUS_OFF_BETA * (1 - softplus),
        lookahead_step_size=0.5 * lookahead + (1 - lookahead),
        # No schedule: no warmup, and a warmdown that ends where it starts (a constant rate).
        num_warmup_iterations=schedule * default_warmup_iterations(steps),
        warmdown_min_lr=3e-5 * schedule + learning_rate * (1 - schedule),
        use_agc=False, use_gc=False, use_gn=False,
    )
    return optax.chain(
        gated(optim.adaptive_grad_clip(1e-2, 1e-3), agc),
        gated(optim.centralize_gradients(), gc),
        gated(optim.normalize_gradients(1e-8), gn),
        core,
    )

  return make


def adamw(schedule: bool, steps: int) -> Callable[..., optax.GradientTransformation]:
  def make(learning_rate):
    rate = optim.ranger21_schedule(learning_rate, steps) if schedule else learning_rate
    return optax.adamw(rate, weight_decay=1e-4)
  return make


# Each optimizer family gets its own grid around its usual rate (Ranger21's default is 1e-3).
ADAMW_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)
RANGER21_LEARNING_RATES = (1e-3, 3e-3, 1e-2)


def _best(final_train: np.ndarray) -> int:
  return int(np.argmin(np.where(np.isfinite(final_train), final_train, np.inf)))


def _rows(name_of, result, indices, learning_rates) -> tuple[dict, dict]:
  """The best-learning-rate row among the configurations `indices` of `result`."""
  final_train = result.history["train_loss"][indices, :, -1].mean(axis=1)
  best = indices[_best(final_train)]
  row = {
      "variant": name_of,
      "learning_rate": learning_rates[indices.index(best)],
      "final_train_loss": float(final_train[indices.index(best)]),
      "final_train_loss_per_lr": final_train.tolist(),
      "train_accuracy": float(result.history["train_accuracy"][best, :, -1].mean()),
      "test_accuracy": float(result.history["test_accuracy"][best, :, -1].mean()),
  }
  curve = {"steps": result.eval_steps, "train_loss": result.history["train_loss"][best].mean(0)}
  return row, curve


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  depth = QUICK_DEPTH if quick else DEPTH  # the smoke run only checks the plumbing
  init_params, apply_fn = mlp((64,), (WIDTH,) * depth, data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  steps, eval_every = (50, 50) if quick else (1500, 100)
  seeds = [seed] if quick else [seed, seed + 1]
  adamw_rates = (1e-3,) if quick else ADAMW_LEARNING_RATES
  ranger_rates = (1e-3,) if quick else RANGER21_LEARNING_RATES
  ablations = () if quick else ABLATIONS
  common = dict(data=data, steps=steps, eval_every=eval_every, batch_size=64, seeds=seeds,
                eval_fn=eval_fn)

  rows, curves = [], {}
  start = time.perf_counter()
  # Full Ranger21 and every one-part ablation, all learning rates and seeds: one program.
  variants = [("ranger21", FULL)] + [(f"-{part}", FULL | {part: 0.0}) for part in ablations]
  configs = [dict(learning_rate=lr, **parts) for _, parts in variants for lr in ranger_rates]
  if quick:  # smoke run: AdamW and Ranger21 in one compiled program (AdamW ignores the parts)
    make_adamw = lambda learning_rate, **parts: adamw(False, steps)(learning_rate)
    adamw_result, ranger_result = fit_each(
        [make_adamw, make_ranger21(steps)], loss_fn, init_params, progress=False,
        configs=[[dict(learning_rate=lr, **FULL) for lr in adamw_rates], configs], **common)
  for name, schedule in (("adamw", False),) + (() if quick else (("adamw+schedule", True),)):
    result = adamw_result if quick else fit(loss_fn, init_params, adamw(schedule, steps),
                                            configs=grid(learning_rate=adamw_rates), desc=name,
                                            **common)
    row, curves[name] = _rows(name, result, list(range(len(adamw_rates))), adamw_rates)
    rows.append(row)
  result = ranger_result if quick else fit(loss_fn, init_params, make_ranger21(steps),
                                           configs=configs, desc="ranger21", **common)
  for v, (name, _) in enumerate(variants):
    indices = list(range(v * len(ranger_rates), (v + 1) * len(ranger_rates)))
    row, curves[name] = _rows(name, result, indices, ranger_rates)
    rows.append(row)
  wall_time = time.perf_counter() - start
  by_name = {r["variant"]: r for r in rows}
  adamw_row, ranger = by_name["adamw"], by_name["ranger21"]
  _print_table(rows)

  fig, axes = new_figure(ncols=2, width=6.0)
  for name, curve in curves.items():
    style = "-" if name in ("adamw", "adamw+schedule", "ranger21") else ":"
    axes[0, 0].plot(curve["steps"], curve["train_loss"], style, label=name)
  axes[0, 0].axhline(CHANCE_LOSS, color="gray", lw=0.8)
  axes[0, 0].set(xlabel="step", ylabel="train loss (minibatch mean, best lr)",
                 title=f"{depth}-layer MLP, no normalization")
  axes[0, 0].legend(fontsize=7)
  names = [r["variant"] for r in rows]
  axes[0, 1].barh(names, [r["final_train_loss"] for r in rows])
  axes[0, 1].axvline(CHANCE_LOSS, color="gray", lw=0.8)
  axes[0, 1].set(xlabel="final train loss (best lr)")
  axes[0, 1].invert_yaxis()

  stuck = adamw_row["final_train_loss"] > 0.9 * CHANCE_LOSS
  trains = ranger["final_train_loss"] < 0.5 * CHANCE_LOSS
  ablation_text = ", ".join(
      f"{r['variant']} {r['final_train_loss']:.3f}" for r in rows if r["variant"].startswith("-")
  )
  measured = (
      f"Best final train loss (chance {CHANCE_LOSS:.3f}): AdamW {adamw_row['final_train_loss']:.3f} "
      f"(test acc {adamw_row['test_accuracy']:.3f}), Ranger21 {ranger['final_train_loss']:.3f} "
      f"(test acc {ranger['test_accuracy']:.3f})"
      + (f", AdamW+schedule {by_name['adamw+schedule']['final_train_loss']:.3f}"
         if "adamw+schedule" in by_name else "")
      + (f"; ablations: {ablation_text}" if ablation_text else "") + "."
  )
  return save_result(
      "ranger21_deep_mlp", out,
      claim=("Ranger21 trains deep networks without normalization layers on which AdamW stays "
             "stuck in a bad initial state."),
      measured=measured,
      claim_held=bool(stuck and trains),
      config={"model": f"ReLU MLP 64-{WIDTH}x{depth}-10, no normalization, LeCun-normal init",
              "steps": steps, "batch_size": 64, "adamw_learning_rates": list(adamw_rates),
              "ranger21_learning_rates": list(ranger_rates),
              "lr_selection": "lowest final train loss (mean over seeds)",
              "softplus_off": f"softplus_beta={SOFTPLUS_OFF_BETA:g}",
              "decision_rule": "AdamW final train loss > 0.9 ln10 and Ranger21 < 0.5 ln10"},
      metrics={"table": rows, "curves": curves, "adamw_stuck": stuck, "ranger21_trains": trains},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def _print_table(rows: list[dict]) -> None:
  print(f"{'variant':<20}{'lr':>9}{'train loss':>12}{'train acc':>11}{'test acc':>10}")
  for r in rows:
    print(f"{r['variant']:<20}{r['learning_rate']:>9.0e}{r['final_train_loss']:>12.4f}"
          f"{r['train_accuracy']:>11.3f}{r['test_accuracy']:>10.3f}")


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
