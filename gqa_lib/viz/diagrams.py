"""Diagrams drawn by code: a multi-head attention layer, and a KV cache filling up.

Every function here *returns* a :class:`plotly.graph_objects.Figure` and
displays nothing; a chapter shows it with :func:`gqa_lib.viz.plots.show`. Both
figures use only what plotly.js does on its own (shapes drawn as traces,
annotations, and for the cache an animation with frames, a slider and a play
button), so they work on the book's static pages, where no Python runs.

Every trace carries ``meta`` (a dict with at least ``"role"``), so that tests
and readers can find what a trace stands for without relying on its position.
"""

from __future__ import annotations

import plotly.graph_objects as go

from ..checks import as_count
from ..core.kv_cache import kv_cache_bytes

__all__ = ["mha_layer_figure", "kv_cache_growth_figure", "CACHE_STATES"]

_Q, _K, _V = "#1f77b4", "#2ca02c", "#d62728"  # query, key, value colours (plotly's first palette)
_GREY = "#7f7f7f"


def _shape(*sizes: tuple[str, int]) -> str:
    """'(B, T, D) = (2, 5, 4)' from (symbol, size) pairs."""
    return f"({', '.join(s for s, _ in sizes)}) = ({', '.join(str(n) for _, n in sizes)})"


def _box(fig: go.Figure, x: float, y: float, w: float, h: float, colour: str, name: str) -> None:
    """A filled rectangle centred at (x, y), w wide and h high, as a closed scatter trace."""
    x0, x1, y0, y1 = x - w / 2, x + w / 2, y - h / 2, y + h / 2
    fig.add_trace(go.Scatter(
        x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], mode="lines", fill="toself",
        line=dict(color=colour, width=1.5), fillcolor=colour, opacity=0.18,
        hoverinfo="skip", showlegend=False, meta={"role": "box", "name": name},
    ))


def _label(fig: go.Figure, x: float, y: float, text: str, size: int = 11, name: str = "") -> None:
    fig.add_annotation(x=x, y=y, text=text, showarrow=False, font=dict(size=size), align="center", name=name)


