"""AdamP / SGDP (arXiv:2006.08217) against independent references.

- NumPy transcriptions (float64) of the paper's Algorithms 1-2 and the official code's projection
  (clovaai/AdamP): one projection by hand in each of its three outcomes, full AdamP/SGDP steps.
- pytorch-optimizer `AdamP` / `SGDP`: 100-step trajectories on a problem with a channel-wise
  scale-invariant matrix, a layer-wise scale-invariant conv kernel, an ordinary matrix and a
  vector, in Flax layout (transposed to PyTorch's) and in PyTorch layout (`channel_axis=0`).
- Two documented differences: pytorch-optimizer's AdamP puts eps in another place than the
  official code; the official SGDP (no nesterov) projects its momentum buffer in place, which the
  paper's Algorithm 1 does not. We follow the paper / official AdamP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.optim import (
    ScaleByAdamPState,
    ScaleBySGDPState,
    adamp,
    inject_hyperparams,
    project_scale_invariant,
    scale_by_adamp,
    scale_by_sgdp,
    sgdp,
)
from tests.optim._helpers import compiled_donated_step

# ---------------------------------------------------------------------------------------------
# NumPy references (float64), written from the paper and the official code's description.
# Kernels are in Flax layout here: the output channel is the LAST axis.


def np_cosine(g, w, axes, eps):
  dot = np.sum(g * w, axis=axes, keepdims=True)
  gn = np.sqrt(np.sum(g * g, axis=axes, keepdims=True))
  wn = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
  return np.abs(dot) / (np.maximum(gn, eps) * np.maximum(wn, eps))


def np_projection(direction, w, g, delta, eps):
  """Returns (projected direction, projected?) for one kernel with ndim > 1."""
  channel_axes = tuple(range(w.ndim - 1))
  for axes in (channel_axes, tuple(range(w.ndim))):
    view_size = int(np.prod([w.shape[a] for a in axes]))
    if np_cosine(g, w, axes, eps).max() < delta / np.sqrt(view_size):
      w_hat = w / (np.sqrt(np.sum(w * w, axis=axes, keepdims=True)) + eps)
      return direction - w_hat * np.sum(w_hat * direction, axis=axes, keepdims=True), True
  return direction, False


def np_adamp_run(params, grad_fn, steps, lr, b1=0.9, b2=0.999, eps=1e-8, delta=0.1,
                 wd_ratio=0.1, weight_decay=0.0, nesterov=False):
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  for t in range(1, steps + 1):
    grads = grad_fn(params)
    new = {}
    for k, w in params.items():
      g = grads[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      first = b1 * m[k] + (1 - b1) * g if nesterov else m[k]
      perturb = first / (np.sqrt(v[k]) / np.sqrt(1 - b2**t) + eps)
      ratio = 1.0
      if w.ndim > 1:
        perturb, projected = np_projection(perturb, w, g, delta, eps)
        ratio = wd_ratio if projected else 1.0
      w = w * (1 - lr * weight_decay * ratio)
      new[k] = w - lr / (1 - b1**t) * perturb
    params = new
  return params


def np_sgdp_run(params, grad_fn, steps, lr, momentum, dampening=0.0, eps=1e-8, delta=0.1,
                wd_ratio=0.1, weight_decay=0.0, nesterov=False, project_buffer=False):
  """The paper's Algorithm 1; `project_buffer=True` mimics the official code's in-place aliasing."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in params.items()}
  for _ in range(steps):
    grads = grad_fn(params)
    new = {}
    for k, w in params.items():
      g = grads[k]
      buf[k] = momentum * buf[k] + (1 - dampening) * g
      direction = g + momentum * buf[k] if nesterov else buf[k]
      ratio = 1.0
      if w.ndim > 1:
        direction, projected = np_projection(direction, w, g, delta, eps)
        ratio = wd_ratio if projected else 1.0
        if project_buffer and not nesterov:
          buf[k] = direction
      w = w * (1 - lr * weight_decay * ratio / (1 - momentum))
      new[k] = w - lr * direction
    params = new
  return params


# ---------------------------------------------------------------------------------------------
# A problem with every case the projection distinguishes.


def _kernels(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "dense": rng.normal(size=(7, 5)),  # (in, out): scale-invariant per output channel
      "conv": rng.normal(size=(3, 3, 3, 4)),  # HWIO: scale-invariant as a whole
      "plain": rng.normal(size=(4, 6)),  # ordinary matrix (not scale-invariant)
      "bias": rng.normal(size=(5,)),
  }


