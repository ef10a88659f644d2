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
from jaxlearn.losses.z_loss import spherical_z_loss, z_scores
from jaxlearn.losses.comp_sum import (
    comp_sum_loss,
    generalized_cross_entropy,
    mean_absolute_error_loss,
)
from jaxlearn.losses.ensloss import ensloss, ensloss_derivatives
from jaxlearn.losses.buffers import buffered_classifier
from jaxlearn.losses.elr import elr_loss
from jaxlearn.losses.aggregate_responses import (
    bag_level_loss,
    instance_level_loss,
    within_bag_variance,
)
from jaxlearn.losses.neural_ndcg import ndcg, neural_ndcg, neural_ndcg_transposed, neural_sort
from jaxlearn.losses.starbucks import starbucks_loss, starbucks_sampled_loss
from jaxlearn.losses.random_teachers import random_teacher_distillation_loss
from jaxlearn.losses.ldr import aldr_kl_loss, ldr_kl_loss, ldr_scores
from jaxlearn.losses.ps_kd import ps_kd_alpha, ps_kd_loss

__all__ = [
    "stablemax",
    "log_stablemax",
    "softmax_collapse_fraction",
    "stablemax_cross_entropy",
    "stablemax_cross_entropy_with_probs",
    "zero_gradient_fraction",
    "spherical_z_loss",
    "z_scores",
    "comp_sum_loss",
    "generalized_cross_entropy",
    "mean_absolute_error_loss",
    "ensloss",
    "ensloss_derivatives",
    "buffered_classifier",
    "elr_loss",
    "bag_level_loss",
    "instance_level_loss",
    "within_bag_variance",
    "neural_ndcg",
    "neural_ndcg_transposed",
    "neural_sort",
    "ndcg",
    "starbucks_loss",
    "starbucks_sampled_loss",
    "random_teacher_distillation_loss",
    "ldr_kl_loss",
    "aldr_kl_loss",
    "ldr_scores",
    "ps_kd_loss",
    "ps_kd_alpha",
]
