"""Checkpoints: exact round trips, resume inside `fit` (also after an interrupt in the same
process), damaged directories skipped, no pickle.

The resume of an MLP sweep on digits is in the `scale` tier (`pytest -m scale`); a small model's
resume, mid-epoch and with per-example state, stays in the default suite.
"""

import json
import pickle
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.data import Dataset, load_digits
from jaxlearn.train import classifier, fit, grid, mlp
from jaxlearn.train.checkpoint import Checkpointer, CorruptCheckpointWarning, fingerprint
from jaxlearn.train.loop import RunState
from jaxlearn.train.sweep import inject_swept
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")


def _state(seed=0):
  params = {"w": jax.random.normal(jax.random.PRNGKey(seed), (3, 4)), "b": jnp.arange(4.0)}
  optimizer = inject_swept(optax.adamw, ["learning_rate"], {"weight_decay": 1e-2})(learning_rate=0.1)
  opt_state = optimizer.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = optimizer.update(grads, opt_state, params)  # non-trivial moments
  key = jax.random.PRNGKey(seed + 7)
  return RunState(params, {}, opt_state, key, jnp.asarray(3, jnp.int32))


def _abstract(state):
  return jax.eval_shape(lambda: state)


def _assert_bitwise(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save_steps(directory, steps=(10, 20, 30)):
  with Checkpointer(directory, every=10, max_to_keep=None) as checkpointer:
    for step in steps:
      checkpointer.save(step, _state(step), {"position": step})
    checkpointer.wait()


def test_round_trip_is_exact_and_keeps_tree_types(tmp_path):
  state = _state()
  with Checkpointer(tmp_path, every=1) as checkpointer:
    checkpointer.save(3, state, {"data_position": 3, "note": "x"})
    restored = checkpointer.restore_latest(_abstract(state))
  assert restored.step == 3 and restored.metadata == {"data_position": 3, "note": "x"}
  _assert_bitwise(restored.state, state)
  # NamedTuple state types survive (restoring without a target would give plain lists/dicts).
  assert type(restored.state) is RunState
  assert type(restored.state.opt_state) is type(state.opt_state)
  assert restored.state.opt_state.hyperparams["learning_rate"] == pytest.approx(0.1)


def test_fingerprint_sees_every_bit():
  x = jnp.linspace(-1.0, 1.0, 64, dtype=jnp.float32)
  flipped = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(x, jnp.uint32).at[17].add(1), jnp.float32
  )
  swapped = x.at[3].set(x[4]).at[4].set(x[3])
  base = fingerprint([x])
  assert fingerprint([flipped]) != base  # one ulp
  assert fingerprint([swapped]) != base  # same values, other positions
  assert fingerprint([jnp.asarray(x)]) == base  # deterministic
  half = x.astype(jnp.bfloat16)  # 16-bit and boolean leaves are covered too
  half_flipped = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(half, jnp.uint16).at[5].add(1), jnp.bfloat16
  )
  assert fingerprint([half]) != fingerprint([half_flipped])
  assert fingerprint([x > 0]) != fingerprint([(x > 0).at[0].set(True)])


def test_restore_skips_truncated_checkpoint_with_a_clear_message(tmp_path):
  _save_steps(tmp_path)
  for path in (tmp_path / "30").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
  with Checkpointer(tmp_path, every=10) as checkpointer:
    with pytest.warns(CorruptCheckpointWarning, match=r"30 is corrupt or incomplete.*cannot be read"):
      restored = checkpointer.restore_latest(_abstract(_state()))
    assert restored.step == 20
    _assert_bitwise(restored.state, _state(20))
    assert not (tmp_path / "30").exists()
    assert any(p.name.startswith("corrupt-30-") for p in tmp_path.iterdir())
    # The damaged step is out of the way: training can save step 30 again.
    checkpointer.save(30, _state(30))
    checkpointer.wait()
    assert checkpointer.all_steps() == [10, 20, 30]


def test_restore_skips_checkpoint_whose_arrays_do_not_match_their_fingerprint(tmp_path):
  """Arrays that read back fine but differ from what was saved are never loaded."""
  _save_steps(tmp_path)
  record_file = tmp_path / "30" / "record" / "metadata"
  record = json.loads(record_file.read_text())
  record["fingerprint"][0] ^= 1  # as if a stored value had changed
  record_file.write_text(json.dumps(record))
  with Checkpointer(tmp_path, every=10) as checkpointer:
    with pytest.warns(CorruptCheckpointWarning, match="differ from the fingerprint"):
      restored = checkpointer.restore_latest(_abstract(_state()))
  assert restored.step == 20


