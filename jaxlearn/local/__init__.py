"""Layer-local (backprop-free) learning rules, on one small framework (`jaxlearn.local.framework`).

One import statement per module: `from jaxlearn.local.<module> import <public names>`.
"""

from jaxlearn.local.framework import (
    Block,
    FitState,
    LocalContext,
    LocalModel,
    LocalParams,
    LocalRule,
    LocalTrainState,
    GreedyLog,
    PerBlockState,
    block_labels,
    block_losses,
    dense_block,
    fit_functions,
    from_linen,
    from_nnx,
    greedy_train,
    init_train_state,
    local_loss,
    local_train_step,
    per_block_optimizer,
)
from jaxlearn.local.forward_forward import (
    ForwardForward,
    embed_label,
    goodness,
    layer_loss,
    rms_normalize,
    sample_negative_labels,
)
from jaxlearn.local.forward_gnn import (
    ForwardGNN, ForwardGNNTopDown, add_virtual_nodes, forward_gnn_batch, forward_gnn_optimizer,
    gcn_layer, gcn_normalize, l2_normalize_rows, mean_aggregation, sage_layer,
)
from jaxlearn.local.model_free_ff import (
    ModelFreeForwardForward, cosine_goodness, exact_gelu, overlay_label, paired_goodness_loss,
    random_physical_system, random_unit_vectors, torch_linear_init,
)
from jaxlearn.local.noprop import NoProp, denoising_block, noprop_alpha_bar, noprop_coefficients
from jaxlearn.local.momentum_auxiliary import MomentumAuxiliary, ema_update
from jaxlearn.local.likelihood_ratio import LikelihoodRatio, likelihood_ratio_grads
from jaxlearn.local.tpsgd import TargetProjection, projection_targets, target_projection_loss
from jaxlearn.local.bcd import (
    BCDState, bcd_init, bcd_objective, bcd_predict, bcd_step, relu_prox,
)
from jaxlearn.local.gbnn import (
    GBNNModel, boosting_newton_step, boosting_residuals, gbnn_decision, gbnn_fit, gbnn_to_mlp,
)
from jaxlearn.local.gradient_boosting import (
    GBDNNModel, gb_dnn_decision, gb_dnn_fit, gb_dnn_stage,
)

__all__ = [
    "Block",
    "FitState",
    "LocalContext",
    "LocalModel",
    "LocalParams",
    "LocalRule",
    "LocalTrainState",
    "block_labels",
    "block_losses",
    "dense_block",
    "fit_functions",
    "from_linen",
    "from_nnx",
    "init_train_state",
    "local_loss",
    "local_train_step",
    "GreedyLog",
    "PerBlockState",
    "greedy_train",
    "per_block_optimizer",
    "ForwardForward",
    "embed_label",
    "goodness",
    "layer_loss",
    "rms_normalize",
    "sample_negative_labels",
    "ForwardGNN",
    "ForwardGNNTopDown",
    "add_virtual_nodes",
    "forward_gnn_batch",
    "forward_gnn_optimizer",
    "gcn_layer",
    "gcn_normalize",
    "l2_normalize_rows",
    "mean_aggregation",
    "sage_layer",
    "ModelFreeForwardForward",
    "cosine_goodness",
    "exact_gelu",
    "overlay_label",
    "paired_goodness_loss",
    "random_physical_system",
    "random_unit_vectors",
    "torch_linear_init",
    "TargetProjection",
    "projection_targets",
    "target_projection_loss",
    "NoProp",
    "denoising_block",
    "noprop_alpha_bar",
    "noprop_coefficients",
    "MomentumAuxiliary",
    "ema_update",
    "LikelihoodRatio",
    "likelihood_ratio_grads",
    "bcd_step",
    "BCDState",
    "bcd_init",
    "bcd_objective",
    "bcd_predict",
    "relu_prox",
    "gbnn_fit",
    "GBNNModel",
    "gbnn_decision",
    "gbnn_to_mlp",
    "boosting_residuals",
    "boosting_newton_step",
    "gb_dnn_fit",
    "GBDNNModel",
    "gb_dnn_decision",
    "gb_dnn_stage",
]
