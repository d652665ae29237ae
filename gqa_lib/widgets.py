"""A live explorer: sliders for G, context, batch, dtype and model preset.

:class:`DecodeExplorer` shows, for every G that divides the preset's H, the
KV-cache size and the measured time of one decode step of one attention layer
of that shape on the current device (CUDA when present), and marks the G the
reader picked against MHA and MQA. Figures are plain ``go.Figure`` objects
redrawn inside ``ipywidgets.Output`` (no ``FigureWidget``), which works with
the ipywidgets 7.7 / plotly 5.24 that Colab ships as well as newer versions.

On the static website no Python runs, so :meth:`DecodeExplorer.display`
shows a snapshot of the current state instead of live widgets when the
environment variable ``GQA_BOOK_STATIC`` is set (the book's build sets it).
"""

from __future__ import annotations

import os

import torch

from .attention import grouped_attention
from .bench import divisors
from .kv_cache import kv_cache_bytes
from .plots import show
from .presets import PRESETS, ModelPreset
from .speed_figures import kv_by_group_figure, time_by_group_figure
from .timing import available_memory_bytes, device_name, parse_dtype, pick_device, quick_time

__all__ = ["DecodeExplorer", "measure_decode_per_group", "SizeRefused"]

CONTEXTS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
DTYPES = ("float32", "bfloat16", "float16")


class SizeRefused(ValueError):
    """A requested size would not fit in free memory or in the live-timing budget."""


def _memory_needed(preset: ModelPreset, batch_size: int, context: int, elem: int) -> int:
    """Bytes the MHA-sized timing needs at once: K and V of one layer plus the query and scores."""
    return kv_cache_bytes(1, preset.n_heads, preset.head_dim, context, batch_size, elem) + (
        batch_size * preset.n_heads * context * 4 * 2  # fp32 scores and weights
    )


def measure_decode_per_group(
    preset: ModelPreset,
    batch_size: int,
    context: int,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    groups: list[int] | None = None,
    repeats: int = 3,
    max_bytes: int | None = None,
) -> dict[int, float]:
    """Milliseconds of one decode step of one attention layer of ``preset``'s shape, for each G.

    Raises :class:`SizeRefused` (a ValueError) when the MHA-sized K/V would
    not fit in half of the device's free memory, or exceed ``max_bytes``
    (default: 1.5 GB on CPU, to keep a widget update near a second; none on CUDA).
    """
    device = pick_device(device)
    torch_dtype = parse_dtype(dtype)
    elem = torch.tensor([], dtype=torch_dtype).element_size()
    needed = _memory_needed(preset, batch_size, context, elem)
    free = available_memory_bytes(device)
    if needed > free // 2:
        raise SizeRefused(
            f"batch {batch_size} x context {context} needs {needed / 2**30:.2f} GiB for MHA's K/V, "
            f"more than half of the {free / 2**30:.1f} GiB free on {device_name(device)}"
        )
    if max_bytes is None:
        max_bytes = 1_500_000_000 if device.type == "cpu" else None
    if max_bytes is not None and needed > max_bytes:
        raise SizeRefused(
            f"batch {batch_size} x context {context} would read {needed / 1e9:.2f} GB per MHA step: "
            f"too slow to time live on {device_name(device)} (limit {max_bytes / 1e9:.1f} GB); pick a smaller size"
        )
    groups = divisors(preset.n_heads) if groups is None else groups
    gen = torch.Generator(device="cpu").manual_seed(0)
    ms = {}
    with torch.no_grad():
        q = torch.randn(batch_size, preset.n_heads, 1, preset.head_dim, generator=gen).to(device, torch_dtype)
        # One MHA-sized K/V; every smaller G reads the first G heads of it (a view, no copy).
        shape = (batch_size, preset.n_heads, context, preset.head_dim)  # (B, H, Tk, D)
        k_all = torch.randn(shape, generator=gen).to(device, torch_dtype)
        v_all = torch.randn(shape, generator=gen).to(device, torch_dtype)
        for g in groups:
            k, v = k_all[:, :g], v_all[:, :g]  # (B, G, Tk, D)
            ms[g] = quick_time(lambda: grouped_attention(q, k, v, causal=True), repeats=repeats).median_ms
        del k_all, v_all
    return ms


