"""Sphinx configuration of the discrete-diffusion documentation (``make docs``; builds offline, warnings as errors).

The pages are the Markdown files of docs/ (MyST), an API reference generated from the docstrings (autodoc) and
an executed gallery of examples (sphinx-gallery, sources in examples/): an example that fails breaks the build.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import discrete_diffusion  # noqa: E402

project = "discrete-diffusion"
author = "discrete-diffusion developers"
copyright = "2026, discrete-diffusion developers"  # noqa: A001
release = discrete_diffusion.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip",
                    "auto_examples/*.json", "auto_examples/*.md5", "gallery_scraper.py"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
# Pages link to files of the repository outside docs/ (benchmarks, tests, sources): those are not documents.
suppress_warnings = ["myst.xref_missing"]

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_mock_imports: list[str] = []
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/example_",
    "image_scrapers": ("gallery_scraper",),  # gallery_scraper.py
    "reset_modules": (),                       # no matplotlib: the examples draw with Pillow
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "plot_gallery": os.environ.get("DDIFF_DOCS_EXAMPLES", "1") != "0",
}

html_theme = "furo"
html_title = f"discrete-diffusion {release}"


# --------------------------------------------------------------------------- docstrings
# The docstrings are plain text with ``literal`` spans and tensor shapes such as ``(B, *sites)`` written bare; a
# bare asterisk would open reST emphasis. Escape every asterisk outside literal spans (``**`` kept as strong).
_LITERAL = re.compile(r"(``.+?``|`[^`]+`_?|:\w+:`[^`]+`)")


def _escape_stars(line: str) -> str:
    bullet = re.match(r"^\s*\* ", line)
    if bullet:                                      # a "* " list item keeps its marker
        return bullet.group(0) + _escape_stars(line[bullet.end():])
    parts = _LITERAL.split(line)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"(?<![*\\])\*(?!\*)", r"\\*", parts[i])
        parts[i] = parts[i].replace("|", "\\|")   # |p - q| is an absolute value, not a substitution
        if parts[i].count("**") % 2:                # **options, not strong emphasis
            parts[i] = parts[i].replace("**", "\\*\\*")
    return "".join(parts)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


_ITEM = re.compile(r"^\s*([-*+]|\d+[.)]) ")
_STRUCTURE = re.compile(r"^\s*(:\w|\.\. |[A-Z][A-Za-z ]*:$)")


def _text_indent(line: str) -> int:
    """Where the text of a line starts (after a list marker for an item)."""
    m = _ITEM.match(line)
    return m.end() if m else _indent(line)


def _layout(lines: list[str]) -> list[str]:
    """Plain-text layout to reST: a blank line around lists written straight after prose, and an indented block
    straight after a line of prose (an equation or a table laid out in plain text) shown as written."""
    out: list[str] = []
    item: int | None = None        # indentation of the list item being continued
    i = 0
    while i < len(lines):
        line = lines[i]
        prev = out[-1] if out else ""
        if not line.strip():
            item = None
        elif _ITEM.match(line) and (item is None or _indent(line) <= item):
            if prev.strip() and item is None:
                out.append("")
            item = _indent(line)
        else:
            if item is not None and _indent(line) <= item:   # the list ended without a blank line
                out.append("")
                item, prev = None, ""
            if (prev.strip() and _indent(line) > _text_indent(prev) and not _STRUCTURE.match(prev)
                    and not prev.rstrip().endswith("::")):
                base = _text_indent(prev)
                out += ["", " " * base + ".. code-block:: text", ""]
                while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                    out.append(lines[i].replace("\\*", "*").replace("\\|", "|"))   # shown as written
                    i += 1
                out.append("")
                continue
        out.append(line)
        i += 1
    return out


def _plain_text_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = _layout([_escape_stars(line) for line in lines])


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _plain_text_docstring)
