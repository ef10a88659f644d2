"""`jaxlearn.train.fit`: vmapped runs equal separate runs, epochs without replacement, example
indices for the loss, extra `update` arguments; the result writer's output."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.data import Dataset, load_digits
from jaxlearn.optim import margins_from_losses
from jaxlearn.train import fit, grid, new_figure, save_result
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")


def _id_data(n):
  """n examples in 3 dimensions whose labels are a permutation of 0..n-1 (a label names its
  example), and 2 test examples."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 3)).astype(np.float32)
  y = rng.permutation(n).astype(np.int32)
  return Dataset(x, y, x[:2], y[:2], n)


DATA = _id_data(12)
MAX_STEPS = 12
TRUE_W = jnp.asarray([1.0, -2.0, 0.5])  # the regression target is x @ TRUE_W


class Recorder:
  """A linear regression (target x @ TRUE_W) whose loss takes `indices` and `epoch` and records
  in its model state every step's indices and epoch, and how many examples differ from
  x/y_train[indices].

  Its functions are fixed per data set, so that `fit` calls with the same shapes share compiled
  programs (fit caches them by function identity). Parameters start at zero (no PRNG draw to
  compile); the seed still picks the batches.
  """

  def __init__(self, data, rows):
    self.data, self.rows = data, rows
    self.x_train, self.y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

  def init(self, key):
    del key
    zero = jnp.zeros([], jnp.int32)
    log = {"calls": zero, "mismatches": zero, "epochs": jnp.full(MAX_STEPS, -1, jnp.int32),
           "indices": jnp.full((MAX_STEPS, self.rows), -1, jnp.int32)}
    return {"w": jnp.zeros(3)}, log

  def loss(self, params, log, x, y, *, indices, epoch):
    wrong = jnp.sum(y != self.y_train[indices])
    wrong += jnp.sum(jnp.any(x != self.x_train[indices], axis=-1))
    log = {"calls": log["calls"] + 1, "mismatches": log["mismatches"] + wrong,
           "indices": log["indices"].at[log["calls"]].set(indices),
           "epochs": log["epochs"].at[log["calls"]].set(epoch)}
    return jnp.mean((x @ (params["w"] - TRUE_W)) ** 2), log

  def evaluate(self, params, log, x, y):
    del log, y
    return {"mse": jnp.mean((x @ (params["w"] - TRUE_W)) ** 2)}

  @staticmethod
  def sgd(learning_rate):
    return optax.sgd(learning_rate)

  def fit(self, steps, configs=({"learning_rate": 0.1},), seeds=(0,), **kw):
    kw = {"batch_size": self.rows, **kw}
    result = fit(self.loss, self.init, self.sgd, self.data, steps=steps, eval_every=3,
                 configs=configs, seeds=list(seeds), eval_fn=self.evaluate, has_state=True,
                 loss_takes_indices=True, progress=False, **kw)
    return result, jax.tree.map(np.asarray, result.state.model_state)


BATCHES_OF_4 = Recorder(DATA, rows=4)


def test_grid_is_the_cartesian_product():
  assert grid(a=[1, 2], b=[3]) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def test_vmapped_runs_match_separate_runs_and_reduce_the_loss():
  configs = grid(learning_rate=[0.1, 0.3])
  together, _ = BATCHES_OF_4.fit(9, configs, [0, 1])
  assert together.history["test_mse"].shape == (2, 2, 3)
  assert set(together.history) == {"minibatch_loss", "train_loss", "train_mse", "test_mse"}
  assert list(together.eval_steps) == [3, 6, 9]
  for k, config in enumerate(configs):
    for s, seed in enumerate([0, 1]):
      alone, _ = BATCHES_OF_4.fit(9, [config], [seed])
      for name, values in alone.history.items():
        np.testing.assert_allclose(together.history[name][k, s], values[0, 0], rtol=2e-6)
  # Different learning rates must give different trajectories (the sweep is not a no-op).
  assert not np.allclose(together.history["train_loss"][0], together.history["train_loss"][1])
  mse = together.history["train_mse"]
  assert (mse[..., -1] < 0.5 * mse[..., 0]).all()


def test_compiler_options_reach_xla_and_change_no_number_beyond_rounding():
  options = {"xla_backend_optimization_level": 0}
  plain, _ = BATCHES_OF_4.fit(6)
  unoptimized, _ = BATCHES_OF_4.fit(6, compiler_options=options)
  for name, values in plain.history.items():
    np.testing.assert_allclose(unoptimized.history[name], values, rtol=1e-6)
  with pytest.raises(Exception, match="xla_no_such_option"):  # XLA saw the options
    BATCHES_OF_4.fit(6, compiler_options={"xla_no_such_option": 1})


