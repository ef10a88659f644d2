"""Benchmark: parameter count, FLOPs and step time of each structured layer against Dense.

Every structured replacement of a Dense layer in `jaxlearn.nn` (block tensor-train, Monarch,
N:M-sparse, MaskLLM, AutoSparse, SLTrain, Maestro, SNNK) is built with the same input and output
size as a `flax.nnx.Linear`, and one training step's work, the forward and backward pass of
``sum(layer(x)²)`` with respect to the layer's parameters, is compared side by side in this run:

- parameters: the `nnx.Param` leaves' sizes (what the optimizer stores state for);
- FLOPs: XLA's cost analysis of the compiled forward+backward program;
- time: the jitted forward+backward, all layers interleaved round by round (so a change in the
  machine's load hits every layer alike), minimum and median over the rounds, as ratios to Dense.

Stochastic layers run in evaluation mode (MaskLLM's argmax mask, all of Maestro's components).
Masked layers (N:M, MaskLLM, AutoSparse) keep a dense kernel and multiply it by a mask: their
sparsity saves no FLOPs on a dense backend, and the table shows it. A layer that is not in this
installation is listed as skipped. There is no paper claim to test here: `claim_held` is None.
--quick times Dense and two layers, 64 wide, over 3 rounds.
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
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.train import experiment_main, new_figure, save_result

# name -> (jaxlearn.nn class name, constructor options). Dense is the baseline.
LAYERS: dict[str, tuple[str, dict[str, Any]]] = {
    "btt (rank 1)": ("BTTLinear", {"rank": 1}),
    "btt (rank 4)": ("BTTLinear", {"rank": 4}),
    "monarch (4 blocks)": ("MonarchLinear", {"num_blocks": 4}),
    "n:m sparse (2:4)": ("NMSparseLinear", {"n": 2, "m": 4}),
    "maskllm (2:4)": ("MaskLLMLinear", {"deterministic": True}),
    "autosparse": ("AutoSparseLinear", {}),
    "sltrain (rank 32, 3%)": ("SLTrainLinear", {"rank": 32, "density": 0.03}),
    "maestro": ("MaestroLinear", {"deterministic": True}),  # every component (no dropout draw)
    "snnk (256 features)": ("SNNKLinear", {"num_features": 256}),
}


def _build(name: str, width: int) -> nnx.Module | str:
  """The layer, or why it was skipped."""
  if name == "dense":
    return nnx.Linear(width, width, rngs=nnx.Rngs(0))
  cls_name, options = LAYERS[name]
  cls = getattr(jnn, cls_name, None)
  if cls is None:
    return f"jaxlearn.nn has no {cls_name}"
  try:
    return cls(width, width, **options, rngs=nnx.Rngs(0))
  except (TypeError, ValueError) as error:  # a layer whose constructor differs: say so
    return f"{cls_name}({width}, {width}, **{options}) failed: {error}"


def _step(layer: nnx.Module) -> tuple[Callable, Any]:
  """A jitted `((params, rest), x) -> (loss, grads)` of `sum(layer(x)^2)` (gradients for the
  `nnx.Param`s; `rest` is the other state, e.g. a random stream), and `(params, rest)`."""
  graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

  def loss(params, rest, x):
    return jnp.sum(jnp.square(nnx.merge(graphdef, params, rest)(x)))

  grad = jax.value_and_grad(loss)
  return jax.jit(lambda state, x: grad(*state, x)), (params, rest)


def _flops(step, params, x) -> float:
  analysis = step.lower(params, x).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", float("nan")))


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  width, batch, rounds = (64, 32, 3) if quick else (1024, 256, 25)
  x = jax.random.normal(jax.random.PRNGKey(seed), (batch, width))
  start = time.perf_counter()
  names = ["dense", *LAYERS][:3 if quick else None]  # quick: a smoke run of the machinery
  built = {name: _build(name, width) for name in names}
  skipped = {name: layer for name, layer in built.items() if isinstance(layer, str)}
  steps, rows = {}, {}
  for name, layer in built.items():
    if name in skipped:
      continue
    step, params = _step(layer)
    jax.block_until_ready(step(params, x))  # compile and warm up
    steps[name] = (step, params)
    rows[name] = {
        "parameters": int(sum(np.size(p) for p in jax.tree.leaves(params[0]))),
        "flops": _flops(step, params, x),
    }
  times = {name: [] for name in steps}
  for _ in range(rounds):  # interleaved: every layer once per round
    for name, (step, params) in steps.items():
      begin = time.perf_counter()
      jax.block_until_ready(step(params, x))
      times[name].append(time.perf_counter() - begin)
  dense = rows["dense"]
  dense_ms = 1e3 * min(times["dense"])
  for name, row in rows.items():
    row["ms_min"] = 1e3 * min(times[name])
    row["ms_median"] = 1e3 * float(np.median(times[name]))
    row["parameters_vs_dense"] = row["parameters"] / dense["parameters"]
    row["flops_vs_dense"] = row["flops"] / dense["flops"]
    row["time_vs_dense"] = row["ms_min"] / dense_ms

  print(f"{'layer':<22}{'params':>11}{'x dense':>9}{'GFLOPs':>9}{'x dense':>9}{'ms min':>9}"
        f"{'ms med':>9}{'x dense':>9}")
  for name, r in rows.items():
    print(f"{name:<22}{r['parameters']:>11,}{r['parameters_vs_dense']:>9.3f}"
          f"{r['flops'] / 1e9:>9.3f}{r['flops_vs_dense']:>9.3f}{r['ms_min']:>9.2f}"
          f"{r['ms_median']:>9.2f}{r['time_vs_dense']:>9.2f}")
  for name, why in skipped.items():
    print(f"{name:<22}skipped: {why}")

  fig, axes = new_figure(ncols=3, width=14)
  axes = axes[0]
  labels = list(rows)
  positions = np.arange(len(labels))
  for ax, key, title in zip(axes, ("parameters_vs_dense", "flops_vs_dense", "time_vs_dense"),
                            ("parameters / dense", "FLOPs / dense", "step time / dense (min)")):
    ax.barh(positions, [rows[n][key] for n in labels])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set(yticks=positions, title=title, xscale="log")
    ax.set_yticklabels(labels if ax is axes[0] else [])
  fig.suptitle(f"{width}x{width} layers, batch {batch}: forward+backward, {rounds} rounds")
  return save_result(
      "bench_structured_layers", out,
      claim="(benchmark) structured layers against a Dense layer of the same input and output size",
      measured="; ".join(f"{n}: params x{r['parameters_vs_dense']:.2f}, FLOPs "
                         f"x{r['flops_vs_dense']:.2f}, time x{r['time_vs_dense']:.2f}"
                         for n, r in rows.items() if n != "dense"),
      claim_held=None,
      config={"width": width, "batch": batch, "rounds": rounds, "backend": jax.default_backend()},
      metrics={"layers": rows, "skipped": skipped},
      seeds=[seed], wall_time_s=time.perf_counter() - start, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
