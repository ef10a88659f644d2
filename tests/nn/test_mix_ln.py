"""Mix-LN against a hand-written NumPy (float64) transcription of the official blocks.

Reference: `peft_pretraining/modeling_llama.py` of the official code (`NORM_TYPE=post_pre`): a
Post-LN block is h = N(h + Attn(h)); h = N(h + MLP(h)), a Pre-LN block h = h + Attn(N(h));
h = h + MLP(N(h)), N = RMSNorm (eps 1e-6); the first POST_NUM blocks are Post-LN; LLaMA's final
norm follows the stack. Attention and the SwiGLU MLP are written head by head, position by
position.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxlearn.nn as jnn

EPS = 1e-6
D, HEADS, HIDDEN = 8, 2, 12
SHAPES = {"attention_norm": (D,), "query": (D, D), "key": (D, D), "value": (D, D), "out": (D, D),
          "mlp_norm": (D,), "gate": (D, HIDDEN), "up": (D, HIDDEN), "down": (HIDDEN, D)}


def np_rms(h, w):
  return w * h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + EPS)


def np_attention(h, p):
  batch, length, _ = h.shape
  head_dim = D // HEADS
  out = np.zeros_like(h)
  q, k, v = h @ p["query"], h @ p["key"], h @ p["value"]
  for b in range(batch):
    for head in range(HEADS):
      cols = slice(head * head_dim, (head + 1) * head_dim)
      for t in range(length):
        scores = np.array([q[b, t, cols] @ k[b, s, cols] for s in range(t + 1)])
        weights = np.exp(scores / np.sqrt(head_dim) - np.max(scores / np.sqrt(head_dim)))
        weights /= weights.sum()
        out[b, t, cols] = sum(w * v[b, s, cols] for s, w in enumerate(weights))
  return out @ p["out"]


def np_mlp(h, p):
  gate = h @ p["gate"]
  return (gate / (1.0 + np.exp(-gate)) * (h @ p["up"])) @ p["down"]


def np_post_ln_block(h, p):
  h = np_rms(h + np_attention(h, p), p["attention_norm"])
  return np_rms(h + np_mlp(h, p), p["mlp_norm"])


def np_pre_ln_block(h, p):
  h = h + np_attention(np_rms(h, p["attention_norm"]), p)
  return h + np_mlp(np_rms(h, p["mlp_norm"]), p)


def _params(seed, layers=None):
  rng = np.random.default_rng(seed)
  lead = () if layers is None else (layers,)
  params = {}
  for name, shape in SHAPES.items():
    scale = 1.0 if len(shape) == 1 else 0.5
    params[name] = (rng.uniform(0.5, 1.5, lead + shape) if len(shape) == 1
                    else scale * rng.normal(size=lead + shape))
  return params


def _x(seed=0):
  return np.random.default_rng(seed).normal(size=(2, 4, D))


@pytest.mark.parametrize("post_ln", [True, False])
def test_block_order_matches_the_handwritten_reference(post_ln):
  p, x = _params(1), _x()
  y = jnn.mix_ln_block(jnp.asarray(x, jnp.float32),
                       {k: jnp.asarray(v, jnp.float32) for k, v in p.items()},
                       post_ln=post_ln, num_heads=HEADS)
  expected = np_post_ln_block(x, p) if post_ln else np_pre_ln_block(x, p)
  np.testing.assert_allclose(y, expected, rtol=2e-4, atol=2e-5)
  other = np_pre_ln_block(x, p) if post_ln else np_post_ln_block(x, p)
  assert not np.allclose(y, other, atol=1e-2)  # the two orders are distinguishable here


def test_stack_is_post_ln_then_pre_ln_then_the_final_norm():
  layers, fraction = 4, 0.5
  p, x = _params(2, layers), _x(3)
  final = np.random.default_rng(4).uniform(0.5, 1.5, D)
  model = nnx.eval_shape(lambda: jnn.MixLNTransformer(layers, D, HEADS, HIDDEN,
                                                      post_fraction=fraction, rngs=nnx.Rngs(0)))
  assert model.layer_types == ("post", "post", "pre", "pre")
  assert jnn.mix_ln_layer_types(layers, fraction) == model.layer_types
  params = {k: jnp.asarray(v, jnp.float32) for k, v in {**p, "final_norm": final}.items()}
  y = jnn.mix_ln_transformer(jnp.asarray(x, jnp.float32), params, layer_types=model.layer_types,
                             num_heads=HEADS)

  h = x
  for index, kind in enumerate(model.layer_types):
    block = {name: value[index] for name, value in p.items()}
    h = np_post_ln_block(h, block) if kind == "post" else np_pre_ln_block(h, block)
  np.testing.assert_allclose(y, np_rms(h, final), rtol=5e-4, atol=5e-5)


def test_number_of_post_ln_blocks_is_floor_of_alpha_times_depth():
  assert jnn.num_post_ln_layers(12, 0.25) == 3  # the official 71M run: POST_NUM=3
  assert [jnn.num_post_ln_layers(n, a) for n, a in
          ((12, 0.0), (12, 1.0), (10, 0.33), (7, 0.5), (100, 0.29), (24, 1 / 3))] == [
              0, 12, 3, 3, 29, 8]
  assert jnn.mix_ln_layer_types(5, 0.4) == ("post", "post", "pre", "pre", "pre")
  for bad in (-0.1, 1.1, float("nan")):
    with pytest.raises(ValueError, match="post_fraction"):
      jnn.mix_ln_layer_types(4, bad)
  with pytest.raises(ValueError, match="num_heads"):
    jnn.MixLNBlock(8, 3, 8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="layer_types"):
    jnn.mix_ln_transformer(jnp.ones((1, 2, D)), {**_params(0, 2), "final_norm": np.ones(D)},
                           layer_types=("post", "middle"), num_heads=HEADS)
