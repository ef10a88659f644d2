"""SLTrain against a NumPy materialization of (α/r) A B + S, its support and parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn

IN, OUT, RANK, DENSITY, ALPHA = 12, 7, 3, 0.2, 6.0


def test_layer_equals_numpy_dense_materialization():
  # Abstract init (no eager random draw to compile), then every parameter set from NumPy.
  layer = nnx.eval_shape(lambda: jnn.SLTrainLinear(IN, OUT, rank=RANK, density=DENSITY,
                                                   alpha=ALPHA, support_seed=3,
                                                   rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  # B starts at zero: give every factor non-trivial values.
  a, b = rng.normal(size=(IN, RANK)), rng.normal(size=(RANK, OUT))
  values, bias = rng.normal(size=layer.values.shape), rng.normal(size=OUT)
  for name, value in (("a", a), ("b", b), ("values", values), ("bias", bias)):
    setattr(layer, name, nnx.Param(jnp.asarray(value, jnp.float32)))
  sparse = np.zeros(IN * OUT)
  for index, value in zip(layer.indices, values):  # one entry at a time: no vectorized scatter
    sparse[index] += value
  kernel = ALPHA / RANK * a @ b + sparse.reshape(IN, OUT)
  x = rng.normal(size=(5, IN))
  np.testing.assert_allclose(layer(jnp.asarray(x, jnp.float32)), x @ kernel + bias,
                             rtol=1e-5, atol=1e-5)
  # Only the support is sparse: the rest of S is zero.
  assert np.count_nonzero(sparse) == int(DENSITY * IN * OUT)


def test_support_and_parameter_count():
  indices = jnn.sparse_support(IN, OUT, DENSITY, seed=3)
  assert len(np.unique(indices)) == len(indices) == int(DENSITY * IN * OUT)  # no repeats
  assert np.all(np.diff(indices) > 0) and 0 <= indices.min() and indices.max() < IN * OUT
  assert not np.array_equal(indices, jnn.sparse_support(IN, OUT, DENSITY, seed=4))
  params = jnn.init_sltrain(jax.random.key(0, impl="rbg"), IN, OUT, rank=RANK, density=DENSITY)
  count = sum(p.size for p in jax.tree.leaves(params))
  assert count == RANK * (IN + OUT) + int(DENSITY * IN * OUT) + OUT
  # The official init: B zero, A and the values within 1/sqrt(in), the bias within 1/sqrt(out).
  assert not params["b"].any()
  assert np.abs(params["a"]).max() <= IN**-0.5 and np.abs(params["values"]).max() <= IN**-0.5
  assert np.abs(params["bias"]).max() <= OUT**-0.5


@pytest.mark.parametrize("kwargs", [{"density": 0.0}, {"density": 1.0}, {"density": -0.1},
                                    {"rank": 0}, {"density": float("nan")}])
def test_bad_arguments_raise(kwargs):
  arguments = {"rank": RANK, "density": DENSITY, **kwargs}
  name = next(iter(kwargs))
  with pytest.raises(ValueError, match=name):
    jnn.init_sltrain(jax.random.key(0), IN, OUT, **arguments)
