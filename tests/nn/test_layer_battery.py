"""The battery every `jaxlearn.nn` layer passes, in its NNX and its Linen form.

Adding a layer is one `Layer(...)` row in `LAYERS` (above the marker line), data only: the NNX and
Linen classes, their positional arguments, the keyword arguments both take, a small valid input
shape and an input shape of the wrong rank. For every row:
  * NNX and Linen give the same outputs and the same state updates (the same parameters in both)
    over a train, train, eval sequence;
  * the layer works under `jax.jit` (matching eager NNX) and `nnx.jit`, and no program is traced
    or compiled twice: the second step, fed the state the first returned, reuses its program;
  * gradients reach every parameter and the input, finite and not all zero;
  * train and eval modes: eval uses (and keeps) the running statistics, train updates them;
  * bfloat16 inputs with `dtype=bfloat16`: output in bfloat16; parameters, statistics and state in
    float32;
  * batch-statistic layers with `axis_name` sync across a `vmap` (equal to the full batch);
  * a wrong input rank or feature count raises a ValueError.
Conventions a row relies on: the NNX constructor takes `rngs` plus the overrides `dtype` and (for
batch-statistic layers) `axis_name`, and switches mode with `model.train()` / `model.eval()`; the
Linen constructor takes the same overrides, batch-statistic Linen layers take `use_running_average`
at call time (as flax's `BatchNorm`), and `nnx.state(model, nnx.Param / nnx.BatchStat)` has the
structure of the Linen `params` / `batch_stats` collections.

CPU budget: about 1 s per row, 2 s for a batch-statistic layer (measured on 2 loaded cores); the
method's own reference tests share the ~3 s a method may cost. What keeps it there: every program
of a row is compiled once, in `programs(layer)`, and shared by all the tests (6 to 10 small
programs: NNX and Linen per mode, bfloat16, nnx.jit, vmap; the gradients come out of the float32
training program); parameters and inputs are made with NumPy, never with eager JAX ops (an eager
random draw for a rank-4 kernel alone compiles for ~1 s); shapes and abstract `init`s go through
`jax.eval_shape`; one eager call per row runs op by op. Keep inputs to a few hundred elements, and
make a new check reuse the row's programs: a new input shape, dtype or static argument is a new
compilation.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn import registry
from jaxlearn.nn import linen as jnn_linen


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
  """One row of the battery.

  Attributes:
    name: the test id.
    slug: the registry slug of the method the layer implements.
    nnx: the NNX class, built as `nnx(*nnx_args, **kwargs, rngs=..., **overrides)`.
    nnx_args: its positional arguments.
    linen: the Linen class, built as `linen(*linen_args, **kwargs, **overrides)`.
    linen_args: its positional arguments.
    input_shape: a valid input shape (batch first, features last; batch size even).
    wrong_rank_shape: an input shape whose rank the layer must reject.
    kwargs: keyword arguments both classes take.
    batch_stats: whether the layer keeps running statistics (`nnx.BatchStat` / `batch_stats`).
    stochastic: the rng stream a layer samples noise from in training (NNX `rngs.<stream>()`,
      Linen `make_rng(<stream>)`), or None. The two derive different keys from one seed, so the
      battery calls both with the same raw key (NNX `rngs=key`, Linen `rng=key` and
      `deterministic`), like flax's Dropout layers; train and eval modes then differ.
  """

  name: str
  slug: str
  nnx: type[nnx.Module]
  nnx_args: tuple[Any, ...]
  linen: type[linen.Module]
  linen_args: tuple[Any, ...]
  input_shape: tuple[int, ...]
  wrong_rank_shape: tuple[int, ...]
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  batch_stats: bool = False
  stochastic: str | None = None
  # Parameters the output does not reach by design (trained by a separate loss term only).
  no_output_gradient: tuple[str, ...] = ()

  def call_kwargs(self, train: bool = True, linen: bool = False) -> dict[str, Any]:
    """The noise key (and Linen mode) of a stochastic layer's call; {} for the others."""
    if not self.stochastic:
      return {}
    key = jax.random.key(0, impl="rbg")  # threefry's hash alone compiles for ~1 s a program
    return {"rng": key, "deterministic": not train} if linen else {"rngs": key}

  def build_nnx(self, **overrides) -> nnx.Module:
    return self.nnx(*self.nnx_args, **self.kwargs, **overrides, rngs=nnx.Rngs(0))

  def build_linen(self, **overrides) -> linen.Module:
    return self.linen(*self.linen_args, **self.kwargs, **overrides)


