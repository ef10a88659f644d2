"""XLA's own memory analysis of a compiled function: how many bytes one call needs, by kind.

`compiled_memory(fn, *args)` lowers and compiles `fn` for the given arguments (arrays or
`jax.ShapeDtypeStruct`s: nothing runs and no real data is needed) and reads the compiler's buffer
assignment. `temp_bytes` is the peak of the buffers that are neither inputs nor outputs
(activations, residuals kept for the backward pass, gradients before they are returned): the
number to compare when asking whether a training step's memory grows with depth.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

__all__ = ["CompiledMemory", "compiled_memory"]


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
  """Bytes one call of a compiled function needs, as XLA assigned them.

  Attributes:
    temp_bytes: peak size of the temporary buffers (neither arguments nor outputs).
    argument_bytes: size of the arguments.
    output_bytes: size of the outputs.
    alias_bytes: bytes shared between arguments and outputs (donated buffers).
    generated_code_bytes: size of the generated code (0 on backends that do not report it).
    xla_peak_bytes: the backend's own peak estimate, or None where it reports none (XLA:CPU's
      can leave out the temporaries, so prefer `peak_bytes` to compare programs).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.diagnostics import compiled_memory
    >>> memory = compiled_memory(lambda x: x * 2, jax.ShapeDtypeStruct((1024,), jnp.float32))
    >>> memory.argument_bytes, memory.output_bytes
    (4096, 4096)
  """

  temp_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  generated_code_bytes: int
  xla_peak_bytes: int | None = None

  @property
  def peak_bytes(self) -> int:
    """Upper estimate of the peak: arguments, outputs (less aliased bytes) and temporaries all
    live at once."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def compiled_memory(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> CompiledMemory:
  """XLA's memory analysis of `fn` compiled for `args` and `kwargs`.

  Args:
    fn: a function of arrays, or an already jitted function (its `static_argnums`,
      `donate_argnums`... are then respected).
    *args: the arguments, as arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`);
      pytrees of them are fine.
    **kwargs: keyword arguments, likewise.

  Returns:
    A `CompiledMemory`.

  Raises:
    NotImplementedError: the backend gives no memory analysis.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.diagnostics import compiled_memory
    >>> x = jax.ShapeDtypeStruct((256, 256), jnp.float32)  # nothing is allocated or run
    >>> compiled_memory(lambda a: jnp.tanh(a @ a).sum(), x).argument_bytes
    262144
  """
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
  stats = jitted.lower(*args, **kwargs).compile().memory_analysis()
  if stats is None:
    raise NotImplementedError(f"the {jax.default_backend()} backend gives no memory analysis")
  peak = getattr(stats, "peak_memory_in_bytes", 0)
  return CompiledMemory(
      temp_bytes=int(stats.temp_size_in_bytes),
      argument_bytes=int(stats.argument_size_in_bytes),
      output_bytes=int(stats.output_size_in_bytes),
      alias_bytes=int(stats.alias_size_in_bytes),
      generated_code_bytes=int(stats.generated_code_size_in_bytes),
      xla_peak_bytes=int(peak) if peak else None,
  )