def test_partial_and_unfinished_directories_are_skipped(tmp_path):
  _save_steps(tmp_path, steps=(10,))
  (tmp_path / "20").mkdir()  # a step directory with nothing in it
  (tmp_path / "40" / "state").mkdir(parents=True)  # arrays without their record
  (tmp_path / "50.orbax-checkpoint-tmp-1234").mkdir()  # a save interrupted by a crash
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with Checkpointer(tmp_path, every=10) as checkpointer:
      restored = checkpointer.restore_latest(_abstract(_state()))
  messages = [str(w.message) for w in caught if w.category is CorruptCheckpointWarning]
  assert restored.step == 10
  assert any("50.orbax-checkpoint-tmp-1234 is an unfinished save" in m for m in messages)
  assert any("40 is corrupt or incomplete" in m for m in messages)
  assert any("20 is corrupt or incomplete" in m for m in messages)


def test_a_new_checkpointer_waits_for_a_save_still_pending_in_its_directory(tmp_path, monkeypatch):
  """A save left pending in this process (a job interrupted twice, before it could finish it)
  lands before a new `Checkpointer` cleans the directory up."""
  import orbax.checkpoint as ocp

  finalize = ocp.CheckpointManager._finalize
  monkeypatch.setattr(ocp.CheckpointManager, "_finalize", lambda self, *args: (
      time.sleep(0.5), finalize(self, *args)))
  abandoned = Checkpointer(tmp_path, every=1)
  abandoned.save(3, _state())  # neither waited for nor closed
  with warnings.catch_warnings():
    warnings.simplefilter("error", CorruptCheckpointWarning)
    with Checkpointer(tmp_path, every=1) as checkpointer:
      restored = checkpointer.restore_latest(_abstract(_state()))
  assert restored.step == 3
  _assert_bitwise(restored.state, _state())
  abandoned.close()


def test_a_different_run_is_an_error_not_a_silent_fallback(tmp_path):
  _save_steps(tmp_path)
  with Checkpointer(tmp_path, every=10) as checkpointer:
    with pytest.raises(ValueError, match="belongs to a different run"):
      checkpointer.restore_latest(_abstract(_state()), expect={"position": 99})
    other = RunState({"w": jnp.zeros((5,))}, {}, (), jnp.zeros(2, jnp.uint32), jnp.zeros([], jnp.int32))
    with pytest.raises(ValueError, match="holds a different state"):
      checkpointer.restore_latest(_abstract(other))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["10", "20", "30"]  # nothing moved


def test_empty_directory_restores_nothing(tmp_path):
  with Checkpointer(tmp_path / "new", every=5) as checkpointer:
    assert checkpointer.restore_latest(_abstract(_state())) is None


@pytest.mark.parametrize("kwargs", [{"every": 0}, {"every": 2.5}, {"every": 5, "max_to_keep": 0}])
def test_bad_arguments(tmp_path, kwargs):
  with pytest.raises(ValueError, match="every|max_to_keep"):
    Checkpointer(tmp_path, **kwargs)


def test_checkpoints_never_use_pickle(tmp_path, monkeypatch):
  state = _state()
  calls = []
  for name in ("dump", "dumps", "load", "loads"):
    monkeypatch.setattr(pickle, name, lambda *a, _n=name, **k: calls.append(_n))
  with Checkpointer(tmp_path, every=1) as checkpointer:
    checkpointer.save(1, state, {"position": 1})
    checkpointer.wait()
    restored = checkpointer.restore_latest(_abstract(state))
  _assert_bitwise(restored.state, state)
  assert calls == []
  for path in tmp_path.rglob("*"):  # no pickle stream (protocol 2+ starts with 0x80, protocol)
    if path.is_file():
      head = path.read_bytes()[:2]
      assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), path


def _assert_resumes_exactly(tmp_path, loss_fn, init_params, make, data, steps, stop, **common):
  """A run stopped at `stop` and resumed from its checkpoints equals the uninterrupted run."""
  whole = fit(loss_fn, init_params, make, data, steps=steps, **common)
  fit(loss_fn, init_params, make, data, steps=stop, checkpoint=tmp_path, **common)  # "crashes"
  seen = []
  resumed = fit(loss_fn, init_params, make, data, steps=steps, checkpoint=tmp_path,
                callback=lambda step, metrics: seen.append(step), **common)
  every = common["eval_every"]
  assert seen == list(range(stop + every, steps + 1, every))  # only the missing chunks ran
  _assert_bitwise(resumed.state, whole.state)
  for name in whole.history:
    np.testing.assert_array_equal(resumed.history[name], whole.history[name])


