"""Plotly figures of the conversion and uptraining experiments (chapters 6-8).

They read the results of :mod:`gqa_lib.recipe.experiments` (``grid.json``: ``runs``,
one entry per (G, method, grouping, seed) holding held-out metrics per
uptraining fraction alpha and a training trace; ``baselines``, the models
trained from scratch). Every seed is drawn, as a dot or a thin line, beside
the mean: with five seeds a reader should see the spread, not a standard
error. Every function returns a ``go.Figure`` and displays nothing (use
:func:`gqa_lib.viz.plots.show`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..paper import FIGURE4_AVERAGE, TABLE1
from ..recipe.experiments import find_baseline, find_run, seed_stats
from .speed_figures import group_label

__all__ = [
    "METRIC_LABELS",
    "METHOD_COLOURS",
    "conversion_figure",
    "uptraining_figure",
    "tradeoff_figure",
    "figure4_order",
    "head_similarity_figure",
    "attention_maps_figure",
    "training_traces_figure",
    "baselines_figure",
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


def _grouping_of(method: str, n_kv_heads: int, grouping: str) -> str:
    """The grouping a run was stored under: random init and G = 1 (one group) exist only as "contiguous"."""
    return "contiguous" if method == "random" or n_kv_heads == 1 else grouping


def _spread(stats: Sequence[Mapping]) -> dict:
    """error_y arguments spanning min..max around the mean of each point."""
    return dict(
        type="data", symmetric=False,
        array=[s["max"] - s["mean"] for s in stats], arrayminus=[s["mean"] - s["min"] for s in stats],
    )


def conversion_figure(
    results: Mapping, alphas: Sequence[float] = (0.0, 0.05), metric: str = "recall_acc",
    methods: Sequence[str] = ("mean", "first", "random"), grouping: str = "contiguous", seeds=None,
) -> go.Figure:
    """Quality per G and conversion method, one panel per uptraining fraction alpha (the paper's Figure 4).

    Bars: mean over seeds of ``metric``; dots: every seed. A dashed line
    marks the multi-head model (G = H) at the same alpha. ``grouping`` picks
    the runs (random initialisation and G = 1 have only contiguous runs);
    ``seeds`` the seeds (default: all).
    """
    seeds = list(results["setup"]["seeds"]) if seeds is None else list(seeds)
    label = _metric_label(metric)
    H = _n_heads(results)
    groups = [g for g in results["setup"]["groups"] if g != H]
    fig = make_subplots(
        rows=1, cols=len(alphas), shared_yaxes=True,
        subplot_titles=["after conversion (alpha = 0)" if a == 0 else f"after {100 * a:g}% uptraining" for a in alphas],
    )
    for col, alpha in enumerate(alphas, start=1):
        for method in methods:
            stats = [seed_stats(results, g, method, alpha, metric, _grouping_of(method, g, grouping), seeds)
                     for g in groups]
            x = [group_label(g, H) for g in groups]
            fig.add_trace(go.Bar(
                x=x, y=[s["mean"] for s in stats], offsetgroup=method, opacity=0.55,
                name=method, legendgroup=method, showlegend=col == 1, marker_color=METHOD_COLOURS.get(method),
                hovertemplate=f"{method}, G=%{{x}}<br>mean {label}: %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
            fig.add_trace(go.Scatter(
                x=[xi for xi, s in zip(x, stats) for _ in s["values"]], y=[v for s in stats for v in s["values"]],
                mode="markers", offsetgroup=method, legendgroup=method, showlegend=False,
                marker=dict(color=METHOD_COLOURS.get(method), size=7, line=dict(width=1, color="white")),
                hovertemplate=f"{method}, G=%{{x}}, one seed<br>{label}: %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
        mha = seed_stats(results, H, "mean", alpha, metric, seeds=seeds)["mean"]
        fig.add_hline(y=mha, line_dash="dash", line_color="black", row=1, col=col,
                      annotation_text=f"MHA {mha:.3f}", annotation_position="top left")
    fig.update_layout(
        title=f"Converting the {H}-head checkpoint ({grouping} groups): {label}<br><sub>bars: mean of seeds "
              f"{', '.join(map(str, seeds))}; dots: each seed; dashed: MHA</sub>",
        barmode="group", scattermode="group", height=430, legend_title_text="method",
    )
    fig.update_xaxes(title_text="KV heads G")
    fig.update_yaxes(title_text=label, row=1, col=1)
    return fig


def uptraining_figure(
    results: Mapping, groups: Sequence[int], method: str = "mean", metric: str = "recall_acc",
    grouping: str = "contiguous", seeds=None,
) -> go.Figure:
    """Quality against the uptraining fraction alpha, one panel per G in ``groups`` (the paper's Figure 5).

    Thin lines: every seed's run; thick line: the mean. The multi-head model,
    trained on for the same steps, is drawn dashed in every panel.
    """
    label = _metric_label(metric)
    H = _n_heads(results)
    alphas = list(results["setup"]["alphas"])
    seeds = list(results["setup"]["seeds"]) if seeds is None else list(seeds)
    x = [100 * a for a in alphas]
    fig = make_subplots(rows=1, cols=len(groups), shared_yaxes=True,
                        subplot_titles=[f"G = {group_label(g, H)}" for g in groups])
    mha = [seed_stats(results, H, "mean", a, metric, seeds=seeds)["mean"] for a in alphas]
    for col, g in enumerate(groups, start=1):
        colour = _GROUP_COLOURS[(col - 1) % len(_GROUP_COLOURS)]
        for seed in seeds:
            evals = find_run(results, g, method, seed, _grouping_of(method, g, grouping))
            fig.add_trace(go.Scatter(
                x=x, y=[e[metric] for e in evals], mode="lines+markers", line=dict(color=colour, width=1),
                marker=dict(size=4), opacity=0.6, showlegend=False,
                hovertemplate=f"G={g}, seed {seed}, alpha=%{{x}}%<br>{label}: %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
        mean = [seed_stats(results, g, method, a, metric, _grouping_of(method, g, grouping), seeds)["mean"]
                for a in alphas]
        fig.add_trace(go.Scatter(
            x=x, y=mean, mode="lines", line=dict(color=colour, width=4), name=f"G={group_label(g, H)}, mean",
            hovertemplate=f"G={g}, mean of seeds, alpha=%{{x}}%<br>{label}: %{{y:.3f}}<extra></extra>",
        ), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=x, y=mha, mode="lines", line=dict(color="black", dash="dash"), name=f"MHA (G={H}), mean",
            showlegend=col == 1, legendgroup="mha",
            hovertemplate="MHA trained on, alpha=%{x}%<br>" + label + ": %{y:.3f}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="alpha, % of pre-training", tickvals=x, row=1, col=col)
    fig.update_layout(
        title=f"Uptraining after {method} conversion: {label}<br><sub>thin lines: seeds {', '.join(map(str, seeds))}; "
              "thick: their mean; dashed: the multi-head model trained on</sub>",
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
        f"ours: the miniature (time of its shape on {device})", "paper, Table 1 (T5-XXL on TPUv4)",
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


def head_similarity_figure(matrices: Mapping[str, object], zmin: float = -1.0, zmax: float = 1.0) -> go.Figure:
    """Heat maps of head-by-head similarity matrices (each (H, H)), side by side, titled by their keys."""
    titles = list(matrices)
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.06)
    for col, title in enumerate(titles, start=1):
        z = [[float(v) for v in row] for row in matrices[title]]
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(len(z))), y=list(range(len(z))), zmin=zmin, zmax=zmax, colorscale="RdBu",
            reversescale=True, showscale=col == len(titles), texttemplate="%{z:.2f}", textfont=dict(size=9),
            hovertemplate="head %{y} vs head %{x}: %{z:.3f}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=col)
        fig.update_yaxes(dtick=1, autorange="reversed", row=1, col=col)
    fig.update_layout(height=380, margin=dict(t=70))
    return fig


def attention_maps_figure(maps: Mapping[str, object], token_labels: Sequence[str] | None = None) -> go.Figure:
    """Attention weights (each a (T, T) array of one head), side by side, titled by their keys."""
    titles = list(maps)
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.04)
    for col, title in enumerate(titles, start=1):
        z = [[float(v) for v in row] for row in maps[title]]
        T = len(z)
        ticks = list(token_labels) if token_labels is not None else list(range(T))
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(T)), y=list(range(T)), zmin=0, zmax=1, colorscale="Blues", showscale=col == len(titles),
            customdata=[[f"{ticks[i]} → {ticks[j]}" for j in range(T)] for i in range(T)],
            hovertemplate="%{customdata}: %{z:.3f}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="key position", row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_yaxes(title_text="query position", row=1, col=1)
    fig.update_layout(height=420, margin=dict(t=70))
    return fig


def training_traces_figure(traces: Mapping[str, Sequence[Mapping]], quantity: str = "grad_norm_max",
                           first_step: int = 0) -> go.Figure:
    """Training traces (see ``experiments._trace``), one panel per key of ``traces``, one line per run.

    ``quantity``: ``grad_norm_max`` (largest gradient norm before clipping in
    each bin of steps), ``loss_max`` or ``loss_mean``. ``first_step`` shifts
    the x axis (the global step of the runs' first step).
    """
    labels = {"grad_norm_max": "largest gradient norm per bin", "loss_max": "largest training loss per bin",
              "loss_mean": "mean training loss per bin"}
    if quantity not in labels:
        raise ValueError(f"quantity must be one of {sorted(labels)}; got {quantity!r}")
    titles = list(traces)
    fig = make_subplots(rows=1, cols=len(titles), shared_yaxes=True, subplot_titles=titles)
    for col, title in enumerate(titles, start=1):
        for i, trace in enumerate(traces[title]):
            b = trace["bin"]
            fig.add_trace(go.Scatter(
                x=[first_step + b * (j + 1) for j in range(len(trace[quantity]))], y=trace[quantity], mode="lines",
                line=dict(width=1.2, color=_GROUP_COLOURS[i % len(_GROUP_COLOURS)]), name=trace.get("label", f"run {i}"),
                showlegend=col == 1, legendgroup=trace.get("label", f"run {i}"),
                hovertemplate=f"{title}, {trace.get('label', '')}<br>step %{{x}}: %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(title_text="training step", row=1, col=col)
    fig.update_yaxes(title_text=labels[quantity], type="log" if quantity == "grad_norm_max" else "linear", row=1, col=1)
    fig.update_layout(height=400, margin=dict(t=70))
    return fig


def baselines_figure(results: Mapping, metric: str = "loss") -> go.Figure:
    """Uptrained conversions against the same G trained from scratch, per seed (the paper's economic claim).

    For each G of the baselines: mean-pooled and uptrained for scratch_alpha
    (pre-training + uptraining compute), trained from scratch for the same
    total compute ("matched"), and from scratch for the uptraining compute
    alone ("extra"). Dots: seeds; bars: means.
    """
    label = _metric_label(metric)
    setup = results["setup"]
    alpha = setup["scratch_alpha"]
    H = setup["model"]["n_heads"]
    variants = {
        f"converted + {100 * alpha:g}% uptraining": "#d62728",
        "from scratch, same total compute": "#7f7f7f",
        f"from scratch, {100 * alpha:g}% compute only": "#bcbd22",
    }
    fig = go.Figure()
    groups = list(setup["scratch_groups"])
    x_labels = [f"G={group_label(g, H)}" for g in groups]
    for name, colour in variants.items():
        values = []
        for g in groups:
            per_seed = []
            for seed in setup["scratch_seeds"]:
                if name.startswith("converted"):
                    per_seed.append(next(e[metric] for e in find_run(results, g, "mean", seed)
                                         if abs(e["alpha"] - alpha) < 1e-9))
                else:
                    budget = "matched" if "total" in name else "extra"
                    per_seed.append(find_baseline(results, g, budget, seed)["evals"][-1][metric])
            values.append(per_seed)
        fig.add_trace(go.Bar(x=x_labels, y=[sum(v) / len(v) for v in values], name=name, marker_color=colour,
                             offsetgroup=name, opacity=0.55,
                             hovertemplate=f"{name}<br>%{{x}}: mean {label} %{{y:.3f}}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[x for x, v in zip(x_labels, values) for _ in v], y=[u for v in values for u in v],
                                 mode="markers", offsetgroup=name, showlegend=False, marker=dict(color=colour, size=8),
                                 hovertemplate=f"{name}, one seed<br>%{{x}}: {label} %{{y:.3f}}<extra></extra>"))
    fig.update_layout(
        title=f"Uptraining against training from scratch: {label}<br><sub>bars: mean of "
              f"{len(setup['scratch_seeds'])} seeds; dots: each seed</sub>",
        barmode="group", scattermode="group", yaxis=dict(title=label), height=430,
    )
    return fig
