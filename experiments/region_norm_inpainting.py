"""Region Normalization vs Instance Normalization in a tiny inpainting network on 8x8 digits.

Tests the claim of arXiv:1911.10375 (AAAI 2020) at toy scale: normalizing the hole and the valid
regions separately (RN-B in the early layers, RN-L in the later ones) inpaints better than
full-spatial feature normalization (the paper's baseline network uses Instance Normalization).
This is WEAK evidence: 8x8 images, 3x3 holes, a four-convolution network trained with an L1 loss
only, none of the paper's adversarial, perceptual or style losses.

Setup: scikit-learn digits in [0, 1] (1438 train / 359 test), one random 3x3 hole per image
(mask 1 in the hole). The network sees the image with the hole filled with 1 (as the official
code does) and the mask as a second channel: conv16 - norm - relu, conv32/2 - norm - relu (the
encoder), conv32 - norm - relu (middle), nearest x2 upsampling, conv16 - norm - relu, conv1,
sigmoid. Variants: "in" = InstanceNorm (flax, affine) after every convolution; "rn" = RN-B (with
the hole mask) in the two encoder layers, RN-L (official threshold 0.8, 7x7 kernels) in the middle
and decoder layers. Adam 2e-3, batch 16, 600 steps, L1 loss on the whole image, 3 seeds. RN
uses batch statistics also at test time (official), so the test set is evaluated as one batch;
the test holes are fixed per seed. Metric: mean absolute error inside the holes (and on the
whole image).

Decision rule, fixed before the run: held if RN's mean hole L1 is at least 2% below IN's, failed
if it is not below, undecided (None) in between. Writes region_norm_inpainting.json and .png.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.nn import linen as jnn_linen
from jaxlearn.train import experiment_main, new_figure, save_result

HOLE = 3
RELATIVE_MARGIN = 0.02


class Inpainter(linen.Module):
  norm: str
  full: bool = True  # False: the smoke run's one encoder and one decoder layer (3x3 RN-L)

  def _norm(self, x, mask, early: bool):
    if self.norm == "in":
      return linen.InstanceNorm(epsilon=1e-5)(x)
    if early:
      return jnn_linen.RegionNormB()(x, mask)
    return jnn_linen.RegionNormL(x.shape[-1], kernel_size=7 if self.full else 3)(x)

  @linen.compact
  def __call__(self, image, mask):
    m = mask[..., None].astype(image.dtype)
    x = jnp.concatenate([image * (1 - m) + m, m], axis=-1)
    x = linen.relu(self._norm(linen.Conv(16, (3, 3))(x), mask, True))
    if not self.full:
      x = linen.relu(self._norm(linen.Conv(8, (3, 3))(x), mask, False))
      return jax.nn.sigmoid(linen.Conv(1, (3, 3))(x))
    x = linen.relu(self._norm(linen.Conv(32, (3, 3), strides=2)(x), mask, True))
    x = linen.relu(self._norm(linen.Conv(32, (3, 3))(x), mask, False))
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    x = linen.relu(self._norm(linen.Conv(16, (3, 3))(x), mask, False))
    return jax.nn.sigmoid(linen.Conv(1, (3, 3))(x))


def random_holes(key, n: int) -> jax.Array:
  """One HOLE x HOLE hole per image at a uniform position, boolean (n, 8, 8)."""
  corners = jax.random.randint(key, (n, 2), 0, 8 - HOLE + 1)
  rows, cols = jnp.arange(8), jnp.arange(8)
  inside = lambda c, a: (a >= c) & (a < c + HOLE)
  return (inside(corners[:, :1, None], rows[None, :, None])
          & inside(corners[:, 1:, None], cols[None, None, :]))


@functools.lru_cache(maxsize=None)
def _program(norm: str, steps: int, batch: int, full: bool):
  """One jitted program (init, training, test) per variant, shared by the seeds."""
  model = Inpainter(norm, full)
  tx = optax.adam(2e-3)

  @jax.jit
  def train_and_eval(seed, x_train, x_test):
    def step(carry, key):
      params, opt_state = carry
      k1, k2 = jax.random.split(key)
      idx = jax.random.choice(k1, len(x_train), (batch,), replace=False)
      holes = random_holes(k2, batch)

      def loss_fn(p):
        return jnp.mean(jnp.abs(model.apply({"params": p}, x_train[idx], holes) - x_train[idx]))

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state)
      return (optax.apply_updates(params, updates), opt_state), loss

    key_init, key_test, key_train = jax.random.split(jax.random.key(seed), 3)
    params = model.init(key_init, x_train[:2], random_holes(key_init, 2))["params"]
    test_holes = random_holes(key_test, len(x_test))
    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)),
                                       jax.random.split(key_train, steps))
    error = jnp.abs(model.apply({"params": params}, x_test, test_holes) - x_test)[..., 0]
    hole_l1 = jnp.sum(error * test_holes) / jnp.sum(test_holes)
    return losses, hole_l1, jnp.mean(error)

  return train_and_eval


def train_and_test(norm: str, data, seed: int, steps: int, batch: int, full: bool) -> dict:
  program = _program(norm, steps, batch, full)
  losses, hole_l1, image_l1 = program(seed, jnp.asarray(data.x_train), jnp.asarray(data.x_test))
  return {"hole_l1": float(hole_l1), "image_l1": float(image_l1),
          "train_loss": np.asarray(losses)}


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = load_digits(flat=False, seed=seed)
  seeds = [seed] if quick else [seed, seed + 1, seed + 2]
  steps = 2 if quick else 600
  batch = 8 if quick else 16
  if quick:  # smoke run: a few test images
    data = data._replace(x_test=data.x_test[:32], y_test=data.y_test[:32])
  start = time.perf_counter()
  runs = {norm: [train_and_test(norm, data, s, steps, batch, full=not quick) for s in seeds]
          for norm in ("in", "rn")}
  wall = time.perf_counter() - start
  summary = {norm: {
      "hole_l1": float(np.mean([r["hole_l1"] for r in rs])),
      "hole_l1_std": float(np.std([r["hole_l1"] for r in rs])),
      "hole_l1_per_seed": [r["hole_l1"] for r in rs],
      "image_l1": float(np.mean([r["image_l1"] for r in rs])),
      "final_train_loss": float(np.mean([r["train_loss"][-50:].mean() for r in rs])),
  } for norm, rs in runs.items()}
  rn, inorm = summary["rn"]["hole_l1"], summary["in"]["hole_l1"]
  relative = (inorm - rn) / inorm
  held = True if relative >= RELATIVE_MARGIN else (False if relative <= 0 else None)

  fig, axes = new_figure(ncols=2)
  window = max(1, steps // 50)
  for norm, rs in runs.items():
    curve = np.mean([r["train_loss"] for r in rs], axis=0)
    smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
    axes[0, 0].plot(smooth, label=norm)
  axes[0, 0].set(xlabel="step", ylabel="train L1 (whole image)", title="toy inpainting, 8x8")
  axes[0, 0].legend(fontsize=7)
  names = list(summary)
  axes[0, 1].bar(names, [summary[n]["hole_l1"] for n in names],
                 yerr=[summary[n]["hole_l1_std"] for n in names])
  axes[0, 1].set(ylabel="test L1 in the holes", title="weak evidence (toy scale)")

  measured = (
      f"WEAK evidence (toy scale). Test L1 in the 3x3 holes, mean of {len(seeds)} seeds: IN "
      f"{inorm:.4f} (± {summary['in']['hole_l1_std']:.4f}), RN-B + RN-L {rn:.4f} "
      f"(± {summary['rn']['hole_l1_std']:.4f}), {100 * relative:+.1f}% for RN; whole-image L1 "
      f"IN {summary['in']['image_l1']:.4f}, RN {summary['rn']['image_l1']:.4f}."
  )
  return save_result(
      "region_norm_inpainting", out,
      claim=("Region Normalization (RN-B early, RN-L later) inpaints better than full-spatial "
             "feature normalization (Instance Normalization in the baseline network)."),
      measured=measured,
      claim_held=held,
      config={"data": "digits 8x8 in [0, 1], one random 3x3 hole per image",
              "model": "conv16-conv32/2 (RN-B or IN), conv32, up x2, conv16 (RN-L or IN), "
                       "conv1, sigmoid",
              "training": f"Adam 2e-3, batch {batch}, {steps} steps, L1 on the whole image",
              "evaluation": "test set as one batch (RN uses batch statistics at test time)",
              "evidence": "weak: toy scale, L1 loss only",
              "decision": f"held if RN's hole L1 is >= {RELATIVE_MARGIN:.0%} below IN's"},
      metrics={"relative_hole_l1_reduction": relative, "runs": summary},
      seeds=seeds, wall_time_s=wall, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
