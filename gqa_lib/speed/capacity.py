"""Serving capacity: what a KV cache of G heads costs, and what it buys, when a real model decodes.

At serving time GQA's main payoff is *capacity*: the memory left next to the
weights holds the KV caches of the sequences decoded together, so a smaller
cache per sequence means a larger batch, and, because a memory-bound decode
step reads the weights once for the whole batch, more tokens per second.

The arithmetic, for a model converted to G KV heads, a context of T tokens,
a batch of B sequences and a device with memory M (bytes) and bandwidth W
(bytes/s):

* cache per sequence      ``kv(T) = kv_full * T + kv_windowed * min(T, window)``
  (layers with a sliding window keep only the last ``window`` tokens);
* batch that fits         ``floor((M - weights) / kv(T))`` (0 when the weights alone do not fit);
* decode tokens/s bound   ``B * W / (weights read per step + B * kv(T))``: each step
  reads every weight it uses once and every sequence's cache once; no step can
  be faster than moving those bytes. Compute, kernel launches and activations
  are ignored, so real engines stay below this bound.

For a mixture of experts a step reads only the experts its B tokens were
routed to: with E experts and k chosen per token (uniform routing assumed),
an expert is untouched by all B tokens with probability ``(1 - k/E)^B``.

:func:`calculator` shows all of it as one self-contained HTML figure (plotly
plus a few lines of JavaScript that look up the numbers computed here), which
works the same on the book's website, in Jupyter and on Colab.
"""

from __future__ import annotations

import html
import json
import uuid
from dataclasses import dataclass

from ..checks import as_count, divisors
from ..model_configs import REAL_MODELS, RealModel, load_real_model
from ..viz.plots import FORM_HELPERS_JS, run_with_plotly

__all__ = [
    "Device", "DEVICES", "MEMORIES_GB", "CACHE_DTYPES", "CONTEXTS", "BATCHES",
    "kv_bytes_per_sequence", "kv_bytes_split", "weight_bytes_read_per_step", "max_batch",
    "decode_tokens_per_second_bound", "decode_flops_per_token", "choose_n_kv_heads", "calculator_data", "calculator", "Calculator",
]

GB = 1e9  # memory sizes and bandwidths are decimal, as on the datasheets


@dataclass(frozen=True)
class Device:
    """An accelerator as a memory size (bytes) and a peak memory bandwidth (bytes/s), from its datasheet."""

    name: str
    memory_bytes: float
    bandwidth_bytes_per_s: float


DEVICES = (
    Device("NVIDIA T4 (16 GB, 320 GB/s)", 16 * GB, 320 * GB),
    Device("NVIDIA L4 (24 GB, 300 GB/s)", 24 * GB, 300 * GB),
    Device("NVIDIA A100 40GB (1,555 GB/s)", 40 * GB, 1555 * GB),
    Device("NVIDIA A100 80GB (2,039 GB/s)", 80 * GB, 2039 * GB),
    Device("NVIDIA H100 SXM (80 GB, 3,350 GB/s)", 80 * GB, 3350 * GB),
    Device("NVIDIA H200 (141 GB, 4,800 GB/s)", 141 * GB, 4800 * GB),
)
MEMORIES_GB = (16, 24, 40, 80)
CACHE_DTYPES = {"bf16 / fp16 (2 bytes)": 2, "int8 / fp8 (1 byte)": 1, "fp32 (4 bytes)": 4}
CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _model(model: RealModel | str) -> RealModel:
    return load_real_model(model) if isinstance(model, str) else model


def _groups(model: RealModel, n_kv_heads: int | None) -> int:
    if model.attention == "MLA":
        raise ValueError(f"{model.name} uses multi-head latent attention: its cache has no KV heads to choose")
    return model.n_kv_heads if n_kv_heads is None else n_kv_heads


def kv_bytes_split(model: RealModel | str, n_kv_heads: int | None = None, bytes_per_elem: int = 2) -> tuple[int, int, int | None]:
    """(bytes per token in full-attention layers, bytes per token in windowed layers, window or None).

    Derived from :meth:`RealModel.kv_bytes` itself, so the split cannot disagree with it.
    """
    model = _model(model)
    g = _groups(model, n_kv_heads)
    window = model.local_window  # Mistral: every layer; Gemma 2: every other layer
    per_token = model.kv_bytes(1, bytes_per_elem=bytes_per_elem, n_kv_heads=g)
    if window is None:
        return per_token, 0, None
    beyond = model.kv_bytes(window + 1, bytes_per_elem=bytes_per_elem, n_kv_heads=g)
    full = beyond - model.kv_bytes(window, bytes_per_elem=bytes_per_elem, n_kv_heads=g)
    return full, per_token - full, window


