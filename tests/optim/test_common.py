"""Tests for `jaxlearn.optim._common`: the alias pieces, the inject_hyperparams mask trap, and the
pieces every optimizer shares (dtype policy, moments, checks, proximal L1), and the shared bad-input
checks run by every jaxlearn optimizer and transform (update shapes, parameter dtypes, flags,
dtypes, axes).

References are hand-computed: an alias over `optax.identity()` performs
`update = -lr * (g + weight_decay * mask * w)`, which NumPy evaluates directly.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim, registry
from jaxlearn.optim import _common, adamp, inject_hyperparams


def decayed_sgd(learning_rate, weight_decay=0.0, weight_decay_mask=None):
  """The smallest jaxlearn-style alias: identity, then masked decay, then the lr step."""
  return _common.alias(optax.identity(), learning_rate, weight_decay, weight_decay_mask)


def matrices_only(params):
  return jax.tree.map(lambda x: x.ndim > 1, params)


PARAMS = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([4.0, -1.0])}
GRADS = {"w": jnp.asarray([[0.1, 0.2], [-0.3, 0.4]]), "b": jnp.asarray([0.5, -0.5])}


def three_steps(opt):
  """Three jitted steps with constant gradients; returns the final params as NumPy."""

  @jax.jit
  def run(params):
    state = opt.init(params)
    for _ in range(3):
      updates, state = opt.update(GRADS, state, params)
      params = optax.apply_updates(params, updates)
    return params

  return jax.tree.map(np.asarray, run(PARAMS))


def expected_three_steps(lr, weight_decay, decay_w, decay_b):
  params = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
  for _ in range(3):
    params = {
        "w": params["w"] - lr * (np.asarray(GRADS["w"]) + weight_decay * decay_w * params["w"]),
        "b": params["b"] - lr * (np.asarray(GRADS["b"]) + weight_decay * decay_b * params["b"]),
    }
  return params


# ---------------------------------------------------------------------------------------------
# The inject_hyperparams mask trap.


@pytest.mark.parametrize("factory", [decayed_sgd, adamp], ids=["common_alias", "adamp"])
def test_raw_optax_inject_with_a_callable_mask_raises_instead_of_disabling_decay(factory):
  opt = optax.inject_hyperparams(factory)(
      learning_rate=0.1, weight_decay=0.5, weight_decay_mask=matrices_only
  )
  with pytest.raises(ValueError, match="weight_decay_mask.*jaxlearn.optim.inject_hyperparams"):
    opt.init(PARAMS)


def test_raw_optax_inject_with_static_args_is_fine():
  opt = optax.inject_hyperparams(decayed_sgd, static_args=("weight_decay_mask",))(
      learning_rate=0.1, weight_decay=0.5, weight_decay_mask=matrices_only
  )
  expected = expected_three_steps(0.1, 0.5, decay_w=1.0, decay_b=0.0)
  for k, v in three_steps(opt).items():
    np.testing.assert_allclose(v, expected[k], rtol=1e-6)


def test_jaxlearn_inject_applies_the_callable_mask_exactly_like_the_plain_alias():
  kwargs = dict(learning_rate=0.1, weight_decay=0.5, weight_decay_mask=matrices_only)
  plain = three_steps(decayed_sgd(**kwargs))
  injected = three_steps(inject_hyperparams(decayed_sgd)(**kwargs))
  expected = expected_three_steps(0.1, 0.5, decay_w=1.0, decay_b=0.0)
  for k in PARAMS:
    np.testing.assert_allclose(plain[k], expected[k], rtol=1e-6)
    np.testing.assert_allclose(injected[k], expected[k], rtol=1e-6)
  # The decay is really on for w (a trap would leave w where weight_decay=0 leaves it).
  undecayed = expected_three_steps(0.1, 0.0, decay_w=0.0, decay_b=0.0)
  assert np.max(np.abs(injected["w"] - undecayed["w"])) > 0.1


def test_jaxlearn_inject_keeps_user_static_args():
  opt = inject_hyperparams(adamp, static_args="channel_axis")(
      learning_rate=0.1, weight_decay=0.5, weight_decay_mask=matrices_only, channel_axis=0
  )
  state = opt.init(PARAMS)
  assert "channel_axis" not in state.hyperparams
  assert "weight_decay_mask" not in state.hyperparams
  assert float(state.hyperparams["weight_decay"]) == 0.5


@pytest.mark.parametrize(
    "mask",
    [False, True, np.bool_(False), np.asarray([True, False]), jnp.asarray(False)],
    ids=["bool", "true", "numpy_bool", "numpy_array", "jax_array"],
)
def test_check_mask_rejects_single_values(mask):
  with pytest.raises(ValueError, match="weight_decay_mask arrived as a single value"):
    _common.check_mask(mask)


@pytest.mark.parametrize(
    "mask",
    [None, matrices_only, {"w": True, "b": False}, {"w": True}],
    ids=["none", "callable", "tree", "prefix"],
)
def test_check_mask_accepts_masks(mask):
  assert _common.check_mask(mask) is mask


# ---------------------------------------------------------------------------------------------
# decayed_weights and learning_rate_step.


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), -np.inf])
def test_decayed_weights_rejects_bad_weight_decay(bad):
  with pytest.raises(ValueError, match=r"weight_decay must be in \[0, inf\)"):
    _common.decayed_weights(bad)


def test_decayed_weights_rejects_a_trapped_mask():
  with pytest.raises(ValueError, match="weight_decay_mask"):
    _common.decayed_weights(0.1, jnp.asarray(True))


def test_decayed_weights_adds_masked_decay():
  tx = _common.decayed_weights(0.5, {"w": True, "b": False})
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(updates["w"], np.asarray(GRADS["w"]) + 0.5 * np.asarray(PARAMS["w"]),
                             rtol=1e-6)
  np.testing.assert_allclose(updates["b"], GRADS["b"], rtol=0)


@pytest.mark.parametrize("bad", [-1e-3, float("nan")])
def test_learning_rate_step_rejects_bad_learning_rates(bad):
  with pytest.raises(ValueError, match=r"learning_rate must be in \[0, inf\)"):
    _common.learning_rate_step(bad)


def test_learning_rate_step_scales_by_minus_lr_and_accepts_schedules_and_tracers():
  updates = {"w": jnp.asarray([1.0, -2.0])}
  tx = _common.learning_rate_step(0.1)
  out, _ = tx.update(updates, tx.init(updates))
  np.testing.assert_allclose(out["w"], [-0.1, 0.2], rtol=1e-6)

  schedule = _common.learning_rate_step(lambda count: 0.1 * (count + 1))
  state = schedule.init(updates)
  first, state = schedule.update(updates, state)
  second, _ = schedule.update(updates, state)
  np.testing.assert_allclose(first["w"], [-0.1, 0.2], rtol=1e-6)
  np.testing.assert_allclose(second["w"], [-0.2, 0.4], rtol=1e-6)

  # Traced values cannot be checked and are accepted (they were checked when concrete).
  traced = jax.jit(lambda lr: _common.learning_rate_step(lr).update(updates, optax.EmptyState()))
  np.testing.assert_allclose(traced(0.5)[0]["w"], [-0.5, 1.0], rtol=1e-6)


def test_alias_validates_its_pieces():
  with pytest.raises(ValueError, match="learning_rate"):
    decayed_sgd(-0.1)
  with pytest.raises(ValueError, match="weight_decay"):
    decayed_sgd(0.1, weight_decay=-1.0)
  with pytest.raises(ValueError, match="weight_decay_mask"):
    decayed_sgd(0.1, weight_decay=0.1, weight_decay_mask=False)


# ---------------------------------------------------------------------------------------------
# The dtype policy.


@pytest.mark.parametrize(
    "dtype, expected",
    [(jnp.bfloat16, jnp.float32), (jnp.float16, jnp.float32), (jnp.float32, jnp.float32),
     (jnp.complex64, jnp.complex64), (jnp.int32, jnp.float32)],
    ids=["bfloat16", "float16", "float32", "complex64", "int32"],
)
def test_wide_dtype_is_float32_or_wider(dtype, expected):
  assert _common.wide_dtype(dtype) == expected


def test_state_zeros_are_float32_or_the_given_dtype():
  params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
  zeros = _common.state_zeros(params)
  assert {k: v.dtype for k, v in zeros.items()} == {"w": jnp.float32, "b": jnp.float32}
  assert all(not np.any(np.asarray(v)) and v.shape == params[k].shape for k, v in zeros.items())
  assert all(v.dtype == jnp.bfloat16 for v in _common.state_zeros(params, jnp.bfloat16).values())


def test_compute_in_float32_is_the_public_one_and_lion_lists_it():
  from jaxlearn import optim, registry

  assert optim.compute_in_float32 is _common.compute_in_float32
  assert "jaxlearn.optim.compute_in_float32" in registry.get("lion").symbols


# ---------------------------------------------------------------------------------------------
# Moments and bias corrections, against NumPy.


def test_update_moment_first_and_second_order():
  grads = {"w": np.asarray([0.5, -2.0], np.float32)}
  moments = {"w": np.asarray([1.0, 3.0], np.float32)}
  first = _common.update_moment(grads, moments, 0.9)
  second = _common.update_moment(grads, moments, 0.99, order=2)
  np.testing.assert_allclose(first["w"], 0.9 * moments["w"] + 0.1 * grads["w"], rtol=1e-6)
  np.testing.assert_allclose(second["w"], 0.99 * moments["w"] + 0.01 * grads["w"] ** 2, rtol=1e-6)
  with pytest.raises(ValueError, match="order"):
    _common.update_moment(grads, moments, 0.9, order=3)


def test_update_moment_casts_low_precision_gradients_before_the_arithmetic():
  grads = {"w": jnp.asarray([1.0 + 2.0**-7, 3.0], jnp.bfloat16)}
  moments = {"w": jnp.zeros(2, jnp.float32)}
  out = _common.update_moment(grads, moments, 0.999, order=2)
  assert out["w"].dtype == jnp.float32
  wide = np.asarray(grads["w"], np.float32)
  np.testing.assert_array_equal(out["w"], np.float32(1 - 0.999) * np.square(wide))


def test_bias_corrections_and_debias():
  count = jnp.asarray(3, jnp.int32)
  np.testing.assert_allclose(_common.bias_correction(0.9, count), 1 - 0.9**3, rtol=1e-6)
  # float32 cancellation in 1 - 0.999**3 costs about 1e-5 relative accuracy.
  np.testing.assert_allclose(
      _common.folded_bias_correction(0.9, 0.999, count), np.sqrt(1 - 0.999**3) / (1 - 0.9**3),
      rtol=1e-4,
  )
  debiased = _common.debias({"v": jnp.asarray([0.3, 0.6])}, 0.5, count)
  np.testing.assert_allclose(debiased["v"], np.asarray([0.3, 0.6]) / (1 - 0.5**3), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Checks of transforms that read the weights.


def test_require_params_names_the_transform():
  _common.require_params(PARAMS, "my_transform")
  with pytest.raises(ValueError, match=r"my_transform needs params: .*\(it reads them\)"):
    _common.require_params(None, "my_transform", "it reads them")


@pytest.mark.parametrize(
    "mask, expected",
    [(None, {"w": True, "b": True}), (matrices_only, {"w": True, "b": False}),
     ({"w": False, "b": True}, {"w": False, "b": True})],
    ids=["none", "callable", "tree"],
)
def test_decay_flags(mask, expected):
  assert _common.decay_flags(mask, PARAMS) == expected


def test_decay_flags_broadcasts_a_prefix_mask():
  params = {"layer": {"w": PARAMS["w"], "b": PARAMS["b"]}, "head": PARAMS["w"]}
  flags = _common.decay_flags({"layer": False, "head": True}, params)
  assert flags == {"layer": {"w": False, "b": False}, "head": True}


def test_unit_axes_and_channel_axis_check():
  assert _common.unit_axes(4, -1) == (0, 1, 2)
  assert _common.unit_axes(2, 0) == (1,)
  _common.check_channel_axis(-1)
  for bad in (True, 0.0, None, jnp.asarray(0)):
    with pytest.raises(ValueError, match="channel_axis must be an int"):
      _common.check_channel_axis(bad)


# ---------------------------------------------------------------------------------------------
# Proximal L1.


def test_soft_threshold_leaf_shrinks_towards_zero():
  x = jnp.asarray([-3.0, -0.5, 0.0, 0.2, 2.0])
  np.testing.assert_allclose(_common.soft_threshold_leaf(x, 1.0), [-2.0, 0.0, 0.0, 0.0, 1.0])


def test_soft_threshold_turns_updates_into_the_proximal_step():
  tx = _common.soft_threshold(0.5, mask={"w": True, "b": False})
  updates = {"w": jnp.full((2, 2), 0.1), "b": jnp.asarray([0.1, 0.1])}
  out, _ = tx.update(updates, tx.init(PARAMS), PARAMS)
  new_w = np.asarray(PARAMS["w"]) + 0.1
  expected_w = np.sign(new_w) * np.maximum(np.abs(new_w) - 0.5, 0.0) - np.asarray(PARAMS["w"])
  np.testing.assert_allclose(out["w"], expected_w, rtol=1e-6)
  np.testing.assert_allclose(out["b"], updates["b"])
  with pytest.raises(ValueError, match="soft_threshold needs params"):
    _common.soft_threshold(0.5).update(updates, optax.EmptyState())
  with pytest.raises(ValueError, match="threshold"):
    _common.soft_threshold(-1.0)


# ---------------------------------------------------------------------------------------------
# Method modules take shared pieces from _common (and the matrix view and matrix functions from
# matrix), never from each other.

SHARED = {"matrix", "extra_args"}

# Composition, not sharing: these modules build on another method's public parts.
COMPOSED_OF = {
    "ranger21": {"agc", "centralization", "lookahead", "norm_loss", "pnm", "stable_weight_decay"},
    "pnm": {"softplus"},  # AdaPNM with Sadam's softplus denominator (Ranger21's configuration)
}


def test_method_modules_import_only_common_and_their_parts():
  import ast
  import pathlib

  import jaxlearn.optim

  for path in sorted(pathlib.Path(jaxlearn.optim.__file__).parent.glob("*.py")):
    if path.stem in ("__init__", "_common") or path.stem in SHARED:
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxlearn.optim.")):
        continue
      source = node.module.rsplit(".", 1)[1]
      allowed = SHARED | COMPOSED_OF.get(path.stem, set())
      assert source in allowed, f"{path.stem} imports from {source}"
      private = [a.name for a in node.names if a.name.startswith("_")]
      assert not private, f"{path.stem} imports private names {private} from {source}"


# ---------------------------------------------------------------------------------------------
# Bad input gets a clear error: update shapes, parameter dtypes, flags, dtypes and axes.


def _registered_aliases():
  """Every registered jaxlearn optimizer alias, with the arguments needed to build and step it."""
  cases = []
  for method, symbol in registry.optimizer_aliases():
    if not symbol.startswith("jaxlearn."):
      continue
    factory = registry.resolve(symbol)
    kwargs = {"learning_rate": 0.1}
    if "num_iterations" in inspect.signature(factory).parameters:
      kwargs["num_iterations"] = None
    cases.append(pytest.param(lambda f=factory, k=kwargs: f(**k), method.update_extras,
                              id=symbol.rsplit(".")[-1]))
  return cases


def _extras(names, params):
  """The extra `update` arguments `names` of a sum-of-squares loss at `params` (margins: ones)."""
  squares = lambda p: sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(p))
  floats = jax.tree.map(lambda x: x.astype(jnp.float32), params)  # grad needs float inputs
  extras = optim.extra_update_args([n for n in names if n != "margins"], squares, floats)
  return extras | ({"margins": jnp.ones(4)} if "margins" in names else {})


def _transforms():
  """The jaxlearn transforms (scale_by_*, wrappers and tricks), built with small arguments.

  Not `compute_in_float32`: it wraps any optax transform and keeps non-float leaves as they are
  (`tests/optim/test_lion.py`); the jaxlearn transforms built on it check their params."""
  makers = {
      "scale_by_adamp": optim.scale_by_adamp, "scale_by_sgdp": optim.scale_by_sgdp,
      "scale_by_lion": optim.scale_by_lion, "scale_by_novograd": optim.scale_by_novograd,
      "scale_by_grams": optim.scale_by_grams, "scale_by_gravity": optim.scale_by_gravity,
      "scale_by_optimistic_amsgrad": optim.scale_by_optimistic_amsgrad,
      "scale_by_nag_gs": lambda: optim.scale_by_nag_gs(0.1),
      "scale_by_pnm": optim.scale_by_pnm, "scale_by_adapnm": optim.scale_by_adapnm,
      "scale_by_sadam": optim.scale_by_sadam,
      "with_stable_weight_decay": lambda: optim.with_stable_weight_decay(optax.scale_by_adam()),
      "adaptive_grad_clip": lambda: optim.adaptive_grad_clip(0.01),
      "decay_to_anchor": lambda: optim.decay_to_anchor(0.1),
      "clip_by_global_norm": lambda: optim.clip_by_global_norm(1.0),
      "add_gradient_noise": lambda: optim.add_gradient_noise(0.01),
      "half_fine_tuning": lambda: optim.half_fine_tuning(),
      "centralize_gradients": optim.centralize_gradients,
      "normalize_gradients": optim.normalize_gradients,
      "add_norm_loss": optim.add_norm_loss, "lookahead_sync": optim.lookahead_sync,
      "orthogonalize_gradients": optim.orthogonalize_gradients,
      "soft_threshold": lambda: optim.soft_threshold(0.1),
      "decayed_weights": lambda: optim.decayed_weights(0.1),
  }
  return [pytest.param(make, (), id=name) for name, make in makers.items()]


ALL_OPTIMIZERS = _registered_aliases() + _transforms()


def _trace_update(optimizer, extra_names, grads, params):
  """Traces one update (shapes and dtypes only, nothing is computed)."""
  state = optimizer.init(params)
  extras = _extras(extra_names, params)
  return jax.eval_shape(lambda g, s, p: optimizer.update(g, s, p, **extras), grads, state, params)


@pytest.mark.parametrize("make, extra_names", ALL_OPTIMIZERS)
def test_updates_that_only_broadcast_against_params_are_rejected(make, extra_names):
  """A (4,) update for a (1,) parameter used to come back (4,)-shaped, and optax.apply_updates
  then silently changed the parameter's shape."""
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones((1,))}
  grads = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
  with pytest.raises(ValueError, match=r"updates\['b'\] has shape \(4,\).*params\['b'\] .*\(1,\)"):
    _trace_update(make(), extra_names, grads, params)


