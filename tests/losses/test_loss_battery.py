"""The battery every jaxlearn loss passes: one row per loss function in `CASES`.

Adding a loss is one `LossCase` above the marker line: the function, an independent float64
NumPy reference, and data fields saying what it accepts: `targets` (which of integer "labels",
"one_hot" and "soft" probability targets its second argument takes; empty for a loss that is not
a classification loss, which then gives `make_inputs` and `bad_shape`), `weights` (per-example
weights or a boolean mask) and `default_reduction` (None for a loss without `reduction`). A loss
whose math overflows at logits of +-1e4 goes in `EXEMPT_FROM_LARGE_LOGITS` with the reason.
Every registered method of kind "loss" or "regularizer" must have a row.

For every row and every target form it supports:
  * the value against the reference (logits of scale 1 and 10), in float32, eager and under `jit`;
  * the gradient against central finite differences of the reference, in float64;
  * finite values and gradients at logits of +-1e4 (equal to the reference) and for bfloat16
    logits (returned in bfloat16, close to float32 on the same rounded logits);
  * a ValueError naming the argument for mismatched shapes, concrete labels out of range or not
    integers, and concrete targets that are not probability rows; under `jit`, where they cannot
    be inspected, NaN (not a clamped value) for that example's loss and gradient only;
  * integer labels give what their one-hot targets give (in the row itself, or in `one_hot_row`);
  * with `weights`: all ones equal no weights; a zero weight removes an example (its loss and its
    gradient); scaling the weights by c scales "none" and "sum" by c and leaves "mean" unchanged;
    the weighted reductions match the reference (mean = sum(w l) / sum(w), 0 when every weight is
    0; see `jaxlearn.losses._common`); a boolean mask equals 0/1 weights; invalid concrete weights
    raise, invalid traced ones give NaN;
  * with `reduction`: "none" has the batch shape, "sum" == "mean" * batch size, an unknown
    reduction raises.

CPU budget: about 1.5 s per row (measured on 2 loaded cores). Everything a row computes under `jit`
is one program, `program(case)`, compiled once per row and input dtype and reused for every scale,
target form, weight vector and invalid input: every reduction, the weighted variants, gradients
and the bfloat16 path are its outputs. Besides it, a row compiles its kernel for one eager call
and one float64 gradient. A new check should add an output to `program` (a new input shape or
dtype is a new compilation) and read values with NumPy (every eager jnp op compiles).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn import losses, registry

Inputs = tuple[np.ndarray, ...]
FORMS = ("labels", "one_hot", "soft")


@dataclasses.dataclass(frozen=True)
class LossCase:
  """One loss function under test.

  Attributes:
    name: the pytest id.
    slug: the registry slug of the method the loss belongs to.
    loss: `loss(first, *rest, [weights=..., reduction=...])`; per-example losses by default unless
      `default_reduction` says otherwise. `first` (logits, predictions or parameters) is the input
      differentiated and scaled.
    reference: `reference(*inputs) -> per-example losses`, an independent float64 NumPy
      transcription of the paper's equations, given the inputs as passed to `loss`.
    targets: for a classification loss `loss(logits, targets)`: the forms its second argument
      takes: "labels" (integer class indices of shape logits.shape[:-1]), "one_hot" and "soft"
      (probability rows of the shape of logits). Empty for other losses.
    weights: whether `loss` takes `weights=`, per-example weights or a boolean mask.
    default_reduction: the default of `loss`'s `reduction=` ("none", "mean" or "sum"); None if it
      has no such argument.
    one_hot_row: the name of the row computing the same loss from probability targets, if this
      row's loss takes only labels.
    make_inputs: for a loss without `targets`: `make_inputs(rng, scale) -> inputs` (NumPy).
    bad_shape: for a loss without `targets`: `bad_shape(inputs) -> (inputs with mismatched
      shapes, argument name)`.
  """

  name: str
  slug: str
  loss: Callable[..., jax.Array]
  reference: Callable[..., np.ndarray]
  targets: tuple[str, ...] = ()
  weights: bool = False
  default_reduction: str | None = None
  one_hot_row: str | None = None
  make_inputs: Callable[[np.random.Generator, float], Inputs] | None = None
  bad_shape: Callable[[Inputs], tuple[Inputs, str]] | None = None


# Independent references (float64 NumPy, from the papers' equations).


def _stablemax_log_probs(logits):
  """log(s(x) / sum s(x)) with the paper's s (arXiv:2501.04697)."""
  x = np.asarray(logits, np.float64)
  s = np.where(x >= 0, x + 1, 1 / (1 - np.minimum(x, 0)))
  return np.log(s / s.sum(-1, keepdims=True))


