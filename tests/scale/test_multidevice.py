"""Data parallelism, sharded sweeps and shardable optimizer state on 8 simulated CPU devices.

One subprocess (`_multidevice_worker.py`, with XLA_FLAGS forcing 8 host devices before jax
starts) trains the same jobs on one device and on several meshes; the tests compare the results
with the single-device run, which is the reference. The worker takes about a minute of CPU, so
these tests are in the `scale` tier (`pytest -m scale`).
"""

import fcntl
import json
import os

import numpy as np
import pytest

from jaxlearn.train.sweep import registered_optimizers
from tests.scale._subprocess import HERE, run_python

# float32 runs whose reductions are split differently across devices: summation order differs,
# so results agree to rounding, amplified a little over 40 Adam steps.
RTOL, ATOL = 1e-4, 2e-5
OPTAX_NAMES = ["optax.adam", "optax.sgd_momentum", "optax.adamw_masked", "optax.lion",
               "optax.adafactor"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
  """Runs the worker once per test session, even when pytest-xdist spreads these tests over
  several processes (they share the base temporary directory; a lock makes one run it)."""
  if os.environ.get("PYTEST_XDIST_WORKER"):  # this session's directory, shared by its workers
    out = tmp_path_factory.getbasetemp().parent / "scale-multidevice"
    out.mkdir(exist_ok=True)
  else:
    out = tmp_path_factory.mktemp("scale-multidevice")
  with open(out / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (out / "report.json").exists():
      run_python([str(HERE / "_multidevice_worker.py"), str(out)], timeout=600)
  arrays = np.load(out / "arrays.npz")
  report = json.loads((out / "report.json").read_text())
  return {name: arrays[name] for name in arrays.files}, report


def _leaves(arrays, prefix):
  keys = sorted((k for k in arrays if k.startswith(prefix + "/")), key=lambda k: int(k.rsplit("/", 1)[1]))
  assert keys, f"worker wrote no {prefix}"
  return [arrays[k] for k in keys]


def _assert_same(arrays, got, want):
  for a, b in zip(_leaves(arrays, got), _leaves(arrays, want), strict=True):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.scale
@pytest.mark.parametrize("mesh", ["data8", "runs8", "fsdp"])
def test_sharded_training_matches_one_device(worker, mesh):
  arrays, _ = worker
  _assert_same(arrays, f"{mesh}/params", "single/params")
  if f"{mesh}/history" in arrays:
    np.testing.assert_allclose(arrays[f"{mesh}/history"], arrays["single/history"], rtol=RTOL)


@pytest.mark.scale
def test_data_parallel_splits_the_batch_and_all_reduces(worker):
  _, report = worker
  assert report["data8/all_reduce"], "a data-parallel step must all-reduce its gradients"
  assert report["data8/param_spec"] == "P()", "parameters are replicated over 'data'"
  assert report["runs8/param_spec"] == "P('runs',)", "each device holds its own runs"


@pytest.mark.scale
def test_fsdp_shards_parameters_and_their_optimizer_state_alike(worker):
  _, report = worker
  params, opt = report["fsdp/param_specs"], report["fsdp/opt_state_specs"]
  assert params["['Dense_0']['kernel']"] == "P('runs', 'data')"
  assert params["['Dense_0']['bias']"] == "P('runs',)"  # 32 < min_size: replicated
  for path, spec in params.items():
    assert opt[f"[0].mu{path}"] == spec and opt[f"[0].nu{path}"] == spec
  assert opt["[0].count"] == "P('runs',)"


@pytest.mark.scale
def test_batch_norm_statistics_are_global_under_data_parallelism(worker):
  """With the batch split over 8 devices, BatchNorm must still normalize by the statistics of
  the whole batch: the single-device run is the reference (per-device statistics, as with an
  un-synchronized pmap, would differ by far more than rounding)."""
  arrays, _ = worker
  _assert_same(arrays, "bn_data8/params", "bn_single/params")
  _assert_same(arrays, "bn_data8/batch_stats", "bn_single/batch_stats")


@pytest.mark.scale
def test_sweep_is_sharded_over_devices_and_matches_one_device(worker):
  """mesh='auto' puts all 8 devices on the runs axis (as runs8 above)."""
  arrays, report = worker
  assert report["sweep_sharded/devices"] == 8
  np.testing.assert_allclose(
      arrays["sweep_sharded/train_loss"], arrays["sweep_single/train_loss"], rtol=RTOL
  )
  assert arrays["sweep_sharded/train_loss"].shape == (6, 1, 2)  # padding to 8 runs discarded


def _optimizer_names():
  return sorted(registered_optimizers()) + OPTAX_NAMES


@pytest.mark.scale
@pytest.mark.parametrize("name", _optimizer_names())
def test_optimizer_state_is_shardable_on_an_explicit_mesh(worker, name):
  """init (eager, jitted, under eval_shape) and two jitted updates on an explicit 8-device mesh:
  state types (shape, dtype, sharding) never change, updates are typed like the parameters, and
  every state leaf shaped like a parameter carries that parameter's sharding. Both the plain
  alias and the inject_hyperparams form that sweeps use. `update` gets the extra arguments that
  the optimizer's registry record names (`update_extras`, e.g. Normalized LR+GD's margins)."""
  _, report = worker
  if name in report.get("skipped", {}):
    pytest.skip(f"{name} {report['skipped'][name]}, which a generic harness cannot choose")
  record = report["optimizers"].get(name)
  assert record is not None, f"the worker did not check {name}"
  error = record.get("error", "")
  assert not error, error
  for variant in ("plain", "injected"):
    assert record[f"{variant}/types_stable"], f"{name} ({variant}): state types change"
    assert record[f"{variant}/updates_like_params"], f"{name} ({variant}): updates' types"
    assert record[f"{variant}/sharding_mismatches"] == [], record[f"{variant}/sharding_mismatches"]
    assert record[f"{variant}/finite"]
    # Replicated preconditioners and projectors next to sharded kernels: the one-device update.
    assert record[f"{variant}/one_device_difference"] < 1e-5, record


@pytest.mark.scale
@pytest.mark.parametrize("name", ["jaxlearn.optim.adamp", "jaxlearn.optim.optimistic_amsgrad"])
def test_large_leaf_paths_shard_like_the_small_ones(worker, name):
  """Leaves above CACHED_SIZE elements take their own code paths (blocked channel sums, an
  in-place scatter-add): four steps on a column-sharded (512, 256) kernel give the one-device
  parameters, and the state shaped like it keeps its sharding."""
  arrays, report = worker
  np.testing.assert_allclose(arrays[f"large/{name}/sharded"], arrays[f"large/{name}/one_device"],
                             rtol=RTOL, atol=ATOL)
  assert report["large_leaf_state_specs"][name] == ["(None, 'x')"], report["large_leaf_state_specs"]


@pytest.fixture(scope="module")
def all_optimizers(tmp_path_factory):
  out = tmp_path_factory.mktemp("all-optimizers")
  run_python([str(HERE / "_multidevice_worker.py"), str(out), "all_optimizers"], timeout=900)
  arrays = np.load(out / "arrays.npz")
  return {k: arrays[k] for k in arrays.files}, json.loads((out / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(registered_optimizers()))
def test_every_registered_optimizer_trains_data_parallel_like_on_one_device(all_optimizers, name):
  arrays, report = all_optimizers
  error = report.get("data_parallel_errors", {}).get(name, "")
  if error.startswith("TypeError") and "required" in error:
    pytest.skip(f"{name} has a required argument a generic harness cannot choose: {error}")
  assert not error, error
  _assert_same(arrays, f"all_data8/{name}", f"all_single/{name}")