WS_BCN = "weight_standardization_bcn"
LAYERS = [
    Layer(
        "WSLinear", WS_BCN, nnx=jnn.WSLinear, nnx_args=(6, 5), linen=jnn_linen.WSDense,
        linen_args=(5,), input_shape=(4, 6), wrong_rank_shape=(),
    ),
    Layer(
        "WSConv", WS_BCN, nnx=jnn.WSConv, nnx_args=(3, 4, (3, 3)), linen=jnn_linen.WSConv,
        linen_args=(4, (3, 3)), input_shape=(2, 5, 5, 3), wrong_rank_shape=(5, 3),
    ),
    Layer(
        "BatchChannelNorm", WS_BCN, nnx=jnn.BatchChannelNorm, nnx_args=(8,),
        linen=jnn_linen.BatchChannelNorm, linen_args=(), input_shape=(4, 3, 3, 8),
        wrong_rank_shape=(8,), kwargs={"num_groups": 4, "momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "BatchChannelNorm_estimated", WS_BCN, nnx=jnn.BatchChannelNorm, nnx_args=(8,),
        linen=jnn_linen.BatchChannelNorm, linen_args=(), input_shape=(4, 8),
        wrong_rank_shape=(8,),
        kwargs={"num_groups": 2, "use_estimated_stats": True, "momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "LoRA_gated", "allora", nnx=jnn.LoRA, nnx_args=(6, 5, 3), linen=jnn_linen.LoRA,
        linen_args=(6, 5, 3), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"gated": True, "scaling": 0.5},
    ),
    Layer(
        "MuReadout", "mup_feature_learning", nnx=jnn.MuReadout, nnx_args=(6, 5),
        linen=jnn_linen.MuReadout, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"base_in_features": 3, "output_mult": 2.0},
    ),
    Layer(
        "ZCABatchNorm", "fast_differentiable_matsqrt", nnx=jnn.ZCABatchNorm, nnx_args=(8,),
        linen=jnn_linen.ZCABatchNorm, linen_args=(), input_shape=(4, 3, 3, 8),
        wrong_rank_shape=(8,), kwargs={"num_groups": 2, "momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "NMSparseLinear", "progressive_gradient_flow_nm", nnx=jnn.NMSparseLinear,
        nnx_args=(8, 5), linen=jnn_linen.NMSparseDense, linen_args=(5,), input_shape=(4, 8),
        wrong_rank_shape=(), kwargs={"n": 1, "m": 4, "sr_ste": 2e-4},
    ),
    Layer(
        "MaskLLMLinear", "maskllm", nnx=jnn.MaskLLMLinear, nnx_args=(8, 5),
        linen=jnn_linen.MaskLLMDense, linen_args=(5,), input_shape=(4, 8), wrong_rank_shape=(),
        kwargs={"temperature": (1.0, 1.0), "scale_multiplier": (1.0, 1.0)}, stochastic="gumbel",
    ),
    Layer(
        "AutoSparseLinear", "autosparse_gradient_annealing", nnx=jnn.AutoSparseLinear,
        nnx_args=(6, 5), linen=jnn_linen.AutoSparseDense, linen_args=(5,), input_shape=(4, 6),
        wrong_rank_shape=(),
    ),
    Layer(
        "BTTLinear_normalized", "btt_structured_layers", nnx=jnn.BTTLinear, nnx_args=(6, 4),
        linen=jnn_linen.BTTDense, linen_args=(6, 4), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"rank": 2, "normalize": True},
    ),
    Layer(
        "MonarchLinear", "btt_structured_layers", nnx=jnn.MonarchLinear, nnx_args=(6, 5),
        linen=jnn_linen.MonarchDense, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"num_blocks": 2},
    ),
    # ScaleLong's gates act on tokens: channels-first skips (num_skips, batch, C, L) put the
    # token axis last, where the battery changes the feature count.
    Layer(
        "LongSkipScale_ls", "scalelong", nnx=jnn.LongSkipScale, nnx_args=(2, 8),
        linen=jnn_linen.LongSkipScale, linen_args=(2, 8), input_shape=(2, 2, 3, 8),
        wrong_rank_shape=(8,), kwargs={"mode": "ls", "reduction": 4, "channels_last": False},
    ),
    Layer(
        "LongSkipScale_ls_per_skip", "scalelong", nnx=jnn.LongSkipScale, nnx_args=(2, 8),
        linen=jnn_linen.LongSkipScale, linen_args=(2, 8), input_shape=(2, 2, 3, 8),
        wrong_rank_shape=(3, 8),
        kwargs={"mode": "ls_per_skip", "reduction": 4, "channels_last": False},
    ),
    Layer(
        "SNNKLinear", "scalable_nn_kernels", nnx=jnn.SNNKLinear, nnx_args=(6, 5),
        linen=jnn_linen.SNNKDense, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"num_features": 8},
    ),
    Layer(
        "SLTrainLinear", "sltrain", nnx=jnn.SLTrainLinear, nnx_args=(6, 5),
        linen=jnn_linen.SLTrainDense, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"rank": 2, "density": 0.3, "alpha": 4.0},
    ),
    Layer(
        "MaestroLinear", "maestro_lod", nnx=jnn.MaestroLinear, nnx_args=(6, 5),
        linen=jnn_linen.MaestroDense, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        stochastic="ordered_dropout",
    ),
    Layer(
        "LatentQuantizer", "latent_quantization_qlae", nnx=jnn.LatentQuantizer, nnx_args=(6,),
        linen=jnn_linen.LatentQuantizer, linen_args=(6,), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"num_values": 5}, no_output_gradient=("values",),
    ),
    # Add new layers above this line
]
STATEFUL = [layer for layer in LAYERS if layer.batch_stats]


