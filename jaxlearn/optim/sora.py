"""SoRA: proximal L1 (soft-thresholding) on the gates of a gated LoRA, after an AdamW step.

Paper: Ding, Lv, Wang, Chen, Liu, Zhou and Sun, "Sparse Low-rank Adaptation of Pre-trained Language
Models", arXiv:2311.11696 (EMNLP 2023). Official code: TsinghuaC3I/SoRA (`src/sparse_optimizer.py`
`SparseAdamW`, `src/lora.py`). The adapter ΔW x = B (g ⊙ (A x)) has a gate g ∈ R^r
(`jaxlearn.nn.lora_delta`). The gates take an AdamW step and then the proximal step of λ‖g‖₁,

  g ← prox_λ(g) = sign(g) · max(|g| − λ, 0),

which sets gates exactly to zero, so the ranks whose gate is zero can be dropped after training.
In the official code λ is NOT multiplied by the learning rate (a fixed threshold per step).

`jaxlearn.optim.soft_threshold(λ)` is that proximal step as a reusable optax transform, shared by
every optimizer: placed last in a chain it turns the proposed update u into prox_λ(θ + u) − θ (the
proximal gradient / ISTA step when the chain is `sgd(lr)` and λ = lr · ℓ1-strength).
`sora(...)` is the official optimizer: AdamW (decoupled
weight decay times lr, as HF `transformers.AdamW`) then `soft_threshold` on the leaves chosen by
`gate_mask`.

Known differences from the official code: the official AdamW adds ε to √v before the bias
correction (HF `AdamW`); here ε is added to √v̂ (optax), a difference of order ε. At |θ| = λ exactly
the official code leaves θ unchanged; prox gives 0 (a measure-zero case).
"""

from __future__ import annotations

import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "sora",
]


def sora(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    sparse_lambda: float = 3e-4,
    *,
    weight_decay_mask: _common.MaskOrFn | None = None,
    gate_mask: _common.MaskOrFn | None = None,
) -> optax.GradientTransformationExtraArgs:
  """SoRA's SparseAdamW: AdamW, then soft-thresholding by `sparse_lambda` (arXiv:2311.11696).

  θ ← θ − lr · (m̂ / (√v̂ + ε) + wd · θ), then θ ← prox_λ(θ) on the `gate_mask` leaves. Adam's
  moments are kept and computed in float32 or wider (`compute_in_float32`).

  Args:
    learning_rate: lr >= 0 (or a schedule).
    b1, b2: Adam's decay rates in [0, 1).
    eps: added to √v̂ (> 0; HF AdamW default 1e-6).
    weight_decay: decoupled decay, multiplied by lr (>= 0).
    sparse_lambda: λ >= 0 of the proximal step, not multiplied by lr (the official GLUE scripts
      pass 3e-4 as `sparse_lambda_2`).
    weight_decay_mask: leaves to decay (pytree of bools or callable); None: all.
    gate_mask: leaves to soft-threshold (the gates); None: all.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` requires `params`.
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_positive("eps", eps)
  _checks.check_non_negative("sparse_lambda", sparse_lambda)
  return optax.chain(
      _common.alias(_common.compute_in_float32(optax.scale_by_adam(b1, b2, eps)), learning_rate,
                    weight_decay, weight_decay_mask),
      _common.soft_threshold(sparse_lambda, mask=gate_mask),
  )


RECORD = registry.record(
    slug="sora_sparse_lora",
    kind="optimizer",
    title="Sparse Low-rank Adaptation of Pre-trained Language Models",
    reference="arXiv:2311.11696",
    experiment="sora_sparse_lora_lambda_sweep",
    also=(
        "jaxlearn.optim.soft_threshold",
        "jaxlearn.optim.soft_threshold_leaf",
        "jaxlearn.nn.lora_delta",
        "jaxlearn.nn.init_lora",
        "jaxlearn.nn.LoRA",
    ),
    notes=(
        "Follows TsinghuaC3I/SoRA SparseAdamW: AdamW then soft-threshold by lambda, lambda not "
        "multiplied by lr (NumPy-transcription test). Differences: eps is added to sqrt(v_hat) "
        "(optax) instead of sqrt(v) before bias correction (HF AdamW), O(eps); at |p| = lambda "
        "exactly the official code keeps p, prox gives 0. The default sparse_lambda=3e-4 is "
        "the GLUE scripts' sparse_lambda_2; that this is the SparseAdamW threshold (and what "
        "sparse_lambda=10 does) comes from a third-party config, not checked against the "
        "official run_glue.py. soft_threshold is the reusable proximal-L1 transform."
    ),
)
