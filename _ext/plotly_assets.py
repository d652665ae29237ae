"""Sphinx extension: serve plotly.js once from the site's _static folder.

Every page loads ``_static/plotly.min.js`` (copied from the installed plotly
package at build time, so the site works offline and no page inlines it);
figures displayed by ``gqa_lib.viz.plots.show`` then draw with ``window.Plotly``.
"""

import shutil
from pathlib import Path

import plotly

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _copy_plotly(app, exception):
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PLOTLY_JS, static / "plotly.min.js")


def setup(app):
    # Loaded before require.js (priority < 200 is not needed: we hide AMD while plotly loads).
    app.add_js_file(None, body="window.__gqaDefine = window.define; window.define = undefined;", priority=100)
    app.add_js_file("plotly.min.js", priority=101)
    app.add_js_file(None, body="window.define = window.__gqaDefine;", priority=102)
    app.connect("build-finished", _copy_plotly)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
