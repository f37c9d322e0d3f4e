"""A Sphinx extension of the book: two corrections to the theme's scripts, so that a reader's browser console
stays free of errors (the browser test checks it), and a style sheet of its own.

* sphinx-thebe 0.3.1 adds its inline configuration script twice to every page (once with the file name
  ``None``, once with ``""``: the setup of its ``env-before-read-docs`` handler runs twice under Jupyter Book),
  and the second ``const THEBE_JS_URL`` is a SyntaxError. Identical scripts are kept once.
* What a notebook prints wraps at the text column (``static/prrt.css``) instead of running past it.
* On a reader's first visit (nothing in ``localStorage``) sphinx-book-theme sets the page's colour mode to
  ``""``, which pydata-sphinx-theme reports as "Got invalid theme mode" before it falls back to ``auto``; an
  empty mode is set to ``auto`` first.
"""

from __future__ import annotations

from pathlib import Path

#: The extension's own style sheet (``prrt.css``).
STATIC = Path(__file__).resolve().parent / "static"

EMPTY_MODE_TO_AUTO = 'if (!document.documentElement.dataset.mode) { document.documentElement.dataset.mode = "auto"; }'


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        # an inline script may come once with filename None and once with "" (and is then the same script)
        key = (str(getattr(script, "filename", script) or ""),
               tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def _add_static(app) -> None:
    app.config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("builder-inited", _add_static)
    app.add_css_file("prrt.css")
    app.add_js_file(None, body=EMPTY_MODE_TO_AUTO)
    app.connect("html-page-context", _unique_scripts, priority=100)  # early: Sphinx stops at the first handler that returns a value
    return {"parallel_read_safe": True, "parallel_write_safe": True}
