"""`jaxlearn.train.sweep`: optimizers by name, grids and random search, chunking, the table and
plots, the `jaxlearn sweep` command.

The per-optimizer parametrization, chunking and the command-line runs are in the `scale` tier
(`pytest -m scale`); one sweep-equals-fit run and the cheap checks stay in the default suite.
"""

import functools
import inspect
import re
import json
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlearn import cli, registry
from jaxlearn.data import load_digits
from jaxlearn.optim.extra_args import extra_update_args
from jaxlearn.train import classifier, fit, grid, loop, parallel
from jaxlearn.train import sweep as sweep_module
from jaxlearn.train.sweep import (
    LogUniform, SweepResult, Uniform, parse_space, random_search, registered_optimizers,
    registered_update_extras, resolve_optimizer, sweep,
)
from tests.train._compile import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_compile")

DATA = load_digits()


def _init_linear(key):
  del key  # zero initialization: no PRNG draw to compile; seeds still pick the batches
  return {"w": jnp.zeros((64, DATA.num_classes)), "b": jnp.zeros(DATA.num_classes)}


def _apply_linear(params, x):
  return x @ params["w"] + params["b"]


MODEL = (_init_linear, _apply_linear)  # a softmax regression: cheap to compile
SHORT = dict(steps=20, eval_every=10, batch_size=32, progress=False, model=MODEL)


# -- optimizers -----------------------------------------------------------------------------------


def test_resolve_optimizer_by_factory_optax_name_and_registry():
  assert resolve_optimizer(optax.adam) == ("adam", optax.adam)
  assert resolve_optimizer("optax.adam") == ("optax.adam", optax.adam)
  short = _unregistered_optax_name()
  assert resolve_optimizer(short) == (f"optax.{short}", getattr(optax, short))
  for symbol, factory in registered_optimizers().items():
    assert "learning_rate" in inspect.signature(factory).parameters
    assert resolve_optimizer(symbol) == (symbol, factory)
  with pytest.raises(ValueError, match="unknown optimizer 'no_such_opt'"):
    resolve_optimizer("no_such_opt")
  with pytest.raises(ValueError, match="cannot be imported"):
    resolve_optimizer("jaxlearn.optim.no_such_opt")


def _unregistered_optax_name():
  """An optax optimizer whose short name is no registry slug or alias (the registry grows)."""
  from jaxlearn import registry

  taken = {m.slug for m in registry.all_methods()} | {
      s.rpartition(".")[2] for s in registered_optimizers()
  }
  return next(n for n in ("adamax", "nadam", "rmsprop", "adagrad", "yogi", "sm3") if n not in taken)


def test_a_slug_stands_for_its_jaxlearn_alias():
  """A record that registers optax's alias too (`also=`), or several jaxlearn ones, one of them
  named like the slug: the slug resolves to jaxlearn's."""
  import jaxlearn.optim as jo

  assert resolve_optimizer("lion") == ("jaxlearn.optim.lion", jo.lion)
  assert resolve_optimizer("novograd") == ("jaxlearn.optim.novograd", jo.novograd)
  assert resolve_optimizer("ranger21") == ("jaxlearn.optim.ranger21", jo.ranger21)
  assert resolve_optimizer("sgdp") == ("jaxlearn.optim.sgdp", jo.sgdp)
  with pytest.raises(ValueError, match=r"'adamp_sgdp' has 2 optimizer aliases "
                     r"\(jaxlearn\.optim\.adamp, jaxlearn\.optim\.sgdp\); name one of them"):
    resolve_optimizer("adamp_sgdp")


def test_every_slug_resolves_or_lists_its_jaxlearn_aliases():
  aliases = registered_optimizers()
  for method in registry.all_methods("optimizer"):
    ours = [s for s in method.symbols if s in aliases and s.startswith("jaxlearn.optim.")]
    if f"jaxlearn.optim.{method.slug}" in ours or len(ours) == 1:
      name, factory = resolve_optimizer(method.slug)
      assert name in ours and factory is aliases[name], method.slug
    elif ours:
      with pytest.raises(ValueError, match=f"{method.slug!r} has {len(ours)} optimizer aliases"):
        resolve_optimizer(method.slug)


