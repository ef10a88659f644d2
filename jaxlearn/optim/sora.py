"""SoRA: proximal L1 (soft-thresholding) on the gates of a gated LoRA, after an AdamW step.

Paper: Ding, Lv, Wang, Chen, Liu, Zhou and Sun, "Sparse Low-rank Adaptation of Pre-trained Language
Models", arXiv:2311.11696 (EMNLP 2023). Official code: TsinghuaC3I/SoRA (`src/sparse_optimizer.py`
`SparseAdamW`, `src/lora.py`). The adapter ΔW x = B (g ⊙ (A x)) has a gate g ∈ R^r
(`jaxlearn.nn.lora_delta`). The gates take an AdamW step and then the proximal step of λ‖g‖₁,

  `g ← prox_λ(g) = sign(g) · max(|g| − λ, 0)`,

which sets gates exactly to zero, so the ranks whose gate is zero can be dropped after training.
In the official code λ is NOT multiplied by the learning rate (a fixed threshold per step).

`jaxlearn.optim.soft_threshold(λ)` is that proximal step as a reusable optax transform, shared by
every optimizer: placed last in a chain it turns the proposed update u into prox_λ(θ + u) − θ (the
proximal gradient / ISTA step when the chain is `sgd(lr)` and λ = lr · ℓ1-strength).
`sora(...)` is the official optimizer: AdamW (decoupled weight decay times lr, as HF
`transformers.AdamW`) then `soft_threshold` on the leaves chosen by `gate_mask`.

The official training also adds an L1 penalty on the gates to the loss (`src/trainer.py`), with
its own coefficient (`--sparse_lambda`; the threshold above is `--sparse_lambda_2`):

  loss ← loss + λ_loss · Σ|g_i| / N   (every gate entry of every layer, N of them),

`sora_gate_penalty(params, sparse_lambda, gate_mask)`. Add it to your loss to train as the
official code does; `sora` alone applies only the proximal step.

Known differences from the official code:

- The threshold. The official code writes it as three in-place masks applied one after the
  other, `p[p > λ] -= λ; p[p < -λ] += λ; p[|p| < λ] = 0`: a value in (λ, 2λ) is first shrunk into
  (0, λ) and then zeroed by the third mask (likewise in (−2λ, −λ)). So it zeroes every `|p| < 2λ`
  and shrinks the rest by λ, a step that jumps from 0 to λ at `|p| = 2λ`. Here the true soft
  threshold is kept: it is the paper's proximal step of λ‖g‖₁ (a value in (λ, 2λ) becomes
  `|p| − λ`). At `|p| = λ` exactly the official code leaves p unchanged; prox gives 0 (a
  measure-zero case).
- The official AdamW adds ε to √v before the bias correction (HF `AdamW`); here ε is added to √v̂
  (optax), a difference of order ε.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "sora",
    "sora_gate_penalty",
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

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import nn, optim
    >>> params = nn.init_lora(jax.random.key(0), 4, 3, rank=2, gated=True)
    >>> opt = optim.sora(1e-3, sparse_lambda=1e-3, gate_mask={"a": False, "b": False, "gate": True})
    >>> state = opt.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = jax.jit(opt.update)(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_positive("eps", eps)
  _checks.check_non_negative("sparse_lambda", sparse_lambda)
  return optax.chain(
      _common.alias(_adam(b1, b2, eps), learning_rate, weight_decay, weight_decay_mask),
      _common.soft_threshold(sparse_lambda, mask=gate_mask),
  )


def sora_gate_penalty(
    params: optax.Params, sparse_lambda, gate_mask: _common.MaskOrFn | None = None
) -> jax.Array:
  r"""The official trainer's L1 penalty on the gates: add it to the loss.

  .. math::

    \lambda \cdot \frac{1}{N} \sum_i |g_i|

  over every entry of every leaf chosen by `gate_mask` (N entries in all, one mean over all of
  them, as `src/trainer.py` divides the sum over all `lora.gate` parameters by their total size).
  Its gradient λ sign(g_i) / N reaches the gates through the loss, before `sora`'s AdamW step and
  proximal threshold.

  Args:
    params: the parameters.
    sparse_lambda: λ >= 0, the official `--sparse_lambda` (a loss coefficient; the GLUE scripts
      use 10). Not `sora`'s `sparse_lambda`, which is the official `--sparse_lambda_2` threshold.
    gate_mask: a pytree of bools (or a callable params -> one) choosing the gates; None: every leaf.

  Returns:
    A float32 (or wider) scalar; 0 when no leaf is chosen.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.optim import sora_gate_penalty
    >>> params = {"a": jnp.ones((4, 2)), "gate": jnp.array([0.5, -1.5])}
    >>> sora_gate_penalty(params, 10.0, gate_mask={"a": False, "gate": True})  # 10 * mean |g|
    Array(10., dtype=float32)
  """
  _checks.check_non_negative("sparse_lambda", sparse_lambda)
  _common.check_mask(gate_mask, "gate_mask")
  flags = _common.decay_flags(gate_mask, params)
  gates = [g for g, flag in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if flag]
  if not gates:
    return jnp.zeros([], jnp.float32)
  total = sum(jnp.sum(jnp.abs(g.astype(_common.wide_dtype(g.dtype)))) for g in gates)
  return sparse_lambda * total / sum(g.size for g in gates)


def _adam(b1, b2, eps) -> optax.GradientTransformationExtraArgs:
  """HF AdamW's moments in float32 (optax.scale_by_adam), checking the params it is given."""
  adam = _common.compute_in_float32(optax.scale_by_adam(b1, b2, eps))
  return _common.with_params_check(adam, "sora")


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
        "Follows TsinghuaC3I/SoRA SparseAdamW: AdamW then a threshold by lambda, lambda not "
        "multiplied by lr (NumPy-transcription test). The official training also adds "
        "sparse_lambda * mean|gate| (sum over every gate entry / their number) to the loss "
        "(src/trainer.py, coefficient --sparse_lambda, 10 in the GLUE scripts): "
        "sora_gate_penalty, to add to your loss; sora alone does not. sora's sparse_lambda is "
        "the threshold, the official --sparse_lambda_2 (run_glue.py passes it to SparseAdamW; "
        "default 3e-4 as in the GLUE scripts). Differences: the official threshold is three "
        "in-place masks in sequence (p[p > lambda] -= lambda; p[p < -lambda] += lambda; "
        "p[|p| < lambda] = 0), so every value in (lambda, 2 lambda) (and (-2 lambda, -lambda)) "
        "ends at 0; jaxlearn applies the true soft threshold, the paper's proximal step, which "
        "gives |p| - lambda there (tested against a transcription of the three masks); at "
        "|p| = lambda exactly the official code keeps p, prox gives 0. eps is added to "
        "sqrt(v_hat) (optax) instead of sqrt(v) before bias correction (HF AdamW), O(eps). "
        "soft_threshold is the reusable proximal-L1 transform."
    ),
)
