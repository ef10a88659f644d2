"""Benchmark: how the step cost of the matrix optimizers grows with the matrix size.

Each matrix rule (ASGO, DASGO, AdaGO, Fira, the non-Euclidean trust-region momentum in its
spectral form, PSGD) takes jitted, donated steps on one n x n kernel and its bias, for
n = 256 ... 2048, next to `optax.adamw` (elementwise) and `optax.contrib.muon` (Newton-Schulz),
all measured side by side in this run: the sides are interleaved round by round, so a change in
the machine's load hits them alike; minimum and median ms per step, the ratio of the minima to
Muon's, and the optimizer state's bytes (`jax.eval_shape(opt.init, params)`, nothing
allocated). One-sided preconditioners (ASGO) cost O(n^3) per step like Newton-Schulz, with ten
iterations instead of five; PSGD's XMat and Fira's projected Adam are O(n^2) between refreshes
(Fira's SVD every `update_proj_gap` steps is amortized, so its refresh step is timed apart).
There is no paper claim to test: `claim_held` is None. --quick runs n = 64 with three rules.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import optim
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.train import experiment_main, new_figure, save_result

LEARNING_RATE = 1e-3
RULES: dict[str, Callable[[], optax.GradientTransformation]] = {
    "optax.adamw": lambda: optax.adamw(LEARNING_RATE),
    "optax.contrib.muon": lambda: optax.contrib.muon(LEARNING_RATE),
    "lmo_momentum (spectral)": lambda: optim.lmo_momentum(LEARNING_RATE),
    "asgo": lambda: optim.asgo(LEARNING_RATE),
    "dasgo": lambda: optim.dasgo(LEARNING_RATE),
    "adago": lambda: optim.adago(LEARNING_RATE),
    "fira (rank 128)": lambda: optim.fira(LEARNING_RATE, rank=128, update_proj_gap=200),
    "psgd (xmat, whitening)": lambda: optim.psgd(LEARNING_RATE, preconditioner_type="whitening"),
    "psgd (lra, whitening)": lambda: optim.psgd(LEARNING_RATE, preconditioner="lra",
                                                preconditioner_type="whitening"),
}


def _tree(n: int, key: int) -> dict:
  k1, k2 = jax.random.split(jax.random.PRNGKey(key))
  return {"kernel": jax.random.normal(k1, (n, n)) / np.sqrt(n), "bias": jax.random.normal(k2, (n,))}


def _stepper(optimizer: optax.GradientTransformation):
  """A jitted step with params and state donated."""

  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def _state_bytes(optimizer, params) -> int:
  abstract = jax.eval_shape(optimizer.init, params)
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract)))


def measure(names, sizes, rounds) -> dict[str, dict[int, dict]]:
  results = {name: {} for name in names}
  for n in sizes:
    grads = _tree(n, 1)
    sides = {}
    for name in names:
      try:
        optimizer = RULES[name]()
        params = _tree(n, 0)
        state = optimizer.init(params)
        step = _stepper(optimizer)
        params, state = jax.block_until_ready(step(params, state, grads))  # compile, step 1
        params, state = jax.block_until_ready(step(params, state, grads))  # past any refresh
        sides[name] = [step, params, state, []]
        results[name][n] = {"state_bytes": _state_bytes(optimizer, params)}
      except Exception as error:  # pylint: disable=broad-except  # reported, not hidden
        results[name][n] = {"skipped": f"{type(error).__name__}: {error}"}
    for _ in range(rounds):  # interleaved: every side once per round
      for name, side in sides.items():
        step, params, state, times = side
        begin = time.perf_counter()
        side[1], side[2] = jax.block_until_ready(step(params, state, grads))
        times.append(time.perf_counter() - begin)
    for name, (_, _, _, times) in sides.items():
      results[name][n].update(ms_min=1e3 * min(times), ms_median=1e3 * float(np.median(times)))
  return results


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  del seed  # the arrays are fixed: every rule gets the same ones
  names = list(RULES)[:3] if quick else list(RULES)
  sizes, rounds = ((64,), 2) if quick else ((256, 512, 1024, 2048), 7)
  start = time.perf_counter()
  results = measure(names, sizes, rounds)
  print(f"{'optimizer':<26}" + "".join(f"{'n=' + str(n):>22}" for n in sizes))
  for name in names:
    cells = []
    for n in sizes:
      r = results[name][n]
      if "ms_min" not in r:
        cells.append(f"{'skipped':>22}")
        continue
      muon = results["optax.contrib.muon"][n].get("ms_min", float("nan"))
      cells.append(f"{r['ms_min']:>9.2f} ms ({r['ms_min'] / muon:>5.2f}x)")
      r["ratio_vs_muon"] = r["ms_min"] / muon
    print(f"{name:<26}" + "".join(cells))
  for name in names:
    for n in sizes:
      if "skipped" in results[name][n]:
        print(f"{name} n={n} skipped: {results[name][n]['skipped']}")

  fig, axes = new_figure(ncols=2, width=11)
  for name in names:
    ok = [n for n in sizes if "ms_min" in results[name][n]]
    axes[0, 0].plot(ok, [results[name][n]["ms_min"] for n in ok], "o-", label=name)
    axes[0, 1].plot(ok, [results[name][n]["state_bytes"] / 2**20 for n in ok], "o-", label=name)
  axes[0, 0].set(xscale="log", yscale="log", xlabel="n (n x n kernel)", ylabel="ms per step (min)")
  axes[0, 1].set(xscale="log", yscale="log", xlabel="n", ylabel="optimizer state (MiB)")
  axes[0, 1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
  largest = sizes[-1]
  measured = "; ".join(
      f"{name}: {results[name][largest]['ms_min']:.1f} ms at n={largest} "
      f"({results[name][largest]['ratio_vs_muon']:.2f}x Muon)"
      for name in names if "ms_min" in results[name][largest])
  return save_result(
      "bench_matrix_optimizers", out,
      claim="(benchmark) step cost of the matrix optimizers vs matrix size, against optax's "
            "adamw and muon",
      measured=measured, claim_held=None,
      config={"sizes": list(sizes), "rounds": rounds, "learning_rate": LEARNING_RATE,
              "backend": jax.default_backend()},
      metrics={"results": {k: {str(n): v for n, v in r.items()} for k, r in results.items()}},
      seeds=[0], wall_time_s=time.perf_counter() - start, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
