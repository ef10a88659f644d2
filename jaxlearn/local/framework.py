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
`optax.partition(transforms, block_labels(params))`, or `per_block_optimizer(optimizer)`: an
independent copy of `optimizer` (own state, own step count) per block, per head and for the
shared group, which the schedules below need.

Extensions (each used by at least one rule of the family):

  * **Forward-only rules.** A rule with `forward_only = True` estimates its gradients itself:
    `estimate_grads(model, params, rule_state, batch, key) -> (grads, block_losses, outputs)`
    replaces `jax.grad` in `local_train_step`, which then takes no derivative at all (a
    likelihood-ratio estimator, a black-box physical layer). The tests prove it with a sentinel
    block whose differentiation raises.
  * **Rule state from the parameters.** `init_state(key, outputs, batch, params)` receives the
    initialized `LocalParams` (EMA copies of the next block, auxiliary networks built from its
    structure). Rules written against the older `init_state(key, outputs, batch)` still work.
  * **Shared parameters.** `LocalParams.shared` holds parameters that several blocks' objectives
    use (a class-embedding matrix), created by `init_shared(key, batch)` and visible to every
    hook as `ctx.shared`. Treatment: block k's objective may send gradient to block k, head k
    and the shared group, and to nothing else; the shared group's gradient is the sum of the
    block objectives' gradients with respect to it. A block's *input* is still stopped, so a
    shared parameter never carries gradient from one block to another block's parameters.
  * **Greedy schedules.** `step(state, batch, key, active)` trains only the blocks whose entry of
    the traced (num_blocks,) mask `active` is true: the other blocks' (and heads') parameters and
    optimizer states stay exactly as they are (requires `per_block_optimizer`), so one compiled
    step serves every phase. `greedy_train` trains one block at a time with per-block early
    stopping on a validation metric and restores each block's best parameters (ForwardGNN's
    layer-wise schedule).
  * **Inner steps.** `local_train_step(..., inner_steps=n)` takes n updates per batch. Joint: the
    whole step n times. With `sequential=True`: block k takes its n updates, then its updated
    output feeds block k+1 (the physical Forward-Forward schedule; requires
    `per_block_optimizer`).
  * **Any batch pytree.** A batch is any pytree that the rule's hooks read (a graph's features,
    adjacency, masks and labels go through the same step); only `fit_functions` assumes
    `{'x', 'y'}`.
"""

from __future__ import annotations

import dataclasses
import inspect
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
    "per_block_optimizer",
    "PerBlockState",
    "greedy_train",
    "GreedyLog",
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
    shared: parameters used by several blocks' objectives (`LocalRule.init_shared`; None if the
      rule has none). Each block objective may send gradient here, and the shared gradient is
      the sum over blocks.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn import local
    >>> model, rule = local.LocalModel.mlp([32, 32]), local.ForwardForward(num_classes=10)
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> params, rule_state = model.init(jax.random.key(0), rule, batch)
    >>> len(params.blocks), params.heads, params.shared  # FF has no heads, nothing shared
    (2, (None, None), None)
  """

  blocks: tuple[PyTree, ...]
  heads: tuple[PyTree, ...]
  shared: PyTree = None


