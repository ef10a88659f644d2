"""The entry point every worker of a multi-host job runs: `python -m jaxlearn.launch ...`.

  python -m jaxlearn.launch [--distributed auto|on|off] [--coordinator HOST:PORT
      --num-processes N --process-id I] [--mesh runs=R,data=D] [--cpu-devices N]
      {run EXPERIMENT [--quick] [--out DIR] [--seed N] | sweep OPTIMIZER [sweep options]}

Each process:
1. joins the job (`jax.distributed.initialize`) when it is one of several: always with
   `--distributed on` (Cloud TPU pod slices, Slurm and Open MPI need no other flag), with the
   explicit coordinator flags (or the JAXLEARN_COORDINATOR / JAXLEARN_NUM_PROCESSES /
   JAXLEARN_PROCESS_ID variables), or when `--distributed auto` (the default) sees a cluster's
   environment variables;
2. builds a ('runs', 'data') mesh from every device of every process: by default all devices on
   'data' for `run` (the experiment's batches are split; its runs stay whole) and all on 'runs'
   for `sweep` (configurations are split); `--mesh` overrides;
3. runs the experiment inside `jax.set_mesh(mesh)`, where `jaxlearn.train.fit` picks the mesh up,
   or the sweep on that mesh;
4. writes results only from process 0 (the others write to a scratch directory, removed after).

`--cpu-devices N` splits the CPU into N devices (`jax_num_cpu_devices`): a simulated
accelerator for trying the multi-device path without one. This module imports jax only after
parsing the flags, so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from jaxlearn._commands import add_sweep_arguments, experiment_names

__all__ = ["main", "build_parser"]

ENV_PREFIX = "JAXLEARN_"


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m jaxlearn.launch",
      description="Run a jaxlearn experiment or sweep on every worker of a (multi-host) job.",
  )
  env = lambda name: os.environ.get(ENV_PREFIX + name)
  parser.add_argument(
      "--distributed", choices=("auto", "on", "off"), default=env("DISTRIBUTED") or "auto",
      help="call jax.distributed.initialize: on, off, or auto (when a coordinator is given or a "
      "cluster environment is detected)",
  )
  parser.add_argument(
      "--coordinator", default=env("COORDINATOR"), metavar="HOST:PORT",
      help="address of process 0 (with --num-processes and --process-id)",
  )
  parser.add_argument("--num-processes", type=int, default=env("NUM_PROCESSES"))
  parser.add_argument("--process-id", type=int, default=env("PROCESS_ID"))
  parser.add_argument(
      "--mesh", default=env("MESH"),
      help="device mesh, e.g. 'runs=2,data=4' or 'data=-1' (default: all devices on data for "
      "run, on runs for sweep)",
  )
  parser.add_argument(
      "--cpu-devices", type=int, help="simulate N devices on the CPU (testing without accelerators)"
  )
  commands = parser.add_subparsers(dest="command", required=True)
  run = commands.add_parser("run", help="run an experiment from experiments/")
  run.add_argument("experiment")
  run.add_argument("--quick", action="store_true", help="tiny smoke version")
  run.add_argument("--out", type=Path, default=Path("results"), help="output directory")
  run.add_argument("--seed", type=int, default=0, help="base random seed")
  add_sweep_arguments(commands.add_parser("sweep", help="run a hyperparameter sweep"))
  return parser


def _say(message: str) -> None:
  import jax

  print(f"[launch {jax.process_index()}/{jax.process_count()}] {message}", flush=True)


@contextlib.contextmanager
def _output_directory(out: Path):
  """`out` on process 0; a scratch directory (removed afterwards) on every other process."""
  from jaxlearn.train import parallel

  if parallel.is_main_process():
    yield out
    return
  scratch = Path(tempfile.mkdtemp(prefix="jaxlearn-launch-"))
  try:
    yield scratch
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _run_experiment(args, mesh) -> None:
  import importlib

  import jax

  if args.experiment not in experiment_names():
    raise ValueError(
        f"unknown experiment {args.experiment!r}; available: {', '.join(experiment_names())}"
    )
  module = importlib.import_module(f"jaxlearn.experiments.{args.experiment}")
  ambient = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with _output_directory(args.out) as out, ambient:
    argv = ["--out", str(out), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
    module.main(argv)


def _run_sweep(args, mesh) -> None:
  from jaxlearn.train import parallel, sweep

  sweep.run_from_args(args, mesh=mesh, write=parallel.is_main_process())


def _fail(message: str) -> int:
  print(f"jaxlearn.launch: error: {message}", file=sys.stderr)
  return 2


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)  # argparse exits with code 2 on bad options
  import jax

  if args.cpu_devices is not None:
    if args.cpu_devices < 1:
      return _fail(f"--cpu-devices must be >= 1, got {args.cpu_devices}")
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  from jaxlearn.train import parallel

  try:
    joined = parallel.initialize_distributed(
        args.distributed,
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
  except ValueError as error:
    return _fail(str(error))
  try:
    default = "data=-1" if args.command == "run" else "runs=-1"
    mesh = parallel.parse_mesh(args.mesh if args.mesh is not None else default)
    if mesh.size == 1:
      mesh = None  # one device: plain vmap, no sharding annotations
    layout = "one device" if mesh is None else dict(mesh.shape)
    _say(
        f"{jax.local_device_count()} local / {jax.device_count()} global "
        f"{jax.default_backend()} devices; mesh {layout}; results written by process 0"
    )
    (_run_experiment if args.command == "run" else _run_sweep)(args, mesh)
  except ValueError as error:
    return _fail(str(error))
  finally:
    if joined:
      jax.distributed.shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main())
