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
from jaxlearn.nn.alpha_bn import LinenAlphaBatchNorm as AlphaBatchNorm
from jaxlearn.nn.adab2n import LinenAdaB2N as AdaB2N
from jaxlearn.nn.region_norm import LinenRegionNormB as RegionNormB, LinenRegionNormL as RegionNormL
from jaxlearn.nn.msgnorm import LinenGENConv as GENConv
from jaxlearn.nn.pcnorm import LinenPCNorm as PCNorm, LinenSCNorm as SCNorm
from jaxlearn.nn.online_norm import LinenOnlineNorm as OnlineNorm
from jaxlearn.nn.unified_norm import LinenUnifiedNorm as UnifiedNorm
from jaxlearn.nn.weight_norm import (
    LinenWNConv as WNConv,
    LinenWNDense as WNDense,
    linen_wn_init_from_batch as wn_init_from_batch,
)
from jaxlearn.nn.batch_norm import LinenBatchNorm as BatchNorm
from jaxlearn.nn.layer_norm import (
    LinenLayerNorm as LayerNorm,
    LinenLNGRU as LNGRU,
    LinenLNLSTM as LNLSTM,
)
from jaxlearn.nn.selu import LinenAlphaDropout as AlphaDropout
from jaxlearn.nn.nested_dropout import LinenNestedDropout as NestedDropout
from jaxlearn.nn.evonorm import LinenEvoNormB0 as EvoNormB0, LinenEvoNormS0 as EvoNormS0
from jaxlearn.nn.nf_resnet import (
    LinenNFResidualBlock as NFResidualBlock,
    LinenScaledWSConv as ScaledWSConv,
    LinenScaledWSDense as ScaledWSDense,
)
from jaxlearn.nn.powernorm import LinenPowerNorm as PowerNorm
from jaxlearn.nn.spectral_norm import LinenSNConv as SNConv, LinenSNDense as SNDense
from jaxlearn.nn.ghost_batch_norm import LinenGhostBatchNorm as GhostBatchNorm
from jaxlearn.nn.ibn_net import (
    LinenIBN as IBN,
    LinenIBNResNet as IBNResNet,
)
from jaxlearn.nn.mix_ln import (
    LinenMixLNBlock as MixLNBlock,
    LinenMixLNTransformer as MixLNTransformer,
)

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
    "AlphaBatchNorm",
    "AdaB2N",
    "RegionNormB",
    "RegionNormL",
    "WNDense",
    "WNConv",
    "wn_init_from_batch",
    "GENConv",
    "OnlineNorm",
    "UnifiedNorm",
    "BatchNorm",
    "LayerNorm",
    "LNGRU",
    "LNLSTM",
    "AlphaDropout",
    "NestedDropout",
    "EvoNormB0",
    "EvoNormS0",
    "NFResidualBlock",
    "ScaledWSConv",
    "ScaledWSDense",
    "PowerNorm",
    "SNDense",
    "SNConv",
    "GhostBatchNorm",
    "IBN",
    "IBNResNet",
    "MixLNBlock",
    "MixLNTransformer",
    "PCNorm",
    "SCNorm",
]
