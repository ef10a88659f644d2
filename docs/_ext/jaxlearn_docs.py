"""Sphinx extension of the jaxlearn documentation: pages generated from the registry.

At every build it

- writes one page per family, `docs/api/<family>.rst`, from `jaxlearn.registry.all_methods()`:
  every method (slug, kind, paper, notes on deviations, the module's docstring with its
  equations) and the API of each of its public symbols, then the family's other public names.
  A method added to the registry appears without editing the docs;
- fills the markers of `docs/index.md` (the README's two commands, the table of every method,
  the table of contents; `docs/reproductions.md` is listed only when it exists);
- makes backticked text in docstrings a cross-reference when it reads as a Python name (into
  jaxlearn, or into the optax, flax, jax and NumPy documentation), and inline code otherwise;
- links names of optax, flax, jax and NumPy to their documentation without downloading any
  inventory (the build works offline);
- documents the Linen twins under their public names (`jaxlearn.nn.linen.WSConv`, not "alias of
  LinenWSConv") and NNX modules with their `__init__` arguments (not the metaclass's `*args`).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

from docutils import nodes, utils
from sphinx.application import Sphinx
from sphinx.domains.python import PyXRefRole

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent


@dataclasses.dataclass(frozen=True)
class Family:
  """One page of the API reference."""

  name: str  # the second component of the records' modules: jaxlearn.<name>.<module>
  title: str
  intro: str
  packages: tuple[str, ...] = ()  # whose __all__ the page documents besides the records
  extra: tuple[str, ...] = ()  # further public symbols (in submodules) documented on the page


FAMILIES = (
    Family("optim", "Optimizers and transforms",
           "Optax ``GradientTransformation``\\ s: optimizers (a ``scale_by_<name>`` transform and "
           "an alias with the learning rate and decoupled weight decay) and gradient "
           "transformations to ``optax.chain``.",
           ("jaxlearn.optim",)),
    Family("nn", "Layers",
           "Flax layers: a functional core, an NNX class (``jaxlearn.nn``) and its Linen twin "
           "(``jaxlearn.nn.linen``).",
           ("jaxlearn.nn", "jaxlearn.nn.linen")),
    Family("losses", "Losses and regularizers",
           "Pure functions of logits and labels (integer labels, one-hot or soft targets, "
           "per-example weights).",
           ("jaxlearn.losses",)),
    Family("train", "Training",
           "Training steps, the vmapped training loop, sweeps, meshes, checkpoints and the "
           "experiment helpers.",
           ("jaxlearn.train",),
           ("jaxlearn.train.sweep.sweep", "jaxlearn.train.parallel.fsdp_specs")),
    Family("local", "Layer-local rules",
           "Layer-local learning: per-block objectives with ``jax.lax.stop_gradient`` between "
           "blocks, one jitted step.",
           ("jaxlearn.local",)),
    Family("diagnostics", "Diagnostics", "Tools to study training.", ("jaxlearn.diagnostics",)),
    Family("data", "Datasets", "Small datasets that need no download.", ("jaxlearn.data",)),
    Family("experiments", "Experiments", "Experiments registered as methods of their own."),
)

# Where the names of other libraries are documented (no inventory is downloaded).
OPTAX = "https://optax.readthedocs.io/en/latest/"
FLAX = "https://flax.readthedocs.io/en/latest/"
JAX = "https://docs.jax.dev/en/latest/"
NUMPY = "https://numpy.org/doc/stable/reference/generated/"
# optax's API pages, by the module that defines a name (longest prefix wins).
OPTAX_PAGES = {
    "optax._src.alias": "api/optimizers.html",
    "optax._src.transform": "api/transformations.html",
    "optax._src.base": "api/transformations.html",
    "optax._src.factorized": "api/transformations.html",
    "optax.transforms._clipping": "api/transformations.html",
    "optax.transforms._adding": "api/transformations.html",
    "optax.transforms._accumulation": "api/transformations.html",
    "optax.transforms._constraining": "api/transformations.html",
    "optax.transforms._combining": "api/combining_optimizers.html",
    "optax.transforms._conditionality": "api/optimizer_wrappers.html",
    "optax.transforms._masking": "api/optimizer_wrappers.html",
    "optax._src.lookahead": "api/optimizer_wrappers.html",
    "optax._src.wrappers": "api/optimizer_wrappers.html",
    "optax.schedules": "api/optimizer_schedules.html",
    "optax._src.update": "api/apply_updates.html",
    "optax._src.numerics": "api/utilities.html",
    "optax._src.utils": "api/utilities.html",
    "optax.losses": "api/losses.html",
    "optax.contrib": "api/contrib.html",
    "optax.projections": "api/projections.html",
}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


# --- names of other libraries --------------------------------------------------------------------


def _import(path: str) -> Any:
  """The object at a dotted path, or None. Attributes win over submodules of the same name:
  `jaxlearn.optim.lion` is the function that `jaxlearn.optim` exports, not the module."""
  parent, _, name = path.rpartition(".")
  if parent:
    owner = _import(parent)
    if owner is not None and hasattr(owner, name):
      return getattr(owner, name)
  try:
    return importlib.import_module(path)
  except Exception:  # noqa: BLE001 - any import failure means "not importable here"
    return None


def external_url(target: str) -> str | None:
  """The documentation URL of an optax, flax, jax or NumPy name, or None."""
  root = target.split(".")[0]
  if root == "optax":
    name = target.split(".")[-1]
    public = f"optax.{name}" if "._" in target and hasattr(_import("optax"), name) else target
    obj = _import(public)
    module = getattr(inspect.getmodule(obj), "__name__", "") if obj is not None else ""
    pages = [p for p in OPTAX_PAGES if module == p or module.startswith(p + ".")]
    if pages:
      return f"{OPTAX}{OPTAX_PAGES[max(pages, key=len)]}#{public}"
    if name in vars(_import("optax._src.base") or object):  # the types: Updates, Params...
      return f"{OPTAX}{OPTAX_PAGES['optax._src.base']}#optax.{name}"
    return f"{OPTAX}search.html?q={public}"
  if root == "flax":
    return f"{FLAX}search.html?q={target}"
  if root in ("jax", "jaxlib"):
    if "._" in target or root == "jaxlib":
      name = target.split(".")[-1]
      if hasattr(_import("jax.sharding"), name):  # jax._src.mesh.Mesh is jax.sharding.Mesh
        return f"{JAX}jax.sharding.html#jax.sharding.{name}"
      if not hasattr(_import("jax"), name):
        return f"{JAX}search.html?q={name}"
      target = f"jax.{name}"  # jax.Array is jaxlib._jax.Array
    if inspect.ismodule(_import(target)):
      return f"{JAX}{target}.html"
    return f"{JAX}_autosummary/{target}.html"
  if root in ("numpy", "np"):
    return f"{NUMPY}numpy.{target.split('.', 1)[1]}.html" if "." in target else None
  return None


def public_paths() -> dict[int, str]:
  """id(object) -> its public dotted path, for every name the family packages export."""
  paths: dict[int, str] = {}
  for family in FAMILIES:
    for package in family.packages:
      module = importlib.import_module(package)
      for name in getattr(module, "__all__", ()):
        paths.setdefault(id(getattr(module, name)), f"{package}.{name}")
  return paths


def _missing_reference(app, env, node, contnode):
  if node.get("refdomain") != "py":
    return None
  target = node.get("reftarget", "")
  if target.startswith("jaxlearn."):  # e.g. jaxlearn.data._dataset.Dataset in a signature
    obj = _import(target)
    public = None if obj is None else app._jaxlearn_public.get(id(obj))  # noqa: SLF001
    if public is None or public == target:
      return None
    return env.domains["py"].resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], public, node, contnode)
  url = external_url(target)
  if url is None:
    return None
  reference = nodes.reference("", "", internal=False, refuri=url, reftitle=node["reftarget"])
  reference += contnode
  return reference


_PY_OBJ = PyXRefRole()


def code_role(name, rawtext, text, lineno, inliner, options=None, content=None):
  """The default role: a Python cross-reference for `jaxlearn.optim.adamp` or `adamp()`, inline
  code for anything else (`w <- w - lr * g`)."""
  plain = utils.unescape(text)
  target = plain[:-2] if plain.endswith("()") else plain
  if _NAME.fullmatch(target):
    title = plain if target == plain else f"{plain} <{target}>"
    return _PY_OBJ("py:obj", rawtext, title, lineno, inliner, options or {}, content or [])
  return [nodes.literal(rawtext, plain)], []


# --- the generated pages -------------------------------------------------------------------------


def _escape(text: str) -> str:
  """Plain text as reStructuredText: markup characters escaped, `backticked` spans as code."""
  parts = " ".join(text.split()).split("`")
  out = []
  for i, part in enumerate(parts):
    if i % 2 == 1 and i < len(parts) - 1 and part.strip():
      out.append(f"\\ ``{part.strip()}``\\ ")
    else:
      if i % 2 == 1:  # an unmatched backtick, or an empty pair
        part = "`" + part + ("`" if i < len(parts) - 1 else "")
      out.append(re.sub(r"([\\*_|`<>\[\]])", r"\\\1", part))
  return "".join(out)


def paper_url(reference: str) -> str | None:
  match = re.fullmatch(r"(?:arXiv:)?(\d{4}\.\d{4,5})(v\d+)?", reference.strip())
  if match:
    return f"https://arxiv.org/abs/{match.group(1)}"
  if reference.startswith(("http://", "https://")):
    return reference
  return None


def _paper(method) -> str:
  url = paper_url(method.reference)
  title = _escape(method.title)
  return f"`{title} <{url}>`__ ({_escape(method.reference)})" if url else (
      f"{title} ({_escape(method.reference)})")


def _short(symbol: str) -> str:
  return symbol.removeprefix("jaxlearn.")


def _symbol_link(symbol: str) -> str:
  if symbol.startswith("jaxlearn."):
    return f":py:obj:`{_short(symbol)} <{symbol}>`"
  url = external_url(symbol)
  return f"`{symbol} <{url}>`__" if url else f"``{symbol}``"


def _autodoc(symbol: str) -> list[str]:
  obj = _import(symbol)
  if inspect.isclass(obj):
    lines = [f".. autoclass:: {symbol}"]
    is_tuple = issubclass(obj, tuple)
    if not is_tuple and not issubclass(obj, BaseException):
      lines += ["   :members:"]
      # Fields are documented by the docstring's Attributes section (napoleon), not as members.
      fields = list(vars(obj).get("__annotations__", {}))
      if dataclasses.is_dataclass(obj):
        fields += [field.name for field in dataclasses.fields(obj)]
      if fields:
        lines += ["   :exclude-members: " + ", ".join(dict.fromkeys(fields))]
      if "__call__" in vars(obj) and getattr(obj.__call__, "__doc__", None):
        lines += ["   :special-members: __call__"]
  elif callable(obj):
    lines = [f".. autofunction:: {symbol}"]
  else:
    lines = [f".. autodata:: {symbol}", "   :annotation:"]
  return lines + [""]


def _family_of(method) -> str:
  return method.module.split(".")[1] if method.module.count(".") >= 1 else method.module


def _method_label(slug: str) -> str:
  return f"method-{slug}"


def _canonical(methods) -> dict[str, str]:
  """symbol -> the slug whose section documents it (each symbol is documented once: by the
  method whose module defines it, else by the first method that lists it)."""
  canonical: dict[str, str] = {}
  for method in methods:
    for symbol in method.symbols:
      if symbol.startswith("jaxlearn.") and symbol not in canonical:
        obj = _import(symbol)
        if getattr(inspect.getmodule(obj), "__name__", None) == method.module:
          canonical[symbol] = method.slug
  for method in methods:
    for symbol in method.symbols:
      if symbol.startswith("jaxlearn."):
        canonical.setdefault(symbol, method.slug)
  return canonical


def _heading(text: str, char: str, overline: bool = False) -> list[str]:
  rule = char * max(len(text), 4)
  return ([rule] if overline else []) + [text, rule, ""]


def _method_section(method, canonical: dict[str, str], reproductions: bool) -> list[str]:
  lines = [f".. _{_method_label(method.slug)}:", ""]
  lines += _heading(method.slug.replace("_", "\\_"), "-")
  lines += [f":Kind: {method.kind}", f":Paper: {_paper(method)}"]
  lines += [":Symbols: " + ", ".join(_symbol_link(s) for s in method.symbols)]
  if method.experiment:
    name = Path(method.experiment).stem
    experiment = f"``{method.experiment}`` (``jaxlearn run {name}``)"
    if reproductions:  # the page's section of the method (MyST heading -> docutils id)
      experiment += f"; `verdict <../reproductions.html#{nodes.make_id(method.slug)}>`__"
    lines += [f":Experiment: {experiment}"]
  if method.update_extras:
    lines += [":Extra update arguments: " + ", ".join(f"``{e}``" for e in method.update_extras)
              + " (see :doc:`/conventions`)"]
  if method.tests:
    lines += [":Tests: " + ", ".join(f"``{t}``" for t in method.tests)]
  lines += [""]
  if method.notes:
    lines += [".. admonition:: Notes on deviations", "", f"   {_escape(method.notes)}", ""]
  lines += [f".. automodule:: {method.module}", "   :no-index:", ""]
  documented = [s for s in method.symbols
                if s.startswith("jaxlearn.") and canonical.get(s) == method.slug]
  # The parts the method is built from, each with its own module documentation (equations).
  parts = [getattr(inspect.getmodule(_import(s)), "__name__", "") for s in documented]
  for module in dict.fromkeys(parts):
    if module and module != method.module and not module.rpartition(".")[2].startswith("_"):
      lines += [f".. rubric:: {module}", "", f".. automodule:: {module}", "   :no-index:", ""]
  for symbol in documented:
    lines += _autodoc(symbol)
  elsewhere = [s for s in method.symbols
               if s.startswith("jaxlearn.") and canonical.get(s) != method.slug]
  if elsewhere:
    lines += ["Also part of this method, documented with "
              + ", ".join(f":ref:`{canonical[s]} <{_method_label(canonical[s])}>`"
                          for s in dict.fromkeys(elsewhere)) + ": "
              + ", ".join(_symbol_link(s) for s in elsewhere) + ".", ""]
  return lines


def _family_page(family: Family, methods, canonical, reproductions: bool) -> list[str]:
  lines = _heading(family.title, "=", overline=True)
  lines += [family.intro, ""]
  if methods:
    lines += [".. list-table::", "   :header-rows: 1", "   :widths: 20 12 68", "",
              "   * - method", "     - kind", "     - paper"]
    for method in methods:
      lines += [f"   * - :ref:`{method.slug} <{_method_label(method.slug)}>`",
                f"     - {method.kind}", f"     - {_paper(method)}"]
    lines += [""]
  for method in methods:
    lines += _method_section(method, canonical, reproductions)
  others = []
  for package in family.packages:
    module = importlib.import_module(package)
    others += [f"{package}.{name}" for name in getattr(module, "__all__", ())]
  others += list(family.extra)
  others = [s for s in dict.fromkeys(others) if s not in canonical]
  if others:
    if methods:
      lines += _heading("Other public API", "-")
      lines += ["Shared pieces of the family that belong to no single method.", ""]
    else:
      lines += _heading("API", "-")
    for symbol in others:
      lines += _autodoc(symbol)
  return lines


def generate(docs: Path = DOCS) -> dict[str, Any]:
  """Writes the family pages; returns what the index needs (pages, methods, canonical)."""
  from jaxlearn import registry

  methods = registry.all_methods()
  canonical = _canonical(methods)
  reproductions = (docs / "reproductions.md").is_file()
  known = {f.name: f for f in FAMILIES}
  by_family: dict[str, list] = {}
  for method in methods:
    by_family.setdefault(_family_of(method), []).append(method)
  families = list(FAMILIES) + [
      Family(name, name.replace("_", " ").capitalize(), "") for name in by_family
      if name not in known
  ]
  api = docs / "api"
  api.mkdir(exist_ok=True)
  pages = []
  for family in families:
    family_methods = by_family.get(family.name, [])
    if not family_methods and not family.packages:
      continue
    text = "\n".join(_family_page(family, family_methods, canonical, reproductions)) + "\n"
    path = api / f"{family.name}.rst"
    if not path.is_file() or path.read_text() != text:  # unchanged pages are not rebuilt
      path.write_text(text)
    pages.append((family, family_methods))
  written = {f"{family.name}.rst" for family, _ in pages}
  for stale in api.glob("*.rst"):
    if stale.name not in written:
      stale.unlink()
  return {"pages": pages, "methods": methods, "reproductions": reproductions}


# --- the index -----------------------------------------------------------------------------------


def readme_commands(readme: Path = ROOT / "README.md") -> list[str]:
  """The README's two commands (the first two bash blocks of its "Set up" section)."""
  text = readme.read_text()
  section = text.split("## Set up", 1)[-1].split("\n## ", 1)[0]
  blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
  if len(blocks) < 2:
    raise ValueError("README.md: the 'Set up' section no longer has its two bash commands")
  return [block.strip() for block in blocks[:2]]


