"""The battery every jaxlearn optimizer passes: one table row per optimizer configuration.

To add an optimizer, append a `Row` to `OPTIMIZERS` (above the marker line at its end); every test
below then runs on it. A registered optimizer (registry kind "optimizer") must have at least one
row whose `slug` is its registry slug (`test_every_registered_optimizer_has_a_row`).

What each row must do (after optax's `alias_test.py` / `contrib/_common_test.py` and
pytorch-optimizer's parameter tests):
  - converge on a quadratic and on a small logistic regression;
  - compile once: no retracing after the first jitted step;
  - ignore unknown keyword arguments to `update`;
  - under `jaxlearn.optim.inject_hyperparams`, give the same updates and (inner) state, and let the
    learning rate be vmapped (a vmapped sweep equals the separate runs);
  - return updates in the gradients' dtype (float32, bfloat16); give no NaN for float16 zero
    gradients; keep the state's structure and dtypes across init, update and `lax.cond`;
  - work inside `optax.MultiSteps`, `optax.apply_if_finite`, `jax.eval_shape` (abstract init) and
    an orbax-checkpoint round trip;
  - reject invalid hyperparameters with a ValueError naming the argument.
Each test jit-compiles at most a few small programs per row (keep it that way: < ~1 s per row).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import registry
from jaxlearn.optim import adamp, inject_hyperparams, sgdp


def matrices_only(params):
  """A callable weight-decay mask: decay leaves with ndim > 1."""
  return jax.tree.map(lambda x: x.ndim > 1, params)


@dataclasses.dataclass(frozen=True)
class Row:
  """One optimizer configuration under test.

  Attributes:
    name: the pytest id (unique).
    slug: the registry slug of the method this row covers.
    factory: the alias, called as `factory(**kwargs)`.
    kwargs: hyperparameters; must include `learning_rate` (the battery scales it).
    invalid: `(argument, bad value)` pairs; `factory(**{**kwargs, argument: bad})` must raise a
      ValueError whose message names the argument.
    needs_params: whether `update` requires `params` (then it must raise ValueError without).
    rtol, atol: tolerances for comparisons between mathematically identical runs (injected vs
      plain, vmapped vs separate, MultiSteps vs the mean gradient).
    quadratic_ratio: the final / initial loss on the quadratic must be below this.
    logistic_ratio: the final / initial loss on the logistic regression must be below this.
    steps: optimization steps for the two convergence tests.
  """

  name: str
  slug: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: Mapping[str, Any]
  invalid: tuple[tuple[str, Any], ...] = ()
  needs_params: bool = False
  rtol: float = 1e-5
  atol: float = 1e-6
  quadratic_ratio: float = 1e-3
  logistic_ratio: float = 0.3
  steps: int = 300


_ADAMP_INVALID = (
    ("learning_rate", -1e-3),
    ("b1", 1.0),
    ("b1", -0.1),
    ("b2", 1.0),
    ("eps", -1e-8),
    ("eps", 0.0),
    ("delta", -0.1),
    ("wd_ratio", 1.5),
    ("weight_decay", -1e-4),
)
_SGDP_INVALID = (
    ("learning_rate", -0.1),
    ("momentum", 1.0),
    ("momentum", -0.1),
    ("dampening", 1.5),
    ("eps", -1e-8),
    ("delta", -1.0),
    ("wd_ratio", -0.1),
    ("weight_decay", -1e-4),
)

# AdamP under inject_hyperparams holds b2 as a float32 array, and 1 - b2 then carries a 1e-5
# relative error (1 - float32(0.999)); hence atol=1e-5 on its rows (the same holds for optax.adam).
OPTIMIZERS: tuple[Row, ...] = (
    Row("adamp", "adamp_sgdp", adamp, {"learning_rate": 0.05}, _ADAMP_INVALID,
        needs_params=True, atol=1e-5),
    Row("adamp_nesterov", "adamp_sgdp", adamp, {"learning_rate": 0.05, "nesterov": True},
        _ADAMP_INVALID, needs_params=True, atol=1e-5),
    Row("adamp_wd_mask", "adamp_sgdp", adamp,
        {"learning_rate": 0.05, "weight_decay": 1e-3, "weight_decay_mask": matrices_only},
        _ADAMP_INVALID, needs_params=True, atol=1e-5),
    Row("sgdp", "adamp_sgdp", sgdp, {"learning_rate": 0.1, "momentum": 0.9}, _SGDP_INVALID,
        needs_params=True),
    Row("sgdp_nesterov", "adamp_sgdp", sgdp,
        {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}, _SGDP_INVALID,
        needs_params=True),
    # Grams, Gravity, Optimistic AMSGrad, NAG-GS, Normalized LR+GD (jaxlearn.optim).
    Row("grams", "grams", registry.resolve("jaxlearn.optim.grams"), {"learning_rate": 0.05},
        (("learning_rate", -1e-3), ("b1", 1.0), ("b1", -0.1), ("b2", 1.0), ("eps", -1e-8),
         ("weight_decay", -1e-4)), needs_params=True),
    Row("grams_wd_mask", "grams", registry.resolve("jaxlearn.optim.grams"),
        {"learning_rate": 0.05, "weight_decay": 1e-3, "weight_decay_mask": matrices_only},
        (("weight_decay", -1e-4),), needs_params=True),
    # Gravity's step is bounded by lr / (2 max|g|): with this quadratic's O(1) gradients lr 0.1
    # needs ~1000 steps (ratio 0.39 after 300), lr 1.0 converges well within 300.
    Row("gravity", "gravity_optimizer", registry.resolve("jaxlearn.optim.gravity"),
        {"learning_rate": 1.0},
        (("learning_rate", 0.0), ("learning_rate", -0.1), ("alpha", -0.01), ("beta", 1.0),
         ("beta", -0.1))),
    # `span` sets a state shape, so it must stay a Python int: a closure keeps it out of
    # inject_hyperparams (users pass static_args=("span",) instead).
    Row("optimistic_amsgrad", "optimistic_amsgrad",
        lambda learning_rate, b1=0.9, b2=0.99, eps=1e-8, ridge=1e-3, weight_decay=0.0: (
            registry.resolve("jaxlearn.optim.optimistic_amsgrad")(
                learning_rate, b1, b2, eps, ridge, weight_decay, span=5)),
        {"learning_rate": 0.05},
        (("learning_rate", -1e-3), ("b1", 1.0), ("b2", 1.0), ("eps", 0.0), ("ridge", 0.0),
         ("weight_decay", -1e-4)), needs_params=True),
    Row("nag_gs", "nag_gs", registry.resolve("jaxlearn.optim.nag_gs"),
        {"learning_rate": 0.5, "mu": 1.0, "gamma": 1.5},
        (("learning_rate", -0.1), ("mu", -1.0), ("gamma", 0.0)), needs_params=True),
    # Normalized LR+GD needs update(..., margins=); the battery has no data, so this row fixes
    # margins = 0 (beta = 2): it checks the plumbing, tests/optim/test_normalized_lr_gd.py the math.
    Row("normalized_lr_gd", "normalized_lr_gd",
        lambda learning_rate: (lambda t: optax.GradientTransformationExtraArgs(
            t.init, lambda u, s, params=None, **kw: t.update(u, s, params, **{**kw,
                                                                             "margins": 0.0})))(
                registry.resolve("jaxlearn.optim.normalized_lr_gd")(learning_rate)),
        {"learning_rate": 0.25}, (("learning_rate", -1.0),)),
    # ranger21 and the reusable cores it is built from (jaxlearn/optim/ranger21.py, pnm.py,
    # stable_weight_decay.py). The full default Ranger21 has no row: its gradient centralization
    # keeps each output unit's mean weight fixed, which on these tiny problems (a 4-input logistic
    # regression) caps the accuracy at ~0.67; tests/optim/test_ranger21.py covers that default.
    Row("ranger21_no_gc", "ranger21", registry.resolve("jaxlearn.optim.ranger21"),
        {"learning_rate": 0.05, "num_iterations": 300, "use_gc": False,
         "weight_decay_mask": matrices_only},
        (("learning_rate", -1e-3), ("num_iterations", 0), ("b1", 1.0), ("b2", 1.0), ("b0", -0.1),
         ("eps", 0.0), ("weight_decay", -1e-4), ("agc_clipping", 0.0),
         ("norm_loss_factor", -1.0), ("softplus_beta", 0.0), ("lookahead_sync_period", 0),
         ("lookahead_step_size", 1.5), ("warmdown_min_lr", 1.0)),
        needs_params=True),
    Row("adapnm", "ranger21", registry.resolve("jaxlearn.optim.adapnm"),
        {"learning_rate": 0.05, "weight_decay": 1e-4},
        (("learning_rate", -1.0), ("b1", 1.0), ("b2", -0.1), ("b0", -1.0), ("eps", -1.0)),
        needs_params=True),
    Row("pnm", "ranger21", registry.resolve("jaxlearn.optim.pnm"), {"learning_rate": 0.3},
        (("learning_rate", -1.0), ("b1", 1.0), ("b0", -1.0), ("weight_decay", -1.0)),
        needs_params=True),
    Row("adams", "ranger21", registry.resolve("jaxlearn.optim.adams"),
        {"learning_rate": 0.05, "weight_decay": 1e-4, "weight_decay_mask": matrices_only},
        (("learning_rate", -1.0), ("b1", 1.0), ("eps", 0.0), ("weight_decay", -1.0)),
        needs_params=True, rtol=1e-4, atol=1e-5),  # 1/sqrt(v_hat) amplifies vmap's rounding
    # Gradient-projection / LoRA / continual-learning transforms, as chains with a base optimizer
    # (SGD with momentum: optax.adam's float16 state turns zero gradients into 0/0 = NaN).
    # ⊥Grad steps are orthogonal to the weights, so ||w|| changes only through second-order
    # terms and the targets (another norm) are approached slowly: ratios 0.05 and 0.6. Base: the
    # paper's Adam, in float32.
    Row("perpgrad_adam", "perpgrad",
        lambda learning_rate, eps=1e-30: optax.chain(
            registry.resolve("jaxlearn.optim.orthogonalize_gradients")(eps),
            registry.resolve("jaxlearn.optim.compute_in_float32")(optax.adam(learning_rate))),
        {"learning_rate": 0.05}, (("eps", 0.0), ("eps", -1.0)), needs_params=True,
        quadratic_ratio=0.05, logistic_ratio=0.6),
    Row("anchor_l2_sgd", "rehearsal_free_cl_l2",
        lambda learning_rate, strength=1e-3: optax.chain(
            registry.resolve("jaxlearn.optim.decay_to_anchor")(strength),
            optax.sgd(learning_rate, momentum=0.9)),
        {"learning_rate": 0.05}, (("strength", -1.0),), needs_params=True),
    Row("anchor_ewc_masked_sgd", "rehearsal_free_cl_l2",
        lambda learning_rate, strength=1e-3: optax.chain(
            registry.resolve("jaxlearn.optim.decay_to_anchor")(
                strength, weighted=True, mask=matrices_only),
            optax.sgd(learning_rate, momentum=0.9)),
        {"learning_rate": 0.05}, (("strength", -1.0),), needs_params=True),
    # seed=1 trains the kernel in the first stage (the vmap test compares kernels after 3 steps).
    Row("hft_sgd", "hft_half_fine_tuning",
        lambda learning_rate, fraction=0.5: optax.chain(
            optax.sgd(learning_rate, momentum=0.9),
            registry.resolve("jaxlearn.optim.half_fine_tuning")(fraction, stage_length=10,
                                                                 seed=1)),
        {"learning_rate": 0.05}, (("fraction", 1.5), ("fraction", -0.5))),
    Row("sora", "sora_sparse_lora", registry.resolve("jaxlearn.optim.sora"),
        {"learning_rate": 0.05, "sparse_lambda": 1e-4, "weight_decay_mask": matrices_only},
        (("learning_rate", -1.0), ("b1", 1.0), ("b2", -0.1), ("eps", 0.0),
         ("weight_decay", -1.0), ("sparse_lambda", -1e-3)), needs_params=True, atol=1e-5),
    # Lion, NovoGrad, and optax-backed transforms (gradient noise, AGC, norm clipping) chained
    # with SGD + momentum. Lion's sign steps are lr per coordinate: lr 0.03 gets the quadratic
    # below 1e-3 in 300 steps.
    Row("lion", "lion", registry.resolve("jaxlearn.optim.lion"), {"learning_rate": 0.03},
        (("learning_rate", -1e-3), ("b1", 1.5), ("b2", -0.1), ("weight_decay", -1e-4)),
        needs_params=True),
    Row("lion_wd_mask", "lion", registry.resolve("jaxlearn.optim.lion"),
        {"learning_rate": 0.03, "weight_decay": 0.01, "weight_decay_mask": matrices_only},
        (("weight_decay", -1e-4),), needs_params=True),
    Row("novograd", "novograd", registry.resolve("jaxlearn.optim.novograd"),
        {"learning_rate": 0.01},
        (("learning_rate", -1e-3), ("b1", 1.0), ("b2", 1.0), ("eps", -1e-8),
         ("weight_decay", -1e-4)), atol=1e-5),
    Row("novograd_wd_mask_averaging", "novograd", registry.resolve("jaxlearn.optim.novograd"),
        {"learning_rate": 0.05, "weight_decay": 1e-3, "weight_decay_mask": matrices_only,
         "grad_averaging": True},
        (("weight_decay", -1e-4),), needs_params=True, atol=1e-5),
    Row("gradient_noise_sgd", "gradient_noise",
        lambda learning_rate, eta=1e-4, gamma=0.55: optax.chain(
            registry.resolve("jaxlearn.optim.add_gradient_noise")(eta, gamma, key=0),
            optax.sgd(learning_rate, momentum=0.9)),
        {"learning_rate": 0.05}, (("eta", -1.0), ("gamma", -0.5))),
    Row("agc_sgd", "nfnet_agc",
        lambda learning_rate, clipping=0.1, eps=1e-3: optax.chain(
            registry.resolve("jaxlearn.optim.adaptive_grad_clip")(clipping, eps),
            optax.sgd(learning_rate, momentum=0.9)),
        {"learning_rate": 0.05}, (("clipping", 0.0), ("eps", -1.0)), needs_params=True),
    Row("clip_by_global_norm_sgd", "grad_norm_clipping",
        lambda learning_rate, max_norm=1.0: optax.chain(
            registry.resolve("jaxlearn.optim.clip_by_global_norm")(max_norm),
            optax.sgd(learning_rate, momentum=0.9)),
        {"learning_rate": 0.05}, (("max_norm", 0.0), ("max_norm", -1.0))),
    # Add new optimizers above this line
)

ROWS = [pytest.param(row, id=row.name) for row in OPTIMIZERS]
INVALID = [
    pytest.param(row, argument, value, id=f"{row.name}-{argument}={value!r}")
    for row in OPTIMIZERS
    for argument, value in row.invalid
]

# ---------------------------------------------------------------------------------------------
# Shared problems. Parameters cover the layouts optimizers special-case: a Dense kernel
# (in, out), a conv kernel (HWIO) and a vector.

SHAPES = {"kernel": (4, 3), "conv": (2, 2, 2, 3), "bias": (3,)}


def make_params(seed=0, dtypes: Mapping[str, Any] | None = None):
  rng = np.random.default_rng(seed)
  dtypes = dtypes or {}
  return {
      name: jnp.asarray(rng.normal(size=shape), dtypes.get(name, jnp.float32))
      for name, shape in SHAPES.items()
  }


def gradient_sequence(steps, seed=1, like=None):
  """`steps` random gradients stacked on a leading axis, in `like`'s dtypes."""
  like = like if like is not None else make_params()
  rng = np.random.default_rng(seed)
  return {
      name: jnp.asarray(rng.normal(size=(steps, *x.shape)), x.dtype) for name, x in like.items()
  }


