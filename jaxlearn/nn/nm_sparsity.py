r"""N:M structured sparsity with progressive (decaying) gradient flow: STE, SR-STE and MDGF/SDGF.

Paper: Bambhaniya, Yazdanbakhsh, Subramanian, Kao, Agrawal, Evci and Krishna, "Progressive
Gradient Flow for Robust N:M Sparsity Training in Transformers", arXiv:2402.04744. Official code:
github.com/abhibambhaniya/progressive_gradient_flow_nm_sparsity,
``timm/sparse_pruning/sparse_functions.py`` (equations below are read from it).

**Mask.** Recomputed from the dense weights at every forward pass: in each group of ``m``
consecutive weights along the fan-in axis, the ``n`` largest magnitudes are kept,

.. math::

   \mathrm{mask}_j = [\,\mathrm{rank}(|w_j|) \ge m - n\,] \quad\text{within its group},

the official ``get_sparse_mask`` (the ``m - n`` smallest are zeroed; ties go to the earlier
index). PyTorch's ``(out, in)`` weight is grouped along ``in``; for a flax Dense kernel
``(in, out)`` that is axis 0 (one group sequence per output unit), for an HWIO kernel axis -2.

**Effective weight and gradient** (one function, `nm_sparsify`):

.. math::

   \tilde w = w \odot \bigl(\mathrm{mask} + (1 - \mathrm{mask})\, d\bigr), \qquad
   \frac{\partial L}{\partial w} = \frac{\partial L}{\partial \tilde w}
     + \lambda\,(1 - \mathrm{mask}) \odot w .

* STE (official ``StepDecay``): :math:`d = 0,\ \lambda = 0` (hard mask, dense straight-through
  gradient);
* SR-STE (official ``SparseSRSTE``, from aojunzz/NM-sparsity): :math:`d = 0,\ \lambda = 2\times
  10^{-4}`;
* MDGF, the paper's mask-decay gradient flow (official ``LinearDecay`` / ``ExponentialDecay``):
  :math:`\lambda = 0` and the pruned weights are kept, scaled by a decaying
  :math:`d(t) = \max(0, 1 - c\,t)` (MDGF-Linear) or :math:`d(t) = e^{-c\,t}` (MDGF-Exponential),
  `gradient_flow_decay`; :math:`t` counts optimizer steps after the dense warm-up (during it,
  :math:`t < 0`, the weights are dense: :math:`d = 1`). Official default :math:`c = 2\times
  10^{-4}` (the ViT config: ``EXP`` with :math:`10^{-4}`); the backward pass is straight-through.
* SDGF, the structure-decay schedules (official ``get_decay_config``), change the pattern N:M
  during training: `structure_decay_schedule`.

The mask is float32 (no gradient); the effective weight keeps the kernel's dtype.

Public API: `nm_sparsify`, `nm_mask`, `gradient_flow_decay`, `structure_decay_schedule`, the NNX
layer `NMSparseLinear` and its Linen twin `LinenNMSparseDense` (exported as
`jaxlearn.nn.linen.NMSparseDense`). The layers take the decay :math:`d` at call time (a traced
number: no recompilation as it decays).

References:
  Abhimanyu Rajeshkumar Bambhaniya, Amir Yazdanbakhsh, Suvinay Subramanian, Sheng-Chun Kao,
  Shivani Agrawal, Utku Evci, Tushar Krishna. "Progressive Gradient Flow for Robust N:M Sparsity
  Training in Transformers". https://arxiv.org/abs/2402.04744. CPAL 2025.
  Official code: https://github.com/abhibambhaniya/progressive_gradient_flow_nm_sparsity
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_choice, check_positive_int, check_range

__all__ = [
    "nm_sparsify",
    "nm_mask",
    "gradient_flow_decay",
    "structure_decay_schedule",
    "NMSparseLinear",
    "LinenNMSparseDense",
]

SR_STE_DECAY = 2e-4  # official SparseSRSTE default
DECAY_KINDS = ("exp", "linear")
STRUCTURE_KINDS = ("sparsify", "densify", "fine")


def _check_nm(n: int, m: int) -> None:
  check_positive_int("m", m)
  check_positive_int("n", n)
  if n > m:
    raise ValueError(f"n must be in [1, m={m}] (keep n of every m weights), got n={n}")


def _check_groups(size: int, m: int, name: str = "in_features") -> None:
  if size % m:
    raise ValueError(f"{name} ({size}) must be divisible by m={m} (groups of m consecutive "
                     f"weights along the fan-in)")


def _grouped(w: jax.Array, m: int, axis: int) -> jax.Array:
  moved = jnp.moveaxis(w, axis, -1)
  return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


def _ungrouped(g: jax.Array, shape, axis: int) -> jax.Array:
  moved_shape = list(shape)
  moved_shape.append(moved_shape.pop(axis % len(shape)))
  return jnp.moveaxis(g.reshape(moved_shape), -1, axis)


def nm_mask(w: jax.Array, n: int, m: int, *, axis: int = 0) -> jax.Array:
  r"""The magnitude N:M mask of `w`: the ``n`` largest :math:`|w|` of every ``m`` along ``axis``.

  Args:
    w: the weights, e.g. a Dense kernel ``(in, out)``.
    n, m: keep ``n`` of every ``m`` consecutive weights (``1 <= n <= m``).
    axis: the fan-in axis along which the groups run (0 for a flax Dense kernel).

  Returns:
    A float32 array of ones and zeros with the shape of ``w`` (no gradient).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import nm_mask
    >>> w = jnp.array([[0.1], [-3.0], [2.0], [0.5]])  # (in=4, out=1)
    >>> nm_mask(w, 2, 4)[:, 0].tolist()
    [0.0, 1.0, 1.0, 0.0]
  """
  _check_nm(n, m)
  w = jnp.asarray(w)
  axis = int(axis)
  if not -w.ndim <= axis < w.ndim:
    raise ValueError(f"axis must be in [-{w.ndim}, {w.ndim}) for weights of shape {w.shape}, "
                     f"got {axis}")
  _check_groups(w.shape[axis], m, f"the size of axis {axis}")
  magnitude = jnp.abs(jax.lax.stop_gradient(w)).astype(jnp.float32)
  grouped = _grouped(magnitude, m, axis)
  # The rank of every weight in its group, as a stable sort would give it (equal magnitudes:
  # the earlier index ranks lower), from the m x m comparisons: much faster than sorting
  # millions of tiny groups (memory m^2 per group).
  a, b = grouped[..., :, None], grouped[..., None, :]  # a: weight j, b: weight i
  earlier = jnp.arange(m)[None, :] < jnp.arange(m)[:, None]  # i < j
  ranks = jnp.sum((b < a) | ((b == a) & earlier), axis=-1)
  return _ungrouped((ranks >= m - n).astype(jnp.float32), w.shape, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _sparsify(w, decay, sr_ste, n, m, axis):
  return _effective(w, nm_mask(w, n, m, axis=axis), decay)


def _effective(w, mask, decay):
  return (w.astype(jnp.float32) * (mask + (1.0 - mask) * decay)).astype(w.dtype)


def _sparsify_fwd(w, decay, sr_ste, n, m, axis):
  mask = nm_mask(w, n, m, axis=axis)
  return _effective(w, mask, decay), (w, mask, decay, sr_ste)


def _sparsify_bwd(n, m, axis, residuals, g):
  w, mask, decay, sr_ste = residuals
  grad = g.astype(jnp.float32) + sr_ste * (1.0 - mask) * w.astype(jnp.float32)
  return grad.astype(w.dtype), jnp.zeros_like(decay), jnp.zeros_like(sr_ste)


_sparsify.defvjp(_sparsify_fwd, _sparsify_bwd)


def nm_sparsify(w: jax.Array, n: int = 2, m: int = 4, *, decay=0.0, sr_ste=0.0,
                axis: int = 0) -> jax.Array:
  r"""The N:M-sparse effective weight :math:`w \odot (\mathrm{mask} + (1-\mathrm{mask})d)`.

  Backward: :math:`g + \lambda (1 - \mathrm{mask}) \odot w` (straight-through, plus SR-STE's
  term when ``sr_ste`` = λ > 0). ``decay=0, sr_ste=0`` is STE; ``sr_ste=2e-4`` SR-STE;
  ``decay=gradient_flow_decay(t)`` MDGF.

  Args:
    w: the dense weights (the stored parameter).
    n, m: keep ``n`` of every ``m`` along ``axis``.
    decay: :math:`d \in [0, 1]`, the factor of the pruned weights in the forward pass.
    sr_ste: :math:`\lambda \ge 0`, SR-STE's weight on the pruned weights in the gradient.
    axis: the fan-in axis (0 for a flax Dense kernel).

  Returns:
    The effective weight, in ``w``'s dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import nm_sparsify
    >>> w = jnp.array([[0.1], [-3.0], [2.0], [0.5]])
    >>> nm_sparsify(w, 2, 4)[:, 0].tolist()
    [0.0, -3.0, 2.0, 0.0]
    >>> print(nm_sparsify(w, 2, 4, decay=0.5)[:, 0])  # MDGF: pruned weights scaled by d
    [ 0.05 -3.    2.    0.25]
    >>> print(jax.grad(lambda w: nm_sparsify(w, 2, 4, sr_ste=0.1).sum())(w)[:, 0])  # SR-STE
    [1.01 1.   1.   1.05]
  """
  _check_nm(n, m)
  check_range("decay", decay, 0.0, 1.0)
  check_range("sr_ste", sr_ste, 0.0, None)
  w = jnp.asarray(w)
  return _sparsify(w, jnp.asarray(decay, jnp.float32), jnp.asarray(sr_ste, jnp.float32), n, m,
                   int(axis))


def gradient_flow_decay(step, *, coefficient: float = 2e-4, kind: str = "exp") -> jax.Array:
  r"""MDGF's decay :math:`d(t)`: :math:`e^{-c t}` (``"exp"``) or :math:`\max(0, 1 - ct)`
  (``"linear"``); 1 (dense) for :math:`t < 0`.

  Args:
    step: :math:`t`, optimizer steps since the end of the dense warm-up (may be traced).
    coefficient: :math:`c > 0` (official default 2e-4).
    kind: ``"exp"`` or ``"linear"``.

  Returns:
    A float32 scalar in [0, 1].

  Example:
    >>> from jaxlearn.nn import gradient_flow_decay
    >>> float(gradient_flow_decay(1000, coefficient=1e-3, kind="linear"))
    0.0
    >>> round(float(gradient_flow_decay(1000, coefficient=1e-3)), 4)  # e^-1
    0.3679
  """
  check_range("coefficient", coefficient, 0.0, None, low_inclusive=False)
  check_choice("kind", kind, DECAY_KINDS)
  t = jnp.asarray(step, jnp.float32)
  d = jnp.exp(-coefficient * t) if kind == "exp" else jnp.maximum(1.0 - coefficient * t, 0.0)
  return jnp.where(t < 0, 1.0, d)


def structure_decay_schedule(n: int, m: int, *, kind: str, total_epochs: int,
                             dense_epochs: int = 0,
                             fine_tune_epochs: int = 0) -> dict[int, tuple[int, int]]:
  r"""SDGF: the epochs at which the N:M pattern changes, and the new pattern (official
  ``get_decay_config``).

  The sparse phase (``total - dense - fine_tune`` epochs) is cut into equal frames starting
  at ``dense_epochs``:

  * ``"sparsify"`` (SdGf-Stepwise): :math:`\log_2(m/n) + 1` frames, (m-1):m, then
    :math:`m/2^i`:m, e.g. 7:8, 4:8, 2:8, 1:8;
  * ``"densify"``: 4 frames, n:(m·2^{3-i}), e.g. 1:64, 1:32, 1:16, 1:8;
  * ``"fine"`` (SdGf-Geometric): 4 frames, (n·2^{3-i}):(m·2^{3-i}), e.g. 8:64, 4:32, 2:16, 1:8.

  Before the first key the model is dense; a pattern holds until the next key. The official
  training switches to the hard mask (decay 0) for the last ``fine_tune_epochs``. A new ``m``
  is a new static shape: expect one compilation per frame.

  Example:
    >>> from jaxlearn.nn import structure_decay_schedule
    >>> structure_decay_schedule(1, 8, kind="sparsify", total_epochs=10, dense_epochs=2)
    {2: (7, 8), 4: (4, 8), 6: (2, 8), 8: (1, 8)}
  """
  _check_nm(n, m)
  check_choice("kind", kind, STRUCTURE_KINDS)
  for name, value in (("total_epochs", total_epochs), ("dense_epochs", dense_epochs),
                      ("fine_tune_epochs", fine_tune_epochs)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
  if dense_epochs + fine_tune_epochs >= total_epochs:
    raise ValueError(f"dense_epochs + fine_tune_epochs must be < total_epochs ({total_epochs}), "
                     f"got {dense_epochs} + {fine_tune_epochs}")
  frames = int(math.log2(m / n)) + 1 if kind == "sparsify" else 4
  size = (total_epochs - dense_epochs - fine_tune_epochs) / frames
  schedule = {}
  for i in range(frames):
    if kind == "sparsify":
      pattern = (m - 1 if i == 0 else int(m / 2**i), m)
    elif kind == "densify":
      pattern = (n, int(m * 2 ** (frames - i - 1)))
    else:
      pattern = (int(n * 2 ** (frames - i - 1)), int(m * 2 ** (frames - i - 1)))
    schedule[int(dense_epochs) + int(i * size)] = pattern
  return schedule


def _check_input(x: jax.Array, features: int, name: str) -> None:
  if x.ndim < 1 or x.shape[-1] != features:
    raise ValueError(f"{name} expects inputs of shape (..., in_features={features}), got shape "
                     f"{x.shape}")


def _dense(x, kernel, bias, n, m, decay, sr_ste, dtype):
  _check_nm(n, m)
  check_range("decay", decay, 0.0, 1.0)
  check_range("sr_ste", sr_ste, 0.0, None)
  x = jnp.asarray(x)
  dtype = jnp.dtype(dtype or jnp.result_type(x.dtype, kernel.dtype))
  return _dense_jit(x, kernel, bias, jnp.asarray(decay, jnp.float32),
                    jnp.asarray(sr_ste, jnp.float32), n=n, m=m, dtype=dtype)


# Jitted so that eager NNX calls compile one program instead of one per primitive.
@functools.partial(jax.jit, static_argnames=("n", "m", "dtype"))
def _dense_jit(x, kernel, bias, decay, sr_ste, *, n, m, dtype):
  w = _sparsify(kernel, decay, sr_ste, n, m, 0).astype(dtype)
  y = x.astype(dtype) @ w
  return y if bias is None else y + bias.astype(dtype)


class NMSparseLinear(nnx.Module):
  r"""A Dense layer whose kernel is N:M-sparse along its fan-in: :math:`y = x\tilde W + b`.

  :math:`\tilde W` = `nm_sparsify` of the stored dense kernel ``(in, out)``, the mask recomputed
  at every call; groups of ``m`` consecutive inputs per output unit.

  Args:
    in_features: number of inputs (divisible by ``m``).
    out_features: number of outputs.
    n, m: keep ``n`` of every ``m`` (default 2:4, the official default).
    sr_ste: SR-STE's λ (0: plain straight-through; the official SR-STE uses 2e-4).
    use_bias: add a bias.
    dtype: computation and output dtype (default: the input's, promoted with the kernel's).
    param_dtype: dtype of the parameters.
    kernel_init, bias_init: initializers (flax's Dense defaults).
    rngs: `nnx.Rngs` with a 'params' stream.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> layer = jnn.NMSparseLinear(8, 3, n=1, m=4, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 8))).shape  # hard 1:4 mask (decay 0: STE)
    (2, 3)
    >>> layer(jnp.ones((2, 8)), decay=0.3).shape  # MDGF: pruned weights scaled by 0.3
    (2, 3)
  """

  def __init__(self, in_features: int, out_features: int, *, n: int = 2, m: int = 4,
               sr_ste: float = 0.0, use_bias: bool = True, dtype=None, param_dtype=jnp.float32,
               kernel_init=nnx.initializers.lecun_normal(),
               bias_init=nnx.initializers.zeros_init(), rngs: nnx.Rngs):
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    _check_nm(n, m)
    _check_groups(in_features, m)
    check_range("sr_ste", sr_ste, 0.0, None)
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias \
        else nnx.data(None)
    self.in_features, self.out_features = in_features, out_features
    self.n, self.m, self.sr_ste, self.dtype = n, m, sr_ste, dtype

  def __call__(self, x: jax.Array, decay=0.0) -> jax.Array:
    """Applies the N:M-sparse kernel; ``decay`` is MDGF's d (0: hard mask)."""
    _check_input(x, self.in_features, "NMSparseLinear")
    bias = None if self.bias is None else self.bias[...]
    return _dense(x, self.kernel[...], bias, self.n, self.m, decay, self.sr_ste, self.dtype)


