"""`buffered_classifier` inside `jaxlearn.train.fit`: the buffer follows the example indices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn.data import Dataset
from jaxlearn.losses import buffered_classifier, elr_loss
from jaxlearn.train import fit


def test_every_row_is_updated_once_per_epoch_in_fit():
  """ELR rows start at 0 and gain 1 - beta of mass per update (the added row sums to 1), so
  after 3 epochs without replacement every row sums to 1 - beta^3, in every vmapped run."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 3)).astype(np.float32)
  y = rng.integers(0, 3, size=8).astype(np.int32)
  data = Dataset(x, y, x[:2], y[:2], num_classes=3)
  init_params = lambda key: jax.random.normal(key, (3, 3))  # a linear model
  apply_fn = lambda w, inputs: inputs @ w
  loss = lambda z, labels, rows, epoch: elr_loss(z, labels, rows, beta=0.5, lam=1.0)
  init, loss_fn, eval_fn = buffered_classifier(apply_fn, init_params, loss, jnp.zeros((8, 3)))
  result = fit(loss_fn, init, lambda: optax.sgd(0.1), data, steps=6, batch_size=4,
               seeds=[0, 1], eval_every=6, eval_fn=eval_fn, has_state=True,
               loss_takes_indices=True, progress=False)
  buffer = np.asarray(result.state.model_state["buffer"])
  assert buffer.shape == (2, 8, 3)
  np.testing.assert_allclose(buffer.sum(-1), 1 - 0.5**3, rtol=1e-6)
  assert set(result.history) >= {"train_accuracy", "test_loss"}


def test_buffer_must_have_an_example_axis():
  apply_fn, init_params = (lambda w, inputs: inputs @ w), (lambda key: jnp.zeros((3, 3)))
  loss = lambda z, labels, rows, epoch: (z[:, 0], rows)
  with pytest.raises(ValueError, match="buffer"):
    buffered_classifier(apply_fn, init_params, loss, jnp.zeros(()))
  with pytest.raises(ValueError, match="leading"):
    buffered_classifier(apply_fn, init_params, loss, (jnp.zeros((4, 2)), jnp.zeros((5,))))
