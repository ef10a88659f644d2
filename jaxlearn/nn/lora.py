"""LoRA adapters (optionally gated, as in SoRA) over one functional core.

LoRA (Hu et al., arXiv:2106.09685) adds a trainable low-rank term to a frozen layer: with Flax's
(in, out) layout, A of shape (in, r), B of shape (r, out),

  y = x W + s · (x A) B,           s = α / r (LoRA's scaling; ALLoRA removes it: s = 1),

and SoRA (arXiv:2311.11696, TsinghuaC3I/SoRA `src/lora.py`) puts a gate g ∈ R^r between the two:

  y = x W + s · ((x A) ⊙ g) B.

Initialization as in both reference codes: A ~ U(−1/√in, 1/√in) (PyTorch's kaiming_uniform with
a = √5), B = 0 (so the adapter starts as the identity change), g ~ N(0, 1).

Public API: `lora_delta` (the pure function), `init_lora` (a params dict for functional training
with `jaxlearn.train.fit`), the NNX module `LoRA` (the adapter alone: add its output to the frozen
layer's) and its Linen twin `LinenLoRA`. `flax.nnx.LoRA` has no gate and no functional core.
"""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_positive_int

__all__ = [
    "lora_delta",
    "init_lora",
    "LoRA",
    "LinenLoRA",
]


def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, gate: jax.Array | None = None,
               scaling=1.0) -> jax.Array:
  """s · ((x A) ⊙ g) B: the adapter's contribution for inputs x of shape (..., in).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import init_lora, lora_delta
    >>> p = init_lora(jax.random.key(0), 4, 3, rank=2)
    >>> lora_delta(jnp.ones((5, 4)), p["a"], p["b"])  # B starts at zero: no change at first
    Array([[0., 0., 0.],
           [0., 0., 0.],
           [0., 0., 0.],
           [0., 0., 0.],
           [0., 0., 0.]], dtype=float32)
  """
  hidden = x @ a
  if gate is not None:
    hidden = hidden * gate
  return scaling * (hidden @ b)


def _init_a(key, in_features, rank, dtype):
  bound = 1.0 / jnp.sqrt(in_features)
  return jax.random.uniform(key, (in_features, rank), dtype, -bound, bound)


def init_lora(key: jax.Array, in_features: int, out_features: int, rank: int, *,
              gated: bool = False, dtype=jnp.float32) -> dict[str, jax.Array]:
  """{'a': (in, r), 'b': (r, out) zeros[, 'gate': (r,) standard normal]}.

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_lora
    >>> p = init_lora(jax.random.key(0), 4, 3, rank=2, gated=True)
    >>> {name: value.shape for name, value in p.items()}
    {'a': (4, 2), 'b': (2, 3), 'gate': (2,)}
  """
  for name, value in (("in_features", in_features), ("out_features", out_features),
                      ("rank", rank)):
    check_positive_int(name, value)
  key_a, key_g = jax.random.split(key)
  params = {"a": _init_a(key_a, in_features, rank, dtype),
            "b": jnp.zeros((rank, out_features), dtype)}
  if gated:
    params["gate"] = jax.random.normal(key_g, (rank,), dtype)
  return params


def _check_input(x: jax.Array, in_features: int) -> None:
  if x.ndim < 1 or x.shape[-1] != in_features:
    raise ValueError(
        f"LoRA expects inputs of shape (..., in_features={in_features}), got shape {x.shape}"
    )


def _apply(x, a, b, gate, scaling, dtype):
  """Checks x, computes in `dtype` (default: x's dtype promoted with the parameters')."""
  x = jnp.asarray(x)
  dtype = dtype or jnp.result_type(x.dtype, a.dtype)
  cast = lambda v: None if v is None else v.astype(dtype)
  return lora_delta(cast(x), cast(a), cast(b), cast(gate), scaling)


class LoRA(nnx.Module):
  """The (gated) LoRA adapter as an NNX module: returns s · ((x A) ⊙ g) B.

  Args:
    in_features, out_features, rank: the shapes (inputs are (..., in_features)).
    gated: add SoRA's gate g (parameter `gate`).
    scaling: s (LoRA: α / r; ALLoRA and SoRA's analysis: 1).
    dtype: computation and output dtype (default: the input's, promoted with the parameters').
    param_dtype: dtype of A, B and g.
    rngs: `nnx.Rngs` with a 'params' stream.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> base = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    >>> adapter = jnn.LoRA(4, 3, rank=2, gated=True, rngs=nnx.Rngs(1))
    >>> x = jnp.ones((5, 4))
    >>> y = base(x) + adapter(x)  # train only the adapter: nnx.Optimizer(adapter, ...)
    >>> y.shape
    (5, 3)
  """

  def __init__(self, in_features: int, out_features: int, rank: int, *, gated: bool = False,
               scaling: float = 1.0, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    params = init_lora(rngs.params(), in_features, out_features, rank, gated=gated,
                       dtype=param_dtype)
    self.in_features = in_features
    self.a = nnx.Param(params["a"])
    self.b = nnx.Param(params["b"])
    self.gate = nnx.Param(params["gate"]) if gated else None
    self.scaling = scaling
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.in_features)
    gate = None if self.gate is None else self.gate[...]
    return _apply(x, self.a[...], self.b[...], gate, self.scaling, self.dtype)


class LinenLoRA(linen.Module):
  """The Linen twin of `LoRA` (exported as `jaxlearn.nn.linen.LoRA`): same parameters and numbers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> adapter = jnn_linen.LoRA(in_features=4, out_features=3, rank=2)
    >>> variables = adapter.init(jax.random.key(0), jnp.ones((5, 4)))
    >>> adapter.apply(variables, jnp.ones((5, 4))).shape
    (5, 3)
  """

  in_features: int
  out_features: int
  rank: int
  gated: bool = False
  scaling: float = 1.0
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.in_features)
    init = lambda name: (lambda key: init_lora(key, self.in_features, self.out_features,
                                               self.rank, gated=self.gated,
                                               dtype=self.param_dtype)[name])
    a = self.param("a", init("a"))
    b = self.param("b", init("b"))
    gate = self.param("gate", init("gate")) if self.gated else None
    return _apply(x, a, b, gate, self.scaling, self.dtype)


RECORD = registry.record(
    slug="allora",
    kind="layer",
    title="ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws",
    reference="arXiv:2410.09692",
    extra_tests=("tests/optim/test_sora.py",),
    notes=(
        "INCOMPLETE: only the scaling-free, dropout-free LoRA adapter ALLoRA trains "
        "(lora_delta with scaling=1, shared with SoRA) is implemented. The ALLoRA update rule "
        "itself is NOT implemented: only the abstract could be checked (gradients scaled by a "
        "coefficient inversely proportional to the parameters' l2 norm); the norm granularity "
        "(per tensor / per row), the stabilizing constant that keeps the coefficient finite at "
        "B = 0, and the defaults could not be established (neither the paper body nor official "
        "code could be checked), so no transform, battery row or experiment was written rather "
        "than guessing the rule."
    ),
)
