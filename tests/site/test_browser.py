"""The website as a reader uses it: every page of _toc.yml in headless Chromium, offline.

The build (_build/html, or $GQA_BOOK_HTML) is served on 127.0.0.1 and each page is
opened once (the visit below); the tests then check what the visit saw:

* no JavaScript errors: no SEVERE console entry (failed resource loads included),
  no uncaught error or rejection, no error response from the server;
* nothing requested from any host but the local server (the browser cannot resolve
  other hosts, and every resource entry and script/link/img URL is checked);
* every plotly figure drawn: an SVG with a visible trace in every figure div;
* math typeset by MathJax (an mjx-container in every math element, no TeX errors);
* every <details> opens on click; on chapter pages the answers, <details class="answer">
  written in markdown cells (plain HTML that renders in Jupyter and Colab too),
  start hidden (no `open` attribute) and show their content once clicked;
* on chapter pages, the launch menu opens and its Colab link points at that
  chapter's notebook on the repository and branch in _config.yml;
* every slider figure changes its plot when the slider is moved;
* a screenshot of each page in _build/screenshots/.

Pages come from _toc.yml, so chapters added later are tested without edits here.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from sitekit import (
    CHAPTER_PAGES,
    PAGES,
    REPORT,
    ROOT,
    SCREENSHOTS,
    colab_url_for,
    page_file,
)

FIGURE_SELECTOR = ".plotly-graph-div, .gqa-plotly"
LOCAL_HOSTS = {"127.0.0.1"}
INERT_SCHEMES = {"data", "blob", "about", "javascript", "mailto"}
WAIT_S = 30

# ------------------------------------------------------------------ page scripts

WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    mj.startup.promise.then(() => done('ok'), (e) => done('error: ' + e));
  } else if (!document.querySelector('script[src*="mathjax"]')) {
    done('absent');
  } else if (Date.now() - t0 > 25000) {
    done('timeout: MathJax never started');
  } else {
    setTimeout(poll, 50);
  }
})();
"""

FIGURES_DRAWN = """
const sel = arguments[0];
const divs = Array.from(document.querySelectorAll(sel)).filter(
  (d) => !d.parentElement || !d.parentElement.closest(sel));
return divs.map((gd, i) => {
  const svg = gd.querySelector('svg.main-svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const full = gd._fullData || [];
  const visible = full.filter((t) => t.visible === true).length;
  const marks = gd.querySelectorAll(
    '.cartesianlayer .trace, .polarlayer .trace, .ternarylayer .trace, .pielayer .trace, ' +
    '.barlayer .trace, .heatmaplayer image, .hm, .table, .funnelarealayer .trace, ' +
    '.imagelayer image, .scatterlayer .trace, .layer-above .shapelayer path').length;
  const title = gd.layout && gd.layout.title ? (gd.layout.title.text || gd.layout.title) : '';
  return {
    index: i, id: gd.id, svg: !!svg, width: box.width, height: box.height,
    traces: full.length, visible: visible, marks: marks,
    title: String(title).slice(0, 80),
    sliders: ((gd.layout && gd.layout.sliders) || []).length,
  };
});
"""

MATH_STATE = """
const maths = Array.from(document.querySelectorAll('.math'));
return {
  math: maths.length,
  typeset: maths.filter((m) => m.querySelector('mjx-container')).length,
  containers: document.querySelectorAll('mjx-container').length,
  errors: Array.from(document.querySelectorAll('mjx-merror')).map((e) => e.textContent.slice(0, 80)),
  untypeset: maths.filter((m) => !m.querySelector('mjx-container')).slice(0, 5).map((m) => m.textContent.slice(0, 80)),
};
"""

RESOURCE_URLS = """
const urls = [];
for (const e of performance.getEntriesByType('navigation')) urls.push(['navigation', e.name]);
for (const e of performance.getEntriesByType('resource')) urls.push(['resource:' + e.initiatorType, e.name]);
for (const el of document.querySelectorAll('script[src]')) urls.push(['script', el.src]);
for (const el of document.querySelectorAll('link[href]')) urls.push(['link ' + el.rel, el.href]);
const media = 'img[src], iframe[src], source[src], video[src], audio[src], embed[src], track[src]';
for (const el of document.querySelectorAll(media))
  urls.push([el.tagName.toLowerCase(), el.src]);
for (const el of document.querySelectorAll('object[data]')) urls.push(['object', el.data]);
return urls;
"""

