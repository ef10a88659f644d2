"""Flax layers: normalization and reparametrizations.

NNX classes are exported here and Linen ones in `jaxlearn.nn.linen`.

Each method lives in one module `jaxlearn/nn/<module>.py` holding its pure functional core, its NNX
classes (public names, exported here) and its Linen classes (named `Linen<Name>` in the module and
exported as `jaxlearn.nn.linen.<Name>`). One import statement per method module.
"""

from jaxlearn.nn.weight_standardization import WSConv, WSLinear, weight_standardize
from jaxlearn.nn.batch_channel_norm import (
    BatchChannelNorm,
    batch_channel_normalize,
    batch_statistics,
    channel_normalize,
)
from jaxlearn.nn.lora import LoRA, init_lora, lora_delta

__all__ = [
    "WSConv",
    "WSLinear",
    "weight_standardize",
    "BatchChannelNorm",
    "batch_channel_normalize",
    "batch_statistics",
    "channel_normalize",
    "LoRA",
    "init_lora",
    "lora_delta",
]
