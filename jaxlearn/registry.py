"""The one place where every jaxlearn method is registered.

A record names the method by its catalogue slug (`../shared/catalogue/INDEX.md`), its kind, the
paper it comes from, the public symbols that implement it, and the tests and experiment that cover
it. `tests/test_registry.py` checks that every symbol imports and every listed file exists, and
that the README's method table is generated from this list. `jaxlearn list` prints it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Mapping

KINDS = (
    "optimizer",
    "transform",
    "schedule",
    "normalization",
    "layer",
    "loss",
    "regularizer",
    "local_rule",
    "diagnostic",
)


@dataclasses.dataclass(frozen=True)
class Method:
  """One registered method.

  Attributes:
    slug: the catalogue slug (INDEX.md).
    kind: one of `KINDS`.
    title: the paper title, as in the seed files.
    reference: arXiv id or URL of the paper.
    symbols: dotted paths of the public functions or classes.
    tests: test files (relative to the repository root) that cover the method.
    experiment: the experiment script (relative to the repository root), or None.
    notes: known deviations from the paper or from popular reference code.
    pytorch_optimizer: for optimizers, jaxlearn symbol -> pytorch-optimizer class name of the same
      algorithm (used by the parity tests and the benchmark).
  """

  slug: str
  kind: str
  title: str
  reference: str
  symbols: tuple[str, ...]
  tests: tuple[str, ...]
  experiment: str | None = None
  notes: str = ""
  pytorch_optimizer: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"{self.slug}: kind must be one of {KINDS}, got {self.kind!r}")

  def to_json(self) -> dict[str, Any]:
    record = dataclasses.asdict(self)
    record["symbols"] = list(self.symbols)
    record["tests"] = list(self.tests)
    record["pytorch_optimizer"] = dict(self.pytorch_optimizer)
    return record


_METHODS: tuple[Method, ...] = (
    Method(
        slug="adamp_sgdp",
        kind="optimizer",
        title=(
            "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights"
        ),
        reference="arXiv:2006.08217",
        symbols=(
            "jaxlearn.optim.adamp",
            "jaxlearn.optim.sgdp",
            "jaxlearn.optim.scale_by_adamp",
            "jaxlearn.optim.scale_by_sgdp",
        ),
        tests=("tests/optim/test_adamp.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/adamp_scale_invariance.py",
        pytorch_optimizer={"jaxlearn.optim.adamp": "AdamP", "jaxlearn.optim.sgdp": "SGDP"},
    ),
    Method(
        slug="weight_standardization_bcn",
        kind="normalization",
        title=(
            "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization"
        ),
        reference="arXiv:1903.10520",
        symbols=(
            "jaxlearn.nn.weight_standardize",
            "jaxlearn.nn.WSConv",
            "jaxlearn.nn.WSLinear",
            "jaxlearn.nn.BatchChannelNorm",
            "jaxlearn.nn.linen.WSConv",
            "jaxlearn.nn.linen.WSDense",
            "jaxlearn.nn.linen.BatchChannelNorm",
        ),
        tests=("tests/nn/test_weight_standardization_bcn.py", "tests/nn/test_layer_battery.py"),
        experiment="experiments/microbatch_norm.py",
    ),
    Method(
        slug="stablemax",
        kind="loss",
        title="Grokking at the Edge of Numerical Stability",
        reference="arXiv:2501.04697",
        symbols=(
            "jaxlearn.losses.stablemax",
            "jaxlearn.losses.log_stablemax",
            "jaxlearn.losses.stablemax_cross_entropy",
        ),
        tests=("tests/losses/test_stablemax.py", "tests/losses/test_loss_battery.py"),
        experiment="experiments/stablemax_softmax_collapse.py",
        notes="The loss half of the paper; perpGrad (slug `perpgrad`) is an optimizer transform.",
    ),
    Method(
        slug="forward_forward",
        kind="local_rule",
        title="The Forward-Forward Algorithm: Some Preliminary Investigations",
        reference="arXiv:2212.13345",
        symbols=(
            "jaxlearn.local.LocalModel",
            "jaxlearn.local.local_train_step",
            "jaxlearn.local.ForwardForward",
        ),
        tests=("tests/local/test_framework.py", "tests/local/test_forward_forward.py"),
        experiment="experiments/forward_forward_digits.py",
        notes=(
            "Not a seed paper: Hinton's Forward-Forward is the base that the catalogue's "
            "`forward_gnn` and `model_free_forward_forward` build on."
        ),
    ),
    # New records go above this line (keep them grouped by family, as in INDEX.md).
)


def all_methods(kind: str | None = None) -> tuple[Method, ...]:
  """All registered methods, in registration order; only those of `kind` if given."""
  if kind is not None and kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return tuple(m for m in _METHODS if kind is None or m.kind == kind)


def get(slug: str) -> Method:
  """The record for `slug`; a KeyError with close matches if there is none."""
  for method in _METHODS:
    if method.slug == slug:
      return method
  close = difflib.get_close_matches(slug, [m.slug for m in _METHODS], n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise KeyError(f"no method with slug {slug!r}.{hint} See `jaxlearn list`.")


def resolve(symbol: str) -> Any:
  """Imports a dotted symbol path such as 'jaxlearn.optim.adamp'."""
  module_name, _, attribute = symbol.rpartition(".")
  return getattr(importlib.import_module(module_name), attribute)


def markdown_table() -> str:
  """The README's method table (kept in sync by a test)."""
  lines = ["| slug | kind | paper | symbols | experiment |", "|---|---|---|---|---|"]
  for m in _METHODS:
    symbols = ", ".join(f"`{s.removeprefix('jaxlearn.')}`" for s in m.symbols)
    experiment = f"`{m.experiment}`" if m.experiment else "-"
    lines.append(f"| `{m.slug}` | {m.kind} | {m.title} ({m.reference}) | {symbols} | {experiment} |")
  return "\n".join(lines)
