"""The battery every jaxlearn optimizer and gradient transformation passes: one data row each.

Adding a row
------------
Append a `Row` to `OPTIMIZERS` (above the marker line at its end); every test below then runs on
it. A row is data, not code:

  Row("adamp", "adamp_sgdp", optim.adamp, {"learning_rate": 0.05}, invalid=(("b1", 1.0),),
      needs_params=True)

  - `factory` is the public alias itself, called as `factory(**kwargs, **static)`. `kwargs` are
    the hyperparameters, injected by `jaxlearn.optim.inject_hyperparams` (masks and keyword-only
    flags among them stay static by that function's convention); `static` are options that must
    stay Python values (a window length, a key) and are named in its `static_args`.
  - A transform that is not a full optimizer names a base optimizer from `BASES`
    (`base="sgd_momentum"`); the battery chains it before the base (`before_base=False`: after,
    for transforms that must come last) and gives the base the row's `learning_rate`.
  - An update that needs more than the gradient names its extra arguments
    (`extra_args=("margins",)`, see `jaxlearn.optim.extra_args`): the battery builds them with
    `extra_update_args` from the loss and batch of each step, never from constants.
  - A check that is ill-defined for the method is skipped by name with the reason
    (`skip={"converges_on_a_quadratic": "..."}`: the test's name without `test_`), which pytest
    reports; nothing is skipped silently.

A registered optimizer or transform must have at least one row whose `slug` is its registry slug
(`test_every_registered_optimizer_and_transform_has_a_row`).

What each row must do (after optax's `alias_test.py` / `contrib/_common_test.py` and
pytorch-optimizer's parameter tests):
  - converge on a quadratic and on a small logistic regression;
  - compile once: no retracing after the first jitted step;
  - run its step with params and state donated (as training loops do), also from a state that
    `init` built eagerly from the very params it then donates (no parameter array as state);
  - ignore unknown keyword arguments to `update`, and raise without `params` if it needs them;
  - under `inject_hyperparams`, give the same updates and (inner) state, and let the learning rate
    be vmapped (a vmapped sweep equals the separate runs and is not constant);
  - give finite updates for a zero and for a rank-one gradient, on tall, wide, conv (HWIO) and
    scan-stacked (L, in, out) kernels and a vector;
  - return updates in the gradients' dtype (float32, bfloat16, float16); give no NaN for float16
    zero gradients; keep the state's structure and dtypes across init, update and `lax.cond`;
  - work inside `optax.MultiSteps`, `optax.apply_if_finite`, `jax.eval_shape` (abstract init) and
    an orbax-checkpoint round trip;
  - reject invalid hyperparameters with a ValueError naming the argument.

Budget: about 1 s of CPU per row (at ~120 methods the default suite must stay under 10 minutes
on a 2-core CI machine). A row compiles six small programs, once each (`RowRun`): its initial
states; the plain step, through which every problem runs as data (quadratic, logistic regression,
gradient sequences, at three learning rates) with params and state donated; the vmapped injected
step; `MultiSteps` inside
`apply_if_finite`; and a `lax.cond` step, traced for a dtype mix and for float16. The tests then
assert on their cached results. Put a new check into one of these programs (a new problem is data
for the plain step), not into a new `jax.jit`. The programs use XLA:CPU's fast-compile options
(`jaxlearn._compile.fast_jit`): on these tiny problems compiling is nearly all the cost, and
the options change results only by float rounding. A module-scoped fixture runs a row's tests one after
another; under pytest-xdist, `--dist loadfile` (pyproject.toml) keeps them on one worker.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import optim, registry
from jaxlearn._compile import fast_jit
from jaxlearn import nn as jnn
from jaxlearn.optim import EXTRA_ARG_NAMES, extra_update_args, inject_hyperparams

PyTree = Any


def matrices_only(params):
  """A callable weight-decay mask: decay leaves with ndim > 1."""
  return jax.tree.map(lambda x: x.ndim > 1, params)


def decaying(factory, steps=300):
  """`factory` whose learning rate decays linearly to 0 over `steps` (the convergence runs), for
  rules whose steps have a fixed length (orthogonalized, normalized, sign): at a constant rate
  they circle the minimum at that distance. Same signature, so injection sees its arguments."""

  def make(learning_rate, **kwargs):
    return factory(optax.linear_schedule(learning_rate, 0.0, steps), **kwargs)

  make.__signature__ = inspect.signature(factory)
  return make


# Base optimizers a transform row is chained with. SGD with momentum by default: optax.adam's
# float16 state turns zero gradients into 0/0 = NaN.
BASES: Mapping[str, Callable[[Any], optax.GradientTransformation]] = {
    "sgd_momentum": lambda learning_rate: optax.sgd(learning_rate, momentum=0.9),
    "adam_float32": lambda learning_rate: optim.compute_in_float32(optax.adam(learning_rate)),
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One optimizer (or transform + base optimizer) configuration under test.

  Attributes:
    name: the pytest id (unique).
    slug: the registry slug of the method this row covers.
    factory: the alias or transform, called as `factory(**kwargs, **static)`.
    kwargs: hyperparameters; must include `learning_rate` (the battery scales it; with a `base`
      it goes to the base).
    invalid: `(argument, bad value)` pairs; building the row with `argument=bad` must raise a
      ValueError whose message names the argument.
    static: options kept static under `inject_hyperparams` (`static_args`): integers that set
      shapes, keys, masks and flags of a transform chained with a base.
    base: for a transform that is not an optimizer, the `BASES` entry it is chained with.
    before_base: the transform comes before the base in the chain (False: after it).
    extra_args: names of extra `update` arguments (`jaxlearn.optim.EXTRA_ARG_NAMES`).
    needs_params: whether `update` requires `params` (then it must raise ValueError without).
    skip: test name without `test_` -> why that check is ill-defined for this method.
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
  static: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  base: str | None = None
  before_base: bool = True
  extra_args: tuple[str, ...] = ()
  needs_params: bool = False
  skip: Mapping[str, str] = dataclasses.field(default_factory=dict)
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
    ("b2", -0.1),
    ("eps", -1e-8),
    ("eps", 0.0),
    ("delta", -0.1),
    ("wd_ratio", 1.5),
    ("weight_decay", -1e-4),
    ("channel_axis", 1.5),
)
_SGDP_INVALID = (
    ("learning_rate", -0.1),
    ("learning_rate", float("nan")),
    ("momentum", 1.0),
    ("momentum", -0.1),
    ("dampening", 1.5),
    ("dampening", 1.1),
    ("eps", -1e-8),
    ("delta", -1.0),
    ("wd_ratio", -0.1),
    ("weight_decay", -1e-4),
)

# AdamP under inject_hyperparams holds b2 as a float32 array, and 1 - b2 then carries a 1e-5
# relative error (1 - float32(0.999)); hence atol=1e-5 on its rows (the same holds for optax.adam,
# and for Grams and AdaPNM, whose b2 is 0.999 too).
OPTIMIZERS: tuple[Row, ...] = (
    Row("adamp", "adamp_sgdp", optim.adamp, {"learning_rate": 0.05}, _ADAMP_INVALID,
        needs_params=True, atol=1e-5),
    Row("adamp_nesterov", "adamp_sgdp", optim.adamp, {"learning_rate": 0.05, "nesterov": True},
        _ADAMP_INVALID, needs_params=True, atol=1e-5),
    Row("adamp_wd_mask", "adamp_sgdp", optim.adamp,
        {"learning_rate": 0.05, "weight_decay": 1e-3, "weight_decay_mask": matrices_only},
        _ADAMP_INVALID, needs_params=True, atol=1e-5),
    Row("sgdp", "adamp_sgdp", optim.sgdp, {"learning_rate": 0.1, "momentum": 0.9}, _SGDP_INVALID,
        needs_params=True),
    Row("sgdp_nesterov", "adamp_sgdp", optim.sgdp,
        {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}, _SGDP_INVALID,
        needs_params=True),
    Row("grams", "grams", optim.grams, {"learning_rate": 0.05},
        (("learning_rate", -1e-3), ("b1", 1.0), ("b1", -0.1), ("b1", float("nan")), ("b2", 1.0),
         ("b2", -0.1), ("eps", -1e-8), ("weight_decay", -1e-4)),
        needs_params=True, atol=1e-5),  # b2 = 0.999, as AdamP
    Row("grams_wd_mask", "grams", optim.grams,
        {"learning_rate": 0.05, "weight_decay": 1e-3, "weight_decay_mask": matrices_only},
        (("weight_decay", -1e-4),), needs_params=True, atol=1e-5),
    # Gravity's step is bounded by lr / (2 max|g|): with this quadratic's O(1) gradients lr 0.1
    # needs ~1000 steps (ratio 0.39 after 300), lr 1.0 converges well within 300.
    Row("gravity", "gravity_optimizer", optim.gravity, {"learning_rate": 1.0},
        (("learning_rate", 0.0), ("learning_rate", -0.1), ("alpha", -0.01), ("beta", 1.0),
         ("beta", -0.1))),
    # `span` sets the state's history length, so it must stay a Python int.
    Row("optimistic_amsgrad", "optimistic_amsgrad", optim.optimistic_amsgrad,
        {"learning_rate": 0.05},
        (("learning_rate", -1e-3), ("b1", 1.0), ("b2", 1.0), ("eps", 0.0), ("ridge", 0.0),
         ("weight_decay", -1e-4), ("span", 0), ("span", 2.5), ("span", True)),
        static={"span": 5}, needs_params=True),
    Row("nag_gs", "nag_gs", optim.nag_gs, {"learning_rate": 0.5, "mu": 1.0, "gamma": 1.5},
        (("learning_rate", -0.1), ("mu", -1.0), ("gamma", 0.0)), needs_params=True),
    # Normalized LR+GD rescales the step by beta = 1 / mean sigma(-margin_i): the battery gives it
    # the margins of each step's loss and batch; tests/optim/test_normalized_lr_gd.py checks the
    # math.
    Row("normalized_lr_gd", "normalized_lr_gd", optim.normalized_lr_gd, {"learning_rate": 0.25},
        (("learning_rate", -1.0),), extra_args=("margins",),
        skip={"converges_on_a_quadratic":
                  "beta = 1 / (1 - exp(-loss)) grows as 1 / loss on a quadratic, so the step "
                  "diverges near the minimum (loss ratio 0.3 after 300 steps): the rule is "
                  "defined for the logistic loss, where it converges"}),
    # ranger21 and the reusable cores it is built from (jaxlearn/optim/ranger21.py, pnm.py,
    # stable_weight_decay.py). The full default Ranger21 has no row: its gradient centralization
    # keeps each output unit's mean weight fixed, which on these tiny problems (a 4-input logistic
    # regression) caps the accuracy at ~0.67; tests/optim/test_ranger21.py covers that default.
    Row("ranger21_no_gc", "ranger21", optim.ranger21,
        {"learning_rate": 0.05, "num_iterations": 300, "use_gc": False,
         "weight_decay_mask": matrices_only},
        (("learning_rate", -1e-3), ("num_iterations", 0), ("b1", 1.0), ("b2", 1.0), ("b0", -0.1),
         ("eps", 0.0), ("weight_decay", -1e-4), ("agc_clipping", 0.0),
         ("norm_loss_factor", -1.0), ("softplus_beta", 0.0), ("lookahead_sync_period", 0),
         ("lookahead_step_size", 1.5), ("warmdown_min_lr", 1.0), ("num_iterations", 2.5),
         ("warmdown_start_pct", 1.2)),
        needs_params=True),
    Row("adapnm", "ranger21", optim.adapnm, {"learning_rate": 0.05, "weight_decay": 1e-4},
        (("learning_rate", -1.0), ("b1", 1.0), ("b2", -0.1), ("b0", -1.0), ("eps", -1.0)),
        needs_params=True, atol=1e-5),  # b2 = 0.999, as AdamP
    Row("pnm", "ranger21", optim.pnm, {"learning_rate": 0.3},
        (("learning_rate", -1.0), ("b1", 1.0), ("b0", -1.0), ("weight_decay", -1.0)),
        needs_params=True),
    Row("adams", "ranger21", optim.adams,
        {"learning_rate": 0.05, "weight_decay": 1e-4, "weight_decay_mask": matrices_only},
        (("learning_rate", -1.0), ("b1", 1.0), ("eps", 0.0), ("weight_decay", -1.0)),
        needs_params=True, rtol=1e-4, atol=1e-5),  # 1/sqrt(v_hat) amplifies vmap's rounding
    # Gradient-projection / LoRA / continual-learning transforms, chained with a base optimizer.
    # ⊥Grad steps are orthogonal to the weights, so ||w|| changes only through second-order
    # terms and the targets (another norm) are approached slowly: ratios 0.05 and 0.6. Base: the
    # paper's Adam, in float32.
    Row("perpgrad_adam", "perpgrad", optim.orthogonalize_gradients,
        {"learning_rate": 0.05, "eps": 1e-30},
        (("eps", 0.0), ("eps", -1.0), ("eps", -1e-30), ("eps", float("nan"))),
        base="adam_float32", needs_params=True, quadratic_ratio=0.05, logistic_ratio=0.6),
    Row("anchor_l2_sgd", "rehearsal_free_cl_l2", optim.decay_to_anchor,
        {"learning_rate": 0.05, "strength": 1e-3}, (("strength", -1.0),), base="sgd_momentum",
        needs_params=True),
    Row("anchor_ewc_masked_sgd", "rehearsal_free_cl_l2", optim.decay_to_anchor,
        {"learning_rate": 0.05, "strength": 1e-3}, (("strength", -1.0),),
        static={"weighted": True, "mask": matrices_only}, base="sgd_momentum", needs_params=True),
    # Half fine-tuning must come last in the chain, so frozen leaves do not move at all.
    Row("hft_sgd", "hft_half_fine_tuning", optim.half_fine_tuning,
        {"learning_rate": 0.05, "fraction": 0.5},
        (("fraction", 1.5), ("fraction", -0.5), ("stage_length", 0), ("seed", 0.5)),
        static={"stage_length": 10}, base="sgd_momentum", before_base=False),
    Row("sora", "sora_sparse_lora", optim.sora,
        {"learning_rate": 0.05, "sparse_lambda": 1e-4, "weight_decay_mask": matrices_only},
        (("learning_rate", -1.0), ("b1", 1.0), ("b2", -0.1), ("eps", 0.0),
         ("weight_decay", -1.0), ("sparse_lambda", -1e-3)), needs_params=True, atol=1e-5),
    # Lion's sign steps are lr per coordinate: lr 0.03 gets the quadratic below 1e-3 in 300 steps.
    Row("lion", "lion", optim.lion, {"learning_rate": 0.03},
        (("learning_rate", -1e-3), ("b1", 1.5), ("b1", float("nan")), ("b2", -0.1),
         ("weight_decay", -1e-4)),
        needs_params=True),
    Row("lion_wd_mask", "lion", optim.lion,
        {"learning_rate": 0.03, "weight_decay": 0.01, "weight_decay_mask": matrices_only},
        (("weight_decay", -1e-4),), needs_params=True),
    Row("novograd", "novograd", optim.novograd, {"learning_rate": 0.01},
        (("learning_rate", -1e-3), ("b1", 1.0), ("b2", 1.0), ("eps", -1e-8),
         ("weight_decay", -1e-4)), atol=1e-5),
    Row("novograd_wd_mask_averaging", "novograd", optim.novograd,
        {"learning_rate": 0.05, "weight_decay": 1e-3, "weight_decay_mask": matrices_only,
         "grad_averaging": True},
        (("weight_decay", -1e-4),), needs_params=True, atol=1e-5),
    # optax-backed transforms (gradient noise, AGC, norm clipping), chained with SGD + momentum.
    Row("gradient_noise_sgd", "gradient_noise", optim.add_gradient_noise,
        {"learning_rate": 0.05, "eta": 1e-4, "gamma": 0.55}, (("eta", -1.0), ("gamma", -0.5)),
        static={"key": 0}, base="sgd_momentum"),
    Row("agc_sgd", "nfnet_agc", optim.adaptive_grad_clip,
        {"learning_rate": 0.05, "clipping": 0.1, "eps": 1e-3}, (("clipping", 0.0), ("eps", -1.0)),
        base="sgd_momentum", needs_params=True),
    Row("clip_by_global_norm_sgd", "grad_norm_clipping", optim.clip_by_global_norm,
        {"learning_rate": 0.05, "max_norm": 1.0}, (("max_norm", 0.0), ("max_norm", -1.0)),
        base="sgd_momentum"),
    # The induced-metric optimiser's three official forms; `log` scales by the loss (value=).
    Row("induced_metric", "induced_metric_optimiser", optim.induced_metric,
        {"learning_rate": 0.1},
        (("learning_rate", -0.1), ("momentum", 1.0), ("xi", -0.1), ("beta", 1.0),
         ("beta_rms", -0.1), ("eps", -1e-8), ("weight_decay", -1e-4), ("metric", "sqrt")),
        needs_params=True),
    Row("induced_metric_log", "induced_metric_optimiser", optim.induced_metric,
        {"learning_rate": 0.1, "metric": "log"}, extra_args=("value",), needs_params=True),
    Row("induced_metric_rms_wd_mask", "induced_metric_optimiser", optim.induced_metric,
        {"learning_rate": 0.05, "metric": "rms", "weight_decay": 1e-3,
         "weight_decay_mask": matrices_only}, needs_params=True, atol=1e-5),
    # SMB evaluates the loss at a trial point and, on rejection, its gradient there (value_fn).
    Row("smb", "smb_model_building", optim.smb, {"learning_rate": 0.5},
        (("learning_rate", -0.1), ("eta", 0.0), ("c", -0.1), ("gamma", 1.5), ("beta", 0.0),
         ("max_learning_rate", 0.0), ("steps_per_epoch", 0), ("autoschedule", 1)),
        extra_args=("value", "value_fn"), needs_params=True,
        skip={"gradient_accumulation_with_multisteps":
                  "SMB's trial-point loss and gradient come from value_fn of the last "
                  "micro-batch, not from the batch of the averaged gradient: accumulation is "
                  "ill-defined for it"}),
    # XGrad: the battery differentiates at params, so these rows check the wrapped optimizers'
    # mechanics; tests/optim/test_xgrad.py checks the gradient at the predicted weights. MultiSteps
    # is not skipped: the prediction theta + s * u_t reads only the state, which MultiSteps keeps
    # between emitted steps, so every micro-batch gradient is taken at the same predicted weights.
    Row("xgrad_sgd", "xgrad_weight_prediction", optim.xgrad_sgd,
        {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        (("learning_rate", -0.1), ("momentum", 1.0), ("dampening", -0.1), ("weight_decay", -1.0),
         ("prediction_steps", -1.0), ("prediction_steps", float("nan"))),
        needs_params=True),
    Row("xgrad_adamw_wd_mask", "xgrad_weight_prediction", optim.xgrad_adamw,
        {"learning_rate": 0.05, "weight_decay": 1e-3, "weight_decay_mask": matrices_only},
        (("b1", 1.0), ("b2", -0.1), ("eps", -1e-8), ("weight_decay", -1.0)),
        needs_params=True, atol=1e-5),  # b2 = 0.999, as AdamP
    # TRP wraps its base optimizer (its nuclear term enters before the momentum, its truncation
    # moves the weights), so the row builds it around SGD + momentum. The mask targets the conv
    # kernel (the default skips the first conv, the only one here). Truncating that kernel to its
    # 0.9-energy rank every other step keeps it off its full-rank quadratic target: ratio 0.033
    # after 300 steps (2.7e-7 with energy 0.9999).
    Row("trp_sgd", "trained_rank_pruning",
        lambda learning_rate, strength, energy_threshold, *, period, decomposition="nc", mask=None:
        optim.trained_rank_pruning(optax.sgd(learning_rate, momentum=0.9), strength,
                                   energy_threshold, period=period, decomposition=decomposition,
                                   mask=mask),
        {"learning_rate": 0.05, "strength": 1e-3, "energy_threshold": 0.9},
        (("strength", -1.0), ("energy_threshold", 1.0), ("energy_threshold", 0.0), ("period", 0),
         ("decomposition", "nd")),
        static={"period": 2, "mask": lambda params: jax.tree.map(lambda p: p.ndim == 4, params)},
        needs_params=True, quadratic_ratio=0.05),
    Row("mask_sparsity_sgd", "mask_sparsity", optim.mask_sparsity,
        {"learning_rate": 0.05, "strength": 1e-3}, (("strength", -1.0), ("penalty", "l0")),
        static={"mask": {"dense": {"kernel": False, "bias": np.array([True, False, True])},
                         "wide": False, "conv": False, "scan": False}},
        base="sgd_momentum", needs_params=True),
    # PSGD (XMat, LRA): the Newton rows fit P to the Hessian-vector products the battery builds
    # from each step's loss (H v of the step's own batch, paired under MultiSteps with the averaged
    # gradient: a valid one-batch curvature sample, as PSGD's criterion E[h^T P h + v^T P^-1 v]
    # never pairs h with the gradient, so the check is kept). The linear losses have H = 0: no
    # initial scale can be set, P stays I. The LRA row is in the whitening form (a Newton LRA row
    # cost ~2 s more CPU to compile); tests/optim/test_psgd.py checks all four forms' math.
    Row("psgd_newton_xmat", "psgd_lie_group", optim.psgd, {"learning_rate": 0.5},
        (("learning_rate", -1.0), ("b1", 1.0), ("preconditioner_lr", 1.5),
         ("preconditioner_lr", -0.1), ("preconditioner_update_probability", 1.5),
         ("preconditioner_init_scale", 0.0), ("weight_decay", -1e-4),
         ("preconditioner", "kron"), ("preconditioner_type", "fisher"), ("rank", -1)),
        extra_args=("Hvp",), needs_params=True),
    Row("psgd_whitening_xmat", "psgd_lie_group", optim.psgd,
        {"learning_rate": 0.05, "preconditioner_type": "whitening"},
        (("learning_rate", -1.0), ("b1", -0.1), ("step_normalizer", "3rd")), needs_params=True),
    Row("psgd_whitening_lra_wd_mask", "psgd_lie_group", optim.psgd,
        {"learning_rate": 0.05, "preconditioner": "lra", "preconditioner_type": "whitening",
         "rank": 4, "weight_decay": 1e-4, "weight_decay_mask": matrices_only},
        (("rank", 2.5), ("weight_decay", -1.0)), needs_params=True),
    # μP's per-leaf learning rates (MuAdam), after Adam's normalization: matrix-like leaves (two
    # infinite axes) get lr / width_mult = lr / 2, the others lr.
    Row("mup_adam", "mup_feature_learning", jnn.scale_by_mup, {"learning_rate": 0.05},
        (("base_shapes", {}), ("optimizer", "lion")),
        static={"optimizer": "adam", "base_shapes": {
            "dense": {"kernel": jnn.BaseShape((2, None)), "bias": jnn.BaseShape((None,))},
            "wide": {"kernel": jnn.BaseShape((1, 3))},
            "conv": {"kernel": jnn.BaseShape((None, None, 1, 1))},
            "scan": {"kernel": jnn.BaseShape((None, None, 2))}}},
        base="adam_float32", before_base=False, atol=1e-5),
    # ASGO and DASGO rescale every matrix update to RMS 0.2 (official code): fixed-size steps of
    # 0.2 lr per entry, small enough at lr 0.05 for the quadratic to end below 1e-4 of its start
    # (no looser ratio needed). A small weight decay: the official 0.1 would move the quadratic's
    # optimum towards 0. One row for the slug (a matrix rule's row costs ~3 s of CPU): DASGO
    # shares the transform's machinery; tests/optim/test_asgo.py checks its math, the eigh root,
    # the sum, zero and rank-one gradients on every layout.
    Row("asgo_wd_mask", "asgo", optim.asgo,
        {"learning_rate": 0.05, "weight_decay": 1e-3, "weight_decay_mask": matrices_only},
        (("learning_rate", -1e-3), ("momentum", 1.0), ("beta2", -0.1), ("eps", -1.0),
         ("weight_decay", -0.1), ("ns_steps", 0), ("accumulate", "mean"),
         ("inverse_root", "svd"), ("fallback", "adam")), needs_params=True),
    # Fira: rank 2 fits the smallest matrix (the wide 2 x 6 kernel); gap 5 refreshes the
    # projector inside the convergence runs. (GaLore, residual=False: tests/optim/test_fira.py.)
    Row("fira_wd_mask", "fira", optim.fira,
        {"learning_rate": 0.05, "rank": 2, "update_proj_gap": 5, "weight_decay": 1e-3,
         "weight_decay_mask": matrices_only},
        (("learning_rate", -1e-3), ("b1", 1.0), ("b2", -0.1), ("eps", -1e-8), ("alpha", 0.0),
         ("weight_decay", -1e-4), ("rank", 0), ("rank", 1.5), ("update_proj_gap", 0),
         ("side", "left"), ("residual", "yes"), ("fallback", "adam")),
        needs_params=True, atol=1e-5),  # b2 = 0.999, as AdamP
    # BTT's per-core learning rates go through the shared per-leaf transform (a prefix tree here).
    Row("btt_per_leaf_adam", "btt_structured_layers", optim.scale_by_per_leaf,
        {"learning_rate": 0.05}, (("multipliers", {"dense": -1.0}), ("multipliers", {})),
        static={"multipliers": {"dense": {"kernel": 2.0, "bias": 1.0}, "wide": 0.5, "conv": 1.5,
                                "scan": 0.75}},
        base="adam_float32", before_base=False, atol=1e-5),
    # AdaGO's orthogonalized steps decay through the accumulated clipped gradient norms
    # (AdaGrad-Norm: alpha_t ~ lr min(|g_t|, gamma) / v_t), so no schedule is needed; but their
    # sum grows only like 2 lr sqrt(t): at lr 0.05, 300 steps move a matrix by ~1.7 in spectral
    # norm, short of the quadratic's targets (ratio 0.26). lr 0.5 reaches 1e-4.
    Row("adago_wd_mask", "adago", optim.adago,
        {"learning_rate": 0.5, "weight_decay": 1e-3, "weight_decay_mask": matrices_only},
        (("learning_rate", -1e-3), ("momentum", 1.0), ("gamma", 0.0), ("eps", -1e-4),
         ("v0", 0.0), ("weight_decay", -0.1), ("ns_steps", 0), ("fallback", "adamw")),
        needs_params=True),
    # The trust-region method with momentum: fixed-length steps, so a decaying learning rate.
    Row("lmo_momentum_muon", "non_euclidean_trust_region_momentum",
        decaying(optim.lmo_momentum), {"learning_rate": 0.05},
        (("alpha", 0.0), ("alpha", 1.5), ("weight_decay", -1.0), ("norm", "l1"),
         ("order", "nesterov"), ("ns_steps", 0), ("radius", -1.0), ("fallback", "adam")),
        needs_params=True),
    # Orthogonal-SGDM order, l2 (whole tree) and the constrained form: a radius-20 ball holds the
    # quadratic's optimum (norm ~8); the mask keeps the vectors out of the shrinkage.
    Row("lmo_momentum_l2_orthogonalize_first_constrained", "non_euclidean_trust_region_momentum",
        decaying(optim.lmo_momentum),
        {"learning_rate": 0.1, "norm": "l2", "order": "orthogonalize_first", "radius": 20.0,
         "weight_decay_mask": matrices_only}, needs_params=True),
    # Add new optimizers above this line
)


def factory_of(row: Row) -> Callable[..., optax.GradientTransformation]:
  """The row's optimizer as a function of its hyperparameters, `learning_rate` included."""
  if row.base is None:
    return row.factory

  def with_base(learning_rate, **hyperparams):
    transform, base = row.factory(**hyperparams), BASES[row.base](learning_rate)
    return optax.chain(transform, base) if row.before_base else optax.chain(base, transform)

  # The transform's signature plus `learning_rate`: inject_hyperparams reads it.
  parameters = inspect.signature(row.factory).parameters.values()
  learning_rate = inspect.Parameter("learning_rate", inspect.Parameter.POSITIONAL_OR_KEYWORD)
  with_base.__signature__ = inspect.Signature([learning_rate, *parameters])
  return with_base