def _stablemax_ce_reference(logits, labels):
  return -_stablemax_log_probs(logits)[np.arange(len(labels)), labels]


def _stablemax_ce_probs_reference(logits, targets):
  return -(np.asarray(targets, np.float64) * _stablemax_log_probs(logits)).sum(-1)


CASES = [
    LossCase(
        name="stablemax_cross_entropy",
        slug="stablemax",
        loss=losses.stablemax_cross_entropy,
        reference=_stablemax_ce_reference,
        targets=("labels",),
        weights=True,
        default_reduction="none",
        one_hot_row="stablemax_cross_entropy_with_probs",
    ),
    LossCase(
        name="stablemax_cross_entropy_with_probs",
        slug="stablemax",
        loss=losses.stablemax_cross_entropy_with_probs,
        reference=_stablemax_ce_probs_reference,
        targets=("one_hot", "soft"),
        weights=True,
        default_reduction="none",
    ),
    # Add new losses above this line
]

# Rows whose math overflows at logits of +-1e4: name -> why (the check is skipped, with the reason).
EXEMPT_FROM_LARGE_LOGITS: dict[str, str] = {}

BY_NAME = {case.name: case for case in CASES}
BATCH, CLASSES = 4, 5


def _forms(case: LossCase) -> tuple[str, ...]:
  return case.targets or ("inputs",)


def _params(select=lambda case, form: True):
  return [
      pytest.param(case, form, id=f"{case.name}-{form}")
      for case in CASES
      for form in _forms(case)
      if select(case, form)
  ]


ALL = _params()
CLASSIFICATION = _params(lambda case, form: form in FORMS)
WEIGHTED = _params(lambda case, form: case.weights)
REDUCED = _params(lambda case, form: case.default_reduction is not None)


def _id(case: LossCase) -> str:
  return case.name


# Inputs, made with NumPy: the first one float32, labels int32.


def _inputs(case: LossCase, form: str, seed: int, scale: float = 1.0) -> Inputs:
  rng = np.random.default_rng(seed)
  if form == "inputs":
    return tuple(_float32(a) for a in case.make_inputs(rng, scale))
  logits = (rng.normal(size=(BATCH, CLASSES)) * scale).astype(np.float32)
  labels = rng.integers(0, CLASSES, size=BATCH).astype(np.int32)
  if form == "labels":
    return logits, labels
  if form == "one_hot":
    return logits, np.eye(CLASSES, dtype=np.float32)[labels]
  return logits, rng.dirichlet(np.ones(CLASSES), size=BATCH).astype(np.float32)


def _float32(a):
  a = np.asarray(a)
  return a.astype(np.int32) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)


def _batch_shape(case: LossCase, inputs: Inputs) -> tuple[int, ...]:
  return jax.eval_shape(functools.partial(_call, case), inputs[0], inputs[1:]).shape


def _weights(case: LossCase, inputs: Inputs) -> np.ndarray:
  """Weights in [0.5, 2): some above 1 and some below, for the mask check."""
  shape = _batch_shape(case, inputs)
  w = np.random.default_rng(11).uniform(0.5, 2.0, size=shape).astype(np.float32)
  w.reshape(-1)[:2] = [1.5, 0.75][: w.size]
  return w


def _with_first(array: np.ndarray, value) -> np.ndarray:
  """A copy of `array` whose first example (first entry, or first row for a row `value`) is
  `value`."""
  array = np.array(array)
  array[(0,) * (array.ndim - np.ndim(value))] = value
  return array


# The row's compiled program.


def _call(case: LossCase, first, rest, weights=None, reduction="none"):
  options = {} if weights is None else {"weights": weights}
  if case.default_reduction is not None:
    options["reduction"] = reduction
  elif reduction != "none":
    raise ValueError(f"{case.name} has no reduction")
  return case.loss(first, *rest, **options)


