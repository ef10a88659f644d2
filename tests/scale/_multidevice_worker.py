"""Runs in a subprocess with 8 simulated CPU devices; writes results for test_multidevice.py.

Usage: python _multidevice_worker.py OUT_DIR [CASE,CASE...] (default: every case). Writes
OUT_DIR/arrays.npz (final parameters and metric histories of the same job run on one device and on
several meshes) and OUT_DIR/report.json (compiled-program facts, per-optimizer sharding checks).
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"  # before jax is imported

import functools  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxlearn.data import load_digits  # noqa: E402
from jaxlearn.optim.extra_args import extra_update_args  # noqa: E402
from jaxlearn.train import classifier, fit, grid, loop, mlp, parallel  # noqa: E402
from jaxlearn.train.sweep import (  # noqa: E402
    inject_swept, registered_optimizers, registered_update_extras, sweep,
)

# optax optimizers checked next to the registered ones (a few state shapes: moments, factored
# statistics, injected hyperparameters).
OPTAX = {
    "optax.adam": (optax.adam, {}),
    "optax.sgd_momentum": (optax.sgd, {"momentum": 0.9}),
    "optax.adamw_masked": (optax.adamw, {"mask": lambda p: jax.tree.map(lambda x: x.ndim > 1, p)}),
    "optax.lion": (optax.lion, {}),
    "optax.adafactor": (optax.adafactor, {}),
}


def flat(tree):
  return [np.asarray(x) for x in jax.tree.leaves(parallel.to_host(tree))]


def data_parallel_cases(arrays, report):
  data = load_digits()
  init_params, apply_fn = mlp((64,), (32,), data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)
  # Adam divides by |g| + eps: with the default eps=1e-8, a gradient entry that is pure rounding
  # noise (the weight of a pixel that is almost never lit) turns summation-order differences
  # into steps of up to lr; eps=1e-5 bounds that amplification by lr / eps.
  make = lambda learning_rate: optax.adam(learning_rate, eps=1e-5)
  configs = grid(learning_rate=[1e-3, 3e-3, 1e-2, 3e-2])
  common = dict(steps=40, eval_every=20, batch_size=64, configs=configs, seeds=[0, 1],
                eval_fn=eval_fn, progress=False)
  single = fit(loss_fn, init_params, make, data, **common)
  arrays["single/params"] = flat(single.state.params)
  arrays["single/history"] = single.history["train_loss"]
  meshes = {"runs8": parallel.make_mesh(runs=8), "data8": parallel.make_mesh(data=8)}
  for name, mesh in meshes.items():
    result = fit(loss_fn, init_params, make, data, mesh=mesh, **common)
    arrays[f"{name}/params"] = flat(result.state.params)
    arrays[f"{name}/history"] = result.history["train_loss"]
    report[f"{name}/param_spec"] = str(jax.tree.leaves(result.state.params)[0].sharding.spec)
    if name != "data8":
      continue
    # Does the compiled step communicate? Data parallelism must all-reduce gradients.
    task = loop._Task(loss_fn, eval_fn, init_params, make, False, 64, len(data.x_train), 20,
                      parallel.RunLayout(mesh))
    _, chunk = loop._programs(task)
    hparams = {"learning_rate": jnp.zeros(8)}
    args = [jnp.asarray(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)]
    hlo = chunk.lower(hparams, result.state, *args).compile().as_text()
    report[f"{name}/all_reduce"] = "all-reduce" in hlo

  mesh = parallel.make_mesh(runs=2, data=4)
  specs = functools.partial(parallel.fsdp_specs, mesh=mesh, min_size=64)
  sharded = fit(loss_fn, init_params, make, data, mesh=mesh, param_specs=specs, **common)
  arrays["fsdp/params"] = flat(sharded.state.params)
  report["fsdp/param_specs"] = {
      jax.tree_util.keystr(path): str(leaf.sharding.spec)
      for path, leaf in jax.tree_util.tree_flatten_with_path(sharded.state.params)[0]
  }
  report["fsdp/opt_state_specs"] = {
      jax.tree_util.keystr(path): str(leaf.sharding.spec)
      for path, leaf in jax.tree_util.tree_flatten_with_path(sharded.state.opt_state)[0]
  }


class BatchNormMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(32)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(10)(nn.relu(x))


def batch_norm_case(arrays):
  data = load_digits()
  net = BatchNormMLP()

  def init(key):
    variables = net.init(key, jnp.zeros((2, 64)), train=True)
    return variables["params"], variables["batch_stats"]

  def loss(params, stats, x, y):
    logits, new = net.apply(
        {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

  common = dict(steps=20, eval_every=10, batch_size=64, has_state=True, progress=False,
                configs=[{"learning_rate": 0.05}])
  make = lambda learning_rate: optax.sgd(learning_rate, momentum=0.9)
  for name, mesh in {"single": None, "data8": parallel.make_mesh(data=8)}.items():
    result = fit(loss, init, make, data, mesh=mesh, **common)
    arrays[f"bn_{name}/params"] = flat(result.state.params)
    arrays[f"bn_{name}/batch_stats"] = flat(result.state.model_state)


def sweep_case(arrays, report):
  data = load_digits()
  configs = grid(learning_rate=[1e-3, 1e-2, 3e-2], b1=[0.8, 0.9])  # 6 configs: padded to 8
  common = dict(seeds=[0], steps=20, eval_every=10, progress=False)
  one = sweep("optax.adam", data, configs, mesh=None, **common)
  many = sweep("optax.adam", data, configs, **common)  # mesh='auto': all 8 devices on 'runs'
  arrays["sweep_single/train_loss"] = one.history["train_loss"]
  arrays["sweep_sharded/train_loss"] = many.history["train_loss"]
  report["sweep_sharded/devices"] = many.devices


def _sharding_loss(params, x, y):
  """A mean logistic loss over a batch that touches every parameter: the source of the extra
  `update` arguments (`margins`...) that a registry record asks for."""
  score = jnp.sum(x @ params["w"], axis=-1) + jnp.sum(params["b"]) + jnp.sum(params["v"])
  return jnp.mean(jax.nn.softplus(-y * score))


def optimizer_sharding_case(report):
  """Every optimizer's init/update under an explicit 8-device mesh (sharding in types); `update`
  gets the extra arguments its registry record names, built from `_sharding_loss`."""
  factories = {name: (factory, {}) for name, factory in registered_optimizers().items()}
  for name, (factory, _) in list(factories.items()):
    if "num_iterations" in inspect.signature(factory).parameters:  # Ranger21's run length
      factories[name] = (factory, {"num_iterations": 100})
    required = [
        n for n, p in inspect.signature(factory).parameters.items()
        if p.default is p.empty and n not in ("learning_rate", "num_iterations")
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:  # e.g. a schedule length: no generic value exists
      report.setdefault("skipped", {})[name] = f"requires {required}"
      del factories[name]
  factories.update(OPTAX)
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
  specs = {"w": jax.P(None, "x"), "b": jax.P("x"), "v": jax.P()}
  shapes = {"w": (4, 16), "b": (8,), "v": (3,)}
  results = {}
  for name, (factory, kwargs) in factories.items():
    record, one_device = {}, {}
    x1 = np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4)
    y1 = np.asarray([1.0, -1.0, 1.0, -1.0, 1.0, 1.0], np.float32)
    try:
      with jax.set_mesh(mesh):
        params = {
            k: jnp.linspace(-1, 1, int(np.prod(shapes[k])), dtype=jnp.float32).reshape(shapes[k])
            for k in shapes
        }
        params = {k: jax.sharding.reshard(v, specs[k]) for k, v in params.items()}
        grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
        x = jnp.linspace(-1, 1, 24, dtype=jnp.float32).reshape(6, 4)
        y = jnp.asarray([1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
        names = registered_update_extras(factory)
        variants = {
            "plain": factory(learning_rate=0.1, **kwargs),
            "injected": inject_swept(factory, ["learning_rate"], kwargs)(learning_rate=0.1),
        }
        for variant, opt in variants.items():
          abstract = jax.eval_shape(opt.init, params)
          state0 = opt.init(params)
          state_jit = jax.jit(opt.init)(params)
          update = jax.jit(lambda g, s, p, opt=opt: opt.update(
              g, s, p, **extra_update_args(names, _sharding_loss, p, x, y)
          ))
          updates, state1 = update(grads, state0, params)
          _, state2 = update(grads, state1, params)
          types = [jax.tree.map(jax.typeof, s) for s in (state0, state_jit, state1, state2)]
          record[f"{variant}/types_stable"] = all(t == types[0] for t in types)
          record[f"{variant}/updates_like_params"] = (
              jax.tree.map(jax.typeof, updates) == jax.tree.map(jax.typeof, params)
          )
          # Leaves shaped like a parameter must carry its spec, in init's output and in
          # eval_shape's (which orbax uses as the restore target); all others are replicated.
          expected = parallel.like_params(state0, params, specs)
          mismatches = []
          for (path, leaf), want, shape in zip(
              jax.tree_util.tree_flatten_with_path(state0)[0],
              jax.tree.leaves(expected, is_leaf=lambda s: isinstance(s, jax.P)),
              jax.tree.leaves(abstract),
          ):
            got = {"init": _spec(leaf), "eval_shape": _spec(shape)}
            for where, spec in got.items():
              if spec != _normalize(want):
                mismatches.append(f"{jax.tree_util.keystr(path)} ({where}): {spec} != {want}")
          record[f"{variant}/sharding_mismatches"] = mismatches
          record[f"{variant}/finite"] = bool(
              all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(updates))
          )
          one_device[variant] = (opt, jax.tree.map(np.asarray, (updates, grads, params)))
      # The same step on one device: state that is not shaped like a parameter (a
      # preconditioner, a projector) is replicated, and must give the one-device update.
      for variant, (opt, (sharded_updates, grads, params)) in one_device.items():
        update = jax.jit(lambda g, s, p, opt=opt: opt.update(
            g, s, p, **extra_update_args(names, _sharding_loss, p, x1, y1)))
        updates, _ = update(grads, opt.init(params), params)  # the sharded run's first step
        record[f"{variant}/one_device_difference"] = max(
            float(np.max(np.abs(np.asarray(a) - b), initial=0.0))
            for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(sharded_updates)))
    except Exception as error:  # recorded, so that the test names the optimizer that failed
      record["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}"
    results[name] = record
  report["optimizers"] = results


# Leaves above `_common.CACHED_SIZE` elements take their own code paths: AdamP's blocked channel
# sums, Optimistic AMSGrad's in-place scatter-add and variadic reduction.
LARGE_LEAF_OPTIMIZERS = ("jaxlearn.optim.adamp", "jaxlearn.optim.optimistic_amsgrad")


def large_leaf_case(arrays, report):
  """Four steps on one (512, 256) kernel, sharded over its columns on an explicit 8-device mesh
  and on one device."""
  optimizers = registered_optimizers()
  rng = np.random.default_rng(0)
  params0 = rng.normal(size=(512, 256)).astype(np.float32)
  grads = [rng.normal(size=(512, 256)).astype(np.float32) for _ in range(4)]
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))

  def run(opt, place):
    params = place(params0)
    state = opt.init(params)
    step = jax.jit(opt.update)
    for g in grads:
      updates, state = step(place(g), state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  for name in LARGE_LEAF_OPTIMIZERS:
    opt = optimizers[name](learning_rate=0.01)
    one_device, _ = run(opt, jnp.asarray)
    with jax.set_mesh(mesh):
      sharded, state = run(opt, lambda a: jax.sharding.reshard(jnp.asarray(a), jax.P(None, "x")))
      # The spec over the kernel's own axes, of every state leaf shaped like it (or a stack).
      specs = {str(tuple(s.sharding.spec)[-2:]) for s in jax.tree.leaves(state)
               if s.shape[-2:] == (512, 256)}
    arrays[f"large/{name}/one_device"] = np.asarray(one_device)
    arrays[f"large/{name}/sharded"] = np.asarray(sharded)
    report.setdefault("large_leaf_state_specs", {})[name] = sorted(specs)


def all_optimizers_case(arrays, report):
  """Every registered optimizer trained data-parallel on 8 devices and on one (slow test)."""
  data = load_digits()
  init_params, apply_fn = mlp((64,), (16,), data.num_classes)
  loss_fn, _ = classifier(apply_fn)
  errors = report.setdefault("data_parallel_errors", {})
  for name, factory in registered_optimizers().items():
    make = inject_swept(factory, ["learning_rate"])
    extras = registered_update_extras(factory)
    for mesh_name, mesh in {"single": None, "data8": parallel.make_mesh(data=8)}.items():
      try:
        result = fit(loss_fn, init_params, make, data, steps=10, eval_every=10, batch_size=64,
                     configs=[{"learning_rate": 1e-2}], mesh=mesh, progress=False,
                     update_extras=extras)
      except Exception as error:  # recorded, so that the test names the optimizer that failed
        errors[name] = f"{type(error).__name__}: {error}"
        break
      arrays[f"all_{mesh_name}/{name}"] = flat(result.state.params)


def _normalize(spec) -> tuple:
  """A PartitionSpec as a tuple without trailing Nones (P(None,) and P() mean the same)."""
  entries = list(spec)
  while entries and entries[-1] is None:
    entries.pop()
  return tuple(entries)


def _spec(x) -> tuple:
  sharding = jax.typeof(x).sharding if isinstance(x, jax.Array) else x.sharding
  return _normalize(sharding.spec) if sharding is not None else ()


CASES = {
    "data_parallel": lambda arrays, report: data_parallel_cases(arrays, report),
    "batch_norm": lambda arrays, report: batch_norm_case(arrays),
    "sweep": lambda arrays, report: sweep_case(arrays, report),
    "optimizers": lambda arrays, report: optimizer_sharding_case(report),
    "large_leaf": large_leaf_case,
}
SLOW_CASES = {"all_optimizers": all_optimizers_case}


def main(out: Path, cases: list[str]) -> None:
  assert jax.device_count() == 8, jax.devices()
  # Every program here runs a few steps: compiling it with XLA's optimizations would cost more
  # than it saves (the partitioning into devices, and its collectives, are not optimizations).
  jax.config.update("jax_disable_most_optimizations", True)
  arrays, report = {}, {}
  for case in cases:
    start = time.process_time()
    {**CASES, **SLOW_CASES}[case](arrays, report)
    report.setdefault("cpu_s", {})[case] = round(time.process_time() - start, 2)
  out.mkdir(parents=True, exist_ok=True)
  flat_arrays = {}
  for key, value in arrays.items():
    if isinstance(value, list):
      flat_arrays.update({f"{key}/{i}": v for i, v in enumerate(value)})
    else:
      flat_arrays[key] = value
  np.savez(out / "arrays.npz", **flat_arrays)
  (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
  main(Path(sys.argv[1]), sys.argv[2].split(",") if len(sys.argv) > 2 else list(CASES))
