"""Momentum Auxiliary Network vs plain local learning vs backprop on digits, and step costs.

Su et al. (arXiv:2407.05623) claim that supervised local learning (each block trained by its own
auxiliary classifier, no gradient between blocks) loses accuracy to end-to-end backprop, and that
feeding each auxiliary network with LB_i(h) + EMA_i(h) (a learnable bias net plus an EMA copy of
the next block) closes the gap (on ImageNet even beating backprop) with less memory (-45%).

1. Accuracy: 4 ReLU blocks of 256 units on digits trained (a) with local cross-entropy (a linear
   auxiliary classifier on each block's output), (b) with MAN (linear auxiliary classifier on
   LB_i(h_i) + EMA_i(h_i), m = 0.999, the official default), (c) end to end with backprop (same 4
   x 256 MLP and a linear output layer). Same optimizer (Adam), steps, batch, seeds; nothing tuned.
   Expected ordering (paper): local <= MAN <= backprop (or MAN above backprop).
2. Cost: compiled step temporary memory (XLA memory analysis) and median step time at 2, 4 and 8
   blocks (width 256, batch 1024): backprop vs MAN joint grad and block by block, with
   `experiments/_local_bench.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

import flax.linen as linen
import jax
import jax.numpy as jnp
import optax

from jaxlearn import local
from jaxlearn.data import load_digits
from jaxlearn.experiments import _local_bench
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.train import classifier, experiment_main, fit, mlp, new_figure, save_result

NAME = "man_local_learning"
LABELS = {"backprop": "backprop", "man_joint": "MAN joint grad",
          "man_sequential": "MAN block by block"}


class LocalCrossEntropy(local.LocalRule):
  """Plain supervised local learning: a linear auxiliary classifier on every block's output."""

  def __init__(self, num_classes):
    self.num_classes = num_classes

  def init_head(self, index, key, output):
    return linen.Dense(self.num_classes).init(key, output)["params"]

  def block_loss(self, index, output, head, ctx):
    logits = linen.Dense(self.num_classes).apply({"params": head}, output)
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, ctx.batch["y"]).mean()

  def predict(self, model, params, x):
    outputs = model.outputs(params.blocks, self, local.LocalContext({"x": x}, None, None))
    logits = linen.Dense(self.num_classes).apply({"params": params.heads[-1]}, outputs[-1])
    return jnp.argmax(logits, -1)


