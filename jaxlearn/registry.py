"""Every jaxlearn method, collected from the records that live beside their code.

A method's module ends with one record::

  RECORD = registry.record(
      slug="adamp_sgdp",                       # the method's slug in the project's method index
      kind="optimizer",
      title="AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
      reference="arXiv:2006.08217",
      experiment="adamp_scale_invariance",     # experiments/<name>.py, or None
      notes="Deviations from the paper or from popular reference code.",
  )

Only what cannot be derived is written by hand. The rest is derived when the registry collects the
records (on first use, by importing the family packages):

- `symbols`: the module's `__all__`, each under its public path (`jaxlearn.optim.adamp` when the
  family package exports it), then the record's `also` (pieces it is built from that live in other
  modules, or the optax/flax symbol it registers);
- `tests`: `tests/<family>/test_<module>.py` for every jaxlearn module a symbol comes from, the
  family's battery, and the record's `extra_tests`.

`jaxlearn list` prints the registry; `tests/test_registry.py` checks that every symbol imports,
every listed file exists and the README's method table is generated from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "KINDS", "FAMILIES", "Method", "record", "all_methods", "get", "resolve", "optimizer_aliases",
    "markdown_table", "write_readme_table",
]

KINDS = (
    "optimizer",
    "transform",
    "schedule",
    "normalization",
    "layer",
    "loss",
    "regularizer",
    "training_step",
    "local_rule",
    "diagnostic",
    "experiment",
)

# Packages whose modules may hold records, in the order `jaxlearn list` shows them.
FAMILIES = (
    "jaxlearn.optim",
    "jaxlearn.nn",
    "jaxlearn.losses",
    "jaxlearn.train",
    "jaxlearn.local",
    "jaxlearn.diagnostics",
    "jaxlearn.experiments",
)

# The battery every method of a kind passes (relative to the repository root).
BATTERIES = {
    "optimizer": "tests/optim/test_optimizer_battery.py",
    "transform": "tests/optim/test_optimizer_battery.py",
    "schedule": "tests/optim/test_optimizer_battery.py",
    "normalization": "tests/nn/test_layer_battery.py",
    "layer": "tests/nn/test_layer_battery.py",
    "loss": "tests/losses/test_loss_battery.py",
    "regularizer": "tests/losses/test_loss_battery.py",
    "training_step": "tests/train/test_training_step_battery.py",
    "local_rule": "tests/local/test_framework.py",
    "experiment": "tests/test_experiments.py",
}

# The repository root of a source checkout (None in an installed package without tests/).
_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Method:
  """One registered method.

  Attributes:
    slug: the method's slug in the project's method index.
    kind: one of `KINDS`.
    title: the paper title.
    reference: arXiv id or URL of the paper.
    symbols: dotted public paths of the functions and classes that implement it (derived).
    tests: test files, relative to the repository root, that cover it (derived + `extra_tests`).
    experiment: the experiment script, `experiments/<name>.py`, or None.
    notes: known deviations from the paper or from popular reference code.
    pytorch_optimizer: for optimizers, jaxlearn symbol -> the pytorch-optimizer class of the same
      algorithm (used by the parity tests and the benchmark).
    update_extras: names of the extra `update` arguments the method needs, from
      `jaxlearn.optim.extra_args.EXTRA_ARG_NAMES`; harnesses build them with
      `jaxlearn.optim.extra_update_args`.
    module: the module that holds the record.
  """

  slug: str
  kind: str
  title: str
  reference: str
  symbols: tuple[str, ...] = ()
  tests: tuple[str, ...] = ()
  experiment: str | None = None
  notes: str = ""
  pytorch_optimizer: Mapping[str, str] = dataclasses.field(default_factory=dict)
  update_extras: tuple[str, ...] = ()
  module: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"{self.slug}: kind must be one of {KINDS}, got {self.kind!r}")

  def to_json(self) -> dict[str, Any]:
    record = dataclasses.asdict(self)
    for name in ("symbols", "tests", "update_extras"):
      record[name] = list(record[name])
    record["pytorch_optimizer"] = dict(self.pytorch_optimizer)
    return record


@dataclasses.dataclass(frozen=True)
class _Declared:
  """What a module writes by hand; `_collect` turns it into a `Method`."""

  method: Method
  also: tuple[str, ...]
  extra_tests: tuple[str, ...]


def record(
    *,
    slug: str,
    kind: str,
    title: str,
    reference: str,
    experiment: str | None = None,
    notes: str = "",
    also: tuple[str, ...] = (),
    extra_tests: tuple[str, ...] = (),
    pytorch_optimizer: Mapping[str, str] | None = None,
    update_extras: tuple[str, ...] = (),
) -> _Declared:
  """Declares the record of the method implemented by the calling module (assign it to RECORD).

  Args:
    slug, kind, title, reference, notes, pytorch_optimizer, update_extras: see `Method`.
    experiment: the name of the experiment script (`experiments/<experiment>.py`), or None.
    also: dotted paths of further public symbols that belong to the method but live elsewhere
      (the parts it is built from, or the optax/flax symbol it registers).
    extra_tests: test files that the layout does not derive (relative to the repository root).
  """
  method = Method(
      slug=slug, kind=kind, title=title, reference=reference,
      experiment=f"experiments/{experiment}.py" if experiment else None, notes=notes,
      pytorch_optimizer=dict(pytorch_optimizer or {}), update_extras=tuple(update_extras),
  )
  return _Declared(method, tuple(also), tuple(extra_tests))


def resolve(symbol: str) -> Any:
  """Imports a dotted symbol path such as 'jaxlearn.optim.adamp'."""
  module_name, _, attribute = symbol.rpartition(".")
  return getattr(importlib.import_module(module_name), attribute)


def _public_path(module: Any, name: str) -> str:
  """Where users import `module.name` from: the family package (`jaxlearn.optim.adamp`), or its
  `linen` namespace for Linen twins (`jaxlearn.nn.linen.WSConv`), else the module itself."""
  family = importlib.import_module(module.__name__.rpartition(".")[0])
  obj = getattr(module, name)
  namespaces = [family]
  if module.__name__ != f"{family.__name__}.linen":
    try:
      namespaces.append(importlib.import_module(f"{family.__name__}.linen"))
    except ImportError:
      pass
  for namespace in namespaces:
    for exported in getattr(namespace, "__all__", ()):
      if getattr(namespace, exported, None) is obj:
        return f"{namespace.__name__}.{exported}"
  return f"{module.__name__}.{name}"


def _test_file(module_name: str) -> str | None:
  """`tests/<family>/test_<module>.py` for `jaxlearn.<family>.<module>`, if it exists."""
  parts = module_name.split(".")
  if len(parts) != 3 or parts[0] != "jaxlearn":
    return None
  path = f"tests/{parts[1]}/test_{parts[2].lstrip('_')}.py"
  return path if (_ROOT / path).is_file() else None


def _derive(declared: _Declared, module: Any) -> Method:
  exported = getattr(module, "__all__", None)
  if exported is None:
    raise TypeError(f"{module.__name__} has a RECORD but no __all__ to derive its symbols from")
  derived = tuple(_public_path(module, name) for name in exported)
  repeated = [symbol for symbol in declared.also if symbol in derived]
  if repeated:
    raise TypeError(f"{module.__name__}'s RECORD lists {repeated} in also=, but its __all__ "
                    "already exports them (also= is for symbols that live elsewhere)")
  symbols = derived + declared.also
  source_modules = [module.__name__]
  for symbol in declared.also:
    source = inspect.getmodule(resolve(symbol))
    if source is not None and source.__name__ not in source_modules:
      source_modules.append(source.__name__)
  tests = [t for t in map(_test_file, source_modules) if t]
  battery = BATTERIES.get(declared.method.kind)
  if battery and (_ROOT / battery).is_file():
    tests.append(battery)
  tests += [t for t in declared.extra_tests if t not in tests]
  return dataclasses.replace(
      declared.method, symbols=symbols, tests=tuple(dict.fromkeys(tests)), module=module.__name__
  )


def _modules_with_records(package_name: str):
  """Imports the modules of a family package that declare a RECORD (found by reading the source,
  so modules without one, e.g. experiments that need matplotlib, are not imported)."""
  try:
    package = importlib.import_module(package_name)
  except ImportError:  # an optional family whose extras are not installed
    return
  for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
    spec = info.module_finder.find_spec(f"{package_name}.{info.name}")
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
      continue
    if "\nRECORD = " in Path(spec.origin).read_text():
      yield importlib.import_module(f"{package_name}.{info.name}")


@functools.cache
def _collect() -> tuple[Method, ...]:
  methods = []
  for family in FAMILIES:
    for module in _modules_with_records(family):
      methods.append(_derive(module.RECORD, module))
  slugs = [m.slug for m in methods]
  duplicates = sorted({s for s in slugs if slugs.count(s) > 1})
  if duplicates:
    raise ValueError(f"slugs registered twice: {duplicates}")
  return tuple(methods)


def all_methods(kind: str | None = None) -> tuple[Method, ...]:
  """All registered methods, family by family; only those of `kind` if given."""
  if kind is not None and kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return tuple(m for m in _collect() if kind is None or m.kind == kind)


def get(slug: str) -> Method:
  """The record for `slug`; a KeyError with close matches if there is none."""
  methods = _collect()
  for method in methods:
    if method.slug == slug:
      return method
  close = difflib.get_close_matches(slug, [m.slug for m in methods], n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise KeyError(f"no method with slug {slug!r}.{hint} See `jaxlearn list`.")


def optimizer_aliases() -> list[tuple[Method, str]]:
  """(method, symbol) for every registered optimizer alias.

  An alias is a registered function of an "optimizer" method whose first argument is
  `learning_rate`, other than `scale_by_*` transforms and `*_schedule` learning-rate schedules.
  """
  aliases = []
  for method in all_methods("optimizer"):
    for symbol in method.symbols:
      name = symbol.rsplit(".", 1)[-1]
      obj = resolve(symbol)
      if name.startswith("scale_by_") or name.endswith("_schedule") or not inspect.isfunction(obj):
        continue
      if list(inspect.signature(obj).parameters)[:1] == ["learning_rate"]:
        aliases.append((method, symbol))
  return aliases


def markdown_table() -> str:
  """The README's method table (kept in sync by a test; rewrite it with `write_readme_table`)."""
  lines = ["| slug | kind | paper | symbols | experiment |", "|---|---|---|---|---|"]
  for m in all_methods():
    symbols = ", ".join(f"`{s.removeprefix('jaxlearn.')}`" for s in m.symbols)
    experiment = f"`{m.experiment}`" if m.experiment else "-"
    lines.append(f"| `{m.slug}` | {m.kind} | {m.title} ({m.reference}) | {symbols} | {experiment} |")
  return "\n".join(lines)


README_MARKERS = ("<!-- methods:start -->\n", "\n<!-- methods:end -->")


def write_readme_table(readme: str | Path) -> bool:
  """Rewrites the method table between the README's markers; returns whether it changed."""
  path = Path(readme)
  text = path.read_text()
  start, end = README_MARKERS
  if start not in text or end not in text:
    raise ValueError(f"{path} lacks the {start.strip()} / {end.strip()} markers")
  head, rest = text.split(start, 1)
  _, tail = rest.split(end, 1)
  new = head + start + markdown_table() + end + tail
  if new == text:
    return False
  path.write_text(new)
  return True
