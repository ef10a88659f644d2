"""Starbucks (arXiv:2410.13230): parity with a PyTorch transcription of the official
`retrieval/modeling.py` forward, the sampled (2DMSE-style) mode, and the full-model special case.

The battery checks the fixed-list loss against a float64 NumPy transcription (its KL target
frozen), weights and dtypes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.losses import starbucks_loss, starbucks_sampled_loss

LAYERS, QUERIES, GROUP, DIM = 3, 4, 2, 8
PAIRS = ((0, 2), (1, 4), (2, 8))  # the official zip(range(layers), embedding_dim_list)
DIMS = (2, 4, 8)


def _reps():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(LAYERS, QUERIES, DIM)).astype(np.float32)
  p = rng.normal(size=(LAYERS, QUERIES * GROUP, DIM)).astype(np.float32)
  return q, p


def _official(torch, q_reps, p_reps, layer_dim_tuples, temperature, kl_weight):
  """SrlDenseModel.forward's loss (ielab/Starbucks retrieval/modeling.py), transcribed in torch;
  tevatron's compute_loss is a mean cross-entropy."""
  F = torch.nn.functional
  num_layers, batch_size, embedding_dim = q_reps.shape
  target = torch.arange(batch_size) * (p_reps.size(1) // q_reps.size(1))
  all_scores = torch.einsum("lqh,ldh -> lqdh", q_reps, p_reps)
  full_layer_scores = all_scores[num_layers - 1].sum(dim=-1)
  total = F.cross_entropy(full_layer_scores / temperature, target)
  target_scores = full_layer_scores.detach()
  for layer_idx, dim in layer_dim_tuples:
    if layer_idx == num_layers - 1 and dim == embedding_dim:
      continue
    layer_scores = all_scores[layer_idx, :, :, :dim].sum(dim=-1)
    total = total + F.cross_entropy(layer_scores / temperature, target)
    total = total + kl_weight * F.kl_div(F.log_softmax(layer_scores / temperature, dim=1),
                                         F.softmax(target_scores / temperature, dim=1),
                                         reduction="batchmean")
  return total


@fast_jit
def _ours(q, p, key, temperature, kl_weight):
  fixed = lambda q, p: starbucks_loss(q, p, layer_dims=PAIRS, temperature=temperature,
                                      kl_weight=kl_weight)
  sampled = lambda q, p: starbucks_sampled_loss(q, p, key, dims=DIMS, temperature=temperature,
                                                kl_weight=kl_weight)
  return (fixed(q, p), jax.grad(fixed, argnums=(0, 1))(q, p),
          sampled(q, p), jax.grad(sampled, argnums=(0, 1))(q, p))


@pytest.mark.parity
def test_parity_with_the_official_forward_fixed_list_and_sampled_layer():
  torch = pytest.importorskip("torch")
  q, p = _reps()
  key = jax.random.key(3)
  # The layer the sampled mode draws (uniform below the last), as our kernel draws it.
  layer = int(jax.random.randint(key, (), 0, LAYERS - 1))
  fixed, fixed_grads, sampled, sampled_grads = _ours(q, p, key, 0.5, 0.7)
  sampled_pairs = [(l, d) for l in (layer, LAYERS - 1) for d in DIMS]
  for value, grads, pairs in ((fixed, fixed_grads, PAIRS), (sampled, sampled_grads,
                                                             sampled_pairs)):
    tq = torch.tensor(q, dtype=torch.float64, requires_grad=True)
    tp = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    expected = _official(torch, tq, tp, pairs, 0.5, 0.7)
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-5)
    # The detached KL target: no gradient through the full model's scores in the KL terms.
    np.testing.assert_allclose(grads[0], tq.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads[1], tp.grad.numpy(), rtol=1e-4, atol=1e-6)


@fast_jit
def _sampling_program(q, p, keys):
  candidates = jnp.stack([
      starbucks_loss(q, p, layer_dims=[(l, d) for l in (layer, LAYERS - 1) for d in DIMS])
      for layer in range(LAYERS - 1)
  ])
  draws = jax.vmap(lambda key: starbucks_sampled_loss(q, p, key, dims=DIMS))(keys)
  full_only = starbucks_loss(q, p, layer_dims=[(-1, DIM)], temperature=0.5, reduction="none")
  return candidates, draws, full_only


def test_sampled_layer_is_uniform_below_the_last_and_full_pair_is_infonce():
  q, p = _reps()
  candidates, draws, full_only = map(
      np.asarray, _sampling_program(q, p, jax.random.split(jax.random.key(0), 16)))
  # Every draw is the fixed-list loss of {l, last} x dims for some l below the last layer.
  hits = np.argmin(np.abs(draws[:, None] - candidates[None, :]), axis=1)
  np.testing.assert_allclose(draws, candidates[hits], rtol=1e-5)
  assert set(hits.tolist()) == {0, 1} and abs(candidates[0] - candidates[1]) > 1e-3
  # Only the full pair: in-batch InfoNCE of the last layer (positive = first of each group).
  expected = optax.losses.softmax_cross_entropy_with_integer_labels(
      q[-1] @ p[-1].T / 0.5, np.arange(QUERIES) * GROUP)
  np.testing.assert_allclose(full_only, expected, rtol=1e-5)


def test_invalid_arguments_raise():
  q, p = _reps()
  with pytest.raises(ValueError, match="layer_dims"):
    starbucks_loss(q, p, layer_dims=[(3, 4)])
  with pytest.raises(ValueError, match="layer_dims"):
    starbucks_loss(q, p, layer_dims=[(0, 9)])
  with pytest.raises(ValueError, match="p_reps"):
    starbucks_loss(q, p[:, :7], layer_dims=PAIRS)
  with pytest.raises(ValueError, match="kl_weight"):
    starbucks_loss(q, p, layer_dims=PAIRS, kl_weight=-1.0)
  with pytest.raises(ValueError, match="dims must be"):
    starbucks_sampled_loss(q, p, jax.random.key(0), dims=(4, 9))
  with pytest.raises(ValueError, match="at least 2 layers"):
    starbucks_sampled_loss(q[:1], p[:1], jax.random.key(0), dims=DIMS)
