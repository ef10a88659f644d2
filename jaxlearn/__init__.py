"""jaxlearn: training techniques from deep-learning papers as composable JAX code.

Subpackages: `jaxlearn.optim` (optax transformations), `jaxlearn.nn` (Flax layers),
`jaxlearn.losses`, `jaxlearn.local` (layer-local learning rules), `jaxlearn.diagnostics`,
`jaxlearn.data`, `jaxlearn.train`. `jaxlearn.registry` lists every method (`jaxlearn list`).

`import jaxlearn` stays fast: each subpackage is imported the first time it is used
(`jaxlearn.train.make_mesh` works after a bare `import jaxlearn`), and `dir(jaxlearn)` lists them.
"""

import importlib as _importlib
from typing import Any as _Any

__version__ = "0.1.0"

_SUBPACKAGES = ("optim", "nn", "losses", "local", "diagnostics", "data", "train", "registry")
__all__ = [*_SUBPACKAGES, "__version__"]


def __getattr__(name: str) -> _Any:
  if name in _SUBPACKAGES:
    return _importlib.import_module(f"jaxlearn.{name}")
  raise AttributeError(f"module 'jaxlearn' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(__all__)
