"""Block tensor-train (BTT) vs dense MLPs at matched compute (Compute Better Spent, arXiv:2406.06248).

The paper's claim: replacing the dense layers of an MLP (or transformer) by BTT matrices reaches a
lower training loss than dense layers for the same compute. Here, at CPU scale: MLPs 40-w-w-10 on
MNIST-1D (4000 training sequences), the two hidden layers dense or BTT (rank 1, `jaxlearn.nn.btt`,
the official "all but the last layer" choice), the classification head dense and zero-initialized
(as the official code assumes), dense layers initialized with std 1/sqrt(fan-in). Every model is
trained with Adam for the same number of steps (minibatch 64), so its training compute is
proportional to the FLOPs of one training step, measured by XLA
(`jax.jit(step).lower(...).compile().cost_analysis()['flops']`). Each model's learning rate is
the best of a vmapped grid (lowest final training loss, mean over two seeds). BTT is run with the
official per-core learning-rate multipliers (through `jaxlearn.optim.scale_by_per_leaf`) and
without them.

The claim is counted as held if, at the FLOPs of at least two thirds of the BTT widths that fall
inside the dense models' FLOP range, BTT (with its multipliers) has a lower final training loss
than the dense curve interpolated in log FLOPs (fixed before running).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_mnist1d
from jaxlearn.nn import btt_lr_multipliers, btt_matmul, init_btt
from jaxlearn.optim import scale_by_per_leaf
from jaxlearn.train import experiment_main, new_figure, save_result
from jaxlearn._compile import fast_compile_options

DENSE_WIDTHS = (32, 64, 128, 256)
BTT_WIDTHS = (64, 256, 1024)
LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2)
STEPS = 3000
BATCH = 64
RANK = 1


def dense_layer(key, d_in, d_out):
  return {"kernel": jax.random.normal(key, (d_in, d_out)) / math.sqrt(d_in),
          "bias": jnp.zeros(d_out)}


def make_model(kind: str, width: int, d_in: int, classes: int):
  """(init(key) -> params, apply(params, x) -> logits, lr multipliers or None)."""

  def init(key):
    k1, k2 = jax.random.split(key)
    if kind == "dense":
      hidden = {"l1": dense_layer(k1, d_in, width), "l2": dense_layer(k2, width, width)}
    else:
      hidden = {"l1": init_btt(k1, d_in, width, rank=RANK), "l2": init_btt(k2, width, width,
                                                                           rank=RANK)}
    return {**hidden, "out": {"kernel": jnp.zeros((width, classes)), "bias": jnp.zeros(classes)}}

  def layer(p, x):
    if kind == "dense":
      return x @ p["kernel"] + p["bias"]
    return btt_matmul(x, p["w1"], p["w2"]) + p["bias"]

  def apply(params, x):
    h = jax.nn.relu(layer(params["l1"], x))
    h = jax.nn.relu(layer(params["l2"], h))
    return h @ params["out"]["kernel"] + params["out"]["bias"]

  multipliers = None
  if kind == "btt":
    multipliers = {"l1": btt_lr_multipliers(d_in, width, rank=RANK),
                   "l2": btt_lr_multipliers(width, width, rank=RANK), "out": 1.0}
  return init, apply, multipliers


def optimizer(learning_rate, multipliers):
  if multipliers is None:
    return optax.adam(learning_rate)
  # After Adam's normalization, before the learning rate: PyTorch's per-group lr.
  return optax.chain(optax.scale_by_adam(), scale_by_per_leaf(multipliers=multipliers),
                     optax.scale_by_learning_rate(learning_rate))


def loss_of(apply):
  return lambda p, x, y: optax.losses.softmax_cross_entropy_with_integer_labels(
      apply(p, x), y).mean()


def train_flops(init, apply, data, compiler_options=None) -> float:
  """XLA's FLOPs of one training step's forward and backward pass (minibatch 64)."""
  params = jax.eval_shape(init, jax.random.key(0))
  x = jax.ShapeDtypeStruct((BATCH, data.x_train.shape[1]), jnp.float32)
  y = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
  compiled = jax.jit(jax.value_and_grad(loss_of(apply)),
                     compiler_options=compiler_options).lower(params, x, y).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


def train(models, data, learning_rates, seeds, steps, compiler_options=None):
  """Final full-train-set loss, (models, lrs, seeds): every model, lr and seed in ONE program."""
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

  def one(model, learning_rate, seed):
    init, apply, multipliers = model
    key = jax.random.key(seed)
    params = init(jax.random.fold_in(key, 0))
    opt = optimizer(learning_rate, multipliers)
    loss = loss_of(apply)

    def step(carry, t):
      params, state = carry
      idx = jax.random.randint(jax.random.fold_in(key, t + 1), (BATCH,), 0, x_train.shape[0])
      grads = jax.grad(loss)(params, x_train[idx], y_train[idx])
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    return loss(params, x_train, y_train)

  def program(lrs, seed_array):
    return jnp.stack([
        jax.vmap(lambda lr: jax.vmap(lambda s: one(m, lr, s))(seed_array))(lrs) for m in models])

  out = jax.jit(program, compiler_options=compiler_options)(
      jnp.asarray(learning_rates, jnp.float32), jnp.asarray(seeds))
  return np.asarray(out)


def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_mnist1d(seed=seed, num_samples=500 if quick else 5000)
  d_in, classes = data.x_train.shape[1], data.num_classes
  dense_widths, btt_widths = ((32,), (64,)) if quick else (DENSE_WIDTHS, BTT_WIDTHS)
  lrs = LEARNING_RATES[1:2] if quick else LEARNING_RATES
  seeds = [seed] if quick else [seed, seed + 1]
  steps = 10 if quick else STEPS
  options = fast_compile_options(quick)
  start = time.perf_counter()

  configs = ([("dense", w, True) for w in dense_widths] + [("btt", w, True) for w in btt_widths]
             + [("btt", w, False) for w in btt_widths])
  label = lambda kind, w, mult: f"{kind}{'' if mult or kind == 'dense' else '_no_lr_mult'}_{w}"
  models, rows, flops = [], {}, {}
  for kind, width, use_mult in configs:
    init, apply, multipliers = make_model(kind, width, d_in, classes)
    models.append((init, apply, multipliers if use_mult else None))
    params = jax.eval_shape(init, jax.random.key(0))
    if (kind, width) not in flops:  # the lr multipliers change no FLOP
      flops[kind, width] = train_flops(init, apply, data, options)
    rows[label(kind, width, use_mult)] = {
        "kind": kind, "width": width, "lr_multipliers": use_mult and kind == "btt",
        "params": int(sum(math.prod(p.shape) for p in jax.tree.leaves(params))),
        "train_step_flops": flops[kind, width],
    }
  # One program per model in the full run (each fully optimized); the smoke run trains all at once.
  groups = [models] if quick else [[m] for m in models]
  losses = np.concatenate([train(g, data, lrs, seeds, steps, options) for g in groups])  # (M, lrs, seeds)
  for name, loss in zip(rows, losses):
    mean = np.where(np.isfinite(loss.mean(axis=1)), loss.mean(axis=1), np.inf)
    best = int(np.argmin(mean))
    rows[name].update(best_learning_rate=lrs[best], final_train_loss=float(mean[best]),
                      final_train_loss_per_lr=mean)
  wall_time = time.perf_counter() - start

  dense = sorted((r["train_step_flops"], r["final_train_loss"]) for r in rows.values()
                 if r["kind"] == "dense")
  dense_flops, dense_loss = (np.log(np.asarray(v)) for v in zip(*dense))

  def versus_dense(with_mult: bool):
    """(BTT loss, interpolated dense loss) at each BTT width inside the dense FLOP range."""
    pairs = {}
    for name, r in rows.items():
      if r["kind"] == "btt" and r["lr_multipliers"] == with_mult:
        f = math.log(r["train_step_flops"])
        if dense_flops[0] <= f <= dense_flops[-1]:
          pairs[name] = (r["final_train_loss"], float(np.exp(np.interp(f, dense_flops,
                                                                          dense_loss))))
    return pairs

  matched = versus_dense(True)
  matched_no_mult = versus_dense(False)
  wins = sum(b < d for b, d in matched.values())
  held = bool(matched) and wins >= math.ceil(2 * len(matched) / 3)

  fig, axes = new_figure()
  ax = axes[0, 0]
  for kind, mult, style in (("dense", True, "o-"), ("btt", True, "s-"), ("btt", False, "^--")):
    points = sorted((r["train_step_flops"], r["final_train_loss"]) for r in rows.values()
                    if r["kind"] == kind and (kind == "dense" or r["lr_multipliers"] == mult))
    ax.plot(*zip(*points), style, label=kind + ("" if mult or kind == "dense" else " (no lr mult)"))
  ax.set(xscale="log", yscale="log", xlabel="FLOPs per training step (XLA)",
         ylabel="final train loss", title=f"MLP on MNIST-1D, {steps} Adam steps")
  ax.legend()

  fmt = lambda pairs: "; ".join(f"{n}: {b:.3g} vs dense {d:.3g}" for n, (b, d) in pairs.items())
  at_edge = [n for n, r in rows.items() if r["best_learning_rate"] in (lrs[0], lrs[-1])]
  measured = (
      f"Final training loss at matched FLOPs per step (dense interpolated in log FLOPs): "
      f"{fmt(matched) or 'no BTT width inside the dense FLOP range'}. BTT lower at {wins} of "
      f"{len(matched)}. Without the per-core lr multipliers: {fmt(matched_no_mult)}. "
      + ", ".join(f"{n} {r['train_step_flops']:.3g} FLOPs/{r['params']} params"
                  for n, r in rows.items()) + "."
      + (f" Best learning rate at the edge of the grid for: {', '.join(at_edge)}." if at_edge
         else "")
  )
  return save_result(
      "btt_flops_matched", out,
      claim=("BTT layers reach a lower training loss than dense layers at equal training "
             "compute."),
      measured=measured,
      claim_held=held,
      config={"data": "MNIST-1D", "model": "MLP 40-w-w-10, hidden layers dense or BTT",
              "btt_rank": RANK, "dense_widths": list(dense_widths),
              "btt_widths": list(btt_widths), "learning_rates": list(lrs), "steps": steps,
              "batch_size": BATCH, "optimizer": "Adam"},
      metrics={"models": rows, "btt_vs_dense": {n: {"btt": b, "dense": d}
                                                for n, (b, d) in matched.items()},
               "btt_no_lr_mult_vs_dense": {n: {"btt": b, "dense": d}
                                           for n, (b, d) in matched_no_mult.items()},
               "btt_wins": wins, "best_learning_rate_at_grid_edge": at_edge},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
