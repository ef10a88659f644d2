"""The training / evaluation mode of NNX layers: running statistics (as flax's BatchNorm) or
randomness (as flax's Dropout).

Every NNX layer of `jaxlearn.nn` that keeps running statistics switches modes like
`flax.nnx.BatchNorm`: a `use_running_average` attribute set by the constructor or by
`model.train()` / `model.eval()` (through the `set_view` hook of `nnx.view`), which one call may
override. `RunningAverageMode` holds that logic once; a layer inherits it and calls
`self.running_average_mode(use_running_average)` at the top of its `__call__`. A random layer
switches like `flax.nnx.Dropout`, with a `deterministic` attribute: `DeterministicMode`.
"""

from __future__ import annotations

from flax import nnx


class RunningAverageMode(nnx.Module):
  """Base of the NNX layers whose mode is `use_running_average` (True: evaluation).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn.nn._modes import RunningAverageMode
    >>> class Layer(RunningAverageMode):
    ...   def __init__(self):
    ...     self.use_running_average = None
    ...   def __call__(self, x, use_running_average=None):
    ...     return x if self.running_average_mode(use_running_average) else 2 * x
    >>> layer = Layer()
    >>> layer.train(); float(layer(jnp.ones(())))
    2.0
    >>> layer.eval(); float(layer(jnp.ones(())))
    1.0
  """

  use_running_average: bool | None

  def running_average_mode(self, use_running_average: bool | None) -> bool:
    """The mode of one call: its `use_running_average` if given, else the layer's.

    Raises:
      ValueError: neither is set.
    """
    if use_running_average is None:
      use_running_average = self.use_running_average
    if use_running_average is None:
      raise ValueError(
          f"{type(self).__name__} needs `use_running_average`: pass it to the constructor or the"
          " call, or use model.train() / model.eval()"
      )
    return bool(use_running_average)

  def set_view(self, use_running_average: bool | None = None):
    """Hook of `nnx.view` (`model.train()` / `model.eval()`): sets the mode.

    Args:
      use_running_average: evaluation mode if True, training mode if False.
    """
    if use_running_average is not None:
      self.use_running_average = use_running_average


class DeterministicMode(nnx.Module):
  """Base of the random NNX layers whose mode is `deterministic` (True: evaluation), as
  `flax.nnx.Dropout`: set by the constructor or `model.train()` / `model.eval()`, overridden by
  one call's `deterministic`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn._modes import DeterministicMode
    >>> class Layer(DeterministicMode):
    ...   def __init__(self):
    ...     self.deterministic = False
    ...   def __call__(self, x, deterministic=None):
    ...     return x if self.deterministic_mode(deterministic) else 2 * x
    >>> layer = Layer()
    >>> float(layer(jnp.ones(()))), float(layer(jnp.ones(()), deterministic=True))
    (2.0, 1.0)
    >>> layer.eval(); float(layer(jnp.ones(())))
    1.0
  """

  deterministic: bool

  def deterministic_mode(self, deterministic: bool | None) -> bool:
    """The mode of one call: its `deterministic` if given, else the layer's."""
    return self.deterministic if deterministic is None else deterministic

  def set_view(self, deterministic: bool | None = None):
    """Hook of `nnx.view` (`model.train()` / `model.eval()`): sets the mode.

    Args:
      deterministic: evaluation mode if True, training mode if False.
    """
    if deterministic is not None:
      self.deterministic = deterministic
