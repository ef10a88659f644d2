"""The package surface: lazy subpackages, `__all__` in every public module, `py.typed`."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import jaxlearn

PACKAGE = Path(jaxlearn.__file__).parent


def _public_modules():
  for info in pkgutil.walk_packages([str(PACKAGE)], prefix="jaxlearn."):
    if not any(part.startswith("_") for part in info.name.split(".")):
      yield info.name


def test_subpackages_are_reachable_from_a_bare_import_without_importing_jax():
  code = ("import sys, jaxlearn; assert 'jax' not in sys.modules; "
          "print(sorted(set(dir(jaxlearn)) & {'optim', 'train', 'nn'})); jaxlearn.train.make_mesh")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "['nn', 'optim', 'train']"


def test_every_public_module_declares_all():
  missing = []
  for name in _public_modules():
    if name.startswith("jaxlearn.experiments"):  # scripts, not library modules
      continue
    module = importlib.import_module(name)
    if not hasattr(module, "__all__"):
      missing.append(name)
      continue
    for exported in module.__all__:
      assert hasattr(module, exported), f"{name}.__all__ names {exported!r}, which it lacks"
  assert not missing, f"modules without __all__: {missing}"


def test_the_package_is_typed():
  assert (PACKAGE / "py.typed").is_file()
