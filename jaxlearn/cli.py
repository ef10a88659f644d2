"""The `jaxlearn` command line: list and describe registered methods, run experiments.

  jaxlearn list [--kind KIND] [--json | --markdown]
  jaxlearn describe SLUG
  jaxlearn run EXPERIMENT|all [--quick] [--out DIR] [--seed N]
  jaxlearn report [--results DIR] [--page FILE]
  jaxlearn sweep OPTIMIZER --param NAME=VALUES [--param ...] [--random N] [--seeds 0,1] ...

EXPERIMENT is a script name from experiments/ (e.g. `quickstart`) or a method slug, which runs
that method's experiment; `all` runs every experiment except the benchmarks (bench_*), goes on past
failures and exits with code 1 if any failed. `report` turns the full runs' results into the
reproductions page (docs/reproductions.md). Unknown names and bad options print a message and
exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import textwrap
from pathlib import Path
from typing import Sequence

from jaxlearn import registry
from jaxlearn._commands import add_sweep_arguments, experiment_names

__all__ = ["main", "build_parser"]

USAGE_ERROR = 2


def _fail(message: str) -> int:
  print(f"jaxlearn: error: {message}", file=sys.stderr)
  return USAGE_ERROR


def _cmd_list(args) -> int:
  if args.write and not args.markdown:
    return _fail("--write needs --markdown")
  methods = registry.all_methods(args.kind)
  if args.json:
    print(json.dumps([m.to_json() for m in methods], indent=2))
  elif args.markdown and args.write:
    changed = registry.write_readme_table(args.write)
    print(f"{args.write}: method table {'rewritten' if changed else 'already up to date'}")
  elif args.markdown:
    print(registry.markdown_table())
  else:
    width = max((len(m.slug) for m in methods), default=4)
    for m in methods:
      print(f"{m.slug:<{width}}  {m.kind:<13}  {m.title}")
  return 0


def _docstring_summary(symbol: str) -> str:
  try:
    doc = inspect.getdoc(registry.resolve(symbol)) or ""
  except (ImportError, AttributeError) as error:
    return f"(could not import {symbol}: {error})"
  return doc


def _cmd_describe(args) -> int:
  try:
    method = registry.get(args.slug)
  except KeyError as error:
    return _fail(error.args[0])
  print(f"{method.slug}  ({method.kind})")
  print(f"Paper: {method.title} [{method.reference}]")
  if method.notes:
    print("Notes: " + textwrap.fill(method.notes, 96, subsequent_indent="       "))
  print("\nSymbols:")
  for symbol in method.symbols:
    print(f"  {symbol}")
  print(f"\nTests: {', '.join(method.tests)}")
  if method.experiment:
    print(f"Experiment: {method.experiment}  (run: jaxlearn run {Path(method.experiment).stem})")
  # The method's own symbols come first (its jaxlearn alias), then the pieces it reuses.
  print(f"\n--- {method.symbols[0]} ---")
  print(_docstring_summary(method.symbols[0]))
  if len(method.symbols) > 1:
    print(f"\n(also: {', '.join(method.symbols[1:])}; `help()` shows each one's documentation)")
  return 0


def _experiment_module(name: str):
  """The module of experiment `name` (a script name or a method slug); raises ValueError."""
  available = experiment_names()
  if name not in available:
    try:  # a method slug names its experiment
      experiment = registry.get(name).experiment
    except KeyError:
      experiment = None
    if experiment is None:
      raise ValueError(
          f"unknown experiment {name!r}. Available: all, {', '.join(available)} "
          "(or a method slug from `jaxlearn list`)."
      )
    name = Path(experiment).stem
  try:
    return importlib.import_module(f"jaxlearn.experiments.{name}")
  except ImportError as error:
    raise ValueError(
        f"experiment {name!r} needs a package that is missing ({error}). "
        "Install the extras: pip install 'jaxlearn[experiments]'"
    ) from error


def _run_argv(args) -> list[str]:
  return ["--out", str(args.out), "--seed", str(args.seed)] + (["--quick"] if args.quick else [])


def _cmd_run(args) -> int:
  if args.experiment == "all":
    return _run_all(args)
  try:
    module = _experiment_module(args.experiment)
  except ValueError as error:
    return _fail(str(error))
  module.main(_run_argv(args))
  return 0


def _run_all(args) -> int:
  """Runs every experiment but the benchmarks, one after the other, past any failure."""
  import time
  import traceback

  from jaxlearn.train.progress import progress_bar

  names = [n for n in experiment_names() if not n.startswith("bench_")]
  failures, bar = {}, progress_bar(names, desc="experiments")
  for name in bar:
    if hasattr(bar, "set_postfix_str"):
      bar.set_postfix_str(name)
    start = time.perf_counter()
    try:
      _experiment_module(name).main(_run_argv(args))
    except Exception as error:  # noqa: BLE001 -- report it and go on with the next experiment
      traceback.print_exc()
      failures[name] = f"{type(error).__name__}: {error}".splitlines()[0]
    status = "FAILED" if name in failures else "done"
    print(f"[run all] {name}: {status} in {time.perf_counter() - start:.1f} s", flush=True)
  print(f"[run all] {len(names) - len(failures)} of {len(names)} experiments ran; results in "
        f"{args.out}")
  for name, message in failures.items():
    print(f"[run all] FAILED {name}: {message}", file=sys.stderr)
  return 1 if failures else 0


def _cmd_report(args) -> int:
  from jaxlearn.train import report

  verdicts = report.write_report(args.results, args.page)
  counts = {v: list(verdicts.values()).count(v) for v in dict.fromkeys(verdicts.values())}
  print(f"{args.page}: {len(verdicts)} experiments ("
        + ", ".join(f"{n} {v}" for v, n in counts.items()) + f"), results from {args.results}")
  return 0


def _cmd_sweep(args) -> int:
  from jaxlearn.train import sweep

  try:
    sweep.run_from_args(args)
  except ValueError as error:
    return _fail(str(error))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jaxlearn", description="Training techniques from deep-learning papers, in JAX."
  )
  commands = parser.add_subparsers(dest="command", required=True)

  listing = commands.add_parser("list", help="list registered methods")
  listing.add_argument("--kind", choices=registry.KINDS, help="only methods of this kind")
  form = listing.add_mutually_exclusive_group()
  form.add_argument("--json", action="store_true", help="print the records as JSON")
  form.add_argument("--markdown", action="store_true", help="print the README table")
  listing.add_argument(
      "--write", nargs="?", const=Path("README.md"), type=Path, metavar="README",
      help="with --markdown: rewrite the table between the README's markers (default README.md)",
  )
  listing.set_defaults(handler=_cmd_list)

  describe = commands.add_parser("describe", help="show a method's paper, math and symbols")
  describe.add_argument("slug")
  describe.set_defaults(handler=_cmd_describe)

  run = commands.add_parser(
      "run", help="run an experiment (e.g. quickstart), or all of them but the benchmarks"
  )
  run.add_argument("experiment", help="a script name from experiments/, a method slug, or all")
  run.add_argument("--quick", action="store_true", help="tiny smoke version")
  run.add_argument("--out", type=Path, default=Path("results"), help="output directory")
  run.add_argument("--seed", type=int, default=0, help="base random seed")
  run.set_defaults(handler=_cmd_run)

  report = commands.add_parser(
      "report", help="write the reproductions page from the experiments' full-run results"
  )
  report.add_argument("--results", type=Path, default=Path("results"),
                      help="folder of the JSON and PNG results (quick runs are skipped)")
  report.add_argument("--page", type=Path, default=Path("docs/reproductions.md"),
                      help="the page to write; plots go to the folder of the same name beside it")
  report.set_defaults(handler=_cmd_report)

  sweep = commands.add_parser(
      "sweep", help="train one optimizer over a hyperparameter grid or random search and seeds"
  )
  add_sweep_arguments(sweep)
  sweep.set_defaults(handler=_cmd_sweep)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)  # argparse exits with code 2 on bad options
  return args.handler(args)


if __name__ == "__main__":
  sys.exit(main())