def build(row: Row, **overrides) -> optax.GradientTransformation:
  """The row's plain optimizer (hyperparameters as Python values), with `overrides`."""
  return factory_of(row)(**{**row.kwargs, **row.static, **overrides})


def build_injected(row: Row, **overrides) -> optax.GradientTransformation:
  """The row's optimizer under `jaxlearn.optim.inject_hyperparams`, with `overrides`."""
  injected = inject_hyperparams(factory_of(row), static_args=tuple(row.static))
  return injected(**{**row.kwargs, **row.static, **overrides})


# ---------------------------------------------------------------------------------------------
# Shared problems. The parameters cover the layouts optimizers special-case: a tall Dense kernel
# (in > out) with its bias, a wide one (in < out), a conv kernel (HWIO) and scan-stacked layers
# (L, in, out). `dense` is also the logistic regression's model.

SHAPES = {
    "dense": {"kernel": (4, 3), "bias": (3,)},
    "wide": {"kernel": (2, 6)},
    "conv": {"kernel": (2, 2, 2, 3)},
    "scan": {"kernel": (2, 3, 4)},
}


def _is_shape(x):
  return isinstance(x, tuple)


FLOAT32 = jax.tree.map(lambda _: jnp.float32, SHAPES, is_leaf=_is_shape)
FLOAT16 = jax.tree.map(lambda _: jnp.float16, SHAPES, is_leaf=_is_shape)
# Every dtype on a matrix, and a float32 vector: updates must keep each leaf's dtype.
MIXED = {
    "dense": {"kernel": jnp.bfloat16, "bias": jnp.float32},
    "wide": {"kernel": jnp.float16},
    "conv": {"kernel": jnp.float32},
    "scan": {"kernel": jnp.bfloat16},
}
LR_SCALES = (0.5, 1.0, 2.0)  # the vmapped sweep; the middle run is the row's learning rate
MIDDLE = LR_SCALES.index(1.0)
# Layouts the quadratic leaves flat (zero curvature), as the battery's original quadratic did:
# unit-wise methods (Ranger21's AGC, Gravity) need far more than 300 steps on fan-in-2 units.
# Every other check runs on them.
QUADRATIC_FREE = ("wide", "scan")
SEQUENCE_LENGTH = 3  # steps of the random-gradient checks (MultiSteps accumulates all of them)