def mha_layer_figure(batch_size: int = 2, seq_len: int = 5, d_model: int = 16, n_heads: int = 4) -> go.Figure:
    """One multi-head attention layer as a flow diagram, with every tensor's shape written on it.

    ``x`` (B, T, d_model) goes through the three projections W_Q, W_K, W_V
    (each (d_model, H·D)) into Q, K, V of shape (B, T, H·D); a reshape splits
    each into H heads of width D = d_model / H, (B, H, T, D); each head runs
    attention on its own slice, giving (B, T, D); the heads are concatenated
    back to (B, T, H·D) and W_O (H·D, d_model) mixes them into y (B, T, d_model).

    Sizes are integers >= 1 and ``n_heads`` must divide ``d_model``
    (ValueError naming the bad value otherwise). Traces: one closed
    ``"box"`` trace per block (``meta["name"]``: ``"x"``, ``"Q"``, ``"K"``,
    ``"V"``, ``"head 0"`` ... ``"head H-1"``, ``"concat"``, ``"y"``), and one
    ``"wires"`` trace per colour (query, key, value, output) whose segments,
    separated by ``None``, join the blocks. Arrowheads and labels are
    annotations.
    """
    B = as_count("batch_size", batch_size)
    T = as_count("seq_len", seq_len)
    d = as_count("d_model", d_model)
    H = as_count("n_heads", n_heads)
    if d % H:
        raise ValueError(f"n_heads={H} must divide d_model={d} (each head gets d_model / n_heads dimensions)")
    D = d // H
    fig = go.Figure()

    # Column positions (data units); rows are spread over [0, 1] whatever H is.
    cx = {"x": 0.0, "qkv": 1.55, "head": 3.35, "concat": 5.05, "y": 6.5}
    bw, bh = 1.15, 0.2  # box width and height of the big blocks
    qkv_y = {"Q": 0.78, "K": 0.5, "V": 0.22}
    colours = {"Q": _Q, "K": _K, "V": _V}
    head_y = [0.5] if H == 1 else [0.92 - 0.84 * h / (H - 1) for h in range(H)]  # head 0 on top
    hh = min(0.16, 0.8 / H)  # head box height: the boxes never overlap

    _box(fig, cx["x"], 0.5, bw, bh, _GREY, "x")
    _label(fig, cx["x"], 0.5, f"<b>x</b><br>(B, T, d_model)<br>= ({B}, {T}, {d})", name="x")
    for name, y in qkv_y.items():
        _box(fig, cx["qkv"], y, bw, bh, colours[name], name)
        _label(fig, cx["qkv"], y, f"<b>{name} = x W<sub>{name}</sub></b><br>{_shape(('B', B), ('T', T), ('H·D', H * D))}",
               size=10, name=name)
    for h, y in enumerate(head_y):
        _box(fig, cx["head"], y, 1.35, hh, _GREY, f"head {h}")
        label = f"<b>head {h}</b>: attention(q<sub>{h}</sub>, k<sub>{h}</sub>, v<sub>{h}</sub>)"
        if H <= 8:
            label += f"<br>{_shape(('B', B), ('T', T), ('D', D))}"
        _label(fig, cx["head"], y, label, size=10 if H <= 8 else 8, name=f"head {h}")
    _box(fig, cx["concat"], 0.5, bw, bh, _GREY, "concat")
    _label(fig, cx["concat"], 0.5, f"<b>concatenate</b><br>{_shape(('B', B), ('T', T), ('H·D', H * D))}", size=10,
           name="concat")
    _box(fig, cx["y"], 0.5, bw, bh, _GREY, "y")
    _label(fig, cx["y"], 0.5, f"<b>y = concat W<sub>O</sub></b><br>(B, T, d_model)<br>= ({B}, {T}, {d})", size=10,
           name="y")

    # Wires: x to the projections, each projection to every head (each head takes its slice of
    # width D), every head to the concatenation, the concatenation to y.
    def wires(segments, colour, role):
        xs, ys = [], []
        for (x0, y0), (x1, y1) in segments:
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=colour, width=1.2), hoverinfo="skip",
                                 showlegend=False, meta={"role": "wires", "name": role}))

    left, right = -bw / 2, bw / 2
    for name, y in qkv_y.items():
        wires([((cx["x"] + right, 0.5), (cx["qkv"] + left, y))], colours[name], f"x to {name}")
        wires([((cx["qkv"] + right, y), (cx["head"] - 0.675, hy)) for hy in head_y], colours[name], f"{name} to heads")
    wires([((cx["head"] + 0.675, hy), (cx["concat"] + left, 0.5)) for hy in head_y], _GREY, "heads to concat")
    wires([((cx["concat"] + right, 0.5), (cx["y"] + left, 0.5))], _GREY, "concat to y")

    # What happens between the columns, written above them.
    steps = [
        ((cx["x"] + cx["qkv"]) / 2, "1. project<br>W<sub>Q</sub>, W<sub>K</sub>, W<sub>V</sub>:<br>(d_model, H·D)"),
        ((cx["qkv"] + cx["head"]) / 2 + 0.1, f"2. split into H = {H} heads<br>(B, T, H·D) → (B, H, T, D)"),
        ((cx["head"] + cx["concat"]) / 2 + 0.1, "3. attend,<br>4. concatenate<br>(B, H, T, D) → (B, T, H·D)"),
        ((cx["concat"] + cx["y"]) / 2, "5. mix heads<br>W<sub>O</sub>: (H·D, d_model)"),
    ]
    for x, text in steps:
        _label(fig, x, 1.1, text, size=10, name="step")
    fig.update_layout(
        title=f"One multi-head attention layer: B = {B}, T = {T}, d_model = {d}, H = {H} heads of D = {D}",
        xaxis=dict(visible=False, range=[-0.7, 7.2], fixedrange=True),
        yaxis=dict(visible=False, range=[-0.05, 1.25], fixedrange=True),
        height=max(380, 80 * H + 120) if H <= 8 else 560, plot_bgcolor="white",
        margin=dict(l=10, r=10, t=50, b=10), showlegend=False,
    )
    return fig


CACHE_STATES = ("empty", "prefill", "earlier steps", "this step")
"""What each value of the cache grid means: 0 empty, 1 written by the prefill, 2 written by an earlier
decoding step, 3 written by the step shown."""
_STATE_COLOURS = ("#f2f2f2", "#9ecae1", "#3182bd", "#fd8d3c")


def _bytes_words(n: int) -> str:
    if n < 2**10:
        return f"{n:,} bytes"
    if n < 2**20:
        return f"{n:,} bytes ({n / 2**10:.1f} KiB)"
    return f"{n:,} bytes ({n / 2**20:.2f} MiB)"


