"""Every public symbol's docstring has an `Example:` section, and the examples run (doctest).

Each module whose source holds a `>>>` example is one test (found by reading the files, so
collecting imports nothing); its examples run with `doctest`, each docstring with empty globals
(an example imports what it uses). Examples are meant to be cheap: small arrays, a step or two,
`jax.jit` around anything bigger than a few operations (one compilation is cheaper than many
eager ones), no training runs. They run with most XLA optimizations off (`fast_compile`): every
eager op is a small program whose compilation costs more than its run (measured: 182 s -> 114 s
of CPU for all modules, every printed value unchanged).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
from pathlib import Path

import pytest

from jaxlearn import registry
from tests.train._compile import fast_compile  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxlearn"

# Public symbols whose docstring has no `Example:` section yet (the list may only shrink: a new
# public symbol comes with its example).
WITHOUT_EXAMPLE: frozenset[str] = frozenset()


def _modules_with_examples() -> list[str]:
  names = []
  for path in sorted(PACKAGE.rglob("*.py")):
    if ">>>" in path.read_text():
      parts = path.relative_to(ROOT).with_suffix("").parts
      names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
  return names


@pytest.mark.usefixtures("fast_compile")
@pytest.mark.parametrize("module_name", _modules_with_examples())
def test_docstring_examples_run(module_name):
  module = importlib.import_module(module_name)
  finder = doctest.DocTestFinder(exclude_empty=True)
  flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  runner = doctest.DocTestRunner(optionflags=flags)
  tests = [t for t in finder.find(module, module_name, globs={}) if t.examples]
  assert tests, f"{module_name} has '>>>' in its source but no doctest was found"
  failures = []
  for test in tests:
    runner.run(test, out=failures.append)
  assert runner.summarize(verbose=False).failed == 0, "".join(failures)


# The packages whose public functions and classes (their `__all__`) the documentation lists.
PUBLIC_PACKAGES = (
    "jaxlearn.optim", "jaxlearn.nn", "jaxlearn.nn.linen", "jaxlearn.losses", "jaxlearn.train",
    "jaxlearn.local", "jaxlearn.diagnostics", "jaxlearn.data",
)


def _public_symbols() -> list[str]:
  """Every registered symbol, and every public function and class of the family packages."""
  symbols = [s for m in registry.all_methods() for s in m.symbols if s.startswith("jaxlearn.")]
  for package in PUBLIC_PACKAGES:
    module = importlib.import_module(package)
    for name in module.__all__:
      if inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name)):
        symbols.append(f"{package}.{name}")
  return list(dict.fromkeys(symbols))


def test_every_public_symbol_has_an_example():
  missing = []
  for symbol in _public_symbols():
    doc = inspect.getdoc(registry.resolve(symbol)) or ""
    if "Example:" not in doc and "Examples:" not in doc and symbol not in WITHOUT_EXAMPLE:
      missing.append(symbol)
  assert not missing, f"public symbols without an `Example:` section in their docstring: {missing}"
