"""The `jaxlearn` command line."""

import json
import subprocess
import sys

import pytest

from jaxlearn import cli, registry


def run_cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "jaxlearn", *args], capture_output=True, text=True, timeout=300
  )


def test_list_prints_every_slug(capsys):
  assert cli.main(["list"]) == 0
  out = capsys.readouterr().out
  for method in registry.all_methods():
    assert method.slug in out


def test_list_json_is_the_registry(capsys):
  assert cli.main(["list", "--json"]) == 0
  records = json.loads(capsys.readouterr().out)
  assert [r["slug"] for r in records] == [m.slug for m in registry.all_methods()]
  expected_keys = {"slug", "kind", "title", "reference", "symbols", "tests", "experiment", "notes"}
  assert all(expected_keys <= set(r) for r in records)


def test_list_kind_filters(capsys):
  assert cli.main(["list", "--kind", "loss", "--json"]) == 0
  records = json.loads(capsys.readouterr().out)
  assert records and all(r["kind"] == "loss" for r in records)


def test_describe_shows_paper_symbols_and_math(capsys):
  method = registry.all_methods()[0]
  assert cli.main(["describe", method.slug]) == 0
  out = capsys.readouterr().out
  assert method.title in out and method.symbols[0] in out
  assert method.reference in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["describe", "no_such_method"], "no method with slug"),
        (["run", "no_such_experiment"], "unknown experiment"),
        (["list", "--kind", "nonsense"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        (["run", "quickstart", "--quik"], "unrecognized arguments"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, message):
  result = run_cli(*args)
  assert result.returncode == 2
  assert message in result.stderr


def test_every_experiment_module_has_main():
  import importlib

  names = cli.experiment_names()
  assert "quickstart" in names
  for name in names:
    module = importlib.import_module(f"jaxlearn.experiments.{name}")
    assert callable(getattr(module, "main", None)), name