def _tiny_problem():
  """20 examples of 3 features, 2 classes."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 3)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  return Dataset(x, y, x[:4], y[:4], 2)


def _tiny_init(key):
  return {"w": 0.1 * jax.random.normal(key, (3,))}


def _tiny_loss(params, x, y):
  return optax.sigmoid_binary_cross_entropy(x @ params["w"], y).mean()


def test_fit_resumes_exactly_mid_epoch_with_per_example_state(tmp_path):
  """Epochs without replacement (3 batches of 6 from 20 examples) and a per-example buffer written
  at the batch's `indices`, as ELR keeps its targets: stopped mid-epoch (step 4), resumed into the
  next epoch (steps 6-8), equal to the uninterrupted run."""
  data = _tiny_problem()

  def init_params(key):
    del key  # no PRNG draw to compile: the seeds still pick the batches
    return {"w": jnp.full(3, 0.1)}, {"targets": jnp.full(20, 0.5)}

  def loss_fn(params, state, x, y, *, indices, epoch):
    p = jax.nn.sigmoid(x @ params["w"])
    decay = 0.5 + 0.1 * jnp.minimum(epoch, 3)  # the epoch counter enters the state too
    targets = state["targets"].at[indices].mul(decay).at[indices].add(
        (1 - decay) * jax.lax.stop_gradient(p)
    )
    loss = optax.sigmoid_binary_cross_entropy(x @ params["w"], y).mean()
    return loss + jnp.mean((p - targets[indices]) ** 2), {"targets": targets}

  make = lambda learning_rate: optax.sgd(learning_rate)
  common = dict(eval_every=2, batch_size=6, configs=grid(learning_rate=[0.1, 0.5]), seeds=[0, 1],
                has_state=True, loss_takes_indices=True, progress=False)
  _assert_resumes_exactly(tmp_path, loss_fn, init_params, make, data, steps=8, stop=4, **common)
  with pytest.raises(ValueError, match="different run: its 'run'.*'sampling': 'replacement'"):
    fit(loss_fn, init_params, make, data, steps=8, checkpoint=tmp_path, sampling="replacement",
        **common)


def test_fit_interrupted_while_saving_resumes_exactly_in_the_same_process(tmp_path, monkeypatch):
  """A KeyboardInterrupt (a notebook's stop button) right after `fit` started an asynchronous
  save, then `fit` again at once: the pending save lands before the rerun opens the directory
  (no race with orbax's clean-up, no skipped step), and the result is bitwise the uninterrupted
  one."""
  import orbax.checkpoint as ocp

  data, common = _tiny_problem(), dict(
      eval_every=2, batch_size=6, configs=grid(learning_rate=[0.1, 0.5]), seeds=[0, 1],
      progress=False)
  args = (_tiny_loss, _tiny_init, optax.adam, data)
  whole = fit(*args, steps=8, **common)

  def interrupt(step, metrics):
    if step == 4:
      pending.extend(p.name for p in tmp_path.iterdir() if "orbax-checkpoint-tmp" in p.name)
      raise KeyboardInterrupt

  finalize, pending = ocp.CheckpointManager._finalize, []
  # orbax's (private) last stage of a save: step 4's takes a while, as a large state's would.
  with monkeypatch.context() as patch:
    patch.setattr(ocp.CheckpointManager, "_finalize", lambda self, step, *rest: (
        time.sleep(0.5 if step == 4 else 0), finalize(self, step, *rest)))
    with pytest.raises(KeyboardInterrupt):
      fit(*args, steps=8, checkpoint=tmp_path, callback=interrupt, **common)
  assert [name.split(".")[0] for name in pending] == ["4"]  # stopped while step 4 was written
  seen = []
  with warnings.catch_warnings():
    warnings.simplefilter("error", CorruptCheckpointWarning)
    resumed = fit(*args, steps=8, checkpoint=tmp_path, callback=lambda s, m: seen.append(s),
                  **common)
  assert seen == [6, 8]  # resumed from the save that was pending
  _assert_bitwise(resumed.state, whole.state)
  for name in whole.history:
    np.testing.assert_array_equal(resumed.history[name], whole.history[name])


@pytest.mark.scale
@pytest.mark.parametrize("sampling", ["without_replacement", "replacement"])
def test_fit_resumes_exactly_from_its_checkpoints(tmp_path, sampling):
  """An MLP sweep on digits; batches of 128 (11 an epoch) so that the resumed part crosses
  epochs."""
  data = load_digits()
  init_params, apply_fn = mlp((64,), (16,), data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  make = lambda learning_rate: optax.adam(learning_rate)
  common = dict(eval_every=10, batch_size=128, configs=grid(learning_rate=[1e-3, 1e-2]),
                seeds=[0, 1], eval_fn=eval_fn, progress=False, sampling=sampling)
  _assert_resumes_exactly(tmp_path, loss_fn, init_params, make, data, steps=40, stop=20, **common)
  with pytest.raises(ValueError, match="different run"):
    fit(loss_fn, init_params, make, data, steps=40, checkpoint=tmp_path,
        **{**common, "seeds": [5, 6]})
