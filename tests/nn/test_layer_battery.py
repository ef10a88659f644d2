"""The battery every `jaxlearn.nn` layer passes, in its NNX and its Linen form.

Adding a layer is one `Layer(...)` row in `LAYERS` (above the marker line), data only: the NNX and
Linen classes, their positional arguments, the keyword arguments both take, a small valid input
shape and an input shape of the wrong rank. For every row:
  * NNX and Linen give the same outputs and the same state updates (the same parameters in both)
    over a train, train, eval sequence;
  * the layer works under `jax.jit` (matching eager NNX) and `nnx.jit`, and no program is traced
    or compiled twice: the second step, fed the state the first returned, reuses its program;
  * gradients reach every parameter and the input, finite and not all zero;
  * train and eval modes: eval uses (and keeps) the running statistics, train updates them;
  * bfloat16 inputs with `dtype=bfloat16`: output in bfloat16; parameters, statistics and state in
    float32;
  * batch-statistic layers with `axis_name` sync across a `vmap` (equal to the full batch);
  * a wrong input rank or feature count raises a ValueError;
  * layers with backward statistics (`backward_stats=True`, `jaxlearn.nn.backward_stats`): NNX and
    Linen give the same increments; `jax.grad` without the helper changes no statistic; the
    helper applies each increment exactly once per micro-step under `optax.MultiSteps` (which
    accumulates only the parameter gradients); under a `vmap` with `axis_name` every device
    applies the full-batch increment (except `per_device_statistics` rows); with the rate set to
    the identity (`autodiff_kwargs`) the custom gradient equals autodiff of the layer built with
    `custom_backward=False`.
Conventions a row relies on: the NNX constructor takes `rngs` plus the overrides `dtype` and (for
batch-statistic layers) `axis_name`, and switches mode with `model.train()` / `model.eval()`; the
Linen constructor takes the same overrides, batch-statistic Linen layers take `use_running_average`
at call time (as flax's `BatchNorm`), and `nnx.state(model, nnx.Param / nnx.BatchStat)` has the
structure of the Linen `params` / `batch_stats` collections.

CPU budget: about 1 s per row, 2 s for a batch-statistic layer (measured on 2 loaded cores); the
method's own reference tests share the ~3 s a method may cost. What keeps it there: every program
of a row is compiled once, in `programs(layer)`, and shared by all the tests (6 to 10 small
programs: NNX and Linen per mode, bfloat16, nnx.jit, vmap; the gradients come out of the float32
training program); parameters and inputs are made with NumPy, never with eager JAX ops (an eager
random draw for a rank-4 kernel alone compiles for ~1 s); shapes and abstract `init`s go through
`jax.eval_shape`; one eager call per row runs op by op. Keep inputs to a few hundred elements, and
make a new check reuse the row's programs: a new input shape, dtype or static argument is a new
compilation.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn
from jaxlearn import registry
from jaxlearn.nn import linen as jnn_linen


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
  """One row of the battery.

  Attributes:
    name: the test id.
    slug: the registry slug of the method the layer implements.
    nnx: the NNX class, built as `nnx(*nnx_args, **kwargs, rngs=..., **overrides)`.
    nnx_args: its positional arguments.
    linen: the Linen class, built as `linen(*linen_args, **kwargs, **overrides)`.
    linen_args: its positional arguments.
    input_shape: a valid input shape (batch first, features last; batch size even).
    wrong_rank_shape: an input shape whose rank the layer must reject.
    kwargs: keyword arguments both classes take.
    batch_stats: whether the layer keeps running statistics (`nnx.BatchStat` / `batch_stats`).
    stochastic: the rng stream a layer samples noise from in training (NNX `rngs.<stream>()`,
      Linen `make_rng(<stream>)`), or None. The two derive different keys from one seed, so the
      battery calls both with the same raw key (NNX `rngs=key`, Linen `rng=key` and
      `deterministic`), like flax's Dropout layers; train and eval modes then differ.
  """

  name: str
  slug: str
  nnx: type[nnx.Module]
  nnx_args: tuple[Any, ...]
  linen: type[linen.Module]
  linen_args: tuple[Any, ...]
  input_shape: tuple[int, ...]
  wrong_rank_shape: tuple[int, ...]
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  batch_stats: bool = False
  stochastic: str | None = None
  # Parameters the output does not reach by design (trained by a separate loss term only).
  no_output_gradient: tuple[str, ...] = ()
  # Statistics the backward pass updates (`jaxlearn.nn.BackwardStat`, Linen collection
  # "backward_stats"); the backward-statistics tests run on these rows.
  backward_stats: bool = False
  # For backward_stats rows: keyword arguments (merged over `kwargs`) that set the statistic's
  # rate to the identity (PowerNorm: alpha_bkw=1), under which the layer's custom gradient must
  # equal plain autodiff of the same forward, i.e. of the layer built with `custom_backward=False`
  # (statistics held constant), whatever the backward statistics hold.
  autodiff_kwargs: Mapping[str, Any] | None = None
  # Training may normalize with the running statistics (PowerNorm: after warm-up, and at t = 2 of
  # its warm-up the running statistic is the first batch's, i.e. the battery's own input): exempt
  # from the check that a second training call differs from evaluation.
  running_statistics_in_training: bool = False
  # Statistics streamed per device (Online Normalization): each device keeps its own stream, so the
  # row is exempt from the axis_name sync test (the layer documents it).
  per_device_statistics: bool = False
  # Statistics of the kernel, not of the batch (spectral norm's power-iteration vector): training
  # updates them, but no output depends on the rest of the batch and nothing needs a sync, so the
  # row is exempt from the axis_name sync test and from the train-differs-from-eval check.
  kernel_statistics: bool = False

  def call_kwargs(self, train: bool = True, linen: bool = False) -> dict[str, Any]:
    """The noise key (and Linen mode) of a stochastic layer's call; {} for the others."""
    if not self.stochastic:
      return {}
    key = jax.random.key(0, impl="rbg")  # threefry's hash alone compiles for ~1 s a program
    return {"rng": key, "deterministic": not train} if linen else {"rngs": key}

  def build_nnx(self, **overrides) -> nnx.Module:
    return self.nnx(*self.nnx_args, **self.kwargs, **overrides, rngs=nnx.Rngs(0))

  def build_linen(self, **overrides) -> linen.Module:
    return self.linen(*self.linen_args, **self.kwargs, **overrides)


