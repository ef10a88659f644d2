"""Shared pytest configuration and fixtures."""

import pytest


@pytest.fixture
def out_dir(tmp_path):
  """A fresh directory for an experiment's JSON and PNG."""
  return tmp_path / "results"