class LocalContext(NamedTuple):
  """What a rule sees besides a block's own output.

  Attributes:
    batch: the minibatch pytree (inputs, labels, per-example side inputs).
    state: the rule's non-trained state (None while `LocalModel.init` runs).
    key: randomness for this step (rules fold in the block index for per-block noise).
    outputs: every block's output, stopped (None in sequential steps and while computing
      the outputs themselves).
    shared: `LocalParams.shared` (differentiated: an objective that reads it trains it).

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
  shared: PyTree = None


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
  #: True if the rule computes its own gradients (`estimate_grads`): no derivative is taken.
  forward_only: bool = False

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

  def init_shared(self, key: jax.Array, batch: PyTree) -> PyTree:
    """Parameters shared by several blocks' objectives (`LocalParams.shared`; None: none)."""
    del key, batch
    return None

  def init_state(
      self,
      key: jax.Array,
      outputs: tuple[PyTree, ...],
      batch: PyTree,
      params: LocalParams | None = None,
  ) -> PyTree:
    """The rule's non-trained state, from the blocks' example outputs and initial parameters.

    Overrides may leave out `params` (the older signature `init_state(key, outputs, batch)`).
    """
    del key, outputs, batch, params
    return ()

  def estimate_grads(
      self,
      model: LocalModel,
      params: LocalParams,
      rule_state: PyTree,
      batch: PyTree,
      key: jax.Array | None,
  ) -> tuple[LocalParams, jax.Array, tuple[PyTree, ...] | None]:
    """Forward-only rules (`forward_only = True`): `(grads, block_losses, outputs)`.

    `grads` has the structure of `params`; `block_losses` shape (num_blocks,) float32;
    `outputs` every block's output (for `update_state`) or None. `local_train_step` calls it in
    place of `jax.grad`, so no derivative of anything is taken.
    """
    raise NotImplementedError(
        f"{type(self).__name__} sets forward_only but does not implement estimate_grads"
    )

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
    """Initializes every block (in order, on the previous block's output), head, the shared
    parameters and the rule state (`ctx.state` is None meanwhile)."""
    block_key, head_key, state_key, ctx_key = jax.random.split(key, 4)
    shared = rule.init_shared(jax.random.fold_in(ctx_key, 1), batch)
    ctx = LocalContext(batch, None, ctx_key, shared=shared)
    signal = rule.prepare(ctx)
    blocks, heads, outputs = [], [], []
    for index, block in enumerate(self.blocks):
      inputs = rule.block_input(index, signal, ctx)
      params = block.init(jax.random.fold_in(block_key, index), inputs)
      signal = block.apply(params, inputs)
      blocks.append(params)
      heads.append(rule.init_head(index, jax.random.fold_in(head_key, index), signal))
      outputs.append(signal)
    params = LocalParams(tuple(blocks), tuple(heads), shared)
    if _accepts_params(rule.init_state):
      state = rule.init_state(state_key, tuple(outputs), batch, params)
    else:  # an override with the older signature
      state = rule.init_state(state_key, tuple(outputs), batch)
    return params, state

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


def _accepts_params(fn: Callable) -> bool:
  try:
    parameters = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return True
  return "params" in parameters or any(
      p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters.values()
  ) or len(parameters) >= 4


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
  ctx = LocalContext(batch, rule_state, key, shared=params.shared)
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
  ctx = LocalContext(batch, rule_state, key, shared=params.shared)
  signal = rule.prepare(ctx)
  block_grads, head_grads, losses, outputs = [], [], [], []
  shared_grads = None
  for index, block in enumerate(model.blocks):
    stopped = jax.lax.stop_gradient(signal)

    def objective(block_params, head_params, shared, block=block, index=index, stopped=stopped):
      local_ctx = ctx._replace(shared=shared)
      output = block.apply(block_params, rule.block_input(index, stopped, local_ctx))
      loss = rule.block_loss(index, output, head_params, local_ctx)
      return jnp.asarray(loss, jnp.float32), output

    (loss, output), grads = jax.value_and_grad(objective, argnums=(0, 1, 2), has_aux=True)(
        params.blocks[index], params.heads[index], params.shared
    )
    signal, grads, loss = jax.lax.optimization_barrier((output, grads, loss))
    block_grads.append(grads[0])
    head_grads.append(grads[1])
    shared_grads = grads[2] if shared_grads is None else jax.tree.map(
        jnp.add, shared_grads, grads[2])
    losses.append(loss)
    outputs.append(signal)
  grads = LocalParams(tuple(block_grads), tuple(head_grads), shared_grads)
  return grads, jnp.stack(losses), tuple(outputs)


class PerBlockState(NamedTuple):
  """The state of `per_block_optimizer`: one optimizer state per block, per head, and shared.

  Example:
    >>> from jaxlearn.local import PerBlockState
    >>> PerBlockState._fields
    ('blocks', 'heads', 'shared')
  """

  blocks: tuple[PyTree, ...]
  heads: tuple[PyTree, ...]
  shared: PyTree