def test_epochs_visit_every_example_once_and_the_loss_sees_its_indices():
  _, log = BATCHES_OF_4.fit(9, grid(learning_rate=[0.1, 0.3]), [0, 1])  # 3 epochs, 4 runs
  assert (log["mismatches"] == 0).all(), "x, y must be x_train[indices], y_train[indices]"
  assert (log["calls"] == 9).all()
  np.testing.assert_array_equal(log["epochs"][:, :9], [[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 4)
  for run in log["indices"][:, :9]:
    epochs = run.reshape(3, 12)
    for order in epochs:
      np.testing.assert_array_equal(np.sort(order), np.arange(12))
    assert len({tuple(order) for order in epochs}) == 3, "each epoch is a fresh permutation"
  # Runs share their seed's batches (config-major: runs 0 and 2 have seed 0); seeds differ.
  np.testing.assert_array_equal(log["indices"][0], log["indices"][2])
  assert not np.array_equal(log["indices"][0], log["indices"][1])


def _task(n_train, batch_size, sampling):
  from jaxlearn.train import loop, parallel

  return loop._Task(None, None, None, None, False, batch_size, n_train, 1, parallel.RunLayout(),
                    (), sampling)


def test_incomplete_batches_wait_and_replacement_sampling_repeats():
  """fit's batch schedule itself (`_Task.batch_indices`, evaluated eagerly)."""
  key = jax.random.PRNGKey(0)
  # 14 examples in batches of 4: 3 batches an epoch, 12 distinct examples each, 2 left over.
  task = _task(14, 4, "without_replacement")
  batches = [task.batch_indices(key, jnp.int32(t)) for t in range(6)]
  assert [int(epoch) for _, epoch in batches] == [0, 0, 0, 1, 1, 1]
  for epoch in (batches[:3], batches[3:]):
    assert len(set(np.concatenate([np.asarray(i) for i, _ in epoch]))) == 12
  # 12 draws from 12 with replacement are all distinct with probability 12!/12^12 ~ 5e-5.
  task = _task(12, 12, "replacement")
  draws = [np.asarray(task.batch_indices(key, jnp.int32(t))[0]) for t in range(3)]
  assert any(len(set(d)) < 12 for d in draws) and all(((0 <= d) & (d < 12)).all() for d in draws)
  assert _task(12, None, "without_replacement").batch_indices(key, jnp.int32(5))[0] is None


def _recorder():
  """An optimizer that changes nothing and keeps the extra arguments of its last update."""

  def init(params):
    return {"value": jnp.zeros([]), "margins": jnp.zeros(12), "grad_error": jnp.zeros([]),
            "value_fn_error": jnp.zeros([]), "hvp": jnp.zeros(3)}

  def update(updates, state, params, *, value, margins, grad, value_fn, Hvp, **extra):
    del state, extra
    grad_error = optax.tree.norm(jax.tree.map(lambda a, b: a - b, grad, updates))
    state = {"value": value, "margins": margins, "grad_error": grad_error,
             "value_fn_error": value_fn(params) - value, "hvp": Hvp(jnp.ones(3))}
    return jax.tree.map(jnp.zeros_like, updates), state

  return optax.GradientTransformationExtraArgs(init, update)


def test_update_gets_the_extra_arguments_it_names():
  """Full batch and a frozen model, so the extras can be recomputed by hand at the initial
  parameters. The loss reads its labels through `indices` (arange(n) with the full batch), so
  the per-example losses behind `margins` must get each example's own index."""
  labels = jnp.asarray(DATA.y_train % 2)
  w0 = jnp.asarray([0.5, -1.0, 2.0])
  per_example = lambda w, x, indices: optax.sigmoid_binary_cross_entropy(x @ w, labels[indices])
  loss_fn = lambda w, x, y, *, indices, epoch: jnp.mean(per_example(w, x, indices))
  result = fit(loss_fn, lambda key: w0, _recorder, DATA, steps=2, eval_every=1, batch_size=None,
               update_extras=("margins", "grad", "value_fn", "Hvp"), loss_takes_indices=True,
               progress=False)
  got = jax.tree.map(lambda v: np.asarray(v[0]), result.state.opt_state)
  x, every = DATA.x_train, jnp.arange(12)
  value = jnp.mean(per_example(w0, x, every))
  np.testing.assert_allclose(got["value"], value, rtol=1e-6)
  np.testing.assert_allclose(got["value"], result.history["train_loss"][0, 0, -1], rtol=1e-6)
  np.testing.assert_allclose(got["margins"], margins_from_losses(per_example(w0, x, every)),
                             rtol=1e-5)
  assert got["grad_error"] == 0 and got["value_fn_error"] == 0
  hessian = jax.hessian(lambda w: jnp.mean(per_example(w, x, every)))(w0)
  np.testing.assert_allclose(got["hvp"], hessian @ np.ones(3), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 30, "eval_every": 20}, "multiple of eval_every"),
        ({"steps": 20, "eval_every": 20, "batch_size": 0}, "batch_size"),
        ({"steps": 20, "eval_every": 20, "configs": [{"a": 1}, {"b": 1}]}, "same hyperparameters"),
        ({"steps": 20, "eval_every": 20, "seeds": []}, "seeds must hold at least one seed"),
        ({"steps": 20, "eval_every": 20, "configs": []}, "configs must hold at least one"),
        ({"steps": 20, "eval_every": 20, "sampling": "shuffle"}, "sampling must be one of"),
        ({"steps": 20, "eval_every": 20, "update_extras": ["margin"]}, "unknown \\['margin'\\]"),
        ({"steps": 20, "eval_every": 20, "update_extras": "margins"}, "sequence of names"),
        ({"steps": 20, "eval_every": 20, "compiler_options": [("a", 1)]}, "compiler_options"),
    ],
)
def test_bad_arguments(kwargs, message):
  loss_fn = lambda w, x, y: jnp.mean((x @ w) ** 2)
  with pytest.raises(ValueError, match=message):
    fit(loss_fn, lambda key: jnp.zeros(3), lambda **_: optax.sgd(0.1), DATA, progress=False,
        **{"batch_size": 4, **kwargs})


