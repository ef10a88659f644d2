"""XLA:CPU's fast-compile options, for the many small programs of tests and smoke runs.

Such programs run for milliseconds, while compiling them with every optimization takes seconds.
These options (LLVM -O0, the classic emitters, one codegen thread) compile them several times
faster and change results by float rounding only. Tests and `--quick` experiment runs use them
through `fast_jit`; library code never does.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

__all__ = ["fast_compile_options", "fast_jit"]

_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_parallel_codegen_split_count": 1,
}


@functools.cache
def _supported() -> bool:
  if jax.default_backend() != "cpu":
    return False
  try:
    jax.jit(lambda x: x + 1, compiler_options=_OPTIONS)(1.0)
  except Exception:  # pylint: disable=broad-except  # an XLA build without these options
    return False
  return True


def fast_compile_options(enabled: bool = True) -> dict[str, Any] | None:
  """The options, or None when `enabled` is false, off CPU, or on an XLA without them."""
  return dict(_OPTIONS) if enabled and _supported() else None


def fast_jit(fn: Callable, enabled: bool = True, **jit_kwargs) -> Callable:
  """`jax.jit(fn)` compiled with `fast_compile_options(enabled)`."""
  return jax.jit(fn, compiler_options=fast_compile_options(enabled), **jit_kwargs)
