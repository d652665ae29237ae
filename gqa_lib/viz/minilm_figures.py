"""Plotly figures of the MiniLM experiment (chapter 9): a real encoder converted to G KV heads.

They read the results of :mod:`gqa_lib.recipe.minilm_experiment` (``conversion``:
one cell per (G, method, grouping) at 0 steps; ``uptraining``: one run per
(G, method, seed) with evaluations at several steps). Every function returns
a ``go.Figure`` and displays nothing (use :func:`gqa_lib.viz.plots.show`).
"""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .quality_figures import METHOD_COLOURS

__all__ = ["minilm_conversion_figure", "minilm_uptraining_figure"]

METRICS = {"cosine": "cosine to the original embedding", "agreement@1": "nearest neighbour agrees"}


def minilm_conversion_figure(results: Mapping, chance: float | None = None) -> go.Figure:
    """Cosine and neighbour agreement right after conversion, against G, one line per method (and similar groups).

    ``chance``: the mean cosine between the original embeddings of two different
    sentences, drawn as a dotted line in the cosine panel.
    """
    cells = results["conversion"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(METRICS.values()), horizontal_spacing=0.1)
    lines = [(m, "contiguous") for m in ("mean", "first", "random")] + [("mean", "similar")]
    for col, metric in enumerate(METRICS, start=1):
        for method, grouping in lines:
            pts = sorted((c["n_kv_heads"], c[metric]) for c in cells
                         if c["method"] == method and c["grouping"] == grouping)
            name = method if grouping == "contiguous" else "mean, similar heads grouped"
            fig.add_trace(go.Scatter(
                x=[str(g) for g, _ in pts], y=[v for _, v in pts], mode="lines+markers", name=name,
                line=dict(color=METHOD_COLOURS[method], dash="dot" if grouping == "similar" else "solid"),
                legendgroup=name, showlegend=col == 1,
                hovertemplate=f"{name}, G=%{{x}}<br>{METRICS[metric]}: %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(title_text="KV heads G (12 = the original)", categoryorder="array",
                         categoryarray=["12", "6", "4", "3", "2", "1"], row=1, col=col)
    if chance is not None:
        fig.add_hline(y=chance, line=dict(color="black", dash="dot", width=1), row=1, col=1,
                      annotation_text="two different sentences", annotation_position="bottom left")
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(title="all-MiniLM-L6-v2 right after conversion (500 held-out sentences)", height=420)
    return fig


def minilm_uptraining_figure(results: Mapping, chance: float | None = None, metric: str = "cosine") -> go.Figure:
    """``metric`` against distillation steps, one panel per G that was uptrained, one colour per method.

    Runs repeated with several seeds: thin lines per seed, a thick line through their mean.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}; got {metric!r}")
    runs = results["uptraining"]
    groups = sorted({r["n_kv_heads"] for r in runs}, reverse=True)
    fig = make_subplots(rows=1, cols=len(groups), shared_yaxes=True, subplot_titles=[f"G = {g}" for g in groups])
    for col, g in enumerate(groups, start=1):
        for method in ("mean", "first", "random"):
            mine = [r for r in runs if r["n_kv_heads"] == g and r["method"] == method]
            if not mine:
                continue
            steps = [e["step"] for e in mine[0]["evals"]]
            for r in mine:
                fig.add_trace(go.Scatter(
                    x=steps, y=[e[metric] for e in r["evals"]], mode="lines", opacity=0.5, showlegend=False,
                    line=dict(color=METHOD_COLOURS[method], width=1),
                    hovertemplate=f"G={g} {method}, seed {r.get('seed', 0)}, step %{{x}}: %{{y:.3f}}<extra></extra>",
                ), row=1, col=col)
            mean = [sum(r["evals"][i][metric] for r in mine) / len(mine) for i in range(len(steps))]
            fig.add_trace(go.Scatter(
                x=steps, y=mean, mode="lines+markers", name=method, legendgroup=method,
                showlegend=method not in {t.name for t in fig.data}, line=dict(color=METHOD_COLOURS[method], width=3),
                hovertemplate=f"G={g} {method}, mean of {len(mine)} run(s), step %{{x}}: %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
        if chance is not None and metric == "cosine":
            fig.add_hline(y=chance, line=dict(color="black", dash="dot", width=1), row=1, col=col)
        fig.update_xaxes(title_text="steps", row=1, col=col)
    fig.update_yaxes(title_text=METRICS[metric], range=[0, 1.0], row=1, col=1)
    fig.update_layout(title=f"Distillation after conversion: {METRICS[metric]} (held-out sentences)<br>"
                            "<sub>thin: each seed; thick: their mean; dotted: two different sentences</sub>",
                      height=400)
    return fig
