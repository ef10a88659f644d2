"""μP coordinate check (Tensor Programs IV) and learning-rate transfer (Tensor Programs V).

Tensor Programs IV (arXiv:2011.14522) claims that the standard parametrization (SP) has no
feature-learning infinite-width limit while μP does: trained at a learning rate that is stable at
every width, SP's hidden features move less and less as the width grows, μP's move by Θ(1). The
paper's own check (and microsoft/mup's `coord_check`) trains MLPs of growing width for a few
steps and measures how far the hidden coordinates move. Here: a tanh MLP 64-w-w-10 on the bundled
digits, widths 64 ... 2048 (base width 64), 6 full-batch SGD steps (lr 0.1) on 256 examples,
three seeds, under

* μP: `jaxlearn.nn.MuReadout` (output / width_mult, init of the base width) and MuSGD's per-leaf
  learning rates (`jaxlearn.nn.scale_by_mup(optimizer="sgd")`);
* SP at the same lr (its outputs blow up with width: the lr is not stable);
* SP with lr x 64 / width, the largest lr that SP keeps stable as the width grows.

Measured: the mean absolute change of the pre-activations h1, h2 and of the logits after the 6
steps, and its log-log slope against the width. The claim is counted as held if μP's hidden
features move by O(1) (|slope| <= 0.2 for h1 and h2) while under SP at the stable lr they vanish
(slope <= -0.3 for both); both thresholds fixed before running.

Tensor Programs V (arXiv:2203.03466, "μTransfer") adds that under μP the optimal learning rate
stays put as the width grows. Its check here: for widths 64 ... 512, minibatch SGD for 400 steps
over a vmapped grid of 11 learning rates (powers of 2), two seeds; the argmin of the final
training loss per width. Counted as transferring if μP's optimum moves by at most one grid step
across widths while SP's moves by two or more. That is the follow-up paper's claim; it is
reported in the metrics and does not decide this experiment's verdict.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, one_of
from jaxlearn.nn import infer_base_shapes, init_mu_readout, mu_readout, scale_by_mup
from jaxlearn.train import classifier, experiment_main, fit, grid, new_figure, save_result

BASE = 64
WIDTHS = (64, 128, 256, 512, 1024, 2048)
COORD_LR = 0.1
COORD_STEPS = 6
COORD_BATCH = 256
SWEEP_WIDTHS = (64, 128, 256, 512)
SWEEP_LRS = tuple(2.0**k for k in range(-8, 3))
MUP_SLOPE_MAX = 0.2  # |slope| of mu-P's hidden feature change: O(1) in width
SP_SLOPE_MAX = -0.3  # slope of SP's (stable-lr) hidden feature change: vanishing


def init_mlp(key, width: int, base: int):
  """64 -> width -> width -> 10; `base == width` is SP, `base` < width μP's readout init."""
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "fc1": {"kernel": jax.random.normal(k1, (64, width)) / math.sqrt(64),
              "bias": jnp.zeros(width)},
      "fc2": {"kernel": jax.random.normal(k2, (width, width)) / math.sqrt(width),
              "bias": jnp.zeros(width)},
      "out": init_mu_readout(k3, width, 10, base_in_features=base),
  }


def forward(params, x, width_mult: float):
  h1 = x @ params["fc1"]["kernel"] + params["fc1"]["bias"]
  h2 = jnp.tanh(h1) @ params["fc2"]["kernel"] + params["fc2"]["bias"]
  logits = mu_readout(jnp.tanh(h2), params["out"]["kernel"], params["out"]["bias"],
                      width_mult=width_mult)
  return logits, (h1, h2)


BASE_SHAPES = infer_base_shapes(lambda: init_mlp(jax.random.key(0), BASE, BASE),
                                lambda: init_mlp(jax.random.key(0), 2 * BASE, BASE))


def parametrization(name: str, width: int):
  """(init base, readout width_mult, make_optimizer(lr))."""
  if name == "mup":
    make = lambda learning_rate: optax.chain(
        scale_by_mup(base_shapes=BASE_SHAPES, optimizer="sgd"), optax.sgd(learning_rate))
    return BASE, width / BASE, make
  return width, 1.0, lambda learning_rate: optax.sgd(learning_rate)


