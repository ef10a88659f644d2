"""Smoke runs of the cross-method experiments: the main job, the comparison and the benchmark."""

import json

import numpy as np
import pytest

from jaxlearn import registry


def _load(path):
  record = json.loads(path.read_text())
  assert record["quick"] is True and record["claim_held"] is None
  assert record["paper_claim"] and record["measured"]
  assert path.with_suffix(".png").stat().st_size > 1000
  return record


def test_quickstart_quick(out_dir):
  from jaxlearn.experiments import quickstart

  quickstart.run(quick=True, out=out_dir, seed=0)
  table = _load(out_dir / "quickstart.json")["metrics"]["table"]
  assert [row["optimizer"] for row in table] == [e.label for e in quickstart.OPTIMIZERS]
  assert all(np.isfinite(row["test_accuracy"]) and row["test_accuracy"] > 0.5 for row in table)


def test_optimizers_digits_quick(out_dir):
  from jaxlearn.experiments import optimizers_digits

  optimizers_digits.run(quick=True, out=out_dir, seed=0)
  table = _load(out_dir / "optimizers_digits.json")["metrics"]["table"]
  assert len(table) == 2 and all(np.isfinite(r["train_loss"]) for r in table)


def test_every_optimizer_alias_is_in_the_comparison():
  from jaxlearn.experiments import optimizers_digits

  labels = {entry.label for entry in optimizers_digits.registered_entries(steps=100)}
  assert {symbol for _, symbol in registry.optimizer_aliases()} <= labels


def test_bench_optimizers_quick(out_dir):
  pytest.importorskip("pytorch_optimizer")
  from jaxlearn.experiments import bench_optimizers

  bench_optimizers.run(quick=True, out=out_dir, seed=0)
  rows = _load(out_dir / "bench_optimizers.json")["metrics"]["rows"]
  assert len(rows) == 2
  for row in rows:
    assert row["step_ms"] > 0 and row["torch_step_ms"] > 0
    assert row["ratio_vs_torch"] == pytest.approx(row["step_ms"] / row["torch_step_ms"])