def _tree(fn, dtypes: PyTree = FLOAT32) -> PyTree:
  """`fn(shape)` (NumPy) on every leaf of SHAPES, as device arrays of `dtypes`."""
  return jax.tree.map(lambda shape, dtype: jnp.asarray(np.asarray(fn(shape)).astype(dtype)),
                      SHAPES, dtypes, is_leaf=_is_shape)


def normal_tree(seed: int, dtypes: PyTree = FLOAT32) -> PyTree:
  rng = np.random.default_rng(seed)
  return _tree(lambda shape: rng.normal(size=shape), dtypes)


def rank_one_tree(seed: int) -> PyTree:
  """Each leaf u ⊗ v, viewed as (prod(shape[:-1]), shape[-1]); a vector is its own u."""
  rng = np.random.default_rng(seed)
  return _tree(lambda shape: np.outer(rng.normal(size=math.prod(shape[:-1])),
                                      rng.normal(size=shape[-1])).reshape(shape))


class Problem(NamedTuple):
  """The loss `c + g·(q - p) + ½ Σ h (q - t)² + w · CE(q; inputs, labels)` of the params q.

  p is the point where the step is taken. One family covers every problem of the battery, so one
  compiled step serves them all: the quadratic (h, t), the logistic regression (w = 1) and the
  random-gradient sequences (g and c = log 2: a linear loss whose gradient is exactly g and whose
  value is the logistic loss at margin 0, so `value` and `margins` are defined too).
  """

  value: jax.Array
  gradient: PyTree
  curvature: PyTree
  target: PyTree
  logistic: jax.Array
  inputs: jax.Array
  labels: jax.Array


