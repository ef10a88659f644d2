"""Layer-local learning: a model is a list of blocks, a rule gives each block its own objective.

With blocks f_1..f_K (parameters theta_k), a rule's input map `in_k`, optional per-block auxiliary
("head") parameters phi_k and per-block objectives L_k, one training step computes

  s_0 = prepare(batch)
  x_k = in_k(sg(s_{k-1}))          (sg = jax.lax.stop_gradient)
  h_k = f_k(theta_k, x_k),  s_k = h_k
  L   = sum_k L_k(h_k, phi_k)

and takes ONE `jax.grad` of L. Because every block input is stopped, dL/dtheta_k = dL_k/dtheta_k
and dL/dphi_k = dL_k/dphi_k exactly: no gradient crosses a block boundary. The whole step (forward,
local gradients, optimizer update, rule-state update) is a single jitted program.

A rule (`LocalRule`) supplies the pieces that differ between methods:

  * `prepare(ctx)`: the first block's input from the batch (Forward-Forward: positive and negative
    data with embedded labels);
  * `block_input(k, signal, ctx)`: block k's input from the previous block's (stopped) output and
    per-example side inputs (Forward-Forward: length normalization; a graph rule: the adjacency;
    NoProp: a freshly noised label embedding that ignores `signal` altogether);
  * `block_loss(k, output, head, ctx)`: block k's objective;
  * `init_head(k, key, output)`: auxiliary parameters trained by block k's objective only (an
    auxiliary classifier, as in Momentum Auxiliary Networks);
  * `init_state` / `update_state`: non-trained rule state (fixed random projections, EMA copies of
    parameters, running statistics). It is read by the objectives, never differentiated.

`ctx.outputs` holds every block's stopped output, so a rule may use top-down signals from later
blocks (ForwardGNN's top-down variant); such rules set `uses_all_outputs = True`.

Optax integration: one optimizer over the whole `LocalParams` pytree (gradients are already
block-local), or one optimizer per block through
`optax.partition(transforms, block_labels(params))`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = [
    "LocalModel",
    "LocalRule",
    "Block",
    "dense_block",
    "from_linen",
    "from_nnx",
    "block_losses",
    "local_loss",
    "local_train_step",
    "init_train_state",
    "block_labels",
    "fit_functions",
    "FitState",
    "LocalContext",
    "LocalParams",
    "LocalTrainState",
]

PyTree = Any


class Block(NamedTuple):
  """One block of a layer-local model, as a pair of pure functions.

  Attributes:
    init: `init(key, example_input) -> params`.
    apply: `apply(params, input) -> output`; input and output may be any pytrees.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn import local
    >>> block = local.Block(init=lambda key, x: {"w": jnp.ones((x.shape[-1], 2))},
    ...                     apply=lambda p, x: jax.nn.relu(x @ p["w"]))
    >>> params = block.init(jax.random.key(0), jnp.ones((4, 5)))
    >>> block.apply(params, jnp.ones((4, 5))).shape
    (4, 2)
    >>> model = local.LocalModel((block, local.dense_block(3)))
  """

  init: Callable[[jax.Array, PyTree], PyTree]
  apply: Callable[[PyTree, PyTree], PyTree]


def from_linen(module: linen.Module) -> Block:
  """A `Block` from a Linen module whose only variables are `params`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from jaxlearn import local
    >>> block = local.from_linen(nn.Dense(16))
    >>> params = block.init(jax.random.key(0), jnp.ones((4, 8)))
    >>> block.apply(params, jnp.ones((4, 8))).shape
    (4, 16)
  """

  def init(key, example_input):
    return module.init(key, example_input)["params"]

  def apply(params, inputs):
    return module.apply({"params": params}, inputs)

  return Block(init, apply)


def from_nnx(factory: Callable[[nnx.Rngs], nnx.Module]) -> Block:
  """A `Block` from an NNX module factory `factory(rngs) -> module`.

  Parameters are the module's `nnx.Param` state; modules with other state (batch statistics,
  dropout RNG streams) are rejected, because a block's forward pass must be a pure function of its
  parameters and input.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import local
    >>> block = local.from_nnx(lambda rngs: nnx.Linear(8, 16, rngs=rngs))
    >>> params = block.init(jax.random.key(0), jnp.ones((4, 8)))
    >>> block.apply(params, jnp.ones((4, 8))).shape
    (4, 16)
  """
  graphdef, _, rest = nnx.split(nnx.eval_shape(lambda: factory(nnx.Rngs(0))), nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(
        "from_nnx: factory must build a module whose only state is nnx.Param, got other state "
        f"{rest}"
    )

  def init(key, example_input):
    del example_input  # NNX modules are built with their shapes
    return nnx.split(factory(nnx.Rngs(key)), nnx.Param)[1]

  def apply(params, inputs):
    return nnx.merge(graphdef, params)(inputs)

  return Block(init, apply)


def dense_block(
    features: int,
    activation: Callable[[jax.Array], jax.Array] | None = linen.relu,
    *,
    kernel_init: Callable[..., jax.Array] = linen.initializers.lecun_normal(),
) -> Block:
  """`activation(x @ W + b)` on inputs of shape (batch, fan_in) (or `x @ W + b` if None).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn import local
    >>> block = local.dense_block(16)
    >>> params = block.init(jax.random.key(0), jnp.ones((4, 8)))
    >>> block.apply(params, jnp.ones((4, 8))).shape
    (4, 16)
  """
  dense = linen.Dense(features, kernel_init=kernel_init)
  block = from_linen(dense)
  if activation is None:
    return block
  return Block(block.init, lambda params, x: activation(block.apply(params, x)))


class LocalParams(NamedTuple):
  """The trainable parameters of a layer-local model.

  Attributes:
    blocks: one parameter pytree per block (the forward computation).
    heads: one auxiliary pytree per block, trained only by that block's objective (None if the
      rule has no head for the block).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn import local
    >>> model, rule = local.LocalModel.mlp([32, 32]), local.ForwardForward(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> params, rule_state = model.init(jax.random.key(0), rule, batch)
    >>> len(params.blocks), params.heads  # Forward-Forward has no heads
    (2, (None, None))
  """

  blocks: tuple[PyTree, ...]
  heads: tuple[PyTree, ...]


class LocalContext(NamedTuple):
  """What a rule sees besides a block's own output.

  Attributes:
    batch: the minibatch pytree (inputs, labels, per-example side inputs).
    state: the rule's non-trained state (None while `LocalModel.init` runs).
    key: randomness for this step (rules fold in the block index for per-block noise).
    outputs: every block's output, stopped (None in sequential steps and while computing
      the outputs themselves).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn import local
    >>> ctx = local.LocalContext(batch={"x": jnp.ones((2, 3))}, state=None, key=None)
    >>> ctx.outputs is None  # filled with every block's output where a rule needs them
    True
  """

  batch: PyTree
  state: PyTree
  key: jax.Array | None
  outputs: tuple[PyTree, ...] | None = None


class LocalRule:
  """Base class of layer-local learning rules; subclasses override `block_loss` and what differs.

  Every hook is traced inside one jitted step, so it must be a pure function of its arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn import local
    >>> class Energy(local.LocalRule):  # each block lowers its own mean squared activity
    ...   def block_loss(self, index, output, batch, context):
    ...     return jnp.mean(output ** 2)
    >>> rule = Energy()
  """

  #: True if `block_loss` reads `ctx.outputs` (other blocks' outputs, e.g. top-down signals).
  uses_all_outputs: bool = False

  def prepare(self, ctx: LocalContext) -> PyTree:
    """The signal fed to the first block: by default `ctx.batch['x']`."""
    return ctx.batch["x"]

  def block_input(self, index: int, signal: PyTree, ctx: LocalContext) -> PyTree:
    """Block `index`'s input from the previous block's stopped output (or `prepare`'s signal)."""
    del index, ctx
    return signal

  def block_loss(self, index: int, output: PyTree, head: PyTree, ctx: LocalContext) -> jax.Array:
    """Block `index`'s scalar objective from its own output and its head parameters."""
    raise NotImplementedError

  def init_head(self, index: int, key: jax.Array, output: PyTree) -> PyTree:
    """Auxiliary parameters for block `index` (None: no head)."""
    del index, key, output
    return None

  def init_state(self, key: jax.Array, outputs: tuple[PyTree, ...], batch: PyTree) -> PyTree:
    """The rule's non-trained state, from the blocks' example outputs."""
    del key, outputs, batch
    return ()

  def update_state(self, state: PyTree, params: LocalParams, ctx: LocalContext) -> PyTree:
    """The next rule state, from the parameters this step's objectives were computed with."""
    del params, ctx
    return state


@dataclasses.dataclass(frozen=True)
class LocalModel:
  """A sequence of blocks trained with a layer-local rule.

  Attributes:
    blocks: the blocks, first to last.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn import local
    >>> model = local.LocalModel.mlp([32, 16])  # two dense ReLU blocks
    >>> rule = local.ForwardForward(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> params, rule_state = model.init(jax.random.key(0), rule, batch)
    >>> [w["kernel"].shape for w in params.blocks]
    [(64, 32), (32, 16)]
  """

  blocks: tuple[Block, ...]

  def __post_init__(self):
    blocks = tuple(self.blocks)
    if not blocks or not all(isinstance(b, Block) for b in blocks):
      raise ValueError(f"blocks must be a non-empty sequence of Block, got {self.blocks!r}")
    object.__setattr__(self, "blocks", blocks)

  @classmethod
  def mlp(
      cls,
      widths: Sequence[int],
      activation: Callable[[jax.Array], jax.Array] | None = linen.relu,
      *,
      kernel_init: Callable[..., jax.Array] = linen.initializers.lecun_normal(),
  ) -> LocalModel:
    """One `dense_block` per entry of `widths`."""
    return cls(tuple(dense_block(w, activation, kernel_init=kernel_init) for w in widths))

  def init(self, key: jax.Array, rule: LocalRule, batch: PyTree) -> tuple[LocalParams, PyTree]:
    """Initializes every block (in order, on the previous block's output), head and rule state."""
    block_key, head_key, state_key, ctx_key = jax.random.split(key, 4)
    ctx = LocalContext(batch, None, ctx_key)
    signal = rule.prepare(ctx)
    blocks, heads, outputs = [], [], []
    for index, block in enumerate(self.blocks):
      inputs = rule.block_input(index, signal, ctx)
      params = block.init(jax.random.fold_in(block_key, index), inputs)
      signal = block.apply(params, inputs)
      blocks.append(params)
      heads.append(rule.init_head(index, jax.random.fold_in(head_key, index), signal))
      outputs.append(signal)
    state = rule.init_state(state_key, tuple(outputs), batch)
    return LocalParams(tuple(blocks), tuple(heads)), state

  def outputs(
      self,
      block_params: Sequence[PyTree],
      rule: LocalRule,
      ctx: LocalContext,
      *,
      signal: PyTree = None,
      detach: bool = True,
  ) -> tuple[PyTree, ...]:
    """Every block's output. Starts from `signal`, or `rule.prepare(ctx)` if it is None.

    With `detach` (the default) each block input is stopped, so an output depends on its own
    block's parameters only; `detach=False` is end-to-end backprop through the same blocks.
    """
    if len(block_params) != len(self.blocks):
      raise ValueError(
          f"block_params has {len(block_params)} entries for {len(self.blocks)} blocks"
      )
    signal = rule.prepare(ctx) if signal is None else signal
    outputs = []
    for index, (block, params) in enumerate(zip(self.blocks, block_params)):
      if detach:
        signal = jax.lax.stop_gradient(signal)
      signal = block.apply(params, rule.block_input(index, signal, ctx))
      outputs.append(signal)
    return tuple(outputs)


def block_losses(
    model: LocalModel,
    rule: LocalRule,
    params: LocalParams,
    rule_state: PyTree,
    batch: PyTree,
    key: jax.Array | None,
    *,
    detach: bool = True,
) -> tuple[jax.Array, tuple[PyTree, ...]]:
  """Every block's objective, shape (num_blocks,) in float32, and the blocks' outputs.

  `detach=False` lets gradients flow across block boundaries (the backprop reference).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model = local.LocalModel.mlp([32, 32])
    >>> rule = local.ForwardForward(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> state = local.init_train_state(model, rule, optax.sgd(0.1), jax.random.key(0), batch)
    >>> losses, outputs = local.block_losses(
    ...     model, rule, state.params, state.rule_state, batch, jax.random.key(1))
    >>> losses.shape  # one objective per block
    (2,)
  """
  ctx = LocalContext(batch, rule_state, key)
  outputs = model.outputs(params.blocks, rule, ctx, detach=detach)
  seen = tuple(jax.lax.stop_gradient(o) for o in outputs) if detach else outputs
  ctx = ctx._replace(outputs=seen)
  losses = [
      jnp.asarray(rule.block_loss(index, output, head, ctx), jnp.float32)
      for index, (output, head) in enumerate(zip(outputs, params.heads))
  ]
  return jnp.stack(losses), outputs


def local_loss(
    model: LocalModel,
    rule: LocalRule,
    params: LocalParams,
    rule_state: PyTree,
    batch: PyTree,
    key: jax.Array | None,
    *,
    detach: bool = True,
) -> tuple[jax.Array, tuple[jax.Array, tuple[PyTree, ...]]]:
  """The sum of the block objectives, and `(per-block losses, outputs)` as auxiliary data.

  Its gradient with respect to `params` is the layer-local update of every block at once.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model = local.LocalModel.mlp([32, 32])
    >>> rule = local.ForwardForward(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> state = local.init_train_state(model, rule, optax.sgd(0.1), jax.random.key(0), batch)
    >>> loss_fn = lambda p: local.local_loss(
    ...     model, rule, p, state.rule_state, batch, jax.random.key(1))[0]
    >>> grads = jax.jit(jax.grad(loss_fn))(state.params)  # no gradient crosses a block boundary
  """
  losses, outputs = block_losses(model, rule, params, rule_state, batch, key, detach=detach)
  return jnp.sum(losses), (losses, outputs)


def _sequential_grads(model, rule, params, rule_state, batch, key):
  """Block-by-block gradients: block k+1 runs only after block k's gradient is computed.

  The values equal those of `jax.grad(local_loss)`; the optimization barrier only fixes the
  order, so that no backend can keep several blocks' activations alive at once.
  """
  ctx = LocalContext(batch, rule_state, key)
  signal = rule.prepare(ctx)
  block_grads, head_grads, losses, outputs = [], [], [], []
  for index, block in enumerate(model.blocks):
    inputs = rule.block_input(index, jax.lax.stop_gradient(signal), ctx)

    def objective(block_params, head_params, block=block, index=index, inputs=inputs):
      output = block.apply(block_params, inputs)
      return jnp.asarray(rule.block_loss(index, output, head_params, ctx), jnp.float32), output

    (loss, output), grads = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
        params.blocks[index], params.heads[index]
    )
    signal, grads, loss = jax.lax.optimization_barrier((output, grads, loss))
    block_grads.append(grads[0])
    head_grads.append(grads[1])
    losses.append(loss)
    outputs.append(signal)
  grads = LocalParams(tuple(block_grads), tuple(head_grads))
  return grads, jnp.stack(losses), tuple(outputs)


