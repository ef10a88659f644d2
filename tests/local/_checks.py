"""Shared checks for layer-local rules: the no-crossing test and the no-derivative sentinels.

* `assert_no_gradient_crosses_blocks(model, rule, params, rule_state, batch, key)`: the Jacobian
  of every block objective with respect to every parameter group; block k's objective must have
  an EXACTLY zero derivative with respect to block j's and head j's parameters for j != k (and a
  nonzero one with respect to its own block). The shared group (`LocalParams.shared`) is the one
  exception by design: any block's objective may reach it (`shared_reached=True` asserts that
  every block's objective does).
* Forward-only rules prove they take no derivative with a sentinel, not by reading the jaxpr:
  `sentinel_block` is a dense block whose output passes through `no_derivative`, a
  `jax.custom_jvp` whose JVP raises `Differentiated`; `black_box(fn)` wraps a NumPy function as
  a `jax.pure_callback` (JAX itself refuses to differentiate it). A forward-only step must run
  with them, while a `jax.grad` step must raise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlearn import local


class Differentiated(Exception):
  """Raised when something tries to differentiate through `no_derivative`."""


@jax.custom_jvp
def no_derivative(x):
  """The identity in the forward pass; any derivative through it raises `Differentiated`."""
  return x


@no_derivative.defjvp
def _no_derivative_jvp(primals, tangents):
  del primals, tangents
  raise Differentiated("a derivative was taken through a forward-only sentinel")


def sentinel_block(features: int, activation=jnp.tanh) -> local.Block:
  """`no_derivative(activation(x @ W + b))`: runs forward; differentiating it raises."""
  dense = local.dense_block(features, activation)
  return local.Block(dense.init, lambda params, x: no_derivative(dense.apply(params, x)))


def black_box(fn, result_shape=None):
  """`fn` (NumPy, float32 in, float32 out) as a `jax.pure_callback`: never differentiable.

  `result_shape(x) -> jax.ShapeDtypeStruct` (default: x's shape and float32). vmapped calls run
  the callback once per example (`vmap_method="sequential"`).
  """

  def wrapped(x):
    shape = (jax.ShapeDtypeStruct(x.shape, jnp.float32) if result_shape is None
             else result_shape(x))
    host = lambda a: np.asarray(fn(np.asarray(a, np.float32)), np.float32)
    return jax.pure_callback(host, shape, x, vmap_method="sequential")

  return wrapped


def per_block_jacobian(model, rule, params, rule_state, batch, key=None, *, detach=True):
  """d loss_k / d (every parameter group), each leaf with a leading axis k (num_blocks)."""
  fn = lambda p: local.block_losses(model, rule, p, rule_state, batch, key, detach=detach)[0]
  return jax.jit(jax.jacrev(fn))(params)


def _max_abs(tree, k) -> float:
  leaves = jax.tree.leaves(tree)
  return max((float(jnp.max(jnp.abs(leaf[k]))) for leaf in leaves), default=0.0)


def assert_no_gradient_crosses_blocks(
    model, rule, params, rule_state, batch, key=None, *, own_nonzero=True, shared_reached=False
):
  """Block k's objective has exactly zero gradient for block j and head j (j != k).

  Args:
    own_nonzero: also assert that each objective has a nonzero gradient for its own block (it
      trains something).
    shared_reached: also assert that each objective has a nonzero gradient for the shared group.

  Returns:
    The Jacobian (`LocalParams` of stacked rows), for further checks.
  """
  jac = per_block_jacobian(model, rule, params, rule_state, batch, key)
  num_blocks = len(model.blocks)
  for k in range(num_blocks):
    for j in range(num_blocks):
      if j == k:
        if own_nonzero:
          assert _max_abs(jac.blocks[j], k) > 0.0, f"objective {k} does not train block {k}"
        continue
      for leaf in jax.tree.leaves((jac.blocks[j], jac.heads[j])):
        np.testing.assert_array_equal(
            leaf[k], 0.0, err_msg=f"objective {k} sends gradient to block/head {j}")
    if shared_reached:
      assert _max_abs(jac.shared, k) > 0.0, f"objective {k} does not reach the shared group"
  return jac
