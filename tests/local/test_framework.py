"""The layer-local framework: no gradient crosses a block boundary; a step is one jitted program.

References: the backprop variant of the same model (`detach=False`), where gradients do cross
boundaries; per-block gradients taken one block at a time; NumPy transcriptions of the test rules.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlearn import local

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


def per_block_jacobian(model, rule, params, state, batch, *, detach):
  """d loss_k / d (params of block j and head j) for all k, j."""
  fn = lambda p: local.block_losses(model, rule, p, state, batch, None, detach=detach)[0]
  return jax.jit(jax.jacrev(fn))(params)


def max_abs(tree, k):
  return max(float(jnp.max(jnp.abs(leaf[k]))) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("rule", [LocalCrossEntropy(), TopDown()], ids=["local_ce", "top_down"])
def test_block_objective_has_exactly_zero_gradient_for_other_blocks(rule):
  model, params, state = init(rule)
  jac = per_block_jacobian(model, rule, params, state, make_batch(1), detach=True)
  for k in range(len(WIDTHS)):
    for j in range(len(WIDTHS)):
      own = (jac.blocks[j], jac.heads[j])
      if j == k:
        assert max_abs(own, k) > 1e-4
      else:
        for leaf in jax.tree.leaves(own):
          np.testing.assert_array_equal(leaf[k], 0.0)  # exactly zero, not merely small


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
