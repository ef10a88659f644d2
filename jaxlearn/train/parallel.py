"""Device meshes for sweeps and data-parallel training, on one device, many devices or many hosts.

jaxlearn uses JAX's own SPMD machinery (`jax.sharding`, `jax.distributed`); nothing here moves data
by hand. A training mesh has two named axes:

- `runs` splits the R independent runs of `jaxlearn.train.fit` (configurations x seeds): each
  device trains R / n_runs of them; no communication between runs.
- `data` splits every minibatch (data parallelism): XLA all-reduces the gradients, and reductions
  over the batch (losses, batch-norm statistics) are over the *global* batch, so batch-statistic
  layers compute exactly what they compute on one device.

Parameters and optimizer state are replicated over `data` unless `param_specs` shards them (for
example `fsdp_specs`); optimizer-state leaves shaped like the parameters get the parameters'
sharding (`like_params`). The axes are `AxisType.Auto` (GSPMD propagation), which every model and
optimizer supports; sharding-in-types (`AxisType.Explicit`) is exercised by the optimizer-state
tests but not needed for training.

Multi-host: call `initialize_distributed` (or run `python -m jaxlearn.launch`) before touching any
device, then build the mesh from `jax.devices()` (all processes' devices). `to_host` brings results
back on every process; only process 0 should write files (`is_main_process`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "AXES", "DATA", "RUNS", "RunLayout", "ambient_mesh", "axis_size", "check_training_mesh",
    "fsdp_specs", "initialize_distributed", "is_main_process", "like_params", "make_mesh",
    "multi_host_hint", "parse_mesh", "to_host",
]

PyTree = Any
RUNS = "runs"
DATA = "data"
AXES = (RUNS, DATA)


def make_mesh(
    *, runs: int | None = None, data: int | None = None, devices: Sequence[Any] | None = None
) -> Mesh:
  """A ('runs', 'data') mesh over `devices` (default: every device of every process).

  Give one size and the other takes the remaining devices; give neither and every device goes to
  `runs` (a sweep). Both axes always exist (size 1 when unused), with `AxisType.Auto`.

  Raises:
    ValueError: if the sizes are not positive or do not multiply to the number of devices.

  Example:
    >>> from jaxlearn.train import make_mesh
    >>> mesh = make_mesh(data=1)  # on 8 devices: make_mesh(data=8) splits every batch 8 ways
    >>> mesh.axis_names
    ('runs', 'data')
  """
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices)
  for name, size in (("runs", runs), ("data", data)):
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
      raise ValueError(f"{name} must be an integer >= 1 or None, got {size!r}")
  if runs is None and data is None:
    runs, data = count, 1
  elif runs is None:
    runs = count // data
  elif data is None:
    data = count // runs
  if runs * data != count:
    raise ValueError(
        f"runs x data must equal the number of devices ({count}), got runs={runs}, data={data}"
    )
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((runs, data), AXES, axis_types=auto, devices=devices)


def parse_mesh(spec: str, devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh from a command-line spec such as 'runs=2,data=4', 'data=8', 'data=-1' or ''.

  -1 means "the remaining devices"; an axis left out takes the remaining devices, or size 1 when
  the other axis is -1; '' puts every device on 'runs'.
  """
  sizes: dict[str, int] = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, _, value = part.partition("=")
    if name not in AXES or not value.lstrip("-").isdigit():
      raise ValueError(f"mesh spec must look like 'runs=2,data=4' (axes {AXES}), got {spec!r}")
    sizes[name] = int(value)
  left_out = 1 if -1 in sizes.values() else None
  resolved = {
      name: None if sizes.get(name, left_out) == -1 else sizes.get(name, left_out) for name in AXES
  }
  return make_mesh(runs=resolved[RUNS], data=resolved[DATA], devices=devices)


def ambient_mesh() -> Mesh | None:
  """The mesh set with `jax.set_mesh`, if it is a training mesh (has a 'runs' or 'data' axis)."""
  mesh = jax.sharding.get_mesh()
  if mesh.empty or not set(AXES) & set(mesh.axis_names):
    return None
  return mesh


def check_training_mesh(mesh: Mesh) -> None:
  """Raises ValueError unless `mesh` has only 'runs'/'data' axes, all of type Auto."""
  unknown = set(mesh.axis_names) - set(AXES)
  if unknown:
    raise ValueError(f"mesh axes must be among {AXES}, got {mesh.axis_names}")
  explicit = [
      name for name, kind in zip(mesh.axis_names, mesh.axis_types)
      if kind != jax.sharding.AxisType.Auto
  ]
  if explicit:
    raise ValueError(
        f"mesh axes must be AxisType.Auto (build it with jaxlearn.train.parallel.make_mesh), "
        f"got non-Auto axes {explicit}"
    )


def axis_size(mesh: Mesh | None, name: str) -> int:
  """The size of axis `name` of `mesh` (1 if there is no mesh or no such axis)."""
  if mesh is None or name not in mesh.axis_names:
    return 1
  return int(mesh.shape[name])


