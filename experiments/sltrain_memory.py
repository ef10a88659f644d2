"""SLTrain vs full-rank and low-rank MLPs at matched parameter count (arXiv:2406.02214).

The paper's claim: parametrizing weights as low-rank plus a fixed random sparse matrix (SLTrain)
reaches quality comparable to full-rank training with far less parameter and optimizer memory,
and clearly better than low-rank training with as many parameters. Here, at CPU scale: MLPs
40-h-h-10 on MNIST-1D (h = 256; 4000 training sequences). The two hidden layers are dense
("full"), SLTrain (rank 8, density 0.03, alpha 32, the 60M script's delta and alpha,
`jaxlearn.nn.sltrain_linear` with its official initialization) or low-rank only (the same
layer without the sparse part, B = 0 at first, each layer's rank chosen to match SLTrain's
parameter count); the head is dense in all three. Adam (weight decay 0, as the official script),
batch 64, the learning rate the best of {1e-3, 3e-3} by final training loss (mean of two seeds).
Memory: parameter and Adam-state bytes (float32), and XLA's argument bytes of one compiled
training step (`jaxlearn.diagnostics.compiled_memory`). SLTrain's forward materializes the kernel
as a temporary, as the official kernel does: activation memory is not reduced, only parameters
and optimizer state.

Held (fixed before running) if SLTrain's final test loss is below the low-rank model's, at most
10% above the full model's, and its parameter + optimizer bytes are at most half the full
model's.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments._shared import fast_compile_when_quick
from jaxlearn.data import load_mnist1d
from jaxlearn.diagnostics import compiled_memory
from jaxlearn.nn import init_sltrain, sltrain_linear, sparse_support
from jaxlearn.train import experiment_main, new_figure, save_result

WIDTH, RANK, DENSITY, ALPHA = 256, 8, 0.03, 32.0
LEARNING_RATES = (1e-3, 3e-3)
STEPS, BATCH = 3000, 64
KINDS = ("full", "low_rank", "sltrain")


def layer_shapes(d_in, width):
  return ((d_in, width), (width, width))


def low_rank_rank(d_in, d_out):
  """The rank whose factors have as many parameters as SLTrain's factors and values."""
  return RANK + round(int(DENSITY * d_in * d_out) / (d_in + d_out))


def make_model(kind: str, d_in: int, width: int, classes: int):
  """(init(key) -> params, apply(params, x) -> logits)."""
  shapes = layer_shapes(d_in, width)
  supports = [sparse_support(i, o, DENSITY, seed=n) for n, (i, o) in enumerate(shapes)]

  def init(key):
    keys = jax.random.split(key, 3)
    params = {}
    for n, (k, (i, o)) in enumerate(zip(keys, shapes)):
      if kind == "full":
        bound = 1.0 / math.sqrt(i)  # PyTorch Linear, as the official full-rank baseline
        params[f"l{n}"] = {"kernel": jax.random.uniform(k, (i, o), minval=-bound, maxval=bound),
                           "bias": jnp.zeros(o)}
      else:
        rank = RANK if kind == "sltrain" else low_rank_rank(i, o)
        p = init_sltrain(k, i, o, rank=rank, density=DENSITY)
        if kind == "low_rank":
          del p["values"]
        params[f"l{n}"] = p
    params["out"] = {"kernel": jax.random.normal(keys[2], (width, classes)) / math.sqrt(width),
                     "bias": jnp.zeros(classes)}
    return params

  def layer(n, p, x):
    if kind == "full":
      return x @ p["kernel"] + p["bias"]
    scaling = ALPHA / p["a"].shape[1]
    if kind == "low_rank":
      return scaling * (x @ p["a"]) @ p["b"] + p["bias"]
    return sltrain_linear(x, p["a"], p["b"], p["values"], supports[n], p["bias"], scaling)

  def apply(params, x):
    h = jax.nn.relu(layer(0, params["l0"], x))
    h = jax.nn.relu(layer(1, params["l1"], h))
    return h @ params["out"]["kernel"] + params["out"]["bias"]

  return init, apply


def loss_of(apply):
  return lambda p, x, y: optax.losses.softmax_cross_entropy_with_integer_labels(
      apply(p, x), y).mean()


def train(models, data, learning_rates, seeds, steps):
  """(train loss, test loss, test accuracy), each (models, lrs, seeds), in one program."""
  arrays = [jnp.asarray(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)]

  def one(model, learning_rate, seed, x_train, y_train, x_test, y_test):
    init, apply = model
    loss = loss_of(apply)
    # rbg keys: threefry's hash compiles for seconds in a program this size.
    key = jax.random.key(seed, impl="rbg")
    params = init(jax.random.fold_in(key, 0))
    opt = optax.adam(learning_rate)

    def step(carry, t):
      params, state = carry
      idx = jax.random.randint(jax.random.fold_in(key, t + 1), (BATCH,), 0, x_train.shape[0])
      grads = jax.grad(loss)(params, x_train[idx], y_train[idx])
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
    accuracy = jnp.mean(jnp.argmax(apply(params, x_test), -1) == y_test)
    return jnp.stack([loss(params, x_train, y_train), loss(params, x_test, y_test), accuracy])

  def program(lrs, seeds, *arrays):
    return jnp.stack([jax.vmap(lambda lr: jax.vmap(lambda s: one(m, lr, s, *arrays))(seeds))(lrs)
                      for m in models])

  out = jax.jit(program)(jnp.asarray(learning_rates, jnp.float32), jnp.asarray(seeds), *arrays)
  return np.moveaxis(np.asarray(out), -1, 0)  # (3, models, lrs, seeds)