def ids(layers):
  return [layer.name for layer in layers]


def inputs(layer: Layer, seed: int = 0, *, batch_from: int | None = None, dtype=jnp.float32,
           shards: int | None = None) -> jax.Array:
  """An input made with NumPy (no eager JAX op).

  Args:
    layer: the row.
    seed: the NumPy seed.
    batch_from: replace the samples from this index on by others.
    dtype: the input's dtype (float32 values rounded to it).
    shards: split the batch axis into this many shards (a new leading axis).
  """
  # A non-zero mean and a non-unit scale so that normalization has something to do.
  x = 1.5 * np.random.default_rng(seed).normal(size=layer.input_shape) + 0.5
  if batch_from is not None:
    x[batch_from:] = np.random.default_rng(seed + 100).normal(size=x[batch_from:].shape)
  x = x.astype(np.float32).astype(dtype)
  if shards is not None:
    x = x.reshape(shards, x.shape[0] // shards, *x.shape[1:])
  # Always a jax.Array: a NumPy argument would add a jit cache entry (not a compilation).
  return jnp.asarray(x)


def as_linen_variables(state: nnx.State) -> dict[str, Any]:
  variables = {"params": nnx.to_pure_dict(nnx.filter_state(state, nnx.Param))}
  stats = batch_stats_of(state)
  if stats:
    variables["batch_stats"] = stats
  return variables


def batch_stats_of(state: nnx.State):
  return nnx.to_pure_dict(nnx.filter_state(state, nnx.BatchStat))


def avals(tree):
  """The structure, shapes and dtypes of a tree: what a compiled program is specialized on."""
  return jax.tree.structure(tree), [(a.shape, a.dtype) for a in jax.tree.leaves(tree)]


def assert_trees_close(actual, expected, **tolerance):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), **tolerance)


