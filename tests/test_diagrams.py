"""gqa_lib.viz.diagrams: the diagrams draw what their docstrings say, and refuse bad sizes."""

import json

import plotly.graph_objects as go
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gqa_lib.viz.plots
from gqa_lib import kv_cache_bytes
from gqa_lib.viz import diagrams


def boxes(fig):
    return {t.meta["name"]: t for t in fig.data if t.meta["role"] == "box"}


def box_bounds(trace):
    xs, ys = [x for x in trace.x], [y for y in trace.y]
    return min(xs), max(xs), min(ys), max(ys)


def segments(trace):
    xs, ys = list(trace.x), list(trace.y)
    assert len(xs) % 3 == 0
    out = []
    for i in range(0, len(xs), 3):
        assert xs[i + 2] is None and ys[i + 2] is None  # segments separated by gaps
        out.append(((xs[i], ys[i]), (xs[i + 1], ys[i + 1])))
    return out


def touches(point, trace, tol=1e-9):
    """True if ``point`` lies on the left or right edge of the box ``trace`` (within its height)."""
    x0, x1, y0, y1 = box_bounds(trace)
    x, y = point
    return (abs(x - x0) < tol or abs(x - x1) < tol) and y0 - tol <= y <= y1 + tol


@pytest.mark.parametrize("B,T,d,H", [(2, 5, 16, 4), (1, 7, 24, 6), (3, 2, 8, 1), (2, 5, 64, 16)])
def test_mha_diagram_has_one_box_per_block_and_head_and_states_every_shape(B, T, d, H):
    fig = diagrams.mha_layer_figure(B, T, d, H)
    D = d // H
    named = boxes(fig)
    assert set(named) == {"x", "Q", "K", "V", "concat", "y"} | {f"head {h}" for h in range(H)}
    text = " ".join(a.text for a in fig.layout.annotations)
    # the shapes the layer's tensors have, with these sizes
    assert f"= ({B}, {T}, {d})" in text  # x and y
    assert f"= ({B}, {T}, {H * D})" in text  # Q, K, V and the concatenation
    assert f"H = {H} heads" in text and f"D = {D}" in fig.layout.title.text
    if H <= 8:
        assert text.count(f"(B, T, D) = ({B}, {T}, {D})") == H  # one per head
    # head boxes do not overlap, head 0 on top
    tops = [box_bounds(named[f"head {h}"]) for h in range(H)]
    for upper, lower in zip(tops, tops[1:]):
        assert lower[3] < upper[2]


def test_mha_diagram_wires_join_every_projection_to_every_head_and_every_head_to_the_concatenation():
    H = 4
    fig = diagrams.mha_layer_figure(2, 5, 16, H)
    named = boxes(fig)
    wires = {t.meta["name"]: t for t in fig.data if t.meta["role"] == "wires"}
    for p in "QKV":
        (seg,) = segments(wires[f"x to {p}"])
        assert touches(seg[0], named["x"]) and touches(seg[1], named[p])
        segs = segments(wires[f"{p} to heads"])
        assert len(segs) == H
        for h, (a, b) in enumerate(segs):
            assert touches(a, named[p]) and touches(b, named[f"head {h}"])
        assert wires[f"{p} to heads"].line.color == wires[f"x to {p}"].line.color == named[p].line.color
    segs = segments(wires["heads to concat"])
    assert [touches(a, named[f"head {h}"]) and touches(b, named["concat"]) for h, (a, b) in enumerate(segs)] == [True] * H
    (seg,) = segments(wires["concat to y"])
    assert touches(seg[0], named["concat"]) and touches(seg[1], named["y"])