def _md_cell(text: str) -> str:
  return text.replace("|", "\\|")


def index_markers(info: dict[str, Any]) -> dict[str, str]:
  run, test = readme_commands()
  commands = "\n".join([
      "Install and run the main job (trains one MLP on the bundled digits data with several "
      "optimizers and writes `results/quickstart.json` and `results/quickstart.png`):", "",
      "```bash", run, "```", "",
      "Install with the test extras and run the test suite:", "",
      "```bash", test, "```",
  ])
  rows = ["| method | kind | paper | page |", "|---|---|---|---|"]
  for family, methods in info["pages"]:
    for m in methods:
      url = paper_url(m.reference)
      paper = f"[{_md_cell(m.title)}]({url})" if url else _md_cell(m.title)
      rows.append(f"| {{ref}}`{m.slug} <{_method_label(m.slug)}>` | {m.kind} | {paper} "
                  f"({_md_cell(m.reference)}) | {{doc}}`{family.title} <api/{family.name}>` |")
  entries = ["conventions", *(f"api/{family.name}" for family, _ in info["pages"])]
  if info["reproductions"]:
    entries.append("reproductions")
  entries.append("contributing")
  toctree = "\n".join(["```{toctree}", ":maxdepth: 1", ":caption: Contents", "", *entries, "```"])
  return {
      "<!-- jaxlearn_docs: commands -->": commands,
      "<!-- jaxlearn_docs: methods -->": "\n".join(rows),
      "<!-- jaxlearn_docs: toctree -->": toctree,
  }


