"""Benchmarks of decoding speed: ``python -m gqa_lib.bench attention``.

Each command prints a table of its figures and, with ``--json PATH``, writes
them as JSON with the device name, torch version and settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .attention import ATTENTION_IMPLEMENTATIONS
from .timing import device_name, parse_dtype, pick_device, streaming_read_bandwidth, time_call

__all__ = ["divisors", "bench_attention_decode", "main"]


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
) -> list[dict]:
    """Time one decode step of attention (Tq = 1 against ``context`` cached keys).

    For every G in ``groups`` (default: every divisor of ``n_heads``) and
    every implementation, returns a row with ``ms`` (median milliseconds per
    call) and ``kv_gbps``: the bytes of K and V the step must read (G heads)
    divided by the time, in GB/s (1e9 bytes per second).
    """
    device = pick_device(device)
    dtype = parse_dtype(dtype)
    groups = divisors(n_heads) if groups is None else groups
    implementations = list(ATTENTION_IMPLEMENTATIONS) if implementations is None else implementations
    for g in groups:
        if g < 1 or n_heads % g:
            raise ValueError(f"each G must divide n_heads={n_heads}; got G={g}")
    for name in implementations:
        if name not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {name!r}; choose from {sorted(ATTENTION_IMPLEMENTATIONS)}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rows = []
    for g in groups:
        q = torch.randn(batch_size, n_heads, 1, head_dim, generator=gen).to(device, dtype)
        k = torch.randn(batch_size, g, context, head_dim, generator=gen).to(device, dtype)
        v = torch.randn(batch_size, g, context, head_dim, generator=gen).to(device, dtype)
        kv_bytes = k.nbytes + v.nbytes
        for name in implementations:
            fn = ATTENTION_IMPLEMENTATIONS[name]
            with torch.no_grad():
                t = time_call(lambda: fn(q, k, v, causal=True), min_run_time=min_run_time)
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
        del q, k, v
    return rows


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gqa_lib.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    att = sub.add_parser("attention", help="time one decode step of attention for every G")
    att.add_argument("--batch", type=int, default=4)
    att.add_argument("--heads", type=int, default=32, help="query heads H")
    att.add_argument("--head-dim", type=int, default=128)
    att.add_argument("--context", type=int, default=2048, help="cached positions Tk")
    att.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    att.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when present)")
    att.add_argument("--groups", default=None, help="comma-separated G values (default: every divisor of H)")
    att.add_argument("--min-run-time", type=float, default=0.3, help="seconds of measuring per figure")
    att.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    att.set_defaults(run=_cmd_attention)
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