def per_block_optimizer(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """An independent copy of `optimizer` for every block, every head and the shared group.

  The same updates as `optimizer` over `LocalParams` for element-wise optimizers, but each
  group's state (step count included) is its own, so `local_train_step`'s `active` mask and
  sequential `inner_steps` can freeze a group's parameters *and* optimizer state exactly (a
  block that starts training in a later greedy phase starts with fresh Adam moments and a step
  count of 0, as a per-layer PyTorch optimizer does). Extra arguments (`value=`) reach every copy.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model, rule = local.LocalModel.mlp([8, 8]), local.ForwardForward(num_classes=3)
    >>> batch = {"x": jnp.ones((4, 6)), "y": jnp.arange(4) % 3}
    >>> optimizer = local.per_block_optimizer(optax.adam(1e-2))
    >>> state = local.init_train_state(model, rule, optimizer, jax.random.key(0), batch)
    >>> step = local.local_train_step(model, rule, optimizer)
    >>> new, _ = step(state, batch, jax.random.key(1), jnp.array([False, True]))  # block 1 only
    >>> bool(jnp.all(new.params.blocks[0]["kernel"] == state.params.blocks[0]["kernel"]))
    True
  """
  inner = optax.with_extra_args_support(optimizer)

  def init(params: LocalParams) -> PerBlockState:
    return PerBlockState(
        tuple(inner.init(p) for p in params.blocks),
        tuple(inner.init(p) for p in params.heads),
        inner.init(params.shared),
    )

  def update(updates: LocalParams, state: PerBlockState, params=None, **extra_args):
    if params is None:
      params = LocalParams((None,) * len(updates.blocks), (None,) * len(updates.heads), None)
    def group(u, s, p):  # groups without parameters (no head, nothing shared) are left alone
      return inner.update(u, s, p, **extra_args) if jax.tree.leaves(u) else (u, s)

    blocks = [group(u, s, p) for u, s, p in zip(updates.blocks, state.blocks, params.blocks)]
    heads = [group(u, s, p) for u, s, p in zip(updates.heads, state.heads, params.heads)]
    shared = group(updates.shared, state.shared, params.shared)
    new_updates = LocalParams(tuple(b[0] for b in blocks), tuple(h[0] for h in heads), shared[0])
    new_state = PerBlockState(tuple(b[1] for b in blocks), tuple(h[1] for h in heads), shared[1])
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init, update)


def _keep(flag, new, old):
  return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def _apply_update(optimizer, grads, opt_state, params, value, active):
  """One optimizer update; with `active`, inactive blocks (and heads) keep parameters and state."""
  updates, new_opt_state = optimizer.update(grads, opt_state, params, value=value)
  new_params = optax.apply_updates(params, updates)
  if active is None:
    return new_params, new_opt_state
  if not isinstance(opt_state, PerBlockState):
    raise ValueError(
        "an `active` mask (greedy schedules) and sequential inner_steps > 1 need an optimizer "
        "built with jaxlearn.local.per_block_optimizer(optimizer), whose state is a "
        f"PerBlockState; got optimizer state {type(opt_state).__name__}"
    )
  flags = [active[k] for k in range(len(params.blocks))]
  any_active = jnp.any(active)
  new_params = LocalParams(
      tuple(_keep(f, n, o) for f, n, o in zip(flags, new_params.blocks, params.blocks)),
      tuple(_keep(f, n, o) for f, n, o in zip(flags, new_params.heads, params.heads)),
      _keep(any_active, new_params.shared, params.shared),
  )
  new_opt_state = PerBlockState(
      tuple(_keep(f, n, o) for f, n, o in zip(flags, new_opt_state.blocks, opt_state.blocks)),
      tuple(_keep(f, n, o) for f, n, o in zip(flags, new_opt_state.heads, opt_state.heads)),
      _keep(any_active, new_opt_state.shared, opt_state.shared),
  )
  return new_params, new_opt_state


