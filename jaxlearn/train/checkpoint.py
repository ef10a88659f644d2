"""Exact, verified training checkpoints with orbax-checkpoint (never pickle).

A `Checkpointer` saves, every `every` steps, one pytree of arrays (for `fit`: the `RunState` of all
runs: parameters, model state, optimizer state, PRNG key, step) plus a JSON record (the step, the
data position and metric history, a description of every leaf, and a fingerprint of the arrays)
through an `orbax.checkpoint.CheckpointManager`. Arrays go to orbax's tensorstore format, the
record to JSON: nothing is pickled, so a checkpoint cannot execute code when it is loaded.

Restoring walks the saved steps from the newest down and uses the first one that is intact:

1. its JSON record reads back and has this module's format;
2. its leaves match the abstract target (`jax.eval_shape` of the state, with shardings) and its
   run description matches the caller's; a mismatch is the caller's error (a `ValueError`, never
   a silent fallback to an older step);
3. orbax restores the arrays into the abstract target (no host round trip: every shard goes
   straight to its device), and their fingerprint equals the one recorded at save time.

A step that fails 1 or 3 (a truncated file, flipped bits, a directory left by a killed job) is
reported with a `CorruptCheckpointWarning` naming the directory and the reason, moved aside to
`<directory>/corrupt-<step>-<time>` and skipped. Unfinished saves (orbax's
`*.orbax-checkpoint-tmp*` directories, left when a process dies mid-save) are reported and removed.

Within one process (a notebook), a job stopped by an exception or a KeyboardInterrupt finishes its
pending background save (`settle`), and a new `Checkpointer` first waits for any save still
pending in the same directory: the next job never races the previous one's writes.

The fingerprint of an array is the wrapping uint32 sum of its raw bit patterns weighted by
position: integer arithmetic is exact and associative, so it does not depend on how the array is
sharded, and any changed bit changes it with high probability.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath  # orbax's path type: local directories and gs:// buckets

from jaxlearn import _checks
from jaxlearn.train import parallel

__all__ = [
    "FORMAT", "Checkpointer", "CorruptCheckpointWarning", "Restored", "describe", "fingerprint",
]

PyTree = Any
FORMAT = "jaxlearn-checkpoint/1"
_ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix for a save still in progress
_GOLDEN = np.uint32(2654435761)  # Knuth's multiplicative-hash constant (odd, so invertible)
# This process's checkpoint managers by directory; a manager lives on while it is still saving.
_MANAGERS: weakref.WeakValueDictionary[str, ocp.CheckpointManager] = weakref.WeakValueDictionary()


class CorruptCheckpointWarning(UserWarning):
  """A checkpoint directory was damaged or incomplete and was skipped.

  Example:
    >>> import warnings
    >>> from jaxlearn.train import CorruptCheckpointWarning
    >>> warnings.simplefilter("error", CorruptCheckpointWarning)  # fail instead of skipping
    >>> warnings.resetwarnings()
  """


@dataclasses.dataclass
class Restored:
  """A checkpoint read back: its step, the arrays (shaped like the target) and the JSON record."""

  step: int
  state: PyTree
  metadata: dict[str, Any]


def _words(x: jax.Array) -> jax.Array:
  """The raw bits of `x` as a flat uint32 vector."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    x = jnp.stack([x.real, x.imag], axis=-1)
  bits = x.dtype.itemsize * 8 if x.dtype != jnp.bool_ else 0
  if bits in (32, 64):
    words = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 64-bit values become 2 words
  elif bits in (8, 16):
    unsigned = jnp.uint8 if bits == 8 else jnp.uint16
    words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  else:  # bool and sub-byte types
    words = x.astype(jnp.uint32)
  return words.reshape(-1)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  words = _words(jnp.asarray(x))
  weights = jnp.arange(words.size, dtype=jnp.uint32) * _GOLDEN + jnp.uint32(1)
  return jnp.sum(words * weights, dtype=jnp.uint32)


_fingerprints = jax.jit(lambda tree: [_leaf_fingerprint(x) for x in jax.tree.leaves(tree)])


