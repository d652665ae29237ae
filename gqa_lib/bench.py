"""Benchmarks of decoding speed: ``python -m gqa_lib.bench attention``.

Each command prints a table of its figures and, with ``--json PATH``, writes
them as JSON with the device name, torch version and settings.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

from .attention import ATTENTION_IMPLEMENTATIONS
from .model import TransformerConfig, TransformerLM
from .progress import progress as progress_bar
from .timing import device_name, parse_dtype, pick_device, streaming_read_bandwidth, time_interleaved

__all__ = [
    "bench_attention_decode",
    "bench_model_decode",
    "decode_step_model",
    "divisors",
    "load_results",
    "main",
    "sweep_attention_decode",
]


def divisors(n: int) -> list[int]:
    """All G with n % G == 0, ascending: the valid KV-head counts for n query heads."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    return [g for g in range(1, n + 1) if n % g == 0]


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
) -> list[dict]:
    """Time one decode step of attention (Tq = 1 against ``context`` cached keys).

    For every G in ``groups`` (default: every divisor of ``n_heads``) and
    every implementation, returns a row with ``ms`` (median milliseconds per
    call) and ``kv_gbps``: the bytes of K and V the step must read (G heads)
    divided by the time, in GB/s (1e9 bytes per second). Settings are timed
    in turn ``rounds`` times; each row keeps its best median.
    """
    device = pick_device(device)
    dtype = parse_dtype(dtype)
    groups = divisors(n_heads) if groups is None else groups
    implementations = list(ATTENTION_IMPLEMENTATIONS) if implementations is None else implementations
    _check_groups_and_impls(n_heads, groups, implementations)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    inputs = {}
    for g in groups:
        q = torch.randn(batch_size, n_heads, 1, head_dim, generator=gen).to(device, dtype)  # (B, H, 1, D)
        k = torch.randn(batch_size, g, context, head_dim, generator=gen).to(device, dtype)  # (B, G, Tk, D)
        v = torch.randn(batch_size, g, context, head_dim, generator=gen).to(device, dtype)  # (B, G, Tk, D)
        inputs[g] = (q, k, v)
    calls = {
        (g, name): functools.partial(ATTENTION_IMPLEMENTATIONS[name], *inputs[g], causal=True)
        for g in groups
        for name in implementations
    }
    with torch.no_grad():
        best = time_interleaved(calls, rounds=rounds, min_run_time=min_run_time)
    rows = []
    for g, (q, k, v) in inputs.items():
        kv_bytes = k.nbytes + v.nbytes
        for name in implementations:
            t = best[g, name]
            rows.append(
                {
                    "G": g,
                    "impl": name,
                    "ms": t.median_ms,
                    "iqr_ms": t.iqr_s * 1e3,
                    "kv_bytes": kv_bytes,
                    "kv_gbps": kv_bytes / t.median_s / 1e9,
                }
            )
    return rows


def _check_groups_and_impls(n_heads: int, groups: list[int], implementations: list[str]) -> None:
    for g in groups:
        if g < 1 or n_heads % g:
            raise ValueError(f"each G must divide n_heads={n_heads}; got G={g}")
    for name in implementations:
        if name not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {name!r}; choose from {sorted(ATTENTION_IMPLEMENTATIONS)}")


