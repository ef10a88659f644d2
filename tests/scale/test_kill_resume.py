"""SIGKILL a training process mid-run, resume from its checkpoints, and get the same bits.

Three training processes: in the `scale` tier (`pytest -m scale`).
"""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.scale._subprocess import HERE, ROOT, clean_env, run_python

WORKER = str(HERE / "_train_worker.py")
TOTAL_STEPS = 240


def _finished_steps(directory):
  """Steps whose save completed (orbax renames a step's directory into place when done)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@pytest.mark.scale
def test_killed_run_resumes_to_bitwise_equal_parameters(tmp_path):
  checkpoints = tmp_path / "checkpoints"
  popen = lambda *args: subprocess.Popen(
      [sys.executable, WORKER, *args], env=clean_env(), cwd=ROOT, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
  )
  reference = popen(str(tmp_path / "reference.npz"))  # uninterrupted, no checkpoints
  victim = popen(str(tmp_path / "victim.npz"), "--checkpoint", str(checkpoints), "--slow", "0.4")
  try:
    deadline = time.monotonic() + 300
    while len(_finished_steps(checkpoints)) < 3:  # kill once at least 3 chunks are saved
      assert victim.poll() is None, f"worker exited early:\n{victim.stdout.read()}"
      assert time.monotonic() < deadline, "no checkpoint appeared in 300 s"
      time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
  finally:
    if victim.poll() is None:
      victim.kill()
  assert victim.returncode == -signal.SIGKILL
  assert not (tmp_path / "victim.npz").exists(), "the run finished before it was killed"
  saved = _finished_steps(checkpoints)
  assert saved and saved[-1] < TOTAL_STEPS, saved

  resumed = run_python(
      [WORKER, str(tmp_path / "resumed.npz"), "--checkpoint", str(checkpoints)], timeout=300
  )
  first_step = int(resumed.stdout.split("step ", 1)[1].split()[0])
  assert first_step > saved[0], f"the resumed run restarted from scratch:\n{resumed.stdout}"
  out, _ = reference.communicate(timeout=300)
  assert reference.returncode == 0, out

  want, got = np.load(tmp_path / "reference.npz"), np.load(tmp_path / "resumed.npz")
  assert sorted(want.files) == sorted(got.files)
  for name in want.files:  # parameters, optimizer state and the whole metric history
    assert want[name].dtype == got[name].dtype
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
