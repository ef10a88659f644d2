"""`python -m jaxlearn.launch`: two processes on localhost, simulated devices, argument handling.

The multi-process run is in the `scale` tier (`pytest -m scale`); the argument handling is not.
"""

import json
import math
import subprocess
import sys

import pytest

from jaxlearn import launch
from jaxlearn.train import parallel
from tests.scale._subprocess import ROOT, clean_env, free_port, run_python

SWEEP = ["sweep", "optax.adam", "--param", "learning_rate=1e-3,1e-2", "--seeds", "0,1", "--steps", "40",
         "--eval-every", "20", "--batch-size", "32", "--hidden", "16", "--no-progress"]


def _table(directory):
  record = json.loads((directory / "sweep_adam.json").read_text())
  return {row["learning_rate"]: row for row in record["table"]}, record


@pytest.mark.scale
def test_two_processes_run_a_data_parallel_sweep_that_matches_one_process(tmp_path):
  """2 processes x 2 CPU devices joined with jax.distributed (gloo collectives); every batch is
  split over all 4 devices of both processes. Only process 0 writes results."""
  port = free_port()
  outs = [tmp_path / "process0", tmp_path / "process1"]
  workers = [
      subprocess.Popen(
          [sys.executable, "-m", "jaxlearn.launch", "--cpu-devices", "2", "--coordinator",
           f"localhost:{port}", "--num-processes", "2", "--process-id", str(i), "--mesh", "data=4",
           *SWEEP, "--out", str(outs[i])],
          env=clean_env(), cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      )
      for i in range(2)
  ]
  try:
    reference = run_python(["-m", "jaxlearn.launch", *SWEEP, "--out", str(tmp_path / "single")],
                           timeout=300)
    logs = [worker.communicate(timeout=300)[0] for worker in workers]
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
  for i, (worker, log) in enumerate(zip(workers, logs)):
    assert worker.returncode == 0, log
    assert f"[launch {i}/2] 2 local / 4 global cpu devices; mesh {{'runs': 1, 'data': 4}}" in log
  assert "[launch 0/1] 1 local / 1 global cpu devices; mesh one device" in reference.stdout
  assert sorted(p.name for p in outs[0].iterdir()) == [
      "sweep_adam.csv", "sweep_adam.json", "sweep_adam.png"
  ]
  assert not outs[1].exists(), "process 1 must not write results"

  distributed, record = _table(outs[0])
  single, _ = _table(tmp_path / "single")
  assert record["devices"] == 4
  assert distributed.keys() == single.keys() == {1e-3, 1e-2}
  for lr, row in single.items():
    for metric in ("final_train_loss", "final_test_loss", "final_test_accuracy"):
      assert math.isfinite(row[metric])
      assert distributed[lr][metric] == pytest.approx(row[metric], rel=1e-4, abs=1e-6), metric


@pytest.mark.slow
def test_experiment_runs_on_simulated_devices(tmp_path):
  """The bench experiment through the entry point on 8 simulated CPU devices (a data mesh):
  its quick run writes a JSON with finite metrics and a plot."""
  result = run_python(
      ["-m", "jaxlearn.launch", "--cpu-devices", "8", "run", "bench_sweep", "--quick",
       "--out", str(tmp_path)], timeout=600,
  )
  assert "[launch 0/1] 8 local / 8 global cpu devices; mesh {'runs': 1, 'data': 8}" in result.stdout
  record = json.loads((tmp_path / "bench_sweep.json").read_text())
  assert (tmp_path / "bench_sweep.png").is_file()
  assert record["config"]["devices"] == 8 and record["claim_held"] is None
  for row in record["metrics"]["table"]:
    # End-to-end timings (each sequential run compiling) are measured for some K only.
    for key in ("vmapped_s", "sequential_s", "speedup", "speedup_end_to_end"):
      if key in row or key != "speedup_end_to_end":
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert 0.0 <= row["best_test_accuracy"] <= 1.0


def test_parser_defaults_and_environment(monkeypatch):
  monkeypatch.setenv("JAXLEARN_COORDINATOR", "10.0.0.1:1234")
  monkeypatch.setenv("JAXLEARN_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAXLEARN_PROCESS_ID", "3")
  monkeypatch.setenv("JAXLEARN_MESH", "runs=2,data=-1")
  args = launch.build_parser().parse_args(["sweep", "adam", "--param", "learning_rate=1e-3"])
  assert (args.coordinator, args.num_processes, args.process_id) == ("10.0.0.1:1234", 4, 3)
  assert args.mesh == "runs=2,data=-1" and args.distributed == "auto"


@pytest.mark.parametrize("environ, hint", [
    ({}, None),
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0"}, None),  # a single-host TPU VM
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1"}, "TPU_WORKER_HOSTNAMES"),
    ({"SLURM_NTASKS": "1"}, None),
    ({"SLURM_NTASKS": "8"}, "SLURM_NTASKS"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_SIZE"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, "MEGASCALE_COORDINATOR_ADDRESS"),
])
def test_multi_host_hint(environ, hint):
  assert parallel.multi_host_hint(environ) == hint


def test_initialize_distributed_validates_before_touching_jax(monkeypatch):
  monkeypatch.delenv("SLURM_NTASKS", raising=False)
  calls = []
  monkeypatch.setattr(parallel.jax.distributed, "initialize", lambda **kw: calls.append(kw))
  assert parallel.initialize_distributed("off", coordinator_address="h:1", num_processes=2,
                                         process_id=0) is False
  assert parallel.initialize_distributed("auto") is False  # nothing says "several processes"
  with pytest.raises(ValueError, match="must be given together"):
    parallel.initialize_distributed("auto", coordinator_address="h:1")
  with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
    parallel.initialize_distributed("auto", coordinator_address="h:1", num_processes=2,
                                    process_id=2)
  with pytest.raises(ValueError, match="mode must be one of"):
    parallel.initialize_distributed("yes")
  assert calls == []
  assert parallel.initialize_distributed("auto", coordinator_address="h:1", num_processes=2,
                                         process_id=1) is True
  assert calls == [{"coordinator_address": "h:1", "num_processes": 2, "process_id": 1,
                    "initialization_timeout": 300}]
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert parallel.initialize_distributed("auto") is True  # jax reads Slurm's variables itself


def test_launch_reports_bad_input_with_exit_code_2(tmp_path, capsys):
  assert launch.main(["--distributed", "off", "run", "no_such_experiment"]) == 2
  assert "unknown experiment 'no_such_experiment'" in capsys.readouterr().err
  assert launch.main(["--mesh", "model=2", "sweep", "optax.adam", "--param", "learning_rate=1e-3"]) == 2
  assert "mesh spec must look like" in capsys.readouterr().err
  assert launch.main(["--cpu-devices", "0", "sweep", "optax.adam", "--param", "learning_rate=1"]) == 2
  assert "--cpu-devices must be >= 1" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:  # argparse: unknown option
    launch.main(["--no-such-flag", "sweep", "adam"])
  assert exit_info.value.code == 2