def _targets(seed=1):
  rng = np.random.default_rng(seed)
  return {
      "dense": rng.normal(size=(7, 5)),
      "conv": rng.normal(size=(3, 3, 3, 4)),
      "plain": rng.normal(size=(4, 6)),
      "bias": rng.normal(size=(5,)),
  }


def make_loss(targets):
  """The loss in Flax layout: dense is normalized per output column, conv as a whole."""

  def loss(p):
    dense = p["dense"] / jnp.sqrt(jnp.sum(p["dense"] ** 2, axis=0, keepdims=True))
    conv = p["conv"] / jnp.sqrt(jnp.sum(p["conv"] ** 2))
    return (
        jnp.sum(jnp.tanh(2.0 * dense) * targets["dense"])
        + jnp.sum(jnp.sin(3.0 * conv) * targets["conv"])
        + 0.5 * jnp.sum((p["plain"] - targets["plain"]) ** 2)
        + jnp.sum(jnp.log(jnp.cosh(p["bias"] - targets["bias"])))
    )

  return loss


def numpy_grad_fn(targets):
  """The gradient of `make_loss`, derived by hand, in float64."""

  def normalized_grad(w, outer, axes):
    # d/dw of f(w / |w|): (G - w_hat <G, w_hat>) / |w|, slice by slice over `axes`.
    norm = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
    w_hat = w / norm
    g = outer(w_hat)
    return (g - w_hat * np.sum(g * w_hat, axis=axes, keepdims=True)) / norm

  def grads(p):
    return {
        "dense": normalized_grad(
            p["dense"], lambda u: 2.0 / np.cosh(2.0 * u) ** 2 * targets["dense"], (0,)
        ),
        "conv": normalized_grad(
            p["conv"], lambda u: 3.0 * np.cos(3.0 * u) * targets["conv"], (0, 1, 2, 3)
        ),
        "plain": p["plain"] - targets["plain"],
        "bias": np.tanh(p["bias"] - targets["bias"]),
    }

  return grads


def test_problem_exercises_every_projection_outcome():
  """dense is caught by the channel view, conv only by the layer view, plain by neither."""
  params, targets = _kernels(), _targets()
  grads = numpy_grad_fn(targets)(params)
  delta, eps = 0.1, 1e-8

  def detected(name, axes):
    w, g = params[name], grads[name]
    size = int(np.prod([w.shape[a] for a in axes]))
    return np_cosine(g, w, axes, eps).max() < delta / np.sqrt(size)

  channel = lambda name: detected(name, tuple(range(params[name].ndim - 1)))
  layer = lambda name: detected(name, tuple(range(params[name].ndim)))
  assert channel("dense")
  assert not channel("conv") and layer("conv")
  assert not channel("plain") and not layer("plain")


def test_numpy_gradient_matches_autodiff():
  params, targets = _kernels(), _targets()
  grad_fn = jax.jit(jax.grad(make_loss(targets)))
  expected = grad_fn({k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
  assert_params_close(numpy_grad_fn(targets)(params), expected, rtol=1e-4, atol=1e-5)


def run_jax(opt, params, loss, steps):
  """`steps` jitted steps of `opt` on `loss` from `params` (float32); returns NumPy params."""
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}

  def step(carry, _):
    params, state = carry
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
      (params, opt.init(params))
  )
  return {k: np.asarray(v) for k, v in params.items()}


def assert_params_close(actual, expected, rtol, atol):
  assert actual.keys() == expected.keys()
  for k in actual:
    np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol, err_msg=k)


# ---------------------------------------------------------------------------------------------
# The projection by hand.


def _orthogonal_per_column(w, a):
  return a - w * np.sum(w * a, axis=0, keepdims=True) / np.sum(w * w, axis=0, keepdims=True)