def test_cli_sweep_accepts_the_slugs_its_error_lists(capsys):
  """`jaxlearn sweep ranger21` gets past the optimizer's name (to a bad --param, before any
  training), and the names the unknown-optimizer error offers all resolve, or (a slug with several
  aliases, such as 'adamp_sgdp') raise an error that names aliases which do."""
  assert cli.main(["sweep", "ranger21", "--param", "lr=0.1"]) == 2
  assert "jaxlearn.optim.ranger21 has no hyperparameter(s) ['lr']" in capsys.readouterr().err
  with pytest.raises(ValueError, match=r"unknown optimizer 'nope': .*\[(.*)\]") as error:
    resolve_optimizer("nope")
  offered = [n.strip(" '") for n in error.value.args[0].split("[")[1].split("]")[0].split(",")]
  assert {"lion", "novograd", "ranger21", "adamp_sgdp"} <= set(offered)
  for name in offered:
    try:
      assert resolve_optimizer(name)[0].startswith("jaxlearn.optim."), name
    except ValueError as several:  # a slug with several aliases (adamp_sgdp) names each of them
      aliases = re.findall(r"jaxlearn\.optim\.(\w+)", str(several))
      assert len(aliases) > 1, several
      for alias in aliases:
        assert resolve_optimizer(alias)[0] == f"jaxlearn.optim.{alias}"


def _float_hyperparameters(factory):
  """Float-valued arguments other than the learning rate (betas, AdamP's delta, decays...)."""
  return [
      p.name for p in inspect.signature(factory).parameters.values()
      if p.name != "learning_rate" and type(p.default) is float
  ]


def _quadratic_runs(make_optimizer, configs, steps=5, update_extras=()):
  """Final parameters of `steps` updates per configuration, all vmapped, on the mean over a batch
  of three targets t of sum((p - t)^2) (minimum at p = 1). `update` gets `value` and the extra
  arguments named in `update_extras`, built from that loss and batch."""
  import jax
  import jax.numpy as jnp

  targets = jnp.array([0.9, 1.0, 1.1])

  def loss(params, batch):
    per_target = lambda t: sum(jnp.sum((x - t) ** 2) for x in jax.tree.leaves(params))
    return jnp.mean(jax.vmap(per_target)(batch))

  def run(config):
    optimizer = make_optimizer(**config)
    params = {"w": jnp.array([[0.5, -1.0], [2.0, 0.0]]), "b": jnp.array([0.3, -0.2])}

    def step(carry, _):
      params, state = carry
      value, grads = jax.value_and_grad(loss)(params, targets)
      extras = extra_update_args(update_extras, loss, params, targets)
      updates, state = optimizer.update(grads, state, params, **{"value": value, **extras})
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    return params

  stacked = {k: jnp.asarray([c[k] for c in configs], jnp.float32) for k in configs[0]}
  return jax.jit(jax.vmap(run))(stacked)


