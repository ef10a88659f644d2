"""The README's examples run as written, and its commands are the ones CI uses."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.S)
# What an example shows: text that picks the example -> (a name it defines, a lower bound).
CLAIMS = {
    # Forward-Forward learns digits: far above chance (0.1); it prints about 0.95.
    "local.ForwardForward(": ("accuracy", 0.8),
    # A linear model under F-GR on digits with 20% label noise: far above chance.
    "finite_difference_grad_reg(": ("test_accuracy", 0.8),
}


def test_readme_has_examples():
  assert len(EXAMPLES) >= 5


def test_every_claim_has_its_example():
  for key in CLAIMS:
    assert sum(key in example for example in EXAMPLES) == 1, key


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_example_runs(index):
  names = {"__name__": "readme"}
  exec(compile(EXAMPLES[index], f"README example {index}", "exec"), names)
  for key, (name, bound) in CLAIMS.items():
    if key in EXAMPLES[index]:
      value = float(names[name])
      assert value > bound, f"README example {index} ({key}): {name} = {value:.3f} <= {bound}"


def test_ci_runs_the_readme_test_command():
  ci = (ROOT / ".ci" / "run").read_text()
  assert "<!-- test-command:start -->" in README and "test-command:start" in ci
  block = README.split("<!-- test-command:start -->")[1].split("<!-- test-command:end -->")[0]
  command = [line for line in block.strip().splitlines() if not line.startswith("```")]
  assert len(command) == 1 and "pytest" in command[0]
  assert "python3 -m venv" in command[0] and ".[test,parity]" in command[0]