@pytest.mark.parametrize("kwargs,bad", [
    (dict(d_model=16, n_heads=3), "n_heads=3"),
    (dict(d_model=0), "d_model"),
    (dict(n_heads=0), "n_heads"),
    (dict(batch_size=2.0), "batch_size"),
    (dict(seq_len=True), "seq_len"),
])
def test_mha_diagram_refuses_bad_sizes_naming_them(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        diagrams.mha_layer_figure(**kwargs)


def cache_trace(data):
    (t,) = [t for t in data if (t.meta or {}).get("role") == "cache"]
    return t


def bytes_trace(data):
    (t,) = [t for t in data if (t.meta or {}).get("role") == "bytes"]
    return t


def expected_grid(L, P, step, n_pos):
    """Independent rendering of the cache's state after ``step`` (0 = prefill)."""
    filled = P + step
    row = []
    for t in range(n_pos):
        if t >= filled:
            row.append(0)
        elif (step == 0 and t < P) or (step > 0 and t == filled - 1):
            row.append(3)  # written by the frame shown
        elif t < P:
            row.append(1)
        else:
            row.append(2)
    return [row] * (2 * L)


@pytest.mark.parametrize("L,G,D,P,N,b", [(2, 8, 16, 8, 24, 4), (1, 1, 4, 1, 1, 2), (3, 2, 8, 5, 6, 1)])
def test_cache_animation_frames_fill_one_position_per_step_and_state_the_bytes(L, G, D, P, N, b):
    fig = diagrams.kv_cache_growth_figure(L, G, D, P, N, b)
    n_pos = P + N - 1
    assert len(fig.frames) == N
    rows = [f"layer {layer} {kv}" for layer in range(L) for kv in "KV"]
    assert list(fig.layout.yaxis.ticktext) == rows
    for step, frame in enumerate(fig.frames):
        heat = cache_trace(frame.data)
        assert [list(r) for r in heat.z] == expected_grid(L, P, step, n_pos)
        assert list(heat.x) == list(range(n_pos))
        filled = P + step
        words = bytes_trace(frame.data).text[0]
        assert f"cache holds {filled} positions" in words
        assert f"= {kv_cache_bytes(L, G, D, filled, 1, b):,} bytes" in words
        assert f"× {2 * L * G * D * b:,} bytes" in words
        assert ("prefill" in words) == (step == 0)
        assert list(frame.traces) == [fig.data.index(cache_trace(fig.data)), fig.data.index(bytes_trace(fig.data))]
    # the figure opens on the full cache, the last frame
    assert [list(r) for r in cache_trace(fig.data).z] == expected_grid(L, P, N - 1, n_pos)


def test_cache_animation_slider_and_buttons_animate_frames_that_change_the_data():
    fig = diagrams.kv_cache_growth_figure(2, 8, 16, 8, 24, 4)
    (slider,) = fig.layout.sliders
    names = [f.name for f in fig.frames]
    assert len(set(names)) == len(names) == len(slider.steps) == 24
    assert slider.active == len(names) - 1
    for step, name in zip(slider.steps, names):
        assert step.method == "animate" and list(step.args[0]) == [name] and step.label == name
        assert step.args[1]["frame"]["redraw"] is True  # a heatmap needs a redraw
    # moving the slider changes the plotted data: no two frames draw the same thing
    drawn = [json.dumps([list(r) for r in cache_trace(f.data).z]) + bytes_trace(f.data).text[0] for f in fig.frames]
    assert len(set(drawn)) == len(drawn)
    (menu,) = fig.layout.updatemenus
    play, pause = menu.buttons
    assert play.method == pause.method == "animate" and play.args[0] is None and list(pause.args[0]) == [None]
    # the frames travel to the static page with the figure
    html = gqa_lib.viz.plots.figure_html(fig)
    assert '"frames": [' in html and html.count('"name": "8"') >= 1


@settings(max_examples=30, deadline=None)
@given(L=st.integers(1, 4), P=st.integers(1, 12), N=st.integers(1, 12))
def test_cache_animation_every_position_is_written_exactly_once(L, P, N):
    fig = diagrams.kv_cache_growth_figure(L, 2, 4, P, N, 2)
    n_pos = P + N - 1
    written = [0] * n_pos
    for frame in fig.frames:
        for t, v in enumerate(cache_trace(frame.data).z[0]):
            written[t] += v == diagrams.CACHE_STATES.index("this step")
    assert written == [1] * n_pos


@pytest.mark.parametrize("kwargs,bad", [
    (dict(n_layers=0), "n_layers"),
    (dict(n_kv_heads=-1), "n_kv_heads"),
    (dict(head_dim=1.5), "head_dim"),
    (dict(prompt_len=0), "prompt_len"),
    (dict(new_tokens=0), "new_tokens"),
    (dict(bytes_per_elem=0), "bytes_per_elem"),
    (dict(frame_ms=0), "frame_ms"),
])
def test_cache_animation_refuses_bad_sizes_naming_them(kwargs, bad):
    args = dict(n_layers=2, n_kv_heads=2, head_dim=4, prompt_len=3, new_tokens=4)
    with pytest.raises(ValueError, match=bad):
        diagrams.kv_cache_growth_figure(**{**args, **kwargs})


def test_diagrams_are_figures_with_visible_traces():
    for fig in (diagrams.mha_layer_figure(), diagrams.kv_cache_growth_figure(2, 2, 4, 3, 4)):
        assert isinstance(fig, go.Figure) and any(t.visible is not False for t in fig.data)
