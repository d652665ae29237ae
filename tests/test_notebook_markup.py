"""Every chapter renders in every front end, not only on the website.

The website reads the notebooks with MyST, but JupyterLab, Colab and
nbconvert render markdown cells as plain Markdown + HTML: a MyST directive or
role (```` ```{literalinclude} ````, ``:::{note}``, ``{cite}`key` ``) shows
there as raw text. So each chapter is rendered here as a notebook front end
renders it, with nbconvert's HTMLExporter (markdown cells through its Markdown
renderer), and the rendered text of every markdown cell must be free of raw
MyST tokens; every ``<details>`` (a hidden answer) must have a ``<summary>``.
See README.md, "Writing a chapter".
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))

# Raw MyST that a notebook front end shows as text. Tokens starting with "{" count only where they do
# not follow a letter, digit, backslash, _ or ^, so TeX such as \text{note} or x_{eq} in math is not one.
RAW_MYST_TOKENS = (
    "{literalinclude}", ":::{", "::::{", "{cite", "{admonition}", "{dropdown}", "{note}", "{tip}",
    "{warning}", "{ref}", "{numref}", "{eq}", "{math}", "{glue",
)
_TOKEN_RES = {
    token: re.compile((r"(?<![A-Za-z0-9\\_^])" if token.startswith("{") else "") + re.escape(token))
    for token in RAW_MYST_TOKENS
}


def rendered_markdown_cells(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    """(cell index, rendered HTML) of every markdown cell, as nbconvert's HTMLExporter renders the notebook."""
    exporter = HTMLExporter(exclude_code_cell=True)  # markdown renders the same; outputs are not looked at
    body, _ = exporter.from_notebook_node(nb)
    soup = BeautifulSoup(body, "html.parser")
    rendered = [cell.select_one(".jp-RenderedMarkdown") for cell in soup.select("div.jp-MarkdownCell")]
    indices = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"]
    assert len(rendered) == len(indices) and all(r is not None for r in rendered), (
        f"nbconvert rendered {len(rendered)} markdown cells for {len(indices)}: did its template change?"
    )
    return [(i, r.decode_contents()) for i, r in zip(indices, rendered)]


def _excerpt(text: str, start: int, width: int = 60) -> str:
    return " ".join(text[max(0, start - 20): start + width].split())


def markup_problems(rendered_html: str) -> list[str]:
    """What a front end would show wrongly in one rendered markdown cell: raw MyST, <details> without <summary>."""
    soup = BeautifulSoup(rendered_html, "html.parser")
    problems = []
    text = soup.get_text()
    # a fenced directive keeps its name in the code block's class too (language-{note})
    classes = " ".join(" ".join(code.get("class", [])) for code in soup.find_all("code"))
    for token, pattern in _TOKEN_RES.items():
        for where in (text, classes):
            match = pattern.search(where)
            if match:
                problems.append(f"raw MyST {token!r}: ...{_excerpt(where, match.start())}...")
                break
    for details in soup.find_all("details"):
        summary = details.find("summary", recursive=False)
        if summary is None or not summary.get_text(strip=True):
            problems.append(f"<details> without a <summary> (a child of it, with text): "
                            f"{_excerpt(details.get_text(), 0)!r}")
            continue
        # Markdown inside renders only with a blank line after </summary> (and before </details>)
        for node in details.find_all(string=True):
            if node.find_parent(["summary", "code", "pre"]) is None and re.search(r"\*\*\S|`", node):
                problems.append(f"Markdown inside <details> left unrendered (blank line after </summary>?): "
                                f"{_excerpt(str(node), 0)!r}")
                break
    return problems


def notebook_markup_problems(path: Path) -> list[str]:
    """Every problem of every markdown cell of the notebook at ``path``, each naming its cell."""
    nb = nbformat.read(path, as_version=4)
    return [
        f"{path.name} cell {index}: {problem}"
        for index, html in rendered_markdown_cells(nb)
        for problem in markup_problems(html)
    ]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_renders_without_raw_myst_in_a_notebook_front_end(path):
    problems = notebook_markup_problems(path)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


