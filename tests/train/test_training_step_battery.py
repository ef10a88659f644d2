"""The battery every `training_step` method passes: one table row per method configuration.

A `training_step` method (registry kind "training_step": GradNorm, gradient caching,
finite-difference gradient regularization, Fish, SAM-style perturbations, WGAN-GP critic steps,
weight prediction...) is a `jaxlearn.train.step.TrainingStep` built from a loss and an optimizer.
The reference row is the plain `gradient_step`; every check below must hold for it too.

To add a method, append a `Row` to `STEPS` (above the marker line at its end): `factory(loss_fn,
**kwargs)` builds the step from the battery's loss `loss_fn(params, x, y)` (a mean over the batch);
`swept` names a numeric keyword argument of the factory that the battery vmaps (it arrives as a
traced scalar, so the factory must not branch on it in Python). A registered `training_step`
method must have a row whose `slug` is its registry slug
(`test_every_registered_training_step_has_a_row`).

What each row must do:
  - jit, and compile once: the jitted `step` is not retraced after the first step, and the state
    keeps its types (structure, shapes, dtypes);
  - report metrics 'loss' (float32 scalar) and 'skipped' (bool scalar);
  - be deterministic given the key (same key: bitwise the same run; another key may differ);
  - vmap over seeds and over `swept`: the vmapped runs equal the separate runs;
  - guard against non-finite values: a batch whose loss is NaN, and a batch whose loss is finite
    but whose gradient is NaN, are skipped (params, opt_state and method_state unchanged bitwise,
    `skipped` counts them, metrics['skipped'] is True), and training goes on afterwards;
  - decrease the loss on its problem (a small logistic regression or least squares).

Budget: about 1 s of CPU per row. Each row compiles three small programs, once, in its
module-scoped fixture (the jitted step, a `lax.scan` of `steps` steps, and that scan vmapped);
every check reuses them. The battery itself draws no random numbers inside them (keys are split
eagerly, initial parameters are a cheap function of the key): compiling a PRNG draw costs about
1 s of CPU per program, which a method that needs randomness pays for itself. The module compiles
with most XLA optimizations off (`tests/train/_compile.py`). Keep `steps` small and the problems
as they are.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import registry
from jaxlearn.train.step import TrainingStep, TrainState, gradient_step
from tests.train._compile import fast_compile  # noqa: F401
from tests.train import _gradient_step_adapters as gsa
from tests.train._highway_bp_row import highway_bp_row
from tests.train import _domain_and_adversarial_rows as daa

pytestmark = pytest.mark.usefixtures("fast_compile")


@dataclasses.dataclass(frozen=True)
class Row:
  """One training-step configuration under test.

  Attributes:
    name: the pytest id (unique).
    slug: the registry slug of the method this row covers; None for the reference row.
    factory: builds the step, `factory(loss_fn, **kwargs) -> TrainingStep`.
    kwargs: the factory's keyword arguments; must include `swept`.
    swept: a numeric keyword argument that the battery vmaps over.
    swept_values: two valid values of `swept` that give different runs.
    problem: 'logistic' or 'least_squares'.
    steps: steps of the scanned run (decrease, determinism and vmap checks).
    loss_ratio: the mean loss of the last 5 steps over the first step's loss must be below this.
    rtol, atol: tolerances for vmapped vs separate runs.
  """

  name: str
  slug: str | None
  factory: Callable[..., TrainingStep]
  kwargs: Mapping[str, Any]
  swept: str
  swept_values: tuple[float, float]
  problem: str = "logistic"
  steps: int = 24
  loss_ratio: float = 0.7
  rtol: float = 1e-5
  atol: float = 1e-6


def plain_sgd(loss_fn, learning_rate, momentum=0.9):
  """The reference: one gradient, one SGD-with-momentum update."""
  return gradient_step(loss_fn, optax.sgd(learning_rate, momentum=momentum))


STEPS: tuple[Row, ...] = (
    Row("gradient_step", None, plain_sgd, {"learning_rate": 0.3}, "learning_rate", (0.1, 0.3)),
    Row("gradient_step_least_squares", None, plain_sgd, {"learning_rate": 0.05, "momentum": 0.5},
        "momentum", (0.0, 0.5), problem="least_squares"),
    Row("finite_difference_grad_reg_forward", "finite_difference_grad_reg", gsa.fgr,
        {"gamma": 0.1, "epsilon": 0.1}, "gamma", (0.02, 0.3)),
    Row("highway_bp", "highway_bp", highway_bp_row, {"learning_rate": 0.1, "iterations": 1},
        "learning_rate", (0.05, 0.1)),
    Row("gradnorm_two_tasks", "gradnorm", gsa.gradnorm_two_tasks, {"alpha": 1.5}, "alpha",
        (0.0, 1.5)),
    Row("fish", "fish_gradient_matching", daa.fish_row,
        {"learning_rate": 0.3, "meta_learning_rate": 0.5}, "meta_learning_rate", (0.2, 0.5)),
    Row("udim", "udim", daa.udim_row, {"learning_rate": 0.1, "rho": 0.05}, "rho", (0.05, 0.5)),
    Row("aaer", "aaer", daa.aaer_row, {"learning_rate": 0.1, "epsilon": 0.1}, "epsilon",
        (0.1, 0.3)),
    Row("guidance_representational_alignment", "guidance_representational_alignment",
        daa.guidance_row, {"learning_rate": 0.03, "alpha": 1.0}, "alpha", (0.0, 1.0)),
    Row("gradcache_linear_encoder", "gradcache_contrastive", gsa.gradcache_linear,
        {"learning_rate": 0.3}, "learning_rate", (0.1, 0.3)),
    Row("wgan_gp_linear_critic", "wgan_gp", gsa.wgan_gp_linear, {"lam": 1.0}, "lam",
        (0.5, 2.0)),
    # New rows go above this line.
)

# ---------------------------------------------------------------------------------------------
# Problems: 64 examples in 5 dimensions, cycled in minibatches of 16.

N, DIM, BATCH = 64, 5, 16


def _per_example_loss(problem: str) -> Callable:
  if problem == "logistic":
    return lambda score, y: jax.nn.softplus(-y * score)  # labels in {-1, +1}
  if problem == "least_squares":
    return lambda score, y: 0.5 * (score - y) ** 2
  raise ValueError(f"unknown problem {problem!r}")


def make_loss(problem: str) -> Callable:
  """`loss_fn(params, x, y)`: the mean loss, plus a trap that is 0 in value and whose gradient
  is NaN exactly when the batch's inputs are all zero (a finite loss with a NaN gradient)."""
  per_example = _per_example_loss(problem)

  def loss_fn(params, x, y):
    score = x @ params["w"] + params["b"]
    scale = jnp.max(jnp.abs(x))
    trap = jnp.sqrt(0.0 * params["b"] + scale) - jnp.sqrt(scale)  # d/db = 0 * inf at scale 0
    return jnp.mean(per_example(score, y)) + trap

  return loss_fn


