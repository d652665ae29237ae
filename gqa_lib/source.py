"""Show library code in a chapter: ``gqa_lib.show_source(gqa_lib.grouped_attention)``.

The chapters teach the library's own functions, so they display their
source rather than copies of it. :func:`show_source` returns an object that
every notebook front end renders the same way: highlighted HTML with inline
styles (JupyterLab, Colab, nbconvert and the book's website need no style
sheet for it) and the plain source as its text form.
"""

from __future__ import annotations

import html
import inspect
import textwrap

__all__ = ["SourceListing", "show_source"]


class SourceListing:
    """The source of one Python object, displayed as highlighted code.

    ``str(listing)`` is the plain source; in a notebook the listing renders
    as highlighted HTML, headed by the object's qualified name and file.
    """

    def __init__(self, name: str, filename: str, code: str):
        self.name = name
        self.filename = filename
        self.code = code

    def __str__(self) -> str:
        return self.code

    def __repr__(self) -> str:
        return f"# {self.name} ({self.filename})\n{self.code}"

    def _repr_html_(self) -> str:
        try:
            from pygments import highlight
            from pygments.formatters import HtmlFormatter
            from pygments.lexers import PythonLexer

            body = highlight(self.code, PythonLexer(), HtmlFormatter(noclasses=True, style="default", nowrap=True))
        except ImportError:  # pygments ships with IPython; plain text if it is somehow missing
            body = html.escape(self.code)
        header = (
            f'<div style="font-size:0.85em;color:#555;margin:0 0 0.2em 0">'
            f"<code>{html.escape(self.name)}</code> in <code>{html.escape(self.filename)}</code></div>"
        )
        pre = (
            '<pre style="background:#f8f8f8;border:1px solid #e1e4e8;border-radius:4px;padding:0.6em 0.8em;'
            'overflow-x:auto;line-height:1.35;font-size:0.85em;margin:0">'
            f"{body}</pre>"
        )
        return f'<div class="gqa-source">{header}{pre}</div>'


def show_source(obj) -> SourceListing:
    """The source of a library function, class or method, to display in a notebook cell.

    ``obj`` is any object :func:`inspect.getsource` can read (a function, a
    class, a method such as ``gqa_lib.TransformerLM.generate``). The file is
    named relative to the ``gqa_lib`` package. ValueError if the object has no
    readable source (a built-in, a number).
    """
    try:
        code = textwrap.dedent(inspect.getsource(obj)).rstrip() + "\n"
        path = inspect.getsourcefile(obj) or "?"
    except (TypeError, OSError) as error:
        raise ValueError(f"no Python source to show for {obj!r}: {error}") from None
    parts = path.replace("\\", "/").split("/")
    filename = "/".join(parts[parts.index("gqa_lib"):]) if "gqa_lib" in parts else parts[-1]
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
    return SourceListing(name, filename, code)