@functools.cache
def logistic_data():
  """A separable 3-class problem on 4 inputs, and the start of the logistic regression."""
  rng = np.random.default_rng(4)
  inputs = rng.normal(size=(128, 4)).astype(np.float32)
  labels = np.argmax(inputs @ rng.normal(size=(4, 3)), axis=1).astype(np.int32)
  start = normal_tree(0)
  start["dense"] = {"kernel": jnp.asarray(0.1 * rng.normal(size=(4, 3)), jnp.float32),
                    "bias": jnp.zeros(3, jnp.float32)}
  return inputs, labels, start


def make_problem(value=0.0, gradient=None, curvature=None, target=None, logistic=0.0,
                 dtypes=FLOAT32) -> Problem:
  zeros = _tree(np.zeros, dtypes)
  inputs, labels, _ = logistic_data()
  return Problem(jnp.float32(value), zeros if gradient is None else gradient,
                 zeros if curvature is None else curvature, zeros if target is None else target,
                 jnp.float32(logistic), jnp.asarray(inputs), jnp.asarray(labels))


def linear_problem(gradient) -> Problem:
  dtypes = jax.tree.map(lambda g: g.dtype, gradient)
  return make_problem(value=math.log(2.0), gradient=gradient, dtypes=dtypes)


@functools.cache
def problems() -> dict[str, Any]:
  """Every problem of the battery, built once in NumPy (they are the same for every row)."""
  numpy = lambda tree: jax.tree.map(np.asarray, tree)
  curvature = jax.tree.map(lambda x: 0.5 + 1.5 * np.abs(np.sin(7.0 * x)), numpy(normal_tree(3)))
  for name in QUADRATIC_FREE:
    curvature[name] = jax.tree.map(np.zeros_like, curvature[name])
  sequence = [numpy(normal_tree(10 + t)) for t in range(SEQUENCE_LENGTH)]
  nan = jax.tree.map(np.copy, sequence[1])
  nan["dense"]["kernel"][0, 0] = np.nan
  device = lambda tree: jax.tree.map(jnp.asarray, tree)
  return {
      "quadratic": make_problem(curvature=device(curvature), target=normal_tree(2)),
      "logistic": make_problem(logistic=1.0),
      "sequence": [linear_problem(device(g)) for g in sequence],
      "mean": linear_problem(device(jax.tree.map(lambda *g: sum(g) / len(g), *sequence))),
      "nan": linear_problem(device(nan)),
      "zero": linear_problem(_tree(np.zeros)),
      "rank_one": linear_problem(rank_one_tree(5)),
      "mixed": linear_problem(normal_tree(10, MIXED)),
      "zero_float16": linear_problem(_tree(np.zeros, FLOAT16)),
  }