@pytest.mark.parametrize("case", ["channel", "layer", "none"])
def test_projection_matches_numpy_transcription(case):
  rng = np.random.default_rng(3)
  w, a, direction = (rng.normal(size=(6, 4)) for _ in range(3))
  if case == "channel":  # g orthogonal to every column of w
    g = _orthogonal_per_column(w, a)
  elif case == "layer":  # g orthogonal to w as one vector, not column by column
    g = a - w * np.sum(w * a) / np.sum(w * w)
  else:
    g = w + 0.1 * a
  expected, expected_flag = np_projection(direction, w, g, delta=0.1, eps=1e-8)
  assert expected_flag == (case != "none")
  if case == "layer":  # the per-channel test must not fire, or this case tests nothing
    assert np_cosine(g, w, (0,), 1e-8).max() >= 0.1 / np.sqrt(6)
  project = jax.jit(project_scale_invariant)
  actual, flag = project(*(jnp.asarray(x, jnp.float32) for x in (direction, w, g)), 0.1, 1e-8)
  assert bool(flag) == expected_flag
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
  if case != "none":
    axes = (0,) if case == "channel" else (0, 1)
    radial = np.sum(np.asarray(actual, np.float64) * w, axis=axes)
    np.testing.assert_allclose(radial, 0.0, atol=1e-5)


def test_projection_is_a_no_op_on_zero_weights():
  direction = jnp.ones((3, 2))
  projected, flag = jax.jit(project_scale_invariant)(
      direction, jnp.zeros((3, 2)), jnp.ones((3, 2)), 0.1, 1e-8
  )
  assert bool(flag)  # cos = 0 with a zero weight, as in the reference
  np.testing.assert_array_equal(projected, direction)


# ---------------------------------------------------------------------------------------------
# Full steps against the NumPy transcription (independent of torch).


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_matches_numpy_transcription(nesterov):
  params, targets = _kernels(), _targets()
  kwargs = dict(lr=0.05, weight_decay=0.1, nesterov=nesterov)
  expected = np_adamp_run(params, numpy_grad_fn(targets), steps=5, **kwargs)
  opt = adamp(0.05, weight_decay=0.1, nesterov=nesterov)
  actual = run_jax(opt, params, make_loss(targets), 5)
  assert_params_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_matches_numpy_transcription(nesterov):
  params, targets = _kernels(), _targets()
  kwargs = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.1, nesterov=nesterov)
  expected = np_sgdp_run(params, numpy_grad_fn(targets), steps=5, **kwargs)
  opt = sgdp(0.05, momentum=0.9, dampening=0.1, weight_decay=0.1, nesterov=nesterov)
  actual = run_jax(opt, params, make_loss(targets), 5)
  assert_params_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_sgdp_buffer_is_not_projected_unlike_the_official_code():
  """Documents a difference: the official SGDP (nesterov off) aliases its update to the momentum
  buffer (`d_p = buf`), so the in-place projection also projects the buffer. The paper's
  Algorithm 1 keeps `p_t` unprojected (as do the official AdamP and pytorch-optimizer); so do we."""
  params, targets = _kernels(), _targets()
  grad_fn = numpy_grad_fn(targets)
  kwargs = dict(lr=0.05, momentum=0.9)
  paper = np_sgdp_run(params, grad_fn, steps=3, **kwargs)
  official = np_sgdp_run(params, grad_fn, steps=3, project_buffer=True, **kwargs)
  ours = run_jax(sgdp(0.05, momentum=0.9), params, make_loss(targets), 3)
  assert_params_close(ours, paper, rtol=1e-5, atol=1e-5)
  # The projected leaves drift apart from the official code's trajectory after step 1.
  gap = np.max(np.abs(ours["dense"] - official["dense"]))
  assert gap > 1e-3, gap
  np.testing.assert_allclose(ours["bias"], official["bias"], rtol=1e-5)  # vectors: no projection


# ---------------------------------------------------------------------------------------------
# Scale invariance: a weight followed by batch normalization.


def _bn_problem():
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  params = {
      "w": jax.random.normal(k[0], (8, 16)),  # followed by batch norm: scale-invariant per column
      "v": jax.random.normal(k[1], (16, 3)),  # read-out, plus an L2 term: not scale-invariant
  }
  x = jax.random.normal(k[2], (32, 8))
  y = jax.random.randint(k[3], (32,), 0, 3)

  def loss(p):
    h = x @ p["w"]
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-12)
    logits = jax.nn.relu(h) @ p["v"]
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.05 * jnp.sum(p["v"] ** 2)

  return params, loss


