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
    block_labels,
    block_losses,
    dense_block,
    fit_functions,
    from_linen,
    from_nnx,
    init_train_state,
    local_loss,
    local_train_step,
)
from jaxlearn.local.forward_forward import (
    ForwardForward,
    embed_label,
    goodness,
    layer_loss,
    rms_normalize,
    sample_negative_labels,
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
    "ForwardForward",
    "embed_label",
    "goodness",
    "layer_loss",
    "rms_normalize",
    "sample_negative_labels",
]