class LocalTrainState(NamedTuple):
  """Everything a layer-local training run carries from step to step.

  Example:
    >>> from jaxlearn.local import LocalTrainState
    >>> LocalTrainState._fields  # what init_train_state returns and local_train_step updates
    ('params', 'opt_state', 'rule_state', 'step')
  """

  params: LocalParams
  opt_state: PyTree
  rule_state: PyTree
  step: jax.Array  # int32


def init_train_state(
    model: LocalModel,
    rule: LocalRule,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    batch: PyTree,
) -> LocalTrainState:
  """Initial parameters, optimizer state and rule state (`batch` gives the shapes).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model = local.LocalModel.mlp([32, 32])
    >>> rule = local.ForwardForward(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> state = local.init_train_state(model, rule, optax.adam(1e-3), jax.random.key(0), batch)
    >>> len(state.params.blocks)
    2
  """
  params, rule_state = model.init(key, rule, batch)
  return LocalTrainState(params, optimizer.init(params), rule_state, jnp.zeros([], jnp.int32))


def local_train_step(
    model: LocalModel,
    rule: LocalRule,
    optimizer: optax.GradientTransformation,
    *,
    sequential: bool = False,
    detach: bool = True,
    jit: bool = True,
) -> Callable[[LocalTrainState, PyTree, jax.Array], tuple[LocalTrainState, dict[str, jax.Array]]]:
  """`step(state, batch, key) -> (state, metrics)`: one jitted layer-local update of all blocks.

  Args:
    model: the blocks.
    rule: the layer-local rule.
    optimizer: one optax transformation over all of `LocalParams` (see `block_labels` for
      per-block optimizers). Extra arguments (`value=` the summed loss) are passed to it.
    sequential: compute each block's gradient before running the next block (same values; bounds
      the live activations to one block's whole-step worth on every backend). Not available to
      rules with `uses_all_outputs`.
    detach: False trains the same objectives with end-to-end backprop (a reference, not FF).
    jit: return the jitted step (the default) or the plain function (to lower or vmap it).

  Returns:
    The step. Metrics: 'loss' (sum over blocks), 'block_losses' (per block), 'grads_finite'
    (False if any gradient is NaN/Inf, so a diverging run cannot go unnoticed).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model = local.LocalModel.mlp([32, 32])
    >>> rule = local.ForwardForward(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> optimizer = optax.adam(1e-3)
    >>> state = local.init_train_state(model, rule, optimizer, jax.random.key(0), batch)
    >>> step = local.local_train_step(model, rule, optimizer)  # one jitted program
    >>> state, metrics = step(state, batch, jax.random.key(1))
  """
  if sequential and not detach:
    raise ValueError("sequential=True requires detach=True (it computes block-local gradients)")
  if sequential and rule.uses_all_outputs:
    raise ValueError(
        f"{type(rule).__name__} reads other blocks' outputs (uses_all_outputs), which a sequential "
        "step does not have; use sequential=False"
    )
  optimizer = optax.with_extra_args_support(optimizer)

  def step(state: LocalTrainState, batch: PyTree, key: jax.Array):
    if sequential:
      grads, losses, outputs = _sequential_grads(
          model, rule, state.params, state.rule_state, batch, key
      )
      total = jnp.sum(losses)
    else:
      (total, (losses, outputs)), grads = jax.value_and_grad(local_loss, argnums=2, has_aux=True)(
          model, rule, state.params, state.rule_state, batch, key, detach=detach
      )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=total)
    params = optax.apply_updates(state.params, updates)
    ctx = LocalContext(batch, state.rule_state, key, jax.lax.stop_gradient(outputs))
    rule_state = rule.update_state(state.rule_state, state.params, ctx)
    metrics = {
        "loss": total,
        "block_losses": losses,
        "grads_finite": jnp.isfinite(optax.tree.norm(grads)),
    }
    return LocalTrainState(params, opt_state, rule_state, optax.safe_increment(state.step)), metrics

  return jax.jit(step) if jit else step


