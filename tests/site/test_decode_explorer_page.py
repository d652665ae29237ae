"""Chapter 5's precomputed decode explorer in a real browser: its read-out equals what gqa_lib computes.

The explorer's script only looks up numbers that Python computed
(gqa_lib.viz.widgets.decode_explorer_data, embedded in the page as JSON). These
tests set the controls as a reader would (model, device, context, the G
slider) and compare what the page shows with the library's own formulas: the
KV-cache size from the model preset, the timings from the sweep rows, the
comparisons from gqa_lib.viz.widgets.compare_times.

Two pages: a standalone one written here from synthetic sweeps (two devices,
different contexts; plotly.js inlined from the installed plotly package), which
needs only the browser, and the built chapter (chapters/05_fast_decoding.html),
whose sweeps were measured when the book was built.
"""

from __future__ import annotations

from pathlib import Path

import plotly
import pytest

from gqa_lib import get_preset
from gqa_lib.core.kv_cache import kv_cache_bytes
from gqa_lib.speed import bench
from gqa_lib.viz.widgets import EXPLORER_MODELS, compare_times, decode_explorer_html
from sitekit import fmt_bytes

PAGE = "chapters/05_fast_decoding.html"

# Sets the controls of the first explorer on the page like a reader (a change/input event each), then reads
# everything it shows. Arguments: model name, device index, context in tokens, G.
SET_CONTROLS = """
const [model, device, ctx, g] = arguments;
const roots = document.querySelectorAll('.gqa-decode-explorer');
if (roots.length !== 1) return 'expected one explorer on the page, found ' + roots.length;
const root = roots[0];
const el = (n) => root.querySelector('[data-explorer="' + n + '"]');
const data = JSON.parse(el('data').textContent);
const m = data.models.findIndex((x) => x.name === model);
if (m < 0) return 'no model ' + model;
el('model').value = m; el('model').dispatchEvent(new Event('change'));
el('device').value = device; el('device').dispatchEvent(new Event('change'));
const c = [...el('context').options].findIndex((o) => o.textContent === ctx.toLocaleString('en-US') + ' tokens');
if (c < 0) return 'no context ' + ctx + ' among ' + [...el('context').options].map((o) => o.textContent);
el('context').value = c; el('context').dispatchEvent(new Event('change'));
el('G').value = data.models[m].groups.indexOf(g); el('G').dispatchEvent(new Event('input'));
const read = {data: data};
for (const n of ['G-label', 'kv-seq', 'kv-ref', 'kv-step', 'ms', 'ms-ref', 'ms-model', 'what']) read[n] = el(n).textContent;
read.devices = [...el('device').options].map((o) => o.textContent);
read.G_max = +el('G').max;
read.state = JSON.parse(root.dataset.state);
read.bars = el('plot').data.map((t) => ({x: t.x.slice(), y: t.y.slice(), colour: t.marker.color.slice()}));
read.errors = window.__gqaErrors || [];
return read;
"""


def _fmt_ms(ms: float) -> str:
    digits = 0 if ms >= 100 else 1 if ms >= 10 else 2 if ms >= 1 else 3
    return f"{ms:.{digits}f} ms"


