"""The layer-local framework: no gradient crosses a block boundary; a step is one jitted program.

References: the backprop variant of the same model (`detach=False`), where gradients do cross
boundaries; per-block gradients taken one block at a time; NumPy transcriptions of the test rules;
hand-written per-block optimizer loops for the schedules (active masks, inner steps, greedy
phases); sentinels whose differentiation raises for forward-only rules.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlearn import local, registry
from tests.local._checks import (
    Differentiated,
    assert_no_gradient_crosses_blocks,
    black_box,
    per_block_jacobian,
    sentinel_block,
)
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_CLASSES = 3
WIDTHS = (5, 4, 3)


class LocalCrossEntropy(local.LocalRule):
  """Greedy local supervision: every block has a linear head trained with cross-entropy."""

  def init_head(self, index, key, output):
    return {"w": 0.5 * jax.random.normal(key, (output.shape[-1], NUM_CLASSES)),
            "b": jnp.zeros(NUM_CLASSES)}

  def block_loss(self, index, output, head, ctx):
    logits = output @ head["w"] + head["b"]
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, ctx.batch["y"]).mean()


class TopDown(LocalCrossEntropy):
  """Block k's head also reads block k+1's output (stopped), as ForwardGNN's top-down variant."""

  uses_all_outputs = True

  def block_loss(self, index, output, head, ctx):
    loss = super().block_loss(index, output, head, ctx)
    if index + 1 < len(ctx.outputs):
      loss = loss + jnp.mean(jnp.sum(ctx.outputs[index + 1], -1) * jnp.sum(output, -1))
    return loss


@dataclasses.dataclass(frozen=True)
class RunningMean(local.LocalRule):
  """Stateful rule: pulls each block's mean activity towards a running mean of itself."""

  momentum: float = 0.9

  def init_state(self, key, outputs, batch):
    return tuple(jnp.zeros(o.shape[-1]) for o in outputs)

  def block_loss(self, index, output, head, ctx):
    return jnp.sum((output.mean(0) - ctx.state[index] - 1.0) ** 2)

  def update_state(self, state, params, ctx):
    return tuple(self.momentum * m + (1 - self.momentum) * o.mean(0)
                 for m, o in zip(state, ctx.outputs))


def make_model():
  # tanh keeps every unit active, so every cross-block derivative is generically nonzero.
  return local.LocalModel.mlp(WIDTHS, jnp.tanh)


def make_batch(seed=0, batch_size=8, features=6):
  rng = np.random.default_rng(seed)
  return {
      "x": jnp.asarray(rng.normal(size=(batch_size, features)), jnp.float32),
      "y": jnp.asarray(rng.integers(0, NUM_CLASSES, size=batch_size), jnp.int32),
  }


def init(rule, seed=0):
  model = make_model()
  params, state = model.init(jax.random.PRNGKey(seed), rule, make_batch())
  return model, params, state


