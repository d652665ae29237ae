"""Sphinx extension: serve MathJax 3 and the ipywidgets loader from the site itself.

Jupyter Book loads MathJax from a CDN by default, and myst-nb loads require.js
and the ipywidgets embedder from CDNs on any page that stores widget state.
This extension makes the built site work with no network at all:

* at build time it fetches pinned npm packages (MathJax 3, requirejs and
  ``@jupyter-widgets/html-manager``) from the npm registry, checks each
  tarball against its pinned sha512 integrity, and keeps it in a cache
  outside the repository (``$GQA_ASSET_CACHE``, default
  ``$XDG_CACHE_HOME/gqa-book/npm`` or ``~/.cache/gqa-book/npm``), so
  repeated builds fetch nothing; nothing of MathJax is committed;
* it points Sphinx's ``mathjax_path`` and myst-nb's ``nb_ipywidgets_js`` at
  copies served once from ``_static`` (every page shares them, none inlines
  them);
* after an HTML build it copies the needed files into ``_static``.

A build that cannot get an asset fails (no silent fallback to a CDN).
The tests in ``tests/site`` check in a real browser that no page requests
anything from another host.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sphinx.errors import ExtensionError
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class NpmAsset:
    """Files of one pinned npm package, copied to ``_static/<dest>``."""

    name: str
    version: str
    integrity: str  # the registry's dist.integrity ("sha512-<base64>")
    dest: str  # folder under _static
    keep: tuple[str, ...]  # path prefixes (inside the package) to copy
    drop: tuple[str, ...] = ()  # path prefixes to leave out
    strip: str = ""  # prefix removed from copied paths

    @property
    def tarball_url(self) -> str:
        base = self.name.rsplit("/", 1)[-1]
        return f"{REGISTRY}/{self.name}/-/{base}-{self.version}.tgz"

    @property
    def cache_name(self) -> str:
        return f"{self.name.replace('/', '__')}-{self.version}.tgz"

    def wanted(self, path: str) -> str | None:
        """The destination path of ``path`` (relative to dest), or None to skip it."""
        if not any(path.startswith(k) for k in self.keep) or any(path.startswith(d) for d in self.drop):
            return None
        if path.endswith(".map"):
            return None
        return path[len(self.strip) :] if self.strip and path.startswith(self.strip) else path


MATHJAX = NpmAsset(
    name="mathjax",
    version="3.2.2",
    integrity="sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
    dest="mathjax",
    # The combined TeX+MathML/CHTML component, the extensions and fonts it loads on
    # demand (autoloaded TeX packages, CHTML woff fonts, the accessibility menu).
    keep=(
        "es5/tex-mml-chtml.js",
        "es5/input/tex/extensions/",
        "es5/input/mml/",
        "es5/output/chtml/",
        "es5/a11y/",
        "es5/ui/",
        "es5/sre/",
        "es5/adaptors/",
        "LICENSE",
    ),
    strip="es5/",
)
REQUIREJS = NpmAsset(
    name="requirejs",
    version="2.3.4",
    integrity="sha512-qPD5gRrj6kGQ0ZySAJgqbArkaDqPMbQIT0zSZDkIv1mfA17w/tR2Faq5l2qqRf2CdQx6FWln9nUrgd2UDzb19A==",
    dest="requirejs",
    keep=("require.js", "LICENSE"),
)
WIDGETS = NpmAsset(
    name="@jupyter-widgets/html-manager",
    version="1.0.6",
    integrity="sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
    dest="jupyter-widgets",
    # embed-amd.js and the icon fonts it references (same folder), not the non-AMD bundles.
    keep=("dist/",),
    drop=("dist/embed.js", "dist/libembed-amd.js", "dist/106.embed.js", "dist/330.embed.js"),
    strip="dist/",
)
ASSETS = (MATHJAX, REQUIREJS, WIDGETS)

# What the pages load (relative to _static).
MATHJAX_PATH = f"{MATHJAX.dest}/tex-mml-chtml.js"
IPYWIDGETS_JS = {
    f"{REQUIREJS.dest}/require.js": {},
    f"{WIDGETS.dest}/embed-amd.js": {
        # Widget modules other than the built-in ones would be fetched from here:
        # keep it on the site, so a missing module fails visibly instead of going online.
        "data-jupyter-widgets-cdn": f"/_static/{WIDGETS.dest}/modules/",
    },
}


def cache_dir() -> Path:
    if os.environ.get("GQA_ASSET_CACHE"):
        return Path(os.environ["GQA_ASSET_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "gqa-book" / "npm"


def _integrity_ok(data: bytes, integrity: str) -> bool:
    algo, _, digest = integrity.partition("-")
    return base64.b64encode(hashlib.new(algo, data).digest()).decode() == digest


def _download(asset: NpmAsset) -> bytes:
    """The package tarball from the npm registry (urllib, then `npm pack` as a fallback)."""
    errors = []
    for attempt in range(3):
        try:
            with urllib.request.urlopen(asset.tarball_url, timeout=120) as resp:
                return resp.read()
        except OSError as err:  # URLError, timeouts, resets
            errors.append(f"{asset.tarball_url}: {err}")
            time.sleep(2 * (attempt + 1))
    npm = shutil.which("npm")
    if npm:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [npm, "pack", f"{asset.name}@{asset.version}", "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=300,
            )
            tgz = sorted(Path(tmp).glob("*.tgz"))
            if proc.returncode == 0 and tgz:
                return tgz[0].read_bytes()
            errors.append(f"npm pack {asset.name}@{asset.version}: {proc.stderr.strip()[-500:]}")
    raise ExtensionError(
        f"offline_assets: cannot fetch {asset.name}@{asset.version} from the npm registry "
        f"(and it is not cached in {cache_dir()}): " + "; ".join(errors)
    )


def tarball(asset: NpmAsset) -> bytes:
    """The verified tarball of ``asset``, from the cache or fetched once into it."""
    path = cache_dir() / asset.cache_name
    if path.exists():
        data = path.read_bytes()
        if _integrity_ok(data, asset.integrity):
            return data
        LOGGER.info(f"offline_assets: cached {path.name} fails its integrity check; fetching again")
    LOGGER.info(f"offline_assets: fetching {asset.name}@{asset.version} from the npm registry")
    data = _download(asset)
    if not _integrity_ok(data, asset.integrity):
        raise ExtensionError(f"offline_assets: {asset.tarball_url} does not match its pinned integrity")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def install(asset: NpmAsset, static: Path) -> int:
    """Copy the wanted files of ``asset`` into ``static/<dest>``; returns the number of files."""
    dest_root = static / asset.dest
    count = 0
    with tarfile.open(fileobj=io.BytesIO(tarball(asset)), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            parts = PurePosixPath(member.name).parts
            if len(parts) < 2 or ".." in parts:
                continue
            rel = asset.wanted("/".join(parts[1:]))  # drop the tarball's top folder ("package")
            if rel is None:
                continue
            target = dest_root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            data = src.read() if src is not None else b""
            if not target.exists() or target.stat().st_size != len(data) or target.read_bytes() != data:
                target.write_bytes(data)
            count += 1
    return count


def _widget_module_paths(app, pagename, templatename, context, doctree):
    """On pages that embed widgets, tell RequireJS where the widget manager lives.

    embed-amd.js registers itself as the AMD module
    ``@jupyter-widgets/html-manager/dist/libembed-amd`` and loads its icon fonts
    from beside that module's URL; without a path RequireJS would place it
    under the page's own folder (404s for every font).
    """
    embed = f"_static/{WIDGETS.dest}/embed-amd.js"
    if not any(str(getattr(js, "filename", js) or "") == embed for js in context.get("script_files") or []):
        return
    folder = context["pathto"](f"_static/{WIDGETS.dest}", 1)
    # A global `require` object defined before require.js loads is its configuration.
    body = (
        "var require = {paths: {'@jupyter-widgets/html-manager/dist': "
        f"new URL({json.dumps(folder)}, document.baseURI).href.replace(/\\/$/, '')}}}};"
    )
    app.add_js_file(None, body=body, priority=450)


def _configure(app, config):
    # Relative paths are served from _static (Sphinx and myst-nb prefix them).
    config.mathjax_path = MATHJAX_PATH
    config.nb_ipywidgets_js = IPYWIDGETS_JS


def _fetch(app):
    # Fail early, before the chapters execute, when an asset cannot be had.
    if app.builder.format == "html":
        for asset in ASSETS:
            tarball(asset)


def _copy(app, exception):
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        for asset in ASSETS:
            install(asset, static)


def setup(app):
    # Part of the HTML build's config hash: pages are rewritten when a pinned asset changes.
    app.add_config_value("gqa_offline_assets", [f"{a.name}@{a.version}" for a in ASSETS], "html")
    app.connect("config-inited", _configure, priority=900)
    app.connect("builder-inited", _fetch)
    app.connect("build-finished", _copy)
    # After myst-nb adds a page's widget scripts (priority 500).
    app.connect("html-page-context", _widget_module_paths, priority=600)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