def _check_readout(read: dict, model: str, device: int, ctx: int, g: int, times: dict[int, float], dtype_bytes: int,
                   batch: int) -> None:
    """The page's read-out for (model, device, ctx, g) against the preset's formulas and ``times`` (G -> ms)."""
    assert isinstance(read, dict), read
    assert read["errors"] == []
    p = get_preset(model)
    groups = bench.divisors(p.n_heads)
    assert read["state"]["model"] == model and read["state"]["context"] == ctx and read["state"]["G"] == g
    assert read["G_max"] == len(groups) - 1  # the slider runs over the divisors of this model's H
    kind = " (MHA)" if g == p.n_heads else " (MQA)" if g == 1 else f" (GQA-{g})"
    assert read["G-label"] == f"{g}{kind}" + (", as released" if g == p.n_kv_heads else "")
    kv = {q: kv_cache_bytes(p.n_layers, q, p.head_dim, ctx, 1, dtype_bytes) for q in groups}  # one sequence
    assert kv[g] == ctx * p.kv_bytes_per_token(dtype_bytes, n_kv_heads=g)
    assert read["kv-seq"] == fmt_bytes(kv[g])
    assert read["kv-ref"] == f"MHA {fmt_bytes(kv[p.n_heads])}, MQA {fmt_bytes(kv[1])}"
    assert read["kv-step"] == fmt_bytes(2 * batch * g * ctx * p.head_dim * dtype_bytes)  # one layer, K and V
    comparisons = [compare_times(times[g], times[ref_g], ref) for ref_g, ref in ((p.n_heads, "MHA"), (1, "MQA"))
                   if ref_g != g]
    assert read["ms"] == _fmt_ms(times[g]) + (": " + " and ".join(comparisons) if comparisons else "")
    assert read["ms-ref"] == f"MHA {_fmt_ms(times[p.n_heads])}, MQA {_fmt_ms(times[1])}"
    assert read["ms-model"] == _fmt_ms(times[g] * p.n_layers)
    assert f"batch {batch}" in read["what"] and f"all {p.n_layers} layers" in read["what"]
    cache_bars, time_bars = read["bars"]
    assert cache_bars["y"] == pytest.approx([kv[q] / 2**30 for q in groups])
    assert time_bars["y"] == pytest.approx([times[q] for q in groups])
    assert [c == "#d62728" for c in cache_bars["colour"]] == [q == g for q in groups]  # the chosen G, highlighted


# ---------------------------------------------------------------- a standalone page from synthetic sweeps


def _synthetic(heads: int, device: str, contexts, scale: float, batch: int = 1, dtype: str = "float32",
               note: str | None = None) -> dict:
    """A sweep result with made-up, distinct times: ms = scale * (1 + G) * context / 1000 + G / 1e4."""
    elem = {"float32": 4, "bfloat16": 2}[dtype]
    rows = [{"context": c, "G": g, "ms": scale * (1 + g) * c / 1000 + g / 1e4,
             "kv_bytes": kv_cache_bytes(1, g, 128, c, batch, elem)}
            for c in contexts for g in bench.divisors(heads)]
    sweep = {"benchmark": "sweep", "device": device, "rows": rows,
             "settings": {"batch": batch, "heads": heads, "head_dim": 128, "dtype": dtype}}
    if note:
        sweep["note"] = note
    return sweep


SWEEPS = [
    _synthetic(32, "CPU (test, 2 threads)", (512, 1024, 4096), 1.0, note="measured when this chapter ran"),
    _synthetic(28, "CPU (test, 2 threads)", (512, 1024, 4096), 0.9, note="measured when this chapter ran"),
    _synthetic(64, "CPU (test, 2 threads)", (512, 1024, 4096), 2.0, note="measured when this chapter ran"),
    _synthetic(32, "Test GPU 80GB", (1024, 8192, 32768), 0.01, batch=4, dtype="bfloat16"),  # a committed reference
]


def _times(sweep: dict, ctx: int) -> dict[int, float]:
    return {r["G"]: r["ms"] for r in sweep["rows"] if r["context"] == ctx}


@pytest.fixture(scope="module")
def standalone_page(tmp_path_factory):
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    page = tmp_path_factory.mktemp("explorer") / "explorer.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                    f"<script>{plotly_js.read_text()}</script></head><body>"
                    + decode_explorer_html(SWEEPS) + "</body></html>")
    return page.as_uri()


STANDALONE_CASES = [
    # model, device index, context, G, sweep
    ("Llama 2 7B", 0, 1024, 8, SWEEPS[0]),
    ("Llama 2 7B", 0, 4096, 32, SWEEPS[0]),
    ("Llama 2 7B", 1, 32768, 1, SWEEPS[3]),  # the reference device: its own contexts, batch and dtype
    ("Qwen2.5 7B", 0, 512, 7, SWEEPS[1]),
    ("Llama 2 70B", 0, 4096, 8, SWEEPS[2]),
]


