"""Every experiment's --quick smoke run, driven by the registry, plus a few cross-method checks.

`test_quick_run` runs `run(quick=True, ...)` of every module in experiments/ and checks what all
of them must write (JSON with the claim and the measurement, no verdict, finite metrics, a plot)
and that the smoke run stays short: 5 s is the rule (compilation included; imports such as jax
and scikit-learn excluded). The quickstart runs in the default suite, timed in a fresh process,
the others in the `experiments` tier (`pytest -m experiments`). A few experiments add a cheap
check of their own (`CHECKS`).
"""

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxlearn import registry
from jaxlearn.cli import experiment_names

ROOT = Path(__file__).resolve().parents[1]  # the child process imports tests.* from here

NAMES = experiment_names()
DEFAULT_SUITE = ("quickstart",)  # the representative smoke run of the default suite
QUICK_RULE_S = 5.0
ASSERTED_S = 10.0  # what the test asserts: the rule plus room for a noisy CI machine


def warm_up_imports(with_torch: bool = True) -> None:
  """Pays the one-time imports (scikit-learn, MNIST-1D, matplotlib's fonts and, with
  `with_torch`, PyTorch) up front, as the process already paid jax's: the time limit is about the
  experiments' own work."""
  import io

  from jaxlearn.data import load_digits, load_mnist1d
  from jaxlearn.train import new_figure

  load_digits()
  load_mnist1d(num_samples=100)
  figure, axes = new_figure()
  axes[0, 0].plot([0, 1])
  figure.savefig(io.BytesIO())
  if not with_torch:
    return
  try:  # bench_optimizers times pytorch-optimizer when it is installed
    import pytorch_optimizer  # noqa: F401
    import torch
  except ImportError:
    return
  torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # imports torch._dynamo


@pytest.fixture(scope="module")
def warm_imports():
  """`warm_up_imports`, once per module."""
  warm_up_imports()


