"""MaskLLM: learned 2:4 masks vs magnitude 2:4 masks on a frozen, pretrained MLP (digits).

"MaskLLM: Learnable Semi-Structured Sparsity for Large Language Models" (arXiv:2409.17481)
learns 2:4 masks end to end (Gumbel-softmax over the 6 candidates of every group of 4, weights
frozen) and reports much better quality than one-shot masks (LLaMA-2 7B: 6.72 vs >= 10
perplexity; dense 5.12).

CPU-scale test: an MLP 64-64-64-10 is trained dense on scikit-learn digits (Adam 3e-3, 1500
steps, batch 64) and frozen. Every kernel then gets a 2:4 mask along its fan-in:

* magnitude: the 2 largest |w| of every 4 (`jaxlearn.nn.nm_mask`), the one-shot baseline;
* learned: MaskLLM logits (`jaxlearn.nn.maskllm_mask`) trained on the training set with the
  weights frozen, the layer defaults (logits N(0, 0.01^2), tau 4 -> 0.1, kappa 1e3 -> 1e4, soft
  masks), Adam with the released scripts' mask learning rate (5e-5 x lr-mult 10 = 5e-4, cosine
  to 5e-5), 2000 steps (the released checkpoints' train_iters), batch 64;
* learned + prior: the same, with the logits initialized from the magnitude mask (strength 3)
  and the weight regularization 1e-5, as in the released LLaMA scripts.

Learned masks are evaluated with the argmax candidate. 3 seeds (each its own pretrained MLP).
The claim counts as held if the learned masks (with prior, the released recipe) beat the
magnitude masks' mean test accuracy by more than the seeds' standard error, as not held if they
are worse by more, and undecided otherwise. Writes maskllm_learned_vs_magnitude.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.experiments._sparse_training import (
    accuracy, cross_entropy, evaluate_runs, init_mlp, mlp_apply, train_runs)
from jaxlearn.nn import (maskllm_mask, maskllm_prior_gates, maskllm_schedule,
                         maskllm_weight_regularization, nm_mask)
from jaxlearn.train import experiment_main, new_figure, save_result

NAME = "maskllm_learned_vs_magnitude"
SIZES = (64, 64, 64, 10)
N, M, CANDIDATES = 2, 4, 6
PRIOR_STRENGTH, WEIGHT_REG = 3.0, 1e-5
MASK_LR, MASK_MIN_LR = 5e-4, 5e-5
VARIANTS = ("dense", "magnitude 2:4", "learned 2:4", "learned 2:4 + prior")
NOISE_IMPL = "rbg"  # Gumbel noise from XLA's generator: threefry compiles far slower on CPU


def _masks_from(gates, progress, key, training):
  """One mask per layer: Gumbel-softmax in training, argmax in evaluation."""
  tau, kappa = maskllm_schedule(progress)
  masks = []
  for i, g in enumerate(gates):
    noise = jax.random.gumbel(jax.random.fold_in(key, i), g.shape) if training else None
    masks.append(maskllm_mask(g, n=N, m=M, noise=noise, temperature=tau, scale=kappa))
  return masks


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  pre_steps, steps, record_every = (20, 20, 20) if quick else (1500, 2000, 100)
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  data = load_digits(seed=seed)
  start = time.perf_counter()

  # 1. Dense pretraining, one MLP per seed.
  dense_loss = lambda params, hp, x, y, t: cross_entropy(mlp_apply(params, x), y)
  dense, _ = train_runs(dense_loss, lambda key, hp: init_mlp(key, SIZES),
                        lambda hp: optax.adam(3e-3), data, [{}], steps=pre_steps,
                        batch_size=64, seeds=seeds, record_every=pre_steps)
  kernels = [layer["kernel"] for layer in dense]  # each (S, in, out): frozen from here on
  biases = [layer["bias"] for layer in dense]

  def frozen(hp):
    index = hp["seed_index"]
    return [k[index] for k in kernels], [b[index] for b in biases]

  def masked_forward(masks, hp, x):
    ks, bs = frozen(hp)
    layers = [{"kernel": k * mask, "bias": b} for k, b, mask in zip(ks, bs, masks)]
    return mlp_apply(layers, x)

  # 2. Mask learning: only the logits train.
  def init_gates(key, hp):
    ks, _ = frozen(hp)
    gates = []
    for i, k in enumerate(ks):
      g = 0.01 * jax.random.normal(jax.random.fold_in(key, i),
                                   (k.shape[0] // M, k.shape[1], CANDIDATES))
      gates.append(maskllm_prior_gates(g, nm_mask(k, N, M), strength=hp["prior"]))
    return gates

  def mask_loss(gates, hp, x, y, t):
    progress = t / steps
    key = jax.random.fold_in(jax.random.key(17, impl=NOISE_IMPL), t)
    masks = _masks_from(gates, progress, key, True)
    ks, _ = frozen(hp)
    reg = sum(maskllm_weight_regularization(k, mask) for k, mask in zip(ks, masks))
    scale = hp["weight_reg"] * (1.0 - progress)  # official: linearly removed
    return cross_entropy(masked_forward(masks, hp, x), y) - scale * reg

  configs = [{"prior": 0.0, "weight_reg": 0.0},
             {"prior": PRIOR_STRENGTH, "weight_reg": WEIGHT_REG}]
  schedule = optax.cosine_decay_schedule(MASK_LR, steps, alpha=MASK_MIN_LR / MASK_LR)
  gates, losses = train_runs(mask_loss, init_gates, lambda hp: optax.adam(schedule), data,
                             configs, steps=steps, batch_size=64, seeds=seeds,
                             record_every=record_every)

  # 3. Evaluation: dense, magnitude and the learned (argmax) masks, with overlaps.
  def eval_variant(gates, hp, x, y):
    ks, _ = frozen(hp)
    magnitude = [nm_mask(k, N, M) for k in ks]
    learned = _masks_from(gates, 1.0, jax.random.key(0), False)
    overlap = jnp.mean(jnp.concatenate([(a == b).ravel() for a, b in zip(learned, magnitude)]))
    ones = [jnp.ones_like(k) for k in ks]
    return jnp.stack([accuracy(masked_forward(masks, hp, x), y)
                      for masks in (ones, magnitude, learned)] + [overlap])

  splits = {"test": (data.x_test, data.y_test)}
  names = ("dense", "magnitude", "learned", "overlap")
  scores = {}
  for split, values in evaluate_runs(eval_variant, gates, configs, seeds, splits).items():
    scores[split] = {name: values[..., j] for j, name in enumerate(names)}  # (K, S) each
  wall = time.perf_counter() - start

  test = scores["test"]
  per_variant = {  # (S,) test accuracies
      "dense": test["dense"][0], "magnitude 2:4": test["magnitude"][0],
      "learned 2:4": test["learned"][0], "learned 2:4 + prior": test["learned"][1],
  }
  sem = lambda v: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
  results = {name: {"test_accuracy": float(np.mean(v)), "test_accuracy_sem": sem(v),
                    "test_accuracy_per_seed": v} for name, v in per_variant.items()}
  for k, name in enumerate(VARIANTS[2:]):
    results[name]["mask_overlap_with_magnitude"] = float(test["overlap"][k].mean())
    results[name]["final_train_loss"] = float(losses[k, :, -1].mean())
  margin = results["learned 2:4 + prior"]["test_accuracy"] \
      - results["magnitude 2:4"]["test_accuracy"]
  margin_random = results["learned 2:4"]["test_accuracy"] \
      - results["magnitude 2:4"]["test_accuracy"]
  noise = max(results[v]["test_accuracy_sem"] for v in VARIANTS[1:])
  held = None if quick else (True if margin > noise else False if margin < -noise else None)

  fig, axes = new_figure(ncols=2)
  steps_axis = np.arange(1, losses.shape[-1] + 1) * record_every
  for k, name in enumerate(VARIANTS[2:]):
    axes[0, 0].plot(steps_axis, losses[k].mean(axis=0), label=name)
  axes[0, 0].set(xlabel="step", ylabel="training loss (soft masks)", title="mask learning")
  axes[0, 0].legend()
  means = [results[v]["test_accuracy"] for v in VARIANTS]
  axes[0, 1].bar(range(len(VARIANTS)), means,
                 yerr=[results[v]["test_accuracy_sem"] for v in VARIANTS], tick_label=VARIANTS)
  axes[0, 1].set(ylabel="test accuracy", ylim=(max(0.0, min(means) - 0.1), 1.0))
  axes[0, 1].tick_params(axis="x", labelrotation=20)

  measured = (
      "test accuracy (mean over seeds) "
      + ", ".join(f"{v} {results[v]['test_accuracy']:.3f}±{results[v]['test_accuracy_sem']:.3f}"
                  for v in VARIANTS)
      + f"; learned+prior minus magnitude {margin:+.3f}, learned (random init) minus magnitude "
      f"{margin_random:+.3f} (seed standard error up to {noise:.3f}); learned masks agree with "
      f"magnitude on {results['learned 2:4']['mask_overlap_with_magnitude']:.2f} (random init) "
      f"and {results['learned 2:4 + prior']['mask_overlap_with_magnitude']:.2f} (prior) of the "
      "weights."
  )
  return save_result(
      NAME, out,
      claim=("Learned 2:4 masks (Gumbel-softmax over the candidate masks, frozen weights) are "
             "more accurate than one-shot (magnitude) 2:4 masks."),
      measured=measured, claim_held=held,
      config={"model": "MLP 64-64-64-10 on digits, frozen after dense pretraining",
              "pretraining": {"optimizer": "adam(3e-3)", "steps": pre_steps, "batch_size": 64},
              "mask_learning": {"optimizer": f"adam(cosine {MASK_LR} -> {MASK_MIN_LR})",
                                "steps": steps, "batch_size": 64, "temperature": [4.0, 0.1],
                                "scale_multiplier": [1e3, 1e4],
                                "prior_strength": PRIOR_STRENGTH, "weight_reg": WEIGHT_REG},
              "rule": "held if learned+prior beats magnitude by more than the largest seed "
                      "standard error; not held if worse by more; else None"},
      metrics={"variants": results, "learned_prior_minus_magnitude": margin,
               "learned_random_minus_magnitude": margin_random, "seed_standard_error": noise},
      seeds=seeds, wall_time_s=wall, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
