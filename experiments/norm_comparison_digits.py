"""Comparison: every drop-in normalization in one small CNN on digits, at batch sizes 2, 16 and 128.

One question, asked of every normalization layer in jaxlearn that can replace BatchNorm in a
convolutional network as is: how well does the same small CNN train with it, at a tiny, a small
and a large batch? Batch normalization is known to degrade at tiny batches (its statistics get
noisy and its running averages stop matching the training statistics); the batch-independent and
streaming normalizers were designed not to.

Setup: scikit-learn digits as 8x8x1 images (1150 train / 288 validation / 359 test); the CNN of
`microbatch_norm` (three 3x3 convolutions of 16, 32 (stride 2) and 32 channels, each followed by
the normalization and a ReLU, global average pooling, a dense read-out). Activation normalizers
follow each convolution (EvoNorm includes its own nonlinearity; the sequence layers PowerNorm and
Unified Normalization see the pixels as tokens, their warm-up set to a tenth of the run); kernel
reparametrizations (weight normalization without its data-dependent initialization, spectral
normalization, NF scaled weight standardization with the gamma-scaled ReLU) replace the
convolutions' kernels with no activation normalization; "none" uses neither. Every variant trains
for 3 epochs, or 300 steps where 3 epochs are fewer (batch 128: 3 epochs are 24 steps), at batch
sizes 2, 16 and 128 with SGD (momentum 0.9) and the linear-scaling rule lr = base_lr * batch / 64, base_lr over a 2-point grid and 2 seeds vmapped by
`jaxlearn.train.fit`; running statistics average over about 640 images whatever the batch (flax
momentum 1 - batch / 640 where the layer has one; each layer's other defaults). The best base_lr
by mean validation accuracy is selected and its TEST accuracy reported.

Layers whose backward pass updates statistics (Online Normalization, PowerNorm, Unified
Normalization) get their increments added after every step (see `_optimizer`). The expectation
tested (no single paper's claim): BatchNorm loses accuracy from batch 128 to batch 2, and every
layer made for tiny batches (no batch statistics in training, or streaming ones) loses less.
Writes norm_comparison_digits.json and .png.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, NamedTuple

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn import nn as jnn
from jaxlearn.experiments._digits_cnn import patches
from jaxlearn.experiments._shared import fast_compile_when_quick, validation_split
from jaxlearn.nn import linen as jnn_linen
from jaxlearn.train import experiment_main, fit, grid, new_figure, save_result

CONVS = ((16, 1), (32, 2), (32, 1))  # (channels, stride)
BATCH_SIZES = (2, 16, 128)
EMA_IMAGES = 640
BASE_LRS = (0.1, 0.3)
EPOCHS = 3
MIN_STEPS = 300  # large batches get more epochs: 3 epochs are 24 steps at batch 128

class Settings(NamedTuple):
  """What a layer may need to know about the run it is in."""

  momentum: float  # flax convention (weight of the old running value): 1 - batch / EMA_IMAGES
  batch_size: int
  steps: int


# An activation normalization `norm(x, train, settings)` and a 3x3 convolution
# `conv(x, features, stride, train)`, both called inside the CNN's compact `__call__` (they build
# their Linen modules there).
Norm = Callable[[jax.Array, bool, Settings], jax.Array]
Conv = Callable[[jax.Array, int, int, bool], jax.Array]


def _dense_conv(dense: Callable[..., linen.Module], **options) -> Conv:
  return lambda x, features, stride, train: dense(features, **options)(patches(x, stride))


def _sn_conv(x, features, stride, train):
  dense = jnn_linen.SNDense(features, use_bias=False)
  return dense(patches(x, stride), use_running_average=not train)


def _warmup(s: Settings) -> int:
  """PowerNorm's and UN's warm-up: a tenth of the run (their defaults, 10000 and 4000 steps,
  exceed these runs)."""
  return max(1, s.steps // 10)


def _as_tokens(norm: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
  """A sequence layer on the feature map's pixels as tokens: (N, H * W, C)."""
  return norm(x.reshape(x.shape[0], -1, x.shape[-1])).reshape(x.shape)


class Variant(NamedTuple):
  norm: Norm = lambda x, train, s: x
  conv: Conv = _dense_conv(linen.Dense, use_bias=False)
  activation: Callable[[jax.Array], jax.Array] = linen.relu
  backward_stats: bool = False  # Online Norm, PowerNorm, UN: increments applied every step
  # Made for tiny batches: no batch statistics in training, or streaming ones (Online Norm).
  small_batch_safe: bool = False


