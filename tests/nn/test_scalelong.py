"""ScaleLong against a NumPy transcription of the official UViT decoder loop (sail-sg/ScaleLong
`libs/uvit.py`: `UViT.forward` for scalelong = 0..4 and `Attentionlayer`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlearn import nn as jnn

N, L, C, R = 4, 32, 5, 8  # skips, tokens, channels, the gate's reduction


def attention_layer_numpy(inp, w1, b1, w2, b2):
  """Attentionlayer.forward with PyTorch Linear weights (out, in) = our (in, out) transposed."""
  linear = lambda x, weight_torch, bias: x @ weight_torch.T + bias
  hidden = np.maximum(linear(inp.mean(axis=-1), w1.T, b1), 0.0)
  return (1.0 / (1.0 + np.exp(-linear(hidden, w2.T, b2))))[..., None]


def decoder_skips_numpy(skips, scalelong, kappa=0.5, gates=None):
  """The skips the official decoder blocks receive, in decoder order (skips: encoder order)."""
  skips, received = list(skips), []
  outdepth = len(skips)
  for layer_cnt in range(outdepth):
    temp = skips.pop()
    if scalelong == 0:
      received.append(temp)
    elif scalelong == 1:
      received.append(temp * 2**(-0.5))
    elif scalelong == 2:
      received.append(temp * kappa**(outdepth - 1 - layer_cnt))
    elif scalelong == 3:
      received.append(temp * attention_layer_numpy(temp, *gates))
    else:
      received.append(temp * attention_layer_numpy(temp, *gates[layer_cnt]))
  return received


SKIPS = np.random.default_rng(0).normal(size=(N, 2, L, C))
MODES = {"none": 0, "sqrt2": 1, "cs": 2, "ls": 3, "ls_per_skip": 4}


@pytest.mark.parametrize("mode", list(MODES))
def test_scaled_skips_match_the_official_decoder_loop(mode):
  layer = jnn.LongSkipScale(N, L, mode=mode, kappa=0.7, reduction=R, rngs=nnx.Rngs(0))
  gates = None
  if mode.startswith("ls"):
    p = {k: np.asarray(v, np.float64) for k, v in nnx.to_pure_dict(nnx.state(layer)).items()}
    names = ("w1", "b1", "w2", "b2")
    gates = ([p[n] for n in names] if mode == "ls"
             else [[p[n][N - 1 - i] for n in names] for i in range(N)])  # decoder order
  expected = decoder_skips_numpy(SKIPS, MODES[mode], 0.7, gates)
  stacked = np.asarray(layer(jnp.asarray(SKIPS, jnp.float32)))
  for i, skip in enumerate(expected):
    level = N - 1 - i  # decoder block i pops encoder level N - 1 - i
    np.testing.assert_allclose(stacked[level], skip, rtol=1e-5, atol=1e-6)
  if mode not in ("cs", "ls_per_skip"):
    return
  # One skip at a time, as the decoder pops it (the level picks the factor or the gate).
  np.testing.assert_allclose(layer(jnp.asarray(SKIPS[1], jnp.float32), level=1), stacked[1],
                             rtol=1e-6, atol=1e-7)
  # Channels-first skips give the same numbers.
  channels_first = jnn.LongSkipScale(N, L, mode=mode, kappa=0.7, reduction=R,
                                     channels_last=False, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(
      channels_first(jnp.asarray(SKIPS.swapaxes(-1, -2), jnp.float32)), stacked.swapaxes(-1, -2),
      rtol=1e-5, atol=1e-6)


def test_cs_factors_the_deepest_skip_gets_the_highest_power_and_bad_input_raises():
  np.testing.assert_allclose(jnn.constant_skip_scales(4, 0.5), [1, 0.5, 0.25, 0.125])
  vmapped = jax.vmap(lambda k: jnn.constant_skip_scales(3, k))(jnp.asarray([1.0, 0.7]))
  np.testing.assert_allclose(vmapped, [[1, 1, 1], [1, 0.7, 0.49]], rtol=1e-6)
  for kappa in (0.0, -0.5, 1.5, float("nan")):
    with pytest.raises(ValueError, match="kappa"):
      jnn.LongSkipScale(4, mode="cs", kappa=kappa, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="reduction"):
    jnn.init_ls_gate(jax.random.key(0), 8, reduction=16)  # the official default needs L >= 16
  with pytest.raises(ValueError, match="num_tokens"):
    jnn.LongSkipScale(4, mode="ls", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="mode"):
    jnn.LongSkipScale(4, mode="ls_shared", rngs=nnx.Rngs(0))
  layer = jnn.LongSkipScale(4, mode="cs", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="level"):
    layer(jnp.ones((2, 3)), level=4)
  with pytest.raises(ValueError, match="expects"):
    layer(jnp.ones((3, 2, 3)))  # a stack of 3 skips, not 4
