"""The README's examples run as written, and its commands are the ones CI uses."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_has_examples():
  assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_example_runs(index):
  exec(compile(EXAMPLES[index], f"README example {index}", "exec"), {"__name__": "readme"})


def test_ci_runs_the_readme_test_command():
  ci = (ROOT / ".ci" / "run").read_text()
  assert "<!-- test-command:start -->" in README and "test-command:start" in ci
  block = README.split("<!-- test-command:start -->")[1].split("<!-- test-command:end -->")[0]
  command = [line for line in block.strip().splitlines() if not line.startswith("```")]
  assert len(command) == 1 and "pytest" in command[0]
  assert "python3 -m venv" in command[0] and ".[test,parity]" in command[0]
