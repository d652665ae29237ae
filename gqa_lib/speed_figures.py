"""Plotly figures of decoding speed and KV-cache size per number of KV heads G.

Every function returns a ``go.Figure`` and displays nothing; use
:func:`gqa_lib.plots.show` to display. Figures with sliders use plain
``layout.sliders`` with ``restyle`` steps, so they work on a static web page
where no Python runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .kv_cache import kv_cache_bytes
from .paper import FIGURE6_GROUPS, FIGURE6_SECONDS
from .presets import ModelPreset

__all__ = [
    "group_label",
    "kv_by_group_figure",
    "time_by_group_figure",
    "decode_sweep_figure",
    "relative_speed_figure",
]

_PICKED, _MHA, _MQA, _OTHER = "#d62728", "#7f7f7f", "#2ca02c", "#9ecae1"


def group_label(g: int, n_heads: int) -> str:
    """'1 (MQA)', '8', '32 (MHA)': an axis label for G out of ``n_heads`` query heads."""
    if g == n_heads:
        return f"{g} (MHA)"
    if g == 1:
        return f"{g} (MQA)"
    return str(g)


def _colours(groups: Sequence[int], n_heads: int, picked: int | None) -> list[str]:
    out = []
    for g in groups:
        if g == picked:
            out.append(_PICKED)
        elif g == n_heads:
            out.append(_MHA)
        elif g == 1:
            out.append(_MQA)
        else:
            out.append(_OTHER)
    return out


HEADROOM = 1.18  # y axes reach this far past the tallest bar, so its label (drawn outside, above) fits


def _y_range(values) -> list[float]:
    """[0, top] for bars of ``values`` (None for a gap): room above the tallest one for its label."""
    finite = [v for v in values if v is not None]
    top = max(finite, default=0.0)
    return [0.0, top * HEADROOM if top > 0 else 1.0]


def kv_by_group_figure(
    preset: ModelPreset, groups: Sequence[int], seq_len: int, batch_size: int = 1,
    bytes_per_elem: int = 2, picked: int | None = None,
) -> go.Figure:
    """Bars of KV-cache size (GiB, all layers) for each G, at ``seq_len`` tokens and ``batch_size`` sequences."""
    gib = [
        kv_cache_bytes(preset.n_layers, g, preset.head_dim, seq_len, batch_size, bytes_per_elem) / 2**30
        for g in groups
    ]
    fig = go.Figure(
        go.Bar(
            x=[group_label(g, preset.n_heads) for g in groups], y=gib,
            marker_color=_colours(groups, preset.n_heads, picked),
            text=[f"{v:.2f}" for v in gib], textposition="outside", cliponaxis=False, name="KV cache",
        )
    )
    fig.update_layout(
        title=f"KV cache of {preset.name}-shaped model: {seq_len} tokens x batch {batch_size}, {bytes_per_elem} B/elem",
        xaxis_title="KV heads G", yaxis_title="KV cache (GiB)", height=380, margin=dict(t=60, b=40),
        yaxis_range=_y_range(gib),
    )
    return fig


def time_by_group_figure(
    ms_by_group: Mapping[int, float], n_heads: int, device: str, picked: int | None = None, what: str = "decode step"
) -> go.Figure:
    """Bars of measured time (ms) per G, labelled with the device that produced them."""
    groups = sorted(ms_by_group)
    ms = [ms_by_group[g] for g in groups]
    fig = go.Figure(
        go.Bar(
            x=[group_label(g, n_heads) for g in groups], y=ms, marker_color=_colours(groups, n_heads, picked),
            text=[f"{v:.2f}" for v in ms], textposition="outside", cliponaxis=False, name=what,
        )
    )
    fig.update_layout(
        title=f"Measured {what} time per G on {device}", xaxis_title="KV heads G",
        yaxis_title="time per call (ms)", height=380, margin=dict(t=60, b=40), yaxis_range=_y_range(ms),
    )
    return fig


# Layout of the sweep figure, in pixels from the top and bottom of the figure: title, then the legend
# (one row per ~2 devices), then the subplot titles, the plot, the x axes, and the slider at the bottom.
SWEEP_HEIGHT = 600
SWEEP_MARGIN = dict(t=160, b=150, l=60, r=20)
SWEEP_LEGEND_TOP = 48  # px below the top of the figure, under the title
SLIDER_PAD_TOP = 50  # px between the plot area and the slider (room for the x axes' ticks and titles)


def decode_sweep_figure(sweeps: Sequence[Mapping], initial_context: int | None = None) -> go.Figure:
    """Decode time and K/V bytes per G, with a slider over context length; one colour per device.

    ``sweeps`` are results of ``python -m gqa_lib.bench sweep`` (or
    :func:`gqa_lib.bench.sweep_attention_decode` wrapped as ``{"device": ...,
    "settings": ..., "rows": rows}``). Contexts missing from a sweep show as gaps.

    Each bar carries its value as a label above it; each slider step sets
    the bars, their labels and both y ranges (with room above the tallest
    bar for its label). The legend runs horizontally above the plots, under
    the title, clear of the slider at the bottom.
    """
    if not sweeps:
        raise ValueError("decode_sweep_figure needs at least one sweep")
    contexts = sorted({r["context"] for s in sweeps for r in s["rows"]})
    groups = sorted({r["G"] for s in sweeps for r in s["rows"]})
    n_heads = max(groups)
    initial = contexts[len(contexts) // 2] if initial_context is None else initial_context
    if initial not in contexts:
        raise ValueError(f"initial_context={initial} is not one of the swept contexts {contexts}")
    labels = [group_label(g, n_heads) for g in groups]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("decode-step attention time", "K/V bytes read per step"))

    def values(sweep, context, key, scale):
        by_g = {r["G"]: r[key] for r in sweep["rows"] if r["context"] == context}
        return [by_g[g] * scale if g in by_g else None for g in groups]

    def texts(ys):  # short labels, never in exponent form: 1074, 33.6, 0.322
        return ["" if y is None else f"{y:.0f}" if abs(y) >= 100 else f"{y:.3g}" for y in ys]

    def state(context):
        """Per trace (time, bytes for each sweep): y and text; and the two y ranges."""
        ys, text = [], []
        for sweep in sweeps:
            ms, mb = values(sweep, context, "ms", 1.0), values(sweep, context, "kv_bytes", 1e-6)
            ys += [ms, mb]
            text += [texts(ms), texts(mb)]
        ranges = {"yaxis.range": _y_range([v for y in ys[0::2] for v in y]),
                  "yaxis2.range": _y_range([v for y in ys[1::2] for v in y])}
        return ys, text, ranges

    ys, text, ranges = state(initial)
    palette = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b"]
    # several devices make narrow bars: their labels turn upright rather than shrink into each other
    bar_text = dict(textposition="outside", cliponaxis=False, textfont=dict(size=10),
                    textangle=0 if len(sweeps) == 1 else -90)
    for i, sweep in enumerate(sweeps):
        s = sweep.get("settings", {})
        name = f"{sweep['device']}"
        shape = f"B={s.get('batch', '?')}, H={s.get('heads', '?')}, D={s.get('head_dim', '?')}, {s.get('dtype', '')}"
        colour = palette[i % len(palette)]
        fig.add_trace(go.Bar(x=labels, y=ys[2 * i], text=text[2 * i], name=f"{name} ({shape})",
                             marker_color=colour, legendgroup=name, **bar_text), row=1, col=1)
        fig.add_trace(go.Bar(x=labels, y=ys[2 * i + 1], text=text[2 * i + 1], name=f"{name} K/V MB",
                             marker_color=colour, opacity=0.6, legendgroup=name, showlegend=False, **bar_text),
                      row=1, col=2)
    steps = []
    for context in contexts:
        step_ys, step_text, step_ranges = state(context)
        steps.append({"label": str(context), "method": "update",
                      "args": [{"y": step_ys, "text": step_text}, step_ranges]})
    fig.update_layout(
        title=dict(text="Decode-step attention vs number of KV heads G (move the slider: context length)",
                   yref="container", y=1 - 12 / SWEEP_HEIGHT, yanchor="top"),
        sliders=[{
            "active": contexts.index(initial), "currentvalue": {"prefix": "context length: "},
            "pad": {"t": SLIDER_PAD_TOP}, "y": 0, "yanchor": "top", "steps": steps,
        }],
        barmode="group", height=SWEEP_HEIGHT, margin=SWEEP_MARGIN,
        # above the plots, under the title: never over the slider and its labels at the bottom
        legend=dict(orientation="h", yref="container", y=1 - SWEEP_LEGEND_TOP / SWEEP_HEIGHT, yanchor="top",
                    x=0, xanchor="left"),
    )
    fig.update_xaxes(title_text="KV heads G", row=1, col=1)
    fig.update_xaxes(title_text="KV heads G", row=1, col=2)
    fig.update_yaxes(title_text="ms per call", range=ranges["yaxis.range"], row=1, col=1)
    fig.update_yaxes(title_text="MB of K and V", range=ranges["yaxis2.range"], row=1, col=2)
    return fig


def relative_speed_figure(measured: Sequence[Mapping], n_heads: int, label: str) -> go.Figure:
    """Time per G relative to MHA, ours (``measured``: rows with G and ms) beside the paper's Figure 6.

    The x axis is G / H, the fraction of KV heads kept, so models with
    different H line up; y is time / time of MHA (1 = as slow as MHA).
    """
    by_g = {r["G"]: r["ms"] for r in measured}
    if n_heads not in by_g:
        raise ValueError(f"measured rows need the MHA point G={n_heads}; got G values {sorted(by_g)}")
    ours_x = [g / n_heads for g in sorted(by_g)]
    ours_y = [by_g[g] / by_g[n_heads] for g in sorted(by_g)]
    paper_h = max(FIGURE6_GROUPS)
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[g / paper_h for g in FIGURE6_GROUPS], y=[t / FIGURE6_SECONDS[-1] for t in FIGURE6_SECONDS],
        mode="lines+markers", name="paper, Fig. 6 (T5-XXL, TPUv4, H=64)",
        text=[f"G={g}" for g in FIGURE6_GROUPS],
    ))
    fig.add_trace(go.Scatter(
        x=ours_x, y=ours_y, mode="lines+markers", name=f"ours: {label}", text=[f"G={g}" for g in sorted(by_g)],
    ))
    fig.update_layout(
        title="Time relative to MHA vs fraction of KV heads kept", height=420,
        xaxis=dict(title="G / H (fraction of KV heads kept)", type="log"),
        yaxis=dict(title="time / time of MHA", rangemode="tozero"),
    )
    return fig
