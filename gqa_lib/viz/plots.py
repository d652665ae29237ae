"""Plotly figures that render in Jupyter, on Colab and on the static website.

:func:`show` displays a figure as HTML that draws itself with plotly.js:
the book's website serves plotly.js once from ``_static`` (loaded in every
page's head), and anywhere plotly.js is missing (Colab, Jupyter) the snippet
loads it from the plotly CDN first. Only ``text/html`` (and a ``text/plain``
fallback) is sent: Jupyter Book 1 cannot render plotly's own JSON mime type
and would warn about it.
"""

from __future__ import annotations

import html
import json
import uuid

import plotly
import plotly.graph_objects as go

__all__ = ["show", "PlotlyHTML", "figure_html", "run_with_plotly", "FORM_HELPERS_JS"]

_CDN = "https://cdn.plot.ly/plotly-{version}.min.js"


def _plotlyjs_version() -> str:
    from plotly.offline import get_plotlyjs_version

    return get_plotlyjs_version()


def figure_html(fig: go.Figure, div_id: str | None = None) -> str:
    """HTML (a div and a script) that draws ``fig`` with window.Plotly, loading it from the CDN if absent."""
    div_id = div_id or f"gqa-plot-{uuid.uuid4().hex[:12]}"
    spec = fig.to_plotly_json()
    payload = {
        "data": spec.get("data", []),
        "layout": spec.get("layout", {}),
        "frames": spec.get("frames", []),
        "config": {"responsive": True, "displaylogo": False},
    }
    fig_json = json.dumps(payload, cls=plotly.utils.PlotlyJSONEncoder)
    height = fig.layout.height or 450
    return (
        f'<div id="{html.escape(div_id)}" class="gqa-plotly plotly-graph-div" style="width:100%;height:{int(height)}px;"></div>\n'
        + run_with_plotly(f"var fig = {fig_json};\nPlotly.newPlot('{div_id}', fig);")
    )


# JavaScript shared by the book's in-page tools (chapter 5's explorer, chapter 9's calculator): fill a <select>
# with labels, and format a byte count as gqa_lib's tests and tables do (three significant figures, binary units).
FORM_HELPERS_JS = r"""
function fill(select, labels) {
  select.innerHTML = '';
  labels.forEach(function (t, i) { var o = document.createElement('option'); o.value = i; o.textContent = t; select.appendChild(o); });
}
function fmtBytes(b) {
  var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (b >= 100 ? b.toFixed(0) : b >= 10 ? b.toFixed(1) : b.toFixed(2)) + ' ' + u[i];
}
"""


def run_with_plotly(body: str) -> str:
    """A script that runs the JavaScript ``body`` once window.Plotly exists (loaded from the CDN if absent)."""
    cdn = _CDN.format(version=_plotlyjs_version())
    return (
        "<script type=\"text/javascript\">\n"
        "(function () {\n"
        f"  function draw() {{\n{body}\n}}\n"
        "  if (window.Plotly) { draw(); return; }\n"
        "  var s = document.createElement('script');\n"
        f"  s.src = '{cdn}'; s.onload = draw;\n"
        "  document.head.appendChild(s);\n"
        "})();\n"
        "</script>"
    )


class PlotlyHTML:
    """A displayable wrapper: self-drawing HTML for every front end."""

    def __init__(self, fig: go.Figure):
        self.fig = fig

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {
            "text/html": figure_html(self.fig),
            "text/plain": f"<plotly figure: {self.fig.layout.title.text or 'untitled'}>",
        }


def show(fig: go.Figure) -> None:
    """Display ``fig`` so that it renders in Jupyter, Colab and on the book's static pages."""
    from IPython.display import display

    display(PlotlyHTML(fig))
