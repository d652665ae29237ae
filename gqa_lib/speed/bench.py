"""Benchmarks of decoding speed: ``python -m gqa_lib.speed.bench attention``.

Each command prints a table of its figures and, with ``--json PATH``, writes
them as JSON with the device name, torch version and settings.
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from ..checks import as_kv_heads, divisors
from ..core.attention import ATTENTION_IMPLEMENTATIONS, repeat_kv
from ..core.kv_cache import kv_cache_bytes
from ..core.model import TransformerConfig, TransformerLM
from ..progress import progress as progress_bar
from .gpu_plan import transformer_parameters
from .timing import (
    available_memory_bytes,
    device_name,
    parse_dtype,
    pick_device,
    streaming_read_bandwidth,
    time_interleaved,
    timing_threads,
)

__all__ = [
    "bench_attention_decode",
    "bench_causal_prefill",
    "bench_model_decode",
    "decode_step_model",
    "divisors",
    "load_results",
    "main",
    "reference_folder",
    "reference_results",
    "sweep_attention_decode",
]


def sdpa_on_repeated_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """PyTorch's fused SDPA after copying K/V up to H heads: Hugging Face's path when it does not pass ``enable_gqa``.

    Same contract as :func:`gqa_lib.grouped_attention` for decoding (Tq = 1);
    a competitor for the benchmark, not part of the library.
    """
    if q.shape[2] != 1:
        raise ValueError(f"sdpa_on_repeated_kv is a decode-step competitor (Tq = 1); got Tq={q.shape[2]}")
    n_rep = q.shape[1] // k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep))


BENCH_IMPLEMENTATIONS = {**ATTENTION_IMPLEMENTATIONS, "sdpa_repeat_kv": sdpa_on_repeated_kv}
DEFAULT_ATTENTION_IMPLS = ["grouped", "grouped_matmul", "sdpa", "sdpa_repeat_kv"]


def bench_attention_decode(
    batch_size: int = 4,
    n_heads: int = 32,
    head_dim: int = 128,
    context: int = 2048,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    groups: list[int] | None = None,
    implementations: list[str] | None = None,
    min_run_time: float = 0.3,
    seed: int = 0,
    rounds: int = 2,
    spare_positions: int = 0,
    num_threads: int | None = None,
) -> list[dict]:
    """Time one decode step of attention (Tq = 1 against ``context`` cached keys).

    ``num_threads``: CPU threads the timings run on (default ``torch.get_num_threads()``).

    With ``spare_positions > 0``, K and V are the first ``context`` positions
    of buffers ``context + spare_positions`` long: the strided slice of a
    preallocated cache that :meth:`TransformerLM.generate` reads (it
    allocates for the prompt and every new token).

    For every G in ``groups`` (default: every divisor of ``n_heads``) and
    every implementation, returns a row with ``ms`` (median milliseconds per
    call) and ``kv_gbps``: the bytes of K and V the step must read (G heads)
    divided by the time, in GB/s (1e9 bytes per second). Settings are timed
    in turn ``rounds`` times; each row keeps its best median. Implementations:
    :data:`BENCH_IMPLEMENTATIONS` (default :data:`DEFAULT_ATTENTION_IMPLS`).
    """
    device = pick_device(device)
    dtype = parse_dtype(dtype)
    groups = divisors(n_heads) if groups is None else groups
    implementations = list(DEFAULT_ATTENTION_IMPLS) if implementations is None else implementations
    _check_groups_and_impls(n_heads, groups, implementations)
    elem = torch.empty((), dtype=dtype).element_size()
    length = context + spare_positions
    all_inputs_bytes = sum(batch_size * (n_heads + 2 * g * length) * head_dim * elem for g in groups)
    # Interleave every (G, implementation) when all inputs fit in half the free memory (a burst of load
    # then hits every setting alike); otherwise build, time and free one G at a time (a GPU's memory).
    batches = [list(groups)] if all_inputs_bytes <= available_memory_bytes(device) // 2 else [[g] for g in groups]
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for batch in batches:
        inputs = {}
        for g in batch:
            q = _random((batch_size, n_heads, 1, head_dim), gen, dtype, device)  # (B, H, 1, D)
            k = _random((batch_size, g, length, head_dim), gen, dtype, device)  # (B, G, Tk + spare, D)
            v = _random((batch_size, g, length, head_dim), gen, dtype, device)
            inputs[g] = (q, k[:, :, :context], v[:, :, :context])  # (B, G, Tk, D), strided when spare > 0
        calls = {
            (g, name): functools.partial(BENCH_IMPLEMENTATIONS[name], *inputs[g], causal=True)
            for g in batch
            for name in implementations
        }
        with torch.no_grad():
            best = time_interleaved(calls, rounds=rounds, min_run_time=min_run_time, num_threads=num_threads)
        for g, (q, k, v) in inputs.items():
            kv_bytes = 2 * k.numel() * k.element_size()  # the Tk positions read, not the spare ones
            for name in implementations:
                t = best[g, name]
                rows.append(_timing_row(g, name, t, kv_bytes=kv_bytes, kv_gbps=kv_bytes / t.median_s / 1e9))
        del inputs, calls
        _release_memory(device)
    return rows


def _timing_row(g: int, impl: str, timing, **extra) -> dict:
    """One result row: ``G``, ``impl``, median ``ms`` and ``iqr_ms`` of ``timing``, then ``extra`` fields."""
    return {"G": g, "impl": impl, "ms": timing.median_ms, "iqr_ms": timing.iqr_s * 1e3, **extra}


def _random(shape: tuple, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Standard-normal values drawn directly in ``dtype`` on ``device`` (no full-size fp32 temporary)."""
    return torch.randn(shape, generator=gen, dtype=dtype, device=device)


