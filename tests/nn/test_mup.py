"""μP against a NumPy transcription of microsoft/mup's rules, and against the `mup` package itself.

The transcription works in PyTorch's layout ((out, in) Linear weights, OIHW conv weights): the
"main" infinite dimension is the LAST infinite one, fan-in is dimension 1 and fan-out dimension 0
(`mup/infshape.py`), so it also checks the Flax-layout mapping of `jaxlearn.nn.mup`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlearn import nn as jnn

# (Flax shape, Flax base dims, the PyTorch-layout permutation of the Flax axes)
LEAVES = {
    "hidden": ((96, 48), (32, 16), (1, 0)),  # Dense (in, out) -> torch (out, in)
    "input": ((5, 48), (None, 16), (1, 0)),
    "readout": ((96, 3), (32, None), (1, 0)),
    "conv": ((3, 3, 96, 48), (None, None, 32, 16), (3, 2, 0, 1)),  # HWIO -> OIHW
    "bias": ((48,), (16,), (0,)),
    "gain": ((7,), (None,), (0,)),
}


def mup_rules_numpy(shape, base, optimizer):
  """MuAdam / MuSGD's lr multiplier of one PyTorch-layout tensor (mup/optim.py, infshape.py)."""
  inf = [(d / b) for d, b in zip(shape, base) if b is not None]
  ninf = len(inf)
  main = inf[-1] if inf else 1.0  # InfShape.main: the last infinite dim
  mult = lambda i: 1.0 if base[i] is None else shape[i] / base[i]
  if optimizer == "adam":
    return 1.0 / main if ninf == 2 else 1.0
  if ninf == 1:
    return main
  if ninf == 2:
    return 1.0 / (mult(1) / mult(0))  # lr /= fanin_fanout_mult_ratio
  return 1.0


def torch_layout(flax_shape, flax_base, permutation):
  return ([flax_shape[i] for i in permutation], [flax_base[i] for i in permutation])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_lr_multipliers_match_a_numpy_transcription_of_mup(optimizer):
  shapes = {name: jnn.BaseShape(base) for name, (_, base, _) in LEAVES.items()}
  params = {name: jax.ShapeDtypeStruct(shape, jnp.float32)
            for name, (shape, _, _) in LEAVES.items()}
  got = jnn.mup_lr_multipliers(shapes, params, optimizer=optimizer)
  for name, leaf in LEAVES.items():
    expected = mup_rules_numpy(*torch_layout(*leaf), optimizer)
    assert got[name] == pytest.approx(expected), name
  # The hidden kernel (in 96 = 3 x 32, out 48 = 3 x 16): width_mult 3 -> Adam lr / 3.
  assert got["hidden"] == pytest.approx(1 / 3 if optimizer == "adam" else 1.0)


def test_base_shapes_come_from_abstract_models_and_bad_shapes_raise():
  def model(width):
    return {"w": jnp.zeros((width, width)), "b": jnp.zeros(width), "out": jnp.zeros((width, 3))}

  shapes = jnn.infer_base_shapes(lambda: model(8), lambda: model(16))
  assert shapes == {"w": jnn.BaseShape((8, 8)), "b": jnn.BaseShape((8,)),
                    "out": jnn.BaseShape((8, None))}
  with pytest.raises(ValueError, match="at most 2 infinite"):
    jnn.scale_by_mup(base_shapes={"t": jnn.BaseShape((2, 2, 2))})
  with pytest.raises(ValueError, match="optimizer"):
    jnn.scale_by_mup(base_shapes=shapes, optimizer="lion")
  with pytest.raises(ValueError, match="rank"):
    jnn.infer_base_shapes({"w": jnp.zeros(3)}, {"w": jnp.zeros((3, 3))})
  with pytest.raises(ValueError, match="base shape"):
    jnn.mup_lr_multipliers(shapes, {**model(16), "w": jnp.zeros((16, 16, 1))})


def test_scale_by_mup_scales_each_leaf_after_adam():
  shapes = {"w": jnn.BaseShape((8, 8)), "b": jnn.BaseShape((8,))}
  params = {"w": jnp.ones((32, 32)), "b": jnp.ones(32)}
  grads = {"w": jnp.full((32, 32), 3.0), "b": jnp.full(32, -2.0)}
  opt = optax.chain(optax.adam(0.1), jnn.scale_by_mup(base_shapes=shapes))
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
  # Adam's first step is -lr * sign(g); MuAdam divides the matrix's lr by width_mult = 4.
  np.testing.assert_allclose(updates["w"], -0.1 / 4, rtol=1e-5)
  np.testing.assert_allclose(updates["b"], 0.1, rtol=1e-5)