def memory(model, d_in, compiled: bool):
  """(parameter count, parameter + Adam bytes, XLA argument bytes of one training step or, when
  not `compiled` (the smoke run), None)."""
  init, apply = model
  params = jax.eval_shape(init, jax.random.key(0))
  count = int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))
  opt = optax.adam(1e-3)
  state = jax.eval_shape(opt.init, params)
  state_bytes = sum(p.size * p.dtype.itemsize for p in jax.tree.leaves(state))
  if not compiled:
    return count, int(4 * count + state_bytes), None
  x = jax.ShapeDtypeStruct((BATCH, d_in), jnp.float32)
  y = jax.ShapeDtypeStruct((BATCH,), jnp.int32)

  def step(params, state, x, y):
    grads = jax.grad(loss_of(apply))(params, x, y)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return count, int(4 * count + state_bytes), int(compiled_memory(step, params, state, x, y)
                                                   .argument_bytes)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  start = time.perf_counter()
  data = load_mnist1d(seed=seed, num_samples=500 if quick else 5000)
  d_in, classes = data.x_train.shape[1], data.num_classes
  width = 32 if quick else WIDTH
  lrs = LEARNING_RATES[1:] if quick else LEARNING_RATES
  seeds = [seed] if quick else [seed, seed + 1]
  steps = 10 if quick else STEPS

  models = {kind: make_model(kind, d_in, width, classes) for kind in KINDS}
  # One program per model in the full run (each fully optimized); the smoke run trains all at once.
  groups = [list(models.values())] if quick else [[m] for m in models.values()]
  results = np.concatenate([train(g, data, lrs, seeds, steps) for g in groups], axis=1)
  rows = {}
  for kind, (train_loss, test_loss, accuracy) in zip(KINDS, np.moveaxis(results, 1, 0)):
    count, opt_bytes, argument_bytes = memory(models[kind], d_in, compiled=not quick)
    mean = np.where(np.isfinite(train_loss.mean(1)), train_loss.mean(1), np.inf)
    best = int(np.argmin(mean))
    rows[kind] = {"params": count, "param_and_adam_bytes": opt_bytes,
                  "step_argument_bytes": argument_bytes, "best_learning_rate": lrs[best],
                  "final_train_loss": float(mean[best]),
                  "final_test_loss": float(test_loss[best].mean()),
                  "test_accuracy": float(accuracy[best].mean())}
  if "low_rank" in rows:
    rows["low_rank"]["ranks"] = [low_rank_rank(i, o) for i, o in layer_shapes(d_in, width)]
  wall_time = time.perf_counter() - start

  full, low, sl = rows["full"], rows["low_rank"], rows["sltrain"]
  held = bool(sl["final_test_loss"] < low["final_test_loss"]
              and sl["final_test_loss"] <= 1.1 * full["final_test_loss"]
              and sl["param_and_adam_bytes"] <= 0.5 * full["param_and_adam_bytes"])

  fig, axes = new_figure()
  ax = axes[0, 0]
  for kind, r in rows.items():
    ax.plot(r["param_and_adam_bytes"] / 1024, r["final_test_loss"], "o", label=kind)
  ax.set(xscale="log", xlabel="parameter + Adam state (KiB)", ylabel="final test loss",
         title=f"MLP 40-{width}-{width}-10 on MNIST-1D, {steps} Adam steps")
  ax.legend()

  measured = "; ".join(
      f"{k}: test loss {r['final_test_loss']:.3f}, accuracy {r['test_accuracy']:.3f}, train "
      f"loss {r['final_train_loss']:.3f}, {r['params']} params, "
      f"{r['param_and_adam_bytes'] / 1024:.1f} KiB params+Adam, step arguments "
      f"{(r['step_argument_bytes'] or 0) / 1024:.1f} KiB (lr {r['best_learning_rate']:g})"
      for k, r in rows.items()) + (
      f". SLTrain uses {sl['param_and_adam_bytes'] / full['param_and_adam_bytes']:.1%} of the "
      f"full model's parameter+optimizer memory.")
  if full["final_train_loss"] < sl["final_train_loss"] and full["final_test_loss"] > sl[
      "final_test_loss"]:
    measured += (" Caveat: the criterion compares test losses, and the full model overfits "
                 "(lower train loss, higher test loss), so its test loss is a weak bar; compare "
                 "the test accuracies too.")
  return save_result(
      "sltrain_memory", out,
      claim=("Sparse plus low-rank weights (SLTrain) train to quality comparable to full-rank "
             "weights with much less parameter and optimizer memory, and better than low-rank "
             "weights with as many parameters."),
      measured=measured,
      claim_held=held,
      config={"data": "MNIST-1D", "model": f"MLP 40-{width}-{width}-10", "rank": RANK,
              "density": DENSITY, "alpha": ALPHA, "learning_rates": list(lrs), "steps": steps,
              "batch_size": BATCH, "optimizer": "Adam, weight decay 0",
              "memory_path": "kernel materialized as a temporary (official forward)"},
      metrics={"models": rows},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