def _release_memory(device: torch.device) -> None:
    """Hand freed blocks back to the device (CUDA's caching allocator keeps them otherwise)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_causal_prefill(
    batch_size: int = 4,
    n_heads: int = 16,
    head_dim: int = 64,
    length: int = 1024,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    groups: list[int] | None = None,
    min_run_time: float = 0.3,
    rounds: int = 2,
    seed: int = 0,
) -> list[dict]:
    """Time causal attention over a whole prompt (Tq = Tk = ``length``), three ways, for every G.

    The candidates for :func:`gqa_lib.grouped_attention`'s prefill path:
    ``sdpa_is_causal`` (``is_causal=True, enable_gqa=True``, what the library
    runs), ``folded_row_mask`` (groups folded into the rows as for decoding,
    with a (R*T, T) causal mask repeated per head) and ``repeat_kv_is_causal``
    (K/V copied to H heads, then ``is_causal``). Rows: G, impl, ms.
    """
    device = pick_device(device)
    dtype = parse_dtype(dtype)
    groups = [g for g in divisors(n_heads) if g in (1, 4, n_heads)] if groups is None else groups
    _check_groups_and_impls(n_heads, groups, [])
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gen = torch.Generator(device="cpu").manual_seed(seed)
    calls = {}
    for g in groups:
        r = n_heads // g
        q = torch.randn(batch_size, n_heads, length, head_dim, generator=gen).to(device, dtype)  # (B, H, T, D)
        k = torch.randn(batch_size, g, length, head_dim, generator=gen).to(device, dtype)  # (B, G, T, D)
        v = torch.randn(batch_size, g, length, head_dim, generator=gen).to(device, dtype)
        row_mask = torch.ones(length, length, dtype=torch.bool, device=device).tril().repeat(r, 1)  # (R*T, T)
        q_folded = q.reshape(batch_size, g, r * length, head_dim)  # (B, H, T, D) -> (B, G, R*T, D)
        calls[g, "sdpa_is_causal"] = functools.partial(sdpa, q, k, v, is_causal=True, enable_gqa=g != n_heads)
        calls[g, "folded_row_mask"] = functools.partial(sdpa, q_folded, k, v, attn_mask=row_mask)
        calls[g, "repeat_kv_is_causal"] = (
            lambda q=q, k=k, v=v, r=r: sdpa(q, repeat_kv(k, r), repeat_kv(v, r), is_causal=True)
        )
    with torch.no_grad():
        best = time_interleaved(calls, rounds=rounds, min_run_time=min_run_time)
    return [{"G": g, "impl": impl, "ms": t.median_ms, "iqr_ms": t.iqr_s * 1e3} for (g, impl), t in best.items()]


def _check_groups_and_impls(n_heads: int, groups: list[int], implementations: list[str]) -> None:
    for g in groups:
        as_kv_heads(n_heads, g, "G")
    for name in implementations:
        if name not in BENCH_IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {name!r}; choose from {sorted(BENCH_IMPLEMENTATIONS)}")


def decode_step_model(
    config: TransformerConfig, batch_size: int, context: int, dtype, device, seed: int = 0, new_tokens: int = 64
):
    """A model and a closure that runs one decoding step with ``context`` positions already cached.

    The cache is allocated as :meth:`TransformerLM.generate` allocates it,
    for the prompt plus ``new_tokens`` generated tokens, so attention reads a
    strided slice of it, exactly as in a real generation. It is filled with
    random keys/values (as if a prompt had been prefilled) and rewound after
    every step, so each call decodes token ``context + 1`` of every sequence:
    the per-token work of ``generate``. Returns (model, cache, step).
    """
    torch.manual_seed(seed)
    model = TransformerLM(config).to(device=device, dtype=dtype).eval()
    cache = model.new_cache(batch_size, context + new_tokens)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for store in (cache.keys, cache.values):
        for layer in range(config.n_layers):  # one layer at a time: no full-size fp32 temporary
            filled = store[layer, :, :, :context]  # (B, G, context, D)
            filled.copy_(torch.randn(filled.shape, generator=gen))
    cache.lengths = [context] * config.n_layers
    token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)

    def step():
        cache.truncate(context)  # rewind to the prompt
        with torch.no_grad():
            return model(token, cache=cache)

    return model, cache, step


def bench_model_decode(
    n_heads: int = 32,
    d_model: int = 2048,
    n_layers: int = 2,
    d_ff: int = 2048,
    vocab_size: int = 256,
    batch_size: int = 8,
    context: int = 4096,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    groups: list[int] | None = None,
    implementations: list[str] | None = None,
    min_run_time: float = 0.3,
    seed: int = 0,
    rounds: int = 3,
) -> list[dict]:
    """Time one token of generation of a whole :class:`TransformerLM`, for every G.

    Each row has ``ms`` (median milliseconds per decoding step, which makes
    ``batch_size`` tokens), ``tokens_per_s``, and the bytes one step must
    read: ``weight_bytes`` (all parameters) and ``kv_bytes`` (the cache of
    ``context`` positions, all layers). Settings are timed in turn ``rounds``
    times and each row keeps its best median: all of them interleaved when
    every model and cache fits in half the free memory, else one G at a time
    (what :mod:`gqa_lib.speed.gpu_plan` assumes on a GPU).
    """
    device = pick_device(device)
    dtype = parse_dtype(dtype)
    groups = divisors(n_heads) if groups is None else groups
    implementations = ["grouped"] if implementations is None else implementations
    _check_groups_and_impls(n_heads, groups, implementations)
    elem = torch.empty((), dtype=dtype).element_size()
    new_tokens = 64
    all_bytes = len(implementations) * sum(
        transformer_parameters(vocab_size, d_model, n_layers, n_heads, g, d_ff) * elem
        + kv_cache_bytes(n_layers, g, d_model // n_heads, context + new_tokens, batch_size, elem)
        for g in groups
    )
    # Interleave every setting when all models and caches fit in half the free memory; otherwise
    # build, time and free one G at a time (its implementations interleaved), as a GPU needs.
    batches = [list(groups)] if all_bytes <= available_memory_bytes(device) // 2 else [[g] for g in groups]
    rows = []
    for batch in batches:
        setups = []
        for g in batch:
            for name in implementations:
                config = TransformerConfig(
                    vocab_size=vocab_size, max_seq_len=context + new_tokens, d_model=d_model, n_layers=n_layers,
                    n_heads=n_heads, n_kv_heads=g, d_ff=d_ff, attn_impl=name,
                )
                setups.append((g, name, *decode_step_model(config, batch_size, context, dtype, device, seed,
                                                           new_tokens)))
        best = time_interleaved({(g, name): step for g, name, _m, _c, step in setups}, rounds, min_run_time)
        for g, name, model, cache, _step in setups:
            t = best[g, name]
            rows.append(_timing_row(
                g, name, t, tokens_per_s=batch_size / t.median_s, weight_bytes=model.num_parameters() * elem,
                kv_bytes=cache.nbytes * context // cache.max_len,  # the filled part, read each step
            ))
        del setups
        _release_memory(device)
    return rows


def sweep_attention_decode(
    contexts: list[int] = (256, 512, 1024, 2048, 4096),
    batch_size: int = 4,
    n_heads: int = 32,
    head_dim: int = 128,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    groups: list[int] | None = None,
    min_run_time: float = 0.1,
    progress: bool = True,
    rounds: int = 2,
    num_threads: int | None = None,
) -> list[dict]:
    """Decode-step time of :func:`grouped_attention` for every (context, G): the data behind the static sliders.

    Rows have ``context``, ``G``, ``ms`` (median milliseconds per call) and
    ``kv_bytes`` (the K and V bytes one call reads). Each context times its
    G values interleaved, ``rounds`` times, keeping each G's best median
    (:func:`bench_attention_decode`): more rounds, fewer readings spoiled by
    load elsewhere on the machine. ``num_threads``: CPU threads the timings run on.
    """
    rows = []
    for context in progress_bar(list(contexts), "context lengths", enabled=progress):
        for r in bench_attention_decode(
            batch_size=batch_size, n_heads=n_heads, head_dim=head_dim, context=context, dtype=dtype,
            device=device, groups=groups, implementations=["grouped"], min_run_time=min_run_time, rounds=rounds,
            num_threads=num_threads,
        ):
            rows.append({"context": context, "G": r["G"], "ms": r["ms"], "kv_bytes": r["kv_bytes"]})
    return rows


def load_results(folder: str | Path, benchmark: str | None = None) -> list[dict]:
    """Every JSON result written by ``python -m gqa_lib.speed.bench ... --json`` in ``folder``, sorted by file name.

    ``benchmark`` keeps only results of that command ("attention", "model", "sweep").
    A file that is not such a result raises ValueError naming it.
    """
    results = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not {"benchmark", "device", "rows"} <= set(data):
            raise ValueError(f"{path} is not a gqa_lib.speed.bench result (needs 'benchmark', 'device', 'rows')")
        if benchmark is None or data["benchmark"] == benchmark:
            results.append(data)
    return results


def reference_folder():
    """The folder of committed benchmark results shipped with gqa_lib: ``gqa_lib/data/benchmarks/``.

    A :class:`importlib.resources.abc.Traversable` (a :class:`~pathlib.Path`
    for an ordinary install or a checkout). Files get there by running, on the
    machine to record, ``python -m gqa_lib.speed.bench sweep --device cuda --json
    gqa_lib/data/benchmarks/<gpu-name>.json`` in a checkout and committing the
    file; ``pip install`` ships every ``*.json`` in it (package data).
    """
    return importlib.resources.files("gqa_lib").joinpath("data", "benchmarks")


def reference_results(benchmark: str | None = None) -> list[dict]:
    """The benchmark results committed to gqa_lib (:func:`reference_folder`), sorted by file name.

    ``benchmark`` keeps only results of that command (e.g. "sweep"), as in
    :func:`load_results`, which reads them (a file that is not a result raises
    ValueError naming it). An empty list when none are shipped.
    """
    folder = reference_folder()
    if not folder.is_dir():
        return []
    if isinstance(folder, (str, os.PathLike)):
        return load_results(folder, benchmark)
    # gqa_lib imported from a zip or similar: copy the JSON files out, then read them alike
    with tempfile.TemporaryDirectory() as tmp:
        for entry in folder.iterdir():
            if entry.is_file() and entry.name.endswith(".json"):
                with entry.open("rb") as src, open(Path(tmp) / entry.name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        return load_results(tmp, benchmark)


def _environment(device: torch.device) -> dict:
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__}


def _print_attention_table(rows: list[dict], bandwidth_gbps: float, out=None) -> None:
    out = sys.stdout if out is None else out
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    by_key = {(r["G"], r["impl"]): r for r in rows}
    header = f"{'G':>4} {'KV MB':>8} " + " ".join(f"{name + ' ms':>20} {'GB/s':>6}" for name in impls)
    print(header, file=out)
    for g in dict.fromkeys(r["G"] for r in rows):
        cells = []
        for name in impls:
            r = by_key[(g, name)]
            cells.append(f"{r['ms']:>20.3f} {r['kv_gbps']:>6.1f}")
        print(f"{g:>4} {by_key[(g, impls[0])]['kv_bytes'] / 1e6:>8.1f} " + " ".join(cells), file=out)
    print(f"streaming-read bandwidth of this device (same thread count): {bandwidth_gbps:.1f} GB/s", file=out)


def attention_targets(rows: list[dict], bandwidth_gbps: float) -> dict:
    """The figures the core is held to, from one (dtype, context) table of :func:`bench_attention_decode`.

    ``ratio_to_best_sdpa[G]``: grouped's time over the faster of SDPA with
    ``enable_gqa`` and SDPA on repeated K/V (target <= 1.05);
    ``mha_over_quarter``: t(G=H) / t(G=H/4) of grouped (target >= 3 in bf16 for H = 32);
    ``share_of_bandwidth``: grouped's K/V GB/s at G = H over the streaming-read
    bandwidth measured on the same threads (target >= 0.7). Missing rows give None.
    """
    by = {(r["G"], r["impl"]): r for r in rows}
    groups = sorted({r["G"] for r in rows})
    mha = max(groups)
    ratios = {}
    for g in groups:
        peers = [by[g, name]["ms"] for name in ("sdpa", "sdpa_repeat_kv") if (g, name) in by]
        if (g, "grouped") in by and peers:
            ratios[g] = by[g, "grouped"]["ms"] / min(peers)
    quarter = mha // 4
    mha_over_quarter = None
    if (mha, "grouped") in by and (quarter, "grouped") in by:
        mha_over_quarter = by[mha, "grouped"]["ms"] / by[quarter, "grouped"]["ms"]
    share = by[mha, "grouped"]["kv_gbps"] / bandwidth_gbps if (mha, "grouped") in by else None
    return {"ratio_to_best_sdpa": ratios, "mha_over_quarter": mha_over_quarter, "share_of_bandwidth": share}


def _print_attention_targets(targets: dict, n_heads: int, out=None) -> None:
    out = sys.stdout if out is None else out
    ratios = targets["ratio_to_best_sdpa"]
    if ratios:
        worst = max(ratios, key=ratios.get)
        cells = " ".join(f"G={g}:{r:.2f}" for g, r in ratios.items())
        print(f"grouped / fastest SDPA path: {cells} (worst {ratios[worst]:.2f} at G={worst}; target <= 1.05)",
              file=out)
    if targets["mha_over_quarter"] is not None:
        print(f"grouped t(G={n_heads}) / t(G={n_heads // 4}): {targets['mha_over_quarter']:.2f}x", file=out)
    if targets["share_of_bandwidth"] is not None:
        print(f"grouped at G={n_heads} reads K/V at {targets['share_of_bandwidth']:.0%} of the streaming-read "
              f"bandwidth (target >= 70%)", file=out)


def _cmd_attention(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    if args.spare_positions < 0:
        args.parser.error(f"--spare-positions must be >= 0; got {args.spare_positions}")
    groups, contexts, dtypes = args.groups, args.context, args.dtype
    impls = args.impls.split(",")
    threads = timing_threads()
    # measured before every table; the best reading stands for the machine (load only lowers it)
    bandwidth = 0.0
    tables = []
    for dtype in dtypes:
        for context in contexts:
            bandwidth = max(bandwidth, streaming_read_bandwidth(device, num_threads=threads) / 1e9)
            layout = f", K/V a slice of {context + args.spare_positions} positions" if args.spare_positions else ""
            print(f"\ndecode-step attention: B={args.batch} H={args.heads} D={args.head_dim} Tk={context}{layout} "
                  f"{dtype} on {device_name(device)}")
            rows = bench_attention_decode(
                batch_size=args.batch, n_heads=args.heads, head_dim=args.head_dim, context=context, dtype=dtype,
                device=device, groups=groups, implementations=impls, min_run_time=args.min_run_time,
                rounds=args.rounds, spare_positions=args.spare_positions,
            )
            bandwidth = max(bandwidth, streaming_read_bandwidth(device, num_threads=threads) / 1e9)
            _print_attention_table(rows, bandwidth)
            tables.append({"dtype": dtype, "context": context, "rows": rows})
            _print_attention_targets(attention_targets(rows, bandwidth), args.heads)
    for table in tables:  # against the best bandwidth reading of the whole run
        table["targets"] = attention_targets(table["rows"], bandwidth)
    if len(tables) > 1:
        print(f"\nbest streaming-read bandwidth over the run: {bandwidth:.1f} GB/s; share at G={args.heads}: "
              + ", ".join(f"{t['dtype']} Tk={t['context']}: {t['targets']['share_of_bandwidth']:.0%}" for t in tables))
    settings = {k: getattr(args, k) for k in ("batch", "heads", "head_dim")}
    settings.update(contexts=contexts, dtypes=dtypes, threads=threads, rounds=args.rounds,
                    spare_positions=args.spare_positions)
    # the first table's rows also sit at the top level, the shape `load_results` readers expect
    return {"benchmark": "attention", **_environment(device), "settings": settings,
            "streaming_read_gbps": bandwidth, "rows": tables[0]["rows"], "tables": tables}


def _print_model_table(rows: list[dict], out=None) -> None:
    out = sys.stdout if out is None else out
    print(f"{'G':>4} {'impl':>10} {'ms/step':>9} {'tokens/s':>9} {'weights MB':>11} {'KV MB':>8}", file=out)
    for r in rows:
        print(
            f"{r['G']:>4} {r['impl']:>10} {r['ms']:>9.2f} {r['tokens_per_s']:>9.1f} "
            f"{r['weight_bytes'] / 1e6:>11.1f} {r['kv_bytes'] / 1e6:>8.1f}",
            file=out,
        )
    by = {(r["G"], r["impl"]): r["ms"] for r in rows}
    groups = sorted({r["G"] for r in rows})
    mha, mqa = max(groups), min(groups)
    for impl in dict.fromkeys(r["impl"] for r in rows):
        for g in groups:
            if g in (mha, mqa) or (mha, impl) not in by or (mqa, impl) not in by or (g, impl) not in by:
                continue
            t_mha, t_g, t_mqa = by[(mha, impl)], by[(g, impl)], by[(mqa, impl)]
            kept = (t_mha - t_g) / (t_mha - t_mqa) if t_mha != t_mqa else float("nan")
            print(
                f"{impl}: G={g} is {t_mha / t_g:.2f}x faster than MHA (G={mha}); "
                f"keeps {kept:.3f} of MQA's saving (t_MHA - t_G) / (t_MHA - t_MQA)",
                file=out,
            )


def _cmd_model(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    groups = args.groups
    impls = args.impls.split(",")
    print(
        f"whole-model decode step: H={args.heads} d_model={args.d_model} layers={args.layers} d_ff={args.d_ff} "
        f"B={args.batch} context={args.context} {args.dtype} on {device_name(device)}"
    )
    rows = bench_model_decode(
        n_heads=args.heads, d_model=args.d_model, n_layers=args.layers, d_ff=args.d_ff, batch_size=args.batch,
        context=args.context, dtype=args.dtype, device=device, groups=groups, implementations=impls,
        min_run_time=args.min_run_time,
    )
    _print_model_table(rows)
    settings = {k: getattr(args, k) for k in ("heads", "d_model", "layers", "d_ff", "batch", "context", "dtype")}
    return {"benchmark": "model", **_environment(device), "settings": settings, "rows": rows}


def _cmd_sweep(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    contexts = args.contexts
    print(f"decode-attention sweep: B={args.batch} H={args.heads} D={args.head_dim} {args.dtype} on {device_name(device)}")
    rows = sweep_attention_decode(
        contexts=contexts, batch_size=args.batch, n_heads=args.heads, head_dim=args.head_dim, dtype=args.dtype,
        device=device, min_run_time=args.min_run_time,
    )
    print(f"{'context':>8} {'G':>4} {'ms':>9} {'KV MB':>8}")
    for r in rows:
        print(f"{r['context']:>8} {r['G']:>4} {r['ms']:>9.3f} {r['kv_bytes'] / 1e6:>8.1f}")
    settings = {k: getattr(args, k) for k in ("batch", "heads", "head_dim", "dtype")}
    return {"benchmark": "sweep", **_environment(device), "settings": settings, "rows": rows}


def _cmd_prefill_kernels(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    groups = args.groups
    print(f"causal prefill attention: B={args.batch} H={args.heads} D={args.head_dim} T={args.length} "
          f"{args.dtype} on {device_name(device)}; ms per call")
    rows = bench_causal_prefill(
        batch_size=args.batch, n_heads=args.heads, head_dim=args.head_dim, length=args.length, dtype=args.dtype,
        device=device, groups=groups, min_run_time=args.min_run_time, rounds=args.rounds,
    )
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    by = {(r["G"], r["impl"]): r["ms"] for r in rows}
    print(f"{'G':>4} " + " ".join(f"{name:>20}" for name in impls))
    for g in dict.fromkeys(r["G"] for r in rows):
        print(f"{g:>4} " + " ".join(f"{by[g, name]:>20.2f}" for name in impls))
    settings = {k: getattr(args, k) for k in ("batch", "heads", "head_dim", "length", "dtype")}
    return {"benchmark": "prefill-kernels", **_environment(device), "settings": settings, "rows": rows}


def _cmd_bandwidth(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    gbps = streaming_read_bandwidth(device, num_threads=timing_threads()) / 1e9
    print(f"streaming-read bandwidth of {device_name(device)}: {gbps:.1f} GB/s")
    return {"benchmark": "bandwidth", **_environment(device), "settings": {}, "rows": [{"gbps": gbps}]}


def _positive(text: str, convert, kind: str):
    """``convert(text)`` if it is finite and > 0, else an argparse usage error naming the text."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive {kind}; got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _positive(text, int, "integer")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _positive(text, float, "number")