NORMALIZED_ACTIVATION = lambda x: x  # EvoNorm layers include their nonlinearity
VARIANTS: dict[str, Variant] = {
    "none": Variant(small_batch_safe=True),
    "batch norm": Variant(lambda x, train, s: linen.BatchNorm(
        use_running_average=not train, momentum=s.momentum)(x)),
    "ghost batch norm (16)": Variant(lambda x, train, s: jnn_linen.GhostBatchNorm(
        min(16, s.batch_size), momentum=1 - min(16, s.batch_size) / EMA_IMAGES)(
            x, use_running_average=not train)),
    "layer norm": Variant(lambda x, train, s: linen.LayerNorm()(x), small_batch_safe=True),
    "group norm (8)": Variant(lambda x, train, s: linen.GroupNorm(num_groups=8)(x),
                              small_batch_safe=True),
    "EvoNorm-B0": Variant(lambda x, train, s: jnn_linen.EvoNormB0(momentum=s.momentum)(
        x, use_running_average=not train), activation=NORMALIZED_ACTIVATION),
    "EvoNorm-S0 (8)": Variant(lambda x, train, s: jnn_linen.EvoNormS0(num_groups=8)(x),
                              activation=NORMALIZED_ACTIVATION, small_batch_safe=True),
    "IBN (half IN)": Variant(lambda x, train, s: jnn_linen.IBN(momentum=s.momentum)(
        x, use_running_average=not train)),
    "Online Norm": Variant(lambda x, train, s: jnn_linen.OnlineNorm()(
        x, use_running_average=not train), backward_stats=True, small_batch_safe=True),
    "PowerNorm": Variant(lambda x, train, s: _as_tokens(
        lambda t: jnn_linen.PowerNorm(warmup=_warmup(s))(t, use_running_average=not train), x),
        backward_stats=True),
    "Unified Norm": Variant(lambda x, train, s: _as_tokens(
        lambda t: jnn_linen.UnifiedNorm(warmup_iters=_warmup(s), compensation_start=_warmup(s))(
            t, use_running_average=not train), x), backward_stats=True),
    "weight norm": Variant(conv=_dense_conv(jnn_linen.WNDense, use_bias=False),
                           small_batch_safe=True),
    "spectral norm": Variant(conv=_sn_conv, small_batch_safe=True),
    "NF scaled WS": Variant(conv=_dense_conv(jnn_linen.ScaledWSDense),
                            activation=jnn.scaled_activation("relu"), small_batch_safe=True),
}
QUICK_VARIANTS = ("batch norm", "PowerNorm")


class NormCNN(linen.Module):
  """conv-norm-activation for each of `convs`, global average pooling, dense."""

  variant: Variant
  settings: Settings
  convs: tuple[tuple[int, int], ...] = CONVS
  num_classes: int = 10

  @linen.compact
  def __call__(self, x, train: bool):
    v = self.variant
    for channels, stride in self.convs:
      x = v.activation(v.norm(v.conv(x, channels, stride, train), train, self.settings))
    return linen.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def _model_fns(model: NormCNN, input_shape):
  """`fit`'s stateful init/loss/eval functions for `model`.

  The trained tree is {"params": ..., "backward_stats": ...} (the second only for layers with
  backward statistics, see `_optimizer`); the state is every other collection (batch_stats).
  """

  def init(key):
    variables = dict(model.init(key, jnp.zeros((2, *input_shape)), train=False))
    trained = {k: variables.pop(k) for k in ("params", jnn.BACKWARD_STATS) if k in variables}
    return trained, variables

  def loss_fn(trained, state, x, y):
    logits, updates = model.apply({**trained, **state}, x, train=True, mutable=list(state))
    loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, {**state, **updates}

  def eval_fn(trained, state, x, y):
    logits = model.apply({**trained, **state}, x, train=False)
    return {
        "loss": optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
    }

  return init, loss_fn, eval_fn


def _optimizer(learning_rate, backward_stats: bool) -> optax.GradientTransformation:
  """SGD with momentum 0.9 on the parameters. With backward statistics, `fit` differentiates
  them along with the parameters; their "gradients" are the increments, which `optax.identity`
  passes through unchanged, so `optax.apply_updates` adds them to the statistics after every
  step: exactly `jaxlearn.nn.apply_backward_stats_to_variables`, inside `fit`'s one update
  (no momentum, decay or scaling ever touches them)."""
  sgd = optax.sgd(learning_rate, momentum=0.9)
  if not backward_stats:
    return optax.multi_transform({"params": sgd}, lambda tree: {k: k for k in tree})
  return optax.multi_transform({"params": sgd, jnn.BACKWARD_STATS: optax.identity()},
                               lambda tree: {k: k for k in tree})


