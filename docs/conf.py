"""Sphinx configuration: Markdown pages (MyST), the API from the docstrings (autodoc), the
command line from the argparse parser (sphinx-argparse). Built by .ci/run with -W -n."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attempt_ledger

project = "attempt_ledger"
author = "The attempt_ledger authors"
copyright = "2026, The attempt_ledger authors"
release = attempt_ledger.__version__  # the version's one source is setup.cfg
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinxarg.ext"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"attempt_ledger {release}"
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # page sections start at ## under the page's # title

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": True}

# Nitpicky: every cross-reference must resolve, except to names documented elsewhere (the
# standard library and the dependencies: there is no network for intersphinx in CI) and to
# private helpers that public signatures name.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(os|pathlib|collections\.abc|typing|asyncio|threading|multiprocessing)\..*"),
    (r"py:.*", r"(psycopg|psycopg_pool|attrs|filelock)(\..*)?"),
    (r"py:.*", r"(attempt_ledger\.)?_.*|.*\._[a-z].*"),
    (r"py:class", r"(Path|Any|TextIO|Callable|Iterable|Iterator|AsyncIterator|Awaitable)"),
    (r"py:class", r"(PathLike|Event|AbstractEventLoop|Connection|AsyncConnection|ConnectionPool)"),
    (r"py:class", r"(AsyncConnectionPool|TracebackType|Self|Literal|Sequence|Mapping)"),
    (r"py:class", r"(NoneType|BaseException|Exception|RuntimeError|OSError|ValueError)"),
    (r"py:class", r"(TypeError|TimeoutError|KeyError|LookupError|int|str|bytes|float|bool)"),
    (r"py:obj", r"(None|True|False)"),
    (r"py:class", r"(list|dict)\[.*JSONValue\]"),  # the alias's own recursive definition
    (r"py:func", r"json\..*"),
]

_logger = logging.getLogger(__name__)
_PARAM = re.compile(r"\s*:param (?:[^:]+ )?(\w+):")


def _require_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    # A public name with no docstring fails the build (-W), so the reference cannot have holes.
    if not any(line.strip() for line in lines) and not name.split(".")[-1].startswith("_"):
        _logger.warning("%s %s has no docstring", what, name, type="autodoc", subtype="missing")


def _require_params(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    # A docstring that documents its parameters (":param x:") must document all of them.
    documented = {m[1] for m in (_PARAM.match(line) for line in lines) if m}
    if not documented or what not in ("function", "method", "class"):
        return
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    wanted = {
        p.name
        for p in signature.parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    for missing in sorted(wanted - documented):
        _logger.warning(
            "%s %s: parameter %r is not documented",
            what,
            name,
            missing,
            type="autodoc",
            subtype="param",
        )


def _resolve_short_name(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    # attempt_ledger.aio and .postgres say :class:`AttemptLedger`: the package's own name.
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or target.startswith(("attempt_ledger.", "~")):
        return None
    return env.get_domain("py").resolve_xref(
        env,
        node["refdoc"],
        app.builder,
        node["reftype"],
        f"attempt_ledger.{target}",
        node,
        contnode,
    )


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-docstring", _require_docstring)
    app.connect("autodoc-process-docstring", _require_params)
    app.connect("missing-reference", _resolve_short_name)
