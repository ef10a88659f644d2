"""Mesh helpers and run layouts on the one device of the test process (`fit` under
`jax.set_mesh` is in the `scale` tier, `pytest -m scale`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxlearn.data import load_digits
from jaxlearn.train import classifier, fit, grid, mlp, parallel


def test_make_mesh_and_parse_mesh():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("runs", "data") and dict(mesh.shape) == {"runs": 1, "data": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  for spec in ("", "data=-1", "runs=-1", "runs=1,data=1", "data=1"):
    assert dict(parallel.parse_mesh(spec).shape) == {"runs": 1, "data": 1}
  with pytest.raises(ValueError, match=r"runs x data must equal the number of devices \(1\)"):
    parallel.make_mesh(runs=2)
  with pytest.raises(ValueError, match="data must be an integer >= 1"):
    parallel.make_mesh(data=0)
  for bad in ("model=2", "runs=two", "runs"):
    with pytest.raises(ValueError, match="mesh spec must look like"):
      parallel.parse_mesh(bad)


def test_like_params_copies_specs_by_path_and_shape():
  params = {"dense": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)}, "scale": jnp.zeros(8)}
  specs = {"dense": {"kernel": P(None, "data"), "bias": P("data")}, "scale": P()}
  state = optax.chain(optax.clip(1.0), optax.adam(1e-3)).init(params)
  got = parallel.like_params(state, params, specs, default="other")
  adam = got[1][0]
  assert adam.mu == specs and adam.nu == specs
  assert adam.count == "other"
  with pytest.raises(ValueError, match="one PartitionSpec per parameter"):
    parallel.like_params(state, params, {"dense": {"kernel": P()}})


def test_fsdp_specs_shard_the_largest_divisible_dimension():
  mesh = parallel.make_mesh()  # 'data' has size 1 here: nothing is worth sharding
  params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}
  assert parallel.fsdp_specs(params, mesh) == {"w": P(), "b": P()}
  fake = type("FakeMesh", (), {"axis_names": ("runs", "data"), "shape": {"runs": 1, "data": 4}})()
  assert parallel.fsdp_specs(params, fake, min_size=64) == {"w": P("data", None), "b": P()}
  odd = {"w": jnp.zeros((63, 30))}  # no dimension divisible by 4
  assert parallel.fsdp_specs(odd, fake, min_size=1) == {"w": P()}


def test_run_layout_checks_divisibility():
  fake = type("FakeMesh", (), {"axis_names": ("runs", "data"), "shape": {"runs": 4, "data": 2},
                                "axis_types": (jax.sharding.AxisType.Auto,) * 2})()
  layout = parallel.RunLayout(fake)  # only the shape matters to check()
  layout.check(8, 64)
  with pytest.raises(ValueError, match=r"multiple of the mesh's 'runs' axis \(4\)"):
    layout.check(6, 64)
  with pytest.raises(ValueError, match=r"batch_size must be a multiple of the mesh's 'data' axis"):
    layout.check(8, 63)
  explicit = jax.make_mesh((1, 1), ("runs", "data"),
                           axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  with pytest.raises(ValueError, match="must be AxisType.Auto"):
    parallel.RunLayout(explicit)
  with pytest.raises(ValueError, match="mesh axes must be among"):
    parallel.RunLayout(jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,)))


@pytest.mark.scale
def test_fit_uses_the_mesh_set_with_jax_set_mesh():
  """`python -m jaxlearn.launch run ...` relies on this: experiments call fit unchanged."""
  data = load_digits()
  init_params, apply_fn = mlp((64,), (8,), data.num_classes)
  loss_fn, _ = classifier(apply_fn)
  make = lambda learning_rate: optax.sgd(learning_rate)
  run = functools.partial(fit, loss_fn, init_params, make, data, steps=5, eval_every=5,
                          configs=grid(learning_rate=[0.1]), progress=False)
  plain = run()
  mesh = parallel.make_mesh()
  with jax.set_mesh(mesh):
    meshed = run()
  kernel = meshed.state.params["Dense_0"]["kernel"]
  assert isinstance(kernel.sharding, jax.sharding.NamedSharding) and kernel.sharding.mesh == mesh
  assert not isinstance(plain.state.params["Dense_0"]["kernel"].sharding,
                        jax.sharding.NamedSharding)
  assert parallel.ambient_mesh() is None
  for a, b in zip(jax.tree.leaves(plain.state.params), jax.tree.leaves(meshed.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