WS_BCN = "weight_standardization_bcn"
LAYERS = [
    Layer(
        "WSLinear", WS_BCN, nnx=jnn.WSLinear, nnx_args=(6, 5), linen=jnn_linen.WSDense,
        linen_args=(5,), input_shape=(4, 6), wrong_rank_shape=(),
    ),
    Layer(
        "WSConv", WS_BCN, nnx=jnn.WSConv, nnx_args=(3, 4, (3, 3)), linen=jnn_linen.WSConv,
        linen_args=(4, (3, 3)), input_shape=(2, 5, 5, 3), wrong_rank_shape=(5, 3),
    ),
    Layer(
        "BatchChannelNorm", WS_BCN, nnx=jnn.BatchChannelNorm, nnx_args=(8,),
        linen=jnn_linen.BatchChannelNorm, linen_args=(), input_shape=(4, 3, 3, 8),
        wrong_rank_shape=(8,), kwargs={"num_groups": 4, "momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "BatchChannelNorm_estimated", WS_BCN, nnx=jnn.BatchChannelNorm, nnx_args=(8,),
        linen=jnn_linen.BatchChannelNorm, linen_args=(), input_shape=(4, 8),
        wrong_rank_shape=(8,),
        kwargs={"num_groups": 2, "use_estimated_stats": True, "momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "LoRA_gated", "allora", nnx=jnn.LoRA, nnx_args=(6, 5, 3), linen=jnn_linen.LoRA,
        linen_args=(6, 5, 3), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"gated": True, "scaling": 0.5},
    ),
    Layer(
        "MuReadout", "mup_feature_learning", nnx=jnn.MuReadout, nnx_args=(6, 5),
        linen=jnn_linen.MuReadout, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"base_in_features": 3, "output_mult": 2.0},
    ),
    Layer(
        "ZCABatchNorm", "fast_differentiable_matsqrt", nnx=jnn.ZCABatchNorm, nnx_args=(8,),
        linen=jnn_linen.ZCABatchNorm, linen_args=(), input_shape=(4, 3, 3, 8),
        wrong_rank_shape=(8,), kwargs={"num_groups": 2, "momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "NMSparseLinear", "progressive_gradient_flow_nm", nnx=jnn.NMSparseLinear,
        nnx_args=(8, 5), linen=jnn_linen.NMSparseDense, linen_args=(5,), input_shape=(4, 8),
        wrong_rank_shape=(), kwargs={"n": 1, "m": 4, "sr_ste": 2e-4},
    ),
    Layer(
        "MaskLLMLinear", "maskllm", nnx=jnn.MaskLLMLinear, nnx_args=(8, 5),
        linen=jnn_linen.MaskLLMDense, linen_args=(5,), input_shape=(4, 8), wrong_rank_shape=(),
        kwargs={"temperature": (1.0, 1.0), "scale_multiplier": (1.0, 1.0)}, stochastic="gumbel",
    ),
    Layer(
        "AutoSparseLinear", "autosparse_gradient_annealing", nnx=jnn.AutoSparseLinear,
        nnx_args=(6, 5), linen=jnn_linen.AutoSparseDense, linen_args=(5,), input_shape=(4, 6),
        wrong_rank_shape=(),
    ),
    Layer(
        "BTTLinear_normalized", "btt_structured_layers", nnx=jnn.BTTLinear, nnx_args=(6, 4),
        linen=jnn_linen.BTTDense, linen_args=(6, 4), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"rank": 2, "normalize": True},
    ),
    Layer(
        "MonarchLinear", "btt_structured_layers", nnx=jnn.MonarchLinear, nnx_args=(6, 5),
        linen=jnn_linen.MonarchDense, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"num_blocks": 2},
    ),
    # ScaleLong's gates act on tokens: channels-first skips (num_skips, batch, C, L) put the
    # token axis last, where the battery changes the feature count.
    Layer(
        "LongSkipScale_ls", "scalelong", nnx=jnn.LongSkipScale, nnx_args=(2, 8),
        linen=jnn_linen.LongSkipScale, linen_args=(2, 8), input_shape=(2, 2, 3, 8),
        wrong_rank_shape=(8,), kwargs={"mode": "ls", "reduction": 4, "channels_last": False},
    ),
    Layer(
        "LongSkipScale_ls_per_skip", "scalelong", nnx=jnn.LongSkipScale, nnx_args=(2, 8),
        linen=jnn_linen.LongSkipScale, linen_args=(2, 8), input_shape=(2, 2, 3, 8),
        wrong_rank_shape=(3, 8),
        kwargs={"mode": "ls_per_skip", "reduction": 4, "channels_last": False},
    ),
    Layer(
        "SNNKLinear", "scalable_nn_kernels", nnx=jnn.SNNKLinear, nnx_args=(6, 5),
        linen=jnn_linen.SNNKDense, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"num_features": 8},
    ),
    Layer(
        "SLTrainLinear", "sltrain", nnx=jnn.SLTrainLinear, nnx_args=(6, 5),
        linen=jnn_linen.SLTrainDense, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"rank": 2, "density": 0.3, "alpha": 4.0},
    ),
    Layer(
        "MaestroLinear", "maestro_lod", nnx=jnn.MaestroLinear, nnx_args=(6, 5),
        linen=jnn_linen.MaestroDense, linen_args=(6, 5), input_shape=(4, 6), wrong_rank_shape=(),
        stochastic="ordered_dropout",
    ),
    Layer(
        "LatentQuantizer", "latent_quantization_qlae", nnx=jnn.LatentQuantizer, nnx_args=(6,),
        linen=jnn_linen.LatentQuantizer, linen_args=(6,), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"num_values": 5}, no_output_gradient=("values",),
    ),
    # GENConv needs a graph: the row fixes a 5-node ring in the constructor (an `Adjacency`
    # variable in NNX, an attribute in Linen); the input is a batch of 2 graphs (2, nodes, C).
    Layer(
        "GENConv_softmax_msgnorm", "deepergcn_msgnorm", nnx=jnn.GENConv, nnx_args=(4, 3),
        linen=jnn_linen.GENConv, linen_args=(3,), input_shape=(2, 5, 4), wrong_rank_shape=(4,),
        kwargs={"adjacency": np.roll(np.eye(5), 1, 0) + np.roll(np.eye(5), -1, 0),
                "msg_norm": True, "learn_msg_scale": True, "learn_t": True},
    ),
    Layer(
        "GENConv_power", "deepergcn_msgnorm", nnx=jnn.GENConv, nnx_args=(4, 3),
        linen=jnn_linen.GENConv, linen_args=(3,), input_shape=(2, 5, 4), wrong_rank_shape=(4,),
        kwargs={"adjacency": np.roll(np.eye(5), 1, 0) + np.roll(np.eye(5), -1, 0),
                "aggr": "power", "p": 2.0, "learn_p": True, "msg_norm": True, "mlp_layers": 2},
    ),
    Layer(
        "BatchNorm", "batch_norm", nnx=jnn.BatchNorm, nnx_args=(8,), linen=jnn_linen.BatchNorm,
        linen_args=(), input_shape=(4, 3, 3, 8), wrong_rank_shape=(8,),
        kwargs={"momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "LayerNorm", "layer_norm", nnx=jnn.LayerNorm, nnx_args=(6,), linen=jnn_linen.LayerNorm,
        linen_args=(), input_shape=(4, 6), wrong_rank_shape=(), kwargs={"epsilon": 1e-5},
    ),
    Layer(
        "LNGRU", "layer_norm", nnx=jnn.LNGRU, nnx_args=(4, 5), linen=jnn_linen.LNGRU,
        linen_args=(5,), input_shape=(2, 3, 4), wrong_rank_shape=(4,),
    ),
    Layer(
        "LNLSTM", "layer_norm", nnx=jnn.LNLSTM, nnx_args=(4, 5), linen=jnn_linen.LNLSTM,
        linen_args=(5,), input_shape=(2, 3, 4), wrong_rank_shape=(4,),
    ),
    Layer(
        "WNLinear", "weight_normalization", nnx=jnn.WNLinear, nnx_args=(6, 5),
        linen=jnn_linen.WNDense, linen_args=(5,), input_shape=(4, 6), wrong_rank_shape=(),
    ),
    Layer(
        "WNConv", "weight_normalization", nnx=jnn.WNConv, nnx_args=(3, 4, (3, 3)),
        linen=jnn_linen.WNConv, linen_args=(4, (3, 3)), input_shape=(2, 5, 5, 3),
        wrong_rank_shape=(5, 5, 3),
    ),
    Layer(
        "SNLinear", "spectral_normalization", nnx=jnn.SNLinear, nnx_args=(6, 5),
        linen=jnn_linen.SNDense, linen_args=(5,), input_shape=(4, 6), wrong_rank_shape=(),
        batch_stats=True, kernel_statistics=True,
    ),
    Layer(
        "SNConv", "spectral_normalization", nnx=jnn.SNConv, nnx_args=(3, 4, (3, 3)),
        linen=jnn_linen.SNConv, linen_args=(4, (3, 3)), input_shape=(2, 5, 5, 3),
        wrong_rank_shape=(5, 5, 3), batch_stats=True, kernel_statistics=True,
    ),
    Layer(
        "AlphaDropout", "selu_self_normalizing", nnx=jnn.AlphaDropout, nnx_args=(0.2,),
        linen=jnn_linen.AlphaDropout, linen_args=(0.2,), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"num_features": 6}, stochastic="dropout",
    ),
    Layer(
        "EvoNormB0", "evonorm", nnx=jnn.EvoNormB0, nnx_args=(8,), linen=jnn_linen.EvoNormB0,
        linen_args=(), input_shape=(4, 3, 3, 8), wrong_rank_shape=(3, 8),
        kwargs={"momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "EvoNormS0", "evonorm", nnx=jnn.EvoNormS0, nnx_args=(8,), linen=jnn_linen.EvoNormS0,
        linen_args=(), input_shape=(4, 3, 3, 8), wrong_rank_shape=(8,), kwargs={"num_groups": 4},
    ),
    Layer(
        "ScaledWSLinear", "nf_resnet_scaled_ws", nnx=jnn.ScaledWSLinear, nnx_args=(6, 5),
        linen=jnn_linen.ScaledWSDense, linen_args=(5,), input_shape=(4, 6), wrong_rank_shape=(),
    ),
    Layer(
        "ScaledWSConv", "nf_resnet_scaled_ws", nnx=jnn.ScaledWSConv, nnx_args=(3, 4, (3, 3)),
        linen=jnn_linen.ScaledWSConv, linen_args=(4, (3, 3)), input_shape=(2, 5, 5, 3),
        wrong_rank_shape=(5, 3),
    ),
    Layer(
        "NFResidualBlock_transition", "nf_resnet_scaled_ws", nnx=jnn.NFResidualBlock,
        nnx_args=(3,), linen=jnn_linen.NFResidualBlock, linen_args=(), input_shape=(2, 5, 5, 3),
        wrong_rank_shape=(5, 3),
        kwargs={"out_features": 4, "kernel_size": (3, 3), "strides": 2, "beta": 0.9},
    ),
    Layer(
        "PowerNorm", "powernorm", nnx=jnn.PowerNorm, nnx_args=(8,), linen=jnn_linen.PowerNorm,
        linen_args=(), input_shape=(4, 3, 8), wrong_rank_shape=(8,),
        kwargs={"num_groups": 2, "warmup": 2, "alpha_fwd": 0.8, "alpha_bkw": 0.7},
        batch_stats=True, backward_stats=True, autodiff_kwargs={"alpha_bkw": 1.0},
        running_statistics_in_training=True,
    ),
    Layer(
        "PCNorm", "pcnorm_dac", nnx=jnn.PCNorm, nnx_args=(3,), linen=jnn_linen.PCNorm,
        linen_args=(), input_shape=(4, 4, 3, 3), wrong_rank_shape=(4, 3, 3),
        kwargs={"momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "SCNorm", "pcnorm_dac", nnx=jnn.SCNorm, nnx_args=(3,), linen=jnn_linen.SCNorm,
        linen_args=(), input_shape=(2, 4, 3, 3), wrong_rank_shape=(4, 3, 3),
    ),
    Layer(
        "GhostBatchNorm", "ghost_batch_norm", nnx=jnn.GhostBatchNorm, nnx_args=(4,),
        linen=jnn_linen.GhostBatchNorm, linen_args=(), input_shape=(4, 3, 4),
        wrong_rank_shape=(4,), kwargs={"ghost_batch_size": 2, "momentum": 0.8}, batch_stats=True,
    ),
    Layer(
        "IBN", "ibn_net", nnx=jnn.IBN, nnx_args=(4,), linen=jnn_linen.IBN, linen_args=(),
        input_shape=(4, 3, 3, 4), wrong_rank_shape=(4, 4), kwargs={"momentum": 0.8},
        batch_stats=True,
    ),
    # IBN-b stem and first stage (IN after the last block's addition), an IBN-a second stage
    # (its block has the strided shortcut): every IBN-Net block variant in one row.
    Layer(
        "IBNResNet_b", "ibn_net", nnx=jnn.IBNResNet, nnx_args=(2, 3),
        linen=jnn_linen.IBNResNet, linen_args=(3,), input_shape=(4, 4, 4, 2),
        wrong_rank_shape=(4, 4, 2),
        kwargs={"stage_features": (4, 6), "blocks_per_stage": (2, 1), "ibn_cfg": ("b", "a"),
                "momentum": 0.8},
        batch_stats=True,
    ),
    Layer(
        "MixLNBlock_post", "mix_ln", nnx=jnn.MixLNBlock, nnx_args=(8, 2, 8),
        linen=jnn_linen.MixLNBlock, linen_args=(2, 8), input_shape=(2, 3, 8),
        wrong_rank_shape=(3, 8), kwargs={"post_ln": True},
    ),
    Layer(
        "MixLNTransformer", "mix_ln", nnx=jnn.MixLNTransformer, nnx_args=(2, 8, 2, 8),
        linen=jnn_linen.MixLNTransformer, linen_args=(2, 2, 8), input_shape=(2, 3, 8),
        wrong_rank_shape=(3, 8), kwargs={"post_fraction": 0.5},
    ),
    # Online Norm streams the batch: its statistics are per device (no axis_name sync).
    Layer(
        "OnlineNorm", "online_normalization", nnx=jnn.OnlineNorm, nnx_args=(4,),
        linen=jnn_linen.OnlineNorm, linen_args=(), input_shape=(4, 4), wrong_rank_shape=(4,),
        kwargs={"alpha_fwd": 0.8, "alpha_bkw": 0.7}, batch_stats=True, backward_stats=True,
        autodiff_kwargs={"alpha_bkw": 1.0}, per_device_statistics=True,
    ),
    # UN in its first steps (t <= window) with momentum 0: the batch's own statistic, and the
    # official backward equals autodiff through it.
    Layer(
        "UnifiedNorm", "unified_normalization", nnx=jnn.UnifiedNorm, nnx_args=(4,),
        linen=jnn_linen.UnifiedNorm, linen_args=(), input_shape=(4, 3, 4), wrong_rank_shape=(4,),
        kwargs={"window_size": 2, "warmup_iters": 2, "momentum": 0.8}, batch_stats=True,
        backward_stats=True, autodiff_kwargs={"momentum": 0.0},
    ),
    # alpha-BN's evaluation mixes in the test batch's statistics; alpha = 0 (source statistics
    # only) meets the battery's batch-independent evaluation; alpha > 0 in test_alpha_bn.py.
    Layer(
        "AlphaBatchNorm", "alpha_bn_core", nnx=jnn.AlphaBatchNorm, nnx_args=(6,),
        linen=jnn_linen.AlphaBatchNorm, linen_args=(), input_shape=(4, 2, 2, 6),
        wrong_rank_shape=(6,), kwargs={"alpha": 0.0, "momentum": 0.8}, batch_stats=True,
    ),
    # One task (no task ids at call time): plain batch statistics with the modified momentum;
    # the task weights only act with several tasks (test_adab2n.py).
    Layer(
        "AdaB2N", "adab2n", nnx=jnn.AdaB2N, nnx_args=(6,), linen=jnn_linen.AdaB2N, linen_args=(),
        input_shape=(4, 2, 2, 6), wrong_rank_shape=(6,),
        kwargs={"num_tasks": 1, "kappa": 0.5, "momentum": 0.8}, batch_stats=True,
        no_output_gradient=("task_weight",),
    ),
    # Without a mask (no hole) the hole region is empty; masks in test_region_norm.py.
    Layer(
        "RegionNormB", "region_normalization", nnx=jnn.RegionNormB, nnx_args=(6,),
        linen=jnn_linen.RegionNormB, linen_args=(), input_shape=(4, 2, 2, 6),
        wrong_rank_shape=(2, 2, 6), no_output_gradient=("hole_gamma",),
    ),
    # 1x2 feature maps keep the detector's sigmoid off saturation with the battery's parameters.
    Layer(
        "RegionNormL", "region_normalization", nnx=jnn.RegionNormL, nnx_args=(6,),
        linen=jnn_linen.RegionNormL, linen_args=(6,), input_shape=(4, 1, 2, 6),
        wrong_rank_shape=(2, 6), kwargs={"kernel_size": 3},
    ),
    Layer(
        "NestedDropout", "nested_dropout_noisy_labels", nnx=jnn.NestedDropout, nnx_args=(6,),
        linen=jnn_linen.NestedDropout, linen_args=(6,), input_shape=(4, 6), wrong_rank_shape=(),
        kwargs={"sigma": 2.0}, stochastic="dropout",
    ),
    # Add new layers above this line
]
STATEFUL = [layer for layer in LAYERS if layer.batch_stats]
SYNCED = [
    layer for layer in STATEFUL
    if not (layer.per_device_statistics or layer.kernel_statistics)
]


def ids(layers):
  return [layer.name for layer in layers]


def inputs(layer: Layer, seed: int = 0, *, batch_from: int | None = None, dtype=jnp.float32,
           shards: int | None = None) -> jax.Array:
  """An input made with NumPy (no eager JAX op).

  Args:
    layer: the row.
    seed: the NumPy seed.
    batch_from: replace the samples from this index on by others.
    dtype: the input's dtype (float32 values rounded to it).
    shards: split the batch axis into this many shards (a new leading axis).
  """
  # A non-zero mean and a non-unit scale so that normalization has something to do.
  x = 1.5 * np.random.default_rng(seed).normal(size=layer.input_shape) + 0.5
  if batch_from is not None:
    x[batch_from:] = np.random.default_rng(seed + 100).normal(size=x[batch_from:].shape)
  x = x.astype(np.float32).astype(dtype)
  if shards is not None:
    x = x.reshape(shards, x.shape[0] // shards, *x.shape[1:])
  # Always a jax.Array: a NumPy argument would add a jit cache entry (not a compilation).
  return jnp.asarray(x)


def as_linen_variables(state: nnx.State) -> dict[str, Any]:
  params = nnx.to_pure_dict(nnx.filter_state(state, nnx.Param))
  variables = {"params": params} if params else {}  # Linen drops empty collections
  stats = batch_stats_of(state)
  if stats:
    variables["batch_stats"] = stats
  backward = nnx.to_pure_dict(nnx.filter_state(state, jnn.BackwardStat))
  if backward:
    variables[jnn.BACKWARD_STATS] = backward
  return variables


def batch_stats_of(state: nnx.State):
  return nnx.to_pure_dict(nnx.filter_state(state, nnx.BatchStat))


def avals(tree):
  """The structure, shapes and dtypes of a tree: what a compiled program is specialized on."""
  return jax.tree.structure(tree), [(a.shape, a.dtype) for a in jax.tree.leaves(tree)]


def assert_trees_close(actual, expected, **tolerance):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), **tolerance)


