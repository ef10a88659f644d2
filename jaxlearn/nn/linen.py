"""Linen versions of the `jaxlearn.nn` layers, built from the same functional cores as the NNX ones.

A method module defines its Linen classes as `Linen<Name>`; this module re-exports them under the
public name, so `jaxlearn.nn.<Name>` is the NNX layer and `jaxlearn.nn.linen.<Name>` the Linen one
(same numbers; `tests/nn/test_layer_battery.py` checks it). One import statement per method module.
"""

from jaxlearn.nn.weight_standardization import LinenWSConv as WSConv, LinenWSDense as WSDense
from jaxlearn.nn.batch_channel_norm import LinenBatchChannelNorm as BatchChannelNorm
from jaxlearn.nn.lora import LinenLoRA as LoRA
from jaxlearn.nn.sltrain import LinenSLTrainDense as SLTrainDense
from jaxlearn.nn.maestro import LinenMaestroDense as MaestroDense
from jaxlearn.nn.scalelong import LinenLongSkipScale as LongSkipScale
from jaxlearn.nn.btt import LinenBTTDense as BTTDense, LinenMonarchDense as MonarchDense
from jaxlearn.nn.matsqrt import LinenZCABatchNorm as ZCABatchNorm
from jaxlearn.nn.nm_sparsity import LinenNMSparseDense as NMSparseDense
from jaxlearn.nn.maskllm import LinenMaskLLMDense as MaskLLMDense
from jaxlearn.nn.autosparse import LinenAutoSparseDense as AutoSparseDense
from jaxlearn.nn.mup import LinenMuReadout as MuReadout
from jaxlearn.nn.snnk import LinenSNNKDense as SNNKDense
from jaxlearn.nn.qlae import LinenLatentQuantizer as LatentQuantizer

__all__ = [
    "WSConv",
    "WSDense",
    "BatchChannelNorm",
    "LoRA",
    "SLTrainDense",
    "MaestroDense",
    "LongSkipScale",
    "BTTDense",
    "MonarchDense",
    "ZCABatchNorm",
    "NMSparseDense",
    "MaskLLMDense",
    "AutoSparseDense",
    "MuReadout",
    "SNNKDense",
    "LatentQuantizer",
]