def coordinate_changes(width: int, settings, x, y, seeds, steps: int):
  """Mean |change| of h1, h2, logits after each step, shape (settings, seeds, steps, 3).

  `settings` are (parametrization, lr) pairs; all of them and the seeds run in ONE program: the
  parametrization is data (the readout's width_mult and init scale, and which optimizer's update
  `one_of` keeps).
  """
  names = ("mup", "sp")
  make = one_of([parametrization(name, width)[2] for name in names])
  width_mults = {name: parametrization(name, width)[1] for name in names}

  def run(key, which, width_mult, learning_rate):
    params = init_mlp(key, width, width)  # the SP init; the μP readout is that times sqrt(wm)
    params["out"] = jax.tree.map(lambda p: p * jnp.sqrt(width_mult), params["out"])
    opt = make(which, learning_rate=learning_rate)
    loss = lambda p: optax.losses.softmax_cross_entropy_with_integer_labels(
        forward(p, x, width_mult)[0], y).mean()
    logits0, (h10, h20) = forward(params, x, width_mult)

    def step(carry, _):
      params, state = carry
      updates, state = opt.update(jax.grad(loss)(params), state, params)
      params = optax.apply_updates(params, updates)
      logits, (h1, h2) = forward(params, x, width_mult)
      change = jnp.stack([jnp.mean(jnp.abs(a - b))
                          for a, b in ((h1, h10), (h2, h20), (logits, logits0))])
      return (params, state), change

    return jax.lax.scan(step, (params, opt.init(params)), None, length=steps)[1]

  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  which = jnp.asarray([names.index(name) for name, _ in settings])
  width_mult = jnp.asarray([width_mults[name] for name, _ in settings], jnp.float32)
  lrs = jnp.asarray([lr for _, lr in settings], jnp.float32)
  per_setting = jax.vmap(jax.vmap(run, in_axes=(0, None, None, None)), in_axes=(None, 0, 0, 0))
  return np.asarray(jax.jit(per_setting)(keys, which, width_mult, lrs))


def slope(widths, values) -> float:
  return float(np.polyfit(np.log(widths), np.log(np.maximum(values, 1e-30)), 1)[0])


