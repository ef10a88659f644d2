"""compiled_memory: XLA's memory analysis of a jitted function, without running it."""

import functools

import jax
import jax.numpy as jnp
import pytest

from jaxlearn.diagnostics import CompiledMemory, compiled_memory


def _chain(x, depth):
  """`depth` tanh layers whose intermediates all stay live (each feeds the summed output)."""
  outputs = []
  for _ in range(depth):
    x = jnp.tanh(x @ x.T) @ x
    outputs.append(x)
  return sum(o.sum() for o in outputs)


def test_temporaries_grow_with_the_size_of_the_problem():
  square = lambda x: jnp.tanh(x @ x.T) @ x  # an (n, n) intermediate between two matmuls
  small = compiled_memory(square, jnp.ones((64, 8)))
  large = compiled_memory(square, jnp.ones((512, 8)))
  assert isinstance(small, CompiledMemory)
  # 8x more rows: 64x more bytes in the intermediate, which must be materialized.
  assert large.temp_bytes >= 512 * 512 * 4 and large.temp_bytes > 16 * small.temp_bytes > 0
  assert large.argument_bytes == large.output_bytes == 8 * small.argument_bytes == 512 * 8 * 4


def test_backprop_memory_grows_with_depth():
  """Gradients keep every layer's activations for the backward pass."""
  x = jax.ShapeDtypeStruct((128, 16), jnp.float32)  # shapes only: nothing is computed
  grad = lambda depth: jax.grad(functools.partial(_chain, depth=depth))
  shallow, deep = compiled_memory(grad(1), x), compiled_memory(grad(4), x)
  assert deep.temp_bytes > shallow.temp_bytes


def test_fields_add_up_and_jitted_functions_and_kwargs_are_accepted():
  jitted = jax.jit(lambda x, *, scale: x * scale, donate_argnums=0)
  memory = compiled_memory(jitted, jnp.ones((32, 32)), scale=2.0)
  assert memory.argument_bytes == 32 * 32 * 4 + 4
  assert memory.peak_bytes == (
      memory.argument_bytes + memory.output_bytes - memory.alias_bytes + memory.temp_bytes
  )
  assert memory.generated_code_bytes >= 0
  assert memory.xla_peak_bytes is None or memory.xla_peak_bytes > 0


def test_pytrees_of_abstract_arguments():
  params = {"w": jax.ShapeDtypeStruct((64, 64), jnp.float32), "b": jnp.zeros(64)}
  memory = compiled_memory(lambda p, x: jnp.sum(x @ p["w"] + p["b"]), params, jnp.ones((8, 64)))
  assert memory.argument_bytes == (64 * 64 + 64 + 8 * 64) * 4


def test_static_arguments_need_a_jitted_function():
  with pytest.raises(TypeError):
    compiled_memory(lambda x, n: x * n, jnp.ones(3), "three")
  jitted = jax.jit(lambda x, n: jnp.tile(x, n), static_argnums=1)
  assert compiled_memory(jitted, jnp.ones(3), 4).output_bytes == 12 * 4
