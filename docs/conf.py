"""Sphinx configuration of the xda-hybrid documentation.

Build (from the repository root, warnings are errors):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The tutorials are MyST-markdown notebooks executed by myst-nb during the build
(``nb_execution_mode``; set ``XDA_DOCS_EXECUTE=off`` to skip execution while
editing text, ``force`` to re-run everything).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import sphinx_autosummary_accessors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xda_hybrid  # noqa: E402  (registers the ``Dataset.da4d`` accessor for autodoc)

project = "xda-hybrid"
author = "xda-hybrid developers"
copyright = "2026, xda-hybrid developers"
release = xda_hybrid.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autosummary_accessors",
]

templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
root_doc = "index"

# ---------------------------------------------------------------- autodoc / napoleon
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False   # no torch.nn.Module boilerplate on every network
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True          # "Attributes" sections as field lists (no duplicate descriptions)
napoleon_use_rtype = False
napoleon_preprocess_types = False
# "Shapes" (network docstrings) and "Methods" (the accessor's summary) as plain titled sections
napoleon_custom_sections = ["Shapes", "Methods"]

# ---------------------------------------------------------------- MyST / myst-nb
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("XDA_DOCS_EXECUTE", "cache")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_execution_excludepatterns: list[str] = []

# ---------------------------------------------------------------- HTML
html_theme = "furo"
html_title = f"xda-hybrid {release}"
html_static_path = ["_static"]


# ---------------------------------------------------------------- docstring plain-text idioms
# The package's docstrings write shapes and norms as plain text, e.g. ``(batch, T, C, *space)`` or
# ``|f|·dt`` outside double back-quotes.  In reStructuredText a lone ``*name`` opens an emphasis and
# ``|name|`` is a substitution: escape both (outside inline literals) so that they print as written.
import re  # noqa: E402

_LITERAL = re.compile(r"(``.*?``|`[^`]*`)")
_STAR = re.compile(r"(?<![\w*\\`])\*(?=[A-Za-z_(])(?![^\s*]*\*(?!\w))")
_STARS = re.compile(r"(?<![\w*\\`])\*\*(?=[A-Za-z_(])(?![^\s*]*\*\*(?!\w))")
_BAR = re.compile(r"(?<![\w|\\])\|([^|\s][^|]*?)\|(?![\w|])")


def _escape_plain_text(line: str) -> str:
    parts = _LITERAL.split(line)
    for i in range(0, len(parts), 2):  # even items are outside literals / roles
        parts[i] = _BAR.sub(r"\\|\1\\|", _STAR.sub(r"\\*", _STARS.sub(r"\\*\\*", parts[i])))
    return "".join(parts)


def _process_docstring(app, what, name, obj, options, lines):
    lines[:] = [_escape_plain_text(line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _process_docstring)