def test_save_result_writes_json_and_png(tmp_path):
  fig, axes = new_figure()
  axes[0, 0].plot([1, 2, 3])
  record = save_result(
      "unit", tmp_path, claim="c", measured="m", claim_held=True, config={"lr": 0.1},
      metrics={"acc": np.float32(0.5), "curve": jnp.arange(3), "bad": float("nan")}, seeds=[0],
      wall_time_s=1.0, figure=fig, quick=False,
  )
  data = json.loads((tmp_path / "unit.json").read_text())
  assert data == record
  assert data["metrics"]["curve"] == [0, 1, 2] and data["metrics"]["bad"] == "nan"
  assert data["claim_held"] is True and data["paper_claim"] == "c"
  assert {"jax", "optax", "flax"} <= set(data["versions"])
  assert (tmp_path / "unit.png").stat().st_size > 1000


def test_quick_runs_never_claim_a_verdict(tmp_path):
  fig, _ = new_figure()
  record = save_result(
      "q", tmp_path, claim="c", measured="m", claim_held=True, config={}, metrics={},
      seeds=[0], wall_time_s=0.0, figure=fig, quick=True,
  )
  assert record["claim_held"] is None


def test_datasets_are_deterministic():
  a, b = load_digits(seed=3), load_digits(seed=3)
  assert isinstance(a, Dataset)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert a.x_train.shape == (1438, 64) and a.x_test.shape == (359, 64)
  assert load_digits(flat=False).x_train.shape[1:] == (8, 8, 1)
  assert not np.array_equal(load_digits(seed=4).y_train, a.y_train)


def test_train_loss_is_the_evaluated_loss_and_minibatch_loss_is_kept():
  """An `eval_fn` that returns 'loss' gives 'train_loss' (the whole train set at the evaluation
  step); the mean minibatch loss of the steps before it stays in 'minibatch_loss'."""
  x = jnp.asarray(DATA.x_train)
  mse = lambda w, x: jnp.mean((x @ (w - TRUE_W)) ** 2)
  loss_fn = lambda w, x, y: mse(w, x)
  evaluate = lambda w, x, y: {"loss": mse(w, x)}
  result = fit(loss_fn, lambda key: jnp.zeros(3), optax.sgd, DATA, steps=3, eval_every=3,
               batch_size=None, configs=[{"learning_rate": 0.1}], eval_fn=evaluate,
               progress=False)
  w = [jnp.zeros(3)]
  for _ in range(3):  # full-batch gradient descent by hand
    w.append(w[-1] - 0.1 * jax.grad(mse)(w[-1], x))
  np.testing.assert_allclose(result.history["train_loss"][0, 0], [mse(w[3], x)], rtol=1e-5)
  np.testing.assert_allclose(result.history["minibatch_loss"][0, 0],
                             [np.mean([mse(v, x) for v in w[:3]])], rtol=1e-5)
