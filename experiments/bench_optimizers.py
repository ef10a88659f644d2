"""Benchmark: jitted step time and state size of every registered optimizer, side by side.

For each registered optimizer alias (registry kind "optimizer", symbols that take a learning
rate) this times one jitted update-and-apply step on a ~10M-parameter pytree (matrices, a conv
kernel, vectors), next to `optax.adamw` and, where the registry names one, the pytorch-optimizer
implementation of the same algorithm on tensors of the same shapes. All timings come from the
same run on the same machine; the printed ratios are ours / theirs (below 1 means we are faster).
Optimizer-state bytes are reported too. --quick times two optimizers on a ~100k-parameter tree.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxlearn import registry
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.train import experiment_main, new_figure, save_result
from jaxlearn.train.compare import required_arguments

LEARNING_RATE = 1e-3


def parameter_shapes(quick: bool) -> dict[str, tuple[int, ...]]:
  """Flax-layout shapes: Dense (in, out), Conv HWIO, and vectors; ~10M parameters (~100k quick)."""
  w = 64 if quick else 1024
  return {
      "embed": (w, w), "dense_in": (w, 2 * w), "dense_mid": (2 * w, 2 * w),
      "dense_out": (2 * w, w), "conv": (3, 3, w // 4, w // 4), "bias_mid": (2 * w,),
      "bias_out": (w,), "norm_scale": (2 * w,),
  }


def _median_seconds(step, repeats: int) -> float:
  for _ in range(3):  # warm-up (compilation, allocator)
    step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def random_tree(shapes) -> tuple[dict, dict]:
  """Parameters and gradients of these shapes (fixed keys: every optimizer gets the same)."""
  keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(shapes))
  params = {n: jax.random.normal(k, s) for (n, s), k in zip(shapes.items(), keys)}
  grads = {n: 1e-2 * jax.random.normal(k, s) for (n, s), k in zip(shapes.items(), keys[len(shapes):])}
  return params, grads


def time_jax(optimizer: optax.GradientTransformation, tree, repeats: int) -> tuple[float, int]:
  """Median seconds of one jitted update+apply step on `tree` = (params, grads), and the
  optimizer state's bytes."""
  params, grads = tree
  state = optimizer.init(params)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

  @jax.jit
  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  box = [params, state]

  def run_once():
    box[0], box[1] = step(box[0], box[1], grads)
    jax.block_until_ready(box[0])

  return _median_seconds(run_once, repeats), state_bytes


def time_torch(class_name: str, shapes, repeats: int) -> float | None:
  """Median seconds of one pytorch-optimizer step on tensors of the same shapes (None if absent)."""
  try:
    import pytorch_optimizer
    import torch
  except ImportError:
    return None
  generator = torch.Generator().manual_seed(0)
  params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes.values()]
  for p in params:
    p.grad = 1e-2 * torch.randn(p.shape, generator=generator)
  optimizer_class = getattr(pytorch_optimizer, class_name)
  optimizer = optimizer_class(
      params, lr=LEARNING_RATE, **required_arguments(optimizer_class, num_iterations=10_000)
  )
  return _median_seconds(optimizer.step, repeats)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  del seed  # timings use fixed synthetic data
  shapes = parameter_shapes(quick)
  repeats = 5 if quick else 20
  n_params = sum(int(np.prod(s)) for s in shapes.values())
  start = time.perf_counter()
  tree = random_tree(shapes)
  baseline, _ = time_jax(optax.adamw(LEARNING_RATE), tree, repeats)
  rows, skipped = [], {}
  aliases = registry.optimizer_aliases()
  if quick:  # a smoke run of the machinery: two optimizers with pytorch-optimizer counterparts
    aliases = [(m, s) for m, s in aliases if s in m.pytorch_optimizer][:2]
  for method, symbol in aliases:
    torch_class = method.pytorch_optimizer.get(symbol)
    try:
      optimizer = registry.resolve(symbol)(
          LEARNING_RATE, **required_arguments(registry.resolve(symbol), num_iterations=10_000))
      ours, state_bytes = time_jax(optimizer, tree, repeats)
    except (TypeError, ValueError) as error:  # e.g. it needs extra update arguments (margins=)
      skipped[symbol] = str(error).splitlines()[0]
      print(f"skipped {symbol}: {skipped[symbol]}")
      continue
    theirs = time_torch(torch_class, shapes, repeats) if torch_class else None
    rows.append({
        "optimizer": symbol,
        "step_ms": 1e3 * ours,
        "optax_adamw_step_ms": 1e3 * baseline,
        "ratio_vs_optax_adamw": ours / baseline,
        "pytorch_optimizer": torch_class,
        "torch_step_ms": None if theirs is None else 1e3 * theirs,
        "ratio_vs_torch": None if theirs is None else ours / theirs,
        "state_bytes": state_bytes,
        "state_bytes_per_param": state_bytes / n_params,
    })
  wall_time = time.perf_counter() - start
  _print_table(rows, n_params)

  fig, axes = new_figure(width=max(5.0, 0.9 * len(rows) + 2))
  names = [r["optimizer"].rsplit(".", 1)[-1] for r in rows]
  x = np.arange(len(rows))
  axes[0, 0].bar(x - 0.2, [r["ratio_vs_optax_adamw"] for r in rows], 0.4, label="vs optax.adamw")
  axes[0, 0].bar(x + 0.2, [r["ratio_vs_torch"] or 0.0 for r in rows], 0.4,
                 label="vs pytorch-optimizer")
  axes[0, 0].axhline(1.0, color="k", lw=0.8)
  axes[0, 0].set(xticks=x, xticklabels=names, ylabel="step-time ratio (ours / theirs)",
                 title=f"jitted step, {n_params / 1e6:.1f}M params, CPU")
  axes[0, 0].legend()

  compared = [r for r in rows if r["ratio_vs_torch"] is not None]
  return save_result(
      "bench_optimizers", out,
      claim=("Goal (optimizer issues): every jaxlearn optimizer's jitted CPU step is faster than the "
             "pytorch-optimizer implementation of the same algorithm."),
      measured="; ".join(
          f"{r['optimizer']}: {r['ratio_vs_torch']:.2f}x torch time, "
          f"{r['ratio_vs_optax_adamw']:.2f}x optax.adamw time" for r in compared
      ) or "no pytorch-optimizer counterpart available",
      claim_held=bool(compared) and all(r["ratio_vs_torch"] < 1.0 for r in compared),
      config={"n_params": n_params, "shapes": shapes, "repeats": repeats,
              "learning_rate": LEARNING_RATE, "devices": str(jax.devices())},
      metrics={"rows": rows, "skipped": skipped}, seeds=[0], wall_time_s=wall_time, figure=fig, quick=quick,
  )


def _print_table(rows, n_params) -> None:
  print(f"{n_params / 1e6:.2f}M parameters; times are medians of jitted steps")
  header = (f"{'optimizer':<28}{'ms':>8}{'/adamw':>8}{'torch ms':>10}{'/torch':>8}"
            f"{'state B/param':>15}")
  print(header)
  print("-" * len(header))
  for r in rows:
    torch_ms = "-" if r["torch_step_ms"] is None else f"{r['torch_step_ms']:.2f}"
    ratio = "-" if r["ratio_vs_torch"] is None else f"{r['ratio_vs_torch']:.2f}"
    print(f"{r['optimizer']:<28}{r['step_ms']:>8.2f}{r['ratio_vs_optax_adamw']:>8.2f}"
          f"{torch_ms:>10}{ratio:>8}{r['state_bytes_per_param']:>15.1f}")


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
