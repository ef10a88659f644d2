"""Sphinx configuration of the jaxlearn documentation.

Build (from the repository root): `python -m sphinx -W --keep-going -b html docs docs/_build/html`.
The family pages under `docs/api/` are generated from `jaxlearn.registry` at every build by the
`jaxlearn_docs` extension (`docs/_ext/jaxlearn_docs.py`); do not edit them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # the source checkout, also when jaxlearn is not installed

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # importing jaxlearn must not probe accelerators

import jaxlearn  # noqa: E402

project = "jaxlearn"
author = "the jaxlearn authors"
copyright = "the jaxlearn authors"  # noqa: A001
version = release = jaxlearn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "jaxlearn_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "README.md", "**/.ipynb_checkpoints"]
templates_path: list[str] = []

# Backticked text in docstrings: a cross-reference when it reads as a Python name (resolved into
# jaxlearn, or into the optax / flax / jax documentation), else inline code. See jaxlearn_docs.
default_role = "jaxlearn-code"

# Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False
add_module_names = True
python_use_unqualified_type_names = False

# Markdown pages (README-like pages, CONTRIBUTING, the reproductions page).
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# Offline build: no intersphinx (its inventories would be downloaded). Names from optax, flax and
# jax resolve to their documentation through jaxlearn_docs' missing-reference handler.

html_theme = "furo"
html_title = f"jaxlearn {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": True,
}
