"""The documentation site: it builds without a warning, and documents every registered symbol.

The site is built once per session (about 25 s on two busy cores) into a temporary folder with
`docs/build.py`, the command the README gives and `.ci/run` runs. Skipped when the `docs` extra
(Sphinx, MyST, furo) is not installed; `.ci/run` installs it and runs this file after the tiers.
"""

from __future__ import annotations

import html
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxlearn import registry

# Sphinx and MyST deprecate their own internals between releases; not this project's concern.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::PendingDeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

for _module in ("sphinx", "myst_parser", "furo"):
  if importlib.util.find_spec(_module) is None:
    pytest.skip(f"the docs extra is not installed ({_module}): pip install -e '.[docs]'",
                allow_module_level=True)


def _load(name: str, path: Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # before it runs: dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
  """(Sphinx's exit status, the built html folder).

  Built in a subprocess: autodoc rewrites the defaults of the functions it documents
  (`autodoc_preserve_defaults`), in place, so that later tests in this process would read
  Sphinx's placeholders (`inject_hyperparams` reads the defaults).
  """
  out = tmp_path_factory.mktemp("docs")
  build = subprocess.run([sys.executable, str(DOCS / "build.py"), "--out", str(out)],
                         capture_output=True, text=True, check=False)
  print(build.stdout, build.stderr, sep="\n")  # Sphinx's warnings, shown if a test fails
  return build.returncode, out / "html"


@pytest.fixture(scope="module")
def pages(site):
  _, html_dir = site  # with --keep-going, warnings still leave a site to check
  if not (html_dir / "index.html").is_file():
    pytest.fail("the documentation build failed; rerun `python docs/build.py` to see why")
  return {p.relative_to(html_dir).as_posix(): p.read_text() for p in html_dir.rglob("*.html")}


def _registered_symbols() -> list[str]:
  symbols = [s for m in registry.all_methods() for s in m.symbols if s.startswith("jaxlearn.")]
  return list(dict.fromkeys(symbols))


def test_the_site_builds_with_warnings_as_errors(site):
  status, html_dir = site
  assert status == 0, "Sphinx reported warnings or errors (printed above); see docs/build.py"
  assert (html_dir / "index.html").is_file()


def test_every_registered_symbol_has_an_anchor(pages):
  import jaxlearn.train

  symbols = _registered_symbols() + [f"jaxlearn.train.{n}" for n in jaxlearn.train.__all__]
  anchors = {a for text in pages.values() for a in re.findall(r'id="([^"]+)"', text)}
  missing = [s for s in symbols if s not in anchors]
  assert not missing, f"registered symbols without an entry in the built site: {missing}"
  # ... documented as what they are (a function shadowed by its module's name is a function).
  kinds = {symbol: kind for text in pages.values() for kind, symbol in re.findall(
      r'<dl class="py (\w+)">\s*<dt class="sig sig-object py" id="([^"]+)"', text)}
  for symbol in symbols:
    obj = registry.resolve(symbol)
    expected = "class" if inspect.isclass(obj) else "function" if callable(obj) else "data"
    assert kinds.get(symbol) in ({"class", "exception"} if expected == "class" else {expected}), (
        symbol, kinds.get(symbol))


def test_every_method_is_two_clicks_from_the_index(pages):
  """index -> the method's section, which holds its paper, its notes and its symbols' API."""
  index = pages["index.html"]
  links = dict(re.findall(r'<a class="reference internal" href="([^"#]+#[^"]+)">'
                          r'<span class="std std-ref">([^<]+)</span>', index))
  for method in registry.all_methods():
    target = next((href for href, text in links.items() if text == method.slug), None)
    assert target, f"the index does not link to {method.slug}"
    page, anchor = target.split("#")
    text = pages[page]
    start = text.index(f'id="{anchor}"')
    following = re.search(r'<section id="method-', text[start + 1:])
    section = text[start:start + 1 + following.start()] if following else text[start:]
    url = _extension().paper_url(method.reference)
    if url:
      assert html.escape(url) in section, (method.slug, url)
    for symbol in method.symbols:
      if symbol.startswith("jaxlearn."):
        assert symbol.rsplit(".", 1)[-1] in section, (method.slug, symbol)
    if method.experiment and "reproductions.html" in pages:
      verdict = re.search(r'href="\.\./reproductions\.html#([^"]+)"', section)
      assert verdict, f"{method.slug}: no link to its reproduction"
      assert f'id="{verdict.group(1)}"' in pages["reproductions.html"], method.slug


def _extension():
  extension = sys.modules.get("jaxlearn_docs")
  return extension or _load("jaxlearn_docs", DOCS / "_ext" / "jaxlearn_docs.py")


def test_the_index_shows_the_readme_commands(pages):
  readme = (ROOT / "README.md").read_text()
  section = readme.split("## Set up", 1)[1]
  commands = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)[:2]
  index = html.unescape(re.sub(r"<[^>]+>", "", pages["index.html"]))
  for command in commands:
    assert command in index


def test_the_reproductions_and_contributing_pages_are_included(pages):
  assert "contributing.html" in pages
  assert ("reproductions.html" in pages) == (DOCS / "reproductions.md").is_file()
  if "reproductions.html" in pages:
    shown = set(re.findall(r'src="(_images/[^"]+\.png)"', pages["reproductions.html"]))
    linked = set(re.findall(r"\(reproductions/([^)]+\.png)\)",
                            (DOCS / "reproductions.md").read_text()))
    assert len(shown) == len(linked)
