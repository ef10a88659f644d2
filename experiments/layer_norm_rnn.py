"""Layer-normalized GRU vs GRU on MNIST-1D read as a sequence, at batch sizes 1 and 32.

Tests the headline claim of arXiv:1607.06450 at CPU scale: layer normalization substantially
reduces the training time of recurrent networks, and (having no batch statistics) applies at any
batch size, batch size 1 included.

Setup: MNIST-1D (4000 train / 1000 test) read as a sequence of 40 scalars. Every scalar goes
through the same learned Dense(16) + tanh (a layer-normalized projection of a single scalar would
keep only its sign), then a recurrent layer of 32 units, whose final state feeds a Dense read-out.
Recurrent layer: the paper's LN-GRU (`jaxlearn.nn.linen.LNGRU`) or the same GRU without the LNs
(every LN(a; α, β) replaced by a + β, same parameters otherwise, same initialization). Adam over
learning rates {1e-3, 3e-3}, 2 seeds, every run vmapped by `jaxlearn.train.fit`; batch size 32 for
1000 steps (8 epochs) and batch size 1 for 2000 steps (half an epoch). Test accuracy (1000
examples) every 1/10 of the run.

Measured, per batch size and variant at its best learning rate (highest final mean test
accuracy): the test-accuracy curve, and the number of steps the LN-GRU needs to reach the plain
GRU's final test accuracy. Criterion fixed before the run: the claim is counted as held if, at
both batch sizes, the LN-GRU reaches the GRU's final accuracy within half of the steps. Writes
layer_norm_rnn.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_mnist1d
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.nn import linen as jnn_linen
from jaxlearn.train import experiment_main, fit, grid, new_figure, save_result

EMBED, HIDDEN = 16, 32
LEARNING_RATES = (1e-3, 3e-3)
RUNS = {32: 1000, 1: 2000}  # batch size -> steps
NUM_EVALS = 10
EVAL_EXAMPLES = 1000  # accuracy on the test set (1000) and on the first 1000 training examples


class PlainGRU(linen.Module):
  """The LN-GRU's equations with every LN(a; α, β) replaced by a + β (a GRU with biases)."""

  hidden_features: int

  @linen.compact
  def __call__(self, inputs):
    hidden, features = self.hidden_features, inputs.shape[-1]
    kernel, recurrent = jax.nn.initializers.lecun_normal(), jax.nn.initializers.orthogonal()

    def blocks(key, shape, dtype=jnp.float32):
      keys = jax.random.split(key, shape[-1] // hidden)
      return jnp.concatenate([recurrent(k, (shape[0], hidden), dtype) for k in keys], -1)

    w_gates = self.param("gate_input_kernel", kernel, (features, 2 * hidden))
    u_gates = self.param("gate_recurrent_kernel", blocks, (hidden, 2 * hidden))
    w_cand = self.param("candidate_input_kernel", kernel, (features, hidden))
    u_cand = self.param("candidate_recurrent_kernel", blocks, (hidden, hidden))
    zeros = jax.nn.initializers.zeros
    b_gates = self.param("gate_bias", zeros, (2 * hidden,))
    b_cand_in = self.param("candidate_input_bias", zeros, (hidden,))
    b_cand_rec = self.param("candidate_recurrent_bias", zeros, (hidden,))

    gate_in = inputs @ w_gates + b_gates  # every step at once
    cand_in = inputs @ w_cand + b_cand_in

    def step(h, terms):
      g, c = terms
      z, r = jnp.split(g + h @ u_gates, 2, axis=-1)
      h_hat = jnp.tanh(c + jax.nn.sigmoid(r) * (h @ u_cand + b_cand_rec))
      h = (1 - jax.nn.sigmoid(z)) * h + jax.nn.sigmoid(z) * h_hat
      return h, h

    h0 = jnp.zeros((*inputs.shape[:-2], hidden), inputs.dtype)
    _, hs = jax.lax.scan(step, h0, (jnp.moveaxis(gate_in, -2, 0), jnp.moveaxis(cand_in, -2, 0)))
    return jnp.moveaxis(hs, 0, -2)


class SequenceClassifier(linen.Module):
  layer_norm: bool
  embed: int = EMBED
  hidden: int = HIDDEN
  num_classes: int = 10

  @linen.compact
  def __call__(self, x):  # x: (batch, 40)
    e = jnp.tanh(linen.Dense(self.embed)(x[..., None]))  # (batch, 40, embed)
    rnn = jnn_linen.LNGRU(self.hidden) if self.layer_norm else PlainGRU(self.hidden)
    return linen.Dense(self.num_classes)(rnn(e)[..., -1, :])


def _model_fns(model: SequenceClassifier, length: int):
  def init(key):
    return model.init(key, jnp.zeros((1, length)))["params"]

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def eval_fn(params, x, y):
    x, y = x[:EVAL_EXAMPLES], y[:EVAL_EXAMPLES]  # the test set whole; a fixed part of train
    logits = model.apply({"params": params}, x)
    return {
        "loss": optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
    }

  return init, loss_fn, eval_fn


def _first_step_reaching(steps: np.ndarray, accuracy: np.ndarray, target: float) -> int | None:
  reached = np.nonzero(accuracy >= target)[0]
  return int(steps[reached[0]]) if reached.size else None


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  # Quick: equal train and test sizes, so that one evaluation program serves both.
  if quick:
    data = load_mnist1d(seed=seed, num_samples=100, train_split=0.5)
  else:
    data = load_mnist1d(seed=seed)
  length = data.x_train.shape[1]
  runs = {32: 10} if quick else RUNS
  num_evals = 1 if quick else NUM_EVALS
  learning_rates = LEARNING_RATES[:1] if quick else LEARNING_RATES
  seeds = [seed] if quick else [seed, seed + 1]
  hidden = 8 if quick else HIDDEN
  # The smoke run trains the LN-GRU only (each variant's programs compile for seconds).
  variants = (("ln_gru", True),) if quick else (("gru", False), ("ln_gru", True))

  start = time.perf_counter()
  results, curves = {}, {}
  for batch_size, steps in runs.items():
    for name, layer_norm in variants:
      init, loss_fn, eval_fn = _model_fns(SequenceClassifier(layer_norm, hidden=hidden), length)
      result = fit(
          loss_fn, init, lambda learning_rate: optax.adam(learning_rate), data, steps=steps,
          eval_every=steps // num_evals, batch_size=batch_size,
          configs=grid(learning_rate=learning_rates), seeds=seeds, eval_fn=eval_fn,
          progress=False, desc=f"{name} b{batch_size}",
      )
      accuracy = result.history["test_accuracy"].mean(axis=1)  # (lr, evals)
      best = int(np.argmax(accuracy[:, -1]))
      key = f"{name}_b{batch_size}"
      results[key] = {
          "batch_size": batch_size, "steps": steps,
          "learning_rate": learning_rates[best],
          "final_test_accuracy": float(accuracy[best, -1]),
          "final_test_accuracy_per_lr": accuracy[:, -1],
          "final_train_loss": float(result.final("train_loss")[best].mean()),
          "test_accuracy_curve": accuracy[best],
      }
      curves[key] = (result.eval_steps, accuracy[best])
  wall_time = time.perf_counter() - start

  speedups = {}
  for batch_size, steps in runs.items() if not quick else ():
    target = results[f"gru_b{batch_size}"]["final_test_accuracy"]
    eval_steps, ln_accuracy = curves[f"ln_gru_b{batch_size}"]
    reached = _first_step_reaching(eval_steps, ln_accuracy, target)
    speedups[batch_size] = {"gru_final_accuracy": target, "ln_gru_steps_to_it": reached,
                            "steps": steps,
                            "fraction_of_steps": None if reached is None else reached / steps}
  held = None if quick else all(
      s["fraction_of_steps"] is not None and s["fraction_of_steps"] <= 0.5
      for s in speedups.values())

  fig, axes = new_figure(ncols=len(runs))
  for col, (batch_size, steps) in enumerate(runs.items()):
    ax = axes[0, col]
    for name, _ in variants:
      key = f"{name}_b{batch_size}"
      eval_steps, accuracy = curves[key]
      ax.plot(eval_steps, accuracy, marker=".",
              label=f"{name} (lr {results[key]['learning_rate']:g})")
    if batch_size in speedups:
      ax.axhline(speedups[batch_size]["gru_final_accuracy"], color="k", linestyle=":",
                 label="GRU final accuracy")
    ax.set(xlabel="step", ylabel="test accuracy (mean of seeds)",
           title=f"MNIST-1D sequence, batch size {batch_size}")
    ax.legend(fontsize=7)

  measured = "; ".join(
      f"batch {b}: LN-GRU final test accuracy {r['final_test_accuracy']:.3f} (smoke run, no GRU)"
      for b, r in ((r["batch_size"], r) for r in results.values())
  ) if quick else "; ".join(
      f"batch {b}: GRU final test accuracy {s['gru_final_accuracy']:.3f}, LN-GRU final "
      f"{results[f'ln_gru_b{b}']['final_test_accuracy']:.3f}, LN-GRU reaches the GRU's final "
      "accuracy " + ("never" if s["ln_gru_steps_to_it"] is None else
                     f"at step {s['ln_gru_steps_to_it']} of {s['steps']}")
      for b, s in speedups.items()
  ) + "."
  return save_result(
      "layer_norm_rnn", out,
      claim=("Layer normalization substantially reduces the training time of recurrent "
             "networks, and works at any batch size (no batch statistics)."),
      measured=measured,
      claim_held=held,
      config={"data": "MNIST-1D as a length-40 scalar sequence (4000 train / 1000 test)",
              "model": f"Dense({EMBED})+tanh per step, GRU or LN-GRU({hidden}), Dense read-out "
                       "on the last state",
              "optimizer": "Adam", "learning_rates": list(learning_rates),
              "steps_per_batch_size": {str(b): s for b, s in runs.items()},
              "criterion": "LN-GRU reaches the GRU's final test accuracy within half the steps, "
                           "at every batch size"},
      metrics={"runs": results,
               "ln_gru_speedup": {str(b): s for b, s in speedups.items()}},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