def kv_cache_growth_figure(
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    prompt_len: int,
    new_tokens: int,
    bytes_per_elem: int = 2,
    *,
    frame_ms: int = 350,
    height: int | None = None,
) -> go.Figure:
    """An animation of a KV cache filling up: one prefill, then one position per decoding step.

    Rows are the cache's rows, keys then values for every layer
    (``layer 0 K``, ``layer 0 V``, ``layer 1 K``, ...); columns are positions
    0 .. ``prompt_len + new_tokens - 2`` (the last generated token is never
    fed back, so it is never cached). Each cell stands for the
    ``n_kv_heads * head_dim`` numbers of one layer, one position, keys or
    values. Frame 0 is the prefill (``prompt_len`` positions written at
    once); frame i (1 <= i < ``new_tokens``) is decoding step i, which writes
    one position. Cell values index :data:`CACHE_STATES` (0 empty,
    1 prefill, 2 an earlier step, 3 this step).

    Trace 0 is the heatmap (``meta["role"] == "cache"``); trace 1 a text
    trace (``"bytes"``) that states the positions cached and the bytes so far,
    ``kv_cache_bytes(n_layers, n_kv_heads, head_dim, positions, 1,
    bytes_per_elem)`` (one sequence); traces 2-4 only draw the legend of the
    three filled states (``"legend"``). Row r of the heatmap is drawn at
    y = r (labels in ``yaxis.ticktext``). Every frame sets traces 0 and 1; the slider
    (``layout.sliders[0]``, one step per frame, method ``"animate"``) and the
    play/pause buttons (``layout.updatemenus[0]``) run in plotly.js alone.
    The figure opens on the last frame, the full cache.

    Sizes are integers >= 1 (ValueError naming the bad value otherwise);
    ``frame_ms`` is the play button's time per frame in milliseconds.
    """
    L = as_count("n_layers", n_layers)
    G = as_count("n_kv_heads", n_kv_heads)
    D = as_count("head_dim", head_dim)
    P = as_count("prompt_len", prompt_len)
    N = as_count("new_tokens", new_tokens)
    b = as_count("bytes_per_elem", bytes_per_elem)
    frame_ms = as_count("frame_ms", frame_ms)
    n_pos = P + N - 1  # positions cached at the end
    rows = [f"layer {layer} {kv}" for layer in range(L) for kv in ("K", "V")]
    per_position = kv_cache_bytes(L, G, D, 1, 1, b)

    def grid(step: int) -> list[list[int]]:
        filled = P + step  # positions cached after this frame
        new_from = 0 if step == 0 else filled - 1
        row = [3 if new_from <= t < filled else (1 if t < P else 2) if t < filled else 0 for t in range(n_pos)]
        return [list(row) for _ in rows]

    def caption(step: int) -> str:
        filled = P + step
        what = f"prefill: {P} positions written at once" if step == 0 else f"decoding step {step}: 1 position written"
        return (f"{what}; cache holds {filled} positions × {per_position:,} bytes = "
                f"{_bytes_words(kv_cache_bytes(L, G, D, filled, 1, b))}")

    n_rows = len(rows)
    colourscale = []
    for i, colour in enumerate(_STATE_COLOURS):  # four flat bands over z = 0 .. 3
        colourscale += [[i / 4, colour], [(i + 1) / 4, colour]]

    def heatmap(step: int) -> go.Heatmap:
        z = grid(step)
        return go.Heatmap(
            z=z, x=list(range(n_pos)), y=list(range(n_rows)), zmin=-0.5, zmax=3.5, colorscale=colourscale,
            showscale=False, xgap=2, ygap=4,
            customdata=[[CACHE_STATES[v] for v in r] for r in z],
            text=[[r] * n_pos for r in rows],
            hovertemplate=f"%{{text}}, position %{{x}}: %{{customdata}} ({G} heads × {D} numbers)<extra></extra>",
            meta={"role": "cache"},
        )

    def bytes_trace(step: int) -> go.Scatter:
        return go.Scatter(
            x=[-0.5], y=[-0.75], mode="text", text=[caption(step)], textposition="top right",
            textfont=dict(size=13), hoverinfo="skip", showlegend=False, meta={"role": "bytes"},
        )

    last = N - 1
    fig = go.Figure(data=[heatmap(last), bytes_trace(last)])
    for i, (state, colour) in enumerate(zip(CACHE_STATES[1:], _STATE_COLOURS[1:])):  # a legend of the filled states
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker=dict(symbol="square", size=12, color=colour),
                                 name=f"written {state}" if state != "prefill" else "written by the prefill",
                                 meta={"role": "legend", "state": state}))
    names = [f"{P + step}" for step in range(N)]
    fig.frames = [
        go.Frame(data=[heatmap(step), bytes_trace(step)], traces=[0, 1], name=names[step]) for step in range(N)
    ]
    animate = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    fig.update_layout(
        title=(f"A KV cache filling up: {L} layers, {G} KV heads of D = {D}, {b} bytes a number; "
               f"prompt of {P}, {N} new tokens"),
        xaxis=dict(title="position (token index)", range=[-0.5, n_pos - 0.5], dtick=max(1, n_pos // 16),
                   fixedrange=True),
        yaxis=dict(range=[n_rows - 0.5, -1.4], tickvals=list(range(n_rows)), ticktext=rows, fixedrange=True,
                   title="", zeroline=False, showgrid=False),
        height=height or max(330, 44 * n_rows + 240),
        margin=dict(t=90, b=130), plot_bgcolor="white",
        legend=dict(orientation="h", x=0, y=1.02, xanchor="left", yanchor="bottom"),
        sliders=[dict(
            active=last, y=0, yanchor="top", x=0.22, len=0.78, pad=dict(t=50),
            currentvalue=dict(prefix="positions cached: "),
            steps=[dict(method="animate", label=name, args=[[name], animate]) for name in names],
        )],
        updatemenus=[dict(
            type="buttons", direction="left", x=0.0, y=0, xanchor="left", yanchor="top", pad=dict(t=60, r=10),
            showactive=False,
            buttons=[
                dict(label="▶ play", method="animate",
                     args=[None, dict(mode="immediate", fromcurrent=False, frame=dict(duration=frame_ms, redraw=True),
                                      transition=dict(duration=0))]),
                dict(label="❚❚ pause", method="animate",
                     args=[[None], dict(mode="immediate", frame=dict(duration=0, redraw=False),
                                        transition=dict(duration=0))]),
            ],
        )],
    )
    return fig
