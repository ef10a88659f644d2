"""The vmapped-sweep benchmark's smoke run writes its JSON and plot."""

import json
import math

from jaxlearn.experiments import bench_sweep


def test_quick_run_writes_finite_timings(out_dir):
  record = bench_sweep.run(quick=True, out=out_dir, seed=0)
  saved = json.loads((out_dir / "bench_sweep.json").read_text())
  assert (out_dir / "bench_sweep.png").stat().st_size > 0
  assert saved["claim_held"] is None and saved == record
  (row,) = saved["metrics"]["table"]
  for key in ("vmapped_s", "sequential_s", "speedup", "vmapped_end_to_end_s",
              "sequential_end_to_end_s", "speedup_end_to_end"):
    assert math.isfinite(row[key]) and row[key] > 0, key
  assert row["speedup"] == row["sequential_s"] / row["vmapped_s"]
  assert 0.0 <= row["best_test_accuracy"] <= 1.0
