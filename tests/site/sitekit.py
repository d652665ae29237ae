"""What the website tests share: where the build is, which pages the book has,
a local web server for the build, and how Chromium is started (conftest.py
holds the fixtures). A module of its own, so test files import it by a name
that no other conftest.py can shadow.

Environment:
  GQA_BOOK_HTML      the built site (default: <repo>/_build/html)
  GQA_SCREENSHOTS    where page screenshots go (default: <build>/../screenshots)
  GQA_CHROMIUM, GQA_CHROMEDRIVER   the browser and its driver (default /usr/bin/...)

Nothing here skips: a missing build, browser or driver is a failure (run
`make site` and `make browser`, which `make test` does).
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("GQA_BOOK_HTML", ROOT / "_build" / "html")).resolve()
SCREENSHOTS = Path(os.environ.get("GQA_SCREENSHOTS", HTML.parent / "screenshots")).resolve()
CHROMIUM = os.environ.get("GQA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GQA_CHROMEDRIVER", "/usr/bin/chromedriver")

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())

# Shared between the tests and the terminal summary below.
REPORT: dict[str, object] = {"page_weights": {}, "browser_seconds": None, "screenshots": []}


def _toc_entries(node) -> list[str]:
    """Every `file:` in a _toc.yml subtree, in reading order."""
    found = []
    if isinstance(node, dict):
        if "file" in node:
            found.append(str(node["file"]))
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                found.extend(_toc_entries(child))
    return found


def toc_pages() -> list[str]:
    """Docnames of every page in _toc.yml (the root first), without file extensions."""
    pages = [str(TOC["root"])] + _toc_entries(TOC)
    out = []
    for page in pages:
        page = os.path.splitext(page)[0] if page.endswith((".md", ".ipynb", ".rst")) else page
        if page not in out:
            out.append(page)
    return out


PAGES = toc_pages()
CHAPTER_PAGES = [p for p in PAGES if p.startswith("chapters/")]


def page_file(docname: str) -> Path:
    return HTML / f"{docname}.html"


def require_build() -> None:
    """Fail (never skip) when the site has not been built."""
    missing = [p for p in PAGES if not page_file(p).exists()]
    if not (HTML / "index.html").exists() or missing:
        pytest.fail(
            f"the built site is missing or incomplete under {HTML} (missing: {missing or ['index.html']}); "
            "run `make site` (jupyter-book build) first, or set GQA_BOOK_HTML",
            pytrace=False,
        )


def colab_url_for(docname: str) -> str:
    """Where a chapter's Colab launch button must point: its notebook on the configured repo and branch."""
    repo_url = CONFIG["repository"]["url"].rstrip("/")
    owner_repo = repo_url.split("github.com/", 1)[1]
    branch = CONFIG["repository"].get("branch", "main")
    book_path = (CONFIG["repository"].get("path_to_book") or "").strip("/")
    prefix = f"{book_path}/" if book_path else ""
    colab = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{owner_repo}/blob/{branch}/{prefix}{docname}.ipynb"


# ---------------------------------------------------------------- web server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the build; remembers every error response (a broken resource)."""

    errors: list[tuple[int, str, str]]

    def log_message(self, format, *args):  # noqa: A002 - silence the per-request log
        pass

    def send_error(self, code, message=None, explain=None):
        self.server.errors.append((code, self.path, self.headers.get("Referer", "")))
        super().send_error(code, message, explain)

    def end_headers(self):
        # Always revalidate: a rebuilt site must not be tested from the browser cache.
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class SiteServer:
    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.errors = []
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="site-server", daemon=True)

    @property
    def errors(self) -> list[tuple[int, str, str]]:
        return self.httpd.errors

    def url(self, path: str) -> str:
        return f"{self.origin}/{path.lstrip('/')}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------- browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--hide-scrollbars",
    "--window-size=1280,900",
    "--force-device-scale-factor=1",
    # No network but this machine: a page that reaches for a CDN fails to load it
    # (and the console error fails the test), even where the machine is online.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=direct://",
    "--proxy-bypass-list=*",
]

# Installed before any page script runs: a larger resource-timing buffer, and a record of
# errors the console log might word differently (failed resource loads, unhandled rejections).
INIT_SCRIPT = r"""
try { performance.setResourceTimingBufferSize(5000); } catch (e) {}
window.__gqaErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) {
    window.__gqaErrors.push('failed to load ' + (t.tagName || '') + ' ' + (t.src || t.href));
  } else {
    window.__gqaErrors.push('uncaught ' + (e.message || e) + ' at ' + (e.filename || '') + ':' + (e.lineno || ''));
  }
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__gqaErrors.push('unhandled rejection: ' + (e.reason && (e.reason.stack || e.reason.message) || e.reason));
});
"""


def missing_browser_message() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        return (
            f"headless browser not installed: {missing} missing; run `make browser` "
            "(tools/install_browser.sh: apt-get install chromium chromium-driver)"
        )
    return None


def fmt_bytes(b: float) -> str:
    """A byte count as the book's in-page tools print it (gqa_lib.viz.plots.FORM_HELPERS_JS's fmtBytes)."""
    units, i = ["B", "KiB", "MiB", "GiB", "TiB"], 0
    while b >= 1024 and i < len(units) - 1:
        b /= 1024
        i += 1
    return f"{b:.0f} {units[i]}" if b >= 100 else f"{b:.1f} {units[i]}" if b >= 10 else f"{b:.2f} {units[i]}"
