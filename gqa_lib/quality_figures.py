"""Plotly figures of the conversion and uptraining experiments (chapters 6-8).

They read the grid results of :func:`gqa_lib.experiments.run_grid` (a dict
with ``runs``: one entry per (G, method, seed) holding held-out metrics per
uptraining fraction alpha). Every point is the mean over seeds; error bars
span the lowest to the highest seed, so the reader sees the spread, not a
standard error of three numbers. Every function returns a ``go.Figure`` and
displays nothing (use :func:`gqa_lib.plots.show`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .experiments import seed_stats
from .paper import FIGURE4_AVERAGE, TABLE1
from .speed_figures import group_label

__all__ = [
    "METRIC_LABELS",
    "METHOD_COLOURS",
    "conversion_figure",
    "uptraining_figure",
    "tradeoff_figure",
    "figure4_order",
]

METRIC_LABELS = {
    "recall_acc": "held-out recall accuracy",
    "loss": "held-out loss (nats/token)",
    "text_loss": "held-out text loss (nats/token)",
    "recall_loss": "held-out recall loss (nats/answer)",
}
METHOD_COLOURS = {"mean": "#d62728", "first": "#1f77b4", "random": "#7f7f7f"}
_GROUP_COLOURS = ["#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]


def _metric_label(metric: str) -> str:
    if metric not in METRIC_LABELS:
        raise ValueError(f"metric must be one of {sorted(METRIC_LABELS)}; got {metric!r}")
    return METRIC_LABELS[metric]


def _n_heads(results: Mapping) -> int:
    return int(results["setup"]["model"]["n_heads"])


def _spread(stats: Sequence[Mapping]) -> dict:
    """error_y arguments spanning min..max around the mean of each point."""
    return dict(
        type="data", symmetric=False,
        array=[s["max"] - s["mean"] for s in stats], arrayminus=[s["mean"] - s["min"] for s in stats],
    )


def conversion_figure(
    results: Mapping, alphas: Sequence[float] = (0.0, 0.05), metric: str = "recall_acc",
    methods: Sequence[str] = ("mean", "first", "random"),
) -> go.Figure:
    """Quality per G and conversion method, one panel per uptraining fraction alpha (the paper's Figure 4).

    Bars: mean over seeds of ``metric``; error bars: min..max over seeds. A
    dashed line marks the multi-head model (G = H) at the same alpha.
    """
    label = _metric_label(metric)
    H = _n_heads(results)
    groups = [g for g in results["setup"]["groups"] if g != H]
    fig = make_subplots(
        rows=1, cols=len(alphas), shared_yaxes=True,
        subplot_titles=["after conversion (alpha = 0)" if a == 0 else f"after {100 * a:g}% uptraining" for a in alphas],
    )
    for col, alpha in enumerate(alphas, start=1):
        for method in methods:
            stats = [seed_stats(results, g, method, alpha, metric) for g in groups]
            fig.add_trace(go.Bar(
                x=[group_label(g, H) for g in groups], y=[s["mean"] for s in stats], error_y=_spread(stats),
                name=method, legendgroup=method, showlegend=col == 1, marker_color=METHOD_COLOURS.get(method),
                hovertemplate=f"{method}, G=%{{x}}<br>{label}: %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
        mha = seed_stats(results, H, "mean", alpha, metric)["mean"]
        fig.add_hline(y=mha, line_dash="dash", line_color="black", row=1, col=col,
                      annotation_text=f"MHA {mha:.3f}", annotation_position="top left")
    fig.update_layout(
        title=f"Converting the {H}-head checkpoint: {label}<br><sub>bars: mean of {len(results['setup']['seeds'])} seeds; "
              "whiskers: lowest to highest seed; dashed: MHA</sub>",
        barmode="group", height=430, legend_title_text="method",
    )
    fig.update_xaxes(title_text="KV heads G")
    fig.update_yaxes(title_text=label, row=1, col=1)
    return fig


def uptraining_figure(
    results: Mapping, groups: Sequence[int], method: str = "mean", metric: str = "recall_acc",
) -> go.Figure:
    """Quality against the uptraining fraction alpha for each G in ``groups``, with MHA for reference (Figure 5)."""
    label = _metric_label(metric)
    H = _n_heads(results)
    alphas = list(results["setup"]["alphas"])
    fig = go.Figure()
    for i, g in enumerate([*groups, H]):
        stats = [seed_stats(results, g, "mean" if g == H else method, a, metric) for a in alphas]
        is_mha = g == H
        fig.add_trace(go.Scatter(
            x=[100 * a for a in alphas], y=[s["mean"] for s in stats], error_y=_spread(stats),
            mode="lines+markers", name=f"MHA (G={H}, trained on)" if is_mha else f"G={group_label(g, H)}",
            line=dict(color="black" if is_mha else _GROUP_COLOURS[i % len(_GROUP_COLOURS)],
                      dash="dash" if is_mha else "solid"),
            hovertemplate=f"G={g}, alpha=%{{x}}%<br>{label}: %{{y:.3f}}<extra></extra>",
        ))
    fig.update_layout(
        title=f"Uptraining after {method} conversion: {label}<br><sub>points: mean of {len(results['setup']['seeds'])} "
              "seeds; whiskers: lowest to highest seed</sub>",
        xaxis=dict(title="uptraining steps, % of pre-training (alpha)", tickvals=[100 * a for a in alphas]),
        yaxis=dict(title=label), height=430,
    )
    return fig


def tradeoff_figure(ours: Sequence[Mapping], device: str, metric: str = "recall_acc") -> go.Figure:
    """Quality against decode time per G (ours, left) beside the paper's Table 1 (right).

    ``ours``: rows with ``G``, ``n_heads``, ``ms`` (decode step time on
    ``device``) and ``mean``/``min``/``max`` of ``metric`` over seeds.
    """
    label = _metric_label(metric)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[
        f"ours (time on {device})", "paper, Table 1 (T5-XXL on TPUv4)",
    ])
    rows = sorted(ours, key=lambda r: r["G"])
    fig.add_trace(go.Scatter(
        x=[r["ms"] for r in rows], y=[r["mean"] for r in rows], error_y=_spread(rows),
        mode="markers+text+lines", text=[group_label(r["G"], r["n_heads"]) for r in rows],
        textposition=["middle right" if i % 2 else "middle left" for i in range(len(rows))],  # neighbours on opposite sides
        name="ours", marker=dict(size=11, color="#d62728"), line=dict(dash="dot"),
        hovertemplate="G=%{text}<br>%{x:.2f} ms/step<br>" + label + ": %{y:.3f}<extra></extra>",
    ), row=1, col=1)
    names = [n for n in TABLE1 if n.endswith("XXL")]
    t_infer = [TABLE1[n]["T_infer"] for n in names]
    fig.add_trace(go.Scatter(
        x=t_infer, y=[TABLE1[n]["Average"] for n in names], mode="markers+text", text=names, name="paper",
        textposition=["middle left" if t > max(t_infer) / 2 else "middle right" for t in t_infer],
        marker=dict(size=11, color="#1f77b4"),
        hovertemplate="%{text}<br>%{x:.2f} s/sample<br>average score %{y:.1f}<extra></extra>",
    ), row=1, col=2)
    fig.update_xaxes(title_text="ms per decode step (lower is faster)", range=[0, 1.3 * max(r["ms"] for r in rows)],
                     row=1, col=1)
    fig.update_yaxes(title_text=label, row=1, col=1)
    fig.update_xaxes(title_text="T_infer, s per sample", range=[0, 1.15 * max(t_infer)], row=1, col=2)
    fig.update_yaxes(title_text="average score (ROUGE-1, BLEU, F1)", row=1, col=2)
    fig.update_layout(title="Quality vs decoding time<br><sub>up and to the left is better</sub>", height=450,
                      showlegend=False)
    return fig


def figure4_order() -> list[str]:
    """The paper's Figure 4 methods from best to worst (mean pool, first head, random init)."""
    return sorted(FIGURE4_AVERAGE, key=FIGURE4_AVERAGE.get, reverse=True)