def max_abs(tree, k):
  return max(float(jnp.max(jnp.abs(leaf[k]))) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("rule", [LocalCrossEntropy(), TopDown()], ids=["local_ce", "top_down"])
def test_block_objective_has_exactly_zero_gradient_for_other_blocks(rule):
  model, params, state = init(rule)
  jac = assert_no_gradient_crosses_blocks(model, rule, params, state, make_batch(1))
  for k in range(len(WIDTHS)):
    assert max_abs((jac.blocks[k], jac.heads[k]), k) > 1e-4


def test_backprop_variant_does_send_gradients_upstream():
  rule = LocalCrossEntropy()
  model, params, state = init(rule)
  jac = per_block_jacobian(model, rule, params, state, make_batch(1), detach=False)
  for k in range(len(WIDTHS)):
    for j in range(k):
      assert max_abs(jac.blocks[j], k) > 1e-4, (k, j)
    for j in range(len(WIDTHS)):
      if j != k:  # heads are private to their block in both variants
        assert max_abs(jac.heads[j], k) == 0.0


def test_downstream_parameters_do_not_change_an_upstream_gradient():
  rule = LocalCrossEntropy()
  model, params, state = init(rule)
  batch = make_batch(2)
  perturbed_blocks = (params.blocks[0],) + tuple(
      jax.tree.map(lambda p: p + 0.3, b) for b in params.blocks[1:]
  )
  perturbed = params._replace(blocks=perturbed_blocks)

  def grad_block0(p, detach):
    loss = lambda q: local.local_loss(model, rule, q, state, batch, None, detach=detach)[0]
    return jax.jit(jax.grad(loss))(p).blocks[0]

  for a, b in zip(jax.tree.leaves(grad_block0(params, True)),
                  jax.tree.leaves(grad_block0(perturbed, True))):
    np.testing.assert_array_equal(a, b)
  backprop = [jnp.max(jnp.abs(a - b)) for a, b in zip(
      jax.tree.leaves(grad_block0(params, False)), jax.tree.leaves(grad_block0(perturbed, False)))]
  assert max(backprop) > 1e-4


def test_gradient_of_the_sum_is_each_block_gradient_of_its_own_objective():
  rule = LocalCrossEntropy()
  model, params, state = init(rule)
  batch = make_batch(3)
  loss = lambda p: local.local_loss(model, rule, p, state, batch, None)[0]
  total = jax.jit(jax.grad(loss))(params)
  jac = per_block_jacobian(model, rule, params, state, batch, detach=True)
  for k in range(len(WIDTHS)):
    for got, want in zip(jax.tree.leaves((total.blocks[k], total.heads[k])),
                         jax.tree.leaves((jac.blocks[k], jac.heads[k]))):
      np.testing.assert_allclose(got, want[k], rtol=1e-6, atol=1e-7)


def test_sequential_step_gives_the_same_update_as_the_joint_step():
  rule = LocalCrossEntropy()
  model = make_model()
  optimizer = optax.adam(1e-2)
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), make_batch())
  key = jax.random.PRNGKey(5)
  joint, joint_metrics = local.local_train_step(model, rule, optimizer)(state, make_batch(4), key)
  seq, seq_metrics = local.local_train_step(model, rule, optimizer, sequential=True)(
      state, make_batch(4), key)
  np.testing.assert_allclose(seq_metrics["block_losses"], joint_metrics["block_losses"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(seq.params), jax.tree.leaves(joint.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(joint.params),
                                                    jax.tree.leaves(state.params))]
  assert all(changed)


def test_step_is_one_jitted_program_that_never_recompiles():
  traces = []

  class Counting(LocalCrossEntropy):
    def block_loss(self, index, output, head, ctx):
      traces.append(index)  # runs only while tracing
      return super().block_loss(index, output, head, ctx)

  rule = Counting()
  model = make_model()
  optimizer = optax.sgd(0.1)
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), make_batch())
  step = local.local_train_step(model, rule, optimizer)
  assert hasattr(step, "lower")  # a jax.jit-compiled function
  traces.clear()
  for seed in range(4):
    state, metrics = step(state, make_batch(seed), jax.random.PRNGKey(seed))
  assert traces == list(range(len(WIDTHS)))  # traced once: one program for all blocks
  assert int(state.step) == 4
  assert metrics["block_losses"].shape == (len(WIDTHS),)
  assert bool(metrics["grads_finite"])
  # The lowered step is a single XLA module containing every block's update.
  text = step.lower(state, make_batch(), jax.random.PRNGKey(0)).as_text()
  assert text.count("func.func public @main") == 1


def test_rule_state_follows_numpy_running_mean():
  rule = RunningMean(momentum=0.8)
  model = make_model()
  optimizer = optax.sgd(0.05)
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), make_batch())
  step = local.local_train_step(model, rule, optimizer)
  expected = [np.zeros(w) for w in WIDTHS]
  for seed in range(3):
    batch = make_batch(seed)
    # NumPy forward with the parameters this step uses.
    h = np.asarray(batch["x"], np.float64)
    for k, p in enumerate(state.params.blocks):
      h = np.tanh(h @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64))
      expected[k] = 0.8 * expected[k] + 0.2 * h.mean(0)
    state, _ = step(state, batch, jax.random.PRNGKey(seed))
    for got, want in zip(state.rule_state, expected):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_block_labels_give_each_block_its_own_optimizer():
  rule = LocalCrossEntropy()
  model = make_model()
  params, _ = model.init(jax.random.PRNGKey(0), rule, make_batch())
  labels = local.block_labels(params)
  assert jax.tree.leaves(labels.blocks[1]) == ["block1", "block1"]
  transforms = {name: optax.sgd(0.1) for name in set(jax.tree.leaves(labels))}
  transforms["block0"] = optax.set_to_zero()  # freeze block 0 only
  optimizer = optax.partition(transforms, labels)
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), make_batch())
  step = local.local_train_step(model, rule, optimizer)
  new, _ = step(state, make_batch(1), jax.random.PRNGKey(1))
  for a, b in zip(jax.tree.leaves(new.params.blocks[0]), jax.tree.leaves(state.params.blocks[0])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(new.params.blocks[1]), jax.tree.leaves(state.params.blocks[1])):
    assert not np.allclose(a, b)