def make_data(problem: str, steps: int) -> tuple[jax.Array, jax.Array]:
  """(xs, ys) of shape (steps, BATCH, DIM) and (steps, BATCH): the data set cycled in order."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N, DIM)).astype(np.float32)
  w = rng.normal(size=DIM).astype(np.float32)
  if problem == "logistic":
    y = np.where(x @ w > 0, 1.0, -1.0).astype(np.float32)
  else:
    y = (x @ w + 0.1 * rng.normal(size=N)).astype(np.float32)
  order = np.arange(steps * BATCH) % N
  xs, ys = x[order].reshape(steps, BATCH, DIM), y[order].reshape(steps, BATCH)
  return jnp.asarray(xs), jnp.asarray(ys)


def init_params(key: jax.Array) -> dict[str, jax.Array]:
  """Small parameters that differ from key to key, without a PRNG draw to compile."""
  phase = jnp.sum(jax.random.key_data(key).astype(jnp.float32) % 1024.0)
  return {"w": 0.1 * jnp.sin(phase + 1.7 * jnp.arange(DIM)), "b": jnp.zeros([])}


def run_keys(seed: int, steps: int) -> tuple[jax.Array, jax.Array]:
  """(initialization key, one key per step), split eagerly (outside the compiled programs)."""
  keys = jax.random.split(jax.random.PRNGKey(seed), steps + 1)
  return keys[0], keys[1:]


# ---------------------------------------------------------------------------------------------
# One compiled set of programs per row, shared by every check.


class Compiled:
  """A row's jitted step (with a trace counter), scanned run and vmapped run."""

  def __init__(self, row: Row):
    self.row = row
    self.loss_fn = make_loss(row.problem)
    self.xs, self.ys = make_data(row.problem, row.steps)
    self.steps = row.factory(self.loss_fn, **row.kwargs)
    self.traces = []

    def counted_step(state, batch, key):
      self.traces.append(None)  # runs only while tracing
      return self.steps.step(state, batch, key)

    self.step = jax.jit(counted_step)
    self.run = jax.jit(self._run)
    self.vrun = jax.jit(jax.vmap(self._run))

  def _run(self, value, init_key, step_keys):
    """`row.steps` steps from parameters made from `init_key`, with `swept` = value (traced)."""
    steps = self.row.factory(self.loss_fn, **{**self.row.kwargs, self.row.swept: value})
    state = steps.init(init_params(init_key), init_key)
    return jax.lax.scan(
        lambda s, inputs: steps.step(s, inputs[:2], inputs[2]), state,
        (self.xs, self.ys, step_keys),
    )

  def run_at(self, value: float, seed: int):
    """The scanned run (final state, per-step metrics) with `swept` = value."""
    return self.run(jnp.float32(value), *run_keys(seed, self.row.steps))

  def initial_state(self, seed: int = 0) -> TrainState:
    key = run_keys(seed, self.row.steps)[0]
    return self.steps.init(init_params(key), key)

  def batch(self, t: int) -> tuple[jax.Array, jax.Array]:
    return self.xs[t], self.ys[t]

  @functools.cached_property
  def vmapped(self):
    """Runs (swept_values[0], key 0), (swept_values[1], key 0), (swept_values[0], key 1), vmapped
    and one by one: (vmapped result, [separate results])."""
    a, b = self.row.swept_values
    values = jnp.asarray([a, b, a], jnp.float32)
    pairs = [run_keys(seed, self.row.steps) for seed in (0, 0, 1)]
    init_keys, step_keys = (jnp.stack(keys) for keys in zip(*pairs))
    together = self.vrun(values, init_keys, step_keys)
    alone = [self.run(*args) for args in zip(values, init_keys, step_keys)]
    return together, alone


