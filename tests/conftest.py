"""Shared pytest configuration."""

import os

# Tests run on CPU; keep XLA from grabbing every core per process under pytest-xdist.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
