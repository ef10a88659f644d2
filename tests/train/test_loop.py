"""`jaxlearn.train.fit`: vmapped runs equal separate runs; the result writer's output."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.data import Dataset, load_digits
from jaxlearn.train import classifier, fit, grid, mlp, new_figure, save_result


@pytest.fixture(scope="module")
def digits():
  return load_digits(seed=0)


def _fit(data, configs, seeds, **kw):
  init, apply = mlp((64,), [16], 10)
  loss_fn, eval_fn = classifier(apply)
  return fit(
      loss_fn, init, lambda learning_rate: optax.sgd(learning_rate, momentum=0.9), data,
      steps=40, eval_every=20, configs=configs, seeds=seeds, eval_fn=eval_fn, progress=False, **kw,
  )


def test_grid_is_the_cartesian_product():
  assert grid(a=[1, 2], b=[3]) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def test_vmapped_runs_match_separate_runs(digits):
  configs = grid(learning_rate=[0.01, 0.1])
  together = _fit(digits, configs, [0, 1])
  assert together.history["test_accuracy"].shape == (2, 2, 2)
  for k, config in enumerate(configs):
    for s, seed in enumerate([0, 1]):
      alone = _fit(digits, [config], [seed])
      np.testing.assert_allclose(
          together.history["train_loss"][k, s], alone.history["train_loss"][0, 0], rtol=2e-5
      )
  # Different learning rates must give different trajectories (the sweep is not a no-op).
  assert not np.allclose(together.history["train_loss"][0], together.history["train_loss"][1])


def test_training_reduces_the_loss(digits):
  result = _fit(digits, [{"learning_rate": 0.1}], 0)
  losses = result.history["train_loss"][0, 0]
  assert losses[-1] < losses[0]
  assert list(result.eval_steps) == [20, 40]


def test_full_batch_and_model_state(digits):
  """With has_state the model state is threaded through: here it counts steps."""
  init, apply = mlp((64,), [8], 10)
  loss_fn = lambda p, s, x, y: (
      jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(apply(p, x), y)),
      {"calls": s["calls"] + 1},
  )
  result = fit(
      loss_fn, lambda k: (init(k), {"calls": jnp.zeros([], jnp.int32)}),
      lambda: optax.sgd(0.1), digits, steps=10, eval_every=5, batch_size=None, has_state=True,
      progress=False,
  )
  assert int(result.state.model_state["calls"][0]) == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 30, "eval_every": 20}, "multiple of eval_every"),
        ({"steps": 20, "eval_every": 20, "batch_size": 0}, "batch_size"),
        ({"steps": 20, "eval_every": 20, "configs": [{"a": 1}, {"b": 1}]}, "same hyperparameters"),
    ],
)
def test_bad_arguments(digits, kwargs, message):
  init, apply = mlp((64,), [8], 10)
  loss_fn, _ = classifier(apply)
  with pytest.raises(ValueError, match=message):
    fit(loss_fn, init, lambda **_: optax.sgd(0.1), digits, progress=False, **kwargs)


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