def like_params(tree: PyTree, params: PyTree, param_specs: PyTree, default: Any = P()) -> PyTree:
  """The spec of every leaf of `tree` (e.g. an optimizer state), copied from the parameters.

  A leaf whose key path ends with a parameter's key path and whose shape is that parameter's shape
  (a moment, a momentum buffer...) gets the parameter's spec; one whose shape is the parameter's
  shape with extra leading axes (a stack of past gradients) gets the spec with those axes
  replicated. Every other leaf (step counts, injected hyperparameters, factored statistics) gets
  `default`. Matching by path and shape needs no call to `init`, so it works for any optimizer.
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  specs = jax.tree.leaves(param_specs, is_leaf=lambda s: isinstance(s, P))
  if len(specs) != len(leaves):
    raise ValueError(
        f"param_specs must have one PartitionSpec per parameter ({len(leaves)}), got {len(specs)}"
    )
  by_path = {tuple(path): (np.shape(leaf), spec) for (path, leaf), spec in zip(leaves, specs)}

  def spec_of(path, leaf):
    shape = np.shape(leaf)
    for start in range(len(path) + 1):
      match = by_path.get(tuple(path[start:]))
      if match is None:
        continue
      param_shape, spec = match
      extra = len(shape) - len(param_shape)
      if extra >= 0 and shape[extra:] == param_shape:
        if extra == 0:
          return spec
        padded = tuple(spec) + (None,) * (len(param_shape) - len(spec))
        return P(*(None,) * extra, *padded)
    return default

  return jax.tree_util.tree_map_with_path(spec_of, tree)


def fsdp_specs(params: PyTree, mesh: Mesh, axis: str = DATA, min_size: int = 1024) -> PyTree:
  """Shards each parameter's largest dimension divisible by `mesh.shape[axis]` over `axis`.

  Parameters smaller than `min_size` elements stay replicated (sharding them costs more
  communication than it saves memory). The result is a `param_specs` for `fit`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.train import make_mesh
    >>> from jaxlearn.train.parallel import fsdp_specs
    >>> params = {"w": jnp.ones((4096, 8)), "b": jnp.ones(8)}
    >>> specs = fsdp_specs(params, make_mesh(data=1), min_size=1024)  # 1 device: all replicated
    >>> specs["w"] == specs["b"] == jax.sharding.PartitionSpec()
    True
  """
  size = axis_size(mesh, axis)

  def spec(leaf):
    shape = np.shape(leaf)
    if size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
      return P()
    candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % size == 0]
    if not candidates:
      return P()
    return P(*[axis if d == candidates[0] else None for d in range(len(shape))])

  return jax.tree.map(spec, params)


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """Where `fit`'s runs live on a mesh; with `mesh=None` every method is the identity.

  The state of R runs has a leading run axis, split over `runs`. Inside the per-run (vmapped)
  functions, `batch` splits a minibatch over `data` and `params` applies `param_specs`; `vmap`
  passes `spmd_axis_name='runs'` so that those per-run constraints gain the run axis.

  Attributes:
    mesh: a training mesh (`make_mesh`) or None.
    param_specs: None (replicate parameters), or a callable `params -> PartitionSpec tree` for one
      run's parameters (no run axis); optimizer-state leaves follow `like_params`.
  """

  mesh: Mesh | None = None
  param_specs: Callable[[PyTree], PyTree] | None = None

  def __post_init__(self):
    if self.mesh is not None:
      check_training_mesh(self.mesh)
    if self.param_specs is not None and not callable(self.param_specs):
      raise ValueError("param_specs must be a callable params -> PartitionSpec tree, or None")

  def check(self, num_runs: int, batch_size: int | None) -> None:
    """Raises ValueError if the runs or the minibatch do not split evenly over the mesh."""
    runs, data = axis_size(self.mesh, RUNS), axis_size(self.mesh, DATA)
    if num_runs % runs:
      raise ValueError(
          f"the number of runs (configs x seeds = {num_runs}) must be a multiple of the mesh's "
          f"'runs' axis ({runs}); jaxlearn.train.sweep pads the grid automatically"
      )
    if data > 1 and (batch_size is None or batch_size % data):
      raise ValueError(
          f"batch_size must be a multiple of the mesh's 'data' axis ({data}), got {batch_size!r}"
      )

  def vmap(self, fn: Callable, in_axes: Any = 0) -> Callable:
    if self.mesh is None or RUNS not in self.mesh.axis_names:
      return jax.vmap(fn, in_axes=in_axes)
    return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=RUNS)

  def _sharding(self, spec: P) -> NamedSharding:
    return NamedSharding(self.mesh, spec)

  def put_runs(self, tree: PyTree) -> PyTree:
    """Places arrays with a leading run axis, split over `runs`."""
    if self.mesh is None:
      return tree
    return jax.device_put(tree, self._sharding(P(RUNS)))

  def put_replicated(self, tree: PyTree) -> PyTree:
    """Places host arrays (the dataset) on every device. Works across processes too."""
    if self.mesh is None:
      return tree
    return jax.device_put(tree, self._sharding(P()))

  def batch(self, x: jax.Array) -> jax.Array:
    """Splits one run's minibatch (leading axis) over `data`."""
    if self.mesh is None or axis_size(self.mesh, DATA) == 1:
      return x
    return jax.lax.with_sharding_constraint(x, self._sharding(P(DATA)))

  def params(self, params: PyTree) -> PyTree:
    """Applies `param_specs` to one run's parameters."""
    if self.mesh is None or self.param_specs is None:
      return params
    shardings = jax.tree.map(
        self._sharding, self.param_specs(params), is_leaf=lambda s: isinstance(s, P)
    )
    return jax.lax.with_sharding_constraint(params, shardings)

  def state_shardings(self, state: Any) -> Any:
    """Explicit shardings for a vmapped `RunState` (leading run axis), or None without a mesh."""
    if self.mesh is None:
      return None
    runs = P(RUNS)
    with_runs = lambda spec: self._sharding(P(RUNS, *spec))
    if self.param_specs is None:
      return jax.tree.map(lambda _: self._sharding(runs), state)
    one_run = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state.params)
    specs = self.param_specs(one_run)
    is_spec = lambda s: isinstance(s, P)
    everything_else = lambda tree: jax.tree.map(lambda _: self._sharding(runs), tree)
    return type(state)(
        params=jax.tree.map(with_runs, specs, is_leaf=is_spec),
        model_state=everything_else(state.model_state),
        opt_state=jax.tree.map(
            with_runs, like_params(state.opt_state, state.params, specs), is_leaf=is_spec
        ),
        key=everything_else(state.key),
        step=everything_else(state.step),
    )

  def constrain_state(self, state: Any) -> Any:
    """Pins a vmapped `RunState` to `state_shardings` (inside jit)."""
    shardings = self.state_shardings(state)
    if shardings is None:
      return state
    return jax.lax.with_sharding_constraint(state, shardings)

  def constrain_runs(self, tree: PyTree) -> PyTree:
    """Pins per-run outputs (metrics, leading run axis) to be split over `runs`."""
    if self.mesh is None:
      return tree
    return jax.lax.with_sharding_constraint(tree, self._sharding(P(RUNS)))


