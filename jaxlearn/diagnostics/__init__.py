"""Diagnostics used to study training.

`compiled_memory(fn, *args)`: XLA's memory analysis of a jitted function (temporary, argument,
output and generated-code bytes, and a peak estimate), without running it.
"""

from jaxlearn.diagnostics.memory import CompiledMemory, compiled_memory

__all__ = ["CompiledMemory", "compiled_memory"]