def problem_loss(problem: Problem, anchor: PyTree) -> Callable[..., jax.Array]:
  """`loss(params, inputs, labels)`: the problem's loss, a mean over the batch's examples."""

  def loss(params, inputs, labels):
    linear = jax.tree.map(lambda g, q, p: jnp.sum(g * (q - p)), problem.gradient, params, anchor)
    quadratic = jax.tree.map(lambda h, q, t: 0.5 * jnp.sum(h * (q - t) ** 2), problem.curvature,
                             params, problem.target)
    logits = inputs @ params["dense"]["kernel"] + params["dense"]["bias"]
    cross_entropy = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return (problem.value + sum(jax.tree.leaves(linear)) + sum(jax.tree.leaves(quadratic))
            + problem.logistic * cross_entropy)

  return loss


def extras_at(names, params: PyTree, problem: Problem) -> dict[str, Any]:
  """The extra `update` arguments `names`, from the problem's loss and batch at `params`."""
  if not names:
    return {}
  loss = problem_loss(problem, jax.lax.stop_gradient(params))
  return extra_update_args(names, loss, params, problem.inputs, problem.labels)


@functools.cache
def _gradient_program():
  """`(params, problem) -> gradient`: the same for every row, so compiled once per dtype mix."""

  def gradient(params, problem):
    loss = problem_loss(problem, jax.lax.stop_gradient(params))
    return jax.grad(loss)(params, problem.inputs, problem.labels)

  return _jit(gradient)


