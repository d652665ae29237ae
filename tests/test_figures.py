"""gqa_lib.viz.figures: the figures' data say what the book says they draw."""

import json
import subprocess
import sys

import plotly.graph_objects as go
import pytest

import gqa_lib
import gqa_lib.viz.plots
from gqa_lib.speed.bench import divisors
from gqa_lib.viz import figures


def traces(fig, panel, role):
    return [t for t in fig.data if t.meta["panel"] == panel and t.meta["role"] == role]


def drawn_pairs(fig, panel):
    """(query head, KV head) pairs recovered from the line traces' coordinates of one panel."""
    (q_trace,) = traces(fig, panel, "query")
    (kv_trace,) = traces(fig, panel, "kv")
    query_at = {(x, y): h for x, y, h in zip(q_trace.x, q_trace.y, q_trace.customdata)}
    kv_at = {(x, y): g for x, y, g in zip(kv_trace.x, kv_trace.y, kv_trace.customdata)}
    pairs = []
    for edge in traces(fig, panel, "edge"):
        xs, ys = list(edge.x), list(edge.y)
        assert len(xs) % 3 == 0
        for i in range(0, len(xs), 3):
            (x0, y0), (x1, y1) = (xs[i], ys[i]), (xs[i + 1], ys[i + 1])
            assert xs[i + 2] is None and ys[i + 2] is None  # segments are separated by gaps
            pairs.append((query_at[(x0, y0)], kv_at[(x1, y1)], edge.meta["group"], edge.line.color))
    return pairs


