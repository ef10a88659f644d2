"""What the two command lines share: `jaxlearn` (`jaxlearn.cli`) and `python -m jaxlearn.launch`.

Both import from here and neither imports the other. No jax import, so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import pkgutil
from pathlib import Path

__all__ = [
    "experiment_names",
    "add_sweep_arguments",
]


def experiment_names() -> list[str]:
  """Modules of jaxlearn.experiments (the top-level experiments/ folder) that have a `main`."""
  import jaxlearn.experiments as package

  return sorted(
      m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")
  )


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of `jaxlearn sweep` and `python -m jaxlearn.launch sweep`."""
  parser.add_argument(
      "optimizer", help="registered optimizer (slug, alias or dotted path) or an optax name"
  )
  parser.add_argument(
      "--param", action="append", default=[], metavar="NAME=VALUES",
      help="a swept hyperparameter: learning_rate=1e-3,1e-2 or "
      "learning_rate=logspace:1e-4:1e-1:7; with --random: learning_rate=loguniform:1e-4:1e-1, "
      "b1=uniform:0.8:0.99 (a list is then a set of choices)",
  )
  parser.add_argument("--random", type=int, metavar="N", help="random search: N configurations")
  parser.add_argument(
      "--fixed", action="append", default=[], metavar="NAME=VALUE",
      help="a hyperparameter held fixed, e.g. weight_decay=1e-4 or nesterov=true",
  )
  parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
  parser.add_argument("--steps", type=int, default=500, help="training steps (default: 500)")
  parser.add_argument("--batch-size", type=int, default=64, help="minibatch size (default: 64)")
  parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
  parser.add_argument("--data", default="digits", help="dataset: digits (default) or mnist1d")
  parser.add_argument("--hidden", default="64", help="MLP hidden widths, comma-separated")
  parser.add_argument(
      "--chunk-size", default="auto",
      help="configurations per compiled program: a number, 'auto' (fit device memory) or 'all'",
  )
  parser.add_argument(
      "--metric", default="test_accuracy", help="metric of the plot and the best row"
  )
  parser.add_argument("--out", type=Path, default=Path("results"), help="output directory")
  parser.add_argument("--name", help="output file stem (default: sweep_<optimizer>)")
  parser.add_argument("--no-progress", action="store_true", help="no progress bars")
