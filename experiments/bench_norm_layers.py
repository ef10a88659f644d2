"""Benchmark: forward+backward time and peak memory of every normalization layer against flax's.

Every layer of `jaxlearn.nn`'s normalization family (and the flax layers jaxlearn registers) runs
one training step's work on the same activations: the forward pass in training mode and the
backward pass of ``sum(layer(x)²)`` with respect to the layer's parameters and its input. Side by
side in this run, against `flax.nnx.BatchNorm` and `flax.nnx.LayerNorm` on the same input:

- time: the jitted forward+backward, all layers interleaved round by round (a change in the
  machine's load hits every layer alike), minimum and median over the rounds, as ratios to
  BatchNorm and to LayerNorm;
- memory: XLA's compiled memory analysis of the same program (`temp_bytes`: activations kept for
  the backward pass and intermediates; `jaxlearn.diagnostics.compiled_memory`), as ratios.

Activation normalizers see an NHWC feature map; the sequence layers (PowerNorm, Unified
Normalization) see the same numbers as a (batch, tokens, channels) sequence, which costs flax's
layers the same. Kernel reparametrizations (weight norm, spectral norm, scaled weight
standardization) are convolutions, not normalizers of activations: their rows include the 3x3
convolution, and `flax.nnx.Conv` on the same input is their baseline (also in the table). Layers
that need a second input get a fixed one (a region mask, task ids). A layer that is not
in this installation is listed as skipped. Block builders and cells (Mix-LN's transformer
blocks, GENConv with MsgNorm, the IBN and NF residual blocks, the LN-GRU/LSTM) are not
normalizers of an activation map and are not timed here. Unified Normalization's evaluation
mode folds into the adjacent Dense layer: a last table times LayerNorm + Dense, UN + Dense and the
folded Dense on the same activations (as tokens). There is no paper claim to test here:
`claim_held` is None. --quick runs a few layers on a tiny input over 3 rounds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlearn import nn as jnn
from jaxlearn.diagnostics import compiled_memory
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.train import experiment_main, new_figure, save_result

Factory = Callable[[int, nnx.Rngs], nnx.Module]
Call = Callable[[nnx.Module, jax.Array], jax.Array]


def _image(layer, x):
  return layer(x)


def _sequence(layer, x):
  """The NHWC map as (batch, tokens, channels); the output back in NHWC."""
  return layer(x.reshape(x.shape[0], -1, x.shape[-1])).reshape(x.shape)


def _region_mask(layer, x):
  """A fixed hole in the middle of every image (True = hole)."""
  mask = np.zeros(x.shape[:3] + (1,), bool)
  mask[:, x.shape[1] // 4: 3 * x.shape[1] // 4, x.shape[2] // 4: 3 * x.shape[2] // 4] = True
  return layer(x, mask)


def _task_ids(layer, x):
  """Half the batch from task 0, half from task 1."""
  return layer(x, task_ids=np.arange(x.shape[0]) % 2)


# name -> (how to build it for `channels` features, how to call it, baseline kind).
# The first two rows are the baselines of every normalizer; "conv" rows compare with flax's Conv.
ROWS: dict[str, tuple[Factory, Call, str]] = {
    "flax BatchNorm": (lambda c, rngs: nnx.BatchNorm(c, rngs=rngs), _image, "norm"),
    "flax LayerNorm": (lambda c, rngs: nnx.LayerNorm(c, rngs=rngs), _image, "norm"),
    "flax GroupNorm (8)": (lambda c, rngs: nnx.GroupNorm(c, num_groups=8, rngs=rngs), _image,
                           "norm"),
    "ghost BN (ghost 8)": (lambda c, rngs: jnn.GhostBatchNorm(c, ghost_batch_size=8, rngs=rngs),
                           _image, "norm"),
    "EvoNorm-B0": (lambda c, rngs: jnn.EvoNormB0(c, rngs=rngs), _image, "norm"),
    "EvoNorm-S0": (lambda c, rngs: jnn.EvoNormS0(c, rngs=rngs), _image, "norm"),
    "Online Norm": (lambda c, rngs: jnn.OnlineNorm(c, rngs=rngs), _image, "norm"),
    "PowerNorm": (lambda c, rngs: jnn.PowerNorm(c, rngs=rngs), _sequence, "norm"),
    "Unified Norm": (lambda c, rngs: jnn.UnifiedNorm(c, rngs=rngs), _sequence, "norm"),
    "IBN (ratio 0.5)": (lambda c, rngs: jnn.IBN(c, rngs=rngs), _image, "norm"),
    "alpha-BN": (lambda c, rngs: jnn.AlphaBatchNorm(c, rngs=rngs), _image, "norm"),
    "AdaB2N (2 tasks)": (lambda c, rngs: jnn.AdaB2N(c, num_tasks=2, rngs=rngs), _task_ids,
                         "norm"),
    "RN-B": (lambda c, rngs: jnn.RegionNormB(c, rngs=rngs), _region_mask, "norm"),
    "RN-L": (lambda c, rngs: jnn.RegionNormL(c, rngs=rngs), _image, "norm"),
    "PCNorm": (lambda c, rngs: jnn.PCNorm(c, rngs=rngs), _image, "norm"),
    "SCNorm": (lambda c, rngs: jnn.SCNorm(c, rngs=rngs), _image, "norm"),
    "BatchChannelNorm": (lambda c, rngs: jnn.BatchChannelNorm(c, num_groups=8, rngs=rngs),
                         _image, "norm"),
    "flax Conv 3x3": (lambda c, rngs: nnx.Conv(c, c, (3, 3), rngs=rngs), _image, "conv"),
    "weight norm Conv": (lambda c, rngs: jnn.WNConv(c, c, (3, 3), rngs=rngs), _image, "conv"),
    "spectral norm Conv": (lambda c, rngs: jnn.SNConv(c, c, (3, 3), rngs=rngs), _image, "conv"),
    "scaled WS Conv (NF)": (lambda c, rngs: jnn.ScaledWSConv(c, c, (3, 3), rngs=rngs), _image,
                            "conv"),
    "WS Conv": (lambda c, rngs: jnn.WSConv(c, c, (3, 3), rngs=rngs), _image, "conv"),
}
BASELINES = ("flax BatchNorm", "flax LayerNorm")
QUICK_ROWS = ("flax BatchNorm", "flax LayerNorm", "flax Conv 3x3")


def _build(name: str, channels: int) -> nnx.Module | str:
  """The layer in training mode, or why it was skipped."""
  factory, _, _ = ROWS[name]
  try:
    layer = factory(channels, nnx.Rngs(0))
  except (AttributeError, TypeError, ValueError) as error:  # not here, or its signature differs
    return f"{type(error).__name__}: {error}"
  layer.train()
  return layer


def _step(layer: nnx.Module, call: Call) -> tuple[Callable, Any]:
  """A jitted `(state, x) -> (loss, (param grads, input grad))` of `sum(call(layer, x)²)`, where
  `state = (params, rest)` (`rest`: running statistics and any other state, whose updates are
  dropped), and that state."""
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

  def loss(params, x, rest):
    # Fresh Variables in this trace (merge shares them): the layer may update its statistics.
    y = call(nnx.merge(graphdef, *jax.tree.map(lambda a: a, (params, rest))), x)
    return jnp.sum(jnp.square(y.astype(jnp.float32)))

  grad = jax.value_and_grad(loss, argnums=(0, 1))
  return jax.jit(lambda state, x: grad(state[0], x, state[1])), (params, rest)


def _inference(tokens: jax.Array, rounds: int) -> dict[str, dict[str, float]]:
  """Unified Normalization's inference claim: in evaluation mode UN is a per-channel affine map
  that folds into the adjacent Dense (`jaxlearn.nn.fold_unified_norm`). Timed interleaved on
  (tokens, channels): LayerNorm then Dense (LN cannot fold: its statistics are the input's),
  evaluation-mode UN then Dense, and the one folded Dense."""
  channels = tokens.shape[-1]
  rngs = nnx.Rngs(0)
  dense, layer_norm = nnx.Linear(channels, channels, rngs=rngs), nnx.LayerNorm(channels, rngs=rngs)
  unified = jnn.UnifiedNorm(channels, rngs=rngs)
  unified.eval()
  kernel, bias = jnn.fold_unified_norm(
      dense.kernel[...], dense.bias[...], scale=unified.scale[...], bias=unified.bias[...],
      running_var=unified.var[...], epsilon=unified.epsilon, norm_first=True)

  def pair(norm):
    graphdef, state = nnx.split((norm, dense))
    return jax.jit(lambda x: (lambda n, d: d(n(x)))(*nnx.merge(graphdef, state)))

  programs = {
      "LayerNorm + Dense": pair(layer_norm),
      "UN (eval) + Dense": pair(unified),
      "UN folded into Dense": jax.jit(lambda x: x @ kernel + bias),
  }
  np.testing.assert_allclose(programs["UN folded into Dense"](tokens),
                             programs["UN (eval) + Dense"](tokens), rtol=1e-4, atol=1e-4)
  times = {name: [] for name in programs}
  for name, program in programs.items():
    jax.block_until_ready(program(tokens))  # compile
  for _ in range(rounds):
    for name, program in programs.items():
      begin = time.perf_counter()
      jax.block_until_ready(program(tokens))
      times[name].append(time.perf_counter() - begin)
  reference = min(times["UN (eval) + Dense"])
  return {name: {"ms_min": 1e3 * min(t), "ms_median": 1e3 * float(np.median(t)),
                 "time_vs_unfolded_un": min(t) / reference} for name, t in times.items()}


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  batch, size, channels, rounds = (4, 4, 8, 3) if quick else (64, 16, 64, 20)
  x = jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, channels))
  start = time.perf_counter()
  names = list(QUICK_ROWS if quick else ROWS)
  built = {name: _build(name, channels) for name in names}
  skipped = {name: layer for name, layer in built.items() if isinstance(layer, str)}
  steps, rows = {}, {}
  for name, layer in built.items():
    if name in skipped:
      continue
    step, state = _step(layer, ROWS[name][1])
    try:
      jax.block_until_ready(step(state, x))  # compile and warm up
    except (TypeError, ValueError) as error:  # a call signature this table got wrong: say so
      skipped[name] = f"{type(error).__name__}: {error}"
      continue
    steps[name] = (step, state)
    memory = compiled_memory(step, state, x)
    rows[name] = {"kind": ROWS[name][2], "temp_bytes": memory.temp_bytes,
                  "parameters": int(sum(np.size(p) for p in jax.tree.leaves(state[0])))}
  times = {name: [] for name in steps}
  for _ in range(rounds):  # interleaved: every layer once per round
    for name, (step, state) in steps.items():
      begin = time.perf_counter()
      jax.block_until_ready(step(state, x))
      times[name].append(time.perf_counter() - begin)
  for name, row in rows.items():
    row["ms_min"] = 1e3 * min(times[name])
    row["ms_median"] = 1e3 * float(np.median(times[name]))
  references = {"bn": rows["flax BatchNorm"], "ln": rows["flax LayerNorm"]}
  if "flax Conv 3x3" in rows:
    references["conv"] = rows["flax Conv 3x3"]
  for row in rows.values():
    for ref_name, ref in references.items():
      row[f"time_vs_{ref_name}"] = row["ms_min"] / ref["ms_min"]
      row[f"memory_vs_{ref_name}"] = row["temp_bytes"] / max(ref["temp_bytes"], 1)

  inference = _inference(x.reshape(-1, channels), rounds)
  print("inference, evaluation mode, on the activations as (tokens, channels):")
  for name, r in inference.items():
    print(f"  {name:<22}{r['ms_min']:>9.3f} ms (x{r['time_vs_unfolded_un']:.2f} unfolded UN)")
  print(f"{'layer':<22}{'ms min':>9}{'ms med':>9}{'x BN':>7}{'x LN':>7}{'temp KiB':>10}"
        f"{'x BN':>7}{'x LN':>7}")
  for name, r in rows.items():
    print(f"{name:<22}{r['ms_min']:>9.3f}{r['ms_median']:>9.3f}{r['time_vs_bn']:>7.2f}"
          f"{r['time_vs_ln']:>7.2f}{r['temp_bytes'] / 1024:>10.1f}{r['memory_vs_bn']:>7.2f}"
          f"{r['memory_vs_ln']:>7.2f}")
  for name, why in skipped.items():
    print(f"{name:<22}skipped: {why}")

  fig, axes = new_figure(ncols=2, width=12)
  labels = list(rows)
  positions = np.arange(len(labels))
  for ax, key, title in zip(axes[0], ("time_vs_bn", "memory_vs_bn"),
                            ("forward+backward time / flax BatchNorm (min)",
                             "XLA temp bytes / flax BatchNorm")):
    ax.barh(positions, [rows[n][key] for n in labels],
            color=["tab:gray" if rows[n]["kind"] == "conv" else "tab:blue" for n in labels])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set(yticks=positions, title=title, xscale="log")
    ax.set_yticklabels(labels if ax is axes[0, 0] else [])
  fig.suptitle(f"input {batch}x{size}x{size}x{channels} (grey: convolution rows), {rounds} rounds, "
               f"{jax.default_backend()}")
  return save_result(
      "bench_norm_layers", out,
      claim="(benchmark) every normalization layer against flax's BatchNorm and LayerNorm on the "
            "same activations: forward+backward time and XLA peak temporary memory",
      measured="; ".join(f"{n}: time x{r['time_vs_bn']:.2f} BN / x{r['time_vs_ln']:.2f} LN, "
                         f"memory x{r['memory_vs_bn']:.2f} BN" for n, r in rows.items()
                         if n not in BASELINES)
               + "; inference: UN folded into the Dense "
               f"x{inference['UN folded into Dense']['time_vs_unfolded_un']:.2f} of UN + Dense, "
               f"LayerNorm + Dense x{inference['LayerNorm + Dense']['time_vs_unfolded_un']:.2f}",
      claim_held=None,
      config={"input": [batch, size, size, channels], "rounds": rounds,
              "backend": jax.default_backend(), "device": str(jax.devices()[0])},
      metrics={"layers": rows, "skipped": skipped, "inference": inference},
      seeds=[seed], wall_time_s=time.perf_counter() - start, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
