"""GB-DNN on digits: a dense network grown by gradient boosting vs the same network end to end.

Emami and Martínez-Muñoz (arXiv:2302.11327) train a deep dense network by gradient boosting: each
stage adds one dense layer on top of the frozen layers of the previous stages, fits it (and the
output layer) to the pseudo-residuals of the cross-entropy, and adds its output with a Newton step.
They report better accuracy than the same architecture trained as a whole.

Setup: digits; GB-DNN (`jaxlearn.local.gb_dnn_fit`) with the official defaults (units 20, eta 0.1,
up to 200 epochs per stage with early stopping, patience 3, batch 128, Adam 1e-3) for 5 stages,
i.e. 5 hidden layers of 20 ReLU units; the baseline is a 5 x 20 ReLU MLP trained end to end with
cross-entropy, Adam 1e-3, batch 128, for 200 epochs (2200 steps); 3 seeds each. Measured: test
accuracy (GB-DNN after every stage), wall time of the whole fit, the time of one training step
(GB-DNN's last stage: one dense layer and the output on frozen features; backprop: the whole MLP)
and its compiled temporary memory (XLA memory analysis).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn._compile import fast_jit
from jaxlearn.data import load_digits
from jaxlearn.diagnostics import compiled_memory
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.local import gb_dnn_decision, gb_dnn_fit
from jaxlearn.local import gradient_boosting
from jaxlearn.train import classifier, experiment_main, fit, mlp, new_figure, save_result

NAME = "gb_dnn_digits"


def wall(fn, *args, repeats=20):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  start = time.perf_counter()
  data = load_digits(seed=0)
  config = dict(
      stages=2 if quick else 5,
      units=20,
      eta=0.1,
      epochs=2 if quick else 200,
      batch_size=128,
      learning_rate=1e-3,
      patience=3,
      mlp_epochs=2 if quick else 200,
      claim_criteria="GB-DNN's mean test accuracy above the end-to-end MLP's",
  )
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  programs = {name: getattr(gradient_boosting, name)
              for name in ("_train_stage", "_new_layers", "_boost")}
  if quick:  # the smoke run compiles gb_dnn_fit's programs with the fast options
    gradient_boosting._train_stage = fast_jit(gradient_boosting._train_stage_impl,
                                              static_argnames=gradient_boosting._STAGE_STATIC)
    gradient_boosting._new_layers = fast_jit(gradient_boosting._new_layers_impl,
                                             static_argnames=("units", "num_classes"))
    gradient_boosting._boost = fast_jit(gradient_boosting._boost_impl)
  x, xt = jnp.asarray(data.x_train), jnp.asarray(data.x_test)
  stage_acc, fit_seconds, epochs_used = [], [], []
  try:
    for s in seeds:
      t0 = time.perf_counter()
      model, history = gb_dnn_fit(
          jax.random.key(s), x, data.y_train, data.num_classes, stages=config["stages"],
          units=config["units"], eta=config["eta"], epochs=config["epochs"],
          batch_size=config["batch_size"], learning_rate=config["learning_rate"],
          patience=config["patience"])
      jax.block_until_ready(model)
      fit_seconds.append(time.perf_counter() - t0)
      epochs_used.append(np.isfinite(np.asarray(history["stage_mse"])).sum(1))
      stage_acc.append([float(jnp.mean(jnp.argmax(gb_dnn_decision(model, xt, t), -1)
                                       == data.y_test)) for t in range(1, config["stages"] + 1)])
  finally:
    for name, program in programs.items():
      setattr(gradient_boosting, name, program)
  stage_acc, epochs_used = np.asarray(stage_acc), np.asarray(epochs_used)

  hidden = (config["units"],) * config["stages"]
  bp_init, bp_apply = mlp((x.shape[1],), hidden, data.num_classes)
  bp_loss, bp_eval = classifier(bp_apply)
  steps = config["mlp_epochs"] * (x.shape[0] // config["batch_size"])
  t0 = time.perf_counter()
  result = fit(bp_loss, bp_init, lambda: optax.adam(config["learning_rate"]), data, steps=steps,
               batch_size=config["batch_size"], seeds=seeds, eval_every=steps, eval_fn=bp_eval,
               desc="end-to-end MLP", progress=False)
  mlp_seconds = time.perf_counter() - t0
  mlp_acc = np.asarray(result.final("test_accuracy")[0])

  # One training step: GB-DNN's stage (a dense layer + output on frozen features) vs backprop.
  optimizer = optax.adam(config["learning_rate"])
  b = config["batch_size"]
  features = jnp.zeros((b, config["units"]))
  residuals = jnp.zeros((b, data.num_classes))
  stage_params = ((jnp.zeros((config["units"], config["units"])), jnp.zeros(config["units"])),
                  (jnp.zeros((config["units"], data.num_classes)), jnp.zeros(data.num_classes)))

  def stage_step(params, opt_state, f, r):
    def mse(p):
      (w, bias), (wo, bo) = p
      return jnp.mean((jax.nn.relu(f @ w + bias) @ wo + bo - r) ** 2)
    grads = jax.grad(mse)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def bp_step(params, opt_state, xb, yb):
    grads = jax.grad(bp_loss)(params, xb, yb)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  jit = fast_jit if quick else jax.jit
  bp_params = bp_init(jax.random.key(seed))
  stage_args = (stage_params, optimizer.init(stage_params), features, residuals)
  bp_args = (bp_params, optimizer.init(bp_params), x[:b], jnp.asarray(data.y_train[:b]))
  nan = float("nan")
  seconds = {"gb_dnn_stage_step": nan, "backprop_step": nan}
  memory = {"gb_dnn_stage_step": nan, "backprop_step": nan}
  if not quick:  # the smoke run skips the timing and memory programs
    seconds = {"gb_dnn_stage_step": wall(jit(stage_step), *stage_args, repeats=50),
               "backprop_step": wall(jit(bp_step), *bp_args, repeats=50)}
    memory = {"gb_dnn_stage_step": compiled_memory(stage_step, *stage_args).temp_bytes,
              "backprop_step": compiled_memory(bp_step, *bp_args).temp_bytes}

  gb_final = stage_acc[:, -1]
  held = None if quick else bool(gb_final.mean() > mlp_acc.mean())
  measured = (
      f"Test accuracy over {len(seeds)} seed(s): GB-DNN ({config['stages']} stages x "
      f"{config['units']} units) {gb_final.mean():.4f} (after each stage: "
      + ", ".join(f"{a:.4f}" for a in stage_acc.mean(0))
      + f") vs end-to-end MLP {len(hidden)}x{config['units']} {mlp_acc.mean():.4f}. Epochs "
      f"used per stage (early stopping, max {config['epochs']}): "
      + ", ".join(f"{e:.0f}" for e in epochs_used.mean(0))
      + f". Wall time: GB-DNN fit {np.mean(fit_seconds):.1f} s, MLP {mlp_seconds:.1f} s for "
      f"{len(seeds)} seeds vmapped ({steps} steps). One step (batch {b}): GB-DNN stage "
      f"{1e3 * seconds['gb_dnn_stage_step']:.3f} ms vs backprop "
      f"{1e3 * seconds['backprop_step']:.3f} ms; compiled temp memory "
      f"{memory['gb_dnn_stage_step'] / 1024:.1f} KiB vs {memory['backprop_step'] / 1024:.1f} KiB "
      f"({jax.devices()[0].device_kind})."
  )
  fig, axes = new_figure()
  ax = axes[0, 0]
  ax.plot(np.arange(1, config["stages"] + 1), stage_acc.mean(0), marker="o", label="GB-DNN")
  ax.axhline(mlp_acc.mean(), color="k", linestyle="--", label="end-to-end MLP")
  ax.set(xlabel="boosting stage (hidden layers)", ylabel="test accuracy", title="digits")
  ax.legend()
  return save_result(
      NAME,
      out,
      claim=("A dense network trained by gradient boosting (one new dense layer per stage, "
             "earlier layers frozen) is more accurate than the same architecture trained as a "
             "whole."),
      measured=measured,
      claim_held=held,
      config=config,
      metrics={
          "gb_dnn_test_accuracy_per_stage": stage_acc.mean(0),
          "gb_dnn_test_accuracy": gb_final,
          "mlp_test_accuracy": mlp_acc,
          "epochs_used_per_stage": epochs_used,
          "gb_dnn_fit_seconds": fit_seconds,
          "mlp_fit_seconds": mlp_seconds,
          "step_seconds": seconds,
          "temp_bytes": memory,
      },
      seeds=seeds,
      wall_time_s=time.perf_counter() - start,
      figure=fig,
      quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