def _public_class_names() -> dict[type, str]:
  """Classes exported under another name than their own (the Linen twins: `LinenWSConv` is
  `jaxlearn.nn.linen.WSConv`) -> the exported name."""
  renamed = {}
  for family in FAMILIES:
    for package in family.packages:
      module = importlib.import_module(package)
      for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if inspect.isclass(obj) and obj.__name__ != name:
          renamed[obj] = name
  return renamed


def _rename_classes(app: Sphinx) -> None:
  # autodoc shows a class documented under another name than its __name__ as "alias of ...",
  # without its docstring or signature; the public name is the one users import, so the class
  # carries it for the duration of the build (restored at build-finished).
  app._jaxlearn_renamed = {cls: cls.__name__ for cls in _public_class_names()}  # noqa: SLF001
  for cls, name in _public_class_names().items():
    cls.__name__ = name


def _restore_classes(app: Sphinx, exception) -> None:
  for cls, name in getattr(app, "_jaxlearn_renamed", {}).items():
    cls.__name__ = name


def _class_signature(app, what, name, obj, options, signature, return_annotation):
  """NNX modules show their metaclass's `(*args, **kwargs)`; show `__init__`'s arguments."""
  if what != "class" or not inspect.isclass(obj) or "__init__" not in vars(obj):
    return None
  if signature is None or "*args" not in signature or "**kwargs" not in signature:
    return None
  from sphinx.util.inspect import stringify_signature

  init = inspect.signature(obj.__init__)
  init = init.replace(parameters=list(init.parameters.values())[1:])
  return stringify_signature(init, show_return_annotation=False), return_annotation


def _builder_inited(app: Sphinx) -> None:
  _rename_classes(app)
  app._jaxlearn_docs = generate(Path(app.srcdir))  # noqa: SLF001
  app._jaxlearn_public = public_paths()  # noqa: SLF001


def _source_read(app: Sphinx, docname: str, source: list[str]) -> None:
  if docname != app.config.root_doc:
    return
  for marker, text in index_markers(app._jaxlearn_docs).items():  # noqa: SLF001
    if marker not in source[0]:
      raise ValueError(f"docs/index.md lacks the marker {marker}")
    source[0] = source[0].replace(marker, text)


def _env_get_outdated(app, env, added, changed, removed):
  return [app.config.root_doc]  # the index reads the README and the registry: always reread it


def setup(app: Sphinx) -> dict[str, Any]:
  app.add_role("jaxlearn-code", code_role)
  app.connect("builder-inited", _builder_inited)
  app.connect("source-read", _source_read)
  app.connect("env-get-outdated", _env_get_outdated)
  app.connect("missing-reference", _missing_reference)
  app.connect("autodoc-process-signature", _class_signature)
  app.connect("build-finished", _restore_classes)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