class Programs:
  """A row's initial state and every program its checks compile, built once per row.

  `nnx(...)` and `linen(...)` run the layer through one jitted function each, whose static
  arguments are the NNX graphdef (mode and dtype live there) and the Linen (dtype, mode): modes
  that compile to the same program share it. Every jitted function counts its traces per static
  arguments and input, so a check can assert that a later step reused the first compilation.
  """

  def __init__(self, layer: Layer):
    self.layer = layer
    self.traces = collections.Counter()
    # The state with no eager JAX op: shapes from `nnx.eval_shape`, parameters drawn with NumPy
    # (in [0.5, 1.5]: off any trivial initial value, and valid for parameters that must be
    # positive), every other variable (statistics) from the constructor, compiled without the
    # parameter initializers (an eager random draw for a rank-4 kernel compiles for ~1 s).
    rng = np.random.default_rng(42)
    graphdef, params, _ = nnx.split(nnx.eval_shape(layer.build_nnx), nnx.Param, ...)
    params = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype), params)
    others = jax.jit(lambda: nnx.state(layer.build_nnx(), nnx.Not(nnx.Param)))()
    self.state = nnx.state(nnx.merge(graphdef, params, others))
    self.graphdefs, self.modes = {}, {}
    for dtype in ("float32", "bfloat16"):
      overrides = {} if dtype == "float32" else {"dtype": jnp.bfloat16}
      abstract = nnx.eval_shape(lambda: layer.build_nnx(**overrides))
      for train in (True, False):
        abstract.train() if train else abstract.eval()
        graphdef, abstract_state = nnx.split(abstract)
        assert avals(abstract_state) == avals(self.state), "`dtype` must not change the state"
        self.graphdefs[train, dtype] = graphdef
        self.modes[graphdef] = f"{'train' if train else 'eval'}/{dtype}"
    self._nnx = jax.jit(self._nnx_step, static_argnums=0)
    self._linen = jax.jit(self._linen_step, static_argnums=(0, 1))
    self.nnx_jit_call = nnx.jit(
        self._count(lambda m, x: m(x, **layer.call_kwargs()), "nnx.jit"))
    if layer.batch_stats and not layer.kernel_statistics:  # (these take no axis_name)
      synced = nnx.eval_shape(lambda: layer.build_nnx(axis_name="batch"))
      synced.train()
      self.synced_graphdef = nnx.split(synced)[0]
      self.nnx_vmap = jax.jit(self._count(self._nnx_vmap_step, "nnx vmap"))
      self.linen_vmap = jax.jit(self._count(self._linen_vmap_step, "linen vmap"))

  def nnx(self, state, x, *, train: bool = True, dtype: str = "float32"):
    """(y, new state, gradients) of the NNX layer; see `_nnx_step`."""
    return self._nnx(self.graphdefs[train, dtype], state, x)

  def linen(self, variables, x, *, train: bool = True, dtype: str = "float32"):
    """(y, variables after the call) of the Linen layer."""
    return self._linen(
        dtype, train or not (self.layer.batch_stats or self.layer.stochastic), variables, x)

  def _count(self, fn, name):
    @functools.wraps(fn)
    def counted(*args):
      self.traces[name, np.shape(args[-1]), str(args[-1].dtype)] += 1
      return fn(*args)
    return counted

  def _nnx_step(self, graphdef, state, x):
    """(y, new state, gradients).

    The gradients, of a random projection of y w.r.t. (parameters, x), are computed in the
    float32 training program only (None elsewhere): one compilation serves both checks.
    """
    self.traces["nnx", self.modes[graphdef], x.shape, x.dtype] += 1
    params, others = nnx.filter_state(state, nnx.Param, ...)

    def forward(params, x):
      # Fresh Variables in this trace: merge shares them, and the layer may update statistics.
      model = nnx.merge(graphdef, *jax.tree.map(lambda a: a, (params, others)))
      y = model(x, **self.layer.call_kwargs())
      return jnp.sum(y.astype(jnp.float32) * _probe(y.shape)), (y, nnx.state(model))

    if graphdef != self.graphdefs[True, "float32"]:
      return *forward(params, x)[1], None
    (_, (y, new_state)), grads = jax.value_and_grad(forward, (0, 1), has_aux=True)(params, x)
    return y, new_state, grads

  def _linen_apply(self, module, train: bool, variables, x):
    if not self.layer.batch_stats:
      return module.apply(variables, x, **self.layer.call_kwargs(train, linen=True)), variables
    y, updates = module.apply(
        variables, x, use_running_average=not train, mutable=["batch_stats"]
    )
    return y, {**variables, **updates}

  def _linen_step(self, dtype: str, train: bool, variables, x):
    self.traces["linen", f"{'train' if train else 'eval'}/{dtype}", x.shape, x.dtype] += 1
    module = self.layer.build_linen(**({} if dtype == "float32" else {"dtype": jnp.bfloat16}))
    return self._linen_apply(module, train, variables, x)

  def _nnx_vmap_step(self, state, shards):
    model = nnx.merge(self.synced_graphdef, state)
    y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="batch")(model, shards)
    return y, nnx.state(model)

  def _linen_vmap_step(self, variables, shards):
    module = self.layer.build_linen(axis_name="batch")
    apply = functools.partial(self._linen_apply, module, True)
    return jax.vmap(apply, in_axes=(None, 0), out_axes=(0, None), axis_name="batch")(
        variables, shards
    )

  def model(self) -> nnx.Module:
    """A fresh NNX layer in training mode holding the row's initial state (copied Variables)."""
    return nnx.merge(self.graphdefs[True, "float32"], jax.tree.map(lambda a: a, self.state))

  def assert_no_retrace(self):
    """No program was traced twice, and nothing was compiled without a trace."""
    retraced = {key: n for key, n in self.traces.items() if n > 1}
    assert not retraced, f"traced again: {retraced}"
    for name in ("nnx", "linen"):
      compiled = getattr(self, f"_{name}")._cache_size()
      assert compiled == sum(key[0] == name for key in self.traces), f"{name} recompiled"