# -- the checker itself, on small synthetic notebooks -------------------------------------------------


def _notebook(tmp_path: Path, *markdown: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import gqa_lib")]
                                  + [nbformat.v4.new_markdown_cell(m) for m in markdown])
    path = tmp_path / "synthetic.ipynb"
    nbformat.write(nb, path)
    return path


CLEAN = (
    "# A chapter\n\nPlain Markdown, math $\\text{note} = x_{eq}$ and $$\\mathrm{ref}\\{a\\}$$, "
    "[Ainslie et al., 2023](../references.md), `code`.",
    "**Check your understanding: why?** Because.\n\n"
    '<details class="answer">\n<summary>Answer</summary>\n\nThe **answer**, with `code`.\n\n</details>',
    "> **Note.** A note as a blockquote.",
    "```python\nx = {1: 2}\nprint(x ** 2)\n```",
)


def test_checker_passes_a_notebook_written_the_one_way(tmp_path):
    assert notebook_markup_problems(_notebook(tmp_path, *CLEAN)) == []


def test_checker_fails_on_a_literalinclude_and_names_the_cell(tmp_path):
    path = _notebook(tmp_path, CLEAN[0], "```{literalinclude} ../gqa_lib/core/attention.py\n:pyobject: grouped_attention\n```")
    problems = notebook_markup_problems(path)
    assert len(problems) == 1 and "synthetic.ipynb cell 2" in problems[0] and "{literalinclude}" in problems[0]


@pytest.mark.parametrize("markdown,token", [
    ("```{literalinclude} ../gqa_lib/core/kv_cache.py\n```", "{literalinclude}"),
    (":::{note}\nA note.\n:::", ":::{"),
    ("::::{admonition} Title\n:::{tip}\nx\n:::\n::::", "::::{"),
    ("As shown by {cite}`ainslie2023`.", "{cite"),
    ("As shown by {cite:p}`ainslie2023`.", "{cite"),
    ("```{admonition} Title\nBody\n```", "{admonition}"),
    ("````{dropdown} Answer\nText\n````", "{dropdown}"),
    ("```{note}\nText\n```", "{note}"),
    ("```{tip}\nText\n```", "{tip}"),
    ("```{warning}\nText\n```", "{warning}"),
    ("See {ref}`the cache <kv-cache>`.", "{ref}"),
    ("See {numref}`fig-roofline`.", "{numref}"),
    ("By {eq}`eq-bytes`.", "{eq}"),
    ("Inline {math}`x^2`.", "{math}"),
    ("```{math}\nx^2\n```", "{math}"),
    ("The value {glue:}`speedup`.", "{glue"),
])
def test_checker_flags_every_raw_myst_token(tmp_path, markdown, token):
    problems = notebook_markup_problems(_notebook(tmp_path, markdown))
    assert problems and any(repr(token) in p for p in problems), problems


@pytest.mark.parametrize("markdown", [
    "<details>\nThe answer, no summary.\n</details>",
    '<details class="answer">\n<summary></summary>\n\nEmpty summary.\n\n</details>',
    '<details class="answer">\n<p><summary>Answer</summary></p>\n\nNested summary.\n\n</details>',
])
def test_checker_flags_details_without_a_summary(tmp_path, markdown):
    problems = notebook_markup_problems(_notebook(tmp_path, markdown))
    assert len(problems) == 1 and "without a <summary>" in problems[0], problems


def test_checker_flags_markdown_left_raw_inside_details(tmp_path):
    squeezed = '<details class="answer">\n<summary>Answer</summary>\nThe **answer**.\n</details>'
    problems = notebook_markup_problems(_notebook(tmp_path, squeezed))
    assert len(problems) == 1 and "unrendered" in problems[0], problems