@pytest.mark.parametrize("case", STANDALONE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_standalone_explorer_shows_what_python_computed(browser, standalone_page, case):
    model, device, ctx, g, sweep = case
    browser.get(standalone_page)
    read = browser.execute_script(SET_CONTROLS, model, device, ctx, g)
    elem = 4 if sweep["settings"]["dtype"] == "float32" else 2
    _check_readout(read, model, device, ctx, g, _times(sweep, ctx), elem, sweep["settings"]["batch"])
    assert read["state"]["device"] == sweep["device"]


def test_standalone_explorer_lists_a_reference_only_for_its_shape(browser, standalone_page):
    browser.get(standalone_page)
    read = browser.execute_script(SET_CONTROLS, "Llama 2 7B", 0, 512, 32)
    assert read["devices"] == ["CPU (test, 2 threads) (batch 1, float32; measured when this chapter ran)",
                               "Test GPU 80GB (batch 4, bfloat16; committed reference sweep)"]
    read = browser.execute_script(SET_CONTROLS, "Llama 2 70B", 0, 512, 64)
    assert read["devices"] == ["CPU (test, 2 threads) (batch 1, float32; measured when this chapter ran)"]
    # a model change resets G to the model's released number of KV heads and keeps the context when it can
    reset = browser.execute_script("""
        const root = document.querySelector('.gqa-decode-explorer');
        const el = (n) => root.querySelector('[data-explorer="' + n + '"]');
        el('model').value = 1; el('model').dispatchEvent(new Event('change'));
        return JSON.parse(root.dataset.state);""")
    assert reset["model"] == "Qwen2.5 7B" and reset["G"] == get_preset("Qwen2.5 7B").n_kv_heads
    assert reset["context"] == 512


# ---------------------------------------------------------------- the built chapter


def _page_cases(data: dict) -> list[tuple[str, int, int, int]]:
    """Per model and measured device: the shortest and longest context, each at MQA, the released G and MHA."""
    cases = []
    for m in data["models"]:
        for d, sweep in enumerate(m["sweeps"]):
            for ctx in (sweep["contexts"][0], sweep["contexts"][-1]):
                for g in sorted({1, m["G0"], m["H"]}):
                    cases.append((m["name"], d, ctx, g))
    return cases


def test_chapter_explorer_shows_what_was_measured(browser, site):
    browser.get(site.url(PAGE))
    data = browser.execute_script(
        "const d = document.querySelector('.gqa-decode-explorer [data-explorer=\"data\"]');"
        "return d ? JSON.parse(d.textContent) : null;")
    assert data, f"no decode explorer on {PAGE}"
    assert [m["name"] for m in data["models"]] == list(EXPLORER_MODELS)
    assert len({m["H"] for m in data["models"]}) == len(EXPLORER_MODELS)  # different H: different G sliders
    for m in data["models"]:
        assert m["groups"] == bench.divisors(get_preset(m["name"]).n_heads)
        assert m["sweeps"][0]["note"] == "measured when this chapter ran"
    for model, device, ctx, g in _page_cases(data):
        read = browser.execute_script(SET_CONTROLS, model, device, ctx, g)
        m = next(x for x in data["models"] if x["name"] == model)
        sweep = m["sweeps"][device]
        times = dict(zip(m["groups"], sweep["ms"][sweep["contexts"].index(ctx)]))
        assert all(t > 0 for t in times.values())
        elem = {"float32": 4, "bfloat16": 2, "float16": 2}[sweep["dtype"]]
        _check_readout(read, model, device, ctx, g, times, elem, sweep["batch"])


def test_chapter_has_no_dead_sliders(browser, site):
    """On the website the live ipywidgets explorer is replaced by a note; every slider on the page works."""
    browser.get(site.url(PAGE))
    found = browser.execute_script("""
        return {ranges: [...document.querySelectorAll('input[type=range]')]
                          .map((r) => !!r.closest('.gqa-decode-explorer')),
                widgets: document.querySelectorAll('.jupyter-widgets, script[type="application/vnd.jupyter.widget-view+json"]').length,
                note: document.body.textContent.includes('The live explorer measures on the reader')};""")
    assert found["ranges"] and all(found["ranges"]), found
    assert found["widgets"] == 0 and found["note"], found