class Programs:
  """A row's initial state and every program its checks compile, built once per row.

  `nnx(...)` and `linen(...)` run the layer through one jitted function each, whose static
  arguments are the NNX graphdef (mode and dtype live there) and the Linen (dtype, mode): modes
  that compile to the same program share it. Every jitted function counts its traces per static
  arguments and input, so a check can assert that a later step reused the first compilation.
  """

  def __init__(self, layer: Layer):
    self.layer = layer
    self.traces = collections.Counter()
    # The state with no eager JAX op: shapes from `nnx.eval_shape`, parameters drawn with NumPy
    # (in [0.5, 1.5]: off any trivial initial value, and valid for parameters that must be
    # positive), every other variable (statistics) from the constructor, compiled without the
    # parameter initializers (an eager random draw for a rank-4 kernel compiles for ~1 s).
    rng = np.random.default_rng(42)
    graphdef, params, _ = nnx.split(nnx.eval_shape(layer.build_nnx), nnx.Param, ...)
    params = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype), params)
    others = jax.jit(lambda: nnx.state(layer.build_nnx(), nnx.Not(nnx.Param)))()
    self.state = nnx.state(nnx.merge(graphdef, params, others))
    self.graphdefs, self.modes = {}, {}
    for dtype in ("float32", "bfloat16"):
      overrides = {} if dtype == "float32" else {"dtype": jnp.bfloat16}
      abstract = nnx.eval_shape(lambda: layer.build_nnx(**overrides))
      for train in (True, False):
        abstract.train() if train else abstract.eval()
        graphdef, abstract_state = nnx.split(abstract)
        assert avals(abstract_state) == avals(self.state), "`dtype` must not change the state"
        self.graphdefs[train, dtype] = graphdef
        self.modes[graphdef] = f"{'train' if train else 'eval'}/{dtype}"
    self._nnx = jax.jit(self._nnx_step, static_argnums=0)
    self._linen = jax.jit(self._linen_step, static_argnums=(0, 1))
    self.nnx_jit_call = nnx.jit(
        self._count(lambda m, x: m(x, **layer.call_kwargs()), "nnx.jit"))
    if layer.batch_stats:
      synced = nnx.eval_shape(lambda: layer.build_nnx(axis_name="batch"))
      synced.train()
      self.synced_graphdef = nnx.split(synced)[0]
      self.nnx_vmap = jax.jit(self._count(self._nnx_vmap_step, "nnx vmap"))
      self.linen_vmap = jax.jit(self._count(self._linen_vmap_step, "linen vmap"))

  def nnx(self, state, x, *, train: bool = True, dtype: str = "float32"):
    """(y, new state, gradients) of the NNX layer; see `_nnx_step`."""
    return self._nnx(self.graphdefs[train, dtype], state, x)

  def linen(self, variables, x, *, train: bool = True, dtype: str = "float32"):
    """(y, variables after the call) of the Linen layer."""
    return self._linen(
        dtype, train or not (self.layer.batch_stats or self.layer.stochastic), variables, x)

  def _count(self, fn, name):
    @functools.wraps(fn)
    def counted(*args):
      self.traces[name, np.shape(args[-1]), str(args[-1].dtype)] += 1
      return fn(*args)
    return counted

  def _nnx_step(self, graphdef, state, x):
    """(y, new state, gradients).

    The gradients, of a random projection of y w.r.t. (parameters, x), are computed in the
    float32 training program only (None elsewhere): one compilation serves both checks.
    """
    self.traces["nnx", self.modes[graphdef], x.shape, x.dtype] += 1
    params, others = nnx.filter_state(state, nnx.Param, ...)

    def forward(params, x):
      # Fresh Variables in this trace: merge shares them, and the layer may update statistics.
      model = nnx.merge(graphdef, *jax.tree.map(lambda a: a, (params, others)))
      y = model(x, **self.layer.call_kwargs())
      return jnp.sum(y.astype(jnp.float32) * _probe(y.shape)), (y, nnx.state(model))

    if graphdef != self.graphdefs[True, "float32"]:
      return *forward(params, x)[1], None
    (_, (y, new_state)), grads = jax.value_and_grad(forward, (0, 1), has_aux=True)(params, x)
    return y, new_state, grads

  def _linen_apply(self, module, train: bool, variables, x):
    if not self.layer.batch_stats:
      return module.apply(variables, x, **self.layer.call_kwargs(train, linen=True)), variables
    y, updates = module.apply(
        variables, x, use_running_average=not train, mutable=["batch_stats"]
    )
    return y, {**variables, **updates}

  def _linen_step(self, dtype: str, train: bool, variables, x):
    self.traces["linen", f"{'train' if train else 'eval'}/{dtype}", x.shape, x.dtype] += 1
    module = self.layer.build_linen(**({} if dtype == "float32" else {"dtype": jnp.bfloat16}))
    return self._linen_apply(module, train, variables, x)

  def _nnx_vmap_step(self, state, shards):
    model = nnx.merge(self.synced_graphdef, state)
    y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="batch")(model, shards)
    return y, nnx.state(model)

  def _linen_vmap_step(self, variables, shards):
    module = self.layer.build_linen(axis_name="batch")
    apply = functools.partial(self._linen_apply, module, True)
    return jax.vmap(apply, in_axes=(None, 0), out_axes=(0, None), axis_name="batch")(
        variables, shards
    )

  def model(self) -> nnx.Module:
    """A fresh NNX layer in training mode holding the row's initial state (copied Variables)."""
    return nnx.merge(self.graphdefs[True, "float32"], jax.tree.map(lambda a: a, self.state))

  def assert_no_retrace(self):
    """No program was traced twice, and nothing was compiled without a trace."""
    retraced = {key: n for key, n in self.traces.items() if n > 1}
    assert not retraced, f"traced again: {retraced}"
    for name in ("nnx", "linen"):
      compiled = getattr(self, f"_{name}")._cache_size()
      assert compiled == sum(key[0] == name for key in self.traces), f"{name} recompiled"