def test_grads_finite_flags_a_nan_objective():
  class Broken(LocalCrossEntropy):
    def block_loss(self, index, output, head, ctx):
      return super().block_loss(index, output, head, ctx) * jnp.sqrt(-1.0 + 0 * output.sum())

  rule = Broken()
  model = make_model()
  state = local.init_train_state(model, rule, optax.sgd(0.1), jax.random.PRNGKey(0), make_batch())
  _, metrics = local.local_train_step(model, rule, optax.sgd(0.1))(
      state, make_batch(), jax.random.PRNGKey(0))
  assert not bool(metrics["grads_finite"])


def test_nnx_and_linen_blocks_compute_their_modules():
  block = local.from_nnx(lambda rngs: nnx.Linear(6, 4, rngs=rngs))
  params = block.init(jax.random.PRNGKey(0), jnp.zeros((1, 6)))
  reference = nnx.Linear(6, 4, rngs=nnx.Rngs(jax.random.PRNGKey(0)))
  x = make_batch()["x"]
  np.testing.assert_allclose(block.apply(params, x), reference(x), rtol=1e-6)
  dense = local.dense_block(4, None)
  dense_params = dense.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(
      dense.apply(dense_params, x), x @ dense_params["kernel"] + dense_params["bias"], rtol=1e-6)
  with pytest.raises(ValueError, match="nnx.Param"):
    local.from_nnx(lambda rngs: nnx.BatchNorm(4, rngs=rngs))


def test_fit_functions_train_with_jaxlearn_fit():
  from jaxlearn.data import Dataset
  from jaxlearn.train import fit

  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 6)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  data = Dataset(x[:48], y[:48], x[48:], y[48:], NUM_CLASSES)
  rule = LocalCrossEntropy()
  model = make_model()

  def predict(params, x):
    outputs = model.outputs(params.blocks, rule, local.LocalContext({"x": x}, None, None))
    head = params.heads[-1]
    return jnp.argmax(outputs[-1] @ head["w"] + head["b"], -1)

  loss_fn, init_params, eval_fn = local.fit_functions(
      model, rule, {"x": x[:2], "y": y[:2]}, predict=predict)
  result = fit(loss_fn, init_params, lambda: optax.adam(0.05), data, steps=60, batch_size=16,
               seeds=[0, 1], eval_every=30, eval_fn=eval_fn, has_state=True, progress=False)
  losses = result.history["train_loss"]
  assert losses.shape == (1, 2, 2) and np.all(np.isfinite(losses))
  assert np.all(losses[..., -1] < losses[..., 0])
  assert np.all(result.final("train_accuracy") > 0.8)


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match="blocks"):
    local.LocalModel(())
  model = make_model()
  with pytest.raises(ValueError, match="uses_all_outputs"):
    local.local_train_step(model, TopDown(), optax.sgd(0.1), sequential=True)
  with pytest.raises(ValueError, match="detach"):
    local.local_train_step(
        model, LocalCrossEntropy(), optax.sgd(0.1), sequential=True, detach=False)
  params, _ = model.init(jax.random.PRNGKey(0), LocalCrossEntropy(), make_batch())
  with pytest.raises(ValueError, match="block_params"):
    ctx = local.LocalContext(make_batch(), None, None)
    model.outputs(params.blocks[:2], LocalCrossEntropy(), ctx)


# -- forward-only rules ----------------------------------------------------------------------------


