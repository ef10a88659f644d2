r"""μP (maximal-update parametrization): base shapes, per-leaf learning rates and init, MuReadout.

Tensor Programs IV shows that the standard (SP) and NTK parametrizations have no feature-learning
infinite-width limit, and that the *maximal-update parametrization* μP does. Its practical rules
are those of the official package microsoft/mup, transcribed here for JAX (`mup/infshape.py`,
`mup/shape.py`, `mup/optim.py`, `mup/init.py`, `mup/layer.py`).

**Base shapes.** A model is compared with itself at a base width and at a second ("delta") width:
the axes whose size differs are *infinite* (width) axes, the others finite
(`set_base_shapes` / `make_base_shapes`). Here the two models are traced abstractly with
`jax.eval_shape` (`infer_base_shapes`), so no parameter is allocated. For a leaf of shape
:math:`(d_1, \dots, d_k)` with base dims :math:`b_i` (None for finite axes), the width multiplier
of an infinite axis is :math:`d_i / b_i`. Flax kernels keep fan-out on the last axis and fan-in
on the one before (`Dense`: (in, out), `Conv`: HWIO), the reverse of PyTorch's (out, in, ...):

* :math:`n_\infty` = the number of infinite axes: 0 scalar-like, 1 *vector-like* (biases, the input
  layer, the readout), 2 *matrix-like* (hidden layers); more is rejected, as in mup;
* ``width_mult`` = the multiplier of the first infinite axis (the fan-in of a matrix-like Flax
  kernel; mup takes the last infinite axis of the PyTorch layout, the same axis);
* ``fan_in_mult``, ``fan_out_mult`` = the multipliers of axes −2 and −1.

**Learning rates** (`mup_lr_multipliers`, `scale_by_mup`), for lr :math:`\eta` of the base model:

.. math::

  \text{Adam-like (MuAdam):}\quad \eta_\ell = \begin{cases}
      \eta / \mathrm{width\_mult} & n_\infty = 2 \\ \eta & n_\infty \le 1 \end{cases}
  \qquad
  \text{SGD-like (MuSGD):}\quad \eta_\ell = \begin{cases}
      \eta \cdot \mathrm{fan\_out\_mult} / \mathrm{fan\_in\_mult} & n_\infty = 2 \\
      \eta \cdot \mathrm{width\_mult} & n_\infty = 1 \\ \eta & n_\infty = 0. \end{cases}

MuAdam also multiplies a *coupled* weight decay by ``width_mult`` (so that lr × wd stays put); in
optax chain `optax.add_decayed_weights` before `scale_by_mup` for that, or after it for mup's
``decoupled_wd=True``.

**Initialization** (`mup_init_multipliers`): multipliers of an SP initialization, as mup's
replacements of `torch.nn.init`: for a width-independent ("constant") std, matrix-like leaves get
:math:`\mathrm{width\_mult}^{-1/2}`; for a fan-in initializer (Kaiming, LeCun, flax's default),
matrix-like leaves keep it and a kernel whose fan-in alone is infinite gets
:math:`\sqrt{\mathrm{fan\_in\_mult}}` (its std is that of the base fan-in).

**Readout** (`MuReadout`): the output layer, infinite fan-in and finite fan-out,

.. math::

  y = \frac{\alpha_{\text{out}}}{\mathrm{width\_mult}}\, x W + b,

initialized as PyTorch's `Linear` and then rescaled by :math:`\sqrt{\mathrm{width\_mult}}`
(`set_base_shapes(rescale_params=True)`), i.e. W, b ~ U(±1/√base_in), or at zero
(``readout_zero_init``).

The claim that the optimal learning rate transfers across widths under μP is Tensor Programs V's
(μTransfer), tested separately in `experiments/mup_coordinate_check.py`.

References:
  Greg Yang and Edward J. Hu, `Feature Learning in Infinite-Width Neural Networks
  <https://arxiv.org/abs/2011.14522>`_, ICML 2021 (Tensor Programs IV).
  Greg Yang, Edward J. Hu et al., `Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
  Hyperparameter Transfer <https://arxiv.org/abs/2203.03466>`_, NeurIPS 2021.
  Official code: https://github.com/microsoft/mup (PyPI `mup` 1.0.0).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as linen
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlearn import registry
from jaxlearn._checks import check_choice, check_positive, check_positive_int
from jaxlearn.optim.per_leaf_scale import scale_by_per_leaf

__all__ = [
    "scale_by_mup",
    "BaseShape",
    "infer_base_shapes",
    "mup_lr_multipliers",
    "mup_init_multipliers",
    "mu_readout",
    "init_mu_readout",
    "MuReadout",
    "LinenMuReadout",
]

OPTIMIZERS = ("adam", "sgd")
INITS = ("fan_in", "constant")


@dataclasses.dataclass(frozen=True)
class BaseShape:
  """The base shape of one parameter: the base size of each infinite axis, None for finite axes.

  A leaf of a base-shape tree (not a pytree node), as mup's `.bsh` entries.

  Example:
    >>> from jaxlearn.nn import BaseShape
    >>> readout = BaseShape((64, None))  # a (width, 10) kernel, base width 64
    >>> readout.width_mults((256, 10)), readout.ninf
    ((4.0, 1.0), 1)
  """

  dims: tuple[int | None, ...]

  def width_mults(self, shape: tuple[int, ...]) -> tuple[float, ...]:
    """d_i / b_i on infinite axes, 1 on finite ones."""
    if len(shape) != len(self.dims):
      raise ValueError(f"a parameter of shape {shape} does not match its base shape {self.dims}")
    return tuple(1.0 if b is None else d / b for b, d in zip(self.dims, shape))

  @property
  def ninf(self) -> int:
    return sum(b is not None for b in self.dims)


def infer_base_shapes(base: Any, delta: Any) -> Any:
  """Base shapes from the parameters at a base width and at another width (mup's `delta`).

  Both are traced with `jax.eval_shape` when given as functions (nothing is allocated). An axis is
  infinite where the two sizes differ; its base size is the base model's.

  Args:
    base: the parameter pytree at the base width, or a zero-argument function returning it.
    delta: the same at another width.

  Returns:
    A pytree with the structure of the parameters whose leaves are `BaseShape` objects.

  Example:
    >>> import jax
    >>> from jaxlearn.train import mlp
    >>> from jaxlearn.nn import infer_base_shapes
    >>> init = lambda width: mlp((8,), (width, width), 3)[0](jax.random.key(0))
    >>> shapes = infer_base_shapes(lambda: init(16), lambda: init(32))
    >>> shapes["Dense_1"]["kernel"], shapes["Dense_2"]["bias"]
    (BaseShape(dims=(16, 16)), BaseShape(dims=(None,)))
  """
  abstract = lambda tree: jax.eval_shape(tree) if callable(tree) else tree
  base, delta = abstract(base), abstract(delta)
  if jax.tree.structure(base) != jax.tree.structure(delta):
    raise ValueError("base and delta must have the same tree structure")

  def leaf(b, d):
    if len(b.shape) != len(d.shape):
      raise ValueError(f"base and delta leaves differ in rank: {b.shape} vs {d.shape}")
    return BaseShape(tuple(None if x == y else x for x, y in zip(b.shape, d.shape)))

  return jax.tree.map(leaf, base, delta)


def _leaf_mults(base_shape: BaseShape, shape: tuple[int, ...]):
  """(ninf, width_mult, fan_in_mult, fan_out_mult) of a leaf, in the Flax layout."""
  if not isinstance(base_shape, BaseShape):
    raise ValueError(f"base_shapes leaves must be BaseShape, got {base_shape!r}")
  mults = base_shape.width_mults(tuple(shape))
  ninf = base_shape.ninf
  if ninf > 2:
    raise ValueError(f"μP handles at most 2 infinite axes, got base shape {base_shape.dims}")
  inf = [m for b, m in zip(base_shape.dims, mults) if b is not None]
  width_mult = inf[0] if inf else 1.0
  fan_in, fan_out = (mults[-2], mults[-1]) if len(shape) >= 2 else (1.0, 1.0)
  return ninf, width_mult, fan_in, fan_out


def _check_base_shapes(base_shapes: Any) -> None:
  leaves = jax.tree.leaves(base_shapes, is_leaf=lambda x: isinstance(x, BaseShape))
  if not leaves:
    raise ValueError("base_shapes must hold at least one BaseShape")
  for leaf in leaves:
    if not isinstance(leaf, BaseShape):
      raise ValueError(f"base_shapes leaves must be BaseShape, got {leaf!r}")
    if leaf.ninf > 2:
      raise ValueError(f"base_shapes: μP handles at most 2 infinite axes, got {leaf.dims}")


def _map_leaves(fn: Callable[[BaseShape, tuple[int, ...]], float], base_shapes, params):
  return jax.tree.map(lambda b, p: float(fn(b, tuple(p.shape))), base_shapes, params,
                      is_leaf=lambda x: isinstance(x, BaseShape))


def mup_lr_multipliers(base_shapes: Any, params: Any, *, optimizer: str = "adam") -> Any:
  """Per-leaf learning-rate multipliers of MuAdam ('adam') or MuSGD ('sgd'), as Python floats.

  Args:
    base_shapes: from `infer_base_shapes`.
    params: the parameters (arrays or `jax.ShapeDtypeStruct` values) of the model being trained.
    optimizer: 'adam' for Adam-like optimizers (entrywise-normalized updates), 'sgd' for
      SGD-like ones.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import BaseShape, mup_lr_multipliers
    >>> shapes = {"hidden": BaseShape((64, 64)), "bias": BaseShape((64,))}
    >>> params = {"hidden": jnp.zeros((256, 256)), "bias": jnp.zeros(256)}
    >>> mup_lr_multipliers(shapes, params), mup_lr_multipliers(shapes, params, optimizer="sgd")
    ({'bias': 1.0, 'hidden': 0.25}, {'bias': 4.0, 'hidden': 1.0})
  """
  check_choice("optimizer", optimizer, OPTIMIZERS)

  def leaf(base_shape, shape):
    ninf, width_mult, fan_in, fan_out = _leaf_mults(base_shape, shape)
    if optimizer == "adam":
      return 1.0 / width_mult if ninf == 2 else 1.0
    if ninf == 2:
      return fan_out / fan_in
    return width_mult if ninf == 1 else 1.0

  return _map_leaves(leaf, base_shapes, params)


def mup_init_multipliers(base_shapes: Any, params: Any, *, init: str = "fan_in") -> Any:
  """Per-leaf multipliers that turn an SP initialization into μP's, as Python floats.

  Args:
    base_shapes: from `infer_base_shapes`.
    params: the parameters, initialized with `init`.
    init: 'fan_in' if they were drawn with a fan-in scaled std (Kaiming / LeCun, flax's default):
      matrix-like leaves keep it, kernels with an infinite fan-in and finite fan-out (a readout
      that is not a `MuReadout`) get sqrt(fan_in_mult). 'constant' for a width-independent std:
      matrix-like leaves get width_mult ** -0.5 (mup's `normal_`, `uniform_`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import BaseShape, mup_init_multipliers
    >>> shapes = {"hidden": BaseShape((64, 64)), "readout": BaseShape((64, None))}
    >>> params = {"hidden": jnp.zeros((256, 256)), "readout": jnp.zeros((256, 10))}
    >>> mup_init_multipliers(shapes, params)
    {'hidden': 1.0, 'readout': 2.0}
    >>> mup_init_multipliers(shapes, params, init="constant")
    {'hidden': 0.5, 'readout': 1.0}
  """
  check_choice("init", init, INITS)

  def leaf(base_shape, shape):
    ninf, width_mult, fan_in, _ = _leaf_mults(base_shape, shape)
    if init == "constant":
      return width_mult ** -0.5 if ninf == 2 else 1.0
    fan_in_only = ninf == 1 and len(shape) >= 2 and base_shape.dims[-2] is not None
    return math.sqrt(fan_in) if fan_in_only else 1.0

  return _map_leaves(leaf, base_shapes, params)


def scale_by_mup(*, base_shapes: Any, optimizer: str = "adam") -> optax.GradientTransformationExtraArgs:
  r"""μP's per-leaf learning rates as an optax transform (MuAdam / MuSGD).

  `scale_by_per_leaf` with `mup_lr_multipliers(base_shapes, params, optimizer=optimizer)`. For
  Adam-like optimizers chain it after the normalization, e.g.
  `optax.chain(optax.scale_by_adam(), scale_by_mup(base_shapes=s), optax.scale_by_learning_rate(lr))`
  or `optax.chain(optax.adam(lr), scale_by_mup(base_shapes=s))`; for SGD anywhere in the chain.

  Args:
    base_shapes: from `infer_base_shapes` (keyword-only: static under `inject_hyperparams`).
    optimizer: 'adam' or 'sgd', the rule of `mup_lr_multipliers`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn.nn import infer_base_shapes, scale_by_mup
    >>> init = lambda w: {"hidden": jnp.zeros((w, w)), "bias": jnp.zeros(w)}
    >>> shapes = infer_base_shapes(lambda: init(64), lambda: init(128))
    >>> opt = optax.chain(optax.adam(1e-2), scale_by_mup(base_shapes=shapes))
    >>> params = init(256)
    >>> updates, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params))
    >>> round(float(updates["hidden"][0, 0]), 6), round(float(updates["bias"][0]), 6)  # lr / 4
    (-0.0025, -0.01)
  """
  check_choice("optimizer", optimizer, OPTIMIZERS)
  _check_base_shapes(base_shapes)
  return scale_by_per_leaf(
      multipliers=lambda tree: mup_lr_multipliers(base_shapes, tree, optimizer=optimizer)
  )


# ---------------------------------------------------------------------------------------------
# MuReadout.


def mu_readout(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, *,
               width_mult: float = 1.0, output_mult: float = 1.0) -> jax.Array:
  r""":math:`y = (\alpha_{\text{out}} / \mathrm{width\_mult})\, x W + b` for x of shape (..., in).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxlearn.nn import mu_readout
    >>> mu_readout(jnp.ones((1, 4)), jnp.ones((4, 2)), jnp.zeros(2), width_mult=4.0)
    Array([[1., 1.]], dtype=float32)
  """
  y = (x * (output_mult / width_mult)) @ kernel
  return y if bias is None else y + bias


def init_mu_readout(key: jax.Array, in_features: int, out_features: int, *,
                    base_in_features: int, use_bias: bool = True, zero_init: bool = False,
                    dtype=jnp.float32) -> dict[str, jax.Array]:
  """{'kernel': (in, out)[, 'bias': (out,)]} ~ U(±1/√base_in_features), or zeros (`zero_init`).

  PyTorch's `Linear` init U(±1/√in) rescaled by √(in / base_in), as `set_base_shapes` does.

  Example:
    >>> import jax
    >>> from jaxlearn.nn import init_mu_readout
    >>> p = init_mu_readout(jax.random.key(0), 256, 10, base_in_features=64)
    >>> float(abs(p["kernel"]).max()) <= 1 / 8
    True
  """
  _check_readout_args(in_features, out_features, base_in_features)
  key_w, key_b = jax.random.split(key)
  bound = 1.0 / math.sqrt(base_in_features)
  draw = lambda k, shape: (jnp.zeros(shape, dtype) if zero_init
                           else jax.random.uniform(k, shape, dtype, -bound, bound))
  params = {"kernel": draw(key_w, (in_features, out_features))}
  if use_bias:
    params["bias"] = draw(key_b, (out_features,))
  return params


def _check_readout_args(in_features, out_features, base_in_features):
  check_positive_int("in_features", in_features)
  check_positive_int("out_features", out_features)
  check_positive_int("base_in_features", base_in_features)


def _check_input(x: jax.Array, in_features: int) -> None:
  if x.ndim < 1 or x.shape[-1] != in_features:
    raise ValueError(
        f"MuReadout expects inputs of shape (..., in_features={in_features}), got shape {x.shape}"
    )


def _apply_readout(x, kernel, bias, width_mult, output_mult, dtype):
  x = jnp.asarray(x)
  dtype = dtype or jnp.result_type(x.dtype, kernel.dtype)
  bias = None if bias is None else bias.astype(dtype)
  return mu_readout(x.astype(dtype), kernel.astype(dtype), bias, width_mult=width_mult,
                    output_mult=output_mult)


class MuReadout(nnx.Module):
  r"""μP's output layer (mup's `MuReadout`): y = (output_mult / width_mult) x W + b.

  width_mult = in_features / base_in_features. Parameters `kernel` (in, out) and `bias` (out,).

  Args:
    in_features: the (infinite) input width.
    out_features: the (finite) number of outputs.
    base_in_features: the input width of the base model.
    output_mult: α_out, a tunable constant (default 1).
    readout_zero_init: initialize kernel and bias at zero.
    use_bias: add a bias.
    dtype: computation and output dtype (default: the input's, promoted with the parameters').
    param_dtype: the parameters' dtype.
    rngs: `nnx.Rngs` with a 'params' stream.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxlearn import nn as jnn
    >>> readout = jnn.MuReadout(256, 10, base_in_features=64, rngs=nnx.Rngs(0))
    >>> readout(jnp.ones((2, 256))).shape, readout.width_mult
    ((2, 10), 4.0)
  """

  def __init__(self, in_features: int, out_features: int, *, base_in_features: int,
               output_mult: float = 1.0, readout_zero_init: bool = False, use_bias: bool = True,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    check_positive("output_mult", output_mult)
    params = init_mu_readout(rngs.params(), in_features, out_features,
                             base_in_features=base_in_features, use_bias=use_bias,
                             zero_init=readout_zero_init, dtype=param_dtype)
    self.in_features = in_features
    self.width_mult = in_features / base_in_features
    self.output_mult = output_mult
    self.dtype = dtype
    self.kernel = nnx.Param(params["kernel"])
    self.bias = nnx.Param(params["bias"]) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    _check_input(x, self.in_features)
    bias = None if self.bias is None else self.bias[...]
    return _apply_readout(x, self.kernel[...], bias, self.width_mult, self.output_mult,
                          self.dtype)


class LinenMuReadout(linen.Module):
  """The Linen twin of `MuReadout` (exported as `jaxlearn.nn.linen.MuReadout`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.nn import linen as jnn_linen
    >>> readout = jnn_linen.MuReadout(256, 10, base_in_features=64)
    >>> variables = readout.init(jax.random.key(0), jnp.ones((2, 256)))
    >>> readout.apply(variables, jnp.ones((2, 256))).shape
    (2, 10)
  """

  in_features: int
  out_features: int
  base_in_features: int
  output_mult: float = 1.0
  readout_zero_init: bool = False
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_positive("output_mult", self.output_mult)
    _check_input(x, self.in_features)
    init = lambda name: (lambda key: init_mu_readout(
        key, self.in_features, self.out_features, base_in_features=self.base_in_features,
        use_bias=self.use_bias, zero_init=self.readout_zero_init, dtype=self.param_dtype)[name])
    kernel = self.param("kernel", init("kernel"))
    bias = self.param("bias", init("bias")) if self.use_bias else None
    return _apply_readout(x, kernel, bias, self.in_features / self.base_in_features,
                          self.output_mult, self.dtype)


RECORD = registry.record(
    slug="mup_feature_learning",
    kind="transform",
    title="Feature Learning in Infinite-Width Neural Networks",
    reference="arXiv:2011.14522",
    experiment="mup_coordinate_check",
    also=("jaxlearn.optim.scale_by_per_leaf",),
    extra_tests=("tests/nn/test_layer_battery.py",),
    notes=(
        "Transcribes microsoft/mup 1.0.0: base shapes from a base and a delta model (here "
        "jax.eval_shape of both), MuAdam (lr / width_mult on matrix-like leaves) and MuSGD "
        "(lr * width_mult on vector-like, lr * fan_out_mult / fan_in_mult on matrix-like) as "
        "static per-leaf multipliers, mup.init's width corrections as init multipliers, and "
        "MuReadout (output_mult * x / width_mult, PyTorch Linear init rescaled by "
        "sqrt(width_mult)). Flax layout: fan-in is axis -2 and fan-out axis -1, and width_mult "
        "is the first infinite axis (mup: the last, in PyTorch's reversed layout). Not "
        "transcribed: mup's weight-decay scaling (chain optax.add_decayed_weights before "
        "scale_by_mup for MuAdam's coupled decay, after it for decoupled_wd=True), the bias "
        "rescale of set_base_shapes for PyTorch's default bias init (flax biases start at "
        "zero), MuSharedReadout, xavier/kaiming fan_out variants, attention's 1/d scaling. "
        "The lr-transfer claim is Tensor Programs V's (arXiv:2203.03466), labelled as such in "
        "the experiment. Parity with the mup package (PyTorch): tests/nn/test_mup.py."
    ),
)
