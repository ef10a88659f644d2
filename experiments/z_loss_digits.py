"""The spherical Z-loss vs softmax cross-entropy on the digits: top-1, top-3, and a b-sweep.

"The Z-loss: a shift and scale invariant classification loss belonging to the Spherical
Family" (arXiv:1604.08859) claims that the Z-loss outperforms the other spherical losses and,
on word-level language modelling, outperforms the log-softmax on top-k scores: its location b
(and sharpness a) give it the flexibility to match a top-k task loss better. The speed claim
(40x faster than the log-softmax on One Billion Word) needs the spherical output-layer algorithm
and a huge vocabulary: out of reach here.

Setup: the 8x8 digits (1437 train / 360 test), an MLP 64-128-128-10 (ReLU), Adam lr 1e-3, batch
64, 3000 steps, 3 seeds vmapped by `fit`. Losses: softmax CE and `spherical_z_loss` with a = 1
(the authors' default) and b in {-1, 0, 1, 2, 3}. Metrics: test top-1 and top-3 accuracy at the
end. A 20% validation split of the training set picks the Z-loss b with the best top-3 (the
paper tunes a and b on validation data); the claim is judged on the test split with that b.
Criterion fixed before the first full run: the claim holds if that Z-loss's mean test top-3
accuracy is >= softmax CE's; it is undecided (None) if both are >= 99.5% (the 10-class digits
saturate top-3, and the metric cannot separate the losses).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax.numpy as jnp
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, validation_split
from jaxlearn.losses import spherical_z_loss
from jaxlearn.train import experiment_main, fit, mlp, new_figure, save_result

NAME = "z_loss_digits"
HIDDEN = (128, 128)
B_VALUES = (-1.0, 0.0, 1.0, 2.0, 3.0)
LEARNING_RATE = 1e-3


def _train(loss, data, *, steps, eval_every, seeds):
  init_params, apply_fn = mlp((64,), HIDDEN, data.num_classes)

  def loss_fn(params, x, y):
    return jnp.mean(loss(apply_fn(params, x), y))

  def eval_fn(params, x, y):
    logits = apply_fn(params, x)
    top3 = jnp.argsort(-logits, axis=-1)[:, :3]
    return {
        "top1": jnp.mean(jnp.argmax(logits, -1) == y),
        "top3": jnp.mean(jnp.any(top3 == y[:, None], axis=-1)),
    }

  result = fit(loss_fn, init_params, lambda: optax.adam(LEARNING_RATE), data, steps=steps,
               batch_size=64, seeds=seeds, eval_every=eval_every, eval_fn=eval_fn,
               progress=False)
  return {key: value[0] for key, value in result.history.items()}  # (seeds, T)


def _losses():
  out = {"softmax CE": optax.losses.softmax_cross_entropy_with_integer_labels}
  for b in B_VALUES:
    out[f"Z-loss b={b:g}"] = (lambda b: lambda logits, y: spherical_z_loss(logits, y, b=b))(b)
  return out


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  steps, eval_every = (20, 10) if quick else (3000, 300)
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  data = load_digits(seed=seed)
  validation = validation_split(data, 0.2, seed)
  losses = _losses()
  if quick:
    losses = {name: losses[name] for name in ("softmax CE", "Z-loss b=0")}
  start = time.perf_counter()
  test, val = {}, {}
  for name, loss in losses.items():
    test[name] = _train(loss, data, steps=steps, eval_every=eval_every, seeds=seeds)
    if name != "softmax CE":  # the smoke run skips the selection (its b is the default 0)
      val[name] = test[name] if quick else _train(
          loss, validation, steps=steps, eval_every=eval_every, seeds=seeds)
  wall = time.perf_counter() - start

  final = {
      name: {metric: float(h[f"test_{metric}"][:, -1].mean()) for metric in ("top1", "top3")}
      for name, h in test.items()
  }
  per_seed = {name: {metric: h[f"test_{metric}"][:, -1].tolist() for metric in ("top1", "top3")}
              for name, h in test.items()}
  val_top3 = {name: float(h["test_top3"][:, -1].mean()) for name, h in val.items()}
  val_top1 = {name: float(h["test_top1"][:, -1].mean()) for name, h in val.items()}
  chosen = max(val_top3, key=lambda name: (val_top3[name], val_top1[name]))
  ce, zl = final["softmax CE"], final[chosen]
  saturated = ce["top3"] >= 0.995 and zl["top3"] >= 0.995
  claim_held = None if saturated else bool(zl["top3"] >= ce["top3"])
  rows = "; ".join(
      f"{name}: top-1 {v['top1']:.4f}, top-3 {v['top3']:.4f}" for name, v in final.items())
  measured = (
      f"Digits MLP {HIDDEN}, Adam {LEARNING_RATE:g}, {steps} steps, {len(seeds)} seeds, mean "
      f"test accuracy at the end. {rows}. The validation split picked {chosen} (validation "
      f"top-3 {val_top3[chosen]:.4f}): test top-3 {zl['top3']:.4f} vs softmax CE "
      f"{ce['top3']:.4f}, top-1 {zl['top1']:.4f} vs {ce['top1']:.4f}. "
      + ("Both top-3 accuracies are >= 99.5%: the digits saturate top-3, undecided."
         if saturated else
         f"Z-loss top-3 {'>=' if claim_held else '<'} softmax CE top-3.")
  )

  fig, axes = new_figure(ncols=2)
  bs = [b for b in B_VALUES if f"Z-loss b={b:g}" in final]
  for ax, metric in zip(axes[0], ("top1", "top3")):
    ax.plot(bs, [final[f"Z-loss b={b:g}"][metric] for b in bs], "o-", label="Z-loss (a=1)")
    ax.axhline(ce[metric], color="tab:red", ls="--", label="softmax CE")
    ax.set_xlabel("Z-loss location b")
    ax.set_title(f"test {metric} accuracy (mean of {len(seeds)} seeds)")
  axes[0, 0].legend(fontsize=8)

  return save_result(
      NAME,
      out,
      claim=(
          "The Z-loss matches or beats the log-softmax (softmax cross-entropy) on top-k "
          "accuracy, its location b trading top-1 for top-k (claimed on word-level language "
          "modelling; tested here on the digits with k = 3)."
      ),
      measured=measured,
      claim_held=claim_held,
      config={
          "data": "sklearn digits, 8x8, test_fraction 0.2", "hidden": list(HIDDEN),
          "optimizer": "adam", "learning_rate": LEARNING_RATE, "batch_size": 64,
          "steps": steps, "eval_every": eval_every, "z_loss_a": 1.0,
          "z_loss_b_values": list(B_VALUES), "validation_fraction": 0.2,
          "selection": "best validation top-3 (ties: top-1)",
      },
      metrics={
          "final_test": final, "final_test_per_seed": per_seed,
          "validation_top3": val_top3, "validation_top1": val_top1, "chosen": chosen,
          "top3_saturated": saturated,
      },
      seeds=seeds,
      wall_time_s=wall,
      figure=fig,
      quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