class PerturbationCE(LocalCrossEntropy):
  """A forward-only test rule: central finite differences along random directions, per block.

  Only forward evaluations of the block objectives: no derivative is taken anywhere.
  """

  forward_only = True
  sigma = 1e-2

  def estimate_grads(self, model, params, rule_state, batch, key):
    ctx = local.LocalContext(batch, rule_state, key)
    inputs = [self.prepare(ctx)]
    outputs = model.outputs(params.blocks, self, ctx)
    inputs += list(outputs[:-1])

    def objective(k, block_params, head):
      out = model.blocks[k].apply(block_params, self.block_input(k, inputs[k], ctx))
      return self.block_loss(k, out, head, ctx)

    grads_b, grads_h, losses = [], [], []
    for k in range(len(model.blocks)):
      own = (params.blocks[k], params.heads[k])
      leaves, treedef = jax.tree.flatten(own)
      keys = jax.random.split(jax.random.fold_in(key, k), len(leaves))
      v = jax.tree.unflatten(
          treedef, [jax.random.normal(kk, x.shape) for kk, x in zip(keys, leaves)])
      shift = lambda s: jax.tree.map(lambda p, d: p + s * self.sigma * d, own, v)
      plus, minus = objective(k, *shift(1.0)), objective(k, *shift(-1.0))
      g = jax.tree.map(lambda d: (plus - minus) / (2 * self.sigma) * d, v)
      grads_b.append(g[0])
      grads_h.append(g[1])
      losses.append(objective(k, *own))
    return local.LocalParams(tuple(grads_b), tuple(grads_h)), jnp.stack(losses), outputs


def sentinel_model():
  return local.LocalModel(tuple(sentinel_block(w) for w in WIDTHS))


def test_forward_only_step_runs_where_a_derivative_raises():
  batch = make_batch(1)
  model = sentinel_model()
  optimizer = optax.sgd(0.1)
  state = local.init_train_state(model, PerturbationCE(), optimizer, jax.random.PRNGKey(0), batch)
  new, metrics = local.local_train_step(model, PerturbationCE(), optimizer)(
      state, batch, jax.random.PRNGKey(1))
  assert bool(metrics["grads_finite"])
  assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new.params.blocks),
                                                    jax.tree.leaves(state.params.blocks)))
  # The same objectives through jax.grad hit the sentinel.
  with pytest.raises(Differentiated):
    local.local_train_step(model, LocalCrossEntropy(), optimizer)(
        state, batch, jax.random.PRNGKey(1))


def test_pure_callback_black_box_runs_forward_only_and_refuses_grad():
  phys = black_box(lambda a: np.abs(np.sin(3.0 * a)))
  dense = local.dense_block(4, jnp.tanh)
  physical = local.Block(dense.init, lambda p, x: phys(dense.apply(p, x)))  # downstream of W
  model = local.LocalModel((physical, local.dense_block(3, jnp.tanh)))
  optimizer = optax.sgd(0.1)
  batch = make_batch(2)
  state = local.init_train_state(model, PerturbationCE(), optimizer, jax.random.PRNGKey(0), batch)
  _, metrics = local.local_train_step(model, PerturbationCE(), optimizer)(
      state, batch, jax.random.PRNGKey(1))
  assert bool(metrics["grads_finite"])
  with pytest.raises(ValueError, match="(?i)pure.?callback"):
    local.local_train_step(model, LocalCrossEntropy(), optimizer)(
        state, batch, jax.random.PRNGKey(1))


def test_estimate_grads_replaces_jax_grad_exactly():
  class Fixed(LocalCrossEntropy):
    forward_only = True

    def estimate_grads(self, model, params, rule_state, batch, key):
      grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
      return grads, jnp.arange(len(model.blocks), dtype=jnp.float32), None

  model = make_model()
  state = local.init_train_state(model, Fixed(), optax.sgd(0.1), jax.random.PRNGKey(0),
                                 make_batch())
  new, metrics = local.local_train_step(model, Fixed(), optax.sgd(0.1))(
      state, make_batch(), jax.random.PRNGKey(0))
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b - 0.05, rtol=1e-6)
  np.testing.assert_array_equal(metrics["block_losses"], [0.0, 1.0, 2.0])
  with pytest.raises(ValueError, match="forward_only"):
    local.local_train_step(model, Fixed(), optax.sgd(0.1), sequential=True)
  with pytest.raises(ValueError, match="forward_only"):
    local.fit_functions(model, Fixed(), make_batch())


