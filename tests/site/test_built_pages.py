"""Checks of the website that `jupyter-book build` wrote to _build/html.

Run after the build (`make test` does); they fail, not skip, when the build is missing.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
EXECUTED = ROOT / "_build" / "jupyter_execute"
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
FIGURE_MARKER = 'class="gqa-plotly plotly-graph-div"'


def figure_outputs(executed_notebook: Path) -> int:
    """Figures displayed by gqa_lib.viz.plots.show in the notebook the build executed."""
    nb = json.loads(executed_notebook.read_text())
    return sum(
        "".join(out.get("data", {}).get("text/html", "")).count(FIGURE_MARKER)
        for cell in nb["cells"]
        for out in cell.get("outputs", [])
    )


def test_site_was_built():
    assert (HTML / "index.html").exists(), "run `make site` (jupyter-book build) first"
    assert (HTML / "_static" / "plotly.min.js").stat().st_size > 1_000_000


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_page_shows_every_figure_it_computed(nb):
    page = (HTML / "chapters" / f"{nb.stem}.html").read_text()
    executed = EXECUTED / "chapters" / nb.name
    n_figures = figure_outputs(executed)
    assert page.count(FIGURE_MARKER) == n_figures
    assert "Plotly.newPlot" in page or n_figures == 0
    # plotly.js comes from the site itself, once, never inlined or from a CDN at load time
    assert '_static/plotly.min.js' in page
    assert page.count("<script src=\"https://cdn.plot.ly") == 0


def article(page: str) -> str:
    """The chapter's own content: the theme's <article class="bd-article"> (the sidebars may hold <details> too)."""
    match = re.search(r'<article class="bd-article"[^>]*>(.*)</article>', page, re.S)
    assert match, "no <article class=\"bd-article\"> in the page: did the theme change?"
    return match.group(1)


def answers_in_notebook(nb: Path) -> int:
    """<details class="answer"> blocks written in the chapter's markdown cells."""
    cells = json.loads(nb.read_text())["cells"]
    return sum("".join(c["source"]).count('<details class="answer">') for c in cells if c["cell_type"] == "markdown")


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_page_has_figures_math_and_hidden_answers(nb):
    """Every chapter: at least one computed figure, some math, two answers hidden in <details class="answer">."""
    page = (HTML / "chapters" / f"{nb.stem}.html").read_text()
    assert page.count(FIGURE_MARKER) >= 1
    assert 'class="math' in page
    content = article(page)
    # myst-nb hides code cells tagged hide-input/hide-output in <details class="admonition hide ...">;
    # every other <details> of the chapter is an answer written in a markdown cell
    details = [d for d in re.findall(r"<details\b[^>]*>", content) if not re.search(r'class="[^"]*\bhide\b', d)]
    assert len(details) >= 2, details
    # class="answer", closed until clicked (no `open` attribute), with its summary
    assert details == ['<details class="answer">'] * len(details), details
    assert len(details) == answers_in_notebook(nb)  # each answer the notebook holds reaches the page
    assert len(re.findall(r'<details class="answer">\s*<summary>[^<]*\S[^<]*</summary>', content)) == len(details)
    assert "sd-dropdown" not in content  # no sphinx-design dropdowns any more: they do not render in Jupyter/Colab
    assert "Check your understanding" in page
    assert "Summary" in page and "Exercises" in page