def test_readout_forward_and_init():
  readout = jnn.MuReadout(64, 3, base_in_features=16, output_mult=2.0, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
  kernel, bias = np.asarray(readout.kernel[...]), np.asarray(readout.bias[...])
  np.testing.assert_allclose(readout(jnp.asarray(x)), (2.0 / 4.0) * x @ kernel + bias, rtol=1e-5,
                             atol=1e-6)
  bound = 1 / math.sqrt(16)  # PyTorch's U(+-1/sqrt(64)) rescaled by sqrt(width_mult = 4)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.8 * bound
  zero = jnn.MuReadout(64, 3, base_in_features=16, readout_zero_init=True, rngs=nnx.Rngs(0))
  assert not np.any(np.asarray(zero.kernel[...])) and not np.any(np.asarray(zero.bias[...]))
  with pytest.raises(ValueError, match="base_in_features"):
    jnn.MuReadout(64, 3, base_in_features=0, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------
# Parity with the `mup` package (PyTorch).


def _torch_mlp(torch, mup, width):
  class MLP(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.fc1 = torch.nn.Linear(5, width)
      self.fc2 = torch.nn.Linear(width, width)
      self.out = mup.MuReadout(width, 3, output_mult=1.5)

    def forward(self, x):
      return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))

  return MLP()


def _jax_mlp(params, x, width_mult):
  h = jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
  h = jnp.tanh(h @ params["fc2"]["kernel"] + params["fc2"]["bias"])
  return jnn.mu_readout(h, params["out"]["kernel"], params["out"]["bias"],
                        width_mult=width_mult, output_mult=1.5)


@pytest.mark.parity
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_training_matches_the_mup_package(optimizer):
  """Same initial weights, same batch: 3 steps of MuAdam / MuSGD against jaxlearn's μP."""
  torch = pytest.importorskip("torch")
  mup = pytest.importorskip("mup")
  torch.manual_seed(0)
  base, delta, width = 4, 8, 16
  model = _torch_mlp(torch, mup, width)
  mup.set_base_shapes(model, _torch_mlp(torch, mup, base), delta=_torch_mlp(torch, mup, delta))
  params = {name: {"kernel": jnp.asarray(layer.weight.detach().numpy().T),
                   "bias": jnp.asarray(layer.bias.detach().numpy())}
            for name, layer in (("fc1", model.fc1), ("fc2", model.fc2), ("out", model.out))}
  make = {"adam": (mup.MuAdam, optax.scale_by_adam(eps=1e-8)), "sgd": (mup.MuSGD, None)}
  torch_opt, jax_scale = make[optimizer]
  lr = 0.05
  opt = torch_opt(model.parameters(), lr=lr)

  # The package's per-group learning rates equal our per-leaf multipliers.
  shapes = _base_shapes(base)
  multipliers = jnn.mup_lr_multipliers(shapes, params, optimizer=optimizer)
  by_param = {id(p): g["lr"] / lr for g in opt.param_groups for p in g["params"]}
  for name, layer in (("fc1", model.fc1), ("fc2", model.fc2), ("out", model.out)):
    assert by_param[id(layer.weight)] == pytest.approx(multipliers[name]["kernel"]), name
    assert by_param[id(layer.bias)] == pytest.approx(multipliers[name]["bias"]), name

  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(8, 5)).astype(np.float32), rng.integers(0, 3, size=8)
  for _ in range(3):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    opt.step()

  chain = [jnn.scale_by_mup(base_shapes=shapes, optimizer=optimizer),
           optax.scale_by_learning_rate(lr)]
  jax_opt = optax.chain(*([jax_scale] if jax_scale else []), *chain)
  loss = lambda p: optax.losses.softmax_cross_entropy_with_integer_labels(
      _jax_mlp(p, x, width / base), y).mean()

  @jax.jit
  def step(p, s):
    updates, s = jax_opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  state = jax_opt.init(params)
  for _ in range(3):
    params, state = step(params, state)
  for name, layer in (("fc1", model.fc1), ("fc2", model.fc2), ("out", model.out)):
    np.testing.assert_allclose(params[name]["kernel"], layer.weight.detach().numpy().T,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params[name]["bias"], layer.bias.detach().numpy(), rtol=1e-4,
                               atol=1e-5)


def _base_shapes(base):
  """The base shapes of `_torch_mlp`, inferred from its Flax-layout twin at two widths."""
  def at(w):
    return {"fc1": {"kernel": jnp.zeros((5, w)), "bias": jnp.zeros(w)},
            "fc2": {"kernel": jnp.zeros((w, w)), "bias": jnp.zeros(w)},
            "out": {"kernel": jnp.zeros((w, 3)), "bias": jnp.zeros(3)}}
  return jnn.infer_base_shapes(lambda: at(base), lambda: at(2 * base))


@pytest.mark.parity
def test_init_multipliers_match_mup_init():
  """mup.init's width corrections (constant std, Kaiming fan-in) against ours."""
  torch = pytest.importorskip("torch")
  mup = pytest.importorskip("mup")
  from mup.infshape import InfDim, InfShape

  for name, leaf in LEAVES.items():
    shape, base = torch_layout(*leaf)
    if len(shape) < 2:
      continue
    tensor = torch.zeros(shape)
    tensor.infshape = InfShape([InfDim(b, d) for b, d in zip(base, shape)])
    flax_shape, flax_base, _ = leaf
    ours = {init: jnn.mup_init_multipliers(
        {"t": jnn.BaseShape(flax_base)}, {"t": jax.ShapeDtypeStruct(flax_shape, jnp.float32)},
        init=init)["t"] for init in ("fan_in", "constant")}
    assert ours["fan_in"] == pytest.approx(mup.init._inf_fan_adjust_kaiming(1.0, tensor,
                                                                            "fan_in")), name
    scales = []
    mup.init.constant_std_init_(tensor, lambda t, scale=1: scales.append(scale))
    assert ours["constant"] == pytest.approx(scales[0]), name
