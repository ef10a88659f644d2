"""Losses and regularizers: pure functions of logits/labels.

One import statement per method module: `from jaxlearn.losses.<module> import <public names>`.
"""

from jaxlearn.losses.stablemax import (
    log_stablemax,
    softmax_collapse_fraction,
    stablemax,
    stablemax_cross_entropy,
    stablemax_cross_entropy_with_probs,
    zero_gradient_fraction,
)

__all__ = [
    "stablemax",
    "log_stablemax",
    "softmax_collapse_fraction",
    "stablemax_cross_entropy",
    "stablemax_cross_entropy_with_probs",
    "zero_gradient_fraction",
]