def _probe(shape):
  return jnp.asarray(np.random.default_rng(7).normal(size=shape), jnp.float32)


@functools.cache
def _programs(name: str) -> Programs:
  return Programs(next(layer for layer in LAYERS if layer.name == name))


def programs(layer: Layer) -> Programs:
  return _programs(layer.name)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_nnx_and_linen_agree_under_jit_without_recompiling(layer):
  p = programs(layer)
  variables = as_linen_variables(p.state)
  init_kwargs = {"use_running_average": True} if layer.batch_stats else {}
  init = lambda: layer.build_linen().init(jax.random.key(1), inputs(layer), **init_kwargs)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, dict(jax.eval_shape(init)))

  # NNX and Linen, one compiled program per mode, over train, train, eval.
  state, ys, states = p.state, [], []
  for step, train in enumerate((True, True, False)):
    x = inputs(layer, seed=step)
    y_nnx, state, _ = p.nnx(state, x, train=train)
    y_linen, variables = p.linen(variables, x, train=train)
    ys.append(y_nnx)
    states.append(state)
    np.testing.assert_allclose(y_nnx, y_linen, rtol=1e-6, atol=1e-6)
    assert_trees_close(as_linen_variables(state), variables, rtol=1e-6, atol=1e-7)
  p.assert_no_retrace()  # the second training step reused the first one's program

  # The compiled NNX steps against eager NNX (the one eager call), and nnx.jit on the module.
  eager = p.model()
  for step in (0, 1):
    y_eager = eager(inputs(layer, seed=step), **layer.call_kwargs())
    np.testing.assert_allclose(ys[step], y_eager, rtol=1e-5, atol=1e-6)
  assert_trees_close(states[1], nnx.state(eager), rtol=1e-5, atol=1e-6)
  model = p.model()
  np.testing.assert_allclose(p.nnx_jit_call(model, inputs(layer)), ys[0], rtol=1e-5, atol=1e-6)
  assert_trees_close(nnx.state(model), states[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_gradients_reach_every_parameter_and_the_input(layer):
  grad_params, grad_x = programs(layer).nnx(programs(layer).state, inputs(layer))[2]
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grad_params)):
    if jax.tree_util.keystr(path, simple=True, separator="/") in layer.no_output_gradient:
      np.testing.assert_array_equal(leaf, 0)  # and nothing reaches it, as designed
      continue
    leaf = np.asarray(leaf)
    assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), f"no gradient reaches {path}"
  grad_x = np.asarray(grad_x)
  assert np.all(np.isfinite(grad_x)) and np.any(grad_x != 0)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_train_and_eval_modes(layer):
  p = programs(layer)
  x = inputs(layer)
  if not layer.batch_stats:
    assert not jax.tree.leaves(nnx.filter_state(p.state, nnx.BatchStat))
    y_train, y_eval = p.nnx(p.state, x)[0], p.nnx(p.state, x, train=False)[0]
    if layer.stochastic:  # training samples noise, evaluation does not
      assert not np.allclose(y_train, y_eval)
    else:
      np.testing.assert_array_equal(y_train, y_eval)
    return
  _, trained, _ = p.nnx(p.state, x)
  for before, after in zip(jax.tree.leaves(batch_stats_of(p.state)),
                           jax.tree.leaves(batch_stats_of(trained))):
    assert not np.allclose(before, after), "a training call must update the running statistics"
  y_eval, evaluated, _ = p.nnx(trained, x, train=False)
  assert_trees_close(batch_stats_of(evaluated), batch_stats_of(trained), rtol=0, atol=0)
  # Evaluation normalizes with the running statistics: a sample's output ignores the rest of the
  # batch (here the second half is replaced by other samples: same shape, same program).
  half = x.shape[0] // 2
  mixed = inputs(layer, batch_from=half)
  np.testing.assert_allclose(p.nnx(trained, mixed, train=False)[0][:half], y_eval[:half],
                             rtol=1e-5, atol=1e-6)
  if not (layer.kernel_statistics or layer.running_statistics_in_training):
    assert not np.allclose(p.nnx(trained, x)[0][:half], y_eval[:half], atol=1e-3)
  p.assert_no_retrace()


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_bfloat16_inputs_keep_float32_parameters_and_statistics(layer):
  p = programs(layer)
  x16 = inputs(layer, dtype=jnp.bfloat16)
  # The dtype override leaves the state's dtypes alone (asserted when the graphdefs are built).
  y, state, _ = p.nnx(p.state, x16, dtype="bfloat16")
  assert y.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(state):  # parameters and statistics (step counters: integers)
    assert leaf.dtype == jnp.float32 or jnp.issubdtype(leaf.dtype, jnp.integer)
  y32, state32, _ = p.nnx(p.state, jnp.asarray(np.asarray(x16, np.float32)))
  np.testing.assert_allclose(np.asarray(y, np.float32), y32, rtol=5e-2, atol=5e-2)
  assert_trees_close(batch_stats_of(state), batch_stats_of(state32), rtol=1e-2, atol=1e-2)

  y_linen, variables = p.linen(as_linen_variables(p.state), x16, dtype="bfloat16")
  assert y_linen.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(variables.get("batch_stats", {})):
    assert leaf.dtype == jnp.float32 or jnp.issubdtype(leaf.dtype, jnp.integer)
  p.assert_no_retrace()


