"""Optimizers and gradient transformations, as optax `GradientTransformation`s."""

from jaxlearn.optim._common import decayed_weights, inject_hyperparams

__all__ = ["decayed_weights", "inject_hyperparams"]
