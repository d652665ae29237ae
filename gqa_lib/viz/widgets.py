"""A live explorer: sliders for G, context, batch, dtype and model preset.

:class:`DecodeExplorer` shows, for every G that divides the preset's H, the
KV-cache size and the measured time of one decode step of one attention layer
of that shape on the current device (CUDA when present), and marks the G the
reader picked against MHA and MQA. Figures are plain ``go.Figure`` objects
redrawn inside ``ipywidgets.Output`` (no ``FigureWidget``), which works with
the ipywidgets 7.7 / plotly 5.24 that Colab ships as well as newer versions.

What is timed is the path the book's ``generate()`` runs: the KV cache is
allocated for the whole generation, so attention reads the first ``context``
positions of a longer cache, a strided view, not a tensor of exactly
``context`` positions. On a CPU the timings run on the threads the reader's
code has (``torch.get_num_threads()``), and the figure says how many.

On the static website no Python runs, so :meth:`DecodeExplorer.display`
shows a one-line note instead of live widgets when the environment variable
``GQA_BOOK_STATIC`` is set (the book's build sets it). The website's explorer
is :func:`precomputed_explorer`: sweeps measured when the chapter ran
(:func:`measure_explorer_sweeps`) and committed reference sweeps, embedded in
self-contained HTML whose script only looks up the numbers computed in
:func:`decode_explorer_data` (a G slider, context, model and device), so it
works the same on the website, in Jupyter and on Colab.
"""

from __future__ import annotations

import html
import json
import os
import uuid

import torch

from ..checks import as_count, as_kv_heads, divisors
from ..core.attention import grouped_attention
from ..core.kv_cache import kv_cache_bytes
from ..presets import PRESETS, ModelPreset
from ..speed.bench import sweep_attention_decode
from ..speed.gpu_plan import explorer_memory_parts
from ..speed.timing import available_memory_bytes, device_name, parse_dtype, pick_device, quick_time, timing_threads
from .plots import FORM_HELPERS_JS, run_with_plotly, show
from .speed_figures import kv_by_group_figure, time_by_group_figure

__all__ = [
    "DecodeExplorer", "compare_times", "measure_decode_per_group", "SizeRefused",
    "EXPLORER_MODELS", "EXPLORER_CONTEXTS", "measure_explorer_sweeps", "decode_explorer_data",
    "decode_explorer_html", "PrecomputedExplorer", "precomputed_explorer",
]

CONTEXTS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
DTYPES = ("float32", "bfloat16", "float16")
SPARE_POSITIONS = 64  # cache positions past the context: a generation of 64 more tokens

_OUT_OF_MEMORY = (getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError,)


class SizeRefused(ValueError):
    """A requested size would not fit in free memory or in the live-timing budget."""


def _dtype_name(dtype) -> str:
    """'float32' | 'bfloat16' | 'float16' for that name or torch.dtype; ValueError naming anything else."""
    if isinstance(dtype, torch.dtype):
        for name in DTYPES:
            if parse_dtype(name) == dtype:
                return name
    elif isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    raise ValueError(f"dtype must be one of {DTYPES}; got {dtype!r}")


def _preset(preset) -> ModelPreset:
    """A ModelPreset, or the preset of that name; ValueError naming anything else."""
    if isinstance(preset, ModelPreset):
        return preset
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]
    raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(PRESETS)}")


def _device(device) -> torch.device:
    """pick_device for a CPU or CUDA device; ValueError naming anything else (a string torch cannot parse, 'meta')."""
    try:
        picked = pick_device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None
    if picked.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or a CUDA device; got {device!r}")
    return picked


