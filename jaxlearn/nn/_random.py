"""The key a random NNX layer draws in training, from whatever `rngs` its caller gave."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

__all__ = ["training_key"]


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
