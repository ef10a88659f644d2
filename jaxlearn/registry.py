"""The one place where every jaxlearn method is registered.

A record names the method by its catalogue slug (`../shared/catalogue/INDEX.md`), its kind, the
paper it comes from, the public symbols that implement it, and the tests and experiment that cover
it. `tests/test_registry.py` checks that every symbol imports and every listed file exists, and
that the README's method table is generated from this list. `jaxlearn list` prints it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import Any, Mapping

KINDS = (
    "optimizer",
    "transform",
    "schedule",
    "normalization",
    "layer",
    "loss",
    "regularizer",
    "local_rule",
    "diagnostic",
)


@dataclasses.dataclass(frozen=True)
class Method:
  """One registered method.

  Attributes:
    slug: the catalogue slug (INDEX.md).
    kind: one of `KINDS`.
    title: the paper title, as in the seed files.
    reference: arXiv id or URL of the paper.
    symbols: dotted paths of the public functions or classes.
    tests: test files (relative to the repository root) that cover the method.
    experiment: the experiment script (relative to the repository root), or None.
    notes: known deviations from the paper or from popular reference code.
    pytorch_optimizer: for optimizers, jaxlearn symbol -> pytorch-optimizer class name of the same
      algorithm (used by the parity tests and the benchmark).
  """

  slug: str
  kind: str
  title: str
  reference: str
  symbols: tuple[str, ...]
  tests: tuple[str, ...]
  experiment: str | None = None
  notes: str = ""
  pytorch_optimizer: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"{self.slug}: kind must be one of {KINDS}, got {self.kind!r}")

  def to_json(self) -> dict[str, Any]:
    record = dataclasses.asdict(self)
    record["symbols"] = list(self.symbols)
    record["tests"] = list(self.tests)
    record["pytorch_optimizer"] = dict(self.pytorch_optimizer)
    return record


_METHODS: tuple[Method, ...] = (
    Method(
        slug="adamp_sgdp",
        kind="optimizer",
        title=(
            "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights"
        ),
        reference="arXiv:2006.08217",
        symbols=(
            "jaxlearn.optim.adamp",
            "jaxlearn.optim.sgdp",
            "jaxlearn.optim.scale_by_adamp",
            "jaxlearn.optim.scale_by_sgdp",
        ),
        tests=("tests/optim/test_adamp.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/adamp_scale_invariance.py",
        notes=(
            "Layout: the per-channel view uses the LAST axis (Flax Dense (in, out), Conv HWIO); "
            "PyTorch and the official code use the first (pass channel_axis=0 for that layout). "
            "Follows the official code (clovaai/AdamP): bias corrections (the paper's listing has "
            "none), eps outside the corrected root, m_hat / (sqrt(v_hat) + eps) (pytorch-optimizer "
            "uses eps / sqrt(1 - b2^t), a larger eps early on), decoupled decay multiplied by lr "
            "and by wd_ratio on projected leaves, and for SGDP divided by 1 - momentum on every "
            "leaf. SGDP's momentum buffer is never projected, as in the paper's Algorithm 1 and "
            "pytorch-optimizer; the official SGDP without nesterov projects it in place (d_p "
            "aliases buf). The decay term is added inside scale_by_adamp / scale_by_sgdp because "
            "its factor depends on the projection. eps must be > 0 (the references allow 0, which "
            "gives 0/0 on zero gradients). Moments are kept in float32 at least. Complex "
            "parameters are not supported."
        ),
        pytorch_optimizer={"jaxlearn.optim.adamp": "AdamP", "jaxlearn.optim.sgdp": "SGDP"},
    ),
    Method(
        slug="weight_standardization_bcn",
        kind="normalization",
        title=(
            "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization"
        ),
        reference="arXiv:1903.10520",
        symbols=(
            "jaxlearn.nn.weight_standardize",
            "jaxlearn.nn.WSConv",
            "jaxlearn.nn.WSLinear",
            "jaxlearn.nn.BatchChannelNorm",
            "jaxlearn.nn.linen.WSConv",
            "jaxlearn.nn.linen.WSDense",
            "jaxlearn.nn.linen.BatchChannelNorm",
            "jaxlearn.nn.batch_channel_normalize",
        ),
        tests=("tests/nn/test_weight_standardization_bcn.py", "tests/nn/test_layer_battery.py"),
        experiment="experiments/microbatch_norm.py",
        notes=(
            "WS follows the paper: eps inside the square root of the population variance; the "
            "official PyTorch snippet divides by the unbiased std + 1e-5, which scales the "
            "standardized kernel by sqrt((I-1)/I) for fan-in I (tested). BCN follows the "
            "official code: per-group affine after the channel normalization, num_groups=32, "
            "eps 1e-5; `use_estimated_stats=True` is micro-batch BCN (EstBN: variance around the "
            "previous estimate, normalization with the updated estimates, no gradient through "
            "them). EstBN's rate is published neither in the paper nor in the code (its buffer "
            "defaults to 0): we default to momentum 0.99 (r = 0.01), flax's BatchNorm default. "
            "With batch statistics the running variance uses the biased batch variance (flax); "
            "PyTorch's BatchNorm2d uses the unbiased one (tested). Outputs default to the input "
            "dtype. WSConv/WSLinear reject `mask`."
        ),
    ),
    Method(
        slug="stablemax",
        kind="loss",
        title="Grokking at the Edge of Numerical Stability",
        reference="arXiv:2501.04697",
        symbols=(
            "jaxlearn.losses.stablemax",
            "jaxlearn.losses.log_stablemax",
            "jaxlearn.losses.stablemax_cross_entropy",
            "jaxlearn.losses.stablemax_cross_entropy_with_probs",
            "jaxlearn.losses.zero_gradient_fraction",
            "jaxlearn.losses.softmax_collapse_fraction",
        ),
        tests=("tests/losses/test_stablemax.py", "tests/losses/test_loss_battery.py"),
        experiment="experiments/stablemax_softmax_collapse.py",
        notes=(
            "The loss half of the paper; perpGrad (slug `perpgrad`) is an optimizer transform. "
            "The official code computes the loss in float64; here it runs in float32 (or the "
            "logits' dtype if wider) as log_softmax(log s(x)), with the non-maximal terms summed "
            "apart and added by log1p, so a confident example's loss and gradient do not round "
            "to 0 (the official float32 formula log(s / sum s) does at logits ~1e8). The official "
            "eps = 1e-30 in 1 / (1 - x + eps) is below float resolution (1 - x > 1) and omitted. "
            "Traced out-of-range labels give NaN; the official torch.gather would raise."
        ),
    ),
    Method(
        slug="forward_forward",
        kind="local_rule",
        title="The Forward-Forward Algorithm: Some Preliminary Investigations",
        reference="arXiv:2212.13345",
        symbols=(
            "jaxlearn.local.ForwardForward",
            "jaxlearn.local.goodness",
            "jaxlearn.local.layer_loss",
            "jaxlearn.local.rms_normalize",
            "jaxlearn.local.embed_label",
            "jaxlearn.local.sample_negative_labels",
            "jaxlearn.local.LocalModel",
            "jaxlearn.local.LocalRule",
            "jaxlearn.local.Block",
            "jaxlearn.local.dense_block",
            "jaxlearn.local.from_linen",
            "jaxlearn.local.from_nnx",
            "jaxlearn.local.block_losses",
            "jaxlearn.local.local_loss",
            "jaxlearn.local.local_train_step",
            "jaxlearn.local.init_train_state",
            "jaxlearn.local.block_labels",
            "jaxlearn.local.fit_functions",
        ),
        tests=("tests/local/test_framework.py", "tests/local/test_forward_forward.py"),
        experiment="experiments/forward_forward_digits.py",
        notes=(
            "Not a seed paper: Hinton's Forward-Forward is the base that the catalogue's "
            "`forward_gnn` and `model_free_forward_forward` build on; this record also carries "
            "the layer-local framework (`jaxlearn.local.framework`) every local rule uses. "
            "Details the paper leaves open follow Hinton's Matlab release: threshold = layer "
            "width on the sum of squares, RMS length normalization (inputs included), label "
            "value 1, prediction from all but the first hidden layer. Deviations: negatives "
            "are uniformly drawn wrong labels by default (Matlab draws hard negatives from a "
            "softmax read-out; pass `y_neg` from `sample_negative_labels(..., logits=)` for "
            "that); no peer normalization (Matlab's lambdamean=0.03 regularizer); the gradient "
            "is the exact one, twice Matlab's (it drops the 2 of d h^2), so learning rates "
            "differ by 2x. Popular PyTorch ports (mpezeshki) use mean instead of sum of "
            "squares with threshold 2, and random permutations that can pick the true label "
            "as a negative; ours never does."
        ),
    ),
    Method(
        slug="grams",
        kind="optimizer",
        title="Grams: Gradient Descent with Adaptive Momentum Scaling",
        reference="arXiv:2412.17107",
        symbols=("jaxlearn.optim.grams", "jaxlearn.optim.scale_by_grams"),
        tests=("tests/optim/test_grams.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/grams_vs_adam_lion.py",
        notes=(
            "Follows the official grams-pytorch 0.0.2: eps is added to sqrt(v_t) before the bias "
            "correction, which is folded into the step size (pytorch-optimizer adds eps after the "
            "correction; identical for eps=0, a test documents the difference); optional "
            "correct_bias=False as in the official code. pytorch-optimizer 4.1.0's first moment "
            "is the ordinary EMA (the catalogue's 'weights the new gradient by b1' does not hold "
            "for that version; tested). A zero first moment gives a zero step (no 0/0 at eps=0)."
        ),
        pytorch_optimizer={"jaxlearn.optim.grams": "Grams"},
    ),
    Method(
        slug="gravity_optimizer",
        kind="optimizer",
        title="Gravity Optimizer: a Kinematic Approach on Optimization in Deep Learning",
        reference="arXiv:2101.09192",
        symbols=(
            "jaxlearn.optim.gravity",
            "jaxlearn.optim.scale_by_gravity",
            "jaxlearn.optim.gravity_step",
        ),
        tests=("tests/optim/test_gravity.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/gravity_optimizer_seed_variance.py",
        notes=(
            "beta_hat_t = (beta t + 1)/(t + 2) with t = 0 at the first update, as in the paper's "
            "derivation and the official Keras code; the official PyTorch code and "
            "pytorch-optimizer start at t = 1 (tested: identical once the count is offset by 1). "
            "The initial velocity N(0, (alpha/lr)^2) needs a PRNG key (`key=`, an int seed or a "
            "key). Defaults are the official lr 0.1, alpha 0.01, beta 0.9 (pytorch-optimizer's "
            "lr default is 0.01). No weight decay (none in the paper)."
        ),
        pytorch_optimizer={"jaxlearn.optim.gravity": "Gravity"},
    ),
    Method(
        slug="optimistic_amsgrad",
        kind="optimizer",
        title="An Optimistic Acceleration of AMSGrad for Nonconvex Optimization",
        reference="arXiv:1903.01435",
        symbols=(
            "jaxlearn.optim.optimistic_amsgrad",
            "jaxlearn.optim.scale_by_optimistic_amsgrad",
            "jaxlearn.optim.rmpe_extrapolate",
        ),
        tests=("tests/optim/test_optimistic_amsgrad.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/optimistic_amsgrad_steps_to_target.py",
        notes=(
            "NOT ESTABLISHED FROM THE PAPER: only its abstract/first page were readable in the "
            "stored corpora, so the update (theta, h = b1 theta_{t-1} + (1-b1) m, v on (g - m)^2, "
            "AMSGrad max, half-step/optimistic-step pair, bias-corrected step size) is read from "
            "the official code (Hintonthu/optimistic-amsgrad, Optadam_torch.py). The official "
            "gradient predictor extrapolates the last `span` WEIGHTS with RMPE and evaluates an "
            "auxiliary network's gradient there (an extra backward pass, impossible inside a "
            "GradientTransformation); here RMPE (same ridge 1e-3, same pairing) is applied to the "
            "last span+1 gradients, as the official option help describes ('previous gradients "
            "used for prediction'). Prediction is 0 until span+1 gradients exist. Weight decay is "
            "decoupled (official: L2 added to the gradient). With an lr schedule the previous "
            "optimistic step is retracted at the current lr. `span` fixes a state shape: pass "
            "static_args=('span',) to inject_hyperparams when init is jitted."
        ),
    ),
    Method(
        slug="nag_gs",
        kind="optimizer",
        title="NAG-GS: Semi-Implicit, Accelerated and Robust Stochastic Optimizer",
        reference="arXiv:2209.14937",
        symbols=("jaxlearn.optim.nag_gs", "jaxlearn.optim.scale_by_nag_gs"),
        tests=("tests/optim/test_nag_gs.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/nag_gs_step_size_stability.py",
        notes=(
            "Implements the paper's algorithm (x-step, b_k with gamma_k, gamma-step, v-step at "
            "grad f(x_{k+1})) with v_0 = x_0, as read from the official PyTorch NAGGS and a NumPy "
            "transcription of the paper's Algorithm found in the code index (the two agree; the "
            "paper's pseudo-code itself was not readable). The official JAX/optax code branches "
            "in Python "
            "on a traced count (no jit), wastes the first gradient and uses gamma_{k+1} in the "
            "v-step; it agrees with this one when gamma_0 = mu (tested). The step alpha enters "
            "non-linearly, so the transform is the whole optimizer (no separate lr scaling) and "
            "there is no weight decay (none in the official code)."
        ),
    ),
    Method(
        slug="normalized_lr_gd",
        kind="optimizer",
        title=(
            "From Logistic Regression to the Perceptron Algorithm: Exploring Gradient Descent "
            "with Large Step Sizes"
        ),
        reference="arXiv:2412.08424",
        symbols=(
            "jaxlearn.optim.normalized_lr_gd",
            "jaxlearn.optim.scale_by_normalized_lr_gd",
            "jaxlearn.optim.logistic_normalizer",
        ),
        tests=("tests/optim/test_normalized_lr_gd.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/normalized_lr_gd_perceptron.py",
        notes=(
            "theta_{t+1} = theta_t - gamma beta_t grad f(theta_t), beta_t = 1/mean_i "
            "sigmoid(-y_i a_i^T theta_t) (paper, Sec. 6). beta_t needs every example's margin, "
            "passed as update(..., margins=y * logits); it is computed in log space. When every "
            "logistic weight underflows (all margins > ~88 in float32) the update is 0 instead of "
            "inf * 0 = NaN. The battery row fixes margins = 0 (beta = 2): it exercises the "
            "plumbing, the method-specific tests the normalization."
        ),
    ),
    Method(
        slug="ranger21",
        kind="optimizer",
        title="Ranger21: a synergistic deep learning optimizer",
        reference="arXiv:2106.13731",
        symbols=(
            "jaxlearn.optim.ranger21",
            "jaxlearn.optim.ranger21_schedule",
            "jaxlearn.optim.centralize_gradients",
            "jaxlearn.optim.normalize_gradients",
            "jaxlearn.optim.scale_by_pnm",
            "jaxlearn.optim.pnm",
            "jaxlearn.optim.scale_by_adapnm",
            "jaxlearn.optim.adapnm",
            "jaxlearn.optim.adapnm_second_moment",
            "jaxlearn.optim.with_stable_weight_decay",
            "jaxlearn.optim.adam_second_moment",
            "jaxlearn.optim.adams",
            "jaxlearn.optim.add_norm_loss",
            "jaxlearn.optim.unit_norm",
            "jaxlearn.optim.softplus_denominator",
            "jaxlearn.optim.scale_by_sadam",
            "jaxlearn.optim.lookahead_sync",
        ),
        tests=(
            "tests/optim/test_ranger21.py",
            "tests/optim/test_centralization.py",
            "tests/optim/test_pnm.py",
            "tests/optim/test_stable_weight_decay.py",
            "tests/optim/test_norm_loss.py",
            "tests/optim/test_softplus.py",
            "tests/optim/test_lookahead.py",
            "tests/optim/test_optimizer_battery.py",
        ),
        experiment="experiments/ranger21_deep_mlp.py",
        notes=(
            "An optax.chain of parts, each usable alone: AGC (jaxlearn.optim.adaptive_grad_clip, "
            "slug nfnet_agc), gradient centralization (per output unit, Flax layout; "
            "optax.centralize averages over the PyTorch axes), gradient normalization, AdaPNM "
            "(PNM: arXiv:2103.17182) with a softplus denominator (Sadam: arXiv:1908.00700), stable "
            "weight decay (AdamS: arXiv:2011.11152), norm loss (arXiv:2103.06583), the "
            "warmup/warmdown schedule, and Lookahead (arXiv:1907.08610) kept in the optimizer "
            "state (optax.lookahead keeps it in the params). The paper body was not readable "
            "here: the rule follows the official code (lessw2020/Ranger21) with its bugs fixed: "
            "stable decay and norm loss on every parameter (official: last parameter only), a "
            "working AMSGrad maximum (official: no-op), PNM with b0=1 and sqrt((1+b0)^2+b0^2) "
            "(official: bool factor and b2 in the norm), one gradient normalization (both "
            "references normalize twice), eps in the stable-decay denominator and no decay "
            "while every gradient is zero. pytorch-optimizer 4.1.0 Ranger21 differs: sum of "
            "v_hat starts at 1.0, double normalization, default beta0=0.9 and beta0=1.0 rejected. "
            "Decay terms are additive in theta_{t-1} (references: sequential in place, "
            "O(lr^2) apart)."
        ),
        pytorch_optimizer={
            "jaxlearn.optim.ranger21": "Ranger21",
            "jaxlearn.optim.adapnm": "AdaPNM",
            "jaxlearn.optim.pnm": "PNM",
            "jaxlearn.optim.adams": "AdamS",
        },
    ),
    Method(
        slug="perpgrad",
        kind="transform",
        title="Grokking at the Edge of Numerical Stability",
        reference="arXiv:2501.04697",
        symbols=("jaxlearn.optim.orthogonalize_gradients", "jaxlearn.optim.orthogonalize_leaf"),
        tests=("tests/optim/test_orthograd.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/perpgrad_weight_norm.py",
        notes=(
            "Same rule and eps (1e-30) as the official orthograd.py and pytorch-optimizer "
            "OrthoGrad (parity test), per tensor on every leaf; projection and norms in float32 "
            "or wider (the references use the parameter dtype, float32 unless float64). Chain it "
            "before the base optimizer. A gradient exactly parallel to w leaves only rounding "
            "noise, which the rule (like both references) rescales to ||g||. StableMax is "
            "jaxlearn.losses.stablemax_cross_entropy (its own record)."
        ),
        pytorch_optimizer={"jaxlearn.optim.orthogonalize_gradients": "OrthoGrad"},
    ),
    Method(
        slug="allora",
        kind="layer",
        title="ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws",
        reference="arXiv:2410.09692",
        symbols=("jaxlearn.nn.lora_delta", "jaxlearn.nn.init_lora", "jaxlearn.nn.LoRA",
                 "jaxlearn.nn.linen.LoRA"),
        tests=("tests/optim/test_sora.py", "tests/nn/test_layer_battery.py"),
        experiment=None,
        notes=(
            "INCOMPLETE: only the scaling-free, dropout-free LoRA adapter ALLoRA trains "
            "(lora_delta with scaling=1, shared with SoRA) is implemented. The ALLoRA update rule "
            "itself is NOT implemented: the stored sources give only the abstract (gradients "
            "scaled by a coefficient inversely proportional to the parameters' l2 norm); the "
            "norm granularity (per tensor / per row), the stabilizing constant that keeps the "
            "coefficient finite at B = 0, and the defaults could not be read (no paper body or "
            "official code reachable), so no transform, battery row or experiment was written "
            "rather than guessing the rule."
        ),
    ),
    Method(
        slug="sora_sparse_lora",
        kind="optimizer",
        title="Sparse Low-rank Adaptation of Pre-trained Language Models",
        reference="arXiv:2311.11696",
        symbols=("jaxlearn.optim.sora", "jaxlearn.optim.soft_threshold",
                 "jaxlearn.optim.soft_threshold_leaf", "jaxlearn.nn.lora_delta",
                 "jaxlearn.nn.init_lora", "jaxlearn.nn.LoRA"),
        tests=("tests/optim/test_sora.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/sora_sparse_lora_lambda_sweep.py",
        notes=(
            "Follows TsinghuaC3I/SoRA SparseAdamW: AdamW then soft-threshold by lambda, lambda "
            "not multiplied by lr (NumPy-transcription test). Differences: eps is added to "
            "sqrt(v_hat) (optax) instead of sqrt(v) before bias correction (HF AdamW), O(eps); at "
            "|p| = lambda exactly the official code keeps p, prox gives 0. The default "
            "sparse_lambda=3e-4 is the GLUE scripts' sparse_lambda_2; that this is the "
            "SparseAdamW threshold (and what sparse_lambda=10 does) comes from a third-party "
            "config, run_glue.py was not read. soft_threshold is the reusable proximal-L1 "
            "transform."
        ),
    ),
    Method(
        slug="hft_half_fine_tuning",
        kind="transform",
        title="HFT: Half Fine-Tuning for Large Language Models",
        reference="arXiv:2404.18466",
        symbols=("jaxlearn.optim.half_fine_tuning",),
        tests=("tests/optim/test_hft.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/hft_half_fine_tuning_forgetting.py",
        notes=(
            "No official code and the paper body was not readable: the selection (half of each "
            "category's parameter matrices, redrawn per stage) follows the abstract and "
            "secondary summaries. Groups are pytree leaves, categories user-given (default one), "
            "round(fraction * n) per category with halves rounded up. Frozen leaves get zero "
            "updates (place the transform last); the base optimizer's moments of frozen leaves "
            "still see their gradients (PyTorch requires_grad=False would skip them)."
        ),
    ),
    Method(
        slug="rehearsal_free_cl_l2",
        kind="transform",
        title="A Closer Look at Rehearsal-Free Continual Learning",
        reference="arXiv:2203.17269",
        symbols=("jaxlearn.optim.decay_to_anchor", "jaxlearn.optim.set_anchor",
                 "jaxlearn.optim.anchor_penalty", "jaxlearn.optim.fisher_diagonal",
                 "jaxlearn.data.split_digits", "jaxlearn.data.split_by_class"),
        tests=("tests/optim/test_anchor.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/rehearsal_free_cl_l2_split_digits.py",
        notes=(
            "Penalty (lambda/2) sum F (theta - theta*)^2 added as its gradient (coupled form; "
            "decoupled if placed after the base scaling). The paper's exact normalization "
            "(lambda vs lambda/2), its lambda values and Fisher estimator were not read; "
            "fisher_diagonal is the empirical Fisher (observed labels), and the experiment sums "
            "the Fishers of past tasks around one anchor (the previous task's weights)."
        ),
    ),
    Method(
        slug="lion",
        kind="optimizer",
        title="Symbolic Discovery of Optimization Algorithms",
        reference="arXiv:2302.06675",
        symbols=("optax.lion", "optax.scale_by_lion", "jaxlearn.optim.lion",
                 "jaxlearn.optim.scale_by_lion"),
        tests=("tests/optim/test_lion.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/lion_batch_size.py",
        notes=(
            "optax.lion is Algorithm 2 exactly (NumPy transcription and pytorch-optimizer Lion "
            "parity tests). jaxlearn.optim.lion wraps optax.scale_by_lion for the paper's "
            "official-code defaults and jaxlearn's conventions: weight_decay 0 (optax: 1e-3), "
            "weight_decay_mask (optax: mask), float32 momentum for low-precision params (optax: "
            "param dtype) and updates in the gradient dtype (optax with mu_dtype=float32 returns "
            "float32 updates for bfloat16 grads). Defaults and beta ranges [0, 1) as in the "
            "official code (google/automl lion/lion_pytorch.py, lion_optax.py)."
        ),
        pytorch_optimizer={"jaxlearn.optim.lion": "Lion", "optax.lion": "Lion"},
    ),
    Method(
        slug="gradient_noise",
        kind="transform",
        title="Adding Gradient Noise Improves Learning for Very Deep Networks",
        reference="arXiv:1511.06807",
        symbols=("optax.add_noise", "jaxlearn.optim.add_gradient_noise"),
        tests=("tests/optim/test_gradient_noise.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/gradient_noise_deep_mlp.py",
        notes=(
            "optax.add_noise matches sigma_t^2 = eta / (1 + t)^gamma with eta the variance and "
            "t = 0 at the first step, independent noise per leaf and per step (measured in the "
            "tests). The paper has no official code and does not spell out where t starts; "
            "(1 + t) implies t = 0 first, as optax and Chainer's GradientNoise do. "
            "jaxlearn.optim.add_gradient_noise adds argument checks (optax turns eta < 0 into NaN "
            "updates) and keeps the gradient dtype under inject_hyperparams. Not in "
            "pytorch-optimizer."
        ),
    ),
    Method(
        slug="novograd",
        kind="optimizer",
        title=(
            "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep "
            "Networks"
        ),
        reference="arXiv:1905.11286",
        symbols=("optax.novograd", "optax.scale_by_novograd", "jaxlearn.optim.novograd",
                 "jaxlearn.optim.scale_by_novograd"),
        tests=("tests/optim/test_novograd.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/novograd_lr_robustness.py",
        notes=(
            "Verified against the official code (OpenSeq2Seq NovoGrad2, NeMo Novograd): per-leaf "
            "scalar v initialized to |g_1|^2, m_1 = u_1, decay added after normalization inside "
            "the momentum; optax.novograd matches for the same hyperparameters. jaxlearn's own "
            "transform adds weight_decay_mask (the decay sits inside the momentum, so optax.masked "
            "cannot do it), grad_averaging, float32 state (optax keeps v, m in the param dtype) "
            "and the official defaults betas (0.95, 0.98), eps 1e-8 (optax: 0.9, 0.25, 1e-6). "
            "eps is outside the root (NeMo/optax/pytorch-optimizer; OpenSeq2Seq puts it inside: "
            "eps=0, eps_root=...). pytorch-optimizer's grad_averaging skips the (1 - b1) factor "
            "on the first step; the official code does not (tested). The paper's Algorithm 1 "
            "itself was not readable here: the defaults of its experiments are not verified."
        ),
        pytorch_optimizer={"jaxlearn.optim.novograd": "NovoGrad"},
    ),
    Method(
        slug="nfnet_agc",
        kind="transform",
        title="High-Performance Large-Scale Image Recognition Without Normalization",
        reference="arXiv:2102.06171",
        symbols=("optax.adaptive_grad_clip", "jaxlearn.optim.adaptive_grad_clip"),
        tests=("tests/optim/test_agc.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/nfnet_agc_large_batch.py",
        notes=(
            "optax.adaptive_grad_clip equals the official nfnets/agc_optax.py and the paper's "
            "per-output-unit clipping for Dense (in, out) and HWIO conv kernels and vectors "
            "(NumPy transcription and pytorch-optimizer agc parity tests). Rank-3 kernels are "
            "read as multi-head (in, heads, dim): for 1-D conv kernels (W, I, O) the per-unit "
            "form needs axis=(0, 1). jaxlearn.optim.adaptive_grad_clip adds checks and float32 "
            "norms with the gradient dtype kept under inject_hyperparams. The paper leaves the "
            "final layer unclipped: wrap in optax.masked. pytorch-optimizer has agc() as a "
            "function, no optimizer class."
        ),
    ),
    Method(
        slug="grad_norm_clipping",
        kind="transform",
        title="On the difficulty of training Recurrent Neural Networks",
        reference="arXiv:1211.5063",
        symbols=("optax.clip_by_global_norm", "jaxlearn.optim.clip_by_global_norm",
                 "jaxlearn.optim.vanishing_gradient_regularizer",
                 "jaxlearn.optim.rnn_state_gradients"),
        tests=("tests/optim/test_grad_norm_clipping.py", "tests/optim/test_optimizer_battery.py"),
        experiment="experiments/grad_norm_clipping_adding.py",
        notes=(
            "Clipping: optax.clip_by_global_norm is Algorithm 1 (torch clip_grad_norm_ divides by "
            "|g| + 1e-6); jaxlearn's adds a check and float32 norms, and works under "
            "inject_hyperparams with bfloat16 grads (optax's lax.select fails). Regularizer: "
            "Omega of Eq. (9) with the immediate gradient of Eq. (10) (states and dE/dx held "
            "constant), a loss term. The official code (pascanur/trainingRNNs) uses squared-norm "
            "ratios (squared=True), averages over steps instead of summing, and holds h_k "
            "constant in the post-activation form; all three are documented in tests. The "
            "paper's text was not readable here: Eq. (9)'s ratio of norms is as the catalogue "
            "quotes it; the default (squared=False) follows that, the official code squared=True."
        ),
    ),
    # New records go above this line (keep them grouped by family, as in INDEX.md).
)


def all_methods(kind: str | None = None) -> tuple[Method, ...]:
  """All registered methods, in registration order; only those of `kind` if given."""
  if kind is not None and kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return tuple(m for m in _METHODS if kind is None or m.kind == kind)


def get(slug: str) -> Method:
  """The record for `slug`; a KeyError with close matches if there is none."""
  for method in _METHODS:
    if method.slug == slug:
      return method
  close = difflib.get_close_matches(slug, [m.slug for m in _METHODS], n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise KeyError(f"no method with slug {slug!r}.{hint} See `jaxlearn list`.")


def resolve(symbol: str) -> Any:
  """Imports a dotted symbol path such as 'jaxlearn.optim.adamp'."""
  module_name, _, attribute = symbol.rpartition(".")
  return getattr(importlib.import_module(module_name), attribute)


def optimizer_aliases() -> list[tuple[Method, str]]:
  """(method, symbol) for every registered optimizer alias.

  An alias is a registered function of an "optimizer" method whose first argument is
  `learning_rate`, other than `scale_by_*` transforms and `*_schedule` learning-rate schedules.
  """
  import inspect

  aliases = []
  for method in all_methods("optimizer"):
    for symbol in method.symbols:
      name = symbol.rsplit(".", 1)[-1]
      if name.startswith("scale_by_") or name.endswith("_schedule"):
        continue
      parameters = list(inspect.signature(resolve(symbol)).parameters)
      if parameters[:1] == ["learning_rate"]:
        aliases.append((method, symbol))
  return aliases


def markdown_table() -> str:
  """The README's method table (kept in sync by a test)."""
  lines = ["| slug | kind | paper | symbols | experiment |", "|---|---|---|---|---|"]
  for m in _METHODS:
    symbols = ", ".join(f"`{s.removeprefix('jaxlearn.')}`" for s in m.symbols)
    experiment = f"`{m.experiment}`" if m.experiment else "-"
    lines.append(f"| `{m.slug}` | {m.kind} | {m.title} ({m.reference}) | {symbols} | {experiment} |")
  return "\n".join(lines)
