"""The built site's links and page weight, read from the HTML files (no browser).

* Every internal link resolves: starting from the pages of _toc.yml, every
  internal href/src (links, scripts, stylesheets, images, downloads) is followed
  once; its file must exist, and a #fragment must name an id in the target page.
  Stylesheets' url(...) references are followed too. Every HTML page reached is
  crawled the same way (search, index, bibliography...).
* Page weight: each page of the book is at most 1.5 MB, counting its HTML and the
  assets only it loads; the shared scripts and styles in _static (plotly.js,
  MathJax, the theme) are excluded, and reported beside it.
"""

from __future__ import annotations

import posixpath
import re
from collections import deque
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

from sitekit import HTML, PAGES, REPORT, page_file, require_build

MAX_PAGE_BYTES = 1_500_000
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
SKIP_SCHEMES = {"mailto", "javascript", "data", "tel", "blob"}
# Attributes that load something when the page loads (page weight) or that a reader follows.
LOADING = {("script", "src"), ("img", "src"), ("iframe", "src"), ("source", "src"), ("video", "src"),
           ("audio", "src"), ("embed", "src"), ("track", "src"), ("object", "data"), ("input", "src")}
LOADING_LINK_RELS = {"stylesheet", "preload", "icon", "shortcut", "modulepreload", "prefetch", "manifest"}
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")


class _Page(HTMLParser):
    """The ids/names a page defines, and every reference it makes (tag, attr, url, loads?)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str, bool]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        if tag in ("a", "area") and attrs.get("href") is not None:
            self.refs.append((tag, "href", attrs["href"], False))
        elif tag == "link" and attrs.get("href"):
            rels = set((attrs.get("rel") or "").lower().split())
            self.refs.append((tag, "href", attrs["href"], bool(rels & LOADING_LINK_RELS)))
        for t, a in LOADING:
            if tag == t and attrs.get(a):
                self.refs.append((tag, a, attrs[a], True))
        if tag == "img" and attrs.get("srcset"):
            for part in attrs["srcset"].split(","):
                if part.strip():
                    self.refs.append((tag, "srcset", part.strip().split()[0], True))

    handle_startendtag = handle_starttag


_PARSED: dict[Path, _Page] = {}


def parse(path: Path) -> _Page:
    if path not in _PARSED:
        page = _Page()
        page.feed(path.read_text(encoding="utf-8", errors="replace"))
        _PARSED[path] = page
    return _PARSED[path]


def resolve(source: Path, url: str) -> tuple[Path, str] | None:
    """The file an internal reference points at, and its fragment; None for external ones."""
    parsed = urlparse(url)
    if parsed.scheme in SKIP_SCHEMES:
        return None
    if parsed.scheme or parsed.netloc:
        if parsed.scheme in ("http", "https") and parsed.hostname in LOCAL_HOSTS:
            rel = parsed.path.lstrip("/")
            return HTML / unquote(rel), parsed.fragment
        return None  # external: not the site's business to serve
    path, fragment = urldefrag(url)
    path = unquote(urlparse(path).path)
    if not path:
        return source, fragment
    if path.startswith("/"):
        target = HTML / path.lstrip("/")
    else:
        target = Path(posixpath.normpath(posixpath.join(str(source.parent), path)))
    if target.is_dir() or path.endswith("/"):
        target = target / "index.html"
    return target, fragment


def crawl():
    """Follow every internal reference once from the toc pages; return the broken ones."""
    require_build()
    start = [page_file(p) for p in PAGES] + [HTML / "index.html"]
    queue, seen_pages, checked, broken = deque(start), set(start), set(), []
    while queue:
        source = queue.popleft()
        refs = []
        if source.suffix == ".html":
            refs = [(f"<{t} {a}>", url) for t, a, url, _ in parse(source).refs]
        elif source.suffix == ".css":
            refs = [("css url()", url) for url in CSS_URL.findall(source.read_text(errors="replace"))]
        for what, url in refs:
            target = resolve(source, url)
            if target is None:
                continue
            path, fragment = target
            key = (path, fragment)
            if key in checked:
                continue
            checked.add(key)
            where = f"{source.relative_to(HTML)}: {what} {url}"
            try:
                path.relative_to(HTML)
            except ValueError:
                broken.append(f"{where} -> outside the site")
                continue
            if not path.is_file():
                broken.append(f"{where} -> missing file {path.relative_to(HTML)}")
                continue
            if fragment and path.suffix == ".html" and unquote(fragment) not in parse(path).ids:
                broken.append(f"{where} -> no id '{fragment}' in {path.relative_to(HTML)}")
            if path.suffix in (".html", ".css") and path not in seen_pages:
                seen_pages.add(path)
                queue.append(path)
    return broken, checked, seen_pages


def test_no_broken_internal_links():
    broken, checked, pages = crawl()
    assert len(pages) >= len(PAGES)
    assert not broken, f"{len(broken)} broken internal links (of {len(checked)} checked):\n" + "\n".join(broken)


def test_every_toc_page_is_reachable_from_the_landing_page():
    require_build()
    _, _, pages = crawl()
    for page in PAGES:
        assert page_file(page) in pages


def page_assets(page: str) -> dict[Path, bool]:
    """Local files a page loads when opened (not links it offers): {file: is under _static}."""
    source = page_file(page)
    assets = {}
    for _tag, _attr, url, loads in parse(source).refs:
        if not loads:
            continue
        target = resolve(source, url)
        if target is None or not target[0].is_file():
            continue
        path = target[0]
        assets[path] = (HTML / "_static") in path.parents
    return assets


def page_weights() -> dict[str, dict[str, int]]:
    require_build()
    loads = {page: page_assets(page) for page in PAGES}
    users: dict[Path, int] = {}
    for assets in loads.values():
        for path in assets:
            users[path] = users.get(path, 0) + 1
    weights = {}
    for page, assets in loads.items():
        # Shared: served from _static, or loaded by more than one page (e.g. searchindex.js).
        own = [p for p, static in assets.items() if not static and users[p] == 1 and len(PAGES) > 1]
        shared = [p for p in assets if p not in own]
        html = page_file(page).stat().st_size
        own_bytes = sum(p.stat().st_size for p in own)
        weights[page] = {
            "html": html,
            "assets": own_bytes,
            "total": html + own_bytes,
            "shared": sum(p.stat().st_size for p in shared),
        }
    REPORT["page_weights"].update(weights)
    return weights


@pytest.mark.parametrize("page", PAGES)
def test_page_weight_under_limit(page):
    weight = page_weights()[page]
    print(f"{page}: html {weight['html']:,} B + own assets {weight['assets']:,} B = {weight['total']:,} B "
          f"(shared _static scripts and styles, not counted: {weight['shared']:,} B)")
    limit = MAX_PAGE_BYTES
    assert weight["total"] <= limit, (
        f"{page} weighs {weight['total']:,} bytes without the shared scripts (limit {limit:,}): "
        "keep figures small in data (fewer points, no huge traces)"
    )


def test_shared_scripts_are_served_once_not_inlined():
    """plotly.js and MathJax live once in _static; no page inlines a copy."""
    require_build()
    for shared in (HTML / "_static" / "plotly.min.js", HTML / "_static" / "mathjax" / "tex-mml-chtml.js"):
        code = shared.read_text(errors="replace")
        assert len(code) > 500_000, f"{shared} missing or truncated"
        samples = [code[i : i + 120] for i in (len(code) // 3, len(code) // 2, 2 * len(code) // 3)]
        for page in PAGES:
            text = page_file(page).read_text(errors="replace")
            assert not any(s in text for s in samples), f"{page} inlines a copy of {shared.name}"