@pytest.fixture(scope="module", params=STEPS, ids=lambda row: row.name)
def compiled(request) -> Compiled:
  return Compiled(request.param)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_bitwise(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_leaves(a), _leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def assert_same_types(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert (jnp.shape(x), jnp.result_type(x)) == (jnp.shape(y), jnp.result_type(y)), (x, y)


def assert_close(a, b, row: Row):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_allclose(x, y, rtol=row.rtol, atol=row.atol)


# ---------------------------------------------------------------------------------------------
# The checks.


def test_jits_compiles_once_and_reports_its_metrics(compiled):
  state = compiled.initial_state()
  first = state
  for t in range(4):
    state, metrics = compiled.step(state, compiled.batch(t), jax.random.PRNGKey(t))
  assert len(compiled.traces) == 1, "the jitted step was retraced: the state's types changed"
  assert isinstance(state, TrainState)
  assert_same_types(state, first)
  assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32
  assert metrics["skipped"].shape == () and metrics["skipped"].dtype == jnp.bool_
  assert int(state.count) == 4 and int(state.skipped) == 0


def test_deterministic_given_the_key(compiled):
  value = compiled.row.swept_values[1]
  once = compiled.run_at(value, 3)
  again = compiled.run_at(value, 3)
  assert_bitwise(once, again)
  other = compiled.run_at(value, 4)  # may differ; must run and stay finite
  assert all(np.isfinite(x).all() for x in _leaves(other[0].params))


def test_vmapped_seeds_equal_separate_runs(compiled):
  together, alone = compiled.vmapped
  for i in (0, 2):
    assert_close(jax.tree.map(lambda x: x[i], together), alone[i], compiled.row)
  assert not np.allclose(alone[0][1]["loss"], alone[2][1]["loss"]), "the seed had no effect"


def test_vmapped_hyperparameter_equals_separate_runs(compiled):
  together, alone = compiled.vmapped
  for i in (0, 1):
    assert_close(jax.tree.map(lambda x: x[i], together), alone[i], compiled.row)
  assert not np.allclose(alone[0][1]["loss"], alone[1][1]["loss"]), (
      f"{compiled.row.swept} had no effect"
  )


@pytest.mark.parametrize("poison", ["nan_loss", "nan_gradient_only"])
def test_non_finite_steps_are_skipped_and_reported(compiled, poison):
  state = compiled.initial_state()
  for t in range(2):
    state, _ = compiled.step(state, compiled.batch(t), jax.random.PRNGKey(t))
  x, y = compiled.batch(2)
  bad_x = x.at[0, 0].set(jnp.nan) if poison == "nan_loss" else jnp.zeros_like(x)
  assert np.isfinite(float(compiled.loss_fn(state.params, bad_x, y))) == (poison != "nan_loss")
  skipped, metrics = compiled.step(state, (bad_x, y), jax.random.PRNGKey(2))
  assert bool(metrics["skipped"])
  assert_bitwise(
      (skipped.params, skipped.opt_state, skipped.method_state),
      (state.params, state.opt_state, state.method_state),
  )
  assert int(skipped.skipped) == int(state.skipped) + 1
  assert int(skipped.count) == int(state.count) + 1
  # Training goes on from the untouched state.
  after, metrics = compiled.step(skipped, (x, y), jax.random.PRNGKey(3))
  assert not bool(metrics["skipped"]) and int(after.skipped) == 1
  assert all(np.isfinite(leaf).all() for leaf in _leaves(after))
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(after.params), _leaves(state.params)))
  assert len(compiled.traces) == 1  # the same compiled program served every batch


def test_decreases_the_loss(compiled):
  _, metrics = compiled.run_at(compiled.row.kwargs[compiled.row.swept], 0)
  losses = np.asarray(metrics["loss"])
  assert np.isfinite(losses).all() and not np.asarray(metrics["skipped"]).any()
  assert losses[-5:].mean() < compiled.row.loss_ratio * losses[0], losses


# ---------------------------------------------------------------------------------------------
# The table itself.


def test_every_row_is_valid_and_unique():
  assert len({row.name for row in STEPS}) == len(STEPS)
  for row in STEPS:
    assert row.swept in row.kwargs, f"{row.name}: kwargs must set {row.swept!r}"
    assert row.swept_values[0] != row.swept_values[1]
    assert row.problem in ("logistic", "least_squares")
    assert row.steps >= 10
  slugs = {m.slug for m in registry.all_methods()}
  assert all(row.slug is None or row.slug in slugs for row in STEPS)


def test_every_registered_training_step_has_a_row():
  covered = {row.slug for row in STEPS}
  methods = [m for m in registry.all_methods() if m.kind == "training_step"]
  missing = [m.slug for m in methods if m.slug not in covered]
  assert not missing, f"training_step methods without a battery row: {missing}"