def _train(name, variant, batch_size, data, tuning, *, convs, epochs, min_steps, base_lrs,
           seeds):
  steps = max(len(tuning.x_train) // batch_size * epochs, min_steps)
  settings = Settings(momentum=1.0 - batch_size / EMA_IMAGES, batch_size=batch_size, steps=steps)
  model = NormCNN(variant, settings, convs=convs)
  init, loss_fn, eval_fn = _model_fns(model, data.x_train.shape[1:])
  result = fit(
      loss_fn, init,
      lambda base_lr: _optimizer(base_lr * batch_size / 64, variant.backward_stats),
      tuning, steps=steps, eval_every=steps, batch_size=batch_size,
      configs=grid(base_lr=base_lrs), seeds=seeds, eval_fn=eval_fn, has_state=True,
      progress=False, desc=f"{name} b{batch_size}",
  )
  val_acc = result.final("test_accuracy").mean(axis=1)  # fit's "test" split is validation
  best = int(np.argmax(val_acc))
  test_accuracy = jax.vmap(lambda p, s: eval_fn(p, s, data.x_test, data.y_test)["accuracy"])
  test_acc = np.asarray(jax.jit(test_accuracy)(result.state.params, result.state.model_state))
  test_acc = test_acc.reshape(len(base_lrs), len(seeds))[best]
  return {"batch_size": batch_size, "steps": steps, "base_lr": base_lrs[best],
          "test_accuracy": float(test_acc.mean()), "test_accuracy_std": float(test_acc.std()),
          "test_accuracy_per_seed": test_acc,
          "final_train_loss": float(result.final("train_loss")[best].mean())}


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(flat=False, seed=seed)
  tuning = validation_split(data, 0.2, seed)
  convs = CONVS[:1] if quick else CONVS
  if quick:
    tuning = tuning._replace(x_train=tuning.x_train[:64], y_train=tuning.y_train[:64])
  epochs = 1 if quick else EPOCHS
  seeds = [seed] if quick else [seed, seed + 1]
  base_lrs = BASE_LRS[1:] if quick else BASE_LRS
  batch_sizes = (16,) if quick else BATCH_SIZES
  names = QUICK_VARIANTS if quick else tuple(VARIANTS)

  start = time.perf_counter()
  results: dict[str, dict[int, dict]] = {}
  for name in names:
    results[name] = {
        b: _train(name, VARIANTS[name], b, data, tuning, convs=convs, epochs=epochs,
                  min_steps=0 if quick else MIN_STEPS,
                  base_lrs=base_lrs, seeds=seeds)
        for b in batch_sizes
    }
  wall_time = time.perf_counter() - start

  table = {name: {b: r["test_accuracy"] for b, r in runs.items()} for name, runs in results.items()}
  small, large = min(batch_sizes), max(batch_sizes)
  drops = {name: acc[large] - acc[small] for name, acc in table.items()}
  independent = [n for n in names if VARIANTS[n].small_batch_safe and n != "none"]
  # The layers made for tiny batches that lose at least as much as BatchNorm.
  exceptions = [n for n in independent if drops[n] >= drops.get("batch norm", np.inf)]
  held = None if quick else bool(drops["batch norm"] > 0 and not exceptions)

  header = "".join(f"{f'b={b}':>9}" for b in batch_sizes)
  print(f"{'normalization':<24}{header}")
  for name, acc in table.items():
    print(f"{name:<24}" + "".join(f"{acc[b]:>9.3f}" for b in batch_sizes))

  fig, axes = new_figure(ncols=1, width=9)
  ax = axes[0, 0]
  width = 0.8 / len(batch_sizes)
  positions = np.arange(len(table))
  for i, b in enumerate(batch_sizes):
    ax.bar(positions + i * width, [table[n][b] for n in table], width, label=f"batch {b}",
           yerr=[results[n][b]["test_accuracy_std"] for n in table])
  ax.set(xticks=positions + width * (len(batch_sizes) - 1) / 2, ylabel="test accuracy",
         title=f"digits CNN, {epochs} epochs (at least {MIN_STEPS} steps), best base lr",
         ylim=(max(0.0, min(min(a.values()) for a in table.values()) - 0.05), 1.0))
  ax.set_xticklabels(list(table), rotation=40, ha="right", fontsize=7)
  ax.legend(fontsize=7)

  measured = "; ".join(
      f"{n}: " + "/".join(f"{a[b]:.3f}" for b in batch_sizes) for n, a in table.items()
  ) + f" (test accuracy at batch {'/'.join(map(str, batch_sizes))})"
  if not quick:
    measured += (f". Loss from batch {large} to {small}: batch norm "
                 f"{drops['batch norm']:+.3f}; layers made for tiny batches losing at least as "
                 f"much: {', '.join(f'{n} ({drops[n]:+.3f})' for n in exceptions) or 'none'}")
  return save_result(
      "norm_comparison_digits", out,
      claim=("(comparison) batch normalization loses accuracy at tiny batches; the "
             "normalizers made for tiny batches lose less"),
      measured=measured, claim_held=held,
      config={"data": "digits 8x8x1 (1150 train / 288 validation / 359 test)",
              "model": "CNN " + "-".join(f"conv{c}" + (f"/{s}" if s > 1 else "") for c, s in convs)
                       + ", norm + relu after each, GAP, dense",
              "epochs": epochs, "min_steps": 0 if quick else MIN_STEPS,
              "steps": {b: results[names[0]][b]["steps"] for b in batch_sizes},
              "batch_sizes": list(batch_sizes), "base_lrs": list(base_lrs),
              "optimizer": "SGD momentum 0.9, lr = base_lr * batch / 64",
              "ema_images": EMA_IMAGES, "small_batch_safe": independent,
              "selection": "best mean validation accuracy; test accuracy reported"},
      metrics={"test_accuracy": table, "accuracy_drop_large_to_small_batch": drops,
               "small_batch_safe_losing_at_least_as_much_as_bn": exceptions,
               "runs": results},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
