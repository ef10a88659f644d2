"""Experiment plumbing: the command line every experiment shares, and the result writer.

Every experiment writes `<out>/<name>.json` (config, seeds, library versions, metrics, wall time,
the paper's claim as a sentence, what we measured, and whether the claim held) and
`<out>/<name>.png`. `claim_held` is True, False, or None when the run cannot decide (for example
the `--quick` smoke runs, which are too short to test a claim).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "experiment_parser", "experiment_main", "library_versions", "to_jsonable", "new_figure",
    "save_result",
]

DEFAULT_OUT = Path("results")


def experiment_parser(description: str) -> argparse.ArgumentParser:
  """The flags every experiment accepts: --quick, --out, --seed.

  Example:
    >>> from jaxlearn.train import experiment_parser
    >>> args = experiment_parser("a toy experiment").parse_args(["--quick"])
    >>> args.quick, args.seed
    (True, 0)
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument(
      "--quick", action="store_true", help="tiny smoke run (seconds); cannot test the claim"
  )
  parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
  parser.add_argument("--seed", type=int, default=0, help="base random seed")
  return parser


def experiment_main(
    run: Callable[..., dict[str, Any]], description: str, argv: Sequence[str] | None = None
) -> dict[str, Any]:
  """Parses the shared flags and calls `run(quick=, out=, seed=)`; returns its record.

  Example:
    >>> import tempfile
    >>> from jaxlearn.train import experiment_main
    >>> def run(quick, out, seed):
    ...   return {"quick": quick, "seed": seed}
    >>> experiment_main(run, "a toy experiment", ["--quick", "--seed", "3",
    ...                                         "--out", tempfile.mkdtemp()])
    {'quick': True, 'seed': 3}
  """
  args = experiment_parser(description).parse_args(argv)
  return run(quick=args.quick, out=args.out, seed=args.seed)


def library_versions() -> dict[str, str]:
  import importlib.metadata as metadata

  import jax

  versions = {"python": platform.python_version(), "platform": platform.platform()}
  for package in ("jaxlearn", "jax", "jaxlib", "flax", "optax", "numpy"):
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = "not installed"
  versions["devices"] = ", ".join(sorted({d.device_kind for d in jax.devices()}))
  return versions


def to_jsonable(value: Any) -> Any:
  """Converts NumPy/JAX arrays and scalars (nested in dicts/lists) to plain JSON values."""
  if isinstance(value, dict):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, Path):
    return str(value)
  if hasattr(value, "tolist"):  # numpy / jax arrays and numpy scalars
    return to_jsonable(np.asarray(value).tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them visible rather than dropping them
  return value


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8):
  """A matplotlib figure on the headless Agg backend.

  Example:
    >>> from jaxlearn.train import new_figure
    >>> fig, axes = new_figure(ncols=2)
    >>> axes.shape  # always 2-D: axes[row, column]
    (1, 2)
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(
      nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False
  )
  return fig, axes


def save_result(
    name: str,
    out: Path,
    *,
    claim: str,
    measured: str,
    claim_held: bool | None,
    config: dict[str, Any],
    metrics: dict[str, Any],
    seeds: Sequence[int],
    wall_time_s: float,
    figure: Any,
    quick: bool,
) -> dict[str, Any]:
  """Writes `<out>/<name>.json` and `<out>/<name>.png`, prints a summary, returns the record.

  Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from jaxlearn.train import new_figure, save_result
    >>> fig, ax = new_figure()
    >>> record = save_result(
    ...     "toy", Path(tempfile.mkdtemp()), claim="x helps", measured="it did", claim_held=True,
    ...     config={}, metrics={"accuracy": 0.9}, seeds=[0], wall_time_s=1.0, figure=fig,
    ...     quick=True)
    [toy] paper claim: x helps
    [toy] measured:    it did
    [toy] claim undecided (quick smoke run)
    [toy] wrote ...toy.json and ...toy.png
    >>> record["claim_held"] is None  # a quick smoke run cannot decide the claim
    True
  """
  import matplotlib.pyplot as plt

  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  json_path, png_path = out / f"{name}.json", out / f"{name}.png"
  record = {
      "experiment": name,
      "quick": quick,
      "paper_claim": claim,
      "measured": measured,
      "claim_held": None if quick else claim_held,
      "config": config,
      "seeds": list(seeds),
      "metrics": metrics,
      "wall_time_s": wall_time_s,
      "versions": library_versions(),
      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "files": {"json": str(json_path), "plot": str(png_path)},
  }
  record = to_jsonable(record)
  json_path.write_text(json.dumps(record, indent=2) + "\n")
  figure.tight_layout()
  figure.savefig(png_path, dpi=110)
  plt.close(figure)
  verdict = {True: "HELD", False: "NOT REPRODUCED", None: "undecided"}[record["claim_held"]]
  print(f"[{name}] paper claim: {claim}")
  print(f"[{name}] measured:    {measured}")
  print(f"[{name}] claim {verdict}{' (quick smoke run)' if quick else ''}")
  print(f"[{name}] wrote {json_path} and {png_path}")
  return record
