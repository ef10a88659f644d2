"""Shared pytest configuration and fixtures."""

import dataclasses

import pytest


@pytest.fixture
def out_dir(tmp_path):
  """A fresh directory for an experiment's JSON and PNG."""
  return tmp_path / "results"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  """Keeps every check of one battery row on one pytest-xdist worker (`--dist loadgroup`).

  A battery compiles a row's programs once and caches them in the worker's process; spread over
  two workers, a row would compile twice. A row is a dataclass parameter with a `name`.
  """
  for item in items:
    callspec = getattr(item, "callspec", None)
    if callspec is None or item.get_closest_marker("xdist_group"):
      continue
    rows = [value for value in callspec.params.values()
            if dataclasses.is_dataclass(value) and hasattr(value, "name")]
    if rows:
      item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{rows[0].name}"))
