"""A small CNN on the 8x8 digits images whose convolutions are patches times a Dense layer.

Shared by the normalization experiments (`microbatch_norm`, `norm_comparison_digits`). A 3x3
convolution (zero padding 1) equals the Dense layer of its HWIO kernel flattened to
(3 * 3 * in, out), applied to the image's 3x3 patches; a normalization or reparametrization of the
Dense kernel over its fan-in is the same one as over the convolution's (H, W, I) fan-in. It exists
for speed only: `jaxlearn.train.fit` vmaps over runs, and XLA:CPU turns a convolution vmapped over
kernels into a very slow grouped convolution, while a vmapped Dense is a batched matmul.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as linen
import jax
import jax.numpy as jnp


def patches(x: jax.Array, stride: int) -> jax.Array:
  """3x3 patches of NHWC `x` (zero padding 1) flattened in HWIO order: (N, H', W', 9 * C)."""
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = stride * (-(-x.shape[1] // stride) - 1) + 1  # span of the output rows in `padded`
  cols = stride * (-(-x.shape[2] // stride) - 1) + 1
  windows = [
      padded[:, i : i + rows : stride, j : j + cols : stride] for i in range(3) for j in range(3)
  ]
  return jnp.concatenate(windows, axis=-1)


class PatchConv(linen.Module):
  """A 3x3 convolution (zero padding 1, no bias) computed as patches times `dense(features)`.

  Attributes:
    features: output channels.
    strides: the stride of both spatial axes.
    dense: the Linen Dense class to use (`linen.Dense`, or a reparametrized one such as
      `jaxlearn.nn.linen.WSDense`), built as `dense(features, use_bias=False)`.
  """

  features: int
  strides: int
  dense: Callable[..., linen.Module] = linen.Dense

  @linen.compact
  def __call__(self, x):
    return self.dense(self.features, use_bias=False)(patches(x, self.strides))
