"""Mix-LN vs Pre-LN vs Post-LN: how much do the deep blocks of a 12-block transformer do?

Tests the claims of arXiv:2412.13795 at CPU scale: Pre-LN gives its deep blocks small gradients
and leaves them nearly the identity (removable), Post-LN gives its shallow blocks vanishing
gradients, and Mix-LN (Post-LN for the first 25% of the blocks, Pre-LN after) has more uniform
gradient norms across depth, more useful deep blocks and a lower loss.

Setup: modular addition (a + b) mod 31 written as the three tokens "a b =", 70% of the table for
training (673 / 288 pairs), a 12-block LLaMA-style transformer from `jaxlearn.nn.mix_ln`
(RMSNorm, causal attention with 4 heads, SwiGLU MLP, width 32, MLP width 64, learned token and
position embeddings, a dense read-out of the last position; N(0, 0.02^2) kernels). Pre-LN is
post_fraction 0, Post-LN 1, Mix-LN 0.25 (3 Post-LN blocks, the official 12-block setting). The
official 71M recipe's optimizer: Adam lr 1e-3, no weight decay, no clipping, 10% linear warm-up
then cosine decay to 10%; batch 64, 1200 steps, 2 seeds (nothing tuned). Measured, per block:
  * the gradient norm of the block's parameters, averaged over training (and at step 0);
  * the angular distance arccos(cos(h_in, h_out)) / pi between the block's input and output
    hidden states, averaged over the test tokens (the official utils/angular_distance.py, from
    ShortGPT);
  * the increase of the test loss when the block is removed (official layer_remove.py).
The claim is counted as held if Mix-LN has (1) the lowest final test loss, (2) the lowest
coefficient of variation of the per-block gradient norms across depth, and (3) a larger mean
loss increase than Pre-LN when one of its deeper half of blocks is removed.
Writes mix_ln_depth.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import modular_arithmetic
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.nn import linen as jnn_linen
from jaxlearn.nn import mix_ln_block, mix_ln_layer_types, rms_normalize
from jaxlearn.train import experiment_main, new_figure, save_result

P, TRAIN_FRACTION = 31, 0.7
LAYERS, WIDTH, HEADS, HIDDEN = 12, 32, 4, 64
LR, BATCH, STEPS = 1e-3, 64, 1200
FRACTIONS = {"pre_ln": 0.0, "mix_ln": 0.25, "post_ln": 1.0}
EPS = 1e-6


def _init(key, num_layers):
  keys = jax.random.split(key, 4)
  # The parameters do not depend on the block types (post_fraction): one layout for all three.
  stack = jnn_linen.MixLNTransformer(num_layers, HEADS, HIDDEN)
  tokens = jnp.zeros((1, 3, WIDTH))
  return {
      "embed": 0.02 * jax.random.normal(keys[0], (P + 1, WIDTH)),
      "position": 0.02 * jax.random.normal(keys[1], (3, WIDTH)),
      "stack": stack.init(keys[2], tokens)["params"],
      "readout": 0.02 * jax.random.normal(keys[3], (WIDTH, P)),
  }


def _embed(params, pairs):
  tokens = jnp.concatenate([pairs, jnp.full((len(pairs), 1), P, pairs.dtype)], axis=1)
  return params["embed"][tokens] + params["position"]


def _hidden_states(params, pairs, layer_types, skip=None):
  """Hidden states before every block and after the last one; block `skip` removed."""
  stack = params["stack"]
  h = _embed(params, pairs)
  states = [h]
  for index, kind in enumerate(layer_types):
    if index != skip:
      block = {name: value[index] for name, value in stack.items() if name != "final_norm"}
      h = mix_ln_block(h, block, post_ln=kind == "post", num_heads=HEADS, epsilon=EPS)
    states.append(h)
  return states


def _loss(params, pairs, labels, layer_types, skip=None):
  h = _hidden_states(params, pairs, layer_types, skip)[-1]
  logits = rms_normalize(h[:, -1], params["stack"]["final_norm"], epsilon=EPS) @ params["readout"]
  loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def _block_grad_norms(grads):
  stack = {k: v for k, v in grads["stack"].items() if k != "final_norm"}
  squares = sum(jnp.sum(jnp.square(v).reshape(v.shape[0], -1), axis=1) for v in stack.values())
  return jnp.sqrt(squares)


def _train(seeds, data, layer_types, steps):
  """Every seed's run in one program: final params, per-block gradient norms (mean over the
  steps, and at step 0) and the batch losses, each with a leading seed axis."""
  optimizer = optax.adam(optax.warmup_cosine_decay_schedule(
      0.0, LR, max(1, steps // 10), steps, LR / 10))
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

  def step(carry, key):
    params, opt_state = carry
    idx = jax.random.randint(key, (BATCH,), 0, len(x))
    (loss, _), grads = jax.value_and_grad(_loss, has_aux=True)(params, x[idx], y[idx],
                                                              layer_types)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), (loss, _block_grad_norms(grads))

  def train(seed):
    init_key, data_key = jax.random.split(jax.random.key(seed))
    params = _init(init_key, len(layer_types))
    (params, _), (losses, norms) = jax.lax.scan(
        step, (params, optimizer.init(params)), jax.random.split(data_key, steps))
    return params, norms.mean(axis=0), norms[0], losses

  return jax.jit(jax.vmap(train))(jnp.asarray(seeds))


def _angular_distances(states):
  out = []
  for before, after in zip(states[:-1], states[1:]):
    cos = jnp.sum(before * after, -1) / (
        jnp.linalg.norm(before, axis=-1) * jnp.linalg.norm(after, axis=-1))
    out.append(jnp.mean(jnp.arccos(jnp.clip(cos, -1.0, 1.0)) / jnp.pi))
  return jnp.stack(out)


def _analyze(params, data, layer_types):
  """Per seed: test and train loss / accuracy, the test-loss increase when each block is removed,
  and each block's angular distance on the test tokens (one program for every seed)."""
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

  def analyze(params):
    test_loss, test_acc = _loss(params, x_test, y_test, layer_types)
    train_loss, train_acc = _loss(params, x_train, y_train, layer_types)
    removal = jnp.stack([_loss(params, x_test, y_test, layer_types, skip)[0] - test_loss
                         for skip in range(len(layer_types))])
    angular = _angular_distances(_hidden_states(params, x_test, layer_types))
    return test_loss, test_acc, train_loss, train_acc, removal, angular

  return [np.asarray(v) for v in jax.jit(jax.vmap(analyze))(params)]


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = modular_arithmetic(P, operation="add", train_fraction=TRAIN_FRACTION, seed=seed)
  layers = 2 if quick else LAYERS
  steps = 4 if quick else STEPS
  seeds = [seed] if quick else [seed, seed + 1]
  fractions = {"mix_ln": 0.5} if quick else FRACTIONS
  start = time.perf_counter()
  results = {}
  for name, fraction in fractions.items():
    layer_types = mix_ln_layer_types(layers, fraction)
    params, grad_mean, grad_init, losses = _train(seeds, data, layer_types, steps)
    analysis = _analyze(params, data, layer_types)
    runs = []
    for i in range(len(seeds)):
      test_loss, test_acc, train_loss, train_acc, removal, angular = (a[i] for a in analysis)
      runs.append({"test_loss": float(test_loss), "test_accuracy": float(test_acc),
                   "train_loss": float(train_loss), "train_accuracy": float(train_acc),
                   "grad_norm_mean": np.asarray(grad_mean[i]),
                   "grad_norm_init": np.asarray(grad_init[i]), "removal_loss_increase": removal,
                   "angular_distance": angular,
                   "loss_curve": np.asarray(losses[i])[:: max(1, steps // 100)]})
    mean = lambda key: np.mean([np.asarray(r[key]) for r in runs], axis=0)  # noqa: E731
    grad = mean("grad_norm_mean")
    removal = mean("removal_loss_increase")
    results[name] = {
        "post_fraction": fraction, "layer_types": list(layer_types),
        "test_loss": float(mean("test_loss")), "test_accuracy": float(mean("test_accuracy")),
        "train_loss": float(mean("train_loss")), "train_accuracy": float(mean("train_accuracy")),
        "grad_norm_mean": grad, "grad_norm_init": mean("grad_norm_init"),
        "grad_norm_cv": float(np.std(grad) / np.mean(grad)),
        "angular_distance": mean("angular_distance"),
        "removal_loss_increase": removal,
        "deep_half_removal_increase": float(np.mean(removal[layers // 2:])),
        "runs": runs,
    }
  wall_time = time.perf_counter() - start

  held, checks = None, {}
  if not quick:
    mix, pre, post = results["mix_ln"], results["pre_ln"], results["post_ln"]
    checks = {
        "lowest_test_loss": mix["test_loss"] < min(pre["test_loss"], post["test_loss"]),
        "most_uniform_grad_norms": mix["grad_norm_cv"] < min(pre["grad_norm_cv"],
                                                             post["grad_norm_cv"]),
        "deep_blocks_more_useful_than_pre_ln": (mix["deep_half_removal_increase"]
                                                > pre["deep_half_removal_increase"]),
    }
    held = all(checks.values())

  fig, axes = new_figure(ncols=4, width=4.2)
  blocks = np.arange(1, layers + 1)
  for name, r in results.items():
    axes[0, 0].plot(blocks, r["grad_norm_mean"], marker=".", label=name)
    axes[0, 1].plot(blocks, r["angular_distance"], marker=".", label=name)
    axes[0, 2].plot(blocks, r["removal_loss_increase"], marker=".", label=name)
    curve = np.mean([run["loss_curve"] for run in r["runs"]], axis=0)
    axes[0, 3].plot(np.linspace(0, steps, len(curve)), curve, label=name)
  axes[0, 0].set(xlabel="block", ylabel="gradient norm (mean over training)", yscale="log")
  axes[0, 1].set(xlabel="block", ylabel="angular distance in/out")
  axes[0, 2].set(xlabel="block removed", ylabel="test loss increase", yscale="symlog")
  axes[0, 3].set(xlabel="step", ylabel="training loss (batch)", yscale="log")
  for ax in axes[0]:
    ax.legend(fontsize=7)

  measured = "; ".join(
      f"{n}: test loss {r['test_loss']:.3f} (acc {r['test_accuracy']:.3f}), train loss "
      f"{r['train_loss']:.3f}, grad-norm CV across blocks {r['grad_norm_cv']:.2f}, mean loss "
      f"increase removing a deep-half block {r['deep_half_removal_increase']:.3f}"
      for n, r in results.items()) + f" (mean of {len(seeds)} seeds)." + (
      " Checks: " + ", ".join(f"{k} {v}" for k, v in checks.items()) + "." if checks else "")
  return save_result(
      "mix_ln_depth", out,
      claim=("Mix-LN gives more uniform gradient norms across depth than Pre-LN and Post-LN, "
             "makes the deep layers contribute more than Pre-LN does, and reaches a lower loss."),
      measured=measured, claim_held=held,
      config={"data": f"(a + b) mod {P}, tokens 'a b =', train fraction {TRAIN_FRACTION}",
              "model": f"{layers} blocks, width {WIDTH}, {HEADS} heads, SwiGLU {HIDDEN}",
              "post_fractions": fractions, "optimizer": "Adam, warm-up 10% + cosine to 10%",
              "lr": LR, "batch_size": BATCH, "steps": steps},
      metrics={"test_loss": {n: r["test_loss"] for n, r in results.items()},
               "grad_norm_cv": {n: r["grad_norm_cv"] for n, r in results.items()},
               "deep_half_removal_increase": {n: r["deep_half_removal_increase"]
                                              for n, r in results.items()},
               "checks": checks,
               "runs": {n: {k: v for k, v in r.items() if k != "runs"}
                        for n, r in results.items()}},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