WIDGET_STATE = """
const views = Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'));
const rendered = views.filter((v) => {
  const area = v.previousElementSibling;
  return area && area.classList.contains('widget-subarea') && area.getBoundingClientRect().height > 0;
});
return {views: views.length, rendered: rendered.length,
        state: !!document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]')};
"""

PLOT_STATE = """
const gd = document.querySelectorAll(arguments[0])[arguments[1]];
const layout = Object.assign({}, gd.layout);
delete layout.sliders;
const drawn = Array.from(gd.querySelectorAll('.cartesianlayer, .polarlayer, .pielayer, .infolayer .annotation, .gtitle'))
  .map((e) => e.outerHTML).join('');
return {
  data: JSON.stringify(gd.data),
  layout: JSON.stringify(layout),
  drawn: drawn,
  active: (gd.layout.sliders || []).map((s) => s.active || 0),
  steps: (gd.layout.sliders || []).map((s) => (s.steps || []).length),
};
"""


# ------------------------------------------------------------------ the visit


@dataclass
class Visit:
    """What one page showed in the browser."""

    page: str
    url: str = ""
    final_url: str = ""
    seconds: float = 0.0
    console: list = field(default_factory=list)
    page_errors: list = field(default_factory=list)
    server_errors: list = field(default_factory=list)
    resources: list = field(default_factory=list)
    mathjax: str = ""
    math: dict = field(default_factory=dict)
    figure_divs_in_html: int = 0
    figures: list = field(default_factory=list)
    widgets: dict = field(default_factory=dict)
    details: list = field(default_factory=list)
    launch: dict = field(default_factory=dict)
    sliders: list = field(default_factory=list)
    screenshot: Path | None = None
    failure: str = ""


def _wait(driver, condition, timeout=WAIT_S, interval=0.1):
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


STITCH = """
const [tiles, width, height, done] = arguments;
const canvas = document.createElement('canvas');
canvas.width = width;
canvas.height = height;
const ctx = canvas.getContext('2d');
let loaded = 0;
tiles.forEach(([y, data]) => {
  const img = new Image();
  img.onload = () => {
    ctx.drawImage(img, 0, y);
    if (++loaded === tiles.length) done(canvas.toDataURL('image/png').split(',', 2)[1]);
  };
  img.onerror = () => done(null);
  img.src = 'data:image/png;base64,' + data;
});
"""
SCREENSHOT_TILE = 4000  # px; one capture of a whole long page comes back blank below ~15000 px
SCREENSHOT_MAX = 32000  # px; the most a canvas can hold