def gradient_at(params: PyTree, problem: Problem) -> PyTree:
  return _gradient_program()(params, problem)


_CALLABLE_EXTRAS = ("value_fn", "Hvp")


@functools.cache
def _array_extras_program(names: tuple[str, ...]):
  return _jit(lambda params, problem: extras_at(names, params, problem))


def concrete_extras(names, params: PyTree, problem: Problem) -> dict[str, Any]:
  """`extras_at` outside jit: the arrays from one program shared by every row, no eager ops."""
  arrays = tuple(name for name in names if name not in _CALLABLE_EXTRAS)
  extras = dict(_array_extras_program(arrays)(params, problem))
  callables = [name for name in names if name in _CALLABLE_EXTRAS]
  extras.update(extras_at(callables, params, problem))  # closures: nothing is computed here
  return {name: extras[name] for name in names}


def quadratic_loss(params) -> float:
  quadratic = problems()["quadratic"]
  terms = jax.tree.map(
      lambda h, p, t: 0.5 * np.sum(np.asarray(h, np.float64) * (np.asarray(p, np.float64)
                                                                 - np.asarray(t)) ** 2),
      quadratic.curvature, params, quadratic.target)
  return float(sum(jax.tree.leaves(terms)))


def logistic_loss_and_accuracy(params) -> tuple[float, float]:
  inputs, labels, _ = logistic_data()
  logits = (inputs.astype(np.float64) @ np.asarray(params["dense"]["kernel"], np.float64)
            + np.asarray(params["dense"]["bias"], np.float64))
  top = logits.max(axis=1, keepdims=True)
  log_normalizer = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
  loss = np.mean(log_normalizer - logits[np.arange(len(labels)), labels])
  return float(loss), float(np.mean(np.argmax(logits, axis=1) == labels))


# ---------------------------------------------------------------------------------------------
# The compiled programs of one row, and their cached results.


def _jit(fn, donate_argnums=()):
  """Compiled with XLA:CPU's fast-compile options (`jaxlearn._compile.fast_jit`)."""
  return fast_jit(fn, donate_argnums=donate_argnums)


def _copies(tree: PyTree) -> PyTree:
  """New buffers with the values of `tree`, to donate while `tree` itself stays valid."""
  return jax.tree.map(jnp.copy, tree)