@functools.cache
def program(name: str) -> Callable[..., dict[str, jax.Array]]:
  """`program(name)(first, rest, weights)`: every jitted output the checks of a row read."""
  case = BY_NAME[name]
  reductions = ("none", "mean", "sum") if case.default_reduction is not None else ("none",)

  def evaluate(first, rest, weights):
    call = functools.partial(_call, case)
    summed = lambda z: jnp.sum(call(z, rest).astype(jnp.float32))
    low = first.astype(jnp.bfloat16)
    out = {
        "none": call(first, rest),
        "grad": jax.grad(summed)(first),
        "bf16": call(low, rest),
        "bf16_grad": jax.grad(summed)(low),
        "bf16_as_f32": call(low.astype(jnp.float32), rest),
    }
    for reduction in reductions[1:]:
      out[reduction] = call(first, rest, reduction=reduction)
    if case.weights:
      for reduction in reductions:
        out[f"{reduction}_w"] = call(first, rest, weights, reduction)
      out["mask"] = call(first, rest, weights > 1, reductions[-1])  # a boolean mask
      mean = "mean" if case.default_reduction is not None else "none"  # "none": summed
      out["grad_w"] = jax.grad(lambda z: jnp.sum(call(z, rest, weights, mean)))(first)
    return out

  return jax.jit(evaluate)


def _run(case: LossCase, inputs: Inputs, weights: np.ndarray | None = None) -> dict[str, Any]:
  """The row's program on concrete inputs; outputs as NumPy arrays (bfloat16 kept)."""
  if weights is None:
    weights = np.ones(_batch_shape(case, inputs), np.float32)
  out = program(case.name)(inputs[0], tuple(inputs[1:]), weights)
  return {key: np.asarray(value) for key, value in out.items()}


def _reference(case: LossCase, inputs: Inputs) -> np.ndarray:
  return np.asarray(case.reference(*inputs), np.float64)


# Values and gradients.