def decode_step_model(config: TransformerConfig, batch_size: int, context: int, dtype, device, seed: int = 0):
    """A model and a closure that runs one decoding step with ``context`` positions already cached.

    The cache is filled with random keys/values (as if a prompt had been
    prefilled) and rewound after every step, so each call decodes token
    ``context + 1`` of every sequence: exactly the per-token work of
    :meth:`TransformerLM.generate`. Returns (model, cache, step).
    """
    torch.manual_seed(seed)
    model = TransformerLM(config).to(device=device, dtype=dtype).eval()
    cache = model.new_cache(batch_size, context + 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cache.keys[:, :, :, :context].copy_(torch.randn(cache.keys[:, :, :, :context].shape, generator=gen))
    cache.values[:, :, :, :context].copy_(torch.randn(cache.values[:, :, :, :context].shape, generator=gen))
    token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)

    def step():
        cache.lengths = [context] * config.n_layers  # rewind to the prompt
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
    ``context`` positions, all layers). All settings are built first and timed
    in turn ``rounds`` times; each row keeps its best median.
    """
    device = pick_device(device)
    dtype = parse_dtype(dtype)
    groups = divisors(n_heads) if groups is None else groups
    implementations = ["grouped"] if implementations is None else implementations
    _check_groups_and_impls(n_heads, groups, implementations)
    setups = []
    for g in groups:
        for name in implementations:
            config = TransformerConfig(
                vocab_size=vocab_size, max_seq_len=context + 1, d_model=d_model, n_layers=n_layers,
                n_heads=n_heads, n_kv_heads=g, d_ff=d_ff, attn_impl=name,
            )
            setups.append((g, name, *decode_step_model(config, batch_size, context, dtype, device, seed)))
    best = time_interleaved({(g, name): step for g, name, _m, _c, step in setups}, rounds, min_run_time)
    rows = []
    for g, name, model, cache, _step in setups:
        t = best[g, name]
        elem = cache.keys.element_size()
        rows.append(
            {
                "G": g,
                "impl": name,
                "ms": t.median_ms,
                "iqr_ms": t.iqr_s * 1e3,
                "tokens_per_s": batch_size / t.median_s,
                "weight_bytes": model.num_parameters() * elem,
                "kv_bytes": cache.nbytes * context // (context + 1),
            }
        )
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
) -> list[dict]:
    """Decode-step time of :func:`grouped_attention` for every (context, G): the data behind the static sliders.

    Rows have ``context``, ``G``, ``ms`` (median milliseconds per call) and
    ``kv_bytes`` (the K and V bytes one call reads).
    """
    rows = []
    for context in progress_bar(list(contexts), "context lengths", enabled=progress):
        for r in bench_attention_decode(
            batch_size=batch_size, n_heads=n_heads, head_dim=head_dim, context=context, dtype=dtype,
            device=device, groups=groups, implementations=["grouped"], min_run_time=min_run_time,
        ):
            rows.append({"context": context, "G": r["G"], "ms": r["ms"], "kv_bytes": r["kv_bytes"]})
    return rows


def load_results(folder: str | Path, benchmark: str | None = None) -> list[dict]:
    """Every JSON result written by ``python -m gqa_lib.bench ... --json`` in ``folder``, sorted by file name.

    ``benchmark`` keeps only results of that command ("attention", "model", "sweep").
    A file that is not such a result raises ValueError naming it.
    """
    results = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not {"benchmark", "device", "rows"} <= set(data):
            raise ValueError(f"{path} is not a gqa_lib.bench result (needs 'benchmark', 'device', 'rows')")
        if benchmark is None or data["benchmark"] == benchmark:
            results.append(data)
    return results


def _environment(device: torch.device) -> dict:
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__}


def _print_attention_table(rows: list[dict], bandwidth_gbps: float, out=None) -> None:
    out = sys.stdout if out is None else out
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    by_key = {(r["G"], r["impl"]): r for r in rows}
    header = f"{'G':>4} {'KV MB':>8} " + " ".join(f"{name + ' ms':>14} {'GB/s':>7}" for name in impls)
    print(header, file=out)
    for g in dict.fromkeys(r["G"] for r in rows):
        cells = []
        for name in impls:
            r = by_key[(g, name)]
            cells.append(f"{r['ms']:>14.3f} {r['kv_gbps']:>7.1f}")
        print(f"{g:>4} {by_key[(g, impls[0])]['kv_bytes'] / 1e6:>8.1f} " + " ".join(cells), file=out)
    print(f"streaming-read bandwidth of this device: {bandwidth_gbps:.1f} GB/s", file=out)


def _cmd_attention(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    groups = None if args.groups is None else [int(g) for g in args.groups.split(",")]
    print(
        f"decode-step attention: B={args.batch} H={args.heads} D={args.head_dim} Tk={args.context} "
        f"{args.dtype} on {device_name(device)}"
    )
    rows = bench_attention_decode(
        batch_size=args.batch,
        n_heads=args.heads,
        head_dim=args.head_dim,
        context=args.context,
        dtype=args.dtype,
        device=device,
        groups=groups,
        min_run_time=args.min_run_time,
    )
    bandwidth = streaming_read_bandwidth(device) / 1e9
    _print_attention_table(rows, bandwidth)
    settings = {k: getattr(args, k) for k in ("batch", "heads", "head_dim", "context", "dtype")}
    return {"benchmark": "attention", **_environment(device), "settings": settings,
            "streaming_read_gbps": bandwidth, "rows": rows}


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
    groups = None if args.groups is None else [int(g) for g in args.groups.split(",")]
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
    contexts = [int(c) for c in args.contexts.split(",")]
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


def _cmd_bandwidth(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    gbps = streaming_read_bandwidth(device) / 1e9
    print(f"streaming-read bandwidth of {device_name(device)}: {gbps:.1f} GB/s")
    return {"benchmark": "bandwidth", **_environment(device), "settings": {}, "rows": [{"gbps": gbps}]}


def _add_common(p: argparse.ArgumentParser, dtype: bool = True) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when present)")
    if dtype:
        p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gqa_lib.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    att = sub.add_parser("attention", help="time one decode step of attention for every G")
    att.add_argument("--batch", type=int, default=4)
    att.add_argument("--heads", type=int, default=32, help="query heads H")
    att.add_argument("--head-dim", type=int, default=128)
    att.add_argument("--context", type=int, default=2048, help="cached positions Tk")
    att.add_argument("--groups", default=None, help="comma-separated G values (default: every divisor of H)")
    att.add_argument("--min-run-time", type=float, default=0.3, help="seconds of measuring per figure")
    _add_common(att)
    att.set_defaults(run=_cmd_attention)

    mod = sub.add_parser("model", help="time one token of generation of a whole TransformerLM for every G")
    mod.add_argument("--heads", type=int, default=32, help="query heads H")
    mod.add_argument("--d-model", type=int, default=2048)
    mod.add_argument("--layers", type=int, default=2)
    mod.add_argument("--d-ff", type=int, default=2048)
    mod.add_argument("--batch", type=int, default=8)
    mod.add_argument("--context", type=int, default=8192, help="cached positions before the step")
    mod.add_argument("--groups", default="1,4,32", help="comma-separated G values")
    mod.add_argument("--impls", default="grouped,sdpa,repeat_kv", help="attention implementations")
    mod.add_argument("--min-run-time", type=float, default=0.5)
    _add_common(mod)
    # bf16, as models are deployed; on CPUs with AVX512-BF16 it also keeps the
    # grouped products memory-bound (in fp32 a CPU is compute-bound at H/G >= 8).
    mod.set_defaults(run=_cmd_model, dtype="bfloat16")

    swp = sub.add_parser("sweep", help="decode-attention time for every (context, G): data for the book's sliders")
    swp.add_argument("--contexts", default="256,512,1024,2048,4096,8192")
    swp.add_argument("--batch", type=int, default=4)
    swp.add_argument("--heads", type=int, default=32)
    swp.add_argument("--head-dim", type=int, default=128)
    swp.add_argument("--min-run-time", type=float, default=0.2)
    _add_common(swp)
    swp.set_defaults(run=_cmd_sweep)

    bw = sub.add_parser("bandwidth", help="measured streaming-read bandwidth of the device")
    _add_common(bw, dtype=False)
    bw.set_defaults(run=_cmd_bandwidth)

    from .peers import add_peer_commands  # `peers` and `prefill`: gqa_lib against Hugging Face transformers

    add_peer_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    result = args.run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
