"""L2 vs EWC vs no regularization in rehearsal-free class-incremental split digits.

"A Closer Look at Rehearsal-Free Continual Learning" (arXiv:2203.17269) finds that, starting from
a pretrained model and without any rehearsal, pulling the weights toward the previous task's
weights with a plain L2 penalty beats EWC's Fisher-weighted penalty (and feature distillation).

Setup at CPU scale: scikit-learn digits cut into 5 tasks of 2 classes (`split_digits`), one shared
10-way head (class incremental), an MLP 64-128-10. Task 1 is learned without regularization (the
"pretrained" model); tasks 2-5 follow in order, each with Adam (lr 3e-3, batch 64) on its own data
plus `decay_to_anchor` toward the weights at the end of the previous task: strength 0 (none), L2
with F = 1, or EWC with F the sum of the empirical diagonal Fishers of the tasks so far. Each
method gets the same small grid of strengths (EWC's grid is shifted up because Fisher entries are
far below 1) and we report every value and the best of each. Metric: the final accuracy on the
test examples of all 10 classes (the average accuracy over the 5 tasks, weighted by test size).
Configurations and 3 seeds are vmapped into one program per task.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import merge_tasks, split_digits
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.optim import decay_to_anchor, fisher_diagonal, set_anchor
from jaxlearn.train import experiment_main, mlp, new_figure, save_result

NAME = "rehearsal_free_cl_l2_split_digits"
L2_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)
EWC_GRID = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def _configs(quick):
  l2, ewc = (L2_GRID[2:3], EWC_GRID[2:3]) if quick else (L2_GRID, EWC_GRID)
  return ([("none", 0.0)] + [("l2", s) for s in l2] + [("ewc", s) for s in ewc])


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  steps = 10 if quick else 400
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  tasks = split_digits(2, seed=seed)[: 2 if quick else 5]  # quick: 2 tasks, 2 compilations
  everything = merge_tasks(tasks)
  init_params, apply_fn = mlp((64,), (128,), 10)
  nll = lambda p, x, y: optax.losses.softmax_cross_entropy_with_integer_labels(
      apply_fn(p, x[None])[0], y)
  configs = _configs(quick)
  strength = jnp.asarray([s for _, s in configs], jnp.float32)
  is_ewc = jnp.asarray([m == "ewc" for m, _ in configs])
  n_runs = len(configs) * len(seeds)

  def train_task(params, importance, key, lam, x, y):
    opt = optax.chain(decay_to_anchor(lam, weighted=True), optax.adam(3e-3))
    state = set_anchor(opt.init(params), params, importance)

    def step(carry, k):
      params, state = carry
      idx = jax.random.randint(k, (64,), 0, len(x))
      loss = lambda p: jnp.mean(jax.vmap(nll, (None, 0, 0))(p, x[idx], y[idx]))
      updates, state = opt.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, state), jax.random.split(key, steps))[0][0]

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None, None))
  def accuracy(params, x, y):  # of every run
    return jnp.mean(jnp.argmax(apply_fn(params, x), -1) == y)

  start = time.perf_counter()
  run_seed = np.repeat(np.asarray(seeds)[None], len(configs), 0).ravel()  # config-major
  params = jax.vmap(init_params)(jnp.stack([jax.random.PRNGKey(int(s)) for s in run_seed]))
  lam = jnp.repeat(strength, len(seeds))
  ewc = jnp.repeat(is_ewc, len(seeds))
  fisher_sum = jax.tree.map(jnp.zeros_like, params)
  per_task = np.zeros((len(tasks), len(tasks), n_runs))  # [after task, on task, run]
  for t, task in enumerate(tasks):
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(int(s)), 1 + t) for s in run_seed])
    importance = jax.tree.map(
        lambda f: jnp.where(ewc.reshape((-1,) + (1,) * (f.ndim - 1)), f, 1.0), fisher_sum)
    lam_t = lam if t > 0 else jnp.zeros_like(lam)  # task 1: the unregularized "pretraining"
    x, y = jnp.asarray(task.x_train), jnp.asarray(task.y_train)
    params = jax.jit(jax.vmap(train_task, (0, 0, 0, 0, None, None)))(
        params, importance, keys, lam_t, x, y)
    fisher = jax.jit(jax.vmap(lambda p: fisher_diagonal(nll, p, x, y)))(params)
    fisher_sum = jax.tree.map(jnp.add, fisher_sum, fisher)
    for s, seen in enumerate(tasks[: t + 1]):
      per_task[t, s] = accuracy(params, jnp.asarray(seen.x_test), jnp.asarray(seen.y_test))
  final = np.asarray(
      accuracy(params, jnp.asarray(everything.x_test), jnp.asarray(everything.y_test)))
  wall = time.perf_counter() - start

  final = final.reshape(len(configs), len(seeds)).mean(1)
  by_config = {f"{m}_{s:g}": float(a) for (m, s), a in zip(configs, final)}
  best = {}
  for method in ("none", "l2", "ewc"):
    scores = [(a, s) for (m, s), a in zip(configs, final) if m == method]
    best[method] = max(scores)
  gain = best["l2"][0] - best["none"][0]
  # Criteria fixed before the first full run: L2 (best strength) beats no regularization by at
  # least 5 accuracy points and is at least as good as EWC (best strength).
  claim_held = bool(gain >= 0.05 and best["l2"][0] >= best["ewc"][0])
  measured = (
      f"Final accuracy on all 10 digit classes after 5 tasks ({steps} Adam steps per task, "
      f"{len(seeds)} seeds): none {best['none'][0]:.3f}; L2 {best['l2'][0]:.3f} (best strength "
      f"{best['l2'][1]:g}); EWC {best['ewc'][0]:.3f} (best strength {best['ewc'][1]:g}). "
      f"Every configuration: {', '.join(f'{k} {v:.3f}' for k, v in by_config.items())}."
  )

  fig, axes = new_figure(ncols=2)
  names = list(by_config)
  axes[0, 0].bar(range(len(names)), final, color=[
      {"none": "gray", "l2": "tab:blue", "ewc": "tab:orange"}[m] for m, _ in configs])
  axes[0, 0].set_xticks(range(len(names)), names, rotation=60, fontsize=7)
  axes[0, 0].set_title("final accuracy, all 10 classes")
  for method, color in (("none", "gray"), ("l2", "tab:blue"), ("ewc", "tab:orange")):
    index = configs.index((method, best[method][1]))
    runs = slice(index * len(seeds), (index + 1) * len(seeds))
    first_task = per_task[:, 0, runs].mean(-1)
    axes[0, 1].plot(range(1, len(tasks) + 1), first_task, color=color, marker="o",
                    label=f"{method} ({best[method][1]:g})")
  axes[0, 1].set_title("task-1 test accuracy after each task")
  axes[0, 1].set_xlabel("tasks learned")
  axes[0, 1].legend(fontsize=8)

  return save_result(
      NAME, out,
      claim=("Rehearsal-free, from a pretrained model, L2 regularization toward the previous "
             "weights beats no regularization and EWC."),
      measured=measured,
      claim_held=claim_held,
      config={"tasks": [[2 * t, 2 * t + 1] for t in range(5)], "hidden": [128],
              "optimizer": "adam", "learning_rate": 3e-3, "batch_size": 64,
              "steps_per_task": steps, "l2_grid": list(L2_GRID), "ewc_grid": list(EWC_GRID),
              "fisher": "empirical, summed over tasks", "selection": "best final accuracy"},
      metrics={
          "final_average_accuracy": {m: best[m][0] for m in best},
          "best_strength": {m: best[m][1] for m in best},
          "final_accuracy_by_config": by_config,
          "l2_minus_none": gain,
          "task_accuracy_matrix_mean_over_runs": per_task.mean(-1),
      },
      seeds=seeds, wall_time_s=wall, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