class RowRun:
  """One row's compiled programs, each compiled once, and the results the tests assert on.

  Every property is computed on first use and cached, so each test triggers only the programs it
  needs and a failing program fails only the tests that use it.
  """

  def __init__(self, row: Row):
    self.row = row
    self.learning_rates = [scale * row.kwargs["learning_rate"] for scale in LR_SCALES]
    self.plain_traces = 0

  def optimizer(self, learning_rate=None) -> optax.GradientTransformation:
    """The plain optimizer, at the row's learning rate unless given one (maybe traced)."""
    if learning_rate is None:
      return build(self.row)
    return build(self.row, learning_rate=learning_rate)

  def wrapped_optimizer(self, learning_rate=None) -> optax.GradientTransformation:
    """The plain optimizer inside `optax.MultiSteps` inside `optax.apply_if_finite`."""
    accumulated = optax.MultiSteps(self.optimizer(learning_rate),
                                   every_k_schedule=SEQUENCE_LENGTH)
    # As ExtraArgs: apply_if_finite drops the extra arguments of a plain GradientTransformation.
    accumulated = optax.GradientTransformationExtraArgs(accumulated.init, accumulated.update)
    return optax.apply_if_finite(accumulated, max_consecutive_errors=5)

  @functools.cached_property
  def initial_states(self) -> dict[str, PyTree]:
    """Every initial state the programs below start from, from one program.

    Not eager: an init that draws random numbers (Gravity) would compile each op on its own.
    """

    def initial_states(learning_rates, start, logistic_start, mixed, float16):
      # The plain state per learning rate, and at the logistic regression's start: vmapped.
      starts = jax.tree.map(lambda *x: jnp.stack(x), *[start] * len(LR_SCALES), logistic_start)
      plain = jax.vmap(lambda lr, p: self.optimizer(lr).init(p))(
          jnp.append(learning_rates, learning_rates[MIDDLE]), starts)
      states = {f"plain_{i}": take(plain, i) for i in range(len(LR_SCALES))}
      states["logistic"] = take(plain, len(LR_SCALES))
      states["injected"] = jax.vmap(
          lambda lr: build_injected(self.row, learning_rate=lr).init(start))(learning_rates)
      states["wrapped"] = self.wrapped_optimizer(learning_rates[MIDDLE]).init(start)
      states["mixed"] = self.optimizer().init(mixed)
      states["float16"] = self.optimizer().init(float16)
      return states

    return _jit(initial_states)(jnp.asarray(self.learning_rates, jnp.float32), normal_tree(0),
                                logistic_data()[2], normal_tree(0, MIXED),
                                normal_tree(0, FLOAT16))

  # The plain step: every problem, at any learning rate, through one compiled program.

  @functools.cached_property
  def plain_step(self):
    """`(lr, params, state, grads, problem) -> (params, state, updates)`, lr traced; params and
    state are donated, as in a training loop."""

    def step(learning_rate, params, state, grads, problem):
      self.plain_traces += 1  # runs only while tracing
      extras = extras_at(self.row.extra_args, params, problem)
      updates, state = self.optimizer(learning_rate).update(grads, state, params, **extras)
      return optax.apply_updates(params, updates), state, updates

    return _jit(step, donate_argnums=(1, 2))

  def run(self, problems_in_order, start="plain_1", lr_index=MIDDLE, keep_all=True):
    """(params, state, updates) after each step (only the last without `keep_all`), from the
    initial state named `start`.

    The step donates params and state, so it gets copies of those that must outlive it: the
    cached start, and with `keep_all` every step's outputs.
    """
    params = logistic_data()[2] if start == "logistic" else normal_tree(0)
    params, state = _copies((params, self.initial_states[start]))
    learning_rate = jnp.float32(self.learning_rates[lr_index])
    outputs = []
    for problem in problems_in_order:
      grads = gradient_at(params, problem)
      needed = problem if self.row.extra_args else None  # fewer arguments to pass 600 times
      if keep_all and outputs:
        params, state = _copies((params, state))
      params, state, updates = self.plain_step(learning_rate, params, state, grads, needed)
      outputs = outputs + [(params, state, updates)] if keep_all else [(params, state, updates)]
    return outputs

  @functools.cached_property
  def quadratic(self) -> tuple[float, float]:
    """The quadratic loss at the start and after `steps` steps."""
    final = self.run([problems()["quadratic"]] * self.row.steps, keep_all=False)[-1][0]
    return quadratic_loss(normal_tree(0)), quadratic_loss(final)

  @functools.cached_property
  def logistic(self) -> tuple[tuple[float, float], tuple[float, float]]:
    """(loss, accuracy) of the logistic regression at the start and after `steps` steps."""
    final = self.run([problems()["logistic"]] * self.row.steps, start="logistic",
                     keep_all=False)[-1][0]
    return logistic_loss_and_accuracy(logistic_data()[2]), logistic_loss_and_accuracy(final)

  @functools.cached_property
  def sequences(self) -> list[list[tuple[PyTree, PyTree, PyTree]]]:
    """Per learning rate in LR_SCALES, the outputs of each step of the gradient sequence."""
    return [self.run(problems()["sequence"], start=f"plain_{i}", lr_index=i)
            for i in range(len(LR_SCALES))]

  @functools.cached_property
  def special_gradients(self) -> dict[str, PyTree]:
    """The first update for a zero and for a rank-one gradient."""
    return {name: self.run([problems()[name]])[0][2] for name in ("zero", "rank_one")}

  # The injected optimizer, vmapped over the learning rate: one program for both checks.

  @functools.cached_property
  def injected(self) -> tuple[PyTree, PyTree, PyTree]:
    """Params, state and last updates of the vmapped injected runs of the gradient sequence."""

    def step(learning_rate, params, state, grads, problem):
      extras = extras_at(self.row.extra_args, params, problem)
      optimizer = build_injected(self.row, learning_rate=learning_rate)
      updates, state = optimizer.update(grads, state, params, **extras)
      return optax.apply_updates(params, updates), state, updates

    swept_step = _jit(jax.vmap(step, in_axes=(0, 0, 0, None, None)))
    learning_rates = jnp.asarray(self.learning_rates, jnp.float32)
    start = normal_tree(0)
    params = jax.tree.map(lambda x: jnp.stack([x] * len(LR_SCALES)), start)
    state = self.initial_states["injected"]
    for problem in problems()["sequence"]:  # linear losses: the gradient is the same everywhere
      grads = gradient_at(start, problem)
      params, state, updates = swept_step(learning_rates, params, state, grads, problem)
    return params, state, updates

  # Wrappers: optax.MultiSteps inside optax.apply_if_finite, one program for both checks.

  @functools.cached_property
  def wrapped(self) -> dict[str, Any]:
    """Updates and states of `SEQUENCE_LENGTH` micro-steps, then of a step with a NaN gradient."""

    def step(learning_rate, params, state, grads, problem):
      extras = extras_at(self.row.extra_args, params, problem)
      updates, state = self.wrapped_optimizer(learning_rate).update(grads, state, params,
                                                                    **extras)
      return optax.apply_updates(params, updates), state, updates

    step = _jit(step)
    learning_rate = jnp.float32(self.learning_rates[MIDDLE])
    params = normal_tree(0)
    state = self.initial_states["wrapped"]
    updates, states = [], []
    for problem in problems()["sequence"] + [problems()["nan"]]:
      params, state, u = step(learning_rate, params, state, gradient_at(params, problem), problem)
      updates.append(u)
      states.append((params, state))
    # MultiSteps' last update must equal one plain step on the mean gradient (these linear losses
    # give the mean loss the same value and margins as each micro-batch).
    return {"updates": updates, "states": states,
            "expected": self.run([problems()["mean"]])[0][2]}

  # Low-precision dtypes: one step function, traced for a dtype mix and for all-float16.

  @functools.cached_property
  def typed_step(self):
    """A step whose new state passes through `lax.cond`, which requires the types to persist."""

    def step(params, state, grads, problem, apply):
      extras = extras_at(self.row.extra_args, params, problem)
      updates, new_state = self.optimizer().update(grads, state, params, **extras)
      state = jax.lax.cond(apply, lambda: new_state, lambda: state)
      return optax.apply_updates(params, updates), state, updates

    return _jit(step)

  @functools.cached_property
  def mixed_dtypes(self):
    """Initial state, state and updates after one step on the `MIXED` dtypes."""
    params = normal_tree(0, MIXED)
    initial = self.initial_states["mixed"]
    problem = problems()["mixed"]
    _, state, updates = self.typed_step(params, initial, gradient_at(params, problem), problem,
                                        jnp.bool_(True))
    return initial, state, updates

  @functools.cached_property
  def float16_zero_gradients(self):
    """Initial state, state and updates after two steps with zero float16 gradients."""
    params = normal_tree(0, FLOAT16)
    initial = state = self.initial_states["float16"]
    problem = problems()["zero_float16"]
    for _ in range(2):
      params, state, updates = self.typed_step(params, state, gradient_at(params, problem),
                                               problem, jnp.bool_(True))
    return initial, state, updates


ROWS = [pytest.param(row, id=row.name) for row in OPTIMIZERS]
INVALID = [
    pytest.param(row, argument, value, id=f"{row.name}-{argument}={value!r}")
    for row in OPTIMIZERS
    for argument, value in row.invalid
]


@pytest.fixture(scope="module", params=ROWS)
def run(request) -> RowRun:
  """The row's programs and results. Module scope: pytest runs a row's tests one after another,
  then frees them."""
  return RowRun(request.param)


@pytest.fixture(autouse=True)
def skip_ill_defined_checks(request):
  """Skips a row's test named in its `skip`, with the row's reason."""
  if "run" in request.fixturenames:
    row = request.getfixturevalue("run").row
    check = request.function.__name__.removeprefix("test_")
    if check in row.skip:
      pytest.skip(f"{row.name}: {row.skip[check]}")


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


def assert_all_finite(tree, what):
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64))), (what, jax.tree_util.keystr(path))


def take(tree, index):
  """Entry `index` of every leaf's leading axis (NumPy for arrays, traced inside a program)."""
  return jax.tree.map(lambda x: x[index] if isinstance(x, jax.core.Tracer)
                      else np.asarray(x)[index], tree)


# ---------------------------------------------------------------------------------------------
# Convergence.


def test_converges_on_a_quadratic(run):
  initial, final = run.quadratic
  assert final < run.row.quadratic_ratio * initial, (initial, final)


def test_converges_on_logistic_regression(run):
  (initial, _), (final, accuracy) = run.logistic
  assert final < run.row.logistic_ratio * initial, (initial, final)
  assert accuracy >= 0.9


# ---------------------------------------------------------------------------------------------
# Compilation and the update signature.


def test_no_recompilation_after_the_first_step(run):
  run.sequences  # pylint: disable=pointless-statement  # 9 steps, from three fresh states
  run.special_gradients  # pylint: disable=pointless-statement
  assert run.plain_traces == 1