@pytest.mark.parametrize("case, form", ALL)
def test_value_matches_reference(case, form):
  for scale in (1.0, 10.0):
    inputs = _inputs(case, form, seed=0, scale=scale)
    expected = _reference(case, inputs)
    eager = case.loss(*inputs)  # with the default options
    assert eager.dtype == jnp.float32
    reduce = {"mean": np.mean, "sum": np.sum}.get(case.default_reduction, lambda v: v)
    np.testing.assert_allclose(eager, reduce(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_run(case, inputs)["none"], expected, rtol=1e-5, atol=1e-6)


@functools.cache
def _float64_gradient(name: str):
  return jax.jit(jax.grad(lambda first, rest: jnp.sum(_call(BY_NAME[name], first, rest))))


@pytest.mark.parametrize("case, form", ALL)
def test_gradient_matches_central_differences(case, form):
  inputs = _inputs(case, form, seed=1, scale=2.0)
  first, rest = np.asarray(inputs[0], np.float64), inputs[1:]
  with jax.enable_x64(True):
    as_x64 = lambda a: jnp.asarray(a, jnp.float64 if a.dtype == np.float32 else a.dtype)
    grad = np.asarray(_float64_gradient(case.name)(as_x64(first), tuple(map(as_x64, rest))))
  step = 1e-6
  numeric = np.zeros_like(first)
  for index in np.ndindex(first.shape):
    plus, minus = first.copy(), first.copy()
    plus[index] += step
    minus[index] -= step
    numeric[index] = (
        case.reference(plus, *rest).sum() - case.reference(minus, *rest).sum()
    ) / (2 * step)
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case, form", ALL)
def test_large_logits_give_finite_values_and_gradients(case, form):
  if case.name in EXEMPT_FROM_LARGE_LOGITS:
    pytest.skip(EXEMPT_FROM_LARGE_LOGITS[case.name])
  inputs = _inputs(case, form, seed=2)
  signs = np.where(np.random.default_rng(3).random(inputs[0].shape) < 0.5, -1.0, 1.0)
  extreme = ((signs * 1e4).astype(np.float32),) + inputs[1:]
  out = _run(case, extreme, _weights(case, extreme) if case.weights else None)
  for key, value in out.items():
    assert np.all(np.isfinite(np.asarray(value, np.float32))), f"{key} is not finite"
  np.testing.assert_allclose(out["none"], _reference(case, extreme), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, form", ALL)
def test_bfloat16_logits_are_finite_and_close_to_float32(case, form):
  out = _run(case, _inputs(case, form, seed=4, scale=3.0))
  assert out["bf16"].dtype == jnp.bfloat16 and out["bf16_grad"].dtype == jnp.bfloat16
  values = np.asarray(out["bf16"], np.float32)
  assert np.all(np.isfinite(values)) and np.all(np.isfinite(np.asarray(out["bf16_grad"], float)))
  # Computed in float32 and rounded once: within bfloat16's resolution of the float32 loss.
  np.testing.assert_allclose(values, out["bf16_as_f32"], rtol=1e-2, atol=1e-2)


# Invalid inputs.


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_mismatched_shapes_raise(case):
  form = _forms(case)[0]
  inputs = _inputs(case, form, seed=5)
  if form == "inputs":
    bad, argument = case.bad_shape(inputs)
  elif form == "labels":
    bad, argument = (inputs[0], inputs[1][:-1]), "labels"
  else:
    bad, argument = (inputs[0], inputs[1][:, :-1]), "targets"
  with pytest.raises(ValueError, match=argument):
    case.loss(*bad)
  if case.weights:
    with pytest.raises(ValueError, match="weights"):
      case.loss(*inputs, weights=np.ones(_batch_shape(case, inputs) + (2,), np.float32))


def _invalid_first_example(form: str, inputs: Inputs) -> list[tuple[Inputs, str]]:
  """Inputs whose first example's labels or targets are invalid, with the error to expect."""
  logits, target = inputs
  if form == "labels":
    return [((logits, _with_first(target, value)), r"labels must .*\[") for value in (CLASSES, -1)]
  negative = np.array(target)
  negative[0] = 0.0
  negative[0, :2] = [1.5, -0.5]  # still sums to 1: only the sign is wrong
  cases = [((logits, negative), "targets must")]
  if form == "soft":
    cases.append(((logits, _with_first(target, target[0] * 1.5)), "targets must"))
  return cases


@pytest.mark.parametrize("case, form", CLASSIFICATION)
def test_concrete_invalid_labels_or_targets_raise(case, form):
  inputs = _inputs(case, form, seed=6)
  for bad, match in _invalid_first_example(form, inputs):
    with pytest.raises(ValueError, match=match):
      case.loss(*bad)
  if form == "labels":
    with pytest.raises(ValueError, match="labels must be integer"):
      case.loss(inputs[0], inputs[1].astype(np.float32))


@pytest.mark.parametrize("case, form", CLASSIFICATION)
def test_traced_invalid_labels_or_targets_give_nan_not_a_clamped_loss(case, form):
  good = _inputs(case, form, seed=6)
  expected = _run(case, good)
  for bad, _ in _invalid_first_example(form, good):
    out = _run(case, bad)
    assert np.isnan(out["none"][0]) and np.all(np.isnan(out["grad"][0]))
    np.testing.assert_allclose(out["none"][1:], expected["none"][1:], rtol=1e-6)
    assert np.all(np.isfinite(out["grad"][1:]))
    if case.default_reduction is not None:
      assert np.isnan(out["mean"]) and np.isnan(out["sum"])
    if case.weights and case.default_reduction is not None:  # a zero weight does not hide it
      assert np.isnan(_run(case, bad, _with_first(_weights(case, bad), 0.0))["mean_w"])


# Target forms, weights and reductions.


@pytest.mark.parametrize("case", [c for c in CASES if "labels" in c.targets], ids=_id)
def test_integer_labels_equal_their_one_hot_targets(case):
  logits, labels = _inputs(case, "labels", seed=7)
  one_hot = np.eye(CLASSES, dtype=np.float32)[labels]
  twin = BY_NAME[case.one_hot_row] if case.one_hot_row else case
  if "one_hot" not in twin.targets:
    pytest.skip(f"{case.name} has no one-hot form (set one_hot_row)")
  weights = _weights(case, (logits, labels)) if case.weights and twin.weights else None
  from_labels = _run(case, (logits, labels), weights)
  from_one_hot = _run(twin, (logits, one_hot), weights)
  for key in from_labels.keys() & from_one_hot.keys():
    np.testing.assert_allclose(np.asarray(from_labels[key], np.float32),
                               np.asarray(from_one_hot[key], np.float32),
                               rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("case, form", WEIGHTED)
def test_weights(case, form):
  inputs = _inputs(case, form, seed=8)
  w = _weights(case, inputs)
  per_example = _reference(case, inputs)
  reduced = case.default_reduction is not None
  out = _run(case, inputs, w)
  # Against the reference: none = w * l, sum = sum(w l), mean = sum(w l) / sum(w).
  np.testing.assert_allclose(out["none_w"], w * per_example, rtol=1e-5, atol=1e-6)
  if reduced:
    np.testing.assert_allclose(out["sum_w"], np.sum(w * per_example), rtol=1e-5)
    np.testing.assert_allclose(out["mean_w"], np.sum(w * per_example) / np.sum(w), rtol=1e-5)
  # Scaling every weight by 2.5 scales "none" and "sum" by 2.5 and leaves "mean" unchanged.
  scaled = _run(case, inputs, 2.5 * w)
  np.testing.assert_allclose(scaled["none_w"], 2.5 * out["none_w"], rtol=1e-6)
  if reduced:
    np.testing.assert_allclose(scaled["sum_w"], 2.5 * out["sum_w"], rtol=1e-6)
    np.testing.assert_allclose(scaled["mean_w"], out["mean_w"], rtol=1e-6)
  # A boolean mask equals weights of 0 and 1.
  reduction = "sum" if reduced else "none"
  np.testing.assert_allclose(out["mask"], _run(case, inputs, (w > 1).astype(np.float32))[
      f"{reduction}_w"], rtol=1e-6)

  ones = _run(case, inputs)  # weights of all ones equal no weights
  for reduction in ("none", "mean", "sum") if reduced else ("none",):
    np.testing.assert_allclose(ones[f"{reduction}_w"], ones[reduction], rtol=1e-6, atol=1e-7)

  # A zero weight removes the example: no loss, no gradient, not in the mean.
  w0 = _with_first(w, 0.0)
  removed = _run(case, inputs, w0)
  first_example = (0,) * w.ndim
  assert removed["none_w"][first_example] == 0 and np.all(removed["grad_w"][first_example] == 0)
  if reduced:
    expected = np.sum(w0 * per_example) / np.sum(w0)
    np.testing.assert_allclose(removed["mean_w"], expected, rtol=1e-5)
    empty = _run(case, inputs, np.zeros_like(w))  # every weight 0: mean 0, gradient 0
    assert empty["mean_w"] == 0 and np.all(empty["grad_w"] == 0)

  # Invalid traced weights make that example NaN (concrete ones raise: next test).
  for value in (-1.0, np.nan, np.inf):
    bad = _run(case, inputs, _with_first(w, value))
    assert np.isnan(bad["none_w"][first_example]), value
    assert np.sum(~np.isfinite(bad["none_w"])) == 1, value
    if reduced:
      assert np.isnan(bad["mean_w"]) and np.isnan(bad["sum_w"]), value


@pytest.mark.parametrize("case", [c for c in CASES if c.weights], ids=_id)
def test_concrete_invalid_weights_raise(case):
  inputs = _inputs(case, _forms(case)[0], seed=9)
  w = _weights(case, inputs)
  for bad in (_with_first(w, -1.0), _with_first(w, np.nan), _with_first(w, np.inf)):
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
      case.loss(*inputs, weights=bad)
  with pytest.raises(ValueError, match="weights must be real numbers"):
    case.loss(*inputs, weights=w.astype(np.complex64))


@pytest.mark.parametrize("case, form", REDUCED)
def test_reductions_are_consistent(case, form):
  inputs = _inputs(case, form, seed=10)
  out = _run(case, inputs, _weights(case, inputs) if case.weights else None)
  batch_shape = _batch_shape(case, inputs)
  assert out["none"].shape == batch_shape and out["mean"].shape == out["sum"].shape == ()
  np.testing.assert_allclose(out["sum"], out["mean"] * np.prod(batch_shape), rtol=1e-6)
  if case.weights:
    w = _weights(case, inputs)
    np.testing.assert_allclose(out["sum_w"], out["mean_w"] * np.sum(w), rtol=1e-6)
  with pytest.raises(ValueError, match="reduction"):
    case.loss(*inputs, reduction="average")


def test_every_registered_loss_and_regularizer_has_a_row():
  covered = {case.slug for case in CASES}
  registered = registry.all_methods("loss") + registry.all_methods("regularizer")
  missing = sorted(m.slug for m in registered if m.slug not in covered)
  assert not missing, f"add a LossCase for: {missing}"
  unknown = sorted(covered - {m.slug for m in registered})
  assert not unknown, f"rows whose slug is not registered: {unknown}"
  for case in CASES:
    assert set(case.targets) <= set(FORMS), f"{case.name}: unknown target form"
    assert case.targets or (case.make_inputs and case.bad_shape), f"{case.name}: no inputs"
    assert case.default_reduction in (None, "none", "mean", "sum"), case.name
    assert case.one_hot_row is None or case.one_hot_row in BY_NAME, case.name