@pytest.mark.parametrize("make, extra_names", ALL_OPTIMIZERS)
def test_integer_params_are_rejected(make, extra_names):
  """Integer parameters used to be accepted and every update truncated (5 - 0.1 -> 4)."""
  params = {"w": jnp.ones((3, 4)), "b": jnp.asarray([5, 3, 2, 1], jnp.int32)}
  grads = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
  with pytest.raises(ValueError, match=r"params\['b'\] has dtype int32"):
    _trace_update(make(), extra_names, grads, params)


def test_check_params_accepts_matching_float_trees_and_masked_leaves():
  grads = {"w": jnp.ones((3, 2), jnp.bfloat16), "b": optax.MaskedNode()}
  params = {"w": jnp.ones((3, 2)), "b": optax.MaskedNode()}
  _common.check_params(grads, params, "test")
  _common.check_params(grads, None, "test")  # nothing to compare against
  with pytest.raises(ValueError, match=r"test: updates\['w'\] has dtype int32"):
    _common.check_params({"w": jnp.ones((3, 2), jnp.int32)}, {"w": jnp.ones((3, 2))}, "test")


@pytest.mark.parametrize("make, name", [
    (lambda: adamp(0.1, nesterov="yes"), "nesterov"),
    (lambda: optim.sgdp(0.1, momentum=0.9, nesterov=1), "nesterov"),
    (lambda: optim.lion(0.1, mu_dtype=jnp.int32), "mu_dtype"),
    (lambda: optim.novograd(0.1, mu_dtype="int8"), "mu_dtype"),
    (lambda: optim.novograd(0.1, grad_averaging="no"), "grad_averaging"),
    (lambda: optim.grams(0.1, correct_bias=None), "correct_bias"),
    (lambda: optim.adapnm(0.1, amsgrad="yes"), "amsgrad"),
    (lambda: optim.ranger21(0.1, None, use_gc="yes"), "use_gc"),
    (lambda: optim.decay_to_anchor(0.1, weighted=1), "weighted"),
    (lambda: optim.adamp(0.1, channel_axis=1.5), "channel_axis"),
], ids=["adamp_nesterov", "sgdp_nesterov", "lion_mu_dtype", "novograd_mu_dtype",
        "novograd_grad_averaging", "grams_correct_bias", "adapnm_amsgrad", "ranger21_use_gc",
        "anchor_weighted", "adamp_channel_axis_float"])
def test_flags_and_dtypes_are_checked_when_built(make, name):
  """nesterov='yes' used to be accepted (truthy), and mu_dtype=int32 gave all-zero updates."""
  with pytest.raises(ValueError, match=name):
    make()


@pytest.mark.parametrize("make", [
    lambda: adamp(0.1, channel_axis=2),
    lambda: optim.sgdp(0.1, channel_axis=-3),
    lambda: optim.centralize_gradients(channel_axis=2),
    lambda: optim.add_norm_loss(channel_axis=-3),
], ids=["adamp", "sgdp", "centralize_gradients", "add_norm_loss"])
def test_an_out_of_range_channel_axis_raises_instead_of_wrapping(make):
  """channel_axis=2 on a (3, 2) kernel used to wrap around to axis 0."""
  params = {"w": jnp.ones((3, 2))}
  with pytest.raises(ValueError, match=r"channel_axis=-?\d+ is out of range .* 2 dimensions"):
    _trace_update(make(), (), params, params)