@pytest.mark.parametrize("layer", SYNCED, ids=ids(SYNCED))
def test_batch_statistics_sync_across_vmap_axis_name(layer):
  p = programs(layer)
  x, shards = inputs(layer), inputs(layer, shards=2)
  y_full, full, _ = p.nnx(p.state, x)

  y_synced, synced = p.nnx_vmap(p.state, shards)
  np.testing.assert_allclose(np.reshape(y_synced, y_full.shape), y_full, rtol=1e-5, atol=1e-5)
  assert_trees_close(batch_stats_of(synced), batch_stats_of(full), rtol=1e-5, atol=1e-6)

  y_linen, after = p.linen_vmap(as_linen_variables(p.state), shards)
  np.testing.assert_allclose(np.reshape(y_linen, y_full.shape), y_full, rtol=1e-5, atol=1e-5)
  assert_trees_close(after["batch_stats"], batch_stats_of(full), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", LAYERS, ids=ids(LAYERS))
def test_wrong_input_rank_or_feature_count_raises(layer):
  p = programs(layer)
  wrong_rank = jnp.ones(layer.wrong_rank_shape)
  wrong_features = jnp.ones((*layer.input_shape[:-1], layer.input_shape[-1] + 1))
  model = p.model()
  module = layer.build_linen()
  variables = as_linen_variables(p.state)
  for bad in (wrong_rank, wrong_features):
    with pytest.raises(ValueError, match="expects"):
      model(bad)
    with pytest.raises(ValueError, match="expects"):
      p._linen_apply(module, True, variables, bad)
  init_kwargs = {"use_running_average": False} if layer.batch_stats else {}
  with pytest.raises(ValueError, match="expects"):
    jax.eval_shape(lambda: module.init(jax.random.key(0), wrong_rank, **init_kwargs))
  p.linen(variables, inputs(layer))  # the good input still works


def test_every_registered_layer_has_a_row():
  rows = {layer.slug for layer in LAYERS}
  built = {layer.nnx for layer in LAYERS} | {layer.linen for layer in LAYERS}
  for method in registry.all_methods("normalization") + registry.all_methods("layer"):
    assert method.slug in rows, f"{method.slug} has no row in LAYERS"
    for symbol in method.symbols:
      obj = registry.resolve(symbol)
      if isinstance(obj, type) and issubclass(obj, (nnx.Module, linen.Module)):
        assert obj in built, f"{symbol} ({method.slug}) is not built by any row of LAYERS"


# Backward statistics (`jaxlearn.nn.backward_stats`): rows with `backward_stats=True`.
BACKWARD = [layer for layer in LAYERS if layer.backward_stats]
BACKWARD_SYNCED = [layer for layer in BACKWARD if not layer.per_device_statistics]
BACKWARD_FILTER = nnx.DiffState(0, jnn.PARAMS_AND_BACKWARD_STATS)


def backward_stats_of(state: nnx.State):
  return nnx.to_pure_dict(nnx.filter_state(state, jnn.BackwardStat))


def _probe_loss(model, x, call_kwargs):
  y = model(x, **call_kwargs)
  return jnp.sum(y.astype(jnp.float32) * _probe(y.shape))


class BackwardPrograms:
  """The programs of the backward-statistics checks of a row, compiled once and shared."""

  def __init__(self, layer: Layer):
    self.layer = layer
    self.p = programs(layer)
    kwargs = {**layer.kwargs, **(layer.autodiff_kwargs or {})}

    def graphdef(**overrides):
      abstract = nnx.eval_shape(
          lambda: layer.nnx(*layer.nnx_args, **{**kwargs, **overrides}, rngs=nnx.Rngs(0)))
      abstract.train()
      return nnx.split(abstract)[0]

    self.identity_graphdef = graphdef()
    self.autodiff_graphdef = graphdef(custom_backward=False)
    # Nonzero backward statistics, so that a correction that ignores the rate would show.
    rng = np.random.default_rng(3)
    stats, rest = nnx.filter_state(self.p.state, jnn.BackwardStat, ...)
    stats = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype), stats)
    self.nonzero_state = nnx.merge_state(rest, stats)
    self.grads = jax.jit(self._grads, static_argnums=0)
    self.linen_grads = jax.jit(self._linen_grads)
    if not layer.per_device_statistics:
      self.vmap_step = jax.jit(self._vmap_step)

  def _grads(self, graphdef, state, x):
    """(gradients w.r.t. parameters and backward statistics, gradient w.r.t. x, new state)."""
    model = nnx.merge(graphdef, jax.tree.map(lambda a: a, state))
    call_kwargs = self.layer.call_kwargs()
    grads, grad_x = nnx.grad(_probe_loss, argnums=(BACKWARD_FILTER, 1))(model, x, call_kwargs)
    return grads, grad_x, nnx.state(model)

  def _linen_grads(self, variables, x):
    module = self.layer.build_linen()

    def loss(diff, x):
      y, after = self.p._linen_apply(module, True, {**variables, **diff}, x)
      return jnp.sum(y.astype(jnp.float32) * _probe(y.shape)), after

    diff = {k: variables[k] for k in ("params", jnn.BACKWARD_STATS) if k in variables}
    (grads, grad_x), after = jax.grad(loss, (0, 1), has_aux=True)(diff, x)
    new_variables, param_grads = jnn.apply_backward_stats_to_variables(after, grads)
    return grads, grad_x, new_variables, param_grads

  def _vmap_step(self, state, shards):
    """Per-device gradients under vmap(axis_name): each device applies its increment."""
    def step(x):
      model = nnx.merge(self.p.synced_graphdef, jax.tree.map(lambda a: a, state))
      probe = _probe((shards.shape[0] * shards.shape[1], *shards.shape[2:]))
      index = jax.lax.axis_index("batch")
      probe = jax.lax.dynamic_index_in_dim(probe.reshape(shards.shape), index, keepdims=False)
      grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32) * probe),
                       argnums=BACKWARD_FILTER)(model)
      jnn.apply_backward_stats(model, grads)
      return backward_stats_of(nnx.state(model))
    return jax.vmap(step, axis_name="batch")(shards)