def _element_size(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def _memory_parts(
    preset: ModelPreset, batch_size: int, context: int, elem: int, spare_positions: int = SPARE_POSITIONS
) -> dict[str, int]:
    """Bytes the MHA-sized timing holds at once, by part: :func:`gqa_lib.speed.gpu_plan.explorer_memory_parts`."""
    return explorer_memory_parts(batch_size, context, elem, preset.n_heads, preset.head_dim, spare_positions)


def _memory_needed(
    preset: ModelPreset, batch_size: int, context: int, elem: int, spare_positions: int = SPARE_POSITIONS
) -> int:
    """Bytes the MHA-sized timing needs at once: the sum of :func:`_memory_parts`."""
    return sum(_memory_parts(preset, batch_size, context, elem, spare_positions).values())


def _decode_inputs(
    preset: ModelPreset, batch_size: int, context: int, dtype: torch.dtype, device: torch.device,
    spare_positions: int = SPARE_POSITIONS, seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, H, 1, D) and one MHA-sized cache K, V (B, H, context + spare_positions, D).

    Built directly in ``dtype`` on ``device`` (a generator on that device, no
    fp32 copy first), so the peak is what :func:`_memory_parts` counts.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    B, H, D = batch_size, preset.n_heads, preset.head_dim
    q = torch.randn(B, H, 1, D, generator=gen, dtype=dtype, device=device)
    cache_shape = (B, H, context + spare_positions, D)  # (B, H, max_len, D)
    k_cache = torch.randn(cache_shape, generator=gen, dtype=dtype, device=device)
    v_cache = torch.randn(cache_shape, generator=gen, dtype=dtype, device=device)
    return q, k_cache, v_cache


def _cache_slice(cache: torch.Tensor, g: int, context: int) -> torch.Tensor:
    """The first ``context`` positions of a G-head cache laid out in the storage of the MHA-sized ``cache``.

    ``cache`` (B, H, max_len, D), contiguous. Its first B*G*max_len*D elements
    are read as a (B, G, max_len, D) cache, the layout of one layer of a
    :class:`~gqa_lib.core.kv_cache.KVCache` with G heads, and sliced to
    (B, G, context, D) as ``KVCache.update`` returns it: a strided view, no copy.
    """
    B, _, max_len, D = cache.shape
    return cache.view(-1)[: B * g * max_len * D].view(B, g, max_len, D)[:, :, :context]


def measure_decode_per_group(
    preset: ModelPreset | str,
    batch_size: int,
    context: int,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    groups: list[int] | None = None,
    repeats: int = 3,
    max_bytes: int | None = None,
    *,
    spare_positions: int = SPARE_POSITIONS,
    num_threads: int | None = None,
) -> dict[int, float]:
    """Milliseconds of one decode step of one attention layer of ``preset``'s shape, for each G.

    ``groups`` (default: every divisor of the preset's H) must each divide H.
    One query token of H heads attends to ``context`` cached positions of G KV
    heads, read as ``generate()`` reads them: the cache holds
    ``context + spare_positions`` positions (room for the tokens still to be
    generated; default 64) and attention reads the slice ``[:, :, :context]``
    of it, a strided view with the strides of one layer of a
    :class:`~gqa_lib.core.kv_cache.KVCache`. K and V are allocated once at MHA size
    (H heads); each G reads a (B, G, max_len, D) cache laid out in the first
    elements of that storage (a view, no copy, no new allocation).

    On a CPU the timing runs on ``num_threads`` threads (default
    ``torch.get_num_threads()``, see :func:`gqa_lib.speed.timing.timing_threads`);
    label results with ``device_name(device, num_threads)``.

    Raises :class:`SizeRefused` (a ValueError) when what the timing holds at
    once (:func:`_memory_parts`: K/V, q, output and fp32 scores) would not fit
    in half of the device's free memory, or exceed ``max_bytes`` (default:
    1.5 GB on CPU, to keep a widget update near a second; none on CUDA), and
    ValueError naming any bad argument.
    """
    preset = _preset(preset)
    batch_size = as_count("batch_size", batch_size)
    context = as_count("context", context)
    torch_dtype = parse_dtype(_dtype_name(dtype))
    device = _device(device)
    repeats = as_count("repeats", repeats)
    spare_positions = as_count("spare_positions", spare_positions, minimum=0)
    threads = timing_threads(num_threads)
    if max_bytes is not None:
        max_bytes = as_count("max_bytes", max_bytes)
    H = preset.n_heads
    if groups is None:
        groups = divisors(H)
    else:
        try:
            groups = list(groups)
        except TypeError:
            raise ValueError(f"groups must be a list of G values; got {groups!r}") from None
        if not groups:
            raise ValueError("groups must name at least one G; got an empty list")
        try:
            groups = [as_kv_heads(H, g, "G") for g in groups]
        except ValueError as error:
            raise ValueError(f"{preset.name}: {error}") from None

    needed = _memory_needed(preset, batch_size, context, _element_size(torch_dtype), spare_positions)
    free = available_memory_bytes(device)
    label = device_name(device, threads)
    if needed > free // 2:
        raise SizeRefused(
            f"batch {batch_size} x context {context} needs {needed / 2**30:.2f} GiB at once for MHA's K/V and scores, "
            f"more than half of the {free / 2**30:.1f} GiB free on {label}"
        )
    if max_bytes is None:
        max_bytes = 1_500_000_000 if device.type == "cpu" else None
    if max_bytes is not None and needed > max_bytes:
        raise SizeRefused(
            f"batch {batch_size} x context {context} needs {needed / 1e9:.2f} GB at once for MHA's K/V and scores: "
            f"too slow to time live on {label} (limit {max_bytes / 1e9:.1f} GB); pick a smaller size"
        )
    ms = {}
    try:
        with torch.no_grad():
            q, k_cache, v_cache = _decode_inputs(preset, batch_size, context, torch_dtype, device, spare_positions)
            for g in groups:
                # a G-head cache (B, G, max_len, D) in the MHA-sized storage, read over Tk=context positions
                k, v = _cache_slice(k_cache, g, context), _cache_slice(v_cache, g, context)  # (B, G, Tk, D)
                ms[g] = quick_time(
                    lambda: grouped_attention(q, k, v, causal=True), repeats=repeats, num_threads=threads
                ).median_ms
            del q, k, v, k_cache, v_cache
    except _OUT_OF_MEMORY as err:
        raise SizeRefused(
            f"batch {batch_size} x context {context} ran out of memory on {label} "
            f"(estimated {needed / 2**30:.2f} GiB at once): {err}"
        ) from None
    return ms


def compare_times(ms: float, reference_ms: float, reference: str) -> str:
    """'4.00x faster than MHA', '2.00x slower than MQA' or 'about as fast as MHA': never '0.50x faster'."""
    if not (ms > 0 and reference_ms > 0):
        raise ValueError(f"times must be positive; got {ms!r} and {reference_ms!r}")
    ratio = reference_ms / ms
    if round(ratio, 2) == 1 or round(1 / ratio, 2) == 1:
        return f"about as fast as {reference}"
    if ratio > 1:
        return f"{ratio:.2f}x faster than {reference}"
    return f"{1 / ratio:.2f}x slower than {reference}"


class DecodeExplorer:
    """Sliders for G, context length, batch size, dtype and model preset; live KV size and decode time.

    ``DecodeExplorer().display()`` shows the widget. The state lives in plain
    attributes (``preset``, ``G``, ``context``, ``batch_size``, ``dtype``)
    that :meth:`set` changes and the sliders drive, so it can be used and
    tested without a front end. Timings per (shape, batch, context, dtype,
    threads) are measured once and remembered: moving only G redraws instantly.

    Each timing is one decode step of one attention layer as ``generate()``
    runs it: the G KV heads are read as the first ``context`` positions of a
    cache with :data:`SPARE_POSITIONS` (64) more positions, a strided slice
    (see :func:`measure_decode_per_group`). On a CPU it runs on
    ``torch.get_num_threads()`` threads, and the figure's title says how many.
    """

    _SETTINGS = ("preset", "G", "context", "batch_size", "dtype")

    def __init__(self, preset: str = "Llama 2 7B", G: int | None = None, context: int = 2048,
                 batch_size: int = 1, dtype: str = "float32", device: str | torch.device | None = None):
        self.device = _device(device)
        self._timings: dict[tuple, dict[int, float]] = {}
        self._controls = None
        self._syncing = False
        self.preset, self.G, self.context, self.batch_size, self.dtype = None, None, None, None, None
        self.kv_figure = None
        self.time_figure = None
        self.message = ""
        self.set(preset=preset, G=G, context=context, batch_size=batch_size, dtype=dtype)

    def _validated(self, changes: dict) -> dict:
        """The state after ``changes``, every value checked; ValueError naming the first bad one."""
        unknown = set(changes) - set(self._SETTINGS)
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {', '.join(self._SETTINGS)}")
        name = changes.get("preset", self.preset)
        p = _preset(name)
        if not isinstance(name, str):  # a ModelPreset: only the book's presets have sliders
            if PRESETS.get(p.name) != p:
                raise ValueError(f"unknown model preset {p.name!r}; known: {', '.join(PRESETS)}")
            name = p.name
        # G follows the model: kept while the model stays, reset to the model's own when it changes
        g = changes.get("G", self.G if name == self.preset else None)
        try:
            g = p.n_kv_heads if g is None else as_kv_heads(p.n_heads, g, "G")
        except ValueError as error:
            raise ValueError(f"{p.name}: {error}") from None
        context = as_count("context", changes.get("context", self.context))
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}; got {context}")
        batch_size = as_count("batch_size", changes.get("batch_size", self.batch_size))
        if batch_size not in BATCHES:
            raise ValueError(f"batch_size must be one of {BATCHES}; got {batch_size}")
        dtype = _dtype_name(changes.get("dtype", self.dtype))
        return {"preset": name, "G": g, "context": context, "batch_size": batch_size, "dtype": dtype}

    def set(self, **changes) -> None:
        """Change any of preset, G, context, batch_size, dtype, then update.

        Every value is checked before anything changes: a bad one raises a
        ValueError naming it and leaves the whole state as it was. Sizes must
        be true integers (``2048``, not ``2048.0`` or ``True``); G must divide
        the preset's H. Changing the preset without giving G resets G to that
        model's own number of KV heads.
        """
        state = self._validated(changes)
        for name, value in state.items():
            setattr(self, name, value)
        self.update()

    @property
    def shape(self) -> ModelPreset:
        return PRESETS[self.preset]

    def timings(self, num_threads: int | None = None) -> dict[int, float]:
        """Measured ms per G for the current settings (cached); raises SizeRefused when refused."""
        p = self.shape
        threads = timing_threads(num_threads)
        key = (p.n_heads, p.head_dim, self.batch_size, self.context, self.dtype, threads)
        if key not in self._timings:
            self._timings[key] = measure_decode_per_group(
                p, self.batch_size, self.context, self.dtype, self.device, num_threads=threads
            )
        return self._timings[key]

    def update(self) -> None:
        """Recompute both figures and the message for the current settings; redraw live widgets if shown."""
        p, g = self.shape, self.G
        elem = _element_size(parse_dtype(self.dtype))
        self.kv_figure = kv_by_group_figure(p, divisors(p.n_heads), self.context, self.batch_size, elem, picked=g)
        threads = timing_threads()
        try:
            ms = self.timings(threads)
        except SizeRefused as refused:
            self.time_figure = None
            self.message = f"Timing refused: {refused}"
        else:
            self.time_figure = time_by_group_figure(
                ms, p.n_heads, device_name(self.device, threads), picked=g,
                what=f"1-layer decode ({p.name} shape)",
            )
            comparisons = [compare_times(ms[g], ms[ref_g], ref) for ref_g, ref in ((p.n_heads, "MHA"), (1, "MQA"))
                           if ref_g != g]
            kind = " (MHA)" if g == p.n_heads else " (MQA)" if g == 1 else ""
            self.message = (
                f"G={g}{kind} of H={p.n_heads}: KV cache {g / p.n_heads:.3g} of MHA's; measured decode step "
                f"{ms[g]:.3g} ms" + (": " + " and ".join(comparisons) if comparisons else "") + "."
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
        # a slider reports its value when released, not at every position it is dragged through:
        # one measurement per move
        slider = dict(style=style, layout=layout, continuous_update=False)
        c = {
            "preset": widgets.Dropdown(options=list(PRESETS), value=self.preset, description="model shape",
                                       style=style, layout=layout),
            "G": widgets.SelectionSlider(options=divisors(self.shape.n_heads), value=self.G,
                                         description="KV heads G", **slider),
            "context": widgets.SelectionSlider(options=CONTEXTS, value=self.context, description="context length",
                                               **slider),
            "batch_size": widgets.SelectionSlider(options=BATCHES, value=self.batch_size, description="batch size",
                                                  **slider),
            "dtype": widgets.Dropdown(options=DTYPES, value=self.dtype, description="dtype", style=style, layout=layout),
        }
        header, status, kv_out, time_out = widgets.HTML(), widgets.HTML(), widgets.Output(), widgets.Output()
        panel = widgets.VBox([header, *c.values(), status, widgets.HBox([kv_out, time_out])])
        self._controls = {**c, "header": header, "status": status, "kv_out": kv_out, "time_out": time_out,
                          "panel": panel}

        def on_change(change, name):
            if not self._syncing:
                self.set(**{name: change["new"]})  # redraws, and the G slider's options follow the model's H

        for name, w in c.items():
            w.observe(lambda change, name=name: on_change(change, name), names="value")
        self._redraw()
        return panel

    def _sync_controls(self) -> None:
        """Make the sliders show the state (after :meth:`set` from code, or a preset change)."""
        c = self._controls
        self._syncing = True
        try:
            c["preset"].value = self.preset
            options = tuple(divisors(self.shape.n_heads))
            if tuple(c["G"].options) != options:
                c["G"].options = options
            for name in ("G", "context", "batch_size", "dtype"):
                c[name].value = getattr(self, name)
        finally:
            self._syncing = False

    def _redraw(self) -> None:
        from IPython.display import clear_output

        c = self._controls
        self._sync_controls()
        where = device_name(self.device, timing_threads())
        c["header"].value = f"<b>Decode explorer</b>: timings measured live on <code>{where}</code>"
        c["status"].value = f"<span>{self.message}</span>"
        with c["kv_out"]:
            clear_output(wait=True)
            show(self.kv_figure)
        with c["time_out"]:
            clear_output(wait=True)
            if self.time_figure is not None:
                show(self.time_figure)

    def display(self) -> None:
        """Show the live widget; on the static book build (GQA_BOOK_STATIC set), a one-line note instead.

        No Python runs on the website, so live sliders would be dead there; the
        page's working sliders are :func:`precomputed_explorer`'s.
        """
        from IPython.display import Markdown, display

        if os.environ.get("GQA_BOOK_STATIC"):
            display(Markdown(
                "*The live explorer measures on the reader's own device, so it runs only in Jupyter or Colab "
                "(the launch buttons at the top of the page open this chapter there); on this page, use the "
                "explorer above, measured when the page was built.*"
            ))
        else:
            display(self.widget())


# -- the precomputed explorer: works on the static website, in Jupyter and on Colab ----------------------------

EXPLORER_MODELS = ("Llama 2 7B", "Qwen2.5 7B", "Llama 2 70B")  # H = 32, 28, 64 query heads, all D = 128
EXPLORER_CONTEXTS = (512, 1024, 2048, 4096)  # on a CPU: the whole measurement in about 15 s on 1 thread


def _explorer_models(models) -> list[ModelPreset]:
    """The presets named by ``models`` (names or ModelPresets), at least one, no repeats; ValueError otherwise."""
    if isinstance(models, (str, ModelPreset)):
        raise ValueError(f"models must be a list of model presets; got the single {models!r}")
    try:
        presets = [_preset(m) for m in models]
    except TypeError:
        raise ValueError(f"models must be a list of model presets; got {models!r}") from None
    if not presets:
        raise ValueError("models must name at least one model preset; got an empty list")
    names = [p.name for p in presets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"models lists {repeated} more than once")
    return presets


def measure_explorer_sweeps(
    models=EXPLORER_MODELS,
    contexts=EXPLORER_CONTEXTS,
    batch_size: int = 1,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    min_run_time: float = 0.04,
    rounds: int = 3,
    num_threads: int | None = 1,
) -> list[dict]:
    """The measurements behind :func:`precomputed_explorer`: one decode sweep per attention shape of ``models``.

    For each distinct (H, D) among the models (two models of one shape share a
    sweep), :func:`gqa_lib.speed.bench.sweep_attention_decode` times one decode step
    of one attention layer, :func:`gqa_lib.grouped_attention` (one query token
    of H heads against ``context`` cached positions of G KV heads, batch
    ``batch_size``), for every G dividing H and every context, ``rounds``
    interleaved rounds each (the best median of each kept: a reading spoiled
    by load elsewhere on the machine in one round is replaced by a better
    one). Returns results in the format of ``python -m
    gqa_lib.speed.bench sweep --json`` (``benchmark``, ``device``, ``settings``,
    ``rows`` with ``context``, ``G``, ``ms`` and ``kv_bytes``), plus ``note``:
    "measured when this chapter ran". Sizes that would not fit in half of the
    device's free memory raise :class:`SizeRefused`.

    On a CPU the timings run on ``num_threads`` threads, by default one
    (``None``: ``torch.get_num_threads()``), and the device name says how
    many. One thread is the robust choice on a shared machine: a busy program
    slows it in proportion, while a multi-threaded kernel stalls on every
    call whose second thread has lost its core (on the book's 2-core build
    machine, whole rows of a 2-thread sweep read ~8 ms instead of 0.1 ms).
    """
    presets = _explorer_models(models)
    try:
        contexts = sorted({as_count("context", c) for c in contexts})
    except TypeError:
        raise ValueError(f"contexts must be a list of token counts; got {contexts!r}") from None
    if not contexts:
        raise ValueError("contexts must name at least one context length; got an empty list")
    batch_size = as_count("batch_size", batch_size)
    name = _dtype_name(dtype)
    device = _device(device)
    elem = _element_size(parse_dtype(name))
    shapes = list(dict.fromkeys((p.n_heads, p.head_dim) for p in presets))
    free = available_memory_bytes(device)
    for H, D in shapes:  # one G at a time at the longest context: q, K, V of MHA size and fp32 scores
        needed = explorer_memory_parts(batch_size, max(contexts), elem, H, D, 0)
        if sum(needed.values()) > free // 2:
            raise SizeRefused(
                f"H={H}, D={D}, batch {batch_size} x context {max(contexts)} needs {sum(needed.values()) / 2**30:.2f} GiB "
                f"at once, more than half of the {free / 2**30:.1f} GiB free on {device_name(device)}"
            )
    threads = timing_threads(num_threads)  # ValueError naming a bad count
    label = device_name(device, threads)
    sweeps = []
    for H, D in shapes:
        rows = sweep_attention_decode(contexts=contexts, batch_size=batch_size, n_heads=H, head_dim=D, dtype=name,
                                      device=device, min_run_time=min_run_time, progress=False, rounds=rounds,
                                      num_threads=threads)
        sweeps.append({
            "benchmark": "sweep", "device": label, "torch": torch.__version__,
            "settings": {"batch": batch_size, "heads": H, "head_dim": D, "dtype": name},
            "rows": rows, "note": "measured when this chapter ran",
        })
    return sweeps


def _sweep_table(sweep, index: int) -> tuple[dict, list[int], dict[tuple[int, int], float]]:
    """(settings, contexts, {(context, G): ms}) of one sweep result, every field checked; ValueError naming it."""
    where = f"sweep {index}"
    if not isinstance(sweep, dict) or not {"device", "settings", "rows"} <= set(sweep):
        raise ValueError(f"{where} must be a gqa_lib.speed.bench sweep result with 'device', 'settings' and 'rows'; "
                         f"got {sweep!r:.200}")
    where = f"sweep {index} ({sweep['device']})"
    s = sweep["settings"]
    if not isinstance(s, dict) or not {"batch", "heads", "head_dim", "dtype"} <= set(s):
        raise ValueError(f"{where}: settings need batch, heads, head_dim and dtype; got {s!r}")
    settings = {"batch": as_count(f"{where} batch", s["batch"]), "heads": as_count(f"{where} heads", s["heads"]),
                "head_dim": as_count(f"{where} head_dim", s["head_dim"]), "dtype": _dtype_name(s["dtype"])}
    table: dict[tuple[int, int], float] = {}
    for row in sweep["rows"]:
        try:
            key = (as_count(f"{where} context", row["context"]), as_count(f"{where} G", row["G"]))
            ms = float(row["ms"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where}: every row needs context, G and ms; got {row!r} ({err})") from None
        if not (ms > 0 and ms < float("inf")):
            raise ValueError(f"{where}: ms must be a positive time; got {row['ms']!r} at context {key[0]}, G={key[1]}")
        if key in table:
            raise ValueError(f"{where}: two rows for context {key[0]}, G={key[1]}")
        table[key] = ms
        if "kv_bytes" in row:
            expected = kv_cache_bytes(1, key[1], settings["head_dim"], key[0], settings["batch"],
                                      _element_size(parse_dtype(settings["dtype"])))
            if row["kv_bytes"] != expected:
                raise ValueError(f"{where}: kv_bytes {row['kv_bytes']} at context {key[0]}, G={key[1]} is not the "
                                 f"{expected} bytes of K and V of that shape")
    contexts = sorted({c for c, _ in table})
    if not contexts:
        raise ValueError(f"{where} has no rows")
    groups = divisors(settings["heads"])
    missing = [(c, g) for c in contexts for g in groups if (c, g) not in table]
    if missing:
        raise ValueError(f"{where}: no time for (context, G) {missing[:5]}; a sweep needs every G dividing "
                         f"H={settings['heads']} at each of its contexts")
    extra = sorted({g for _, g in table if g not in groups})
    if extra:
        raise ValueError(f"{where}: G={extra} do not divide H={settings['heads']}")
    return settings, contexts, table


def decode_explorer_data(sweeps, models=EXPLORER_MODELS) -> dict:
    """Every number the precomputed explorer shows, computed here; the page's script only looks them up.

    ``sweeps``: results of :func:`measure_explorer_sweeps` and
    ``python -m gqa_lib.speed.bench sweep --json`` (e.g. :func:`gqa_lib.speed.bench.reference_results`
    ("sweep")). A sweep serves every model of ``models`` whose (H, D) it was
    measured for; each model needs at least one. Per model and sweep, for
    every context (index ``c``) and G (index ``j``, the divisors of H):

    * ``ms[c][j]``: the measured milliseconds of one decode step of *one*
      attention layer at the sweep's batch and dtype (as measured);
    * ``kvSeq[c][j]``: KV-cache bytes of one sequence of that many tokens,
      all the model's layers, in the sweep's dtype (:meth:`ModelPreset.kv_bytes_per_token`);
    * ``kvStep[c][j]``: K and V bytes the measured step reads (one layer, the sweep's batch).

    Raises ValueError naming a bad sweep (missing fields, a G that does not
    divide H, a missing (context, G), a time that is not positive) or a model
    that no sweep covers.
    """
    presets = _explorer_models(models)
    try:
        sweeps = list(sweeps)
    except TypeError:
        raise ValueError(f"sweeps must be a list of sweep results; got {sweeps!r:.200}") from None
    if not sweeps:
        raise ValueError("decode_explorer_data needs at least one sweep")
    tables = [_sweep_table(s, i) for i, s in enumerate(sweeps)]
    out = []
    for p in presets:
        groups = divisors(p.n_heads)
        entries = []
        for sweep, (settings, contexts, table) in zip(sweeps, tables):
            if (settings["heads"], settings["head_dim"]) != (p.n_heads, p.head_dim):
                continue
            elem = _element_size(parse_dtype(settings["dtype"]))
            note = sweep.get("note") or "committed reference sweep"
            entries.append({
                "device": str(sweep["device"]), "note": str(note), "batch": settings["batch"],
                "dtype": settings["dtype"], "contexts": contexts,
                "ms": [[table[c, g] for g in groups] for c in contexts],
                "kvSeq": [[c * p.kv_bytes_per_token(elem, n_kv_heads=g) for g in groups] for c in contexts],
                "kvStep": [[kv_cache_bytes(1, g, p.head_dim, c, settings["batch"], elem) for g in groups]
                           for c in contexts],
            })
        if not entries:
            shapes = sorted({(t[0]["heads"], t[0]["head_dim"]) for t in tables})
            raise ValueError(f"no sweep measured {p.name}'s shape H={p.n_heads}, D={p.head_dim}; "
                             f"the sweeps have (H, D) {shapes}")
        out.append({"name": p.name, "H": p.n_heads, "G0": p.n_kv_heads, "layers": p.n_layers, "D": p.head_dim,
                    "groups": groups, "sweeps": entries})
    return {"models": out}


_EXPLORER_SCRIPT = r"""
var root = document.getElementById('__ID__');
var D = JSON.parse(root.querySelector('script[data-explorer="data"]').textContent);
function el(name) { return root.querySelector('[data-explorer="' + name + '"]'); }
function fmtMs(ms) { return (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms >= 1 ? ms.toFixed(2) : ms.toFixed(3)) + ' ms'; }
function compare(ms, ref, name) {  // gqa_lib.viz.widgets.compare_times
  var ratio = ref / ms;
  if (Math.round(ratio * 100) === 100 || Math.round(100 / ratio) === 100) return 'about as fast as ' + name;
  return ratio > 1 ? ratio.toFixed(2) + 'x faster than ' + name : (1 / ratio).toFixed(2) + 'x slower than ' + name;
}
function kind(m, g) { return g === m.H ? ' (MHA)' : g === 1 ? ' (MQA)' : ' (GQA-' + g + ')'; }
function shortLabel(m, g) { return g === m.H ? g + ' (MHA)' : g === 1 ? g + ' (MQA)' : String(g); }
function model() { return D.models[+el('model').value]; }
function sweep() { return model().sweeps[+el('device').value]; }
fill(el('model'), D.models.map(function (m) { return m.name + ' (H=' + m.H + ', D=' + m.D + ', ' + m.layers + ' layers)'; }));
function onModel() {
  var m = model(), ctx = +(el('context').dataset.tokens || 0);
  fill(el('device'), m.sweeps.map(function (s) { return s.device + ' (batch ' + s.batch + ', ' + s.dtype + '; ' + s.note + ')'; }));
  el('G').max = m.groups.length - 1; el('G').value = m.groups.indexOf(m.G0);
  onDevice(ctx);
}
function onDevice(ctx) {
  var s = sweep(), keep = s.contexts.indexOf(ctx);
  fill(el('context'), s.contexts.map(function (c) { return c.toLocaleString('en-US') + ' tokens'; }));
  el('context').value = keep >= 0 ? keep : s.contexts.length - 1;
}
function update() {
  var m = model(), s = sweep(), c = +el('context').value, j = +el('G').value, g = m.groups[j];
  var ctx = s.contexts[c], ms = s.ms[c], kv = s.kvSeq[c], iMHA = m.groups.length - 1;  // G = H is the last
  el('context').dataset.tokens = ctx;
  el('G-label').textContent = g + kind(m, g) + (g === m.G0 ? ', as released' : '');
  el('kv-seq').textContent = fmtBytes(kv[j]);
  el('kv-ref').textContent = 'MHA ' + fmtBytes(kv[iMHA]) + ', MQA ' + fmtBytes(kv[0]);
  el('kv-step').textContent = fmtBytes(s.kvStep[c][j]);
  var cmp = [];
  if (g !== m.H) cmp.push(compare(ms[j], ms[iMHA], 'MHA'));
  if (g !== 1) cmp.push(compare(ms[j], ms[0], 'MQA'));
  el('ms').textContent = fmtMs(ms[j]) + (cmp.length ? ': ' + cmp.join(' and ') : '');
  el('ms-ref').textContent = 'MHA ' + fmtMs(ms[iMHA]) + ', MQA ' + fmtMs(ms[0]);
  el('ms-model').textContent = fmtMs(ms[j] * m.layers);
  el('what').textContent = 'Timings: one decode step (1 new token attending to ' + ctx.toLocaleString('en-US') +
    ' cached tokens) of one attention layer of ' + m.name + "'s shape, batch " + s.batch + ', ' + s.dtype +
    ', gqa_lib.grouped_attention on ' + s.device + ' (' + s.note + '). KV cache sizes: one sequence, all ' +
    m.layers + ' layers, ' + s.dtype + '.';
  el('layers').textContent = m.layers;
  el('layers2').textContent = m.layers;
  var xs = m.groups.map(function (q) { return shortLabel(m, q); });
  var colour = m.groups.map(function (q) { return q === g ? '#d62728' : q === m.H ? '#7f7f7f' : q === 1 ? '#2ca02c' : '#9ecae1'; });
  Plotly.react(el('plot'), [
    {type: 'bar', x: xs, y: kv.map(function (b) { return b / 2 ** 30; }), marker: {color: colour},
     name: 'KV cache per sequence (GiB)', xaxis: 'x', yaxis: 'y'},
    {type: 'bar', x: xs, y: ms.slice(), marker: {color: colour}, name: 'measured ms (one layer)', xaxis: 'x2', yaxis: 'y2'}
  ], {
    grid: {rows: 1, columns: 2, pattern: 'independent'}, showlegend: false, height: 360,
    margin: {t: 70, b: 50, l: 60, r: 20},
    title: {text: m.name + ', ' + ctx.toLocaleString('en-US') + '-token context, chosen G = ' + g + ' (red)', font: {size: 13}},
    xaxis: {title: {text: 'KV heads G'}, type: 'category'}, xaxis2: {title: {text: 'KV heads G'}, type: 'category'},
    yaxis: {rangemode: 'tozero'}, yaxis2: {rangemode: 'tozero'},
    annotations: [
      {text: 'KV cache of one sequence, all layers (GiB)', xref: 'x domain', yref: 'y domain', x: 0.5, y: 1.1, showarrow: false},
      {text: 'measured decode step, one layer (ms)', xref: 'x2 domain', yref: 'y2 domain', x: 0.5, y: 1.1, showarrow: false}
    ]
  }, {displaylogo: false, responsive: true});
  root.dataset.state = JSON.stringify({model: m.name, device: s.device, note: s.note, context: ctx, G: g});
}
el('model').addEventListener('change', function () { onModel(); update(); });
el('device').addEventListener('change', function () { onDevice(+el('context').dataset.tokens); update(); });
el('context').addEventListener('change', update);
el('G').addEventListener('input', update);
onModel(); update();
"""

_EXPLORER_FORM = """<div id="{id}" class="gqa-decode-explorer" style="font-size:0.9em">
<script type="application/json" data-explorer="data">{data}</script>
<div style="display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:6px 18px;margin-bottom:8px">
<label>model <select data-explorer="model"></select></label>
<label>measured on <select data-explorer="device"></select></label>
<label>context <select data-explorer="context"></select></label>
<label>KV heads G <input type="range" data-explorer="G" min="0" step="1"> <span data-explorer="G-label"></span></label>
</div>
<table class="gqa-decode-explorer-readout">
<tr><td>KV cache of one sequence (all <span data-explorer="layers"></span> layers)</td><td data-explorer="kv-seq"></td></tr>
<tr><td>&nbsp;&nbsp;for comparison</td><td data-explorer="kv-ref"></td></tr>
<tr><td>K and V one decode step reads in one layer</td><td data-explorer="kv-step"></td></tr>
<tr><td>measured time of that step (one layer's attention)</td><td data-explorer="ms"></td></tr>
<tr><td>&nbsp;&nbsp;for comparison</td><td data-explorer="ms-ref"></td></tr>
<tr><td>scaled to all <span data-explorer="layers2"></span> layers (one layer's time &times; layers; attention only,
no weights)</td><td data-explorer="ms-model"></td></tr>
</table>
<p data-explorer="what" style="font-size:0.9em;margin:4px 0"></p>
<div data-explorer="plot" class="gqa-plotly plotly-graph-div" style="width:100%;height:360px"></div>
</div>"""


def decode_explorer_html(sweeps, models=EXPLORER_MODELS, div_id: str | None = None) -> str:
    """The precomputed explorer as HTML: controls, a read-out table and a plotly figure, drawn by an inline
    script that only looks up :func:`decode_explorer_data` (embedded as JSON in the HTML)."""
    div_id = div_id or f"gqa-explorer-{uuid.uuid4().hex[:12]}"
    data = json.dumps(decode_explorer_data(sweeps, models), separators=(",", ":")).replace("</", "<\\/")
    body = _EXPLORER_SCRIPT.replace("__ID__", div_id)
    return _EXPLORER_FORM.format(id=html.escape(div_id), data=data) + run_with_plotly(FORM_HELPERS_JS + body)


class PrecomputedExplorer:
    """Displays :func:`decode_explorer_html` (the same HTML in Jupyter, on Colab and on the website)."""

    def __init__(self, sweeps, models=EXPLORER_MODELS):
        self.html = decode_explorer_html(sweeps, models)  # checks the input now, not at display time

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self.html,
                "text/plain": "<decode explorer: open in a browser or Jupyter to use the controls>"}


def precomputed_explorer(sweeps, models=EXPLORER_MODELS) -> PrecomputedExplorer:
    """Chapter 5's explorer for the website: G slider, context and model (and device) over measured sweeps."""
    return PrecomputedExplorer(sweeps, models)