def run_on_gradients(opt, params, grads):
  """Applies `opt` to the stacked gradients in order; returns (params, state, last updates)."""

  def step(carry, g):
    params, state = carry
    updates, state = opt.update(g, state, params)
    return (optax.apply_updates(params, updates), state), updates

  (params, state), updates = jax.lax.scan(step, (params, opt.init(params)), grads)
  return params, state, jax.tree.map(lambda u: u[-1], updates)


def minimize(opt, loss, params, steps):
  """Runs `steps` steps of `opt` on `loss`; returns the final parameters (one jit)."""

  def step(carry, _):
    params, state = carry
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  run = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0][0])
  return run(params)


def assert_trees_close(actual, expected, rtol, atol):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=rtol,
                               atol=atol)


def assert_same_avals(actual, expected):
  """Same tree structure (NamedTuple types included), shapes and dtypes."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert (a.shape, a.dtype) == (e.shape, e.dtype), (a, e)


def build(row: Row, **overrides):
  return row.factory(**{**row.kwargs, **overrides})


# ---------------------------------------------------------------------------------------------
# Convergence.


@pytest.mark.parametrize("row", ROWS)
def test_converges_on_a_quadratic(row):
  target = make_params(seed=2)
  curvature = jax.tree.map(lambda x: 0.5 + 1.5 * jnp.abs(jnp.sin(7.0 * x)), make_params(seed=3))

  def loss(params):
    terms = jax.tree.map(lambda p, t, h: 0.5 * jnp.sum(h * (p - t) ** 2), params, target,
                         curvature)
    return sum(jax.tree.leaves(terms))

  start = make_params()
  final = minimize(build(row), loss, start, row.steps)
  assert float(loss(final)) < row.quadratic_ratio * float(loss(start))


@pytest.mark.parametrize("row", ROWS)
def test_converges_on_logistic_regression(row):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(128, 4)), jnp.float32)
  labels = jnp.argmax(x @ jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), axis=1)

  def loss(params):
    logits = x @ params["w"] + params["b"]
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  start = {"w": jnp.asarray(0.1 * rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3)}
  final = minimize(build(row), loss, start, row.steps)
  assert float(loss(final)) < row.logistic_ratio * float(loss(start))
  accuracy = jnp.mean(jnp.argmax(x @ final["w"] + final["b"], axis=1) == labels)
  assert float(accuracy) >= 0.9


# ---------------------------------------------------------------------------------------------
# Compilation and the update signature.


@pytest.mark.parametrize("row", ROWS)
def test_no_recompilation_after_the_first_step(row):
  opt = build(row)
  traces = []

  @jax.jit
  def step(params, state, grads):
    traces.append(None)  # runs only while tracing
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = make_params()
  state = opt.init(params)
  grads = gradient_sequence(4)
  for t in range(4):
    params, state = step(params, state, jax.tree.map(lambda g: g[t], grads))
  assert len(traces) == 1


@pytest.mark.parametrize("row", ROWS)
def test_unknown_extra_arguments_are_ignored(row):
  opt = build(row)
  params = make_params()
  state = opt.init(params)
  grads = jax.tree.map(lambda g: g[0], gradient_sequence(1))

  @jax.jit
  def both(params, state, grads):
    plain = opt.update(grads, state, params)
    extra = opt.update(grads, state, params, unexpected_extra_arg=jnp.ones(2), value=1.0)
    return plain, extra

  plain, extra = both(params, state, grads)
  assert_trees_close(extra, plain, rtol=0, atol=0)


@pytest.mark.parametrize("row", ROWS)
def test_params_requirement(row):
  opt = build(row)
  params = make_params()
  grads = jax.tree.map(jnp.ones_like, params)
  if row.needs_params:
    with pytest.raises(ValueError, match="params"):
      opt.update(grads, opt.init(params))
  else:
    updates, _ = jax.jit(opt.update)(grads, opt.init(params))
    assert_same_avals(updates, grads)


# ---------------------------------------------------------------------------------------------
# Hyperparameter injection and vmapped sweeps.


@pytest.mark.parametrize("row", ROWS)
def test_inject_hyperparams_gives_identical_updates_and_state(row):
  injected_opt = inject_hyperparams(row.factory)(**row.kwargs)

  @jax.jit
  def both(params, grads):
    return (run_on_gradients(build(row), params, grads),
            run_on_gradients(injected_opt, params, grads))

  plain, (params, state, updates) = both(make_params(), gradient_sequence(3))
  assert "learning_rate" in state.hyperparams  # optax's (Stateful)InjectHyperparamsState
  assert_trees_close(params, plain[0], row.rtol, row.atol)
  assert_trees_close(state.inner_state, plain[1], row.rtol, row.atol)
  assert_trees_close(updates, plain[2], row.rtol, row.atol)


@pytest.mark.parametrize("row", ROWS)
def test_learning_rate_can_be_vmapped(row):
  grads = gradient_sequence(3)
  learning_rates = row.kwargs["learning_rate"] * jnp.asarray([0.5, 1.0, 2.0])

  def run_injected(learning_rate):
    opt = inject_hyperparams(row.factory)(**{**row.kwargs, "learning_rate": learning_rate})
    return run_on_gradients(opt, make_params(), grads)[0]

  def run_plain(learning_rate):
    return run_on_gradients(build(row, learning_rate=learning_rate), make_params(), grads)[0]

  @jax.jit
  def sweep_and_separate_runs(learning_rates):
    # lax.map runs the plain optimizer once per learning rate, one after the other.
    return jax.vmap(run_injected)(learning_rates), jax.lax.map(run_plain, learning_rates)

  swept, separate = sweep_and_separate_runs(learning_rates)
  assert_trees_close(swept, separate, row.rtol, row.atol)
  # The sweep is not trivially constant: different learning rates give different params.
  assert not np.allclose(swept["kernel"][0], swept["kernel"][2])


# ---------------------------------------------------------------------------------------------
# Dtypes and state stability.


@pytest.mark.parametrize("row", ROWS)
def test_updates_keep_the_gradient_dtype(row):
  dtypes = {"kernel": jnp.bfloat16, "conv": jnp.float32, "bias": jnp.bfloat16}
  params = make_params(dtypes=dtypes)
  grads = jax.tree.map(lambda g: g[0], gradient_sequence(1, like=params))
  opt = build(row)
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
  for name, dtype in dtypes.items():
    assert updates[name].dtype == dtype, name
    assert bool(jnp.all(jnp.isfinite(updates[name])))


@pytest.mark.parametrize("row", ROWS)
def test_float16_zero_gradients_give_no_nan(row):
  params = make_params(dtypes={name: jnp.float16 for name in SHAPES})
  zeros = jax.tree.map(jnp.zeros_like, params)
  opt = build(row)

  @jax.jit
  def two_steps(params):
    state = opt.init(params)
    updates, state = opt.update(zeros, state, params)
    params = optax.apply_updates(params, updates)
    updates, state = opt.update(zeros, state, params)
    return updates, state

  updates, state = two_steps(params)
  for leaf in jax.tree.leaves((updates, state)):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  assert all(u.dtype == jnp.float16 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("row", ROWS)
def test_state_structure_and_dtypes_are_stable(row):
  dtypes = {"kernel": jnp.float16, "conv": jnp.bfloat16, "bias": jnp.float32}
  params = make_params(dtypes=dtypes)
  grads = jax.tree.map(lambda g: g[0], gradient_sequence(1, like=params))
  opt = build(row)
  initial = opt.init(params)

  @jax.jit
  def update_and_cond(initial, pred):
    _, updated = opt.update(grads, initial, params)
    # lax.cond requires identical types in both branches: it fails if the update changes them.
    chosen = jax.lax.cond(pred, lambda: opt.update(grads, initial, params)[1], lambda: initial)
    return updated, chosen

  updated, chosen = update_and_cond(initial, jnp.asarray(True))
  assert_same_avals(updated, initial)
  assert_same_avals(chosen, initial)
  assert_trees_close(chosen, updated, rtol=0, atol=0)


@pytest.mark.parametrize("row", ROWS)
def test_init_accepts_abstract_parameters(row):
  params = make_params()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  opt = build(row)
  assert_same_avals(jax.eval_shape(opt.init, abstract), opt.init(params))


# ---------------------------------------------------------------------------------------------
# Wrappers and checkpoints.


@pytest.mark.parametrize("row", ROWS)
def test_gradient_accumulation_with_multisteps(row):
  every = 3
  params = make_params()
  grads = gradient_sequence(every)
  multi = optax.MultiSteps(build(row), every_k_schedule=every)
  opt = build(row)

  @jax.jit
  def accumulate(params):
    state = multi.init(params)
    updates = []
    for t in range(every):
      u, state = multi.update(jax.tree.map(lambda g: g[t], grads), state, params)
      updates.append(u)
    mean_grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    expected, _ = opt.update(mean_grads, opt.init(params), params)
    return updates, expected

  updates, expected = accumulate(params)
  for u in updates[:-1]:  # no update on the micro-steps before the last
    for leaf in jax.tree.leaves(u):
      np.testing.assert_array_equal(leaf, 0.0)
  assert_trees_close(updates[-1], expected, max(row.rtol, 1e-5), max(row.atol, 1e-7))


@pytest.mark.parametrize("row", ROWS)
def test_apply_if_finite_skips_a_nan_gradient(row):
  opt = optax.apply_if_finite(build(row), max_consecutive_errors=5)
  params = make_params()
  grads = gradient_sequence(2)
  good = jax.tree.map(lambda g: g[0], grads)
  bad = jax.tree.map(lambda g: g[1], grads)
  bad["kernel"] = bad["kernel"].at[0, 0].set(jnp.nan)

  @jax.jit
  def good_then_bad(params):
    updates, state = opt.update(good, opt.init(params), params)
    params = optax.apply_updates(params, updates)
    skipped, state_after = opt.update(bad, state, params)
    return params, state, optax.apply_updates(params, skipped), state_after

  params, state, params_after, state_after = good_then_bad(params)
  assert int(state_after.notfinite_count) == 1
  assert_trees_close(params_after, params, rtol=0, atol=0)
  assert_trees_close(state_after.inner_state, state.inner_state, rtol=0, atol=0)


@pytest.mark.parametrize("row", ROWS)
def test_state_round_trips_through_orbax(row, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  opt = build(row)
  params = make_params()
  _, state, _ = jax.jit(lambda p, g: run_on_gradients(opt, p, g))(params, gradient_sequence(2))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "state", jax.eval_shape(opt.init, params))
  assert_same_avals(restored, state)  # NamedTuple types intact, not lists/dicts
  assert_trees_close(restored, state, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Argument validation and the registry.


@pytest.mark.parametrize("row, argument, value", INVALID)
def test_invalid_hyperparameters_raise(row, argument, value):
  with pytest.raises(ValueError, match=argument):
    build(row, **{argument: value})


def test_every_row_is_valid_and_unique():
  names = [row.name for row in OPTIMIZERS]
  assert len(names) == len(set(names))
  slugs = {m.slug for m in registry.all_methods()}
  for row in OPTIMIZERS:
    assert row.slug in slugs, f"row {row.name}: unknown slug {row.slug!r}"
    assert "learning_rate" in row.kwargs, row.name


def test_every_registered_optimizer_and_transform_has_a_row():
  covered = {row.slug for row in OPTIMIZERS}
  registered = registry.all_methods("optimizer") + registry.all_methods("transform")
  missing = [m.slug for m in registered if m.slug not in covered]
  assert not missing, f"add rows to OPTIMIZERS for: {missing}"