def kv_bytes_per_sequence(model: RealModel | str, context: int, n_kv_heads: int | None = None,
                          bytes_per_elem: int = 2) -> int:
    """KV-cache bytes of one sequence of ``context`` tokens (all layers, K and V)."""
    context = as_count("context", context)
    full, windowed, window = kv_bytes_split(model, n_kv_heads, bytes_per_elem)
    return full * context + windowed * (context if window is None else min(context, window))


def _experts(model: RealModel) -> tuple[int, int] | None:
    """(experts per layer E, experts chosen per token k) of a mixture of experts, else None."""
    cfg = model.config
    for n_key, k_key in (("num_local_experts", "num_experts_per_tok"), ("n_routed_experts", "num_experts_per_tok")):
        if cfg.get(n_key) and cfg.get(k_key):
            return int(cfg[n_key]), int(cfg[k_key])
    return None


def weight_bytes_read_per_step(model: RealModel | str, batch: int, n_kv_heads: int | None = None,
                               bytes_per_elem: int = 2) -> float:
    """Bytes of weights one decode step of ``batch`` tokens reads (the model converted to ``n_kv_heads``).

    Dense models read every weight; an encoder-decoder (T5) reads its decoder and head, not the encoder or the
    cross-attention k, v projections, which run once per input. A mixture of experts reads its shared
    weights and, per layer, the experts at least one of the ``batch`` tokens
    was routed to (uniform routing: expected fraction ``1 - (1 - k/E)^batch``).
    """
    model = _model(model)
    batch = as_count("batch", batch)
    if model.cross_kv_elems_per_source_token:
        # An encoder-decoder (T5): a step runs the decoder and head, n_active_params, which leave out the encoder
        # and the cross-attention k, v (both run once per input). Converting changes the self-attention k, v there.
        def self_kv(g: int) -> int:
            return model.n_layers * 2 * model.d_model * g * model.head_dim

        g = _groups(model, n_kv_heads)
        return float((model.n_active_params - self_kv(model.n_kv_heads) + self_kv(g)) * bytes_per_elem)
    total = model.weight_bytes(bytes_per_elem=bytes_per_elem, n_kv_heads=_groups(model, n_kv_heads))
    experts = _experts(model)
    if experts is None:
        return float(total)
    n_experts, top_k = experts
    # all routed-expert parameters, from (total - active) = expert_params * (1 - k/E)
    expert_bytes = (model.n_params - model.n_active_params) * bytes_per_elem / (1 - top_k / n_experts)
    touched = 1 - (1 - top_k / n_experts) ** batch
    return total - expert_bytes * (1 - touched)


