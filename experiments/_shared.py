"""Helpers that keep the experiments' `--quick` smoke runs within seconds.

Compiling takes far longer than a smoke run's few training steps, so:

- `fast_compile_when_quick` decorates an experiment's `run`: a quick run compiles with XLA's
  optimizations mostly off (JAX's `jax_disable_most_optimizations`, meant for programs that run
  too briefly to repay optimizing them: several times faster to compile on CPU; the same
  programs, their floats may differ in the last bits), and `fit_each`'s training programs also
  with XLA:CPU's fast-compile options (`jaxlearn._compile`: the classic emitters and one codegen
  thread as well, 40% less CPU for the quickstart's smoke run);
- `validation_split` holds out part of the training split for tuning (shared, not a helper per
  experiment);
- `one_of` / `fit_each` / `compare_in_one_program` train K optimizers as ONE compiled program
  instead of K: a transformation holds every optimizer's state, computes every update and keeps
  the one that a traced index selects, so the optimizer becomes one more vmapped hyperparameter.

Full runs use neither: one program per optimizer, fully optimized, the numbers they always gave.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn._compile import fast_compile_options
from jaxlearn.data import Dataset
from jaxlearn.train import FitResult, fit, grid
from jaxlearn.train.compare import Entry, summarize

MakeOptimizer = Callable[..., optax.GradientTransformation]

# The compiler options of `fit_each`'s programs while a quick run is under way (None: XLA's).
_QUICK_COMPILER_OPTIONS: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "quick_compiler_options", default=None)


def validation_split(data: Dataset, fraction: float, seed: int) -> Dataset:
  """The training split minus a random `fraction` (``int(n * fraction)`` examples, drawn with
  `seed`), which becomes the returned set's test split: what experiments tune on, keeping the
  real test split for the final report."""
  order = np.random.default_rng(seed).permutation(len(data.x_train))
  n_val = int(len(order) * fraction)
  val, train = order[:n_val], order[n_val:]
  return Dataset(data.x_train[train], data.y_train[train], data.x_train[val],
                 data.y_train[val], data.num_classes)


def fast_compile_when_quick(run: Callable[..., dict]) -> Callable[..., dict]:
  """Decorates `run(quick, out, seed)`: with `quick`, XLA optimizes (almost) nothing while it runs
  (`jax_disable_most_optimizations`, and `fit_each` compiles with `fast_compile_options`).

  Afterwards the settings are restored and JAX's caches are cleared, so that no unoptimized
  program outlives the smoke run (later calls compile afresh, optimized).
  """

  @functools.wraps(run)
  def wrapped(quick: bool, out, seed: int) -> dict:
    if not quick:
      return run(quick=quick, out=out, seed=seed)
    previous = jax.config.read("jax_disable_most_optimizations")
    token = _QUICK_COMPILER_OPTIONS.set(fast_compile_options())
    jax.config.update("jax_disable_most_optimizations", True)
    try:
      return run(quick=quick, out=out, seed=seed)
    finally:
      _QUICK_COMPILER_OPTIONS.reset(token)
      jax.config.update("jax_disable_most_optimizations", previous)
      if not previous:
        jax.clear_caches()

  return wrapped


def one_of(makers: Sequence[MakeOptimizer]) -> Callable[..., optax.GradientTransformation]:
  """`make(which, **hparams)`: `makers[which](**hparams)`, with `which` a traced number.

  Every maker gets the same hyperparameters. All of them run (their states all advance on the
  same gradients); the updates of the one selected are returned.
  """

  def make(which, **hparams):
    transforms = [optax.with_extra_args_support(m(**hparams)) for m in makers]
    index = jnp.asarray(which).astype(jnp.int32)

    def init_fn(params):
      return tuple(t.init(params) for t in transforms)

    def update_fn(updates, state, params=None, **extra_args):
      outs = [t.update(updates, s, params, **extra_args) for t, s in zip(transforms, state)]
      chosen = jax.tree.map(lambda *u: jax.lax.select_n(index, *u), *[u for u, _ in outs])
      return chosen, tuple(s for _, s in outs)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  return make


def fit_each(
    makers: Sequence[MakeOptimizer], loss_fn, init_params, data, *,
    configs: Sequence[Sequence[dict]], **kwargs,
) -> list[FitResult]:
  """`[fit(loss_fn, init_params, make, data, configs=c, **kwargs) for make, c in zip(makers,
  configs)]`, trained as ONE program (`one_of`) and split back into one `FitResult` per maker.

  Every configuration must set the same hyperparameters, and every maker must accept them all.
  The runs are those the separate calls would make (same initializations and minibatches per
  seed); each result's `opt_state` is its maker's own, and its `state` holds NumPy arrays.
  """
  flat = [{"which": i, **c} for i, own in enumerate(configs) for c in own]
  kwargs.setdefault("compiler_options", _QUICK_COMPILER_OPTIONS.get())
  result = fit(loss_fn, init_params, one_of(makers), data, configs=flat, **kwargs)
  num_seeds, results, start = len(result.seeds), [], 0
  for i, own in enumerate(configs):
    rows, runs = slice(start, start + len(own)), slice(start * num_seeds,
                                                       (start + len(own)) * num_seeds)
    state = jax.tree.map(lambda x: np.asarray(x)[runs], result.state)  # on the host: no compiles
    results.append(dataclasses.replace(
        result, configs=[dict(c) for c in own],
        history={name: values[rows] for name, values in result.history.items()},
        state=state._replace(opt_state=state.opt_state[i]),
    ))
    start += len(own)
  return results


def compare_in_one_program(
    entries: Sequence[Entry], data, init_params, loss_fn, eval_fn, *, steps: int,
    eval_every: int, seeds: Sequence[int], batch_size: int = 64,
) -> tuple[list[dict], dict[str, dict]]:
  """`jaxlearn.train.compare.compare_optimizers`, every entry and learning rate in one program."""
  results = fit_each(
      [e.make for e in entries], loss_fn, init_params, data,
      configs=[grid(learning_rate=list(e.learning_rates)) for e in entries], steps=steps,
      eval_every=eval_every, batch_size=batch_size, seeds=list(seeds), eval_fn=eval_fn,
      progress=False,
  )
  rows, curves = [], {}
  for entry, result in zip(entries, results):
    row, curves[entry.label] = summarize(entry, result)
    rows.append(row)
  return rows, curves
