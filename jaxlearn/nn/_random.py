"""A random NNX layer's own stream, and the key it draws in training from whatever `rngs` it got."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

__all__ = ["layer_stream", "training_key"]


def layer_stream(rngs: Any, stream: str) -> Any:
  """The stream a random layer keeps from its constructor's `rngs`: a fork of `rngs[stream]`
  (an `nnx.Rngs` that has it) or of an `nnx.RngStream`; otherwise none (`nnx.data(None)`), and the
  caller passes `rngs=` at call time."""
  if isinstance(rngs, nnx.Rngs):
    return rngs[stream].fork() if stream in rngs else nnx.data(None)
  if isinstance(rngs, nnx.RngStream):
    return rngs.fork()
  return nnx.data(None)


def training_key(rngs: Any, stream: str, purpose: str) -> jax.Array:
  """A key from `rngs`: an `nnx.Rngs` (its `stream`), an `nnx.RngStream`, or a key itself.

  Raises:
    ValueError: for anything else (None included), starting with `purpose` (which layer draws
      what) and saying what to pass instead.
  """
  if isinstance(rngs, nnx.Rngs):
    return rngs[stream]()
  if isinstance(rngs, nnx.RngStream):
    return rngs()
  if isinstance(rngs, jax.Array):
    return rngs
  raise ValueError(
      f"{purpose}: pass rngs= (an nnx.Rngs with a '{stream}' stream, an RngStream or a key) to "
      f"the call or the constructor, or use deterministic=True / model.eval(); got {rngs!r}")