def _probe(shape):
  return jnp.asarray(np.random.default_rng(7).normal(size=shape), jnp.float32)


@functools.cache
def _programs(name: str) -> Programs:
  return Programs(next(layer for layer in LAYERS if layer.name == name))


def programs(layer: Layer) -> Programs:
  return _programs(layer.name)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_nnx_and_linen_agree_under_jit_without_recompiling(layer):
  p = programs(layer)
  variables = as_linen_variables(p.state)
  init_kwargs = {"use_running_average": True} if layer.batch_stats else {}
  init = lambda: layer.build_linen().init(jax.random.key(1), inputs(layer), **init_kwargs)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, dict(jax.eval_shape(init)))

  # NNX and Linen, one compiled program per mode, over train, train, eval.
  state, ys, states = p.state, [], []
  for step, train in enumerate((True, True, False)):
    x = inputs(layer, seed=step)
    y_nnx, state, _ = p.nnx(state, x, train=train)
    y_linen, variables = p.linen(variables, x, train=train)
    ys.append(y_nnx)
    states.append(state)
    np.testing.assert_allclose(y_nnx, y_linen, rtol=1e-6, atol=1e-6)
    assert_trees_close(as_linen_variables(state), variables, rtol=1e-6, atol=1e-7)
  p.assert_no_retrace()  # the second training step reused the first one's program

  # The compiled NNX steps against eager NNX (the one eager call), and nnx.jit on the module.
  eager = p.model()
  for step in (0, 1):
    y_eager = eager(inputs(layer, seed=step), **layer.call_kwargs())
    np.testing.assert_allclose(ys[step], y_eager, rtol=1e-5, atol=1e-6)
  assert_trees_close(states[1], nnx.state(eager), rtol=1e-5, atol=1e-6)
  model = p.model()
  np.testing.assert_allclose(p.nnx_jit_call(model, inputs(layer)), ys[0], rtol=1e-5, atol=1e-6)
  assert_trees_close(nnx.state(model), states[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_gradients_reach_every_parameter_and_the_input(layer):
  grad_params, grad_x = programs(layer).nnx(programs(layer).state, inputs(layer))[2]
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grad_params)):
    if jax.tree_util.keystr(path, simple=True, separator="/") in layer.no_output_gradient:
      np.testing.assert_array_equal(leaf, 0)  # and nothing reaches it, as designed
      continue
    leaf = np.asarray(leaf)
    assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), f"no gradient reaches {path}"
  grad_x = np.asarray(grad_x)
  assert np.all(np.isfinite(grad_x)) and np.any(grad_x != 0)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_train_and_eval_modes(layer):
  p = programs(layer)
  x = inputs(layer)
  if not layer.batch_stats:
    assert not jax.tree.leaves(nnx.filter_state(p.state, nnx.BatchStat))
    y_train, y_eval = p.nnx(p.state, x)[0], p.nnx(p.state, x, train=False)[0]
    if layer.stochastic:  # training samples noise, evaluation does not
      assert not np.allclose(y_train, y_eval)
    else:
      np.testing.assert_array_equal(y_train, y_eval)
    return
  _, trained, _ = p.nnx(p.state, x)
  for before, after in zip(jax.tree.leaves(batch_stats_of(p.state)),
                           jax.tree.leaves(batch_stats_of(trained))):
    assert not np.allclose(before, after), "a training call must update the running statistics"
  y_eval, evaluated, _ = p.nnx(trained, x, train=False)
  assert_trees_close(batch_stats_of(evaluated), batch_stats_of(trained), rtol=0, atol=0)
  # Evaluation normalizes with the running statistics: a sample's output ignores the rest of the
  # batch (here the second half is replaced by other samples: same shape, same program).
  half = x.shape[0] // 2
  mixed = inputs(layer, batch_from=half)
  np.testing.assert_allclose(p.nnx(trained, mixed, train=False)[0][:half], y_eval[:half],
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(p.nnx(trained, x)[0][:half], y_eval[:half], atol=1e-3)
  p.assert_no_retrace()


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_bfloat16_inputs_keep_float32_parameters_and_statistics(layer):
  p = programs(layer)
  x16 = inputs(layer, dtype=jnp.bfloat16)
  # The dtype override leaves the state's dtypes alone (asserted when the graphdefs are built).
  y, state, _ = p.nnx(p.state, x16, dtype="bfloat16")
  assert y.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(state):  # parameters and statistics
    assert leaf.dtype == jnp.float32
  y32, state32, _ = p.nnx(p.state, jnp.asarray(np.asarray(x16, np.float32)))
  np.testing.assert_allclose(np.asarray(y, np.float32), y32, rtol=5e-2, atol=5e-2)
  assert_trees_close(batch_stats_of(state), batch_stats_of(state32), rtol=1e-2, atol=1e-2)

  y_linen, variables = p.linen(as_linen_variables(p.state), x16, dtype="bfloat16")
  assert y_linen.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(variables.get("batch_stats", {})):
    assert leaf.dtype == jnp.float32
  p.assert_no_retrace()


@pytest.mark.parametrize("layer", STATEFUL, ids=ids(STATEFUL))
def test_batch_statistics_sync_across_vmap_axis_name(layer):
  p = programs(layer)
  x, shards = inputs(layer), inputs(layer, shards=2)
  y_full, full, _ = p.nnx(p.state, x)

  y_synced, synced = p.nnx_vmap(p.state, shards)
  np.testing.assert_allclose(np.reshape(y_synced, x.shape), y_full, rtol=1e-5, atol=1e-5)
  assert_trees_close(batch_stats_of(synced), batch_stats_of(full), rtol=1e-5, atol=1e-6)

  y_linen, after = p.linen_vmap(as_linen_variables(p.state), shards)
  np.testing.assert_allclose(np.reshape(y_linen, x.shape), y_full, rtol=1e-5, atol=1e-5)
  assert_trees_close(after["batch_stats"], batch_stats_of(full), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_wrong_input_rank_or_feature_count_raises(layer):
  p = programs(layer)
  wrong_rank = jnp.ones(layer.wrong_rank_shape)
  wrong_features = jnp.ones((*layer.input_shape[:-1], layer.input_shape[-1] + 1))
  model = p.model()
  module = layer.build_linen()
  variables = as_linen_variables(p.state)
  for bad in (wrong_rank, wrong_features):
    with pytest.raises(ValueError, match="expects"):
      model(bad)
    with pytest.raises(ValueError, match="expects"):
      p._linen_apply(module, True, variables, bad)
  init_kwargs = {"use_running_average": False} if layer.batch_stats else {}
  with pytest.raises(ValueError, match="expects"):
    jax.eval_shape(lambda: module.init(jax.random.key(0), wrong_rank, **init_kwargs))
  p.linen(variables, inputs(layer))  # the good input still works


def test_every_registered_layer_has_a_row():
  rows = {layer.slug for layer in LAYERS}
  built = {layer.nnx for layer in LAYERS} | {layer.linen for layer in LAYERS}
  for method in registry.all_methods("normalization") + registry.all_methods("layer"):
    assert method.slug in rows, f"{method.slug} has no row in LAYERS"
    for symbol in method.symbols:
      obj = registry.resolve(symbol)
      if isinstance(obj, type) and issubclass(obj, (nnx.Module, linen.Module)):
        assert obj in built, f"{symbol} ({method.slug}) is not built by any row of LAYERS"