def _screenshot(driver, path: Path) -> None:
    """A full-page PNG: captured in tiles via the DevTools protocol, stitched on a canvas."""
    import base64

    # The capture resizes the viewport; with transitions running, the sidebar is caught mid-slide.
    driver.execute_script(
        "const s = document.createElement('style'); s.id = 'gqa-no-motion';"
        "s.textContent = '*, *::before, *::after { transition: none !important; animation: none !important; }';"
        "document.head.appendChild(s);"
    )
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    width = max(1, int(size["width"]))
    height = max(1, min(int(size["height"]), SCREENSHOT_MAX))
    tiles = []
    for y in range(0, height, SCREENSHOT_TILE):
        clip = {"x": 0, "y": y, "width": width, "height": min(SCREENSHOT_TILE, height - y), "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        tiles.append([y, shot["data"]])
    data = tiles[0][1] if len(tiles) == 1 else driver.execute_async_script(STITCH, tiles, width, height)
    assert data, f"could not stitch the screenshot of {path.name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(data))
    driver.execute_script("document.getElementById('gqa-no-motion').remove(); window.scrollTo(0, 0);")


def _open_details(driver) -> list[dict]:
    """Click the summary of every <details> in document order; record its class, whether it started open and opened."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    results = []
    details = driver.find_elements(By.CSS_SELECTOR, "details")
    seen = set()
    for i, el in enumerate(details):
        if el.id in seen:
            continue
        seen.add(el.id)
        record = {"index": i, "classes": [], "summary": "", "initially_open": None, "opened": False,
                  "content_visible": False, "error": ""}
        try:
            record["classes"] = (el.get_attribute("class") or "").split()
            summary = el.find_element(By.CSS_SELECTOR, ":scope > summary")
            record["summary"] = " ".join(summary.text.split())[:80]
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", summary)
            was_open = driver.execute_script("return arguments[0].open;", el)
            record["initially_open"] = bool(was_open)
            clicks = 2 if was_open else 1  # an answer shown by default must still toggle
            for _ in range(clicks):
                before = driver.execute_script("return arguments[0].open;", el)
                summary.click()
                _wait(driver, lambda: driver.execute_script("return arguments[0].open;", el) != before, 5)
            record["opened"] = bool(driver.execute_script("return arguments[0].open;", el))
            record["content_visible"] = bool(
                _wait(
                    driver,
                    lambda: driver.execute_script(
                        "return Array.from(arguments[0].children).some("
                        "(c) => c.tagName !== 'SUMMARY' && c.getBoundingClientRect().height > 0 "
                        "&& getComputedStyle(c).visibility !== 'hidden');",
                        el,
                    ),
                    5,
                )
            )
        except WebDriverException as err:
            record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        results.append(record)
    return results


def _launch_menu(driver) -> dict:
    """Open the launch (rocket) menu, if any, and read the Colab link a reader would click."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    info = {"button": False, "colab_links": [], "colab_visible": False, "error": ""}
    links = driver.find_elements(By.CSS_SELECTOR, 'a[href*="colab.research.google.com"]')
    info["colab_links"] = [a.get_attribute("href") for a in links]
    toggles = driver.find_elements(
        By.CSS_SELECTOR, '.dropdown-launch-buttons button, button[aria-label="Launch interactive content"]'
    )
    if not toggles:
        return info
    info["button"] = True
    try:
        driver.execute_script("window.scrollTo(0, 0);")
        toggles[0].click()
        info["colab_visible"] = bool(_wait(driver, lambda: any(a.is_displayed() for a in links), 5)) if links else False
        toggles[0].click()  # close it again
    except WebDriverException as err:
        info["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return info


def _move_sliders(driver, figures: list[dict]) -> list[dict]:
    """Click each slider's rail at the far end from its active step; record what changed."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    results = []
    divs = driver.find_elements(By.CSS_SELECTOR, FIGURE_SELECTOR)
    for fig in figures:
        if not fig["sliders"]:
            continue
        gd = divs[fig["index"]]
        record = {"figure": fig["index"], "title": fig["title"], "error": ""}
        try:
            before = driver.execute_script(PLOT_STATE, FIGURE_SELECTOR, fig["index"])
            rails = gd.find_elements(By.CSS_SELECTOR, ".slider-container .slider-rail-touch-rect")
            if not rails:
                rails = gd.find_elements(By.CSS_SELECTOR, ".slider-container .slider-rail-rect")
            rail = rails[0]
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", gd)
            width = rail.size["width"]
            n_steps = before["steps"][0]
            # go to the last step, or to the first if the last is already active
            to_last = before["active"][0] < n_steps - 1
            x = (width / 2 - 3) if to_last else -(width / 2 - 3)
            ActionChains(driver).move_to_element_with_offset(rail, int(x), 0).click().perform()
            after = _wait(
                driver,
                lambda: (
                    lambda s: s if (s["data"] != before["data"] and s["drawn"] != before["drawn"]) else None
                )(driver.execute_script(PLOT_STATE, FIGURE_SELECTOR, fig["index"])),
                10,
            ) or driver.execute_script(PLOT_STATE, FIGURE_SELECTOR, fig["index"])
            record.update(
                active_before=before["active"][0],
                active_after=after["active"][0],
                steps=n_steps,
                data_changed=after["data"] != before["data"],
                layout_changed=after["layout"] != before["layout"],
                drawing_changed=after["drawn"] != before["drawn"],
            )
        except (WebDriverException, IndexError, KeyError) as err:
            record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        results.append(record)
    return results


def visit_page(driver, site, page: str) -> Visit:
    visit = Visit(page=page, url=site.url(f"{page}.html"))
    started = time.perf_counter()
    # Arrive as a first-time reader would: no stored theme, sidebar or tab state.
    driver.execute_cdp_cmd(
        "Storage.clearDataForOrigin", {"origin": site.origin, "storageTypes": "local_storage,session_storage"}
    )
    driver.get_log("browser")  # drop anything left from the previous page
    del site.errors[:]
    driver.get(visit.url)
    _wait(driver, lambda: driver.execute_script("return document.readyState") == "complete")
    visit.final_url = driver.current_url
    visit.mathjax = driver.execute_async_script(WAIT_FOR_MATHJAX)
    visit.figure_divs_in_html = page_file(page).read_text().count('class="gqa-plotly plotly-graph-div"')

    def figures_ready():
        figs = driver.execute_script(FIGURES_DRAWN, FIGURE_SELECTOR)
        return [figs] if all(f["svg"] and f["marks"] for f in figs) else None

    ready = _wait(driver, figures_ready, 20)
    visit.figures = ready[0] if ready else driver.execute_script(FIGURES_DRAWN, FIGURE_SELECTOR)
    visit.math = driver.execute_script(MATH_STATE)

    def widgets_ready():
        state = driver.execute_script(WIDGET_STATE)
        return state if state["rendered"] == state["views"] else None

    visit.widgets = _wait(driver, widgets_ready, 20) or driver.execute_script(WIDGET_STATE)

    visit.screenshot = SCREENSHOTS / f"{page.replace('/', '__')}.png"
    _screenshot(driver, visit.screenshot)
    REPORT["screenshots"].append(visit.screenshot)

    visit.details = _open_details(driver)
    visit.launch = _launch_menu(driver)
    visit.sliders = _move_sliders(driver, visit.figures)

    time.sleep(0.3)  # let late errors and requests land
    visit.resources = driver.execute_script(RESOURCE_URLS)
    visit.page_errors = driver.execute_script("return window.__gqaErrors || ['init script did not run'];")
    visit.console = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    visit.server_errors = list(site.errors)
    visit.seconds = time.perf_counter() - started
    return visit


_VISITS: dict[str, Visit] = {}


@pytest.fixture(scope="session")
def visits(browser, site):
    """Visit every page of the book once (in toc order) and keep what each showed."""
    started = time.perf_counter()
    if not _VISITS:
        for old in SCREENSHOTS.glob("*.png"):  # no stale pictures of pages that are gone
            old.unlink()
        for page in PAGES:
            try:
                _VISITS[page] = visit_page(browser, site, page)
            except Exception as err:  # a page the browser could not even visit fails its tests
                _VISITS[page] = Visit(page=page, failure=f"{type(err).__name__}: {err}")
        REPORT["visits_seconds"] = time.perf_counter() - started
        # What each page showed, beside the screenshots (for a person reading a failure).
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / "visits.json").write_text(
            json.dumps({p: asdict(v) for p, v in _VISITS.items()}, indent=1, default=str)
        )
    return _VISITS


def visit_of(visits, page) -> Visit:
    visit = visits[page]
    assert not visit.failure, f"{page}: the browser could not visit the page: {visit.failure}"
    return visit


# ------------------------------------------------------------------ tests


def test_index_opens_the_landing_page(browser, site):
    browser.get(site.url("index.html"))
    landed = _wait(browser, lambda: browser.current_url.endswith(f"/{PAGES[0]}.html") and browser.current_url, 10)
    assert landed, f"index.html did not lead to {PAGES[0]}.html (at {browser.current_url})"
    title = _wait(
        browser, lambda: [h for h in browser.find_elements("css selector", "article h1") if h.is_displayed()], 10
    )
    assert title and title[0].text.strip(), "the landing page shows no title"


@pytest.mark.parametrize("page", PAGES)
def test_no_javascript_errors(visits, page):
    visit = visit_of(visits, page)
    problems = [f"console: {e['message'][:300]}" for e in visit.console]
    problems += [f"page: {e[:300]}" for e in visit.page_errors]
    problems += [f"server: HTTP {code} for {path} (from {ref})" for code, path, ref in visit.server_errors]
    assert not problems, f"{page}: " + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_nothing_from_the_network(visits, page):
    visit = visit_of(visits, page)
    assert visit.resources, "no resource list read from the page"
    remote = []
    for kind, url in visit.resources:
        parsed = urlparse(url)
        if parsed.scheme in INERT_SCHEMES:
            continue
        if parsed.scheme not in ("http", "https") or parsed.hostname not in LOCAL_HOSTS:
            remote.append(f"{kind}: {url}")
    assert not remote, f"{page} requests resources from outside the site:\n" + "\n".join(sorted(set(remote)))
    # the shared scripts really came from the site's _static
    loaded = {urlparse(url).path for kind, url in visit.resources if kind.startswith("resource")}
    assert any(p.endswith("/_static/plotly.min.js") for p in loaded), "plotly.js not loaded from _static"


@pytest.mark.parametrize("page", PAGES)
def test_every_plotly_figure_is_drawn(visits, page):
    visit = visit_of(visits, page)
    figs = visit.figures
    assert len(figs) == visit.figure_divs_in_html, (
        f"{page}: {visit.figure_divs_in_html} figure divs in the HTML, {len(figs)} in the browser"
    )
    blank = [f for f in figs if not (f["svg"] and f["width"] > 0 and f["height"] > 0 and f["visible"] and f["marks"])]
    assert not blank, f"{page}: figures not drawn (no SVG or no visible trace): " + json.dumps(blank, indent=1)
    rendered = sum(1 for f in figs if f["svg"])
    assert rendered == visit.figure_divs_in_html


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset(visits, page):
    visit = visit_of(visits, page)
    math = visit.math
    if not math["math"]:
        return  # nothing to typeset on this page
    assert visit.mathjax == "ok", f"{page}: MathJax did not start: {visit.mathjax}"
    assert math["typeset"] == math["math"], (
        f"{page}: {math['math'] - math['typeset']} of {math['math']} math elements not typeset, "
        f"e.g. {math['untypeset']}"
    )
    assert not math["errors"], f"{page}: MathJax reports TeX errors: {math['errors']}"


@pytest.mark.parametrize("page", PAGES)
def test_every_stored_widget_is_displayed(visits, page):
    """Widget outputs stored in a chapter (e.g. a finished progress bar) render from the site's own copy."""
    widgets = visit_of(visits, page).widgets
    missing = widgets["views"] - widgets["rendered"]
    assert not missing, f"{page}: {missing} of {widgets['views']} widgets not rendered"


@pytest.mark.parametrize("page", PAGES)
def test_every_hidden_answer_opens_on_click(visits, page):
    visit = visit_of(visits, page)
    broken = [d for d in visit.details if d["error"] or not (d["opened"] and d["content_visible"])]
    assert not broken, f"{page}: hidden content that does not open on click: " + json.dumps(broken, indent=1)


@pytest.mark.parametrize("page", CHAPTER_PAGES)
def test_chapters_have_answers_to_reveal(visits, page):
    visit = visit_of(visits, page)
    answers = [d for d in visit.details if "answer" in d["classes"]]
    assert answers, f"{page}: no hidden answer (<details class=\"answer\">) on the page"
    shown = [d for d in answers if d["initially_open"] is not False]
    assert not shown, f"{page}: answers shown before any click (an `open` attribute?): " + json.dumps(shown, indent=1)
    closed = [d for d in answers if d["error"] or not (d["opened"] and d["content_visible"] and d["summary"])]
    assert not closed, f"{page}: answers that do not open on click: " + json.dumps(closed, indent=1)


@pytest.mark.parametrize("page", PAGES)
def test_launch_button_opens_the_chapter_notebook_on_colab(visits, page):
    visit = visit_of(visits, page)
    launch = visit.launch
    if page in CHAPTER_PAGES:
        expected = colab_url_for(page)
        assert (ROOT / f"{page}.ipynb").exists(), f"{page}.ipynb is not in the repository"
        assert launch["button"], f"{page}: no launch button"
        assert not launch["error"], f"{page}: launch menu: {launch['error']}"
        assert launch["colab_links"] == [expected], f"{page}: Colab links {launch['colab_links']}, want [{expected}]"
        assert launch["colab_visible"], f"{page}: the Colab link does not show when the launch menu is opened"
    else:
        # a launch link elsewhere must still open a notebook that exists in the repository
        for link in launch["colab_links"]:
            path = link.split("/blob/", 1)[1].split("/", 1)[1] if "/blob/" in link else link
            assert path.endswith(".ipynb") and (ROOT / path).exists(), f"{page}: dead Colab link {link}"


def test_sliders_change_the_plot(visits):
    moved = [(page, s) for page, v in visits.items() for s in v.sliders]
    assert moved, "no figure with a slider (layout.sliders) on any page of the book"
    broken = [
        (page, s)
        for page, s in moved
        if s["error"] or s["active_after"] == s["active_before"] or not s["data_changed"] or not s["drawing_changed"]
    ]
    assert not broken, "sliders that did not change their plot: " + json.dumps(broken, indent=1)


@pytest.mark.parametrize("page", PAGES)
def test_screenshot_saved(visits, page):
    visit = visit_of(visits, page)
    shot = visit.screenshot
    assert shot is not None and shot.exists(), f"{page}: no screenshot"
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{shot} is not a PNG"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width >= 800 and height >= 600, f"{shot}: {width}x{height}"
