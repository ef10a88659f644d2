"""jaxlearn: training techniques from deep-learning papers as composable JAX code.

Subpackages: `jaxlearn.optim` (optax transformations), `jaxlearn.nn` (Flax layers),
`jaxlearn.losses`, `jaxlearn.local` (layer-local learning rules), `jaxlearn.diagnostics`,
`jaxlearn.data`, `jaxlearn.train`. `jaxlearn.registry` lists every method (`jaxlearn list`).
Subpackages are imported on demand so that `import jaxlearn` and the CLI start fast.
"""

__version__ = "0.1.0"
