"""Sphinx extension: fixes that keep every page of the site free of console errors and dead ends.

1. No duplicated inline scripts. Under Sphinx 7.4, scripts that extensions add
   with ``app.add_js_file(None, body=...)`` after the builder starts
   (sphinx-thebe's ``const THEBE_JS_URL = ...``, sphinx-togglebutton's
   selector) are emitted twice on every page, once as filename ``None`` and
   once as ``''``; the second ``const`` is a JavaScript SyntaxError in the
   console of every page. Each page's script list is de-duplicated here.
2. Launch buttons only on pages whose source is a notebook file.
   sphinx-book-theme adds the launch (rocket) menu to every page it counts as
   a notebook, MyST text notebooks such as intro.md included, and points
   Colab at ``<page>.md`` on GitHub, which Colab cannot open. The menu is
   removed from such pages, so every launch button opens a real ``.ipynb``.
3. A colour mode on a reader's first visit. pydata-sphinx-theme starts from
   ``localStorage.mode || "{{ default_mode }}"``; Jupyter Book leaves
   ``default_mode`` unset, so a reader with nothing stored yet gets
   "Got invalid theme mode" as a console error on the first page they open.
   Pages default to "auto" (follow the system), the theme's own default.

tests/site/test_browser.py checks all three in a real browser.
"""

from pathlib import Path


def _script_key(js):
    filename = getattr(js, "filename", js)
    priority = getattr(js, "priority", 500)
    attributes = getattr(js, "attributes", {}) or {}
    return (str(filename or ""), priority, tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        key = _script_key(js)
        if key not in seen:
            seen.add(key)
            unique.append(js)
    if len(unique) != len(scripts):
        context["script_files"] = unique  # a new list: the builder's own stays untouched


def _drop_dead_launch_buttons(app, pagename, templatename, context, doctree):
    if pagename not in app.env.found_docs:
        return
    source = Path(app.env.doc2path(pagename))
    if source.suffix == ".ipynb" or source.with_suffix(".ipynb").exists():
        return
    buttons = context.get("header_buttons")
    if buttons:
        context["header_buttons"] = [b for b in buttons if b.get("label") != "launch-buttons"]


def _default_colour_mode(app, pagename, templatename, context, doctree):
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


def setup(app):
    # Part of the HTML build's config hash: bump it when these fixes change, so an
    # incremental build rewrites every page instead of only the edited ones.
    app.add_config_value("gqa_site_fixes_version", 3, "html")
    app.connect("html-page-context", _default_colour_mode)
    # After sphinx-book-theme's add_launch_buttons (priority 501).
    app.connect("html-page-context", _drop_dead_launch_buttons, priority=510)
    # After everything that adds per-page scripts (myst-nb, mathjax: default priority 500).
    app.connect("html-page-context", _dedupe_scripts, priority=990)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
