"""Plotly figures of decoding speed and KV-cache size per number of KV heads G.

Every function returns a ``go.Figure`` and displays nothing; use
:func:`gqa_lib.viz.plots.show` to display. Figures with sliders use plain
``layout.sliders`` with ``restyle`` steps, so they work on a static web page
where no Python runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from ..core.kv_cache import kv_cache_bytes
from ..paper import FIGURE6_GROUPS, FIGURE6_SECONDS
from ..presets import ModelPreset

__all__ = [
    "group_label",
    "kv_by_group_figure",
    "time_by_group_figure",
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