def max_batch(model: RealModel | str, memory_bytes: float, context: int, n_kv_heads: int | None = None,
              bytes_per_elem: int = 2) -> int:
    """Sequences of ``context`` tokens whose caches fit next to the weights in ``memory_bytes`` (0 if none)."""
    model = _model(model)
    if not memory_bytes > 0:
        raise ValueError(f"memory_bytes must be positive; got {memory_bytes!r}")
    g = _groups(model, n_kv_heads)
    free = memory_bytes - model.weight_bytes(bytes_per_elem=bytes_per_elem, n_kv_heads=g)
    if free <= 0:
        return 0
    return int(free // kv_bytes_per_sequence(model, context, g, bytes_per_elem))


def decode_flops_per_token(model: RealModel | str, context: int) -> float:
    """FLOPs to generate one token at ``context``: 2 per active parameter, plus attention's
    Q.K and P.V products, 4 * layers * H * D * context (independent of G: every query head still
    attends over every position)."""
    model = _model(model)
    context = as_count("context", context)
    return 2.0 * model.n_active_params + 4.0 * model.n_layers * model.n_heads * model.head_dim * context


def decode_tokens_per_second_bound(model: RealModel | str, batch: int, context: int, bandwidth_bytes_per_s: float,
                                   n_kv_heads: int | None = None, bytes_per_elem: int = 2,
                                   peak_flops: float | None = None) -> float:
    """Upper bound on generated tokens/s of a decode step at ``batch``: the memory bound (weights read once
    per step, every sequence's cache once), and, with ``peak_flops`` (FLOP/s), also the compute bound
    ``batch * peak_flops / (batch * decode_flops_per_token)``; the smaller of the two."""
    if not bandwidth_bytes_per_s > 0:
        raise ValueError(f"bandwidth_bytes_per_s must be positive; got {bandwidth_bytes_per_s!r}")
    if peak_flops is not None and not peak_flops > 0:
        raise ValueError(f"peak_flops must be positive; got {peak_flops!r}")
    model = _model(model)
    step_bytes = weight_bytes_read_per_step(model, batch, n_kv_heads, bytes_per_elem) + batch * kv_bytes_per_sequence(
        model, context, n_kv_heads, bytes_per_elem)
    memory_bound = batch * bandwidth_bytes_per_s / step_bytes
    if peak_flops is None:
        return memory_bound
    return min(memory_bound, peak_flops / decode_flops_per_token(model, context))


def choose_n_kv_heads(model: RealModel | str, device: Device, context: int, quality_loss: dict[int, float],
                      tolerance: float, bytes_per_elem: int = 2, peak_flops: float | None = None,
                      near: float = 0.02, tp_degree: int = 1) -> dict:
    """A worked rule for G: among the G whose ``quality_loss`` (e.g. points lost against MHA) is within
    ``tolerance``, take the highest decode throughput bound at the largest batch that fits on ``device``;
    any G within ``near`` (2%) of that throughput counts as a tie, and ties go to the larger G (better
    quality). ``device`` may stand for several GPUs (their memory and bandwidth summed) split by tensor
    parallelism of degree ``tp_degree``: then a G below it is stored ``tp_degree / G`` times (chapter 10).
    Returns ``{"choice": G or None, "rows": [per G: batch, tokens_per_s, quality_loss, allowed]}``.
    """
    model = _model(model)
    tp_degree = as_count("tp_degree", tp_degree)
    rows = []
    for g in sorted(quality_loss):
        # tensor parallelism stores each KV head on W/G ranks when G < W: the cache of max(G, W) heads
        kv = kv_bytes_per_sequence(model, context, max(g, tp_degree), bytes_per_elem)
        free = device.memory_bytes - model.weight_bytes(bytes_per_elem=bytes_per_elem, n_kv_heads=g)
        b = int(free // kv) if free > 0 else 0
        tps = 0.0
        if b:
            step = weight_bytes_read_per_step(model, b, g, bytes_per_elem) + b * kv
            tps = b * device.bandwidth_bytes_per_s / step
            if peak_flops is not None:
                tps = min(tps, peak_flops / decode_flops_per_token(model, context))
        rows.append({"G": g, "batch": b, "tokens_per_s": tps, "quality_loss": quality_loss[g],
                     "allowed": quality_loss[g] <= tolerance and b > 0})
    allowed = [r for r in rows if r["allowed"]]
    if not allowed:
        return {"choice": None, "rows": rows}
    best = max(r["tokens_per_s"] for r in allowed)
    choice = max(r["G"] for r in allowed if r["tokens_per_s"] >= (1 - near) * best)
    return {"choice": choice, "rows": rows}


def calculator_models() -> list[RealModel]:
    """The shipped models whose cache has KV heads to choose (every one but the MLA model)."""
    return [m for m in REAL_MODELS.values() if m.attention != "MLA"]


def calculator_data() -> dict:
    """Every number the calculator shows, computed here; the page's script only looks them up and combines
    them with the formulas of this module's docstring (the site tests hold the two equal)."""
    models = []
    for m in calculator_models():
        per_dtype = {}
        for label, nbytes in CACHE_DTYPES.items():
            rows = []
            for g in divisors(m.n_heads):
                full, windowed, _ = kv_bytes_split(m, g, nbytes)
                rows.append({
                    "G": g, "kvFull": full, "kvWindowed": windowed,
                    "weights": m.weight_bytes(bytes_per_elem=nbytes, n_kv_heads=g),
                    "read": [weight_bytes_read_per_step(m, b, g, nbytes) for b in BATCHES],
                })
            per_dtype[label] = rows
        models.append({"name": m.name, "H": m.n_heads, "G0": m.n_kv_heads, "attention": m.attention,
                       "window": m.local_window, "dtypes": per_dtype})
    return {
        "models": models, "contexts": list(CONTEXTS), "batches": list(BATCHES),
        "memoriesGB": list(MEMORIES_GB), "dtypes": list(CACHE_DTYPES),
        "devices": [{"name": d.name, "memory": d.memory_bytes, "bandwidth": d.bandwidth_bytes_per_s} for d in DEVICES],
    }


_SCRIPT = r"""
var D = __DATA__, root = document.getElementById('__ID__');
function el(name) { return root.querySelector('[data-calc="' + name + '"]'); }
function fmtInt(n) { return n.toLocaleString('en-US'); }
function perSeq(r, ctx, win) { return r.kvFull * ctx + r.kvWindowed * (win === null ? ctx : Math.min(ctx, win)); }
function fits(r, ctx, win, mem) { var free = mem - r.weights; return free <= 0 ? 0 : Math.floor(free / perSeq(r, ctx, win)); }
function tps(r, ctx, win, bi, bw) { var b = D.batches[bi]; return b * bw / (r.read[bi] + b * perSeq(r, ctx, win)); }
fill(el('model'), D.models.map(function (m) { return m.name + ' (' + m.attention + ')'; }));
fill(el('dtype'), D.dtypes);
fill(el('device'), D.devices.map(function (d) { return d.name; }));
el('device').value = 4;
el('context').max = D.contexts.length - 1; el('context').value = 3;
el('batch').max = D.batches.length - 1; el('batch').value = 4;
function rows() { var m = D.models[+el('model').value]; return m.dtypes[D.dtypes[+el('dtype').value]]; }
function onModel() {
  var m = D.models[+el('model').value], gs = rows().map(function (r) { return r.G; });
  el('G').max = gs.length - 1; el('G').value = gs.indexOf(m.G0);
}
function update() {
  var m = D.models[+el('model').value], rs = rows(), r = rs[+el('G').value];
  var ci = +el('context').value, ctx = D.contexts[ci], bi = +el('batch').value, dev = D.devices[+el('device').value];
  el('G-label').textContent = r.G + (r.G === m.H ? ' (MHA)' : r.G === 1 ? ' (MQA)' : ' (GQA-' + r.G + ')') + (r.G === m.G0 ? ', as released' : '');
  el('context-label').textContent = fmtInt(ctx) + ' tokens';
  el('batch-label').textContent = fmtInt(D.batches[bi]);
  el('kv-token').textContent = fmtBytes(r.kvFull + r.kvWindowed);
  el('kv-seq').textContent = fmtBytes(perSeq(r, ctx, m.window));
  el('kv-batch').textContent = fmtBytes(D.batches[bi] * perSeq(r, ctx, m.window));
  el('weights').textContent = fmtBytes(r.weights);
  el('fits').textContent = D.memoriesGB.map(function (g) { var n = fits(r, ctx, m.window, g * 1e9); return g + ' GB: ' + (r.weights >= g * 1e9 ? 'weights do not fit' : fmtInt(n)); }).join(' · ');
  el('fits-device').textContent = fmtInt(fits(r, ctx, m.window, dev.memory));
  el('tps').textContent = fmtInt(Math.round(tps(r, ctx, m.window, bi, dev.bandwidth))) +
    (D.batches[bi] > fits(r, ctx, m.window, dev.memory) ? ' (but this batch does not fit on the device)' : '');
  function cappedTps(q) {  // the chosen batch, or the largest batch step that fits on the device
    var f = fits(q, ctx, m.window, dev.memory), j = bi;
    while (j >= 0 && D.batches[j] > f) j--;
    return j < 0 ? 0 : tps(q, ctx, m.window, j, dev.bandwidth);
  }
  var xs = rs.map(function (q) { return 'G=' + q.G; });
  var colour = rs.map(function (q) { return q.G === r.G ? '#d62728' : '#1f77b4'; });
  Plotly.react(el('plot'), [
    {type: 'bar', x: xs, y: rs.map(function (q) { return perSeq(q, ctx, m.window) / 2 ** 30; }), marker: {color: colour},
     name: 'KV cache per sequence (GiB)', xaxis: 'x', yaxis: 'y'},
    {type: 'bar', x: xs, y: rs.map(function (q) { return fits(q, ctx, m.window, dev.memory); }), marker: {color: colour},
     name: 'batch that fits on the device', xaxis: 'x2', yaxis: 'y2'},
    {type: 'bar', x: xs, y: rs.map(cappedTps),
     marker: {color: colour}, name: 'tokens/s bound', xaxis: 'x3', yaxis: 'y3'}
  ], {
    grid: {rows: 1, columns: 3, pattern: 'independent'}, showlegend: false, height: 360,
    margin: {t: 60, b: 50, l: 60, r: 20},
    title: {text: m.name + ', ' + fmtInt(ctx) + '-token context, ' + D.dtypes[+el('dtype').value] + ', ' + dev.name, font: {size: 13}},
    annotations: [
      {text: 'KV cache per sequence (GiB)', xref: 'x domain', yref: 'y domain', x: 0.5, y: 1.12, showarrow: false},
      {text: 'batch that fits next to the weights', xref: 'x2 domain', yref: 'y2 domain', x: 0.5, y: 1.12, showarrow: false},
      {text: 'decode tokens/s bound (chosen batch,<br>capped at what fits)', xref: 'x3 domain', yref: 'y3 domain', x: 0.5, y: 1.16, showarrow: false}
    ]
  }, {displaylogo: false, responsive: true});
  root.dataset.state = JSON.stringify({model: m.name, G: r.G, context: ctx, batch: D.batches[bi], dtype: D.dtypes[+el('dtype').value], device: dev.name});
}
['model', 'dtype'].forEach(function (n) { el(n).addEventListener('change', function () { onModel(); update(); }); });
['G', 'context', 'batch'].forEach(function (n) { el(n).addEventListener('input', update); });
el('device').addEventListener('change', update);
onModel(); update();
"""

_FORM = """<div id="{id}" class="gqa-calculator" style="font-size:0.9em">
<div style="display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:6px 18px;margin-bottom:8px">
<label>model <select data-calc="model"></select></label>
<label>cache and weights dtype <select data-calc="dtype"></select></label>
<label>device <select data-calc="device"></select></label>
<label>KV heads G <input type="range" data-calc="G" min="0" step="1"> <span data-calc="G-label"></span></label>
<label>context <input type="range" data-calc="context" min="0" step="1"> <span data-calc="context-label"></span></label>
<label>batch <input type="range" data-calc="batch" min="0" step="1"> <span data-calc="batch-label"></span></label>
</div>
<table class="gqa-calculator-readout">
<tr><td>KV cache per token</td><td data-calc="kv-token"></td></tr>
<tr><td>KV cache per sequence</td><td data-calc="kv-seq"></td></tr>
<tr><td>KV cache of the batch</td><td data-calc="kv-batch"></td></tr>
<tr><td>weights (the model converted to this G)</td><td data-calc="weights"></td></tr>
<tr><td>sequences that fit next to the weights</td><td data-calc="fits"></td></tr>
<tr><td>sequences that fit on the chosen device</td><td data-calc="fits-device"></td></tr>
<tr><td>decode tokens/s bound at the chosen batch (memory-bound)</td><td data-calc="tps"></td></tr>
</table>
<div data-calc="plot" class="gqa-plotly plotly-graph-div" style="width:100%;height:360px"></div>
</div>"""


def calculator_html(div_id: str | None = None) -> str:
    """The calculator as HTML: controls, a read-out table and a plotly figure, drawn by an inline script."""
    div_id = div_id or f"gqa-calc-{uuid.uuid4().hex[:12]}"
    data = json.dumps(calculator_data(), separators=(",", ":"))
    body = _SCRIPT.replace("__DATA__", data).replace("__ID__", div_id)
    return _FORM.format(id=html.escape(div_id)) + run_with_plotly(FORM_HELPERS_JS + body)


class Calculator:
    """Displays the KV-cache calculator (the same HTML in Jupyter, on Colab and on the website)."""

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": calculator_html(),
                "text/plain": "<KV-cache calculator: open in a browser or Jupyter to use the controls>"}


def calculator() -> Calculator:
    """The KV-cache and capacity calculator of chapter 9, ready to display."""
    return Calculator()