def _finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.isfinite(optax.tree.norm(tree))


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
    inner_steps: int = 1,
    jit: bool = True,
) -> Callable[..., tuple[LocalTrainState, dict[str, jax.Array]]]:
  """`step(state, batch, key, active=None) -> (state, metrics)`: one jitted layer-local update.

  Args:
    model: the blocks.
    rule: the layer-local rule. A `forward_only` rule's `estimate_grads` replaces `jax.grad`
      (no derivative is taken anywhere in the step).
    optimizer: one optax transformation over all of `LocalParams` (see `block_labels` for
      per-block optimizers, and `per_block_optimizer`, which `active` and sequential
      `inner_steps` need). Extra arguments (`value=` the summed loss) are passed to it.
    sequential: compute each block's gradient before running the next block (same values; bounds
      the live activations to one block's whole-step worth on every backend). Not available to
      rules with `uses_all_outputs` or `forward_only`.
    detach: False trains the same objectives with end-to-end backprop (a reference, not FF).
    inner_steps: updates per batch (static, >= 1; default 1). Joint step: the whole update
      (including `update_state`) `inner_steps` times on the same batch and key. Sequential step:
      block k takes `inner_steps` updates, then its output with the updated parameters feeds
      block k+1, and `update_state` runs once at the end (with the parameters the step started
      from and those outputs). Metrics report the first inner step's losses.
    jit: return the jitted step (the default) or the plain function (to lower or vmap it).

  Returns:
    The step. `active` (optional, traced): a boolean (num_blocks,) mask; only blocks with a true
    entry (and their heads) are updated, the others keep their parameters and optimizer state
    exactly; the shared group is updated if any block is active. Metrics: 'loss' (sum over
    blocks), 'block_losses' (per block), 'grads_finite' (False if any gradient is NaN/Inf, so a
    diverging run cannot go unnoticed).

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
  if rule.forward_only and (sequential or not detach):
    raise ValueError(
        f"{type(rule).__name__} is forward_only (it estimates its own gradients): sequential and "
        "detach must keep their defaults (False, True)"
    )
  if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
    raise ValueError(f"inner_steps must be an integer >= 1, got {inner_steps!r}")
  optimizer = optax.with_extra_args_support(optimizer)
  num_blocks = len(model.blocks)

  def gradients(params, rule_state, batch, key):
    if rule.forward_only:
      grads, losses, outputs = rule.estimate_grads(model, params, rule_state, batch, key)
      return grads, jnp.asarray(losses, jnp.float32), outputs
    if sequential:
      return _sequential_grads(model, rule, params, rule_state, batch, key)
    (_, (losses, outputs)), grads = jax.value_and_grad(local_loss, argnums=2, has_aux=True)(
        model, rule, params, rule_state, batch, key, detach=detach
    )
    return grads, losses, outputs

  def update_state(rule_state, params, batch, key, outputs):
    stopped = None if outputs is None else jax.lax.stop_gradient(outputs)
    ctx = LocalContext(batch, rule_state, key, stopped, shared=params.shared)
    return rule.update_state(rule_state, params, ctx)

  def joint_update(carry, batch, key, active):
    params, opt_state, rule_state = carry
    grads, losses, outputs = gradients(params, rule_state, batch, key)
    new_params, opt_state = _apply_update(
        optimizer, grads, opt_state, params, jnp.sum(losses), active)
    rule_state = update_state(rule_state, params, batch, key, outputs)
    return (new_params, opt_state, rule_state), (losses, _finite(grads))

  def sequential_inner(params, opt_state, rule_state, batch, key, active):
    """Block k takes `inner_steps` updates, then feeds its updated output to block k+1."""
    start = params
    ctx = LocalContext(batch, rule_state, key, shared=params.shared)
    signal = rule.prepare(ctx)
    losses, outputs, finite = [], [], jnp.asarray(True)
    has_shared = bool(jax.tree.leaves(params.shared))
    for index, block in enumerate(model.blocks):
      stopped = jax.lax.stop_gradient(signal)
      own = jnp.arange(num_blocks) == index
      block_active = own if active is None else own & active
      # Without shared parameters the block's input is the same at every inner step: computed
      # once (a black-box physical map runs once per batch, not once per inner step).
      fixed_inputs = None if has_shared else rule.block_input(index, stopped, ctx)

      def objective(block_params, head_params, shared, block=block, index=index,
                    stopped=stopped, fixed_inputs=fixed_inputs):
        local_ctx = ctx._replace(shared=shared)
        inputs = (rule.block_input(index, stopped, local_ctx) if fixed_inputs is None
                  else fixed_inputs)
        output = block.apply(block_params, inputs)
        return jnp.asarray(rule.block_loss(index, output, head_params, local_ctx), jnp.float32)

      def inner(carry, _, index=index, objective=objective, block_active=block_active):
        params, opt_state = carry
        loss, (g_block, g_head, g_shared) = jax.value_and_grad(objective, argnums=(0, 1, 2))(
            params.blocks[index], params.heads[index], params.shared)
        zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
        grads = LocalParams(
            tuple(g_block if j == index else zeros(b) for j, b in enumerate(params.blocks)),
            tuple(g_head if j == index else zeros(h) for j, h in enumerate(params.heads)),
            g_shared,
        )
        params, opt_state = _apply_update(
            optimizer, grads, opt_state, params, loss, block_active)
        return (params, opt_state), (loss, _finite((g_block, g_head, g_shared)))

      (params, opt_state), (block_loss, block_finite) = jax.lax.scan(
          inner, (params, opt_state), None, length=inner_steps)
      losses.append(block_loss[0])
      finite = finite & jnp.all(block_finite)
      inputs = (rule.block_input(index, stopped, ctx._replace(shared=params.shared))
                if fixed_inputs is None else fixed_inputs)
      signal = jax.lax.optimization_barrier(block.apply(params.blocks[index], inputs))
      outputs.append(signal)
    rule_state = update_state(rule_state, start, batch, key, tuple(outputs))
    return params, opt_state, rule_state, jnp.stack(losses), finite

  def step(state: LocalTrainState, batch: PyTree, key: jax.Array, active=None):
    if active is not None:
      active = jnp.asarray(active)
      if active.shape != (num_blocks,):
        raise ValueError(
            f"active must be a boolean mask of shape ({num_blocks},), got shape {active.shape}")
      active = active.astype(bool)
    if sequential and inner_steps > 1:
      params, opt_state, rule_state, losses, finite = sequential_inner(
          state.params, state.opt_state, state.rule_state, batch, key, active)
    else:
      carry = (state.params, state.opt_state, state.rule_state)
      carry, (losses, finite) = joint_update(carry, batch, key, active)
      if inner_steps > 1:
        carry, (_, more_finite) = jax.lax.scan(
            lambda c, _: joint_update(c, batch, key, active), carry, None,
            length=inner_steps - 1)
        finite = finite & jnp.all(more_finite)
      params, opt_state, rule_state = carry
    metrics = {"loss": jnp.sum(losses), "block_losses": losses, "grads_finite": finite}
    return LocalTrainState(params, opt_state, rule_state, optax.safe_increment(state.step)), metrics

  return jax.jit(step) if jit else step


class GreedyLog(NamedTuple):
  """What `greedy_train` did, per trained block (rows in the order the blocks were trained).

  Attributes:
    metrics: (blocks, rounds) validation metric after each evaluation round (NaN once stopped).
    best: (blocks,) the best metric, whose parameters were restored.
    best_round: (blocks,) the round of the restored parameters (-1: none was better than -inf).
    rounds: (blocks,) rounds trained before early stopping (or all of them).

  Example:
    >>> from jaxlearn.local import GreedyLog
    >>> GreedyLog._fields
    ('metrics', 'best', 'best_round', 'rounds')
  """

  metrics: jax.Array
  best: jax.Array
  best_round: jax.Array
  rounds: jax.Array


def greedy_train(
    step: Callable[..., tuple[LocalTrainState, dict[str, jax.Array]]],
    state: LocalTrainState,
    batch_fn: Callable[[jax.Array, jax.Array], PyTree],
    metric_fn: Callable[[LocalParams, PyTree, jax.Array], jax.Array],
    key: jax.Array,
    *,
    num_blocks: int,
    max_steps: int,
    eval_every: int = 1,
    patience: int | None = None,
    blocks: Sequence[int | Sequence[int]] | None = None,
) -> tuple[LocalTrainState, GreedyLog]:
  r"""Greedy block-wise training: one block at a time, early stopping, best parameters restored.

  For each block k (in `blocks` order, default 0..num_blocks-1): up to `max_steps` steps of
  `step(state, batch_fn(key_i, i), key_i', active=one_hot(k))` (only block k and its head move),
  evaluating `metric_fn(params, rule_state, k)` (higher is better) every `eval_every` steps. An
  entry of `blocks` may also be a group of blocks trained together in one phase (e.g.
  `blocks=[range(K)]`: all blocks jointly, with early stopping); `metric_fn` then receives the
  group's highest block index. As in
  ForwardGNN's official `EarlyStopping`: the first evaluation and every strictly better one save
  the parameters; after `patience` evaluations without improvement the block stops (None: never);
  at the end of the phase the saved parameters are restored, and block k+1 trains on top of them.

  Each phase is one jitted program (the block index is traced: one compilation for all phases);
  the remaining rounds of a stopped block are skipped with `lax.cond`.

  Args:
    step: a step of `local_train_step` built with `per_block_optimizer` (it takes `active`).
    state: the starting state.
    batch_fn: `batch_fn(key, step_index) -> batch` (traced): e.g. a fixed full-graph batch, or a
      random minibatch drawn with `key`.
    metric_fn: `metric_fn(params, rule_state, block) -> scalar`, higher is better (traced).
    key: randomness for the batches and steps.
    num_blocks: the model's number of blocks.
    max_steps: steps per block at most; a multiple of `eval_every`.
    eval_every: steps between evaluations.
    patience: evaluations without improvement before a block stops (None: train all steps).
    blocks: which blocks (or groups of blocks) to train, in order (default: all, first to last,
      one per phase).

  Returns:
    `(state, GreedyLog)`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> model, rule = local.LocalModel.mlp([8, 8]), local.ForwardForward(num_classes=3)
    >>> batch = {"x": jnp.ones((4, 6)), "y": jnp.arange(4) % 3}
    >>> optimizer = local.per_block_optimizer(optax.adam(1e-2))
    >>> state = local.init_train_state(model, rule, optimizer, jax.random.key(0), batch)
    >>> step = local.local_train_step(model, rule, optimizer, jit=False)
    >>> metric = lambda params, rule_state, k: -jnp.sum(params.blocks[0]["bias"] ** 2)
    >>> state, log = local.greedy_train(
    ...     step, state, lambda key, i: batch, metric, jax.random.key(1),
    ...     num_blocks=2, max_steps=4, eval_every=2, patience=1)
    >>> log.metrics.shape  # (blocks, evaluation rounds)
    (2, 2)
  """
  for name, value in (("num_blocks", num_blocks), ("max_steps", max_steps),
                      ("eval_every", eval_every)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
  if max_steps % eval_every:
    raise ValueError(
        f"max_steps ({max_steps}) must be a multiple of eval_every ({eval_every})")
  if patience is not None and (
      isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
    raise ValueError(f"patience must be an integer >= 1 or None, got {patience!r}")
  order = tuple(range(num_blocks)) if blocks is None else tuple(blocks)
  groups = [tuple(int(b) for b in (g if isinstance(g, (Sequence, range)) else (g,)))
            for g in order]
  if not groups or any(not g or not all(0 <= b < num_blocks for b in g) for g in groups):
    raise ValueError(f"blocks must name blocks in [0, {num_blocks - 1}], got {blocks!r}")
  rounds = max_steps // eval_every
  limit = rounds + 1 if patience is None else patience

  def phase(state, active, key):
    block = jnp.max(jnp.where(active, jnp.arange(num_blocks), -1))

    def train_round(carry, round_index):
      state, best_params, best, best_round, bad, stopped = carry

      def train(state):
        def one(state, i):
          step_index = round_index * eval_every + i
          batch_key, step_key = jax.random.split(jax.random.fold_in(key, step_index))
          state, _ = step(state, batch_fn(batch_key, step_index), step_key, active)
          return state, None

        return jax.lax.scan(one, state, jnp.arange(eval_every))[0]

      state = jax.lax.cond(stopped, lambda s: s, train, state)
      metric = jnp.asarray(metric_fn(state.params, state.rule_state, block), jnp.float32)
      improved = jnp.logical_not(stopped) & (metric > best)
      best_params = _keep(improved, state.params, best_params)
      best = jnp.where(improved, metric, best)
      best_round = jnp.where(improved, round_index, best_round)
      bad = jnp.where(stopped | improved, jnp.where(improved, 0, bad), bad + 1)
      logged = jnp.where(stopped, jnp.nan, metric)
      trained = jnp.logical_not(stopped)
      stopped = stopped | (bad >= limit)
      return (state, best_params, best, best_round, bad, stopped), (logged, trained)

    init = (state, state.params, jnp.asarray(-jnp.inf, jnp.float32), jnp.asarray(-1),
            jnp.asarray(0), jnp.asarray(False))
    (state, best_params, best, best_round, _, _), (metrics, trained) = jax.lax.scan(
        train_round, init, jnp.arange(rounds))
    restore = best_round >= 0
    state = state._replace(params=_keep(restore, best_params, state.params))
    return state, (metrics, best, best_round, jnp.sum(trained))

  phase = jax.jit(phase)
  logs = []
  for index, group in enumerate(groups):
    active = jnp.isin(jnp.arange(num_blocks), jnp.asarray(group))
    state, log = phase(state, active, jax.random.fold_in(key, index))
    logs.append(log)
  stack = lambda i: jnp.stack([log[i] for log in logs])
  return state, GreedyLog(stack(0), stack(1), stack(2), stack(3))


def block_labels(params: LocalParams) -> LocalParams:
  """Labels 'block{k}' / 'head{k}' / 'shared' for every leaf, for `optax.partition`.

  Example: `optax.partition({'block0': optax.adam(1e-3), 'block1': optax.sgd(1e-2)},
  block_labels(params))` (heads need their own labels too if the rule has heads).
  """

  def label(prefix, trees):
    return tuple(jax.tree.map(lambda _: f"{prefix}{k}", tree) for k, tree in enumerate(trees))

  shared = jax.tree.map(lambda _: "shared", params.shared)
  return LocalParams(label("block", params.blocks), label("head", params.heads), shared)


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

  if rule.forward_only:
    raise ValueError(
        f"{type(rule).__name__} is forward_only: fit differentiates its loss; train it with "
        "local_train_step instead"
    )

  def init_params(key):
    init_key, step_key = jax.random.split(key)
    params, rule_state = model.init(init_key, rule, example_batch)
    return params, FitState(rule_state, step_key)

  def loss_fn(params, model_state: FitState, x, y):
    key, step_key = jax.random.split(model_state.key)
    batch = {"x": x, "y": y}
    total, (_, outputs) = local_loss(model, rule, params, model_state.rule_state, batch, step_key)
    ctx = LocalContext(batch, model_state.rule_state, step_key, jax.lax.stop_gradient(outputs),
                       shared=jax.lax.stop_gradient(params.shared))
    rule_state = rule.update_state(model_state.rule_state, jax.lax.stop_gradient(params), ctx)
    return total, FitState(rule_state, key)

  eval_fn = None
  if predict is not None:

    def eval_fn(params, model_state, x, y):
      del model_state
      return {"accuracy": jnp.mean(predict(params, x) == y)}

  return loss_fn, init_params, eval_fn