def _numbers(tree, path="metrics"):
  """(path, value) of every number in a JSON tree (booleans are not numbers here)."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _numbers(value, f"{path}.{key}")
  elif isinstance(tree, list):
    for index, value in enumerate(tree):
      yield from _numbers(value, f"{path}[{index}]")
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield path, tree


# ------------------------------------------------------------------ per-experiment extra checks


def _check_quickstart(record):
  from jaxlearn.experiments import quickstart

  table = record["metrics"]["table"]
  assert [row["optimizer"] for row in table] == [e.label for e in quickstart.OPTIMIZERS]
  assert all(row["test_accuracy"] > 0.5 for row in table), table


def _check_optimizers_digits(record):
  assert len(record["metrics"]["table"]) == 2


def _check_bench_optimizers(record):
  rows = record["metrics"]["rows"]
  assert len(rows) == 2 and all(row["step_ms"] > 0 for row in rows)
  for row in rows:
    if row["torch_step_ms"] is not None:  # pytorch-optimizer installed (the parity extra)
      assert row["ratio_vs_torch"] == pytest.approx(row["step_ms"] / row["torch_step_ms"])
  sweep = record["metrics"]["compile_sweep"]
  for row in rows:  # at the largest count, the minimum of repeated, alternating compiles
    symbol = row["optimizer"]
    assert sweep["repeated_cpu_s"][symbol] <= sweep["cpu_seconds"][symbol][-1]
    assert row["compile_ratio_at_most_leaves"] == pytest.approx(
        sweep["repeated_cpu_s"][symbol] / sweep["paired_baseline_cpu_s"][symbol])
  # optax.adamw compiled to as many kernels as each elementwise row with documented passes
  matched = [row for row in rows if "matched_baseline_cpu_s" in row]
  assert matched, "no row was compared with optax.adamw at as many kernels"
  for row in matched:
    kernels = row["compile_kernels_by_leaves"][-1]
    assert abs(row["matched_baseline_kernels"] - kernels) <= 0.1 * kernels, row
    assert row["compile_ratio_at_matched_kernels"] == pytest.approx(
        sweep["repeated_cpu_s"][row["optimizer"]] / row["matched_baseline_cpu_s"])


def _check_bench_sweep(record):
  (row,) = record["metrics"]["table"]  # the smoke run times the steady state only
  for key in ("vmapped_s", "sequential_s", "speedup"):
    assert row[key] > 0, key
  assert row["speedup"] == row["sequential_s"] / row["vmapped_s"]
  assert 0.0 <= row["best_test_accuracy"] <= 1.0


def _check_adamp(record):
  runs = record["metrics"]["runs"]
  assert set(runs) == {"adam@lr=0.001", "adamp@lr=0.001", "adam@lr=0.01", "adamp@lr=0.01"}
  assert all(r["final_norm_ratio"] > 0 and r["late_step_size"] > 0 for r in runs.values())


def _check_stablemax(record):
  # StableMax never gives an exactly-zero loss, even in the smoke run.
  assert record["metrics"]["stablemax"]["max_train_zero_loss"] == 0.0


def _check_forward_forward(record):
  depths = record["config"]["depths"]
  for values in record["metrics"]["step_temp_bytes"].values():
    assert len(values) == len(depths) and all(v > 0 for v in values)


def _check_rehearsal_free(record):
  accuracy = record["metrics"]["final_average_accuracy"]
  assert set(accuracy) == {"none", "l2", "ewc"} and all(0 <= a <= 1 for a in accuracy.values())


CHECKS = {
    "quickstart": _check_quickstart,
    "optimizers_digits": _check_optimizers_digits,
    "bench_optimizers": _check_bench_optimizers,
    "bench_sweep": _check_bench_sweep,
    "adamp_scale_invariance": _check_adamp,
    "stablemax_softmax_collapse": _check_stablemax,
    "forward_forward_digits": _check_forward_forward,
    "rehearsal_free_cl_l2_split_digits": _check_rehearsal_free,
}


# ------------------------------------------------------------------------------------ the tests


def test_every_registered_experiment_exists():
  registered = {m.experiment for m in registry.all_methods() if m.experiment}
  assert registered and all(e.startswith("experiments/") for e in registered)
  missing = {e for e in registered if e.removeprefix("experiments/").removesuffix(".py")
             not in NAMES}
  assert not missing, f"registered experiments without a module: {sorted(missing)}"
  assert set(CHECKS) <= set(NAMES)


def _quick_run_in_a_fresh_process(name, out_dir) -> tuple[float, float]:
  """Runs `name`'s quick run in a new Python process, warmed up first by `warm_up_imports`
  (PyTorch aside: no default-suite experiment uses it), and returns the run's wall and CPU
  seconds. In the default suite the quick run shares a pytest-xdist worker with hundreds of
  earlier tests, and there it cost three times the CPU of a fresh process (9.0 s against 2.7 s
  for the quickstart, measured), which is not the experiment's own cost."""
  code = textwrap.dedent(f"""
      import importlib, json, sys, time
      from pathlib import Path
      from tests.test_experiments import warm_up_imports
      warm_up_imports(with_torch=False)
      module = importlib.import_module("jaxlearn.experiments.{name}")
      wall, cpu = time.perf_counter(), time.process_time()
      module.run(quick=True, out=Path(sys.argv[1]), seed=0)
      print(json.dumps([time.perf_counter() - wall, time.process_time() - cpu]))""")
  done = subprocess.run([sys.executable, "-c", code, str(out_dir)], capture_output=True,
                        text=True, check=False, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-4000:]
  return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("name", [
    pytest.param(n, id=n, marks=() if n in DEFAULT_SUITE else pytest.mark.experiments)
    for n in NAMES
])
def test_quick_run(name, out_dir, warm_imports):
  import importlib

  record = None  # what run() returned, where it ran in this process
  if name in DEFAULT_SUITE:
    wall, cpu = _quick_run_in_a_fresh_process(name, out_dir)
  else:
    module = importlib.import_module(f"jaxlearn.experiments.{name}")
    wall, cpu = time.perf_counter(), time.process_time()
    record = module.run(quick=True, out=out_dir, seed=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  print(f"{name} --quick: {wall:.2f} s wall, {cpu:.2f} s CPU (rule: {QUICK_RULE_S:g} s)")

  saved = json.loads((out_dir / f"{name}.json").read_text())
  assert saved["experiment"] == name and (record is None or saved == record)
  assert saved["quick"] is True and saved["claim_held"] is None
  assert isinstance(saved["paper_claim"], str) and saved["paper_claim"].strip()
  assert isinstance(saved["measured"], str) and saved["measured"].strip()
  numbers = list(_numbers(saved["metrics"]))
  assert numbers, "no numbers in metrics"
  for path, value in numbers:
    assert math.isfinite(value), path
  assert (out_dir / f"{name}.png").stat().st_size > 1000
  if name in CHECKS:
    CHECKS[name](saved)
  # Wall time on an idle machine, CPU time on a busy one (where wall time measures the others).
  assert min(wall, cpu) <= ASSERTED_S, f"{name} --quick took {wall:.1f} s ({cpu:.1f} s CPU)"


def test_run_all_goes_past_a_failure_and_reports_it(monkeypatch, tmp_path, capsys):
  import types

  from jaxlearn import cli

  ran = []

  def module(name):
    def main(argv):
      ran.append((name, argv))
      if name == "broken":
        raise RuntimeError("no luck")
    return types.SimpleNamespace(main=main)

  monkeypatch.setattr(cli, "experiment_names", lambda: ["bench_x", "broken", "fine"])
  monkeypatch.setattr(cli, "_experiment_module", module)
  assert cli.main(["run", "all", "--quick", "--out", str(tmp_path)]) == 1
  assert [name for name, _ in ran] == ["broken", "fine"]  # benchmarks are left out
  assert ran[1][1] == ["--out", str(tmp_path), "--seed", "0", "--quick"]
  err = capsys.readouterr().err
  assert "FAILED broken: RuntimeError: no luck" in err and "FAILED fine" not in err


def test_every_optimizer_alias_is_in_the_comparison():
  from jaxlearn.experiments import optimizers_digits

  labels = {entry.label for entry in optimizers_digits.registered_entries(steps=100)}
  assert {symbol for _, symbol in registry.optimizer_aliases()} <= labels
