"""Helpers for the tests that need fresh processes (device counts are fixed when jax starts)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def clean_env(**extra: str) -> dict[str, str]:
  """The current environment without settings that would change how jax starts."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "JAXLEARN_"))}
  env.update(extra)
  return env


def run_python(args: Sequence[str], *, timeout: float, env: dict | None = None, cwd=None):
  """Runs `python ARGS` to completion; fails the test with its output if it exits non-zero."""
  result = subprocess.run(
      [sys.executable, *args], capture_output=True, text=True, timeout=timeout,
      env=clean_env() if env is None else env, cwd=cwd or ROOT,
  )
  if result.returncode != 0:
    raise AssertionError(
        f"{' '.join(args)} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}"
        f"\n--- stderr ---\n{result.stderr[-6000:]}"
    )
  return result


def free_port() -> int:
  """A TCP port that was free a moment ago on localhost."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]