def lr_sweep(name: str, width: int, data, lrs, seeds, steps: int, eval_every: int):
  base, width_mult, make = parametrization(name, width)
  loss_fn, eval_fn = classifier(lambda p, x: forward(p, x, width_mult)[0])
  result = fit(loss_fn, lambda key: init_mlp(key, width, base), make, data, steps=steps,
               batch_size=64, configs=grid(learning_rate=list(lrs)), seeds=list(seeds),
               eval_every=eval_every, eval_fn=eval_fn, progress=False)
  final = result.final("train_loss").mean(axis=1)
  return np.where(np.isfinite(final), final, np.inf)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(seed=seed)
  x = jnp.asarray(data.x_train[:COORD_BATCH])
  y = jnp.asarray(data.y_train[:COORD_BATCH])
  widths = (64, 128) if quick else WIDTHS
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  steps = 2 if quick else COORD_STEPS
  start = time.perf_counter()

  # Tensor Programs IV: the coordinate check.
  # Per width, one program: μP at lr 0.1; SP at 0.1 and at 0.1 * 64 / width.
  runs = [coordinate_changes(w, (("mup", COORD_LR), ("sp", COORD_LR),
                                 ("sp", COORD_LR * BASE / w)), x, y, seeds, steps)
          for w in widths]
  last = lambda i: np.stack([r[i].mean(axis=0)[-1] for r in runs])  # (widths, 3)
  changes = {"mup": last(0), "sp": last(1), "sp_stable_lr": last(2)}
  slopes = {name: {layer: slope(widths, c[:, i]) for i, layer in enumerate(("h1", "h2", "logits"))}
            for name, c in changes.items()}
  mup_ok = all(abs(slopes["mup"][h]) <= MUP_SLOPE_MAX for h in ("h1", "h2"))
  sp_ok = all(slopes["sp_stable_lr"][h] <= SP_SLOPE_MAX for h in ("h1", "h2"))

  # Tensor Programs V: the learning-rate transfer sweep.
  # (The smoke run skips it: its training programs alone take longer than the 5 s budget.)
  sweep_widths = () if quick else SWEEP_WIDTHS
  lrs = SWEEP_LRS
  sweep_steps, eval_every, sweep_seeds = 400, 200, [seed, seed + 1]
  losses = {name: np.reshape([lr_sweep(name, w, data, lrs, sweep_seeds, sweep_steps, eval_every)
                              for w in sweep_widths], (len(sweep_widths), len(lrs)))
            for name in ("mup", "sp")}
  best = {name: [int(np.argmin(row)) for row in loss] for name, loss in losses.items()}
  spread = {name: max(b, default=0) - min(b, default=0) for name, b in best.items()}
  transfer_ok = spread["mup"] <= 1 and spread["sp"] >= 2
  wall_time = time.perf_counter() - start

  fig, axes = new_figure(ncols=3)
  styles = {"mup": "o-", "sp": "s--", "sp_stable_lr": "^:"}
  for name, c in changes.items():
    axes[0, 0].plot(widths, c[:, 1], styles[name], label=name)
    axes[0, 1].plot(widths, c[:, 2], styles[name], label=name)
  axes[0, 0].set(xscale="log", yscale="log", xlabel="width", ylabel="mean |Δh2|",
                 title=f"hidden features after {steps} SGD steps")
  axes[0, 1].set(xscale="log", yscale="log", xlabel="width", ylabel="mean |Δlogits|",
                 title="outputs")
  for name, style in (("mup", "-"), ("sp", "--")):
    for w, row in zip(sweep_widths, losses[name]):
      axes[0, 2].plot(lrs, np.where(np.isfinite(row), row, np.nan), style,
                      label=f"{name} w={w}")
  axes[0, 2].set(xscale="log", yscale="log", xlabel="SGD learning rate",
                 ylabel="final train loss", title="lr transfer (TP5)")
  for ax in axes[0]:
    if ax.get_legend_handles_labels()[0]:  # the smoke run has no sweep
      ax.legend(fontsize=7)

  fmt = lambda name: ", ".join(f"{h} {slopes[name][h]:+.2f}" for h in ("h1", "h2", "logits"))
  measured = (
      f"Log-log slope of the mean |change| of the coordinates vs width ({widths[0]}..{widths[-1]})"
      f" after {steps} SGD steps: muP {fmt('mup')}; SP same lr {fmt('sp')}; SP lr*64/width "
      f"{fmt('sp_stable_lr')}. muP hidden features O(1) (|slope| <= {MUP_SLOPE_MAX}): {mup_ok}; "
      f"SP (stable lr) hidden features vanish (slope <= {SP_SLOPE_MAX}): {sp_ok}. "
      f"Tensor Programs V lr transfer (widths {sweep_widths}): best lr per width muP "
      f"{[lrs[i] for i in best['mup']]}, SP {[lrs[i] for i in best['sp']]}; muP optimum moves "
      f"{spread['mup']} grid steps, SP {spread['sp']}: transfer {transfer_ok}."
  )
  return save_result(
      "mup_coordinate_check", out,
      claim=("TP4: under SP (at a width-stable lr) hidden features stop moving as the width grows "
             "(no feature learning in the limit), under muP they move by Theta(1). [TP5's "
             "muTransfer claim, reported separately: the optimal lr is stable across widths "
             "under muP.]"),
      measured=measured,
      claim_held=mup_ok and sp_ok,
      config={"model": "tanh MLP 64-w-w-10", "base_width": BASE, "widths": list(widths),
              "coord_lr": COORD_LR, "coord_steps": steps, "coord_batch": COORD_BATCH,
              "optimizer": "SGD (MuSGD rules for muP)", "sweep_widths": list(sweep_widths),
              "sweep_learning_rates": list(lrs), "sweep_steps": sweep_steps,
              "sweep_batch_size": 64},
      metrics={
          "coordinate_change": {name: {"h1": c[:, 0], "h2": c[:, 1], "logits": c[:, 2]}
                                for name, c in changes.items()},
          "slopes": slopes,
          "mup_features_order_one": mup_ok,
          "sp_features_vanish": sp_ok,
          "tp5_final_train_loss": {name: np.where(np.isfinite(v), v, -1.0)
                                   for name, v in losses.items()},
          "tp5_best_learning_rate": {name: [lrs[i] for i in b] for name, b in best.items()},
          "tp5_optimum_spread_grid_steps": spread,
          "tp5_lr_transfer_held": transfer_ok,
      },
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