def _paired_steps(ours, reference, params, loss, steps):
  """Runs `ours` and yields (params, our updates, reference updates) for `steps` steps; the
  reference sees the same gradients and params but its updates are not applied."""

  @jax.jit
  def step(params, s_ours, s_ref):
    grads = jax.grad(loss)(params)
    u_ours, s_ours = ours.update(grads, s_ours, params)
    u_ref, s_ref = reference.update(grads, s_ref, params)
    return u_ours, u_ref, s_ours, s_ref

  s_ours, s_ref = ours.init(params), reference.init(params)
  for _ in range(steps):
    u_ours, u_ref, s_ours, s_ref = step(params, s_ours, s_ref)
    yield params, u_ours, u_ref
    params = optax.apply_updates(params, u_ours)


def _column_cosines(u, w):
  return jnp.sum(u * w, 0) / (jnp.linalg.norm(u, axis=0) * jnp.linalg.norm(w, axis=0))


def test_scale_invariant_weight_loses_its_radial_update_and_others_get_adam():
  params, loss = _bn_problem()
  for p, u_ours, u_ref in _paired_steps(adamp(1e-2), optax.adam(1e-2), params, loss, 3):
    # Per output channel, AdamP's update of the BN-followed weight is orthogonal to it ...
    np.testing.assert_allclose(_column_cosines(u_ours["w"], p["w"]), 0.0, atol=1e-5)
    # ... while Adam's is not (so the check above can fail).
    assert float(jnp.max(jnp.abs(_column_cosines(u_ref["w"], p["w"])))) > 1e-2
    # The ordinary read-out weight gets exactly Adam's update.
    np.testing.assert_allclose(u_ours["v"], u_ref["v"], rtol=1e-5, atol=1e-8)


def test_delta_zero_is_adam():
  params, loss = _bn_problem()
  for _, u_ours, u_ref in _paired_steps(adamp(1e-2, delta=0.0), optax.adam(1e-2), params, loss,
                                        3):
    for k in u_ours:
      np.testing.assert_allclose(u_ours[k], u_ref[k], rtol=1e-5, atol=1e-9)


def test_weight_decay_ratio_and_mask():
  """Zero gradients: every leaf is 'scale-invariant' (cos = 0), so each decays by lr*wd*wd_ratio,
  except masked-out leaves; with SGDP the decay is further divided by 1 - momentum."""
  params = {"k": jnp.ones((2, 3)), "b": jnp.ones(3), "skip": jnp.ones((2, 2))}
  grads = jax.tree.map(jnp.zeros_like, params)
  mask = {"k": True, "b": True, "skip": False}
  for opt, factor in [
      (adamp(0.5, weight_decay=0.2, wd_ratio=0.3, weight_decay_mask=mask), 1.0),
      (sgdp(0.5, momentum=0.5, weight_decay=0.2, wd_ratio=0.3, weight_decay_mask=mask), 2.0),
  ]:
    updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["k"], -0.5 * 0.2 * 0.3 * factor, rtol=1e-6)
    np.testing.assert_allclose(updates["b"], -0.5 * 0.2 * factor, rtol=1e-6)  # 1-D: ratio 1
    np.testing.assert_array_equal(updates["skip"], 0.0)


