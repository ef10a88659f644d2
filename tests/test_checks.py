"""Bad hyperparameters are rejected when an optimizer is built, for every registered alias:
None, text, NaN and infinity included (nothing is clamped, nothing fails later with an unrelated
error)."""

import inspect
import math

import pytest

from jaxlearn import _checks, registry

# jaxlearn's own aliases (a record may also register optax's alias of the same algorithm).
ALIASES = [symbol for _, symbol in registry.optimizer_aliases() if symbol.startswith("jaxlearn.")]
# Arguments a harness must choose (no default) and the value it passes.
REQUIRED = {"num_iterations": 100}


def _float_hyperparameters(symbol):
  """Keyword arguments whose default is a finite float: each must reject infinity."""
  parameters = inspect.signature(registry.resolve(symbol)).parameters.values()
  return [p.name for p in parameters
          if isinstance(p.default, float) and not isinstance(p.default, bool)
          and math.isfinite(p.default) and p.name != "learning_rate"]


def _build(symbol, **overrides):
  factory = registry.resolve(symbol)
  required = {n: REQUIRED[n] for n, p in inspect.signature(factory).parameters.items()
              if p.default is p.empty and n in REQUIRED}
  learning_rate = overrides.pop("learning_rate", 1e-2)
  return factory(learning_rate, **{**required, **overrides})


@pytest.mark.parametrize("symbol", ALIASES)
@pytest.mark.parametrize("bad", [None, "0.01", float("nan"), float("inf")])
def test_learning_rate_must_be_a_finite_number_or_schedule(symbol, bad):
  with pytest.raises(ValueError, match="learning_rate"):
    _build(symbol, learning_rate=bad)


@pytest.mark.parametrize("symbol", [s for s in ALIASES if _float_hyperparameters(s)])
def test_infinite_hyperparameters_are_rejected(symbol):
  for name in _float_hyperparameters(symbol):
    for bad in (float("inf"), -float("inf")):
      with pytest.raises(ValueError, match=name):
        _build(symbol, **{name: bad})


def test_check_range_messages():
  with pytest.raises(ValueError, match=r"eps must be in \(0, inf\), got inf"):
    _checks.check_positive("eps", float("inf"))
  with pytest.raises(ValueError, match="b1 must be a number or a schedule, got None"):
    _checks.check_unit_interval("b1", None)
  with pytest.raises(ValueError, match="must be a number or a schedule, got '0.1'"):
    _checks.check_non_negative("learning_rate", "0.1")
  _checks.check_non_negative("learning_rate", lambda step: 0.1)  # a schedule is checked later
  _checks.check_range("x", -3.0, None, 0.0)