def cost_sweep(depths, width, batch_size, time_steps, momentum, forms=("joint", "sequential"),
               with_backprop=True):
  optimizer = optax.adam(1e-3)
  batch = {"x": jax.ShapeDtypeStruct((batch_size, 64), jnp.float32),
           "y": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def build(depth):
    steps = {}
    if with_backprop:
      steps["backprop"] = _local_bench.mlp_backprop_step(depth, width, batch_size, 64, 10,
                                                         optimizer)
    model = local.LocalModel.mlp([width] * depth)
    rule = local.MomentumAuxiliary(model, 10, momentum=momentum)
    steps.update(_local_bench.local_steps(model, rule, optimizer, batch, jax.random.PRNGKey(0),
                                          prefix="man", forms=forms))
    return steps

  return _local_bench.depth_sweep(build, depths, time_steps=time_steps)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  start = time.perf_counter()
  data = load_digits(seed=0)
  config = dict(
      hidden=(32, 32) if quick else (256, 256, 256, 256),
      momentum=0.999,
      steps=10 if quick else 3000,
      batch_size=64,
      learning_rate=1e-3,
      eval_every=10 if quick else 250,
      depths=(2,) if quick else (2, 4, 8),
      cost_width=32 if quick else 256,
      cost_batch=128 if quick else 1024,
      time_steps=0 if quick else 10,
      optimizer="adam, constant learning rate",
      auxiliary_classifier="linear (official: conv + 2 FC); no reconstruction term",
      claim_criteria=(
          "MAN mean test accuracy > local CE's and >= BP - 0.01 (the paper: MAN closes the gap), "
          "and MAN's block-by-block step's temp-memory growth from 2 to 8 blocks < 0.5 x BP's"
      ),
  )
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  common = dict(steps=config["steps"], batch_size=config["batch_size"], seeds=seeds,
                eval_every=config["eval_every"])
  make_optimizer = lambda: optax.adam(config["learning_rate"])
  num_classes = data.num_classes
  model = local.LocalModel.mlp(config["hidden"])
  example = {"x": jnp.asarray(data.x_train[:2]), "y": jnp.asarray(data.y_train[:2])}
  results = {}
  rules = {"local_ce": LocalCrossEntropy(num_classes),
           "man": local.MomentumAuxiliary(model, num_classes, momentum=config["momentum"])}
  for name, rule in rules.items():
    loss_fn, init_fn, eval_fn = local.fit_functions(
        model, rule, example, predict=lambda p, x, rule=rule: rule.predict(model, p, x))
    results[name] = fit(loss_fn, init_fn, make_optimizer, data, eval_fn=eval_fn, has_state=True,
                        desc=name, **common)
  if not quick:  # the smoke run leaves out the backprop baseline (its compilations)
    bp_init, bp_apply = mlp((data.x_train.shape[1],), config["hidden"], num_classes)
    bp_loss, bp_eval = classifier(bp_apply)
    results["backprop"] = fit(bp_loss, bp_init, make_optimizer, data, eval_fn=bp_eval,
                              desc="backprop", **common)
  acc = {name: r.final("test_accuracy")[0] for name, r in results.items()}
  bp_mean = acc["backprop"].mean() if "backprop" in acc else float("nan")

  depths = config["depths"]
  sweep = cost_sweep(depths, config["cost_width"], config["cost_batch"], config["time_steps"],
                     config["momentum"],  # the smoke run: fewer compilations
                     forms=("sequential",) if quick else ("joint", "sequential"),
                     with_backprop=not quick)
  growth = {name: e["temp_bytes"][-1] - e["temp_bytes"][0] for name, e in sweep.items()}
  accuracy_held = bool(acc["man"].mean() > acc["local_ce"].mean()
                       and acc["man"].mean() >= bp_mean - 0.01)
  memory_held = not quick and bool(growth["man_sequential"] < 0.5 * growth["backprop"])
  measured = (
      f"Test accuracy over {len(seeds)} seed(s), {len(config['hidden'])} blocks: "
      + ", ".join(f"{name} {a.mean():.4f} (min {a.min():.4f})" for name, a in acc.items())
      + f"; MAN - local = {100 * (acc['man'].mean() - acc['local_ce'].mean()):+.2f} points, "
      f"MAN - BP = {100 * (acc['man'].mean() - bp_mean):+.2f} points. Compiled "
      f"step (width {config['cost_width']}, batch {config['cost_batch']}, device "
      f"{jax.devices()[0].device_kind}) temp memory / median time "
      + _local_bench.describe(depths, sweep, LABELS) + "."
  )
  fig, axes = new_figure(ncols=3)
  for name, result in results.items():
    curve = result.history["test_accuracy"][0]
    axes[0, 0].plot(result.eval_steps, curve.mean(0), label=name)
    axes[0, 0].fill_between(result.eval_steps, curve.min(0), curve.max(0), alpha=0.2)
  axes[0, 0].set(xlabel="step", ylabel="test accuracy", title="digits, 4 x 256 blocks")
  axes[0, 0].legend()
  _local_bench.plot_depth_sweep(axes[0, 1], axes[0, 2] if config["time_steps"] else None,
                                depths, sweep, LABELS)
  return save_result(
      NAME,
      out,
      claim=(
          "Supervised local learning trails backprop; MAN's auxiliary input LB_i(h) + EMA_i(h) "
          "closes the gap (even beating backprop on ImageNet) while saving memory."
      ),
      measured=measured,
      claim_held=None if quick else accuracy_held and memory_held,
      config=config,
      metrics={
          **{f"{name}_test_accuracy": a for name, a in acc.items()},
          **{f"{name}_train_accuracy": r.final("train_accuracy")[0]
             for name, r in results.items()},
          "eval_steps": results["man"].eval_steps,
          "step_cost": sweep,
          "step_temp_growth_bytes": growth,
          "accuracy_claim_held": accuracy_held,
          "memory_claim_held": memory_held,
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
