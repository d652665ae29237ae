"""Plotly figures the chapters share: head grouping, the grouped product, KV-cache sliders.

Every function here *returns* a :class:`plotly.graph_objects.Figure` and
displays nothing; a chapter shows it with :func:`gqa_lib.viz.plots.show`.
Interactivity uses only what plotly.js does on its own (layout sliders that
restyle traces), so the figures keep working on the book's static pages,
where no Python runs.

Conventions (the same as :mod:`gqa_lib.core.attention`):

* ``H`` query heads, ``G`` key/value heads, ``G`` divides ``H``.
* Contiguous groups: query head ``h`` reads KV head ``h // (H // G)``.
* Sizes are in GiB, ``2**30`` bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..checks import as_count, as_kv_heads, divisors
from ..core.kv_cache import kv_cache_bytes
from ..presets import ModelPreset

__all__ = [
    "GIB",
    "attention_label",
    "kv_head_for_query_head",
    "head_grouping_figure",
    "kv_cache_slider_figure",
    "grouped_product_figure",
]

GIB = 2**30  # bytes in one GiB

_MAPPINGS = ("contiguous", "strided")


def _kind(n_heads: int, n_kv_heads: int) -> str:
    """'MHA' if G == H, 'MQA' if G == 1, else 'GQA'."""
    if n_kv_heads == n_heads:
        return "MHA"
    if n_kv_heads == 1:
        return "MQA"
    return "GQA"


def attention_label(n_heads: int, n_kv_heads: int) -> str:
    """'MHA' if G == H, 'MQA' if G == 1, else 'GQA-G' (the rule of ModelPreset.attention)."""
    kind = _kind(n_heads, n_kv_heads)
    return f"GQA-{n_kv_heads}" if kind == "GQA" else kind


def kv_head_for_query_head(h: int, n_heads: int, n_kv_heads: int, mapping: str = "contiguous") -> int:
    """The KV head that query head ``h`` is paired with.

    ``mapping="contiguous"`` (the library's convention, Llama / Hugging Face /
    flash-attn): ``h // (H // G)``. ``mapping="strided"``: ``h % G``, the
    grouping some public conversion code pools by (heads g, g+G, g+2G, ...).
    """
    n_heads = as_count("n_heads", n_heads)
    g = as_kv_heads(n_heads, n_kv_heads, "G")
    if not 0 <= h < n_heads:
        raise ValueError(f"query head h must be in [0, {n_heads}); got {h}")
    if mapping == "contiguous":
        return h // (n_heads // g)
    if mapping == "strided":
        return h % g
    raise ValueError(f"mapping must be one of {_MAPPINGS}; got {mapping!r}")


def _group_colours(n: int) -> list[str]:
    """n distinguishable colours: a qualitative palette, or samples of a cyclic scale when n is large."""
    palette = plotly.colors.qualitative.Plotly
    if n <= len(palette):
        return list(palette[:n])
    return plotly.colors.sample_colorscale("HSV", [i / n for i in range(n)])


def head_grouping_figure(
    n_heads: int,
    kv_head_counts: Sequence[int],
    title: str | None = None,
    *,
    mapping: str = "contiguous",
    height: int = 300,
) -> go.Figure:
    """Which KV head each query head reads, one panel per G, side by side.

    Parameters
    ----------
    n_heads:
        Number of query heads H (a positive integer).
    kv_head_counts:
        The G to draw, one panel each, left to right (e.g. ``[H, 2, 1]`` for
        MHA / GQA / MQA). Each G must divide ``n_heads``, else ValueError
        naming the offending G.
    title:
        Figure title; a default naming H is used when None.
    mapping:
        ``"contiguous"`` (query head h -> KV head h // (H // G), the
        library's convention) or ``"strided"`` (h -> h % G), to draw the
        grouping of code that pools heads 0, G, 2G, ... together.
    height:
        Figure height in pixels.

    Layout: in each panel the H query heads are square markers on the upper
    row (y = 1, query head h at x = h) and the G KV heads on the lower row
    (y = 0, each centred under the query heads it serves). One line trace
    per group joins each query head to its KV head; query heads, KV head and
    lines of a group share a colour. Panels are titled "MHA (G=8)",
    "GQA (G=2)", "MQA (G=1)" and so on.

    Every trace carries ``meta`` = {"panel", "G", "role", "group"} with role
    "query", "kv" or "edge" (group is None for marker traces), and the KV
    marker trace has ``customdata`` = KV head indices, so tests and readers
    can recover the drawn pairs from the figure's data.
    """
    n_heads = as_count("n_heads", n_heads)
    if mapping not in _MAPPINGS:
        raise ValueError(f"mapping must be one of {_MAPPINGS}; got {mapping!r}")
    counts = list(kv_head_counts)
    if not counts:
        raise ValueError("kv_head_counts must name at least one G")
    counts = [as_kv_heads(n_heads, g, "G") for g in counts]
    height = as_count("height", height)

    panel_titles = [f"{_kind(n_heads, g)} (G={g})" for g in counts]
    fig = make_subplots(rows=1, cols=len(counts), subplot_titles=panel_titles, horizontal_spacing=0.03)

    # Marker size in pixels: shrink boxes as heads get more numerous (assume ~700 px of plot width).
    per_head_px = 700 / (len(counts) * (n_heads + 0.6))
    box_px = max(5, min(24, int(0.7 * per_head_px)))
    show_numbers = box_px >= 14

    for panel, g_count in enumerate(counts):
        col = panel + 1
        colours = _group_colours(g_count)
        owner = [kv_head_for_query_head(h, n_heads, g_count, mapping) for h in range(n_heads)]
        members = [[h for h in range(n_heads) if owner[h] == g] for g in range(g_count)]
        kv_x = [sum(m) / len(m) for m in members]  # KV head g sits under the mean x of its query heads

        for g in range(g_count):
            xs: list[float | None] = []
            ys: list[float | None] = []
            for h in members[g]:
                xs += [h, kv_x[g], None]
                ys += [1, 0, None]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"color": colours[g], "width": 2},
                    hoverinfo="skip",
                    showlegend=False,
                    name=f"G={g_count}: group {g}",
                    meta={"panel": panel, "G": g_count, "role": "edge", "group": g},
                ),
                row=1,
                col=col,
            )
        fig.add_trace(
            go.Scatter(
                x=list(range(n_heads)),
                y=[1] * n_heads,
                mode="markers+text" if show_numbers else "markers",
                text=[str(h) for h in range(n_heads)] if show_numbers else None,
                textfont={"color": "white", "size": max(8, box_px // 2)},
                marker={"symbol": "square", "size": box_px, "color": [colours[owner[h]] for h in range(n_heads)]},
                customdata=list(range(n_heads)),
                hovertext=[f"query head {h} reads KV head {owner[h]}" for h in range(n_heads)],
                hoverinfo="text",
                showlegend=False,
                name=f"G={g_count}: query heads",
                meta={"panel": panel, "G": g_count, "role": "query", "group": None},
            ),
            row=1,
            col=col,
        )
        kv_box_px = max(box_px, min(30, int(box_px * 1.2)))
        fig.add_trace(
            go.Scatter(
                x=kv_x,
                y=[0] * g_count,
                mode="markers+text" if show_numbers else "markers",
                text=[str(g) for g in range(g_count)] if show_numbers else None,
                textfont={"color": "white", "size": max(8, kv_box_px // 2)},
                marker={
                    "symbol": "square",
                    "size": kv_box_px,
                    "color": colours,
                    "line": {"color": "black", "width": 1},
                },
                customdata=list(range(g_count)),
                hovertext=[f"KV head {g}: read by query heads {members[g]}" for g in range(g_count)],
                hoverinfo="text",
                showlegend=False,
                name=f"G={g_count}: KV heads",
                meta={"panel": panel, "G": g_count, "role": "kv", "group": None},
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(
            range=[-0.8, n_heads - 0.2],
            showticklabels=False,
            showgrid=False,
            zeroline=False,
            title_text="query head index h",
            row=1,
            col=col,
        )
        fig.update_yaxes(
            range=[-0.5, 1.5],
            tickvals=[0, 1],
            ticktext=["K/V heads", "query heads"],
            showticklabels=panel == 0,
            showgrid=False,
            zeroline=False,
            row=1,
            col=col,
        )

    if title is None:
        rule = "h // (H/G)" if mapping == "contiguous" else "h % G"
        title = f"H = {n_heads} query heads sharing G KV heads (query head h reads KV head {rule})"
    fig.update_layout(title=title, height=height, margin={"l": 90, "r": 20, "t": 80, "b": 50}, plot_bgcolor="white")
    return fig


def _model_shape(preset_or_shape) -> dict:
    """Normalise a ModelPreset, a mapping or a (n_layers, n_heads, head_dim) tuple to a dict."""
    if isinstance(preset_or_shape, ModelPreset):
        p = preset_or_shape
        shape = {"name": p.name, "n_layers": p.n_layers, "n_heads": p.n_heads,
                 "head_dim": p.head_dim, "n_kv_heads": p.n_kv_heads}
    elif isinstance(preset_or_shape, Mapping):
        missing = [k for k in ("n_layers", "n_heads", "head_dim") if k not in preset_or_shape]
        if missing:
            raise ValueError(f"model shape is missing {missing}; give n_layers, n_heads and head_dim")
        shape = {
            "name": preset_or_shape.get("name", "model"),
            "n_layers": preset_or_shape["n_layers"],
            "n_heads": preset_or_shape["n_heads"],
            "head_dim": preset_or_shape["head_dim"],
            "n_kv_heads": preset_or_shape.get("n_kv_heads"),
        }
    elif isinstance(preset_or_shape, (tuple, list)) and len(preset_or_shape) == 3:
        n_layers, n_heads, head_dim = preset_or_shape
        shape = {"name": "model", "n_layers": n_layers, "n_heads": n_heads, "head_dim": head_dim, "n_kv_heads": None}
    else:
        raise ValueError(
            "preset_or_shape must be a ModelPreset, a mapping with n_layers, n_heads, head_dim, "
            f"or a (n_layers, n_heads, head_dim) tuple; got {preset_or_shape!r}"
        )
    for key in ("n_layers", "n_heads", "head_dim"):
        shape[key] = as_count(key, shape[key])
    return shape


def _dtype_words(bytes_per_elem: int) -> str:
    return {1: "int8/fp8", 2: "fp16/bf16", 4: "fp32"}.get(bytes_per_elem, f"{bytes_per_elem} bytes per element")


def kv_cache_slider_figure(
    preset_or_shape,
    seq_lens: Iterable[int],
    batch_size: int = 1,
    bytes_per_elem: int = 2,
    *,
    active_g: int | None = None,
    title: str | None = None,
    height: int = 460,
) -> go.Figure:
    """KV-cache size (GiB) against context length, with a slider over G.

    Parameters
    ----------
    preset_or_shape:
        A :class:`gqa_lib.presets.ModelPreset`, a mapping with ``n_layers``,
        ``n_heads``, ``head_dim`` (optionally ``name``, ``n_kv_heads``), or a
        ``(n_layers, n_heads, head_dim)`` tuple.
    seq_lens:
        Context lengths in tokens (non-negative integers, non-decreasing):
        the x values of every curve.
    batch_size:
        Sequences cached at once.
    bytes_per_elem:
        Bytes per cached number (2: fp16/bf16, 4: fp32, 1: int8/fp8).
    active_g:
        The G the slider starts at; default the preset's own ``n_kv_heads``
        when given, else H (MHA).
    title:
        Title prefix; default the model's name. Each slider position appends
        the current G and its size at the longest context.
    height:
        Figure height in pixels.

    Traces, in order: 0 the MHA reference (G = H, dashed), 1 the MQA
    reference (G = 1, dashed), 2 the current G (thick, highlighted). The
    slider (``layout.sliders[0]``) has one step per divisor G of H,
    ascending; each step uses method ``"update"`` with args
    ``[{"y": [gib], "name": [...], ...}, {"title.text": ...}, [2]]`` so that
    plotly.js alone restyles trace 2 (no frames, no Python): it works on a
    static HTML page. y values are ``kv_cache_bytes(...) / 2**30`` (GiB).
    """
    shape = _model_shape(preset_or_shape)
    n_layers, n_heads, head_dim = shape["n_layers"], shape["n_heads"], shape["head_dim"]
    batch_size = as_count("batch_size", batch_size)
    bytes_per_elem = as_count("bytes_per_elem", bytes_per_elem)
    height = as_count("height", height)
    xs = list(seq_lens)
    if not xs:
        raise ValueError("seq_lens must contain at least one context length")
    for t in xs:
        if isinstance(t, bool) or int(t) != t or t < 0:
            raise ValueError(f"seq_lens must be non-negative integers; got {t!r}")
    xs = [int(t) for t in xs]
    if any(b < a for a, b in zip(xs, xs[1:])):
        raise ValueError("seq_lens must be in non-decreasing order")

    groups = divisors(n_heads)
    if active_g is None:
        preset_g = shape.get("n_kv_heads")
        active_g = preset_g if preset_g in groups else n_heads
    active_g = as_kv_heads(n_heads, active_g, "G")

    def gib(g: int) -> list[float]:
        return [
            kv_cache_bytes(n_layers, g, head_dim, t, batch_size=batch_size, bytes_per_elem=bytes_per_elem) / GIB
            for t in xs
        ]

    prefix = title if title is not None else shape["name"]

    def step_title(g: int) -> str:
        return (
            f"{prefix}: KV cache with G = {g} ({attention_label(n_heads, g)}) is {gib(g)[-1]:.3g} GiB at {xs[-1]} tokens"
            f"<br><sup>{n_layers} layers, H = {n_heads}, head dim {head_dim}, batch {batch_size}, "
            f"{_dtype_words(bytes_per_elem)}</sup>"
        )

    hover = "%{x} tokens: %{y:.3f} GiB<extra>%{fullData.name}</extra>"
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=gib(n_heads), mode="lines", name=f"MHA (G={n_heads})",
                             line={"color": "#EF553B", "dash": "dash", "width": 2}, hovertemplate=hover))
    fig.add_trace(go.Scatter(x=xs, y=gib(1), mode="lines", name="MQA (G=1)",
                             line={"color": "#00CC96", "dash": "dash", "width": 2}, hovertemplate=hover))
    fig.add_trace(go.Scatter(x=xs, y=gib(active_g), mode="lines+markers",
                             name=f"current: G={active_g} ({attention_label(n_heads, active_g)})",
                             line={"color": "#636EFA", "width": 5}, marker={"size": 6}, hovertemplate=hover))

    steps = [
        {
            "label": str(g),
            "method": "update",
            "args": [
                {"y": [gib(g)], "name": [f"current: G={g} ({attention_label(n_heads, g)})"]},
                {"title.text": step_title(g)},
                [2],
            ],
        }
        for g in groups
    ]
    fig.update_layout(
        title={"text": step_title(active_g)},
        height=height,
        xaxis={"title": {"text": "context length (tokens)"}},
        yaxis={"title": {"text": "KV cache (GiB)"}, "rangemode": "tozero"},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        margin={"t": 110, "b": 40},
        sliders=[
            {
                "active": groups.index(active_g),
                "currentvalue": {"prefix": "KV heads G = "},
                "pad": {"t": 60},
                "steps": steps,
            }
        ],
    )
    return fig


def _rgba(colour: str, alpha: float) -> str:
    """A plotly colour ('#RRGGBB' or 'rgb(r, g, b)') with opacity alpha, as 'rgba(r, g, b, alpha)'."""
    if colour.startswith("#"):
        r, g, b = plotly.colors.hex_to_rgb(colour)
    else:
        r, g, b = (float(c) for c in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3])
    return f"rgba({round(r)}, {round(g)}, {round(b)}, {alpha})"


def grouped_product_figure(
    n_heads: int,
    n_kv_heads: int,
    q_len: int = 1,
    kv_len: int = 16,
    head_dim: int = 8,
    *,
    title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    """The grouped product of GQA as a block diagram: Q viewed as (B, G, R*Tq, D) against each K_g.

    The query tensor of one sequence, shape (H, Tq, D), is drawn as one tall
    column of H * Tq rows in memory order, head after head. Read as
    (G, R * Tq, D), with R = H // G, it splits into G blocks Q_g of R * Tq
    rows, one per horizontal band: query head ``h = g * R + r`` is the stripe
    of rows ``r * Tq .. (r + 1) * Tq - 1`` of block ``g``. To the right of
    each block, on the same band: ``K_g^T`` (D x Tk), the scores
    ``S_g = Q_g K_g^T / sqrt(D)`` (R * Tq x Tk), ``V_g`` (Tk x D) and the
    output ``O_g`` (R * Tq x D), whose stripes are again the R heads. Every
    block of a group has the group's colour, and each K_g and V_g is drawn
    once: one matrix product per group reads it once for all R heads.

    Parameters
    ----------
    n_heads:
        Number of query heads H (a positive integer).
    n_kv_heads:
        Number of KV heads G; must divide ``n_heads`` (ValueError naming G).
    q_len:
        Query positions Tq per head (1 for a decoding step).
    kv_len, head_dim:
        Tk and D, used in the labels only (blocks are drawn schematically,
        not to scale, except that all blocks of a band share Q_g's rows).
    title:
        Figure title; a default naming H, G, R and Tq when None.
    height:
        Figure height in pixels; default grows with H * Tq.

    Coordinates: y counts query rows downwards (the y axis is reversed);
    band g starts at ``y = g * (R * Tq + gap)`` with ``gap = max(1, R * Tq // 4)``.
    Every drawn block is a layout shape whose ``name`` says what it is:
    ``"Q g=<g> r=<r> h=<h>"`` (a head's stripe of Q_g), ``"O g=<g> r=<r> h=<h>"``
    (its output rows), ``"S g=<g>"``, ``"K g=<g>"`` and ``"V g=<g>"``. One marker
    trace (``meta["role"] == "query-heads"``) puts a hover label at the centre
    of each head's stripe, with ``customdata`` = [h, g, r, first row, last row].
    """
    n_heads = as_count("n_heads", n_heads)
    g_count = as_kv_heads(n_heads, n_kv_heads, "G")
    tq = as_count("q_len", q_len)
    tk = as_count("kv_len", kv_len)
    d = as_count("head_dim", head_dim)
    r_count = n_heads // g_count
    rows = r_count * tq  # rows of one block Q_g
    gap = max(1, rows // 4)
    total = g_count * rows + (g_count - 1) * gap
    if height is None:
        height = max(380, min(1000, 170 + int(11 * total)))
    height = as_count("height", height)
    px_per_row = (height - 170) / total  # roughly: the plot area is the height less the margins
    label_stripes = px_per_row * tq >= 13  # room for one line of text in a stripe

    colours = _group_colours(g_count)
    # x positions of the five blocks (schematic widths) and the operators between them
    w_d, w_t = 4.0, 7.0
    x_q = (0.0, w_d)
    x_k = (x_q[1] + 3.0, x_q[1] + 3.0 + w_t)
    x_s = (x_k[1] + 3.0, x_k[1] + 3.0 + w_t)
    x_v = (x_s[1] + 6.0, x_s[1] + 6.0 + w_d)
    x_o = (x_v[1] + 3.0, x_v[1] + 3.0 + w_d)

    fig = go.Figure()
    shapes: list[dict] = []
    annotations: list[dict] = []

    def block(name, x, y0, y1, fill, line="white", width=1):
        shapes.append({"type": "rect", "name": name, "x0": x[0], "x1": x[1], "y0": y0, "y1": y1,
                       "fillcolor": fill, "line": {"color": line, "width": width}, "layer": "below"})

    def text(x, y, s, size=12, colour="black", **kw):
        annotations.append({"x": x, "y": y, "text": s, "showarrow": False, "font": {"size": size, "color": colour}, **kw})

    hover_x, hover_y, hover_text, hover_data = [], [], [], []
    for g in range(g_count):
        top = g * (rows + gap)
        colour = colours[g]
        for r in range(r_count):
            h = g * r_count + r
            y0, y1 = top + r * tq, top + (r + 1) * tq
            fill = _rgba(colour, 1.0 if r % 2 == 0 else 0.6)  # neighbouring heads of a group: two shades
            block(f"Q g={g} r={r} h={h}", x_q, y0, y1, fill)
            block(f"O g={g} r={r} h={h}", x_o, y0, y1, fill)
            if label_stripes:
                text((x_q[0] + x_q[1]) / 2, (y0 + y1) / 2, f"head {h}", size=11, colour="white")
                text((x_o[0] + x_o[1]) / 2, (y0 + y1) / 2, f"head {h}", size=11, colour="white")
                rows_text = f"row {r * tq}" if tq == 1 else f"rows {r * tq}–{(r + 1) * tq - 1}"
                text(x_q[0] - 0.3, (y0 + y1) / 2, rows_text, size=10, colour="#555", xanchor="right")
            hover_x.append((x_q[0] + x_q[1]) / 2)
            hover_y.append((y0 + y1) / 2)
            hover_text.append(
                f"query head {h} = {g}·R + {r}: rows {r * tq}..{(r + 1) * tq - 1} of Q_{g}, reads K_{g}, V_{g}"
            )
            hover_data.append([h, g, r, r * tq, (r + 1) * tq - 1])
        # the group's scores: R * Tq rows (the heads' stripes) by Tk keys
        block(f"S g={g}", x_s, top, top + rows, _rgba(colour, 0.25), line=colour, width=1)
        for r in range(1, r_count):
            shapes.append({"type": "line", "name": f"S g={g} stripe {r}", "x0": x_s[0], "x1": x_s[1],
                           "y0": top + r * tq, "y1": top + r * tq, "line": {"color": colour, "width": 1, "dash": "dot"}})
        # K_g^T and V_g: drawn once per group, inset so that their shape differs from the row blocks
        inset = rows * 0.2
        block(f"K g={g}", x_k, top + inset, top + rows - inset, colour, line="black", width=2)
        block(f"V g={g}", x_v, top, top + rows, colour, line="black", width=2)
        mid = top + rows / 2
        text((x_k[0] + x_k[1]) / 2, mid, f"K<sub>{g}</sub><sup>T</sup>", size=15, colour="white")
        text((x_s[0] + x_s[1]) / 2, mid, f"S<sub>{g}</sub>", size=15)
        text((x_v[0] + x_v[1]) / 2, mid, f"V<sub>{g}</sub>", size=15, colour="white")
        text((x_q[1] + x_k[0]) / 2, mid, "×", size=18)
        text((x_k[1] + x_s[0]) / 2, mid, "=", size=18)
        text((x_s[1] + x_v[0]) / 2, mid, "softmax<br>then ×", size=11)
        text((x_v[1] + x_o[0]) / 2, mid, "=", size=18)
        text(x_o[1] + 0.4, mid, f"<b>group {g}</b><br>KV head {g}<br>read once,<br>by {r_count} heads",
             size=11, colour=colour, xanchor="left")

    fig.add_trace(go.Scatter(
        x=hover_x, y=hover_y, mode="markers", marker={"size": 1, "opacity": 0},
        hovertext=hover_text, hoverinfo="text", customdata=hover_data, showlegend=False,
        name="query heads", meta={"role": "query-heads"},
    ))
    header_y = -max(1.5, total * 0.03)
    headers = [
        (x_q, f"Q<sub>g</sub>: R·Tq × D<br>({rows} × {d})"),
        (x_k, f"K<sub>g</sub><sup>T</sup>: D × Tk<br>({d} × {tk})"),
        (x_s, f"scores: R·Tq × Tk<br>({rows} × {tk})"),
        (x_v, f"V<sub>g</sub>: Tk × D<br>({tk} × {d})"),
        (x_o, f"O<sub>g</sub>: R·Tq × D<br>({rows} × {d})"),
    ]
    for x, s in headers:
        text((x[0] + x[1]) / 2, header_y, s, size=11, yanchor="bottom")

    if title is None:
        title = (
            f"Q of shape (B, H={n_heads}, Tq={tq}, D) viewed as (B, G={g_count}, R·Tq={rows}, D), R = {r_count}: "
            f"<br><sup>query head gR + r is rows rTq .. (r+1)Tq − 1 of block g; one product per group reads K<sub>g</sub> "
            f"and V<sub>g</sub> once</sup>"
        )
    fig.update_layout(
        title={"text": title},
        shapes=shapes,
        annotations=annotations,
        height=height,
        xaxis={"range": [x_q[0] - 5.5, x_o[1] + 6.5], "visible": False, "fixedrange": True},
        yaxis={"range": [total + 0.5, header_y * 2.6 - 0.5], "visible": False, "fixedrange": True},
        plot_bgcolor="white",
        margin={"l": 10, "r": 10, "t": 90, "b": 20},
        meta={"n_heads": n_heads, "n_kv_heads": g_count, "q_len": tq, "R": r_count, "gap": gap},
    )
    return fig