def fingerprint(tree: PyTree) -> list[int]:
  """One uint32 per leaf of `tree`, independent of sharding (see the module docstring)."""
  return [int(v) for v in parallel.to_host(_fingerprints(tree))]


def describe(tree: PyTree) -> list[list[Any]]:
  """[key path, shape, dtype] of every leaf: what a checkpoint's arrays must look like."""
  return [
      [jax.tree_util.keystr(path), list(np.shape(leaf)), str(jnp.dtype(leaf.dtype))]
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]


def _to_json(value: Any) -> Any:
  """The same value as the JSON file will give back (tuples -> lists, NumPy -> Python)."""
  if isinstance(value, Mapping):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    return _to_json(np.asarray(value).tolist())
  return value


def _as_path(directory: str | os.PathLike) -> epath.Path:
  text = os.fspath(directory)
  return epath.Path(text) if "://" in text else epath.Path(Path(text).absolute())


class Checkpointer:
  """Periodic, verified orbax checkpoints of one training job (see the module docstring).

  Usage with `fit`: `fit(..., checkpoint=Checkpointer(path, every=500))`, or just
  `checkpoint=path`. Run the same command again after a crash and it resumes from the newest
  intact checkpoint; the result is bitwise equal to an uninterrupted run on the same hardware.

  Args:
    directory: where the step directories go (created if missing): a local path, or a bucket
      such as gs://bucket/run (what multi-host jobs need: every host reads and writes there).
    every: save when the step is a multiple of this (and always at the final step).
    max_to_keep: how many recent checkpoints to keep (None keeps all).
    async_save: write in a background thread while training goes on (JAX arrays are immutable,
      so the next steps cannot change what is being written).

  Example:
    >>> import tempfile
    >>> from jaxlearn.train import Checkpointer
    >>> checkpointer = Checkpointer(tempfile.mkdtemp(), every=500)
    >>> checkpointer.should_save(1000), checkpointer.should_save(10)
    (True, False)
    >>> checkpointer.close()
  """

  def __init__(
      self,
      directory: str | os.PathLike,
      *,
      every: int,
      max_to_keep: int | None = 3,
      async_save: bool = True,
  ):
    _checks.check_positive_int("every", every)
    if max_to_keep is not None:
      _checks.check_positive_int("max_to_keep", max_to_keep)
    # epath: local paths and cloud buckets (gs://...) alike; multi-host jobs need a shared one.
    self.directory = _as_path(directory)
    self.every = every
    self.skipped: list[tuple[int | str, str]] = []  # (step or directory name, reason)
    _finish_earlier_saves(self.directory)
    self._report_unfinished_saves()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    _MANAGERS[str(self.directory)] = self._manager

  # -- saving ---------------------------------------------------------------------------------

  def should_save(self, step: int, *, final: bool = False) -> bool:
    return final or step % self.every == 0

  def save(self, step: int, state: PyTree, metadata: Mapping[str, Any] | None = None) -> None:
    """Saves `state` (a pytree of arrays) and the JSON-serializable `metadata` as `step`."""
    record = {
        "format": FORMAT,
        "step": int(step),
        "leaves": describe(state),
        "fingerprint": fingerprint(state),
        "user": _to_json(dict(metadata or {})),
    }
    self._manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
        ),
    )

  # -- restoring ------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore_latest(
      self, abstract_state: PyTree, *, expect: Mapping[str, Any] | None = None
  ) -> Restored | None:
    """The newest intact checkpoint, restored into `abstract_state`; None if there is none.

    Args:
      abstract_state: `jax.ShapeDtypeStruct`s (with `.sharding` set for sharded restores), e.g.
        from `jax.eval_shape(init_fn, ...)`; the restored state has its tree type (NamedTuples
        included) and shardings.
      expect: entries that the saved metadata must contain with these values (for `fit`: the
        configurations, seeds, batch size...); a difference raises ValueError.

    Raises:
      ValueError: if an intact checkpoint belongs to a different run or has different leaves.
    """
    self.wait()
    wanted = describe(abstract_state)
    for step in sorted(self.all_steps(), reverse=True):
      record = self._read_record(step)
      if record is None:
        continue
      self._check_matches(step, record, wanted, expect)
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
      except Exception as error:  # orbax/tensorstore raise many types for damaged files
        self._quarantine(step, f"its arrays cannot be read ({type(error).__name__}: {error})")
        continue
      if fingerprint(restored.state) != record["fingerprint"]:
        self._quarantine(step, "its arrays differ from the fingerprint recorded when it was saved")
        continue
      return Restored(step, restored.state, record["user"])
    return None

  def _read_record(self, step: int) -> dict[str, Any] | None:
    try:
      record = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
      record = record.record
    except Exception as error:  # a missing item or file, or unparsable JSON
      self._quarantine(step, f"its record cannot be read ({type(error).__name__}: {error})")
      return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("step") != step:
      self._quarantine(step, f"its record is not a {FORMAT} record for step {step}")
      return None
    return record

  def _check_matches(self, step, record, wanted, expect) -> None:
    if record["leaves"] != wanted:
      as_set = lambda leaves: {f"{path} {shape} {dtype}" for path, shape, dtype in leaves}
      differing = sorted(as_set(record["leaves"]) ^ as_set(wanted))[:4]
      raise ValueError(
          f"checkpoint {self.directory / str(step)} holds a different state than this run "
          f"(differing leaves, first few: {differing}). Use another checkpoint directory."
      )
    for name, value in _to_json(dict(expect or {})).items():
      if record["user"].get(name) != value:
        raise ValueError(
            f"checkpoint {self.directory / str(step)} belongs to a different run: its {name!r} is "
            f"{record['user'].get(name)!r}, this run's is {value!r}. Use another checkpoint "
            "directory."
        )

  def _quarantine(self, step: int, reason: str) -> None:
    """Reports a damaged step and moves it aside so that it is never loaded (or overwritten)."""
    source = self.directory / str(step)
    target = self.directory / f"corrupt-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    warnings.warn(
        f"checkpoint {source} is corrupt or incomplete: {reason}. Skipping it (moved to "
        f"{target}) and trying an older one.",
        CorruptCheckpointWarning,
        stacklevel=3,
    )
    self.skipped.append((step, reason))
    if parallel.is_main_process() and source.exists():
      source.rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"jaxlearn-quarantine-{step}")
    self._manager.reload()

  def _report_unfinished_saves(self) -> None:
    if not self.directory.is_dir():
      return
    for path in sorted(self.directory.iterdir()):
      if _ORBAX_TMP_MARKER in path.name:
        warnings.warn(
            f"checkpoint directory {path} is an unfinished save (the job stopped while writing "
            "it); ignoring it. orbax removes it.",
            CorruptCheckpointWarning,
            stacklevel=3,
        )
        self.skipped.append((path.name, "unfinished save"))

  # -- lifecycle ------------------------------------------------------------------------------

  def wait(self) -> None:
    """Blocks until background saves have finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def settle(self, *, close: bool = False) -> None:
    """Finishes the pending background save without raising, for a job that stops early (an
    exception, a KeyboardInterrupt): a save that fails is reported with a warning and left as an
    unfinished step, which the next restore skips."""
    try:
      self.close() if close else self.wait()
    except Exception as error:  # orbax and tensorstore raise many types
      warnings.warn(
          f"the pending save to {self.directory} failed ({type(error).__name__}: {error}); the "
          "next run skips it.",
          CorruptCheckpointWarning,
          stacklevel=2,
      )

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _finish_earlier_saves(directory: epath.Path) -> None:
  """Waits for a save that an earlier `Checkpointer` of this process still has pending in
  `directory` (a job interrupted twice): orbax would otherwise delete its files mid-write."""
  manager = _MANAGERS.get(str(directory))
  if manager is not None:
    try:
      manager.wait_until_finished()
    except Exception:  # a failed save leaves an unfinished step, reported and skipped below
      pass