@pytest.mark.parametrize("n_heads,counts", [(8, [8, 2, 1]), (12, [12, 6, 4, 3, 2, 1]), (64, [64, 8, 1])])
def test_grouping_lines_connect_exactly_the_contiguous_pairs(n_heads, counts):
    fig = figures.head_grouping_figure(n_heads, counts)
    assert isinstance(fig, go.Figure)
    for panel, g in enumerate(counts):
        pairs = drawn_pairs(fig, panel)
        r = n_heads // g
        assert sorted((h, kv) for h, kv, _, _ in pairs) == [(h, h // r) for h in range(n_heads)]
        # each line's colour and group is its KV head's; all groups coloured differently
        (kv_trace,) = traces(fig, panel, "kv")
        for _, kv, group, colour in pairs:
            assert group == kv
            assert colour == kv_trace.marker.color[kv]
        assert len(set(kv_trace.marker.color)) == g
        (q_trace,) = traces(fig, panel, "query")
        assert list(q_trace.x) == list(range(n_heads)) and set(q_trace.y) == {1}
        assert len(kv_trace.x) == g and set(kv_trace.y) == {0}
        assert [kv_trace.marker.color[h // r] for h in range(n_heads)] == list(q_trace.marker.color)


def test_strided_mapping_draws_h_mod_g():
    fig = figures.head_grouping_figure(8, [2], mapping="strided")
    assert sorted((h, kv) for h, kv, _, _ in drawn_pairs(fig, 0)) == [(h, h % 2) for h in range(8)]


def test_grouping_panel_titles():
    fig = figures.head_grouping_figure(8, [8, 2, 1])
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["MHA (G=8)", "GQA (G=2)", "MQA (G=1)"]
    assert fig.layout.title.text and fig.layout.height
    fig = figures.head_grouping_figure(8, [4], title="mine")
    assert fig.layout.title.text == "mine"


@pytest.mark.parametrize("bad", [3, 0, 16, -2, 2.5])
def test_grouping_rejects_g_that_does_not_divide_h(bad):
    with pytest.raises(ValueError, match=f"G={bad}|G must be an integer >= 1; got {bad}"):
        figures.head_grouping_figure(8, [8, bad, 1])


def test_grouping_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        figures.head_grouping_figure(8, [])
    with pytest.raises(ValueError, match="n_heads"):
        figures.head_grouping_figure(0, [1])
    with pytest.raises(ValueError, match="mapping"):
        figures.head_grouping_figure(8, [2], mapping="interleaved")


def test_attention_label_agrees_with_presets():
    for p in gqa_lib.PRESETS.values():
        assert figures.attention_label(p.n_heads, p.n_kv_heads) == p.attention
    assert [figures.attention_label(8, g) for g in (8, 4, 2, 1)] == ["MHA", "GQA-4", "GQA-2", "MQA"]


def test_kv_head_for_query_head():
    assert figures.kv_head_for_query_head(13, 32, 8) == 3
    assert figures.kv_head_for_query_head(13, 32, 8, mapping="strided") == 5
    assert [figures.kv_head_for_query_head(h, 8, 8) for h in range(8)] == list(range(8))
    assert {figures.kv_head_for_query_head(h, 8, 1) for h in range(8)} == {0}
    with pytest.raises(ValueError, match="G=3"):
        figures.kv_head_for_query_head(0, 8, 3)
    with pytest.raises(ValueError, match="got 8"):
        figures.kv_head_for_query_head(8, 8, 2)


SEQ = list(range(0, 8193, 1024))


def expected_gib(p, g, batch_size=1, bytes_per_elem=2):
    return [
        gqa_lib.kv_cache_bytes(p.n_layers, g, p.head_dim, t, batch_size=batch_size, bytes_per_elem=bytes_per_elem)
        / 2**30
        for t in SEQ
    ]


@pytest.mark.parametrize("name", ["Llama 2 70B", "Mistral 7B", "Llama 2 13B"])
def test_slider_has_one_step_per_divisor_with_exact_kv_sizes(name):
    p = gqa_lib.get_preset(name)
    fig = figures.kv_cache_slider_figure(p, SEQ, batch_size=2, bytes_per_elem=4)
    assert isinstance(fig, go.Figure)
    assert not fig.frames  # no animation machinery: the slider restyles
    (slider,) = fig.layout.sliders
    steps = slider.steps
    assert [int(s.label) for s in steps] == divisors(p.n_heads)
    for step, g in zip(steps, divisors(p.n_heads)):
        assert step.method in ("update", "restyle")
        data_update, layout_update, trace_ids = step.args
        assert list(trace_ids) == [2]
        assert data_update["y"] == [expected_gib(p, g, 2, 4)]
        assert f"G={g}" in data_update["name"][0]
        assert f"G = {g}" in layout_update["title.text"]
    # the starting position is the preset's own G, and trace 2 shows it
    assert int(steps[slider.active].label) == p.n_kv_heads
    assert list(fig.data[2].y) == expected_gib(p, p.n_kv_heads, 2, 4)
    # reference curves: MHA and MQA
    assert list(fig.data[0].y) == expected_gib(p, p.n_heads, 2, 4) and "MHA" in fig.data[0].name
    assert list(fig.data[1].y) == expected_gib(p, 1, 2, 4) and "MQA" in fig.data[1].name
    assert list(fig.data[0].x) == SEQ
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text and fig.layout.height


def test_slider_values_for_llama2_70b_at_4096_tokens():
    fig = figures.kv_cache_slider_figure(gqa_lib.get_preset("Llama 2 70B"), [0, 4096])
    # 2 (K and V) * 80 layers * G * 4096 tokens * 128 dims * 2 bytes = G * 0.15625 GiB
    got = {int(s.label): s.args[0]["y"][0][-1] for s in fig.layout.sliders[0].steps}
    assert got == {g: g * 0.15625 for g in (1, 2, 4, 8, 16, 32, 64)}


def test_slider_accepts_shapes_and_active_g():
    by_tuple = figures.kv_cache_slider_figure((4, 6, 16), [0, 10, 20], active_g=3)
    by_map = figures.kv_cache_slider_figure({"n_layers": 4, "n_heads": 6, "head_dim": 16}, [0, 10, 20], active_g=3)
    for fig in (by_tuple, by_map):
        assert [s.label for s in fig.layout.sliders[0].steps] == ["1", "2", "3", "6"]
        assert fig.layout.sliders[0].active == 2
        assert list(fig.data[2].y) == [gqa_lib.kv_cache_bytes(4, 3, 16, t) / 2**30 for t in (0, 10, 20)]
    # without a preset G the slider starts at MHA
    assert figures.kv_cache_slider_figure((4, 6, 16), [1]).layout.sliders[0].active == 3


def test_slider_rejects_bad_input():
    p = gqa_lib.get_preset("Mistral 7B")
    with pytest.raises(ValueError, match="G=3"):
        figures.kv_cache_slider_figure(p, SEQ, active_g=3)
    with pytest.raises(ValueError, match="seq_lens"):
        figures.kv_cache_slider_figure(p, [])
    with pytest.raises(ValueError, match="-1"):
        figures.kv_cache_slider_figure(p, [0, -1])
    with pytest.raises(ValueError, match="non-decreasing"):
        figures.kv_cache_slider_figure(p, [10, 0])
    with pytest.raises(ValueError, match="missing"):
        figures.kv_cache_slider_figure({"n_layers": 2}, SEQ)
    with pytest.raises(ValueError, match="batch_size"):
        figures.kv_cache_slider_figure(p, SEQ, batch_size=0)


def test_slider_survives_the_trip_to_a_static_page():
    """What plotly.js receives (the JSON in the page) still holds every step and its y values."""
    p = gqa_lib.get_preset("Llama 2 70B")
    fig = figures.kv_cache_slider_figure(p, SEQ)
    html = gqa_lib.viz.plots.figure_html(fig, div_id="x")
    payload = json.loads(html.split("var fig = ", 1)[1].split(";\n", 1)[0])
    steps = payload["layout"]["sliders"][0]["steps"]
    assert payload["frames"] == []
    assert [s["label"] for s in steps] == [str(g) for g in divisors(64)]
    assert steps[-1]["args"][0]["y"][0] == expected_gib(p, 64)


def test_importing_figures_does_not_import_ipython():
    code = "import sys, gqa_lib, gqa_lib.viz.figures; print('IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the grouped product: Q viewed as (B, G, R*Tq, D) against K_g -------------------------------------------


def named_blocks(fig, kind):
    """{(g, r, h) or g: shape} for the rectangles of one kind ('Q', 'O', 'S', 'K', 'V'), parsed from their names."""
    out = {}
    for s in fig.layout.shapes:
        if s.type != "rect" or not s.name.startswith(kind + " "):
            continue
        fields = dict(part.split("=") for part in s.name.split()[1:])
        key = tuple(int(fields[k]) for k in ("g", "r", "h")) if "h" in fields else int(fields["g"])
        assert key not in out, f"{s.name} drawn twice"
        out[key] = s
    return out


@pytest.mark.parametrize("n_heads,n_kv_heads,q_len", [(12, 3, 4), (8, 1, 1), (8, 8, 2), (64, 8, 1), (6, 2, 3)])
def test_grouped_product_rows_agree_with_torch_reshape(n_heads, n_kv_heads, q_len):
    """Which query head fills each row of each block Q_g: the figure against torch's own (H, Tq, D) -> (G, R*Tq, D)."""
    torch = pytest.importorskip("torch")
    fig = figures.grouped_product_figure(n_heads, n_kv_heads, q_len=q_len)
    r_count, rows = n_heads // n_kv_heads, n_heads // n_kv_heads * q_len
    gap = fig.layout.meta["gap"]
    # tag every query row with its head: q[h, t, :] = h, then view it grouped as the library does
    q = torch.arange(n_heads, dtype=torch.float32)[:, None, None].expand(n_heads, q_len, 2).contiguous()
    q_grouped = q.reshape(n_kv_heads, rows, 2)  # (H, Tq, D) -> (G, R*Tq, D), a view
    assert q_grouped.data_ptr() == q.data_ptr()
    stripes = named_blocks(fig, "Q")
    assert sorted(h for _, _, h in stripes) == list(range(n_heads))  # every query head drawn exactly once
    for g in range(n_kv_heads):
        top = g * (rows + gap)
        for i in range(rows):
            head_in_torch = int(q_grouped[g, i, 0])
            (drawn,) = [(h, r) for (gg, r, h), s in stripes.items() if gg == g and s.y0 <= top + i < s.y1]
            assert drawn[0] == head_in_torch
            assert drawn == (g * r_count + i // q_len, i // q_len)  # h = gR + r, r = row // Tq
    for (g, r, h), s in stripes.items():
        assert (s.y0, s.y1) == (g * (rows + gap) + r * q_len, g * (rows + gap) + (r + 1) * q_len)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(12, 3), (8, 1), (8, 8), (64, 8)])
def test_grouped_product_draws_each_kv_head_once_in_its_groups_band_and_colour(n_heads, n_kv_heads):
    fig = figures.grouped_product_figure(n_heads, n_kv_heads, q_len=2)
    rows, gap = n_heads // n_kv_heads * 2, fig.layout.meta["gap"]
    q_stripes, o_stripes = named_blocks(fig, "Q"), named_blocks(fig, "O")
    assert set(o_stripes) == set(q_stripes)  # the output rows are the query rows, head by head
    for kind in ("K", "V", "S"):
        blocks = named_blocks(fig, kind)
        assert sorted(blocks) == list(range(n_kv_heads))  # once per group: read once, not once per query head
        for g, s in blocks.items():
            top = g * (rows + gap)
            assert top <= s.y0 < s.y1 <= top + rows  # inside the band of Q_g
    scores = named_blocks(fig, "S")
    for g, s in scores.items():
        assert (s.y0, s.y1) == (g * (rows + gap), g * (rows + gap) + rows)  # R*Tq score rows, aligned with Q_g
    # colour: every block of group g carries the group's colour; groups differ
    base = {g: s.fillcolor for g, s in named_blocks(fig, "K").items()}
    assert len(set(base.values())) == n_kv_heads
    rgb = {g: figures._rgba(c, 1.0).rsplit(",", 1)[0] for g, c in base.items()}
    for (g, r, h), s in q_stripes.items():
        assert s.fillcolor.rsplit(",", 1)[0] == rgb[g] and o_stripes[(g, r, h)].fillcolor == s.fillcolor
    for g, s in scores.items():
        assert s.fillcolor.rsplit(",", 1)[0] == rgb[g]
    assert all(named_blocks(fig, "V")[g].fillcolor == base[g] for g in base)


def test_grouped_product_hover_and_labels():
    fig = figures.grouped_product_figure(12, 3, q_len=4, kv_len=16, head_dim=8)
    (trace,) = [t for t in fig.data if t.meta["role"] == "query-heads"]
    assert [list(c) for c in trace.customdata] == [[h, h // 4, h % 4, (h % 4) * 4, (h % 4) * 4 + 3] for h in range(12)]
    assert "query head 5 = 1·R + 1: rows 4..7 of Q_1" in trace.hovertext[5]
    texts = [a.text for a in fig.layout.annotations]
    assert "head 5" in texts and "rows 4–7" in texts
    assert any("(16 × 8)" in t for t in texts) and any("(8 × 16)" in t for t in texts)  # R*Tq x D and D x Tk
    assert "G=3" in fig.layout.title.text and "R = 4" in fig.layout.title.text
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]  # rows count downwards
    assert figures.grouped_product_figure(4, 2, title="mine").layout.title.text == "mine"


@pytest.mark.parametrize("bad", [5, 0, 13, -3, 2.5, True])
def test_grouped_product_rejects_g_that_does_not_divide_h(bad):
    with pytest.raises(ValueError, match=f"G={bad}|G must be an integer >= 1; got (the bool )?{bad}"):
        figures.grouped_product_figure(12, bad)


def test_grouped_product_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_heads"):
        figures.grouped_product_figure(0, 1)
    for name in ("q_len", "kv_len", "head_dim", "height"):
        with pytest.raises(ValueError, match=name):
            figures.grouped_product_figure(8, 2, **{name: 0})
