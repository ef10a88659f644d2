"""NeuralNDCG (arXiv:2102.07831): parity with allRank, the exact metric, padding and limits.

The battery checks the loss against a float64 NumPy transcription of allRank's `neuralNDCG`
(its early-stopping Sinkhorn loop included), gradients, weights and dtypes. Here: allRank's own
numbers (PyTorch, loaded file by file: the package needs torchvision), the exact NDCG by hand,
padding anywhere in a slate, the differences from allRank, and tau -> 0.
"""

import importlib.util
import pathlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlearn._compile import fast_jit
from jaxlearn.losses import ndcg, neural_ndcg, neural_ndcg_transposed


def _slates():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(5, 6)).astype(np.float32)
  labels = rng.integers(0, 4, size=(5, 6)).astype(np.float32)
  labels[:, 0] = np.maximum(labels[:, 0], 1)
  labels[1, 4:] = -1
  labels[2, 2:] = -1
  labels[3] = 0  # IDCG = 0: excluded from the mean
  return scores, labels


def test_exact_ndcg_by_hand():
  scores = np.array([[0.1, 0.9, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
  labels = np.array([[1, 0, 2, -1], [0, 0, 0, 0]], np.float32)
  # Ranked: item 1 (label 0), item 2 (label 2), item 0 (label 1); the padded item is ignored.
  dcg2 = 0 + 3 / np.log2(3)
  idcg2 = 3 + 1 / np.log2(3)
  dcg_all = dcg2 + 1 / np.log2(4)
  got = np.asarray(jnp.stack([ndcg(scores, labels, k=2), ndcg(scores, labels)]))
  np.testing.assert_allclose(got[:, 0], [dcg2 / idcg2, dcg_all / idcg2], rtol=1e-6)  # same IDCG
  assert np.all(got[:, 1] == 1)  # no relevant item: allRank's filler value 1


def test_small_temperature_approaches_exact_ndcg_and_padding_may_sit_anywhere():
  scores, labels = _slates()

  @fast_jit
  def losses(scores, labels, temperature):
    return neural_ndcg(scores, labels, k=4, temperature=temperature, reduction="none")

  exact = np.asarray(ndcg(scores, labels, k=4))
  relevant = np.array([True, True, True, False, True])
  np.testing.assert_allclose(-np.asarray(losses(scores, labels, 1e-3))[relevant],
                             exact[relevant], atol=1e-4)
  assert np.all(np.asarray(losses(scores, labels, 1e-3))[~relevant] == 0)
  # Permuting the items of every slate (padding moves to the front or the middle) changes
  # nothing: the relaxation sees a set of scored items.
  order = np.array([4, 0, 5, 2, 1, 3])
  np.testing.assert_allclose(losses(scores[:, order], labels[:, order], 1.0),
                             losses(scores, labels, 1.0), rtol=1e-5, atol=1e-6)


def test_traced_invalid_labels_give_nan_for_their_slate_only():
  scores, labels = _slates()
  bad = labels.copy()
  bad[0, 1] = -2.0
  with pytest.raises(ValueError, match="labels must be relevance grades"):
    neural_ndcg(scores, bad)
  out = fast_jit(lambda s, y: neural_ndcg(s, y, reduction="none"))(scores, bad)
  assert np.isnan(out[0]) and np.all(np.isfinite(out[1:]))
  with pytest.raises(ValueError, match="k must be"):
    neural_ndcg(scores, labels, k=0)
  with pytest.raises(ValueError, match="max_iter"):
    neural_ndcg(scores, labels, max_iter=0)
  with pytest.raises(ValueError, match="temperature"):
    neural_ndcg(scores, labels, temperature=0.0)


def _load_allrank():
  """allRank's metrics, loss_utils and neuralNDCG modules, loaded by path with the two modules
  that import torchvision (data loading, model utils) replaced by what these files use."""
  torch = pytest.importorskip("torch")
  spec = importlib.util.find_spec("allrank")
  if spec is None:
    pytest.skip("allrank is not installed")
  root = pathlib.Path(spec.origin).parent
  stubs = {
      "allrank.data.dataset_loading": types.SimpleNamespace(PADDED_Y_VALUE=-1),
      "allrank.models.model_utils": types.SimpleNamespace(
          get_torch_device=lambda: torch.device("cpu")),
      "allrank.models.losses": types.SimpleNamespace(DEFAULT_EPS=1e-10),
  }
  names = ("allrank.models.metrics", "allrank.models.losses.loss_utils",
           "allrank.models.losses.neuralNDCG")
  saved = {name: sys.modules.get(name) for name in (*stubs, *names)}
  modules = {}
  try:
    sys.modules.update(stubs)
    for name in names:
      file = root / (name.split(".", 1)[1].replace(".", "/") + ".py")
      module_spec = importlib.util.spec_from_file_location(name, file)
      module = importlib.util.module_from_spec(module_spec)
      sys.modules[name] = module
      module_spec.loader.exec_module(module)
      modules[name.rsplit(".", 1)[1]] = module
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
  return torch, modules


@pytest.mark.parity
def test_parity_with_allrank():
  torch, allrank = _load_allrank()
  scores, labels = _slates()
  s, y = torch.tensor(scores), torch.tensor(labels)

  @fast_jit
  def ours(scores, k, temperature):
    loss = lambda z: neural_ndcg(z, labels, k=k, temperature=temperature)
    return (loss(scores), jax.grad(loss)(scores),
            neural_ndcg_transposed(scores, labels, k=k, temperature=temperature),
            neural_ndcg(scores, labels, k=k, temperature=temperature, powered_relevancies=False),
            neural_ndcg_transposed(scores, labels, k=k, temperature=temperature,
                                   powered_relevancies=False))

  for k, temperature in ((6, 1.0), (3, 1.0), (4, 0.3)):
    value, grad, transposed, linear, linear_transposed = ours(scores, k, temperature)
    options = dict(k=k, temperature=temperature)
    s_grad = s.clone().requires_grad_(True)
    expected = allrank["neuralNDCG"].neuralNDCG(s_grad, y, **options)
    expected.backward()
    # allRank stops Sinkhorn for the whole batch when its worst slate converges, here each
    # slate stops on its own: both within tol = 1e-6 of doubly stochastic.
    np.testing.assert_allclose(value, float(expected.detach()), rtol=1e-5)
    np.testing.assert_allclose(grad, s_grad.grad.numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(
        transposed, float(allrank["neuralNDCG"].neuralNDCG_transposed(s, y, **options)),
        rtol=1e-5)
    np.testing.assert_allclose(
        linear, float(allrank["neuralNDCG"].neuralNDCG(s, y, powered_relevancies=False,
                                                      **options)), rtol=1e-5)
    # Difference, documented: allRank's transposed variant normalises linear gains by the IDCG
    # of the powered gains 2^y - 1; ours by the IDCG of the same linear gains (= the other form).
    theirs = float(allrank["neuralNDCG"].neuralNDCG_transposed(
        s, y, powered_relevancies=False, **options))
    np.testing.assert_allclose(linear_transposed, linear, rtol=1e-5)
    assert abs(theirs) < 0.8 * abs(float(linear_transposed))
  np.testing.assert_allclose(ndcg(scores, labels, k=3),
                             allrank["metrics"].ndcg(s, y, ats=[3]).numpy()[:, 0], rtol=1e-6)


@pytest.mark.parity
def test_allrank_masks_the_wrong_ranks_when_padding_is_not_last():
  torch, allrank = _load_allrank()
  scores, labels = _slates()
  order = np.array([4, 0, 5, 2, 1, 3])  # moves slate 1's and 2's padding off the end
  s, y = torch.tensor(scores[:, order]), torch.tensor(labels[:, order])
  theirs = float(allrank["neuralNDCG"].neuralNDCG(s, y))
  # allRank masks rank row i when item i is padded, which is right only for trailing padding;
  # ours is permutation invariant and equals allRank on the trailing-padding layout.
  np.testing.assert_allclose(neural_ndcg(scores[:, order], labels[:, order]),
                             float(allrank["neuralNDCG"].neuralNDCG(torch.tensor(scores),
                                                                    torch.tensor(labels))),
                             rtol=1e-5)
  assert abs(theirs - float(neural_ndcg(scores[:, order], labels[:, order]))) > 1e-3
