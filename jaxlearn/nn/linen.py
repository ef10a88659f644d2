"""Linen versions of the `jaxlearn.nn` layers, built from the same functional cores as the NNX ones.

A method module defines its Linen classes as `Linen<Name>`; this module re-exports them under the
public name, so `jaxlearn.nn.<Name>` is the NNX layer and `jaxlearn.nn.linen.<Name>` the Linen one
(same numbers; `tests/nn/test_layer_battery.py` checks it). One import statement per method module.
"""

from jaxlearn.nn.weight_standardization import LinenWSConv as WSConv, LinenWSDense as WSDense
from jaxlearn.nn.batch_channel_norm import LinenBatchChannelNorm as BatchChannelNorm
from jaxlearn.nn.lora import LinenLoRA as LoRA

__all__ = [
    "WSConv",
    "WSDense",
    "BatchChannelNorm",
    "LoRA",
]