def test_mask_may_be_a_callable_or_a_prefix():
  params = {"layer": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "head": jnp.ones(3)}
  grads = jax.tree.map(jnp.ones_like, params)

  def first_update(mask):
    opt = adamp(0.1, weight_decay=0.5, wd_ratio=1.0, weight_decay_mask=mask)
    return jax.jit(opt.update)(grads, opt.init(params), params)[0]

  decay = 0.1 * 0.5  # lr * weight_decay * w, with w = 1
  everything = first_update(None)
  by_ndim = first_update(lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  by_prefix = first_update({"layer": True, "head": False})
  np.testing.assert_allclose(by_ndim["layer"]["kernel"], everything["layer"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(by_ndim["layer"]["bias"], everything["layer"]["bias"] + decay,
                             rtol=1e-6)
  np.testing.assert_allclose(by_prefix["layer"]["bias"], everything["layer"]["bias"], rtol=1e-6)
  np.testing.assert_allclose(by_prefix["head"], everything["head"] + decay, rtol=1e-6)


def test_state_types_and_low_precision_state():
  params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
  state_a = scale_by_adamp().init(params)
  state_s = scale_by_sgdp().init(params)
  assert isinstance(state_a, ScaleByAdamPState) and isinstance(state_s, ScaleBySGDPState)
  assert state_a.count.dtype == jnp.int32
  for leaf in jax.tree.leaves((state_a.mu, state_a.nu, state_s.momentum)):
    assert leaf.dtype == jnp.float32  # moments never in bfloat16


@pytest.mark.parametrize("nesterov", [False, True])
def test_one_leaf_direction_is_alive_at_a_time(nesterov):
  """Left to itself, XLA:CPU computes every leaf's direction before any leaf's update, so the
  temporaries hold all of them (4.1 leaves here, a model-sized buffer page-faulted at every step
  on a real model); the large leaves are ordered one after another instead."""
  params = {f"w{i}": jnp.ones((256, 256)) for i in range(4)} | {"b": jnp.ones(256)}
  compiled = compiled_donated_step(adamp(1e-3, nesterov=nesterov, weight_decay=0.1), params)
  one_leaf = 256 * 256 * 4
  assert compiled.memory_analysis().temp_size_in_bytes < 1.5 * one_leaf


def test_a_non_finite_leaf_does_not_reach_the_others():
  """The ordering of the leaves goes through a value (`_after`) that must not carry a NaN: here
  leaf a is scale-invariant (g orthogonal to w) and its first moment is NaN, so its radial
  coefficients are NaN. Both leaves are large enough to be ordered."""
  params = {"a": jnp.eye(256), "b": jnp.full((256, 256), 2.0)}
  grads = {"a": jnp.roll(jnp.eye(256), 1, axis=0), "b": jnp.arange(256.0**2).reshape(256, 256)}
  optimizer = adamp(1e-2, weight_decay=0.1)
  state = optimizer.init(params)
  inner = state[0]._replace(mu={"a": jnp.full((256, 256), jnp.nan), "b": state[0].mu["b"]})
  update = jax.jit(optimizer.update)
  both, _ = update(grads, (inner,) + tuple(state[1:]), params)
  alone, _ = update({"b": grads["b"]}, optimizer.init({"b": params["b"]}), {"b": params["b"]})
  assert np.isnan(both["a"]).all()
  np.testing.assert_allclose(both["b"], alone["b"], rtol=1e-6)


def test_weight_decay_schedule_is_rejected_with_a_pointer_to_inject_hyperparams():
  with pytest.raises(ValueError, match="inject_hyperparams"):
    adamp(0.1, weight_decay=lambda count: 1e-4)
  # The supported way: inject_hyperparams evaluates the schedule and passes a number.
  opt = inject_hyperparams(adamp)(learning_rate=0.1, weight_decay=lambda count: 1e-4 * count)
  params = {"w": jnp.ones((2, 3))}
  updates, _ = jax.jit(opt.update)(params, opt.init(params), params)
  assert jnp.all(jnp.isfinite(updates["w"]))


# ---------------------------------------------------------------------------------------------
# Parity with pytorch-optimizer.


def _torch_layout(name, x):
  """Flax layout -> PyTorch layout (output channel first)."""
  if name == "conv":
    return np.transpose(x, (3, 2, 0, 1))  # HWIO -> OIHW
  return x.T if x.ndim == 2 else x


def _flax_layout(name, x):
  if name == "conv":
    return np.transpose(x, (2, 3, 1, 0))  # OIHW -> HWIO
  return x.T if x.ndim == 2 else x


def _torch_run(torch_cls, params, targets, steps, **kwargs):
  torch = pytest.importorskip("torch")
  tensors = {k: torch.tensor(np.ascontiguousarray(_torch_layout(k, v)), dtype=torch.float32,
                            requires_grad=True)
             for k, v in params.items()}
  t_targets = {k: torch.tensor(_torch_layout(k, v), dtype=torch.float32)
               for k, v in targets.items()}
  opt = torch_cls(list(tensors.values()), **kwargs)

  def loss():
    dense = tensors["dense"] / torch.sqrt(torch.sum(tensors["dense"] ** 2, dim=1, keepdim=True))
    conv = tensors["conv"] / torch.sqrt(torch.sum(tensors["conv"] ** 2))
    return (
        torch.sum(torch.tanh(2.0 * dense) * t_targets["dense"])
        + torch.sum(torch.sin(3.0 * conv) * t_targets["conv"])
        + 0.5 * torch.sum((tensors["plain"] - t_targets["plain"]) ** 2)
        + torch.sum(torch.log(torch.cosh(tensors["bias"] - t_targets["bias"])))
    )

  for _ in range(steps):
    opt.zero_grad()
    loss().backward()
    opt.step()
  return {k: _flax_layout(k, v.detach().numpy()) for k, v in tensors.items()}


WEIGHT_DECAYS = (0.0, 0.05)
PARITY_CASES = [  # (class, non-decay kwargs, layout); each runs with both WEIGHT_DECAYS
    ("AdamP", dict(nesterov=False), "flax"),
    ("AdamP", dict(nesterov=True), "torch"),
    ("SGDP", dict(momentum=0.9, dampening=0.1), "flax"),
    ("SGDP", dict(momentum=0.9, nesterov=True), "torch"),
]


def _run_jax_over_weight_decays(factory, params, loss, steps, **kwargs):
  """Runs `factory(weight_decay=wd)` for every wd in WEIGHT_DECAYS as one vmapped program."""

  def run(weight_decay):
    opt = factory(weight_decay=weight_decay, **kwargs)
    p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}

    def step(carry, _):
      p, state = carry
      updates, state = opt.update(jax.grad(loss)(p), state, p)
      return (optax.apply_updates(p, updates), state), None

    return jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0][0]

  out = jax.jit(jax.vmap(run))(jnp.asarray(WEIGHT_DECAYS, jnp.float32))
  return [{k: np.asarray(v[i]) for k, v in out.items()} for i in range(len(WEIGHT_DECAYS))]


@pytest.mark.parity
@pytest.mark.parametrize("name, kwargs, layout", PARITY_CASES)
def test_parity_with_pytorch_optimizer(name, kwargs, layout):
  """100 steps, with and without weight decay; trajectories agree to float32 accuracy."""
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  lr, steps = 1e-2, 100
  params, targets = _kernels(), _targets()
  factory = adamp if name == "AdamP" else sgdp
  loss = make_loss(targets)
  if layout == "flax":
    runs = _run_jax_over_weight_decays(factory, params, loss, steps, learning_rate=lr, **kwargs)
  else:  # PyTorch-layout kernels with channel_axis=0; the loss sees them in Flax layout
    to_flax = {"conv": lambda x: jnp.transpose(x, (2, 3, 1, 0)), "dense": jnp.transpose,
               "plain": jnp.transpose, "bias": lambda x: x}
    torch_params = {k: _torch_layout(k, v) for k, v in params.items()}
    torch_loss = lambda p: loss({k: to_flax[k](v) for k, v in p.items()})
    runs = _run_jax_over_weight_decays(factory, torch_params, torch_loss, steps,
                                       learning_rate=lr, channel_axis=0, **kwargs)
    runs = [{k: _flax_layout(k, v) for k, v in run.items()} for run in runs]
  for weight_decay, actual in zip(WEIGHT_DECAYS, runs):
    expected = _torch_run(getattr(pytorch_optimizer, name), params, targets, steps, lr=lr,
                          weight_decay=weight_decay, **kwargs)
    # AdamP: pytorch-optimizer's eps placement differs by eps*(1/sqrt(1-b2^t) - 1) (see below).
    assert_params_close(actual, expected, rtol=1e-4, atol=3e-5)


@pytest.mark.parity
def test_adamp_eps_placement_follows_the_official_code_not_pytorch_optimizer():
  """Documents a difference. Official code and paper: m_hat / (sqrt(v_hat) + eps).
  pytorch-optimizer: m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2^t)), a larger effective eps early
  on. Visible with a large eps and small gradients; invisible at eps=1e-8."""
  torch = pytest.importorskip("torch")
  pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
  lr, eps, b2, grad = 0.1, 1e-3, 0.999, 1e-3
  w = torch.zeros(4, requires_grad=True)
  reference = pytorch_optimizer.AdamP([w], lr=lr, eps=eps)
  w.grad = torch.full((4,), grad)
  reference.step()
  # Step 1: m_hat = g and sqrt(v_hat) = |g|.
  official = -lr * grad / (grad + eps)
  theirs = -lr * grad / (grad + eps / np.sqrt(1 - b2))
  np.testing.assert_allclose(w.detach().numpy(), theirs, rtol=1e-5)
  opt = adamp(lr, eps=eps)
  params = {"w": jnp.zeros(4)}
  updates, _ = jax.jit(opt.update)({"w": jnp.full(4, grad)}, opt.init(params), params)
  np.testing.assert_allclose(updates["w"], official, rtol=1e-5)
  assert abs(official - theirs) > 0.5 * abs(official)  # a real difference, not rounding
