"""Diagnostics used to study training.

`compiled_memory(fn, *args)`: XLA's memory analysis of a jitted function (temporary, argument,
output and generated-code bytes, and a peak estimate), without running it.
`expected_calibration_error(probabilities, labels)`: the ECE with equal-width confidence bins.
"""

from jaxlearn.diagnostics.memory import CompiledMemory, compiled_memory
from jaxlearn.diagnostics.calibration import expected_calibration_error

__all__ = ["CompiledMemory", "compiled_memory", "expected_calibration_error"]