class LinenNMSparseDense(linen.Module):
  """The Linen twin of `NMSparseLinear` (exported as `jaxlearn.nn.linen.NMSparseDense`).

  Same parameters (`kernel` (in, out), `bias`) and numbers; ``in_features`` is read from the
  input. Call with ``decay`` (MDGF's d, default 0).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> layer = jnn_linen.NMSparseDense(features=3, n=1, m=4)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((2, 8)))
    >>> layer.apply(variables, jnp.ones((2, 8)), decay=0.5).shape
    (2, 3)
  """

  features: int
  n: int = 2
  m: int = 4
  sr_ste: float = 0.0
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = linen.initializers.lecun_normal()
  bias_init: Any = linen.initializers.zeros_init()

  @linen.compact
  def __call__(self, x: jax.Array, decay=0.0) -> jax.Array:
    """Applies the N:M-sparse kernel; ``decay`` is MDGF's d (0: hard mask)."""
    check_positive_int("features", self.features)
    _check_nm(self.n, self.m)
    check_range("sr_ste", self.sr_ste, 0.0, None)
    x = jnp.asarray(x)
    if self.has_variable("params", "kernel"):
      in_features = self.get_variable("params", "kernel").shape[0]
    else:
      in_features = x.shape[-1] if x.ndim else 0
    _check_input(x, in_features, "NMSparseDense")
    _check_groups(in_features, self.m)
    kernel = self.param("kernel", self.kernel_init, (in_features, self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
        if self.use_bias else None
    return _dense(x, kernel, bias, self.n, self.m, decay, self.sr_ste, self.dtype)


RECORD = registry.record(
    slug="progressive_gradient_flow_nm",
    kind="layer",
    title="Progressive Gradient Flow for Robust N:M Sparsity Training in Transformers",
    reference="arXiv:2402.04744",
    experiment="nm_gradient_flow",
    notes=(
        "Equations from the official sparse_functions.py: magnitude N:M mask recomputed every "
        "forward, groups of m consecutive weights along the fan-in (torch (out, in) along in = "
        "flax Dense axis 0); STE (StepDecay), SR-STE (g + 2e-4 (1-mask) w) and MDGF "
        "(w (mask + (1-mask) d), d = max(0, 1-ct) or exp(-ct), t = steps after the dense "
        "warm-up, straight-through backward) are one custom_vjp with traced d and lambda; "
        "SDGF pattern schedules (sparsify/densify/fine) transcribed from get_decay_config. "
        "Ties in the magnitude ranking go to the earlier index (torch.argsort is not stable). "
        "The unstructured prune_rate mode, the column-wise sparse_dim and the conv layers' "
        "permutation are not wrapped as layers (nm_mask/nm_sparsify take any axis). The "
        "official loop's fine-tune phase (hard mask at the end) and dense warm-up are the "
        "caller's schedule (decay 0 / decay 1)."
    ),
)