@functools.cache
def _backward_programs(name: str) -> BackwardPrograms:
  return BackwardPrograms(next(layer for layer in LAYERS if layer.name == name))


def backward_programs(layer: Layer) -> BackwardPrograms:
  return _backward_programs(layer.name)


def _split_grads(grads):
  return (nnx.to_pure_dict(nnx.filter_state(grads, nnx.Param)),
          nnx.to_pure_dict(nnx.filter_state(grads, jnn.BackwardStat)))


@pytest.mark.parametrize("layer", BACKWARD, ids=ids(BACKWARD))
def test_backward_stats_nnx_and_linen_give_the_same_increments(layer):
  b = backward_programs(layer)
  x = inputs(layer)
  grads, grad_x, after = b.grads(b.p.graphdefs[True, "float32"], b.nonzero_state, x)
  param_grads, increments = _split_grads(grads)
  assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(increments))
  variables = as_linen_variables(b.nonzero_state)
  linen_grads, linen_grad_x, new_variables, linen_param_grads = b.linen_grads(variables, x)
  assert_trees_close(linen_grads[jnn.BACKWARD_STATS], increments, rtol=1e-5, atol=1e-6)
  assert_trees_close(linen_grads["params"], param_grads, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(linen_grad_x, grad_x, rtol=1e-5, atol=1e-6)
  assert set(linen_param_grads) == {"params"}
  # The Linen helper adds the increments once; the NNX differentiation alone changes nothing.
  expected = jax.tree.map(np.add, backward_stats_of(b.nonzero_state), increments)
  assert_trees_close(new_variables[jnn.BACKWARD_STATS], expected, rtol=1e-6, atol=1e-6)
  assert_trees_close(backward_stats_of(after), backward_stats_of(b.nonzero_state), rtol=0, atol=0)
  # jax.grad with respect to the parameters only (the battery's training program) as well.
  _, trained, _ = b.p.nnx(b.nonzero_state, x)
  assert_trees_close(backward_stats_of(trained), backward_stats_of(b.nonzero_state),
                     rtol=0, atol=0)


@pytest.mark.parametrize("layer", BACKWARD, ids=ids(BACKWARD))
def test_backward_stats_applied_once_per_micro_step_under_multisteps(layer):
  import optax

  b = backward_programs(layer)
  train = b.p.graphdefs[True, "float32"]
  model = nnx.merge(train, jax.tree.map(lambda a: a, b.nonzero_state))
  learning_rate = 0.1
  optimizer = nnx.Optimizer(
      model, optax.MultiSteps(optax.sgd(learning_rate), every_k_schedule=2), wrt=nnx.Param)
  call_kwargs = layer.call_kwargs()

  @nnx.jit
  def train_step(model, optimizer, x):
    grads = nnx.grad(_probe_loss, argnums=BACKWARD_FILTER)(model, x, call_kwargs)
    param_grads = jnn.apply_backward_stats(model, grads)
    optimizer.update(model, param_grads)

  snapshot = lambda: jax.tree.map(lambda a: a, nnx.state(model))  # copies, not live Variables
  states, param_grads = [snapshot()], []
  for micro_step in (0, 1):
    x = inputs(layer, seed=micro_step)
    grads, _, _ = b.grads(train, states[-1], x)  # what this micro-step must add
    params, increments = _split_grads(grads)
    param_grads.append(params)
    train_step(model, optimizer, x)
    states.append(snapshot())
    expected = jax.tree.map(np.add, backward_stats_of(states[-2]), increments)
    assert_trees_close(backward_stats_of(states[-1]), expected, rtol=1e-5, atol=1e-6)
  before, after = (nnx.to_pure_dict(nnx.filter_state(s, nnx.Param)) for s in states[1:])
  first = nnx.to_pure_dict(nnx.filter_state(states[0], nnx.Param))
  assert_trees_close(before, first, rtol=0, atol=0)  # the first micro-step only accumulates
  expected = jax.tree.map(lambda p, g1, g2: p - learning_rate * (g1 + g2) / 2, first, *param_grads)
  assert_trees_close(after, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", BACKWARD_SYNCED, ids=ids(BACKWARD_SYNCED))
def test_backward_stats_increment_synced_across_vmap_axis_name(layer):
  b = backward_programs(layer)
  x = inputs(layer)
  grads, _, _ = b.grads(b.p.graphdefs[True, "float32"], b.nonzero_state, x)
  expected = jax.tree.map(np.add, backward_stats_of(b.nonzero_state), _split_grads(grads)[1])
  per_device = b.vmap_step(b.nonzero_state, inputs(layer, shards=2))
  for device in (0, 1):
    assert_trees_close(jax.tree.map(lambda a: a[device], per_device), expected,
                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", BACKWARD, ids=ids(BACKWARD))
def test_backward_stats_identity_rate_gradient_equals_autodiff(layer):
  assert layer.autodiff_kwargs is not None, "a backward_stats row needs autodiff_kwargs"
  b = backward_programs(layer)
  x = inputs(layer)
  custom, custom_x, _ = b.grads(b.identity_graphdef, b.nonzero_state, x)
  plain, plain_x, _ = b.grads(b.autodiff_graphdef, b.nonzero_state, x)
  np.testing.assert_allclose(custom_x, plain_x, rtol=1e-5, atol=1e-6)
  assert_trees_close(_split_grads(custom)[0], _split_grads(plain)[0], rtol=1e-5, atol=1e-6)
  for leaf in jax.tree.leaves(_split_grads(plain)[1]):  # plain autodiff: no increment
    np.testing.assert_array_equal(leaf, 0)
