"""NoProp (discrete time) vs backprop on digits: accuracy, and a step's memory and time vs depth.

Li, Teh and Pascanu (arXiv:2503.24322) report that NoProp-DT, whose blocks each learn on their own
to denoise a noisy label embedding given the input (no forward or backward propagation between
blocks during training), reaches accuracy comparable to backprop on MNIST, with less memory.

1. Accuracy: T = 10 blocks (each an MLP on concat(x, z) with one hidden layer of 256 units, output
   the 10-dimensional one-hot embedding space), trained with NoProp-DT (Adam; every block at every
   step). Test accuracy from the inference chain with noise (the paper's equation; 5 noise draws
   averaged) and without. Baselines trained with the same optimizer, steps and batch size:
   (a) the SAME architecture trained end to end with backprop: the deterministic inference chain
   z_t = a_t u_t(z_{t-1}, x) + b_t z_{t-1} from z_0 = 0, cross-entropy of the classifier on z_T;
   (b) a 3 x 256 ReLU MLP with backprop (the family's common reference).
2. Cost: compiled step temporary memory (XLA memory analysis) and median step time at 2, 4 and 8
   blocks (hidden 256, batch 1024): NoProp (joint grad and block by block) vs backprop through the
   chain, with `experiments/_local_bench.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import local
from jaxlearn.data import load_digits
from jaxlearn.experiments import _local_bench
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.train import classifier, experiment_main, fit, mlp, new_figure, save_result

NAME = "noprop_digits"
LABELS = {"bp_chain": "backprop through the chain", "noprop_joint": "NoProp joint grad",
          "noprop_sequential": "NoProp block by block"}


def noprop_model(num_blocks, hidden, num_classes):
  return local.LocalModel(tuple(local.denoising_block(num_classes, hidden)
                                for _ in range(num_blocks)))


def chain_functions(model, rule, example):
  """`(init, loss, eval)` of backprop through the deterministic inference chain."""
  deterministic = local.NoProp(rule.num_classes, rule.num_blocks, inference_noise=False)
  apply = lambda params, x: deterministic.predict_logits(model, params, x)
  loss, evaluate = classifier(apply)
  init = lambda key: model.init(key, rule, example)[0]
  return init, loss, evaluate


def cost_sweep(depths, hidden, batch_size, time_steps, forms=("joint", "sequential"),
               with_backprop=True):
  optimizer = optax.adam(1e-3)
  batch = {"x": jax.ShapeDtypeStruct((batch_size, 64), jnp.float32),
           "y": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  key = jax.random.PRNGKey(0)

  def build(depth):
    model, rule = noprop_model(depth, hidden, 10), local.NoProp(10, depth)
    example = {"x": jnp.zeros((2, 64)), "y": jnp.zeros((2,), jnp.int32)}
    steps = {}
    if with_backprop:
      init, loss, _ = chain_functions(model, rule, example)
      params = jax.eval_shape(init, key)
      steps["bp_chain"] = _local_bench.loss_backprop_step(
          lambda p, b: loss(p, b["x"], b["y"]), params, batch, optimizer)
    steps.update(_local_bench.local_steps(model, rule, optimizer, batch, key, prefix="noprop",
                                          forms=forms))
    return steps

  return _local_bench.depth_sweep(build, depths, time_steps=time_steps)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  start = time.perf_counter()
  data = load_digits(seed=0)
  config = dict(
      num_blocks=2 if quick else 10,
      block_hidden=(32,) if quick else (256,),
      embedding="one_hot",
      steps=10 if quick else 3000,
      batch_size=64,
      learning_rate=1e-3,
      eval_every=10 if quick else 250,
      inference_draws=1 if quick else 5,
      mlp_hidden=None if quick else (256, 256, 256),
      depths=(2,) if quick else (2, 4, 8),
      cost_hidden=(32,) if quick else (256,),
      cost_batch=128 if quick else 1024,
      time_steps=0 if quick else 10,
      optimizer="adam, constant learning rate",
      claim_criteria=(
          "NoProp (with inference noise) mean test accuracy >= backprop through the same chain "
          "- 0.02, and its block-by-block step's temp-memory growth from 2 to 8 blocks < 0.5 x "
          "backprop's"
      ),
  )
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  common = dict(steps=config["steps"], batch_size=config["batch_size"], seeds=seeds,
                eval_every=config["eval_every"])
  make_optimizer = lambda: optax.adam(config["learning_rate"])
  num_classes = data.num_classes
  model = noprop_model(config["num_blocks"], config["block_hidden"], num_classes)
  rule = local.NoProp(num_classes, config["num_blocks"])
  deterministic = local.NoProp(num_classes, config["num_blocks"], inference_noise=False)
  example = {"x": jnp.asarray(data.x_train[:2]), "y": jnp.asarray(data.y_train[:2])}
  loss_fn, init_fn, eval_fn = local.fit_functions(
      model, rule, example, predict=lambda p, x: deterministic.predict(model, p, x))
  noprop = fit(loss_fn, init_fn, make_optimizer, data, eval_fn=eval_fn, has_state=True,
               desc="noprop", **common)

  # Test accuracy of the trained runs with the paper's noisy inference (averaged over draws).
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  def noisy_accuracy(params, key):
    draws = jax.random.split(key, config["inference_draws"])
    hits = jax.vmap(lambda k: rule.predict(model, params, x_test, k) == y_test)(draws)
    return jnp.mean(hits)

  keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(seeds))
  noisy_acc = np.asarray(jax.jit(jax.vmap(noisy_accuracy))(noprop.state.params, keys))
  det_acc = noprop.final("test_accuracy")[0]

  chain_init, chain_loss, chain_eval = chain_functions(model, rule, example)
  chain = fit(chain_loss, chain_init, make_optimizer, data, eval_fn=chain_eval,
              desc="backprop chain", **common)
  bp = None  # the smoke run leaves out the reference MLP (one compilation less)
  if not quick:
    bp_init, bp_apply = mlp((data.x_train.shape[1],), config["mlp_hidden"], num_classes)
    bp_loss, bp_eval = classifier(bp_apply)
    bp = fit(bp_loss, bp_init, make_optimizer, data, eval_fn=bp_eval, desc="backprop mlp",
             **common)
  chain_acc = chain.final("test_accuracy")[0]
  bp_acc = None if bp is None else bp.final("test_accuracy")[0]

  depths = config["depths"]
  sweep = cost_sweep(depths, config["cost_hidden"], config["cost_batch"], config["time_steps"],
                     forms=("sequential",) if quick else ("joint", "sequential"),
                     with_backprop=not quick)  # the smoke run: two compilations less
  growth = {name: e["temp_bytes"][-1] - e["temp_bytes"][0] for name, e in sweep.items()}
  accuracy_held = bool(noisy_acc.mean() >= chain_acc.mean() - 0.02)
  memory_held = not quick and bool(growth["noprop_sequential"] < 0.5 * growth["bp_chain"])
  measured = (
      f"Test accuracy over {len(seeds)} seed(s), T = {config['num_blocks']}: NoProp with "
      f"inference noise {noisy_acc.mean():.4f} (min {noisy_acc.min():.4f}), without "
      f"{det_acc.mean():.4f}; backprop through the same chain {chain_acc.mean():.4f} (min "
      f"{chain_acc.min():.4f}); backprop MLP "
      f"{'not run' if bp_acc is None else f'{bp_acc.mean():.4f}'}. NoProp - BP chain = "
      f"{100 * (noisy_acc.mean() - chain_acc.mean()):+.2f} points. Compiled step (hidden "
      f"{config['cost_hidden']}, batch {config['cost_batch']}, device "
      f"{jax.devices()[0].device_kind}) temp memory / median time "
      + _local_bench.describe(depths, sweep, LABELS) + "."
  )
  fig, axes = new_figure(ncols=3)
  for result, label in ((noprop, "NoProp (no inference noise)"), (chain, "backprop chain"),
                        (bp, "backprop MLP")):
    if result is None:
      continue
    curve = result.history["test_accuracy"][0]
    axes[0, 0].plot(result.eval_steps, curve.mean(0), label=label)
    axes[0, 0].fill_between(result.eval_steps, curve.min(0), curve.max(0), alpha=0.2)
  axes[0, 0].set(xlabel="step", ylabel="test accuracy", title=f"digits, T = {config['num_blocks']}")
  axes[0, 0].legend()
  _local_bench.plot_depth_sweep(axes[0, 1], axes[0, 2] if config["time_steps"] else None,
                                depths, sweep, LABELS)
  return save_result(
      NAME,
      out,
      claim=(
          "NoProp-DT, whose blocks learn independently to denoise a noisy label embedding, "
          "reaches accuracy comparable to backprop on MNIST while using less memory."
      ),
      measured=measured,
      claim_held=None if quick else accuracy_held and memory_held,
      config=config,
      metrics={
          "noprop_noisy_inference_test_accuracy": noisy_acc,
          "noprop_deterministic_test_accuracy": det_acc,
          "bp_chain_test_accuracy": chain_acc,
          **({} if bp_acc is None else {"bp_mlp_test_accuracy": bp_acc}),
          "noprop_train_accuracy": noprop.final("train_accuracy")[0],
          "bp_chain_train_accuracy": chain.final("train_accuracy")[0],
          "eval_steps": noprop.eval_steps,
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