def to_host(tree: PyTree) -> PyTree:
  """NumPy copies of every leaf, on every process, whatever the leaf's sharding.

  Arrays spread over several processes are gathered (`process_allgather`); replicated ones are read
  from a local copy.
  """
  from jax.experimental import multihost_utils

  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(fetch, tree)


def is_main_process() -> bool:
  """True on process 0, the one that writes results and prints summaries."""
  return jax.process_index() == 0


# Environment variables that mean "this process is one of several" (each jax cluster detector's
# own variables); `initialize_distributed(None)` initializes only when one of them says so.
_CLUSTER_HINTS: Mapping[str, Callable[[str], bool]] = {
    "TPU_WORKER_HOSTNAMES": lambda v: "," in v,  # Cloud TPU pod slices (GKE and some VMs)
    "TPU_PROCESS_ADDRESSES": lambda v: "," in v,
    "MEGASCALE_COORDINATOR_ADDRESS": bool,  # multislice TPU
    "SLURM_NTASKS": lambda v: v.isdigit() and int(v) > 1,
    "OMPI_COMM_WORLD_SIZE": lambda v: v.isdigit() and int(v) > 1,
}


def multi_host_hint(environ: Mapping[str, str] | None = None) -> str | None:
  """The environment variable that says this is a multi-process job, or None."""
  environ = os.environ if environ is None else environ
  for name, says_many in _CLUSTER_HINTS.items():
    if says_many(environ.get(name, "")):
      return name
  return None


def initialize_distributed(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> bool:
  """Calls `jax.distributed.initialize` when this process is one of several; returns whether it did.

  Must run before anything touches a device. On CPU, processes talk through gloo collectives
  (jax's default `jax_cpu_collectives_implementation`).

  Args:
    mode: 'on' always initializes (on Cloud TPU, Slurm and Open MPI jax finds the coordinator and
      process ids itself); 'off' never does; 'auto' initializes when a coordinator is given or
      `multi_host_hint` finds a cluster environment.
    coordinator_address: 'host:port' of process 0 (with num_processes and process_id), for
      clusters jax does not detect, and for several processes on one machine.
    num_processes: total number of processes.
    process_id: this process's index in [0, num_processes).
    timeout_s: how long to wait for the other processes.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"mode must be one of ('auto', 'on', 'off'), got {mode!r}")
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise ValueError(
        "coordinator_address, num_processes and process_id must be given together, got "
        f"{coordinator_address!r}, {num_processes!r}, {process_id!r}"
    )
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
  wanted = mode == "on" or (
      mode == "auto" and (coordinator_address is not None or multi_host_hint() is not None)
  )
  if not wanted:
    return False
  jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=timeout_s,
  )
  return True