class DecodeExplorer:
    """Sliders for G, context length, batch size, dtype and model preset; live KV size and decode time.

    ``DecodeExplorer().display()`` shows the widget. The state lives in plain
    attributes (``preset``, ``G``, ``context``, ``batch_size``, ``dtype``)
    that :meth:`set` changes and the sliders drive, so it can be used and
    tested without a front end. Timings per (shape, batch, context, dtype)
    are measured once and remembered: moving only G redraws instantly.
    """

    def __init__(self, preset: str = "Llama 2 7B", G: int | None = None, context: int = 2048,
                 batch_size: int = 1, dtype: str = "float32", device: str | torch.device | None = None):
        self.device = pick_device(device)
        self._timings: dict[tuple, dict[int, float]] = {}
        self._controls = None
        self.preset, self.G, self.context, self.batch_size, self.dtype = preset, G, context, batch_size, dtype
        self.kv_figure = None
        self.time_figure = None
        self.message = ""
        self.set()

    def set(self, **changes) -> None:
        """Change any of preset, G, context, batch_size, dtype (ValueError naming a bad value), then update."""
        unknown = set(changes) - {"preset", "G", "context", "batch_size", "dtype"}
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}")
        preset = changes.get("preset", self.preset)
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(PRESETS)}")
        p = PRESETS[preset]
        g = changes.get("G", self.G if preset == self.preset or "G" in changes else None)
        g = p.n_kv_heads if g is None else g
        if g not in divisors(p.n_heads):
            raise ValueError(f"G must divide {p.name}'s n_heads={p.n_heads}; got G={g}")
        context = changes.get("context", self.context)
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}; got {context}")
        batch_size = changes.get("batch_size", self.batch_size)
        if batch_size not in BATCHES:
            raise ValueError(f"batch_size must be one of {BATCHES}; got {batch_size}")
        dtype = changes.get("dtype", self.dtype)
        parse_dtype(dtype)
        self.preset, self.G, self.context, self.batch_size, self.dtype = preset, g, context, batch_size, dtype
        self.update()

    @property
    def shape(self) -> ModelPreset:
        return PRESETS[self.preset]

    def timings(self) -> dict[int, float]:
        """Measured ms per G for the current settings (cached); raises SizeRefused when refused."""
        p = self.shape
        key = (p.n_heads, p.head_dim, self.batch_size, self.context, self.dtype)
        if key not in self._timings:
            self._timings[key] = measure_decode_per_group(p, self.batch_size, self.context, self.dtype, self.device)
        return self._timings[key]

    def update(self) -> None:
        """Recompute both figures and the message for the current settings; redraw live widgets if shown."""
        p, g = self.shape, self.G
        elem = torch.tensor([], dtype=parse_dtype(self.dtype)).element_size()
        self.kv_figure = kv_by_group_figure(p, divisors(p.n_heads), self.context, self.batch_size, elem, picked=g)
        try:
            ms = self.timings()
        except SizeRefused as refused:
            self.time_figure = None
            self.message = f"Timing refused: {refused}"
        else:
            self.time_figure = time_by_group_figure(
                ms, p.n_heads, device_name(self.device), picked=g, what=f"1-layer decode ({p.name} shape)"
            )
            self.message = (
                f"G={g} of H={p.n_heads}: KV cache {g / p.n_heads:.3g} of MHA's; measured decode step "
                f"{ms[p.n_heads] / ms[g]:.2f}x faster than MHA and {ms[g] / ms[1]:.2f}x the time of MQA."
            )
        if self._controls is not None:
            self._redraw()

    # -- live widgets ------------------------------------------------------------
    def widget(self):
        """The ipywidgets panel (built once): sliders, a status line and the two figures."""
        if self._controls is not None:
            return self._controls["panel"]
        import ipywidgets as widgets

        style, layout = {"description_width": "110px"}, widgets.Layout(width="520px")
        c = {
            "preset": widgets.Dropdown(options=list(PRESETS), value=self.preset, description="model shape",
                                       style=style, layout=layout),
            "G": widgets.SelectionSlider(options=divisors(self.shape.n_heads), value=self.G,
                                         description="KV heads G", style=style, layout=layout),
            "context": widgets.SelectionSlider(options=CONTEXTS, value=self.context, description="context length",
                                               style=style, layout=layout),
            "batch_size": widgets.SelectionSlider(options=BATCHES, value=self.batch_size, description="batch size",
                                                  style=style, layout=layout),
            "dtype": widgets.Dropdown(options=DTYPES, value=self.dtype, description="dtype", style=style, layout=layout),
        }
        status, kv_out, time_out = widgets.HTML(), widgets.Output(), widgets.Output()
        panel = widgets.VBox([
            widgets.HTML(f"<b>Decode explorer</b>: timings measured live on <code>{device_name(self.device)}</code>"),
            *c.values(), status, widgets.HBox([kv_out, time_out]),
        ])
        self._controls = {**c, "status": status, "kv_out": kv_out, "time_out": time_out, "panel": panel}

        def on_change(change, name):
            if self._syncing:
                return
            self.set(**{name: change["new"]})
            if name == "preset":  # the G slider's options follow the model's H
                self._syncing = True
                c["G"].options = divisors(self.shape.n_heads)
                c["G"].value = self.G
                self._syncing = False

        self._syncing = False
        for name, w in c.items():
            w.observe(lambda change, name=name: on_change(change, name), names="value")
        self._redraw()
        return panel

    def _redraw(self) -> None:
        from IPython.display import clear_output

        c = self._controls
        c["status"].value = f"<span>{self.message}</span>"
        with c["kv_out"]:
            clear_output(wait=True)
            show(self.kv_figure)
        with c["time_out"]:
            clear_output(wait=True)
            if self.time_figure is not None:
                show(self.time_figure)

    def display(self) -> None:
        """Show the live widget; on the static book build (GQA_BOOK_STATIC set), a snapshot of the current state."""
        from IPython.display import Markdown, display

        if os.environ.get("GQA_BOOK_STATIC"):
            display(Markdown(
                "*A static snapshot of the explorer: no Python runs on this page. "
                "Open the chapter in Jupyter or Colab to move the sliders.*\n\n" + self.message
            ))
            show(self.kv_figure)
            if self.time_figure is not None:
                show(self.time_figure)
        else:
            display(self.widget())