# -- rule state from parameters, shared parameters -------------------------------------------------


class NextBlockEMA(LocalCrossEntropy):
  """init_state copies the next block's kernel; update_state keeps an EMA of it (as MAN does)."""

  def init_state(self, key, outputs, batch, params):
    return tuple(p["kernel"] for p in params.blocks[1:])

  def update_state(self, state, params, ctx):
    return tuple(0.5 * s + 0.5 * p["kernel"] for s, p in zip(state, params.blocks[1:]))


def test_init_state_receives_the_initialized_parameters():
  model = make_model()
  optimizer = optax.sgd(0.5)
  state = local.init_train_state(model, NextBlockEMA(), optimizer, jax.random.PRNGKey(0),
                                 make_batch())
  for got, block in zip(state.rule_state, state.params.blocks[1:]):
    np.testing.assert_array_equal(got, block["kernel"])
  new, _ = local.local_train_step(model, NextBlockEMA(), optimizer)(
      state, make_batch(1), jax.random.PRNGKey(0))
  for got, old, cur in zip(new.rule_state, state.rule_state, state.params.blocks[1:]):
    np.testing.assert_allclose(got, 0.5 * old + 0.5 * cur["kernel"], rtol=1e-6)


class SharedEmbedding(local.LocalRule):
  """Every block predicts the label by similarity to a SHARED class-embedding matrix."""

  def init_shared(self, key, batch):
    return {"embed": jax.random.normal(key, (NUM_CLASSES, 2))}

  def init_head(self, index, key, output):
    return {"w": 0.5 * jax.random.normal(key, (output.shape[-1], 2))}

  def block_loss(self, index, output, head, ctx):
    logits = (output @ head["w"]) @ ctx.shared["embed"].T
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, ctx.batch["y"]).mean()


def test_shared_parameters_receive_every_block_gradient_and_nothing_crosses():
  rule = SharedEmbedding()
  model, params, state = init(rule)
  assert params.shared["embed"].shape == (NUM_CLASSES, 2)
  batch = make_batch(3)
  jac = assert_no_gradient_crosses_blocks(model, rule, params, state, batch, shared_reached=True)
  # The shared gradient of the summed objective is the sum of the per-block gradients, and the
  # sequential step computes the same update as the joint one.
  optimizer = optax.sgd(0.1)
  train = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), batch)
  joint, _ = local.local_train_step(model, rule, optimizer)(train, batch, jax.random.PRNGKey(0))
  seq, _ = local.local_train_step(model, rule, optimizer, sequential=True)(
      train, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(
      joint.params.shared["embed"],
      train.params.shared["embed"] - 0.1 * jac.shared["embed"].sum(0), rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(seq.params), jax.tree.leaves(joint.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert jax.tree.leaves(local.block_labels(train.params).shared) == ["shared"]


# -- schedules: active mask, inner steps, greedy phases --------------------------------------------


def block_objective(model, rule, k, inputs, batch):
  """Block k's objective as a plain function of (block params, head params)."""
  ctx = local.LocalContext(batch, None, None)
  return lambda bp, hp: rule.block_loss(k, model.blocks[k].apply(bp, inputs), hp, ctx)


def test_active_mask_freezes_other_blocks_and_their_optimizer_state():
  rule = LocalCrossEntropy()
  model = make_model()
  optimizer = local.per_block_optimizer(optax.adam(0.05))
  batch = make_batch(1)
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), batch)
  step = local.local_train_step(model, rule, optimizer)
  only_1 = jnp.array([False, True, False])
  new = state
  for _ in range(2):
    new, _ = step(new, batch, jax.random.PRNGKey(0), only_1)
  for k in (0, 2):
    for a, b in zip(jax.tree.leaves((new.params.blocks[k], new.params.heads[k],
                                     new.opt_state.blocks[k])),
                    jax.tree.leaves((state.params.blocks[k], state.params.heads[k],
                                     state.opt_state.blocks[k]))):
      np.testing.assert_array_equal(a, b)
  # Block 1 followed two steps of a fresh Adam on its own objective.
  h0 = np.tanh(batch["x"] @ state.params.blocks[0]["kernel"] + state.params.blocks[0]["bias"])
  objective = block_objective(model, rule, 1, h0, batch)
  own = (state.params.blocks[1], state.params.heads[1])
  adam = optax.adam(0.05)
  opt_state = adam.init(own)
  for _ in range(2):
    grads = jax.grad(lambda p: objective(*p))(own)
    updates, opt_state = adam.update(grads, opt_state)
    own = optax.apply_updates(own, updates)
  for a, b in zip(jax.tree.leaves(own), jax.tree.leaves((new.params.blocks[1],
                                                          new.params.heads[1]))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="per_block_optimizer"):
    plain = local.init_train_state(model, rule, optax.sgd(0.1), jax.random.PRNGKey(0), batch)
    local.local_train_step(model, rule, optax.sgd(0.1))(plain, batch, jax.random.PRNGKey(0), only_1)


def test_sequential_inner_steps_train_each_block_before_feeding_the_next():
  rule = LocalCrossEntropy()
  model = make_model()
  lr, inner = 0.2, 3
  optimizer = local.per_block_optimizer(optax.sgd(lr))
  batch = make_batch(4)
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), batch)
  new, metrics = local.local_train_step(model, rule, optimizer, sequential=True,
                                        inner_steps=inner)(state, batch, jax.random.PRNGKey(0))
  # Hand-written reference: block k takes `inner` SGD steps, then its updated output feeds k+1.
  signal, first_losses = batch["x"], []
  for k in range(len(WIDTHS)):
    objective = block_objective(model, rule, k, signal, batch)
    own = (state.params.blocks[k], state.params.heads[k])
    first_losses.append(objective(*own))
    for _ in range(inner):
      grads = jax.grad(lambda p: objective(*p))(own)
      own = jax.tree.map(lambda p, g: p - lr * g, own, grads)
    for a, b in zip(jax.tree.leaves(own), jax.tree.leaves((new.params.blocks[k],
                                                            new.params.heads[k]))):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    signal = model.blocks[k].apply(own[0], signal)
  np.testing.assert_allclose(metrics["block_losses"], first_losses, rtol=1e-5)


