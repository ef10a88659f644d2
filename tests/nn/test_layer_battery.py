"""The battery every `jaxlearn.nn` layer passes, in its NNX and its Linen form.

Adding a layer is one `Layer(...)` row in `LAYERS`. For every row:
  * NNX and Linen give the same outputs and the same state updates (NNX params copied into Linen);
  * the layer works under `jax.jit` / `nnx.jit` and does not recompile on the second step;
  * train and eval modes: eval uses (and keeps) the running statistics, train updates them;
  * bfloat16 inputs with `dtype=bfloat16`: output in bfloat16, statistics and state in float32;
  * batch-statistic layers with `axis_name` sync across a `vmap` (equal to the full batch);
  * a wrong input rank or feature count raises a ValueError.
Conventions a row relies on: the NNX constructor takes `rngs` plus the overrides `dtype` and (for
batch-statistic layers) `axis_name`, and switches mode with `model.train()` / `model.eval()`; the
Linen constructor takes the same overrides, batch-statistic Linen layers take `use_running_average`
at call time (as flax's `BatchNorm`), and `nnx.state(model, nnx.Param / nnx.BatchStat)` has the
structure of the Linen `params` / `batch_stats` collections.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn import registry
from jaxlearn.nn import linen as jnn_linen


@dataclasses.dataclass(frozen=True)
class Layer:
  """One row of the battery.

  Attributes:
    name: the test id.
    slug: the registry slug of the method the layer implements.
    nnx: `nnx(rngs=..., **overrides) -> nnx.Module`.
    linen: `linen(**overrides) -> linen.Module`.
    input_shape: a valid input shape (batch first, features last; batch size even).
    wrong_rank_shape: an input shape whose rank the layer must reject.
    batch_stats: whether the layer keeps running statistics (`nnx.BatchStat` / `batch_stats`).
  """

  name: str
  slug: str
  nnx: Callable[..., nnx.Module]
  linen: Callable[..., linen.Module]
  input_shape: tuple[int, ...]
  wrong_rank_shape: tuple[int, ...]
  batch_stats: bool = False


WS_BCN = "weight_standardization_bcn"
LAYERS = [
    Layer(
        "WSLinear",
        WS_BCN,
        lambda rngs, **kw: jnn.WSLinear(6, 5, rngs=rngs, **kw),
        lambda **kw: jnn_linen.WSDense(5, **kw),
        input_shape=(4, 6),
        wrong_rank_shape=(),
    ),
    Layer(
        "WSConv",
        WS_BCN,
        lambda rngs, **kw: jnn.WSConv(3, 4, (3, 3), rngs=rngs, **kw),
        lambda **kw: jnn_linen.WSConv(4, (3, 3), **kw),
        input_shape=(2, 5, 5, 3),
        wrong_rank_shape=(5, 3),
    ),
    Layer(
        "BatchChannelNorm",
        WS_BCN,
        lambda rngs, **kw: jnn.BatchChannelNorm(8, num_groups=4, momentum=0.8, rngs=rngs, **kw),
        lambda **kw: jnn_linen.BatchChannelNorm(num_groups=4, momentum=0.8, **kw),
        input_shape=(4, 3, 3, 8),
        wrong_rank_shape=(8,),
        batch_stats=True,
    ),
    Layer(
        "BatchChannelNorm_estimated",
        WS_BCN,
        lambda rngs, **kw: jnn.BatchChannelNorm(
            8, num_groups=2, use_estimated_stats=True, momentum=0.8, rngs=rngs, **kw
        ),
        lambda **kw: jnn_linen.BatchChannelNorm(
            num_groups=2, use_estimated_stats=True, momentum=0.8, **kw
        ),
        input_shape=(4, 8),
        wrong_rank_shape=(8,),
        batch_stats=True,
    ),
    Layer(
        "LoRA_gated",
        "allora",
        lambda rngs, **kw: jnn.LoRA(6, 5, 3, gated=True, scaling=0.5, rngs=rngs, **kw),
        lambda **kw: jnn_linen.LoRA(6, 5, 3, gated=True, scaling=0.5, **kw),
        input_shape=(4, 6),
        wrong_rank_shape=(),
    ),
    # Add new layers above this line
]
STATEFUL = [layer for layer in LAYERS if layer.batch_stats]


def ids(layers):
  return [layer.name for layer in layers]


def inputs(layer: Layer, seed: int = 0, dtype=jnp.float32) -> jax.Array:
  # A non-zero mean and a non-unit scale so that normalization has something to do.
  x = 1.5 * jax.random.normal(jax.random.key(seed), layer.input_shape) + 0.5
  return x.astype(dtype)


def build_nnx(layer: Layer, **overrides) -> nnx.Module:
  """The NNX layer with every parameter moved off its (often trivial) initial value."""
  model = layer.nnx(rngs=nnx.Rngs(0), **overrides)
  params = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(42), len(leaves))
  noisy = [p + 0.2 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(treedef, noisy))
  return model


def as_linen_variables(model: nnx.Module) -> dict[str, Any]:
  variables = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
  stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  if stats:
    variables["batch_stats"] = stats
  return variables


def nnx_call(model: nnx.Module, x: jax.Array, *, train: bool) -> jax.Array:
  model.train() if train else model.eval()
  return model(x)


def linen_call(layer: Layer, module: linen.Module, variables, x, *, train: bool):
  """(y, variables after the call)."""
  if not layer.batch_stats:
    return module.apply(variables, x), variables
  y, updates = module.apply(
      variables, x, use_running_average=not train, mutable=["batch_stats"]
  )
  return y, {**variables, **updates}


def batch_stats_of(model: nnx.Module):
  return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))


def assert_trees_close(actual, expected, **tolerance):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), **tolerance)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_nnx_and_linen_give_identical_outputs_and_state_updates(layer):
  model = build_nnx(layer)
  module = layer.linen()
  x = inputs(layer)
  init_kwargs = {"use_running_average": True} if layer.batch_stats else {}
  reference = module.init(jax.random.key(1), x, **init_kwargs)
  variables = as_linen_variables(model)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, dict(reference))
  for step, train in enumerate((True, True, False)):
    x = inputs(layer, seed=step)
    y_nnx = nnx_call(model, x, train=train)
    y_linen, variables = linen_call(layer, module, variables, x, train=train)
    np.testing.assert_allclose(y_nnx, y_linen, rtol=1e-6, atol=1e-6)
    assert_trees_close(as_linen_variables(model), variables, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_jit_matches_eager_without_recompiling(layer):
  x0, x1 = inputs(layer, seed=0), inputs(layer, seed=1)
  eager = build_nnx(layer)
  expected = [nnx_call(eager, x, train=True) for x in (x0, x1)]

  model = build_nnx(layer)
  model.train()
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, x):
    layer_ = nnx.merge(graphdef, state)
    return layer_(x), nnx.state(layer_)

  y0, state = step(state, x0)
  y1, state = step(state, x1)
  assert step._cache_size() == 1
  np.testing.assert_allclose(y0, expected[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y1, expected[1], rtol=1e-5, atol=1e-6)
  assert_trees_close(nnx.state(nnx.merge(graphdef, state)), nnx.state(eager), rtol=1e-5, atol=1e-6)

  model = build_nnx(layer)
  model.train()
  y_nnx_jit = nnx.jit(lambda m, x: m(x))(model, x0)
  np.testing.assert_allclose(y_nnx_jit, expected[0], rtol=1e-5, atol=1e-6)

  module = layer.linen()
  variables = as_linen_variables(build_nnx(layer))
  jitted = jax.jit(lambda v, x: linen_call(layer, module, v, x, train=True))
  np.testing.assert_allclose(jitted(variables, x0)[0], expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_train_and_eval_modes(layer):
  model = build_nnx(layer)
  x = inputs(layer)
  if not layer.batch_stats:
    assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    np.testing.assert_array_equal(nnx_call(model, x, train=True), nnx_call(model, x, train=False))
    return
  initial = batch_stats_of(model)
  nnx_call(model, x, train=True)
  trained = batch_stats_of(model)
  for before, after in zip(jax.tree.leaves(initial), jax.tree.leaves(trained)):
    assert not np.allclose(before, after), "a training call must update the running statistics"
  y_eval = nnx_call(model, x, train=False)
  assert_trees_close(batch_stats_of(model), trained, rtol=0, atol=0)
  # Evaluation normalizes with the running statistics: a sample's output ignores the batch.
  half = x.shape[0] // 2
  np.testing.assert_allclose(y_eval[:half], model(x[:half]), rtol=1e-5, atol=1e-6)
  assert not np.allclose(nnx_call(model, x, train=True)[:half], y_eval[:half], atol=1e-3)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_bfloat16_inputs_keep_float32_statistics(layer):
  x32 = inputs(layer)
  x16 = x32.astype(jnp.bfloat16)
  model = build_nnx(layer, dtype=jnp.bfloat16)
  y = nnx_call(model, x16, train=True)
  assert y.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(nnx.state(model, nnx.BatchStat)):
    assert leaf.dtype == jnp.float32
  for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
    assert leaf.dtype == jnp.float32
  full = build_nnx(layer)
  y32 = nnx_call(full, x16.astype(jnp.float32), train=True)
  np.testing.assert_allclose(np.asarray(y, np.float32), y32, rtol=5e-2, atol=5e-2)
  assert_trees_close(batch_stats_of(model), batch_stats_of(full), rtol=1e-2, atol=1e-2)

  module = layer.linen(dtype=jnp.bfloat16)
  variables = as_linen_variables(build_nnx(layer))
  y_linen, variables = linen_call(layer, module, variables, x16, train=True)
  assert y_linen.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(variables.get("batch_stats", {})):
    assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("layer", STATEFUL, ids=ids(STATEFUL))
def test_batch_statistics_sync_across_vmap_axis_name(layer):
  x = inputs(layer)
  shards = x.reshape(2, x.shape[0] // 2, *x.shape[1:])
  full = build_nnx(layer)
  y_full = nnx_call(full, x, train=True)

  synced = build_nnx(layer, axis_name="batch")
  synced.train()
  y_synced = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="batch")(synced, shards)
  np.testing.assert_allclose(y_synced.reshape(x.shape), y_full, rtol=1e-5, atol=1e-5)
  assert_trees_close(batch_stats_of(synced), batch_stats_of(full), rtol=1e-5, atol=1e-6)

  module = layer.linen(axis_name="batch")
  variables = as_linen_variables(build_nnx(layer))
  apply = jax.vmap(
      lambda v, x: linen_call(layer, module, v, x, train=True),
      in_axes=(None, 0),
      out_axes=(0, None),
      axis_name="batch",
  )
  y_linen, after = apply(variables, shards)
  np.testing.assert_allclose(y_linen.reshape(x.shape), y_full, rtol=1e-5, atol=1e-5)
  assert_trees_close(after["batch_stats"], batch_stats_of(full), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_wrong_input_rank_or_feature_count_raises(layer):
  good = inputs(layer)
  wrong_rank = jnp.ones(layer.wrong_rank_shape)
  wrong_features = jnp.ones((*layer.input_shape[:-1], layer.input_shape[-1] + 1))
  model = build_nnx(layer)
  model.train()
  module = layer.linen()
  variables = as_linen_variables(model)
  for bad in (wrong_rank, wrong_features):
    with pytest.raises(ValueError, match="expects"):
      model(bad)
    with pytest.raises(ValueError, match="expects"):
      linen_call(layer, module, variables, bad, train=True)
  init_kwargs = {"use_running_average": False} if layer.batch_stats else {}
  with pytest.raises(ValueError, match="expects"):
    module.init(jax.random.key(0), wrong_rank, **init_kwargs)
  linen_call(layer, module, variables, good, train=True)  # the good input still works


def test_every_registered_layer_has_a_row():
  rows = {layer.slug for layer in LAYERS}
  built = {type(layer.nnx(rngs=nnx.Rngs(0))) for layer in LAYERS}
  built |= {type(layer.linen()) for layer in LAYERS}
  for method in registry.all_methods("normalization") + registry.all_methods("layer"):
    assert method.slug in rows, f"{method.slug} has no row in LAYERS"
    for symbol in method.symbols:
      obj = registry.resolve(symbol)
      if isinstance(obj, type) and issubclass(obj, (nnx.Module, linen.Module)):
        assert obj in built, f"{symbol} ({method.slug}) is not built by any row of LAYERS"