def positive_int_list(text: str) -> list[int]:
    """argparse type: '1,4,32' -> [1, 4, 32], each an integer >= 1."""
    return [_positive(part, int, "integer") for part in str(text).split(",")]


def dtype_list(text: str) -> list[str]:
    """argparse type: 'float32,bfloat16' -> ['float32', 'bfloat16'], each a name :func:`parse_dtype` accepts."""
    names = str(text).split(",")
    for name in names:
        try:
            parse_dtype(name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return names


def _add_common(p: argparse.ArgumentParser, dtype: str | None = "float32", dtypes: str | None = None) -> None:
    """--device, --json, --overwrite; and --dtype: one name (default ``dtype``) or, with ``dtypes``, a list."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="cpu, cuda or auto (CUDA when present)")
    if dtypes is not None:
        p.add_argument("--dtype", type=dtype_list, default=dtypes, help="comma-separated: float32, float16, bfloat16")
    elif dtype is not None:
        p.add_argument("--dtype", default=dtype, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gqa_lib.speed.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    att = sub.add_parser("attention", help="time one decode step of attention for every G, dtype and context")
    att.add_argument("--batch", type=positive_int, default=4)
    att.add_argument("--heads", type=positive_int, default=32, help="query heads H")
    att.add_argument("--head-dim", type=positive_int, default=128)
    att.add_argument("--context", type=positive_int_list, default="2048,8192", help="comma-separated cached positions Tk")
    att.add_argument("--groups", type=positive_int_list, default=None,
                     help="comma-separated G values (default: every divisor of H)")
    att.add_argument("--impls", default=",".join(DEFAULT_ATTENTION_IMPLS),
                     help=f"comma-separated, from {', '.join(BENCH_IMPLEMENTATIONS)}")
    att.add_argument("--min-run-time", type=positive_float, default=0.3, help="seconds of measuring per figure")
    att.add_argument("--rounds", type=positive_int, default=3, help="interleaved timing rounds (best median kept)")
    att.add_argument("--spare-positions", type=int, default=0,
                     help="read K/V as the first Tk positions of a cache this much longer (what generate() reads)")
    _add_common(att, dtypes="float32,bfloat16")
    att.set_defaults(run=_cmd_attention)

    mod = sub.add_parser("model", help="time one token of generation of a whole TransformerLM for every G")
    mod.add_argument("--heads", type=positive_int, default=32, help="query heads H")
    mod.add_argument("--d-model", type=positive_int, default=2048)
    mod.add_argument("--layers", type=positive_int, default=2)
    mod.add_argument("--d-ff", type=positive_int, default=2048)
    mod.add_argument("--batch", type=positive_int, default=8)
    mod.add_argument("--context", type=positive_int, default=8192, help="cached positions before the step")
    mod.add_argument("--groups", type=positive_int_list, default="1,4,32", help="comma-separated G values")
    mod.add_argument("--impls", default="grouped,sdpa,repeat_kv", help="attention implementations")
    mod.add_argument("--min-run-time", type=positive_float, default=0.5)
    _add_common(mod, dtype="bfloat16")
    # bf16, as models are deployed
    mod.set_defaults(run=_cmd_model)

    swp = sub.add_parser("sweep", help="decode-attention time for every (context, G): data for the book's sliders")
    swp.add_argument("--contexts", type=positive_int_list, default="256,512,1024,2048,4096,8192")
    swp.add_argument("--batch", type=positive_int, default=4)
    swp.add_argument("--heads", type=positive_int, default=32)
    swp.add_argument("--head-dim", type=positive_int, default=128)
    swp.add_argument("--min-run-time", type=positive_float, default=0.2)
    _add_common(swp)
    swp.set_defaults(run=_cmd_sweep)

    pk = sub.add_parser("prefill-kernels", help="causal prefill attention: the candidate kernels for every G")
    pk.add_argument("--batch", type=positive_int, default=4)
    pk.add_argument("--heads", type=positive_int, default=16, help="query heads H")
    pk.add_argument("--head-dim", type=positive_int, default=64)
    pk.add_argument("--length", type=positive_int, default=1024, help="prompt length T (Tq = Tk)")
    pk.add_argument("--groups", type=positive_int_list, default=None, help="comma-separated G values (default: 1, 4 and H)")
    pk.add_argument("--min-run-time", type=positive_float, default=0.3)
    pk.add_argument("--rounds", type=positive_int, default=2)
    _add_common(pk)
    pk.set_defaults(run=_cmd_prefill_kernels)

    bw = sub.add_parser("bandwidth", help="measured streaming-read bandwidth of the device")
    _add_common(bw, dtype=None)
    bw.set_defaults(run=_cmd_bandwidth)

    from .peers import add_peer_commands  # `peers` and `prefill`: gqa_lib against Hugging Face transformers

    add_peer_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run one benchmark command; bad arguments end with a usage error (exit status 2), not a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.parser = parser
    if args.json is not None and args.json.is_dir():
        parser.error(f"--json names a folder, not a file: {args.json}")
    if args.json is not None and args.json.exists() and not args.overwrite:
        parser.error(f"{args.json} exists; pass --overwrite to replace it")
    try:
        result = args.run(args)
    except ValueError as error:  # e.g. a G that does not divide H, CUDA asked for but absent
        parser.error(str(error))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
