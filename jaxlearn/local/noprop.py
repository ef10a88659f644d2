r"""NoProp (discrete time): each block learns on its own to denoise a noisy label embedding.

Li, Teh, Pascanu, "NoProp: Training Neural Networks without Back-propagation or
Forward-propagation", arXiv:2503.24322 (2025). No official code.

Latents :math:`z_0, \dots, z_T` run from pure noise (:math:`z_0`) towards the label embedding
:math:`u_y` (a fixed class embedding, rule configuration); block :math:`t` maps
:math:`(x, z_{t-1})` to a prediction :math:`\hat u_t` of :math:`u_y`. The fixed variational
posterior is the variance-preserving chain with marginals

.. math::

   q(z_t \mid y) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\, u_y,\ (1 - \bar\alpha_t) I\big),
   \qquad \mathrm{SNR}(t) = \frac{\bar\alpha_t}{1 - \bar\alpha_t},

and the training objective (the negative ELBO of the discrete-time variant) is

.. math::

   \mathcal{L} = \mathbb{E}_{q(z_T \mid y)}\big[-\log \hat p(y \mid z_T)\big]
     + D_{\mathrm{KL}}\big(q(z_0 \mid y) \,\|\, \mathcal{N}(0, I)\big)
     + \frac{T}{2}\, \eta\, \mathbb{E}_{t \sim \mathcal{U}\{1..T\}}\Big[
       \big(\mathrm{SNR}(t) - \mathrm{SNR}(t-1)\big)
       \big\lVert \hat u_t(z_{t-1}, x) - u_y \big\rVert^2 \Big],
   \quad z_{t-1} \sim q(z_{t-1} \mid y).

Each block's term depends on its own parameters only (its input :math:`z_{t-1}` is sampled from
:math:`q`, never produced by another block), so every block trains at every step, independently:
the expectation over :math:`t` is taken exactly, block :math:`t`'s objective being
:math:`\tfrac{\eta}{2} (\mathrm{SNR}(t) - \mathrm{SNR}(t-1))\, \mathbb{E}\lVert \hat u_t - u_y
\rVert^2`. The classifier :math:`\hat p(y \mid z_T) = \operatorname{softmax}(W z_T + b)` is the
last block's head, trained by the cross-entropy term on :math:`z_T \sim q(z_T \mid y)`.

Inference starts from :math:`z_0 \sim \mathcal{N}(0, I)` and runs every block once:

.. math::

   z_t = a_t\, \hat u_t(z_{t-1}, x) + b_t\, z_{t-1} + \sqrt{c_t}\, \epsilon_t, \quad
   a_t = \frac{\sqrt{\bar\alpha_t}(1 - \alpha_{t-1})}{1 - \bar\alpha_{t-1}}, \
   b_t = \frac{\sqrt{\alpha_{t-1}}(1 - \bar\alpha_t)}{1 - \bar\alpha_{t-1}}, \
   c_t = \frac{(1 - \bar\alpha_t)(1 - \alpha_{t-1})}{1 - \bar\alpha_{t-1}},

with :math:`\alpha_{t-1} = \bar\alpha_{t-1} / \bar\alpha_t`: the Gaussian posterior
:math:`q(z_t \mid z_{t-1}, y)` of the chain with :math:`u_y` replaced by the block's prediction, so
that a perfect denoiser reproduces every marginal :math:`q(z_t \mid y)` (tested). The label is the
argmax of :math:`\hat p(y \mid z_T)`.

Boundary choices, pinned here (the paper's text beyond its abstract and figure captions was not
readable): the cosine schedule over :math:`T + 1` noise levels,
:math:`\bar\alpha_t = g\big(\tfrac{T + 1 - t}{T + 1}\big)` with
:math:`g(u) = \cos^2\!\big(\tfrac{\pi}{2}\tfrac{u + s}{1 + s}\big) / \cos^2\!\big(\tfrac{\pi}{2}
\tfrac{s}{1 + s}\big)`, :math:`s = 0.008`, and :math:`\bar\alpha_0 = 0` exactly. So :math:`z_0`
is pure noise (:math:`\mathrm{SNR}(0) = 0`, the KL term is 0 for any embedding, :math:`a_1 =
\sqrt{\bar\alpha_1}, b_1 = 0, c_1 = 1 - \bar\alpha_1`), and no latent is noise-free
(:math:`\bar\alpha_T < 1`), so every SNR, loss weight and coefficient is finite. Inference noise
is on by default (the paper's equation); ``inference_noise=False`` drops :math:`\epsilon_t` and
starts from :math:`z_0 = 0` (a user of a third-party port reports higher accuracy without it).

References:
  Li, Teh, Pascanu, "NoProp: Training Neural Networks without Back-propagation or
  Forward-propagation", https://arxiv.org/abs/2503.24322, arXiv preprint, 2025 (no official
  code).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import _checks
from jaxlearn import registry
from jaxlearn.local.framework import Block, LocalContext, LocalModel, LocalParams, LocalRule

__all__ = [
    "NoProp",
    "noprop_alpha_bar",
    "noprop_coefficients",
    "denoising_block",
]

_EMBEDDINGS = ("one_hot", "orthogonal")


def noprop_alpha_bar(num_blocks: int, s: float = 0.008) -> np.ndarray:
  r""":math:`\bar\alpha_0, \dots, \bar\alpha_T` (float64, shape (T + 1,)) of the pinned cosine
  schedule: :math:`\bar\alpha_0 = 0` (pure noise), increasing to :math:`\bar\alpha_T < 1`.

  Example:
    >>> from jaxlearn.local import noprop_alpha_bar
    >>> alpha_bar = noprop_alpha_bar(10)
    >>> alpha_bar.shape, float(alpha_bar[0]), bool(0.97 < alpha_bar[-1] < 1.0)
    ((11,), 0.0, True)
  """
  _checks.check_positive_int("num_blocks", num_blocks)
  _checks.check_range("s", s, 0.0, None)
  t = np.arange(num_blocks + 1, dtype=np.float64)
  u = (num_blocks + 1 - t) / (num_blocks + 1)
  g = lambda v: np.cos(0.5 * np.pi * (v + s) / (1.0 + s)) ** 2
  alpha_bar = g(u) / g(0.0)
  alpha_bar[0] = 0.0  # cos(pi/2) is 6e-17 in floating point: pure noise, exactly
  return alpha_bar


def noprop_coefficients(alpha_bar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  r"""Inference coefficients :math:`(a_t, b_t, c_t)` for t = 1..T (float64, each shape (T,)).

  Example:
    >>> import numpy as np
    >>> from jaxlearn.local import noprop_alpha_bar, noprop_coefficients
    >>> alpha_bar = noprop_alpha_bar(4)
    >>> a, b, c = noprop_coefficients(alpha_bar)
    >>> bool(np.isclose(a[0], np.sqrt(alpha_bar[1]))), float(b[0])  # z_1 ignores z_0
    (True, 0.0)
  """
  alpha_bar = np.asarray(alpha_bar, np.float64)
  prev, cur = alpha_bar[:-1], alpha_bar[1:]
  alpha = prev / cur  # alpha_{t-1}
  a = np.sqrt(cur) * (1.0 - alpha) / (1.0 - prev)
  b = np.sqrt(alpha) * (1.0 - cur) / (1.0 - prev)
  c = (1.0 - cur) * (1.0 - alpha) / (1.0 - prev)
  return a, b, c


def denoising_block(
    embedding_dim: int,
    hidden: Sequence[int] = (256,),
    activation=linen.relu,
) -> Block:
  r"""A block :math:`\hat u_t(z_{t-1}, x)`: an MLP on the concatenation of flat x and z.

  Its input is the pair ``(x, z)``; its output has ``embedding_dim`` features (linear).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxlearn.local import denoising_block
    >>> block = denoising_block(10, hidden=(32,))
    >>> inputs = (jnp.ones((4, 64)), jnp.zeros((4, 10)))
    >>> params = block.init(jax.random.key(0), inputs)
    >>> block.apply(params, inputs).shape
    (4, 10)
  """
  _checks.check_positive_int("embedding_dim", embedding_dim)

  class _Denoiser(linen.Module):

    @linen.compact
    def __call__(self, inputs):
      x, z = inputs
      h = jnp.concatenate([x.reshape(x.shape[0], -1), z.astype(x.dtype)], axis=-1)
      for width in hidden:
        h = activation(linen.Dense(width)(h))
      return linen.Dense(embedding_dim)(h)

  module = _Denoiser()
  return Block(lambda key, inputs: module.init(key, inputs)["params"],
               lambda params, inputs: module.apply({"params": params}, inputs))


@dataclasses.dataclass(frozen=True)
class NoProp(LocalRule):
  r"""The discrete-time NoProp rule (see the module docstring for the equations).

  The model has T blocks built with `denoising_block` (any block taking ``(x, z)`` works); batches
  are ``{'x': inputs, 'y': int labels}`` and every step needs a key (the noisy latents). Each
  block's input is a fresh sample of :math:`q(z_{t-1} \mid y)` paired with x: ``block_input``
  ignores the previous block's output, so no block waits for another.

  Attributes:
    num_classes: number of classes (>= 2).
    num_blocks: T, the model's number of blocks (the schedule depends on it).
    embedding: the fixed class embeddings :math:`u_y`: ``'one_hot'`` (default, dimension =
      num_classes) or ``'orthogonal'`` (rows of a random orthogonal matrix, drawn from
      ``embedding_seed``, dimension ``embedding_dim`` >= num_classes).
    embedding_dim: dimension of the orthogonal embeddings (None: num_classes).
    embedding_seed: seed of the orthogonal embeddings.
    eta: :math:`\eta > 0`, the weight of the denoising terms (default 1).
    schedule_offset: the cosine schedule's :math:`s` (default 0.008).
    inference_noise: add :math:`\sqrt{c_t}\,\epsilon_t` and start from noise at inference
      (default True, the paper's equation); False: deterministic, from :math:`z_0 = 0`.

  References:
    Li, Teh, Pascanu, "NoProp: Training Neural Networks without Back-propagation or
    Forward-propagation", https://arxiv.org/abs/2503.24322, 2025 (no official code).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxlearn import local
    >>> rule = local.NoProp(num_classes=10, num_blocks=2)
    >>> model = local.LocalModel(tuple(local.denoising_block(10, (16,)) for _ in range(2)))
    >>> batch = {"x": jnp.ones((8, 64)), "y": jnp.arange(8) % 10}
    >>> optimizer = optax.adam(1e-3)
    >>> init = jax.jit(lambda key: local.init_train_state(model, rule, optimizer, key, batch))
    >>> state = init(jax.random.key(0))
    >>> step = local.local_train_step(model, rule, optimizer)
    >>> state, metrics = step(state, batch, jax.random.key(1))
    >>> metrics["block_losses"].shape  # one denoising objective per block (+ CE on the last)
    (2,)
    >>> predict = jax.jit(lambda params, x, key: rule.predict(model, params, x, key))
    >>> predict(state.params, batch["x"], jax.random.key(2)).shape  # the inference chain
    (8,)
  """

  num_classes: int = 10
  num_blocks: int = 10
  _: dataclasses.KW_ONLY
  embedding: str = "one_hot"
  embedding_dim: int | None = None
  embedding_seed: int = 0
  eta: float = 1.0
  schedule_offset: float = 0.008
  inference_noise: bool = True

  def __post_init__(self):
    _checks.check_positive_int("num_classes", self.num_classes)
    _checks.check_range("num_classes", self.num_classes, 2, None)
    _checks.check_positive_int("num_blocks", self.num_blocks)
    _checks.check_choice("embedding", self.embedding, _EMBEDDINGS)
    if self.embedding_dim is not None:
      _checks.check_positive_int("embedding_dim", self.embedding_dim)
      if self.embedding == "one_hot" and self.embedding_dim != self.num_classes:
        raise ValueError(
            f"embedding_dim must be num_classes ({self.num_classes}) for one_hot embeddings, got "
            f"{self.embedding_dim}"
        )
      if self.embedding_dim < self.num_classes:
        raise ValueError(
            f"embedding_dim must be >= num_classes ({self.num_classes}), got {self.embedding_dim}"
        )
    _checks.check_positive("eta", self.eta)
    _checks.check_range("schedule_offset", self.schedule_offset, 0.0, None)
    _checks.check_bool("inference_noise", self.inference_noise)

  # -- fixed quantities ---------------------------------------------------------------------------

  def embeddings(self) -> jax.Array:
    """The fixed class embeddings, shape (num_classes, embedding dimension), float32."""
    if self.embedding == "one_hot":
      return jnp.eye(self.num_classes, dtype=jnp.float32)
    dim = self.embedding_dim or self.num_classes
    rng = np.random.default_rng(self.embedding_seed)
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    q = q * np.sign(np.diag(r))  # Haar-distributed
    return jnp.asarray(q[: self.num_classes], jnp.float32)

  def schedule(self) -> np.ndarray:
    """The cosine schedule's alpha-bar, t = 0..T (float64, shape (T + 1,))."""
    return noprop_alpha_bar(self.num_blocks, self.schedule_offset)

  def snr(self) -> np.ndarray:
    """SNR(t) for t = 0..T (float64)."""
    alpha_bar = self.schedule()
    return alpha_bar / (1.0 - alpha_bar)

  def _noisy_embedding(self, t: int, labels, key):
    alpha_bar = float(self.schedule()[t])
    u = self.embeddings()[labels]
    noise = jax.random.normal(key, u.shape, u.dtype)
    return math.sqrt(alpha_bar) * u + math.sqrt(1.0 - alpha_bar) * noise

  # -- the rule -----------------------------------------------------------------------------------

  def block_input(self, index: int, signal, ctx: LocalContext):
    """``(x, z_index)`` with ``z_index ~ q(z_index | y)``: the previous output is not used."""
    del signal
    if ctx.key is None:
      raise ValueError("NoProp samples noisy latents: pass a PRNG key to the step (key=None given)")
    key = jax.random.fold_in(ctx.key, index)
    return ctx.batch["x"], self._noisy_embedding(index, ctx.batch["y"], key)

  def init_state(self, key, outputs, batch):
    """No trained or running state; checks the number of blocks."""
    del key, batch
    if len(outputs) != self.num_blocks:
      raise ValueError(
          f"the model has {len(outputs)} blocks, the rule num_blocks={self.num_blocks}")
    return ()

  def init_head(self, index: int, key, output):
    """The classifier :math:`\\hat p(y | z_T)` on the last block (None elsewhere)."""
    if index != self.num_blocks - 1:
      return None
    dim = self.embeddings().shape[1]
    dense = linen.Dense(self.num_classes)
    return dense.init(key, jnp.zeros((1, dim), jnp.float32))["params"]

  def block_loss(self, index: int, output, head, ctx: LocalContext) -> jax.Array:
    num_blocks = self.num_blocks
    snr = self.snr()
    weight = 0.5 * self.eta * float(snr[index + 1] - snr[index])
    u = self.embeddings()[ctx.batch["y"]]
    error = jnp.sum(jnp.square(output.astype(jnp.float32) - u), axis=-1)
    loss = weight * jnp.mean(error)
    if index == num_blocks - 1:
      key = jax.random.fold_in(ctx.key, num_blocks)
      z_last = self._noisy_embedding(num_blocks, ctx.batch["y"], key)
      logits = linen.Dense(self.num_classes).apply({"params": head}, z_last)
      loss = loss + optax.losses.softmax_cross_entropy_with_integer_labels(
          logits, ctx.batch["y"]).mean()
    return loss

  # -- inference ----------------------------------------------------------------------------------

  def predict_logits(
      self, model: LocalModel, params: LocalParams, x: jax.Array, key: jax.Array | None = None
  ) -> jax.Array:
    """Logits of :math:`\\hat p(y | z_T)` after running the inference chain once."""
    num_blocks = len(model.blocks)
    if num_blocks != self.num_blocks:
      raise ValueError(f"the model has {num_blocks} blocks, the rule num_blocks={self.num_blocks}")
    if self.inference_noise and key is None:
      raise ValueError("inference_noise=True needs a PRNG key")
    a, b, c = noprop_coefficients(self.schedule())
    dim = self.embeddings().shape[1]
    shape = (x.shape[0], dim)
    z = jax.random.normal(jax.random.fold_in(key, 0), shape) if self.inference_noise else (
        jnp.zeros(shape, jnp.float32))
    for t, (block, block_params) in enumerate(zip(model.blocks, params.blocks)):
      u_hat = block.apply(block_params, (x, z)).astype(jnp.float32)
      z = float(a[t]) * u_hat + float(b[t]) * z
      if self.inference_noise:
        z = z + math.sqrt(c[t]) * jax.random.normal(jax.random.fold_in(key, t + 1), shape)
    head = params.heads[num_blocks - 1]
    return linen.Dense(self.num_classes).apply({"params": head}, z)

  def predict(
      self, model: LocalModel, params: LocalParams, x: jax.Array, key: jax.Array | None = None
  ) -> jax.Array:
    """The argmax of `predict_logits`."""
    return jnp.argmax(self.predict_logits(model, params, x, key), axis=-1)


RECORD = registry.record(
    slug="noprop",
    kind="local_rule",
    title="NoProp: Training Neural Networks without Back-propagation or Forward-propagation",
    reference="arXiv:2503.24322",
    experiment="noprop_digits",
    notes=(
        "The discrete-time variant (NoProp-DT) only; CT and FM are not implemented. No official "
        "code, and the paper's text beyond the abstract and figure captions was not readable: "
        "the objective and the inference update are those of the design note's transcription; "
        "every boundary choice is pinned and documented: the cosine schedule over T + 1 noise "
        "levels with alpha_bar_0 = 0 exactly (z_0 pure noise: SNR(0) = 0, KL term 0, a_1 = "
        "sqrt(alpha_bar_1), b_1 = 0) and alpha_bar_T < 1 (every SNR finite; third-party ports "
        "instead clamp an infinite SNR(0)); a_t, b_t, c_t derived as the posterior "
        "q(z_t | z_{t-1}, y) of the variance-preserving chain (a perfect denoiser reproduces "
        "every marginal: tested); inference noise on by default (the paper's equation), "
        "optional off. Every "
        "block trains at every step (the expectation over t taken exactly instead of sampling "
        "one t). Fixed class embeddings (one-hot or random orthogonal; the paper also learns "
        "them jointly, not implemented). Blocks are MLPs on concat(x, z) with a linear output "
        "(the paper's blocks are CNN + FC paths, Fig. 6); the classifier p(y | z_T) is a linear "
        "softmax head on the last block. With Adam, the per-block SNR weights barely matter "
        "(each block has its own parameters and Adam is scale-invariant)."
    ),
)