def test_joint_inner_steps_repeat_the_whole_update():
  rule = LocalCrossEntropy()
  model = make_model()
  optimizer = optax.adam(0.05)
  batch = make_batch(5)
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), batch)
  repeated, _ = local.local_train_step(model, rule, optimizer, inner_steps=3)(
      state, batch, jax.random.PRNGKey(2))
  step = local.local_train_step(model, rule, optimizer)
  manual = state
  for _ in range(3):
    manual, _ = step(manual, batch, jax.random.PRNGKey(2))
  for a, b in zip(jax.tree.leaves(repeated.params), jax.tree.leaves(manual.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="inner_steps"):
    local.local_train_step(model, rule, optimizer, inner_steps=0)


class Counter(LocalCrossEntropy):
  """Rule state counts the updates, so a metric can peak at a known step."""

  def init_state(self, key, outputs, batch):
    return jnp.zeros([], jnp.int32)

  def update_state(self, state, params, ctx):
    return state + 1


def test_greedy_train_stops_early_and_restores_the_best_block():
  rule = Counter()
  model = make_model()
  optimizer = local.per_block_optimizer(optax.sgd(0.1))
  batch = make_batch(6)
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), batch)
  step = local.local_train_step(model, rule, optimizer, jit=False)
  # Block k's metric peaks 3 steps into its phase: counts 3 (block 0), 3 + 5 (block 1: block 0 ran
  # 5 rounds), ... so each phase saves round 2, waits `patience` = 2 rounds, then stops.
  peaks = jnp.array([3, 8, 13])
  metric = lambda params, count, k: -jnp.abs(count - peaks[k]).astype(jnp.float32)
  final, log = local.greedy_train(step, state, lambda key, i: batch, metric, jax.random.PRNGKey(1),
                                  num_blocks=3, max_steps=8, eval_every=1, patience=2)
  np.testing.assert_array_equal(log.best_round, [2, 2, 2])
  np.testing.assert_array_equal(log.rounds, [5, 5, 5])
  assert np.isnan(log.metrics[0, 5:]).all() and np.isfinite(log.metrics[:, :5]).all()
  # Reference: block by block, 3 steps each from the restored state (the 2 extra steps undone).
  jit_step = jax.jit(step)
  manual = state
  for k in range(3):
    active = jnp.arange(3) == k
    for _ in range(3):
      manual, _ = jit_step(manual, batch, jax.random.PRNGKey(0), active)
  for a, b in zip(jax.tree.leaves(final.params), jax.tree.leaves(manual.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # SGD on a fixed batch: key-free
  # A group of blocks trained together in one phase (early stopping on the whole model).
  joint, log = local.greedy_train(step, state, lambda key, i: batch, metric, jax.random.PRNGKey(1),
                                  num_blocks=3, max_steps=8, eval_every=1, patience=2,
                                  blocks=[range(3)])  # metric of the group's last block: peak 13
  np.testing.assert_array_equal(log.rounds, [8])  # counts 1..8 approach 13: always improving
  np.testing.assert_array_equal(log.best_round, [7])
  manual = state
  for _ in range(8):
    manual, _ = jit_step(manual, batch, jax.random.PRNGKey(0), jnp.ones(3, bool))
  for a, b in zip(jax.tree.leaves(joint.params), jax.tree.leaves(manual.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="eval_every"):
    local.greedy_train(step, state, lambda key, i: batch, metric, jax.random.PRNGKey(1),
                       num_blocks=3, max_steps=5, eval_every=2)


# -- graph batches ---------------------------------------------------------------------------------


def gcn_block(features):
  dense = local.dense_block(features, None)
  return local.Block(lambda key, inputs: dense.init(key, inputs[0]),
                     lambda p, inputs: jnp.tanh(inputs[1] @ dense.apply(p, inputs[0])))


class GraphCE(LocalCrossEntropy):
  """Blocks read (features, adjacency); the loss is taken on the training nodes only."""

  def block_input(self, index, signal, ctx):
    return signal, ctx.batch["adj"]

  def block_loss(self, index, output, head, ctx):
    logits = output @ head["w"] + head["b"]
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, ctx.batch["y"])
    mask = ctx.batch["mask"].astype(ce.dtype)
    return jnp.sum(ce * mask) / jnp.sum(mask)


def test_graph_batches_go_through_the_same_step():
  rng = np.random.default_rng(0)
  n = 8
  a = (rng.random((n, n)) < 0.4).astype(np.float32)
  a = np.triu(a, 1) + np.triu(a, 1).T + np.eye(n, dtype=np.float32)
  batch = dict(make_batch(7, batch_size=n), adj=jnp.asarray(a / a.sum(1, keepdims=True)),
               mask=jnp.asarray(np.arange(n) < 5))
  rule = GraphCE()
  model = local.LocalModel(tuple(gcn_block(w) for w in WIDTHS))
  params, state = model.init(jax.random.PRNGKey(0), rule, batch)
  assert_no_gradient_crosses_blocks(model, rule, params, state, batch)
  optimizer = optax.sgd(0.1)
  train = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), batch)
  joint, metrics = local.local_train_step(model, rule, optimizer)(
      train, batch, jax.random.PRNGKey(0))
  seq, _ = local.local_train_step(model, rule, optimizer, sequential=True)(
      train, batch, jax.random.PRNGKey(0))
  for x, y in zip(jax.tree.leaves(seq.params), jax.tree.leaves(joint.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  # Block 0's loss by hand: masked CE of tanh(A x W + b) through the head.
  p, h = train.params.blocks[0], train.params.heads[0]
  out = np.tanh(a / a.sum(1, keepdims=True) @ (np.asarray(batch["x"]) @ p["kernel"] + p["bias"]))
  logits = out @ h["w"] + h["b"]
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ce = -logp[np.arange(n), np.asarray(batch["y"])]
  np.testing.assert_allclose(metrics["block_losses"][0], ce[:5].mean(), rtol=1e-5)


# -- the local-rule battery: one row per registered rule -------------------------------------------
#
# A row builds `(model, rule, optimizer, batch, step_kwargs)` at a tiny size. Checks: block k's
# objective sends exactly zero gradient to any other block or head (skipped for forward_only rules,
# whose own tests use the sentinels of tests/local/_checks.py), and the jitted step runs twice as
# one compiled program with finite metrics, one loss per block, every block's parameters updated.


def _graph_batch(conv="gcn"):
  from jaxlearn.data import stochastic_block_model

  graph = stochastic_block_model(num_nodes=12, num_classes=3, feature_dim=4, p_in=0.5, seed=1)
  return local.forward_gnn_batch(graph, conv, key=jax.random.PRNGKey(0))


def _ff_row():
  batch = {"x": make_batch(0, features=12)["x"], "y": make_batch(0)["y"]}
  return (local.LocalModel.mlp([5, 4], jnp.tanh), local.ForwardForward(NUM_CLASSES),
          optax.sgd(0.1), batch, {})


def _forward_gnn_row(top_down=False):
  rule = (local.ForwardGNNTopDown if top_down else local.ForwardGNN)(3)
  model = local.LocalModel((local.gcn_layer(4, jnp.tanh), local.sage_layer(4, jnp.tanh),
                            local.gcn_layer(4, jnp.tanh)))
  return model, rule, local.forward_gnn_optimizer(learning_rate=0.05), _graph_batch(), {}


def _model_free_ff_row():
  phys = (local.random_physical_system(0, 12, 5), local.random_physical_system(1, 5, 4))
  rule = local.ModelFreeForwardForward(NUM_CLASSES, physical=phys)
  batch = {"x": make_batch(0, features=12)["x"], "y": make_batch(0)["y"]}
  return (local.LocalModel.mlp([5, 4], local.exact_gelu), rule,
          local.per_block_optimizer(optax.adam(0.05)), batch,
          {"sequential": True, "inner_steps": 2})


def _dense_row(rule, *, hidden=(5, 4)):
  """Hidden dense blocks and a linear output block (tpSGD's and ULR's architecture)."""
  blocks = tuple(local.dense_block(w) for w in hidden) + (local.dense_block(NUM_CLASSES, None),)
  return local.LocalModel(blocks), rule, optax.sgd(0.1), make_batch(0), {}


def _man_row():
  model = local.LocalModel.mlp([5, 4, 3])
  return model, local.MomentumAuxiliary(model, NUM_CLASSES), optax.sgd(0.1), make_batch(0), {}


def _noprop_row():
  blocks = tuple(local.denoising_block(NUM_CLASSES, (4,)) for _ in range(2))
  return (local.LocalModel(blocks), local.NoProp(NUM_CLASSES, 2), optax.sgd(0.1),
          make_batch(0), {})


RULES = {
    "forward_forward": _ff_row,
    "forward_gnn": _forward_gnn_row,
    "forward_gnn_top_down": lambda: _forward_gnn_row(top_down=True),
    "model_free_forward_forward": _model_free_ff_row,
    "tpsgd": lambda: _dense_row(local.TargetProjection(NUM_CLASSES)),
    "momentum_auxiliary_network": _man_row,
    "noprop": _noprop_row,
    "ulr_likelihood_ratio": lambda: _dense_row(local.LikelihoodRatio(num_samples=4)),
}

# Registered with kind "local_rule" but procedures, not `LocalRule`s: they have no row here and are
# tested in their own files (closed-form or stage-wise training, no local objective per step).
PROCEDURES = {"bcd_global_convergence_dl", "gradient_boosting_dnn", "gbnn_sequential_boosting"}


def test_every_registered_local_rule_has_a_row():
  registered = {m.slug for m in registry.all_methods("local_rule")}
  rows = {name for name in RULES if name in registered}
  assert registered - PROCEDURES == rows, "add a RULES row (or list a procedure in PROCEDURES)"


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_battery(name):
  model, rule, optimizer, batch, step_kwargs = RULES[name]()
  state = local.init_train_state(model, rule, optimizer, jax.random.PRNGKey(0), batch)
  if not rule.forward_only:
    assert_no_gradient_crosses_blocks(model, rule, state.params, state.rule_state, batch,
                                      jax.random.PRNGKey(1))
  step = local.local_train_step(model, rule, optimizer, **step_kwargs)
  new, metrics = step(state, batch, jax.random.PRNGKey(2))
  new, metrics = step(new, batch, jax.random.PRNGKey(3))
  assert step._cache_size() == 1  # one compiled program, no recompilation
  assert metrics["block_losses"].shape == (len(model.blocks),)
  assert bool(metrics["grads_finite"]) and np.isfinite(float(metrics["loss"]))
  for k in range(len(model.blocks)):
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(new.params.blocks[k]), jax.tree.leaves(state.params.blocks[k]))), k