def block_labels(params: LocalParams) -> LocalParams:
  """Labels 'block{k}' / 'head{k}' for every leaf, for `optax.partition` (one optimizer per block).

  Example: `optax.partition({'block0': optax.adam(1e-3), 'block1': optax.sgd(1e-2)},
  block_labels(params))` (heads need their own labels too if the rule has heads).
  """

  def label(prefix, trees):
    return tuple(jax.tree.map(lambda _: f"{prefix}{k}", tree) for k, tree in enumerate(trees))

  return LocalParams(label("block", params.blocks), label("head", params.heads))


class FitState(NamedTuple):
  """The `model_state` that `fit_functions` threads through `jaxlearn.train.fit`.

  Example:
    >>> from jaxlearn.local import FitState
    >>> FitState._fields  # fit's model_state for a layer-local model (see fit_functions)
    ('rule_state', 'key')
  """

  rule_state: PyTree
  key: jax.Array


def fit_functions(
    model: LocalModel,
    rule: LocalRule,
    example_batch: Mapping[str, Any],
    *,
    predict: Callable[[LocalParams, jax.Array], jax.Array] | None = None,
) -> tuple[Callable, Callable, Callable | None]:
  """`(loss_fn, init_params, eval_fn)` to train a layer-local model with `jaxlearn.train.fit`.

  Use with `fit(..., has_state=True)`: the model state carries the rule state and a PRNG key
  (split every step). Batches reach the rule as `{'x': x, 'y': y}`; `fit`'s gradient of `loss_fn`
  is the layer-local update, as in `local_train_step`.

  Args:
    model: the blocks.
    rule: the layer-local rule.
    example_batch: a `{'x': ..., 'y': ...}` batch that fixes the parameter shapes.
    predict: `predict(params, x) -> labels`; if given, `eval_fn` reports 'accuracy'.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model = local.LocalModel.mlp([32, 32])
    >>> rule = local.ForwardForward(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> loss_fn, init_params, eval_fn = local.fit_functions(model, rule, batch)
    >>> # then: jaxlearn.train.fit(loss_fn, init_params, make_optimizer, data, has_state=True, ...)
  """

  def init_params(key):
    init_key, step_key = jax.random.split(key)
    params, rule_state = model.init(init_key, rule, example_batch)
    return params, FitState(rule_state, step_key)

  def loss_fn(params, model_state: FitState, x, y):
    key, step_key = jax.random.split(model_state.key)
    batch = {"x": x, "y": y}
    total, (_, outputs) = local_loss(model, rule, params, model_state.rule_state, batch, step_key)
    ctx = LocalContext(batch, model_state.rule_state, step_key, jax.lax.stop_gradient(outputs))
    rule_state = rule.update_state(model_state.rule_state, jax.lax.stop_gradient(params), ctx)
    return total, FitState(rule_state, key)

  eval_fn = None
  if predict is not None:

    def eval_fn(params, model_state, x, y):
      del model_state
      return {"accuracy": jnp.mean(predict(params, x) == y)}

  return loss_fn, init_params, eval_fn
