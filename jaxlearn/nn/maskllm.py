r"""MaskLLM: learnable N:M (2:4) masks, a Gumbel-softmax over the candidate masks of every group.

Paper: Fang, Yin, Muralidharan, Heinrich, Pool, Kautz, Molchanov and Wang, "MaskLLM: Learnable
Semi-Structured Sparsity for Large Language Models", arXiv:2409.17481. Official code:
github.com/NVlabs/MaskLLM, ``learnable_sparsity/differentiable_mask.py`` (``DifferentiableMask``),
``pretrain_maskllm.py`` (the loss); the equations below are read from them.

Every group of :math:`m = 4` consecutive weights along the fan-in has :math:`C = \binom{4}{2} = 6`
candidate 2:4 masks :math:`S_c \in \{0, 1\}^4` (`candidate_masks`, the official table:
1100, 1010, 1001, 0110, 0101, 0011) and learnable logits :math:`g \in \mathbb{R}^{C}`
(initialized :math:`\mathcal N(0, 0.01^2)`). In training, with Gumbel noise
:math:`\epsilon_c \sim \mathrm{Gumbel}(0, 1)`, a temperature :math:`\tau` and a logit scale
:math:`\kappa`,

.. math::

   \pi = \mathrm{softmax}\Bigl(\frac{\kappa g + \epsilon}{\tau}\Bigr), \qquad
   \mathcal M = \sum_c \pi_c S_c, \qquad y = x\,(W \odot \mathcal M) + b,

(``hard=True``: the straight-through one-hot of :math:`\pi`). In evaluation the mask is the
argmax candidate :math:`S_{\arg\max_c g_c}`. Both schedules are linear in the training progress
:math:`p = t / T` (`maskllm_schedule`): :math:`\tau: 4 \to 0.1` and :math:`\kappa: 10^3 \to
10^4` (the layer's defaults; the command-line default ends :math:`\tau` at 0.05 and the released
LLaMA scripts use :math:`\kappa: 10^2 \to 5\cdot10^2`).

Prior (`maskllm_prior_gates`, official ``init_diff_mask_from_prior``): with a prior mask
:math:`\mathcal M_0` (e.g. magnitude or SparseGPT 2:4), :math:`g_c \mathrel{+}= (\langle S_c,
\mathcal M_0\rangle - 1)\,\mathrm{std}(g)\,\sigma` (strength :math:`\sigma`, 3 in the scripts).
Weight regularization (`maskllm_weight_regularization`, official loss): the training loss
subtracts :math:`\lambda (1 - t/T) \sum \|\mathrm{sg}(W) \odot \mathcal M\|^2` (it keeps large
weights; :math:`\lambda = 10^{-5}` in the scripts). The weights themselves are usually frozen
("mask-only" training): train only ``gate``.

Layout: PyTorch's ``(out, in)`` weight viewed as groups of 4 along ``in`` is, for a flax kernel
``(in, out)``, groups of 4 consecutive rows per output unit; the logits ``gate`` have shape
``(in / m, out, C)``. Masks and logits are float32; outputs have ``dtype``. General N:M
(:math:`\binom{m}{n}` candidates in lexicographic order) extends the official 2:4 and 1:4
tables, which it reproduces.

Randomness: the NNX layer draws its noise key from ``rngs=`` given at call time (an
`nnx.Rngs`, whose ``rng_stream`` is used, an `nnx.RngStream`, or a key used as is), else from
the stream ``rngs.<rng_stream>`` kept at construction when the constructor's `nnx.Rngs` has
that stream (as `nnx.Dropout`); the Linen layer uses ``rng=`` at call time or
``make_rng(rng_stream)`` (as Linen's `Dropout`). The two frameworks derive different keys from
one seed; given the same key they give the same numbers.

Public API: `maskllm_mask`, `candidate_masks`, `maskllm_schedule`, `maskllm_prior_gates`,
`maskllm_weight_regularization`, the NNX layer `MaskLLMLinear` and the Linen layer
`LinenMaskLLMDense` (exported as `jaxlearn.nn.linen.MaskLLMDense`).

References:
  Gongfan Fang, Hongxu Yin, Saurav Muralidharan, Greg Heinrich, Jeff Pool, Jan Kautz, Pavlo
  Molchanov, Xinchao Wang. "MaskLLM: Learnable Semi-Structured Sparsity for Large Language
  Models". https://arxiv.org/abs/2409.17481. NeurIPS 2024.
  Official code: https://github.com/NVlabs/MaskLLM
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive, check_positive_int, check_range
from jaxlearn.nn._random import layer_stream, training_key

__all__ = [
    "maskllm_mask",
    "candidate_masks",
    "maskllm_schedule",
    "maskllm_prior_gates",
    "maskllm_weight_regularization",
    "MaskLLMLinear",
    "LinenMaskLLMDense",
]

TEMPERATURE = (4.0, 0.1)
SCALE_MULTIPLIER = (1e3, 1e4)
GATE_STD = 0.01


def _check_nm(n: int, m: int) -> None:
  check_positive_int("m", m)
  check_positive_int("n", n)
  if n > m:
    raise ValueError(f"n must be in [1, m={m}], got n={n}")


def _check_groups(in_features: int, m: int) -> None:
  if in_features % m:
    raise ValueError(f"in_features ({in_features}) must be divisible by m={m} (groups of m "
                     f"consecutive weights along the fan-in)")


@functools.lru_cache(maxsize=None)
def _candidates(n: int, m: int) -> np.ndarray:
  rows = [[1.0 if j in keep else 0.0 for j in range(m)]
          for keep in itertools.combinations(range(m), n)]
  return np.array(rows, np.float32)


def candidate_masks(n: int = 2, m: int = 4) -> np.ndarray:
  r"""The :math:`\binom{m}{n}` candidate masks of a group, ``(C, m)``, lexicographic order.

  Example:
    >>> from jaxlearn.nn import candidate_masks
    >>> candidate_masks(2, 4).astype(int).tolist()  # the official 2:4 table, in its order
    [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]]
  """
  _check_nm(n, m)
  return _candidates(n, m).copy()


def _check_gates(gates: jax.Array, n: int, m: int) -> None:
  count = len(_candidates(n, m))
  if gates.ndim != 3 or gates.shape[-1] != count:
    raise ValueError(f"gates must have shape (in_features / m, out_features, {count}) for "
                     f"{n}:{m}, got {gates.shape}")


def _to_kernel(group_masks: jax.Array) -> jax.Array:
  """(in/m, out, m) -> (in, out): the m weights of group i are rows i*m .. i*m + m - 1."""
  groups, out, m = group_masks.shape
  return jnp.swapaxes(group_masks, 1, 2).reshape(groups * m, out)


def maskllm_mask(gates: jax.Array, *, n: int = 2, m: int = 4, noise: jax.Array | None = None,
                 temperature=TEMPERATURE[0], scale=SCALE_MULTIPLIER[0],
                 hard: bool = False) -> jax.Array:
  r"""The kernel-shaped mask :math:`\mathcal M` from the logits (soft with noise, argmax without).

  Args:
    gates: logits :math:`g`, shape ``(in / m, out, C)``.
    n, m: the pattern (default 2:4).
    noise: Gumbel(0, 1) noise of the shape of ``gates`` (training), or None (evaluation: the
      argmax candidate, no gradient).
    temperature: :math:`\tau > 0`.
    scale: the logit scale :math:`\kappa > 0`.
    hard: straight-through one-hot of :math:`\pi` instead of the soft mixture.

  Returns:
    The float32 mask, shape ``(in, out)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import maskllm_mask
    >>> gates = jnp.zeros((1, 1, 6)).at[0, 0, 5].set(1.0)  # prefers 0011
    >>> maskllm_mask(gates)[:, 0].tolist()  # evaluation: the argmax candidate
    [0.0, 0.0, 1.0, 1.0]
    >>> soft = maskllm_mask(gates, noise=jnp.zeros((1, 1, 6)), temperature=1.0, scale=1.0)
    >>> [round(float(v), 3) for v in soft[:, 0]]  # training: the expected mask under pi
    [0.389, 0.389, 0.611, 0.611]
  """
  _check_nm(n, m)
  gates = jnp.asarray(gates, jnp.float32)
  _check_gates(gates, n, m)
  options = jnp.asarray(_candidates(n, m))
  if noise is None:
    return jax.lax.stop_gradient(_to_kernel(options[jnp.argmax(gates, axis=-1)]))
  check_positive("temperature", temperature)
  check_positive("scale", scale)
  probs = jax.nn.softmax((gates * scale + jnp.asarray(noise, jnp.float32)) / temperature,
                         axis=-1)
  if hard:
    one_hot = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1], dtype=probs.dtype)
    probs = one_hot - jax.lax.stop_gradient(probs) + probs
  return _to_kernel(probs @ options)


def maskllm_schedule(progress, *, temperature: Sequence[float] = TEMPERATURE,
                     scale: Sequence[float] = SCALE_MULTIPLIER) -> tuple[jax.Array, jax.Array]:
  r""":math:`(\tau, \kappa)` at training progress :math:`p = t/T`, both linear (official
  ``DifferentiableMask.forward``).

  Example:
    >>> from jaxlearn.nn import maskllm_schedule
    >>> tau, kappa = maskllm_schedule(0.5)
    >>> round(float(tau), 3), float(kappa)
    (2.05, 5500.0)
  """
  (t0, t1), (s0, s1) = _pair("temperature", temperature), _pair("scale", scale)
  p = jnp.asarray(progress, jnp.float32)
  return t0 + (t1 - t0) * p, s0 + (s1 - s0) * p


def _pair(name, values) -> tuple[float, float]:
  values = tuple(values)
  if len(values) != 2:
    raise ValueError(f"{name} must be a (start, end) pair, got {values!r}")
  for value in values:
    check_positive(name, value)
  return values


def maskllm_prior_gates(gates: jax.Array, prior_mask: jax.Array, *, strength: float, n: int = 2,
                        m: int = 4) -> jax.Array:
  r""":math:`g_c + (\langle S_c, \mathcal M_0\rangle - 1)\,\mathrm{std}(g)\,\sigma`: logits
  biased towards a prior mask (official ``init_diff_mask_from_prior``; std with Bessel's
  correction, as ``torch.std``).

  Args:
    gates: logits ``(in / m, out, C)``.
    prior_mask: a kernel-shaped ``(in, out)`` 0/1 mask, e.g. ``nm_mask(kernel, 2, 4)``.
    strength: :math:`\sigma \ge 0` (0 returns the logits unchanged).
    n, m: the pattern.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import maskllm_mask, maskllm_prior_gates, nm_mask
    >>> kernel = jax.random.normal(jax.random.key(0), (8, 3))
    >>> gates = 0.01 * jax.random.normal(jax.random.key(1), (2, 3, 6))
    >>> gates = maskllm_prior_gates(gates, nm_mask(kernel, 2, 4), strength=3.0)
    >>> bool(jnp.all(maskllm_mask(gates) == nm_mask(kernel, 2, 4)))
    True
  """
  _check_nm(n, m)
  check_range("strength", strength, 0.0, None)
  gates = jnp.asarray(gates, jnp.float32)
  _check_gates(gates, n, m)
  prior = jnp.asarray(prior_mask, jnp.float32)
  kernel_shape = (gates.shape[0] * m, gates.shape[1])
  if prior.shape != kernel_shape:
    raise ValueError(f"prior_mask must have the kernel's shape {kernel_shape}, got {prior.shape}")
  grouped = jnp.swapaxes(prior.reshape(gates.shape[0], m, gates.shape[1]), 1, 2)  # (G, out, m)
  overlap = grouped @ jnp.asarray(_candidates(n, m)).T  # (G, out, C)
  return gates + (overlap - 1.0) * jnp.std(gates, ddof=1) * strength


def maskllm_weight_regularization(kernel: jax.Array, mask: jax.Array) -> jax.Array:
  r""":math:`\sum \|\mathrm{sg}(W) \odot \mathcal M\|^2`, the norm the official loss *maximizes*
  (it subtracts :math:`\lambda (1 - t/T)` times it).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import maskllm_weight_regularization
    >>> float(maskllm_weight_regularization(jnp.array([[1.0], [2.0]]), jnp.array([[0.5], [1.0]])))
    4.25
  """
  w = jax.lax.stop_gradient(jnp.asarray(kernel)).astype(jnp.float32)
  return jnp.sum(jnp.square(w * jnp.asarray(mask, jnp.float32)))


def _check_input(x: jax.Array, features: int, name: str) -> None:
  if x.ndim < 1 or x.shape[-1] != features:
    raise ValueError(f"{name} expects inputs of shape (..., in_features={features}), got shape "
                     f"{x.shape}")


def _check_options(n, m, temperature, scale_multiplier, gate_std) -> None:
  _check_nm(n, m)
  _pair("temperature", temperature)
  _pair("scale_multiplier", scale_multiplier)
  check_range("gate_std", gate_std, 0.0, None)


def _init_gate(key, in_features, out_features, n, m, std):
  shape = (in_features // m, out_features, len(_candidates(n, m)))
  return std * jax.random.normal(key, shape, jnp.float32)


def _forward(x, kernel, bias, gate, key, progress, deterministic, *, n, m, temperature, scale,
             hard, dtype):
  x = jnp.asarray(x)
  dtype = jnp.dtype(dtype or jnp.result_type(x.dtype, kernel.dtype))
  return _forward_jit(x, kernel, bias, gate, key, jnp.asarray(progress, jnp.float32),
                      deterministic=bool(deterministic), n=n, m=m, temperature=temperature,
                      scale=scale, hard=bool(hard), dtype=dtype)


# Jitted so that eager NNX calls compile one program instead of one per primitive.
@functools.partial(jax.jit, static_argnames=("deterministic", "n", "m", "temperature", "scale",
                                             "hard", "dtype"))
def _forward_jit(x, kernel, bias, gate, key, progress, *, deterministic, n, m, temperature,
                 scale, hard, dtype):
  if deterministic:
    mask = maskllm_mask(gate, n=n, m=m)
  else:
    tau, kappa = maskllm_schedule(progress, temperature=temperature, scale=scale)
    noise = jax.random.gumbel(key, gate.shape, jnp.float32)
    mask = maskllm_mask(gate, n=n, m=m, noise=noise, temperature=tau, scale=kappa, hard=hard)
  w = (kernel.astype(jnp.float32) * mask).astype(dtype)
  y = x.astype(dtype) @ w
  return y if bias is None else y + bias.astype(dtype)


class MaskLLMLinear(nnx.Module):
  r"""A Dense layer with a learnable N:M mask (MaskLLM): :math:`y = x (W \odot \mathcal M) + b`.

  Parameters: `kernel` ``(in, out)`` and `bias` (``param_dtype``), `gate` ``(in/m, out, C)``
  (float32 logits, :math:`\mathcal N(0, 0.01^2)`). For MaskLLM's mask-only training, load
  pretrained `kernel`/`bias` and optimize only `gate` (e.g. ``nnx.Optimizer(model, tx,
  wrt=nnx.PathContains('gate'))``).

  Args:
    in_features: inputs (divisible by ``m``).
    out_features: outputs.
    n, m: the pattern (default 2:4).
    temperature: the (start, end) of :math:`\tau` (default (4, 0.1)).
    scale_multiplier: the (start, end) of :math:`\kappa` (default (1e3, 1e4)).
    hard: straight-through one-hot sampling (official default False).
    deterministic: evaluation mode (argmax mask); `model.eval()` / `model.train()` set it.
    rng_stream: the name of the noise stream (default ``"gumbel"``).
    use_bias, dtype, param_dtype, kernel_init, bias_init: as `nnx.Linear`.
    gate_std: standard deviation of the initial logits (0.01).
    rngs: `nnx.Rngs`: 'params' for the parameters; its ``rng_stream``, if present, is kept
      for the noise.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.MaskLLMLinear(8, 3, rngs=nnx.Rngs(0, gumbel=1))
    >>> layer(jnp.ones((2, 8)), progress=0.5).shape  # training: Gumbel-softmax mask
    (2, 3)
    >>> layer.eval()
    >>> layer(jnp.ones((2, 8))).shape  # evaluation: the argmax 2:4 mask
    (2, 3)
  """

  def __init__(self, in_features: int, out_features: int, *, n: int = 2, m: int = 4,
               temperature: Sequence[float] = TEMPERATURE,
               scale_multiplier: Sequence[float] = SCALE_MULTIPLIER, hard: bool = False,
               deterministic: bool = False, rng_stream: str = "gumbel", use_bias: bool = True,
               dtype=None, param_dtype=jnp.float32,
               kernel_init=nnx.initializers.lecun_normal(),
               bias_init=nnx.initializers.zeros_init(), gate_std: float = GATE_STD,
               rngs: nnx.Rngs):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    _check_options(n, m, temperature, scale_multiplier, gate_std)
    _check_groups(in_features, m)
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias \
        else nnx.data(None)
    self.gate = nnx.Param(_init_gate(rngs.params(), in_features, out_features, n, m, gate_std))
    self.rngs = layer_stream(rngs, rng_stream)
    self.in_features, self.n, self.m = in_features, n, m
    self.temperature, self.scale_multiplier = tuple(temperature), tuple(scale_multiplier)
    self.hard, self.deterministic, self.rng_stream = hard, deterministic, rng_stream
    self.dtype = dtype

  def __call__(self, x: jax.Array, *, progress=0.0, deterministic: bool | None = None,
               rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None) -> jax.Array:
    """Masked Dense; ``progress`` = t/T drives τ and κ; ``rngs`` gives the noise key."""
    _check_input(x, self.in_features, "MaskLLMLinear")
    deterministic = self.deterministic if deterministic is None else deterministic
    key = None if deterministic else self._key(rngs)
    bias = None if self.bias is None else self.bias[...]
    return _forward(x, self.kernel[...], bias, self.gate[...], key, progress, deterministic,
                    n=self.n, m=self.m, temperature=self.temperature,
                    scale=self.scale_multiplier, hard=self.hard, dtype=self.dtype)

  def _key(self, rngs) -> jax.Array:
    return training_key(self.rngs if rngs is None else rngs, self.rng_stream,
                        "MaskLLMLinear samples Gumbel noise in training")


class LinenMaskLLMDense(linen.Module):
  r"""The Linen twin of `MaskLLMLinear` (exported as `jaxlearn.nn.linen.MaskLLMDense`).

  Same parameters (`kernel`, `bias`, `gate`) and numbers given the same key. Call with
  ``progress``, ``deterministic`` (call value, else the attribute; None means training) and
  ``rng`` (else ``make_rng(rng_stream)``, which falls back to 'params' while initializing).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.MaskLLMDense(features=3)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 8)))
    >>> y = layer.apply(variables, jnp.ones((2, 8)), progress=0.1,
    ...                 rngs={"gumbel": jax.random.key(1)})
    >>> layer.apply(variables, jnp.ones((2, 8)), deterministic=True).shape
    (2, 3)
  """

  features: int
  n: int = 2
  m: int = 4
  temperature: Sequence[float] = TEMPERATURE
  scale_multiplier: Sequence[float] = SCALE_MULTIPLIER
  hard: bool = False
  deterministic: bool | None = None
  rng_stream: str = "gumbel"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = linen.initializers.lecun_normal()
  bias_init: Any = linen.initializers.zeros_init()
  gate_std: float = GATE_STD

  @linen.compact
  def __call__(self, x: jax.Array, *, progress=0.0, deterministic: bool | None = None,
               rng: jax.Array | None = None) -> jax.Array:
    """Masked Dense; ``progress`` = t/T drives τ and κ; ``rng`` gives the noise key."""
    check_positive_int("features", self.features)
    _check_options(self.n, self.m, self.temperature, self.scale_multiplier, self.gate_std)
    x = jnp.asarray(x)
    if self.has_variable("params", "kernel"):
      in_features = self.get_variable("params", "kernel").shape[0]
    else:
      in_features = x.shape[-1] if x.ndim else 0
    _check_input(x, in_features, "MaskLLMDense")
    _check_groups(in_features, self.m)
    kernel = self.param("kernel", self.kernel_init, (in_features, self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
        if self.use_bias else None
    gate = self.param("gate", lambda key: _init_gate(key, in_features, self.features, self.n,
                                                     self.m, self.gate_std))
    deterministic = bool(self.deterministic) if deterministic is None else deterministic
    key = None
    if not deterministic:
      key = self.make_rng(self.rng_stream) if rng is None else rng
    return _forward(x, kernel, bias, gate, key, progress, deterministic, n=self.n, m=self.m,
                    temperature=tuple(self.temperature), scale=tuple(self.scale_multiplier),
                    hard=self.hard, dtype=self.dtype)


RECORD = registry.record(
    slug="maskllm",
    kind="layer",
    title="MaskLLM: Learnable Semi-Structured Sparsity for Large Language Models",
    reference="arXiv:2409.17481",
    experiment="maskllm_learned_vs_magnitude",
    notes=(
        "From the official differentiable_mask.py / pretrain_maskllm.py: candidate table (2:4 "
        "and 1:4 reproduced; general N:M as lexicographic combinations), gate logits N(0, "
        "0.01^2) per group of 4 along the fan-in (flax kernel axis 0), soft Gumbel-softmax "
        "mask sum_c pi_c S_c with pi = softmax((kappa g + G)/tau), tau 4 -> 0.1 and kappa 1e3 "
        "-> 1e4 linear in t/T (layer defaults; the CLI default ends tau at 0.05, the LLaMA "
        "scripts use kappa 1e2 -> 5e2), argmax mask in evaluation, prior initialization and "
        "the weight regularization (loss - lambda (1 - t/T) sum ||sg(W) M||^2) as functions. "
        "The training progress t/T is passed at call time (official: global iteration). "
        "Randomness: NNX uses rngs.<stream>() (kept stream or call-time rngs), Linen "
        "make_rng(stream) or a call-time rng; the two derive different keys from one seed, "
        "so the layer battery passes both the same raw key. Tensor/sequence parallel "
        "Megatron plumbing is not reproduced."
    ),
)