@pytest.mark.scale
@pytest.mark.parametrize("symbol", sorted(registered_optimizers()))
def test_every_registered_optimizer_sweeps_its_hyperparameters(symbol):
  """Every float hyperparameter of every registered alias, varied one at a time in one vmapped
  program through `inject_swept` (the sweep's path), gives what the alias itself gives when its
  hyperparameters are closed over (no injection): no value is dropped or mixed up. `update` gets
  the extra arguments the alias's registry record names (`update_extras`)."""
  import jax

  factory = registered_optimizers()[symbol]
  extras = registered_update_extras(factory)
  signature = inspect.signature(factory).parameters
  if "num_iterations" in signature:  # Ranger21's schedule length: any run length will do
    factory = functools.partial(factory, num_iterations=100)
  required = [n for n, p in signature.items() if p.default is p.empty
              and n not in ("learning_rate", "num_iterations")
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  if required:
    pytest.skip(f"{symbol} requires {required}, which a generic harness cannot choose")
  names = _float_hyperparameters(factory)
  base = {"learning_rate": 0.05, **{n: signature[n].default for n in names}}
  configs = [base, {**base, "learning_rate": 0.01}]
  for n in names:  # another valid value: half the default (zero stays zero: use 0.1)
    configs.append({**base, n: base[n] * 0.5 if base[n] else 0.1})
  for config in configs:
    factory(**config)  # concrete values pass the factory's own checks
  injected = _quadratic_runs(sweep_module.inject_swept(factory, sorted(base)), configs,
                             update_extras=extras)
  closed_over = _quadratic_runs(lambda **c: factory(**c), configs, update_extras=extras)
  for got, want in zip(jax.tree.leaves(injected), jax.tree.leaves(closed_over)):
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  w = np.asarray(injected["w"])
  assert not np.allclose(w[0], w[1]), f"{symbol}: the learning rate had no effect"


def test_sweep_equals_fit_without_injection():
  """Reference: plain `fit` with a closure over optax.adam (no inject_hyperparams)."""
  configs = grid(learning_rate=[1e-3, 3e-2], b1=[0.8, 0.95])
  result = sweep("optax.adam", DATA, configs, seeds=[0, 1], **SHORT)
  loss_fn, eval_fn = classifier(MODEL[1])
  reference = fit(
      loss_fn, MODEL[0], lambda learning_rate, b1: optax.adam(learning_rate, b1=b1), DATA,
      configs=configs, seeds=[0, 1], eval_fn=eval_fn,
      **{k: v for k, v in SHORT.items() if k != "model"},
  )
  for metric, values in reference.history.items():
    np.testing.assert_allclose(result.history[metric], values, rtol=1e-6, atol=1e-7)
  assert result.programs == 1 and result.devices == 1


@pytest.mark.scale
def test_chunks_reuse_one_program_and_give_the_same_results(monkeypatch):
  configs = grid(learning_rate=[1e-3, 1e-2, 1e-1])
  whole = sweep("optax.sgd", DATA, configs, chunk_size=None, **SHORT)
  chunked = sweep("optax.sgd", DATA, configs, chunk_size=2, **SHORT)
  assert (whole.programs, chunked.programs) == (1, 2)  # 2 + (1 padded to 2)
  assert chunked.configs == configs
  for metric, values in whole.history.items():
    np.testing.assert_allclose(chunked.history[metric], values, rtol=1e-6, atol=1e-7)

  # 'auto': a device that reports room for 2.5 runs besides the dataset gets chunks of 2.
  # The one-run program of exactly this sweep (same functions: fit's cache is shared).
  task = loop._Task(*sweep_module._classifier(MODEL[1]), MODEL[0],
                    sweep_module.inject_swept(optax.sgd, ["learning_rate"]), False, 32,
                    len(DATA.x_train), 10, parallel.RunLayout())
  data_bytes, per_run = sweep_module._bytes_per_run(task, DATA, ["learning_rate"])
  assert 0 < per_run < 10 * 2**20
  limit = (data_bytes + 2.5 * per_run) / 0.7
  monkeypatch.setattr(sweep_module, "_device_memory_limit", lambda: int(limit))
  assert sweep_module._auto_chunk_size(task, DATA, ["learning_rate"], 3, 1, None) == 2
  auto = sweep("optax.sgd", DATA, configs, **SHORT)
  assert auto.programs == 2
  np.testing.assert_allclose(auto.history["train_loss"], whole.history["train_loss"], rtol=1e-6)
  monkeypatch.setattr(sweep_module, "_device_memory_limit", lambda: int(data_bytes))
  with pytest.raises(ValueError, match="GiB per device"):
    sweep("optax.sgd", DATA, configs, **SHORT)


@pytest.mark.parametrize("configs, kwargs, match", [
    (grid(lr=[1e-3]), {}, r"has no hyperparameter\(s\) \['lr'\]"),
    (grid(learning_rate=[-1e-3]), {}, r"learning_rate must be in \[0, inf\)"),
    (grid(learning_rate=[1e-3]), {"fixed": {"learning_rate": 1.0}}, "both swept and fixed"),
    ([{"learning_rate": "big"}], {}, "must be numbers"),
    ([], {}, "at least one configuration"),
    ([{"learning_rate": 1e-3}, {"b1": 0.9}], {}, "same hyperparameters"),
    (grid(learning_rate=[1e-3]), {"chunk_size": 0}, "chunk_size must be"),
    (grid(learning_rate=[1e-3]), {"mesh": "all"}, "mesh must be"),
])
def test_bad_input_raises_before_training(configs, kwargs, match):
  with pytest.raises(ValueError, match=match):
    sweep("optax.adam", DATA, configs, **{**SHORT, **kwargs})


def test_registered_optimizer_checks_its_own_ranges():
  symbol = next(iter(registered_optimizers()), None)
  if symbol is None:
    pytest.skip("no optimizer registered yet")
  with pytest.raises(ValueError, match="learning_rate"):
    sweep(symbol, DATA, grid(learning_rate=[-1.0]), **SHORT)


# -- configurations -------------------------------------------------------------------------------


def test_random_search_is_seeded_and_stays_in_bounds():
  space = dict(learning_rate=LogUniform(1e-5, 1e-1), b1=Uniform(0.8, 0.99), b2=[0.99, 0.999])
  configs = random_search(400, seed=3, **space)
  assert configs == random_search(400, seed=3, **space)
  assert configs != random_search(400, seed=4, **space)
  lr = np.array([c["learning_rate"] for c in configs])
  b1 = np.array([c["b1"] for c in configs])
  assert lr.min() >= 1e-5 and lr.max() <= 1e-1 and 0.8 <= b1.min() and b1.max() < 0.99
  assert {c["b2"] for c in configs} == {0.99, 0.999}
  # log-uniform: each decade gets about a quarter of the samples (4 decades).
  decades = np.histogram(np.log10(lr), bins=[-5, -4, -3, -2, -1])[0]
  assert decades.min() > 60, decades


@pytest.mark.parametrize("call, match", [
    (lambda: random_search(0, lr=[1.0]), "num must be"),
    (lambda: random_search(3), "at least one"),
    (lambda: random_search(3, lr="0.1"), "LogUniform, a Uniform or a list"),
    (lambda: LogUniform(0.0, 1.0), "0 < low < high"),
    (lambda: Uniform(1.0, 1.0), "low < high"),
])
def test_random_search_bad_input(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_parse_space():
  space = parse_space(["learning_rate=logspace:1e-4:1e-1:4", "b1=0.9,0.95", "eps=linspace:0:1:3"],
                      random=False)
  np.testing.assert_allclose(space["learning_rate"], [1e-4, 1e-3, 1e-2, 1e-1])
  assert space["b1"] == [0.9, 0.95] and space["eps"] == [0.0, 0.5, 1.0]
  random = parse_space(["learning_rate=loguniform:1e-4:1e-2", "b1=uniform:0.8:0.9"], random=True)
  assert random == {"learning_rate": LogUniform(1e-4, 1e-2), "b1": Uniform(0.8, 0.9)}
  for specs, match in [(["learning_rate=loguniform:1e-4:1e-2"], "use it with --random"),
                       (["learning_rate"], "must look like"), ([], "at least one"),
                       (["lr=logspace:0:1:3"], "0 < LOW < HIGH"), (["lr=a,b"], "not a number")]:
    with pytest.raises(ValueError, match=match):
      parse_space(specs, random=False)


# -- results --------------------------------------------------------------------------------------


def _result(configs, final_accuracy, names):
  """A SweepResult with hand-made histories: accuracy rises linearly to `final_accuracy`."""
  k = len(configs)
  steps = np.array([10, 20, 30])
  accuracy = np.stack([np.linspace(0.1, a, 3) for a in final_accuracy])[:, None, :].repeat(2, 1)
  accuracy[:, 1] += 0.02  # seed 1 is better by 0.02
  loss = 1.0 - accuracy
  loss[0, :, 1] = 0.05  # config 0 dips mid-training
  return SweepResult("opt", names, configs, [0, 1], steps,
                     {"test_accuracy": accuracy, "train_loss": loss}, 1.0, 1, 1)


def test_table_and_best_by_hand():
  configs = grid(learning_rate=[0.1, 0.01], b1=[0.9, 0.99])
  result = _result(configs, [0.5, 0.9, np.nan, 0.7], ["b1", "learning_rate"])
  rows = result.table()
  assert rows[1]["final_test_accuracy"] == pytest.approx(0.91)  # mean of 0.9 and 0.92
  assert rows[1]["final_test_accuracy_std"] == pytest.approx(0.01)
  assert rows[0]["best_train_loss"] == pytest.approx(0.05)  # min along training, not final
  assert rows[0]["final_train_loss"] == pytest.approx(1 - 0.51)
  assert math.isnan(rows[2]["final_test_accuracy"])  # diverged runs stay visible
  assert result.best("test_accuracy")["learning_rate"] == 0.1 and result.best()["b1"] == 0.99
  assert result.best("train_loss") == rows[1]
  assert result.to_markdown().count("\n") == 1 + len(configs)


def test_plots(tmp_path):
  import matplotlib

  matplotlib.use("Agg")
  configs = grid(learning_rate=[0.1, 0.01], b1=[0.9, 0.99, 0.999])
  heat = _result(configs, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], ["b1", "learning_rate"]).plot()
  image = heat.axes[0].images[0].get_array()
  # rows: b1 ascending, columns: learning rate ascending; configs are lr-major.
  np.testing.assert_allclose(image, [[0.41, 0.11], [0.51, 0.21], [0.61, 0.31]])
  line = _result(grid(learning_rate=[1e-3, 1e-2, 1e-1]), [0.3, 0.9, 0.5], ["learning_rate"]).plot()
  assert line.axes[0].get_xscale() == "log"
  x, y = line.axes[0].lines[0].get_data()
  np.testing.assert_allclose(y, [0.31, 0.91, 0.51])
  scatter = _result(random_search(4, a=Uniform(0, 1), b=Uniform(0, 1)), [0.1] * 4, ["a", "b"])
  assert len(scatter.plot().axes) == 2


def test_update_extras_come_from_the_registry_record():
  for method, symbol in registry.optimizer_aliases():
    assert registered_update_extras(registry.resolve(symbol)) == tuple(
        getattr(method, "update_extras", ())
    ), symbol
  assert registered_update_extras(registry.resolve("jaxlearn.optim.normalized_lr_gd")) == (
      "margins",
  )
  assert registered_update_extras(optax.adam) == ()
  with pytest.raises(ValueError, match="update_extras must be drawn from"):
    sweep("optax.adam", DATA, grid(learning_rate=[1e-3]), update_extras=("margin",), **SHORT)


@pytest.mark.scale
def test_cli_sweep_gives_a_registered_optimizer_its_update_extras(tmp_path):
  """Normalized LR+GD's `update` needs every example's margin: the sweep path (command line
  included) builds them from its registry record, so it trains like any other optimizer."""
  code = cli.main(["sweep", "normalized_lr_gd", "--param", "learning_rate=0.1,1.0", "--steps",
                   "20", "--eval-every", "10", "--hidden", "8", "--out", str(tmp_path),
                   "--no-progress"])
  assert code == 0
  record = json.loads((tmp_path / "sweep_normalized_lr_gd.json").read_text())
  assert record["optimizer"] == "jaxlearn.optim.normalized_lr_gd"
  rows = record["table"]
  assert len(rows) == 2 and all(math.isfinite(row["final_train_loss"]) for row in rows)
  assert rows[0]["final_train_loss"] != rows[1]["final_train_loss"]


def test_cli_sweep_reports_bad_input(tmp_path, capsys):
  assert cli.main(["sweep", "optax.adam", "--param", "lr=0.1", "--out", str(tmp_path)]) == 2
  assert "has no hyperparameter(s) ['lr']" in capsys.readouterr().err
  assert cli.main(["sweep", "optax.adam", "--param", "learning_rate=0.1", "--data", "cifar"]) == 2
  assert "--data must be one of" in capsys.readouterr().err


@pytest.mark.scale
def test_cli_sweep_writes_table_and_plot(tmp_path, capsys):
  code = cli.main(["sweep", "optax.sgd", "--param", "learning_rate=0.01,0.1", "--fixed", "momentum=0.9",
                   "--steps", "20", "--eval-every", "10", "--hidden", "16", "--out", str(tmp_path),
                   "--no-progress"])
  assert code == 0
  record = json.loads((tmp_path / "sweep_sgd.json").read_text())
  assert record["optimizer"] == "optax.sgd" and record["swept"] == ["learning_rate"]
  assert len(record["table"]) == 2 and record["settings"]["fixed"] == ["momentum=0.9"]
  assert all(math.isfinite(row["final_test_accuracy"]) for row in record["table"])
  assert (tmp_path / "sweep_sgd.csv").read_text().startswith("learning_rate,")
  assert (tmp_path / "sweep_sgd.png").stat().st_size > 0
  assert "best final test_accuracy" in capsys.readouterr().out
