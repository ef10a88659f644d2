"""Optimizers and gradient transformations, as optax `GradientTransformation`s.

One line per method module: `from jaxlearn.optim.<module> import <public names>`.
"""

from jaxlearn.optim._common import compute_in_float32, decayed_weights, inject_hyperparams, soft_threshold, soft_threshold_leaf
from jaxlearn.optim.extra_args import EXTRA_ARG_NAMES, extra_update_args, margins_from_losses
from jaxlearn.optim.per_leaf_scale import scale_by_per_leaf
from jaxlearn.optim.adamp import ScaleByAdamPState, ScaleBySGDPState, adamp, project_scale_invariant, scale_by_adamp, scale_by_sgdp, sgdp
from jaxlearn.optim.lion import lion, scale_by_lion
from jaxlearn.optim.gradient_noise import add_gradient_noise
from jaxlearn.optim.novograd import ScaleByNovogradState, novograd, scale_by_novograd
from jaxlearn.optim.agc import adaptive_grad_clip
from jaxlearn.optim.grad_norm_clipping import clip_by_global_norm, rnn_state_gradients, vanishing_gradient_regularizer
from jaxlearn.optim.grams import ScaleByGramsState, grams, scale_by_grams
from jaxlearn.optim.gravity import ScaleByGravityState, gravity, gravity_step, scale_by_gravity
from jaxlearn.optim.optimistic_amsgrad import ScaleByOptimisticAMSGradState, optimistic_amsgrad, rmpe_extrapolate, scale_by_optimistic_amsgrad
from jaxlearn.optim.nag_gs import ScaleByNagGsState, nag_gs, scale_by_nag_gs
from jaxlearn.optim.normalized_lr_gd import logistic_normalizer, normalized_lr_gd, scale_by_normalized_lr_gd
from jaxlearn.optim.centralization import centralize_gradients, normalize_gradients
from jaxlearn.optim.softplus import ScaleBySadamState, scale_by_sadam, softplus_denominator
from jaxlearn.optim.pnm import ScaleByAdaPNMState, ScaleByPNMState, adapnm, adapnm_second_moment, pnm, scale_by_adapnm, scale_by_pnm
from jaxlearn.optim.stable_weight_decay import StableWeightDecayState, adam_second_moment, adams, with_stable_weight_decay
from jaxlearn.optim.norm_loss import add_norm_loss, unit_norm
from jaxlearn.optim.lookahead import LookaheadSyncState, lookahead_slow_weights, lookahead_sync
from jaxlearn.optim.ranger21 import ranger21, ranger21_schedule
from jaxlearn.optim.orthograd import orthogonalize_gradients, orthogonalize_leaf
from jaxlearn.optim.anchor import DecayToAnchorState, anchor_penalty, decay_to_anchor, fisher_diagonal, set_anchor
from jaxlearn.optim.hft import HalfFineTuningState, half_fine_tuning
from jaxlearn.optim.sora import sora, sora_gate_penalty
from jaxlearn.optim.xgrad import XGradState, predicted_params, xgrad, xgrad_adam, xgrad_adamw, xgrad_sgd, xgrad_step
from jaxlearn.optim.trp import TrainedRankPruningState, default_trp_targets, low_rank_approximation, trained_rank_pruning
from jaxlearn.optim.mask_sparsity import mask_sparsity
from jaxlearn.optim.induced_metric import ScaleByInducedMetricState, induced_metric, scale_by_induced_metric
from jaxlearn.optim.smb import ScaleBySMBState, scale_by_smb, smb
from jaxlearn.optim.psgd import ScaleByPSGDState, apply_psgd_preconditioner, psgd, scale_by_psgd
from jaxlearn.optim.asgo import ScaleByASGOState, asgo, dasgo, scale_by_asgo, scale_by_dasgo
from jaxlearn.optim.adago import ScaleByAdaGOState, adago, scale_by_adago
from jaxlearn.optim.fira import ScaleByFiraState, fira, scale_by_fira
from jaxlearn.optim.lmo_momentum import ScaleByLMOMomentumState, lmo_momentum, scale_by_lmo_momentum

__all__ = [
    "decayed_weights",
    "inject_hyperparams",
    "EXTRA_ARG_NAMES",
    "extra_update_args",
    "margins_from_losses",
    "scale_by_per_leaf",
    "adamp",
    "ScaleByAdamPState",
    "ScaleBySGDPState",
    "project_scale_invariant",
    "scale_by_adamp",
    "scale_by_sgdp",
    "sgdp",
    "lion",
    "compute_in_float32",
    "scale_by_lion",
    "add_gradient_noise",
    "novograd",
    "ScaleByNovogradState",
    "scale_by_novograd",
    "adaptive_grad_clip",
    "clip_by_global_norm",
    "rnn_state_gradients",
    "vanishing_gradient_regularizer",
    "grams",
    "ScaleByGramsState",
    "scale_by_grams",
    "gravity",
    "ScaleByGravityState",
    "gravity_step",
    "scale_by_gravity",
    "optimistic_amsgrad",
    "ScaleByOptimisticAMSGradState",
    "rmpe_extrapolate",
    "scale_by_optimistic_amsgrad",
    "nag_gs",
    "ScaleByNagGsState",
    "scale_by_nag_gs",
    "normalized_lr_gd",
    "logistic_normalizer",
    "scale_by_normalized_lr_gd",
    "centralize_gradients",
    "normalize_gradients",
    "ScaleBySadamState",
    "scale_by_sadam",
    "softplus_denominator",
    "pnm",
    "ScaleByAdaPNMState",
    "ScaleByPNMState",
    "adapnm",
    "adapnm_second_moment",
    "scale_by_adapnm",
    "scale_by_pnm",
    "StableWeightDecayState",
    "adam_second_moment",
    "adams",
    "with_stable_weight_decay",
    "add_norm_loss",
    "unit_norm",
    "LookaheadSyncState",
    "lookahead_slow_weights",
    "lookahead_sync",
    "ranger21",
    "ranger21_schedule",
    "orthogonalize_gradients",
    "orthogonalize_leaf",
    "DecayToAnchorState",
    "anchor_penalty",
    "decay_to_anchor",
    "fisher_diagonal",
    "set_anchor",
    "HalfFineTuningState",
    "half_fine_tuning",
    "sora",
    "sora_gate_penalty",
    "soft_threshold",
    "soft_threshold_leaf",
    "xgrad",
    "xgrad_sgd",
    "xgrad_adam",
    "xgrad_adamw",
    "predicted_params",
    "xgrad_step",
    "XGradState",
    "trained_rank_pruning",
    "low_rank_approximation",
    "default_trp_targets",
    "TrainedRankPruningState",
    "mask_sparsity",
    "induced_metric",
    "scale_by_induced_metric",
    "ScaleByInducedMetricState",
    "smb",
    "scale_by_smb",
    "ScaleBySMBState",
    "psgd",
    "scale_by_psgd",
    "ScaleByPSGDState",
    "apply_psgd_preconditioner",
    "asgo",
    "scale_by_asgo",
    "ScaleByASGOState",
    "dasgo",
    "scale_by_dasgo",
    "adago",
    "scale_by_adago",
    "ScaleByAdaGOState",
    "fira",
    "scale_by_fira",
    "ScaleByFiraState",
    "lmo_momentum",
    "scale_by_lmo_momentum",
    "ScaleByLMOMomentumState",
]
