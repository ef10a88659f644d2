r"""MaskSparsity: sparse regularization of the normalization scales of the channels to be pruned.

Jiang, Zhao, Zhao, An, Tang and Wang, "Pruning-aware Sparse Regularization for Network Pruning",
arXiv:2201.06776 (Machine Intelligence Research, 2023); official code:
https://github.com/CASIA-IVA-Lab/MaskSparsity (`netslim/sparse.py`: `update_bn_by_names_dict`,
called in `pycls/core/trainer.py` between `loss.backward()` and `optimizer.step()`).

Network slimming pushes every BatchNorm scale :math:`\gamma` towards 0 with an L1 penalty, then
prunes the channels whose :math:`|\gamma|` is small. MaskSparsity first chooses the channels to
prune (a binary mask :math:`M`, e.g. from a global-sparsity run thresholded at 0.01) and then
regularizes only those, so the kept channels train freely. The official code adds to the gradient
of each listed scale

.. math::

  \text{L1:}\quad g_\gamma &\leftarrow g_\gamma + s\,\operatorname{sign}(\gamma) \odot M \\
  \text{L2:}\quad g_\gamma &\leftarrow g_\gamma + s\,\gamma \odot M \\
  \text{smooth L1:}\quad g_\gamma &\leftarrow g_\gamma + s
    \begin{cases} \gamma & |\gamma| < \eta s \\ \operatorname{sign}(\gamma) & \text{otherwise}
    \end{cases} \odot M

with :math:`\eta` the learning rate of the step (the smooth-L1 switch is discontinuous at
:math:`|\gamma| = \eta s`, as in the official code). The official trainer loads the saved mask of
the *kept* channels and inverts it; here `mask` marks the channels to regularize (to prune).
Official strengths: default 1e-4, 5e-4 in the ImageNet scripts.

`mask_sparsity` is a coupled (gradient-level) term: chain it before the base optimizer, as the
official code adds it to the gradient before `optimizer.step()`.
`optax.add_decayed_weights(s, mask)` is the L2 variant with one flag per leaf, not per channel,
and not the L1 term.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import registry
from jaxlearn import _checks
from jaxlearn.optim import _common

__all__ = [
    "mask_sparsity",
]

PENALTIES = ("l1", "l2", "smooth_l1")
PyTree = Any


def _mask_leaves(mask: PyTree, params: PyTree) -> list[Any]:
  """One mask per params leaf (flatten order): False, True or a bool array of the leaf's shape.

  `mask` may be a prefix of `params`: a bool covers its whole subtree.
  """
  mask_tree = mask(params) if callable(mask) else mask
  is_flag = lambda x: isinstance(x, (bool, np.bool_)) or hasattr(x, "dtype")
  try:
    per_leaf = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask_tree, params,
                            is_leaf=is_flag)
  except ValueError as error:
    raise ValueError(f"mask must be a pytree (or prefix) of the params: {error}") from None
  leaves = jax.tree.leaves(per_leaf, is_leaf=is_flag)
  for m, (path, p) in zip(leaves, jax.tree_util.tree_leaves_with_path(params)):
    where = f"mask{jax.tree_util.keystr(path)}"
    if isinstance(m, (bool, np.bool_)):
      continue
    if not jnp.issubdtype(m.dtype, jnp.bool_):
      raise ValueError(f"{where} must be a bool or a bool array, got dtype {m.dtype}")
    if tuple(np.shape(m)) not in ((), tuple(np.shape(p))):
      raise ValueError(f"{where} has shape {tuple(np.shape(m))}, but params{where[4:]} has "
                       f"shape {tuple(np.shape(p))}")
  return leaves


def _check_static_mask(mask) -> None:
  """Construction-time checks of a mask given as a pytree: bools or bool arrays only."""
  _common.check_mask(mask, "mask")
  if mask is None:
    raise ValueError("mask is required: a pytree of bools or bool arrays marking the channels "
                     "to regularize")
  if callable(mask):
    return
  for path, m in jax.tree_util.tree_leaves_with_path(mask):
    dtype = np.result_type(m) if isinstance(m, (bool, np.bool_)) else getattr(m, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.bool_):
      raise ValueError(f"mask{jax.tree_util.keystr(path)} must be a bool or a bool array, got "
                       f"{m!r}")


def mask_sparsity(
    strength: float,
    mask: PyTree,
    base_learning_rate: float | None = None,
    *,
    penalty: str = "l1",
) -> optax.GradientTransformationExtraArgs:
  r"""Adds the MaskSparsity penalty gradient on the masked entries (module docstring).

  Args:
    strength: :math:`s \ge 0` (official default 1e-4).
    mask: which entries to regularize: a pytree (or prefix) of the params whose leaves are
      Python/NumPy bools (the whole leaf) or bool arrays of the leaf's shape (one flag per
      channel of a normalization scale), or a callable of the params returning one. Leaves
      marked False pass through unchanged. Not part of the state.
    base_learning_rate: :math:`\eta > 0`, the base optimizer's learning rate; required by
      ``penalty="smooth_l1"`` (the switch at :math:`|\gamma| = \eta s`), unused otherwise.
    penalty: ``"l1"`` (the paper's), ``"l2"`` or ``"smooth_l1"``.

  Returns:
    A stateless `GradientTransformationExtraArgs` whose `update` needs `params`; chain it before
    the base optimizer.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> from jaxlearn.optim import mask_sparsity
    >>> params = {"bn": {"scale": jnp.array([0.5, -0.2, 1.0]), "bias": jnp.zeros(3)}}
    >>> mask = {"bn": {"scale": np.array([True, True, False]), "bias": False}}
    >>> opt = optax.chain(mask_sparsity(1e-2, mask), optax.sgd(0.1))
    >>> updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    >>> [round(float(u), 6) + 0.0 for u in updates["bn"]["scale"]]  # -lr * s * sign(gamma)
    [-0.001, 0.001, 0.0]
  """
  for name, value in (("strength", strength), ("base_learning_rate", base_learning_rate)):
    if callable(value):
      raise ValueError(f"{name} must be a number (wrap the factory in "
                       f"jaxlearn.optim.inject_hyperparams to schedule it), got {value!r}")
  _checks.check_non_negative("strength", strength)
  _check_static_mask(mask)
  _checks.check_choice("penalty", penalty, PENALTIES)
  if penalty == "smooth_l1":
    if base_learning_rate is None:
      raise ValueError("base_learning_rate is required with penalty='smooth_l1'")
    _checks.check_positive("base_learning_rate", base_learning_rate)
  elif base_learning_rate is not None:
    _checks.check_positive("base_learning_rate", base_learning_rate)

  def term(gamma):
    if penalty == "l1":
      return jnp.sign(gamma)
    if penalty == "l2":
      return gamma
    return jnp.where(jnp.abs(gamma) < base_learning_rate * strength, gamma, jnp.sign(gamma))

  def init_fn(params):
    _mask_leaves(mask, params)  # fail at init on a mask that does not fit
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "mask_sparsity", updates=updates)
    masks = _mask_leaves(mask, params)
    leaves, treedef = jax.tree.flatten(updates)

    def leaf(g, p, m):
      if isinstance(m, (bool, np.bool_)) and not m:
        return g
      gamma = jnp.asarray(p, _common.wide_dtype(jnp.result_type(p)))
      added = strength * term(gamma)
      if not isinstance(m, (bool, np.bool_)):
        added = jnp.where(m, added, 0.0)
      return (g.astype(gamma.dtype) + added).astype(g.dtype)

    out = [leaf(g, p, m) for g, p, m in zip(leaves, jax.tree.leaves(params), masks)]
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


RECORD = registry.record(
    slug="mask_sparsity",
    kind="transform",
    title="Pruning-aware Sparse Regularization for Network Pruning",
    reference="arXiv:2201.06776",
    experiment="mask_sparsity_pruning",
    notes=(
        "Official netslim/sparse.py update_bn_by_names_dict: s * sign(gamma) (L1), s * gamma (L2) "
        "or the smooth-L1 switch at |gamma| < lr * s (discontinuous, as in the code; lr is "
        "passed as base_learning_rate) times the mask, added to the gradient before the "
        "optimizer step (coupled; chain before the base optimizer). mask marks the channels to "
        "regularize (the official trainer inverts its saved keep-mask); per-channel bool arrays "
        "or whole-leaf bools, validated against the params. Any leaf can be masked, not only "
        "normalization scales (the paper uses the BatchNorm scales)."
    ),
)
