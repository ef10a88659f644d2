"""Optimizers and gradient transformations, as optax `GradientTransformation`s.

One line per method module: `from jaxlearn.optim.<module> import <public names>`.
"""

from jaxlearn.optim._common import decayed_weights, inject_hyperparams
