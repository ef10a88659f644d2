"""The registry is complete and truthful: symbols import, files exist, titles match the papers'
abstracts, and every record lives beside its code."""

import inspect
import re
import tomllib
from pathlib import Path

import pytest

from jaxlearn import registry

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# Methods a user expects that are not in the catalogue's INDEX (each explained in its record's notes).
NOT_IN_INDEX = {"forward_forward"}

METHODS = registry.all_methods()
IDS = [m.slug for m in METHODS]


def test_slugs_are_unique():
  assert len(IDS) == len(set(IDS))


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_symbols_import(method):
  for symbol in method.symbols:
    obj = registry.resolve(symbol)
    assert callable(obj), symbol
    assert inspect.getdoc(obj), f"{symbol} has no docstring"


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_listed_files_exist(method):
  assert method.tests, f"{method.slug} lists no tests"
  for path in method.tests + ((method.experiment,) if method.experiment else ()):
    assert (ROOT / path).is_file(), f"{method.slug}: {path} does not exist"


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_optimizer_counterparts_name_registered_symbols(method):
  for symbol, torch_name in method.pytorch_optimizer.items():
    assert symbol in method.symbols
    assert re.fullmatch(r"[A-Za-z0-9_]+", torch_name)


@pytest.mark.skipif(not (SHARED / "catalogue").is_dir(), reason="shared/ catalogue not beside the repo")
@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_slug_and_title_come_from_the_catalogue(method):
  index = (SHARED / "catalogue" / "INDEX.md").read_text()
  seeds = " ".join(p.read_text() for p in (SHARED / "seeds").glob("*.txt"))
  if method.slug in NOT_IN_INDEX:
    assert method.notes, f"{method.slug} is not in INDEX.md and must say why in its notes"
    return
  assert f"`{method.slug}`" in index, f"{method.slug} is not a slug of INDEX.md"
  assert method.title in seeds, f"{method.slug}: title not found verbatim in the seed files"


def test_get_and_errors():
  assert registry.get(IDS[0]).slug == IDS[0]
  with pytest.raises(KeyError, match="did you mean|See"):
    registry.get(IDS[0] + "x")
  with pytest.raises(ValueError, match="kind must be one of"):
    registry.all_methods("optimiser")
  with pytest.raises(ValueError, match="kind must be one of"):
    registry.Method("x", "optimiser", "t", "r")
  with pytest.raises(ValueError, match="kind must be one of"):
    registry.record(slug="x", kind="optimiser", title="t", reference="r")


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_record_lives_beside_its_code_and_symbols_are_derived(method):
  import importlib

  module = importlib.import_module(method.module)
  assert module.RECORD.method.slug == method.slug
  # The module's own public names come first, under the path users import them from.
  own = [registry.resolve(s) for s in method.symbols[: len(module.__all__)]]
  assert own == [getattr(module, name) for name in module.__all__]
  assert method.symbols[0].startswith("jaxlearn."), "the jaxlearn symbol is shown first"
  assert method.tests[0].startswith("tests/"), method.tests


def test_update_extras_use_the_convention_names():
  from jaxlearn.optim import EXTRA_ARG_NAMES

  for method in METHODS:
    assert set(method.update_extras) <= set(EXTRA_ARG_NAMES), method.slug
  assert registry.get("normalized_lr_gd").update_extras == ("margins",)


def test_write_readme_table_rewrites_only_between_the_markers(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("intro\n<!-- methods:start -->\nstale\n<!-- methods:end -->\noutro\n")
  assert registry.write_readme_table(readme)
  text = readme.read_text()
  assert text.startswith("intro\n") and text.endswith("\noutro\n")
  assert registry.markdown_table() in text and "stale" not in text
  assert not registry.write_readme_table(readme)  # already up to date
  readme.write_text("no markers")
  with pytest.raises(ValueError, match="markers"):
    registry.write_readme_table(readme)


def test_readme_table_is_generated_from_the_registry():
  readme = (ROOT / "README.md").read_text()
  match = re.search(r"<!-- methods:start -->\n(.*?)\n<!-- methods:end -->", readme, re.S)
  assert match, "README.md lacks the <!-- methods:start/end --> block"
  assert match.group(1).strip() == registry.markdown_table().strip(), (
      "README method table is stale: regenerate it with `jaxlearn list --markdown --write`"
  )


def test_pyproject_lists_every_subpackage():
  config = tomllib.loads((ROOT / "pyproject.toml").read_text())
  listed = set(config["tool"]["setuptools"]["packages"])
  found = {
      ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jaxlearn").rglob("__init__.py")
  }
  assert found - {"jaxlearn.experiments"} <= listed
  assert "jaxlearn.experiments" in listed
