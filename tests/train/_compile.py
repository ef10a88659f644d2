"""`fast_compile`: a fixture for test modules whose programs run a few steps each.

Compiling such a program with XLA's optimizations costs more than running it unoptimized, so
these modules turn most of them off (`jax_disable_most_optimizations`: the same programs, compiled
several times faster on CPU) and restore the setting afterwards. Use it with
`pytestmark = pytest.mark.usefixtures("fast_compile")` after importing it.
"""

import jax
import pytest


@pytest.fixture(scope="module")
def fast_compile():
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