def test_init_state_can_be_donated_with_the_params(run):
  """`init` copies what it keeps of the params, and puts no array into the state twice.

  Every plain step donates params and state, as training loops do; a state that holds a
  parameter array itself (`init` returned it, e.g. through `jnp.asarray` of the same dtype), or
  one array in two places, makes such a step fail with "Attempt to donate the same buffer twice".
  Checked on the traced `init` (running it eagerly would compile op by op): an output that is an
  input, or one value (variable or literal) output twice, is that case.
  """
  traced = jax.make_jaxpr(build(run.row).init)(normal_tree(0)).jaxpr
  seen, shared = {id(v) for v in traced.invars}, []
  for index, leaf in enumerate(traced.outvars):
    if id(leaf) in seen:
      shared.append(index)
    seen.add(id(leaf))
  assert not shared, f"state leaves {shared} are parameter arrays or repeated; copy them"


def test_unknown_extra_arguments_are_ignored(run):
  """Unknown keywords, and the extra arguments the row does not declare, change nothing."""
  row = run.row
  optimizer = build(row)
  params = normal_tree(0)
  problem = problems()["sequence"][0]
  grads = gradient_at(params, problem)
  everything = concrete_extras(EXTRA_ARG_NAMES, params, problem)
  declared = {name: everything[name] for name in row.extra_args}
  unknown = {name: value for name, value in everything.items() if name not in row.extra_args}
  unknown["unexpected_extra_arg"] = jnp.ones(2)
  state = run.initial_states[f"plain_{MIDDLE}"]

  def update(**extra):
    return lambda g, s, p: optimizer.update(g, s, p, **declared, **extra)

  plain = jax.make_jaxpr(update())(grads, state, params)
  extra = jax.make_jaxpr(update(**unknown))(grads, state, params)
  same_program = str(plain.jaxpr) == str(extra.jaxpr) and len(plain.consts) == len(
      extra.consts) and all(np.array_equal(a, b) for a, b in zip(plain.consts, extra.consts))
  if not same_program:  # different programs may still compute the same values
    assert_trees_close(jax.jit(update(**unknown))(grads, state, params),
                       jax.jit(update())(grads, state, params), rtol=0, atol=0)


def test_params_requirement(run):
  row = run.row
  optimizer = build(row)
  params = normal_tree(0)
  problem = problems()["sequence"][0]
  grads, extras = gradient_at(params, problem), concrete_extras(row.extra_args, params, problem)
  state = run.initial_states[f"plain_{MIDDLE}"]
  without_params = lambda g, s: optimizer.update(g, s, **extras)
  if row.needs_params:
    with pytest.raises(ValueError, match="params"):
      jax.eval_shape(without_params, grads, state)
  else:
    updates, _ = jax.eval_shape(without_params, grads, state)
    assert_same_avals(updates, grads)


# ---------------------------------------------------------------------------------------------
# Hyperparameter injection and vmapped sweeps.


def test_inject_hyperparams_gives_identical_updates_and_state(run):
  params, state, updates = take(run.injected, MIDDLE)
  plain = run.sequences[MIDDLE][-1]
  assert "learning_rate" in state.hyperparams  # optax's (Stateful)InjectHyperparamsState
  assert_trees_close(params, plain[0], run.row.rtol, run.row.atol)
  assert_trees_close(state.inner_state, plain[1], run.row.rtol, run.row.atol)
  assert_trees_close(updates, plain[2], run.row.rtol, run.row.atol)


def test_learning_rate_can_be_vmapped(run):
  swept = run.injected[0]
  for index, separate in enumerate(run.sequences):
    assert_trees_close(take(swept, index), separate[-1][0], run.row.rtol, run.row.atol)
  # The sweep is not trivially constant: different learning rates give different params.
  assert any(not np.allclose(leaf[0], leaf[-1]) for leaf in jax.tree.leaves(swept))


# ---------------------------------------------------------------------------------------------
# Special gradients, dtypes and state stability.


def test_zero_and_rank_one_gradients_give_finite_updates(run):
  for name, updates in run.special_gradients.items():
    assert_all_finite(updates, name)


def test_updates_keep_the_gradient_dtype(run):
  _, _, updates = run.mixed_dtypes
  for (path, update), dtype in zip(jax.tree_util.tree_leaves_with_path(updates),
                                   jax.tree.leaves(MIXED)):
    assert update.dtype == dtype, jax.tree_util.keystr(path)
  assert_all_finite(updates, "updates")


def test_float16_zero_gradients_give_no_nan(run):
  _, state, updates = run.float16_zero_gradients
  assert_all_finite((updates, state), "updates and state")
  assert all(u.dtype == jnp.float16 for u in jax.tree.leaves(updates))


def test_state_structure_and_dtypes_are_stable(run):
  # Both steps passed the state through lax.cond, which already requires identical types.
  for initial, state, _ in (run.mixed_dtypes, run.float16_zero_gradients):
    assert_same_avals(state, initial)


def test_init_accepts_abstract_parameters(run):
  params = normal_tree(0)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  initial = run.initial_states[f"plain_{MIDDLE}"]  # the concrete init, computed under jit
  assert_same_avals(jax.eval_shape(build(run.row).init, abstract), initial)


# ---------------------------------------------------------------------------------------------
# Wrappers and checkpoints.


def test_gradient_accumulation_with_multisteps(run):
  updates = run.wrapped["updates"][:SEQUENCE_LENGTH]
  for u in updates[:-1]:  # no update on the micro-steps before the last
    for leaf in jax.tree.leaves(u):
      np.testing.assert_array_equal(leaf, 0.0)
  assert_trees_close(updates[-1], run.wrapped["expected"], max(run.row.rtol, 1e-5),
                     max(run.row.atol, 1e-7))


def test_apply_if_finite_skips_a_nan_gradient(run):
  (params, state), (params_after, state_after) = run.wrapped["states"][-2:]
  assert int(state_after.notfinite_count) == 1
  assert_trees_close(params_after, params, rtol=0, atol=0)
  assert_trees_close(state_after.inner_state, state.inner_state, rtol=0, atol=0)


@pytest.fixture(scope="module")
def checkpointer():
  ocp = pytest.importorskip("orbax.checkpoint")
  with ocp.StandardCheckpointer() as checkpointer:
    yield checkpointer


def test_state_round_trips_through_orbax(run, checkpointer, tmp_path):
  state = run.sequences[MIDDLE][1][1]  # after two steps
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  abstract = jax.eval_shape(build(run.row).init, normal_tree(0))
  restored = checkpointer.restore(tmp_path / "state", abstract)
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
    assert row.base is None or row.base in BASES, row.name
    assert set(row.extra_args) <= set(EXTRA_ARG_NAMES), row.name
    assert all(callable(globals().get(f"test_{check}")) for check in row.skip), row.name
    inspect.signature(factory_of(row)).bind(**row.kwargs, **row.static)  # known arguments


def test_every_registered_optimizer_and_transform_has_a_row():
  covered = {row.slug for row in OPTIMIZERS}
  registered = registry.all_methods("optimizer") + registry.all_methods("transform")
  missing = [m.slug for m in registered if m.slug not in covered]
  assert not missing, f"add rows to OPTIMIZERS for: {missing}"
