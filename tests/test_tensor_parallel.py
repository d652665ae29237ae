"""gqa_lib.speed.tensor_parallel: sharded attention over 2 gloo processes equals the single-process layer.

The process tests spawn 2 ranks a few times (each start imports torch, a few
seconds); one run checks every (H, G, dtype) case, the listening sockets, and
the KV cache path at once.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
import time

import pytest
import torch

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.core.rope import rope_cos_sin
from gqa_lib.speed.tensor_parallel import (
    TensorParallelAttention,
    run_tensor_parallel,
    shard_attention,
    tp_attention_report,
    tp_kv_bytes_per_token,
    tp_kv_layout,
)

CASES = [(8, 8), (8, 2), (8, 1)]  # MHA, GQA with G >= world, MQA with G < world
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


# ------------------------------------------------------- functions run in the ranks (module level: spawn)


def _listening_sockets(pids: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket owned by ``pids`` (Linux /proc)."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    return [sock for sock, inode in _all_listening() if inode in inodes]


def _all_listening() -> list[tuple[tuple[str, int], str]]:
    """((address, port), inode) of every listening TCP socket in this network namespace."""
    found = []
    for table in ("tcp", "tcp6"):
        path = f"/proc/net/{table}"
        if not os.path.exists(path):
            continue
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A":  # TCP_LISTEN
                    continue
                address_hex, port_hex = local.split(":")
                # /proc prints the address as 32-bit words in host byte order
                words = [int(address_hex[i : i + 8], 16) for i in range(0, len(address_hex), 8)]
                raw = b"".join(struct.pack("=I", word) for word in words)
                found.append(((str(ipaddress.ip_address(raw)), int(port_hex, 16)), inode))
    return found


def _equality_rank(rank: int, world_size: int) -> dict:
    """In each rank: every case's sharded output (prefill, and a cached decode step) vs the full layer's."""
    diffs = {}
    B, T, d_model = 2, 12, 32
    for H, G in CASES:
        for dtype in (torch.float32, torch.float64):
            torch.manual_seed(0)  # the same weights and input in every rank
            full = GroupedQueryAttention(d_model, H, G, bias=True).to(dtype)
            x = torch.randn(B, T, d_model, dtype=dtype)
            cos, sin = rope_cos_sin(torch.arange(T), full.head_dim, dtype=dtype)  # (T, D) each
            shard = shard_attention(full, rank, world_size)
            with torch.no_grad():
                diff = (shard(x, position_embeddings=(cos, sin)) - full(x, position_embeddings=(cos, sin))).abs().max()
                # prefill T-1 positions into a cache, then decode the last one
                caches = [KVCache(1, B, g, T, full.head_dim, dtype=dtype) for g in (G, shard.local_kv_heads)]
                outs = []
                for layer, cache in zip((full, shard), caches):
                    layer(x[:, :-1], cache=cache, position_embeddings=(cos[:-1], sin[:-1]))
                    outs.append(layer(x[:, -1:], cache=cache, position_embeddings=(cos[-1:], sin[-1:])))
                diff = max(diff.item(), (outs[0] - outs[1]).abs().max().item())
            diffs[f"{H},{G},{dtype}"] = diff
    sockets = {}
    if sys.platform.startswith("linux"):
        sockets = {
            "rank": _listening_sockets([os.getpid()]),
            "parent": _listening_sockets([os.getppid()]),
            "on_master_port": [s for s, _ in _all_listening() if s[1] == int(os.environ["MASTER_PORT"])],
        }
    return {"diffs": diffs, "sockets": sockets, "master_addr": os.environ["MASTER_ADDR"]}


def _raise_on_rank_1(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("boom from rank 1")
    torch.distributed.barrier()  # rank 0 waits for a rank that is gone: only the parent can end this
    return rank


def _sleep(rank: int, world_size: int) -> int:
    time.sleep(60)
    return rank


# ------------------------------------------------------------------ processes


@pytest.fixture(scope="module")
def equality_results():
    return run_tensor_parallel(_equality_rank, 2, timeout_s=120)


@pytest.mark.parametrize("H,G", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_two_process_layer_equals_single_process(equality_results, H, G, dtype):
    for rank, result in enumerate(equality_results):
        diff = result["diffs"][f"{H},{G},{dtype}"]
        assert diff <= TOLERANCE[dtype], (rank, diff)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_ranks_and_store_listen_on_127_0_0_1_only(equality_results):
    for result in equality_results:
        assert result["master_addr"] == "127.0.0.1"
        sockets = result["sockets"]
        assert sockets["rank"], "a gloo rank listens for its peers"
        assert {address for address, _ in sockets["rank"]} == {"127.0.0.1"}
        assert sockets["on_master_port"] and {a for a, _ in sockets["on_master_port"]} == {"127.0.0.1"}
        store_port = sockets["on_master_port"][0][1]
        assert ("127.0.0.1", store_port) in [tuple(s) for s in sockets["parent"]]


def test_report_mqa_replicates_the_kv_head_on_both_ranks():
    report = tp_attention_report(d_model=64, n_heads=8, n_kv_heads=1, world_size=2, batch=1, seq_len=8, seed=1)
    assert report["max_abs_diff"] <= 1e-5
    assert report["kv_heads"] == [[0], [0]]
    assert report["replication"] == 2 and report["kv_heads_stored"] == 2 and report["kv_heads_distinct"] == 1
    # each rank holds the whole single-process KV cache and K/V weights: nothing saved per rank
    assert report["kv_cache_bytes_per_token"] == [report["single_kv_cache_bytes_per_token"]] * 2 == [32, 32]
    assert report["kv_weight_params"] == [report["single_kv_weight_params"]] * 2 == [2 * 8 * 64] * 2


def test_a_rank_that_raises_is_a_runtime_error_not_a_hang():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 raised:(.|\n)*boom from rank 1"):
        run_tensor_parallel(_raise_on_rank_1, 2, timeout_s=60)
    assert time.monotonic() - start < 50


def test_timeout_kills_the_ranks_and_raises():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out after 2.0 s"):
        run_tensor_parallel(_sleep, 2, timeout_s=2)
    assert time.monotonic() - start < 12


def test_run_tensor_parallel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="world_size"):
        run_tensor_parallel(_sleep, 0)
    with pytest.raises(ValueError, match="timeout_s"):
        run_tensor_parallel(_sleep, 2, timeout_s=0)
    with pytest.raises(ValueError, match="fn must be callable"):
        run_tensor_parallel("not a function", 2)
    with pytest.raises(ValueError, match="args must be a tuple"):
        run_tensor_parallel(_sleep, 2, args=[1])


# --------------------------------------------------------------- no processes


@pytest.mark.parametrize(
    "H,G,W,kv_heads",
    [
        (8, 8, 1, [[0, 1, 2, 3, 4, 5, 6, 7]]),
        (8, 8, 2, [[0, 1, 2, 3], [4, 5, 6, 7]]),
        (8, 2, 2, [[0], [1]]),
        (8, 1, 2, [[0], [0]]),
        (8, 4, 4, [[0], [1], [2], [3]]),
        (8, 2, 4, [[0], [0], [1], [1]]),
        (8, 1, 4, [[0], [0], [0], [0]]),
        (16, 8, 4, [[0, 1], [2, 3], [4, 5], [6, 7]]),
        (64, 8, 16, [[g // 2] for g in range(16)]),  # Llama 2 70B at TP 16
    ],
)
def test_tp_kv_layout_by_hand(H, G, W, kv_heads):
    layout = tp_kv_layout(H, G, W)
    assert [list(h) for h in layout.kv_heads] == kv_heads
    assert [list(h) for h in layout.query_heads] == [list(range(r * H // W, (r + 1) * H // W)) for r in range(W)]
    assert layout.stored == max(G, W) and layout.distinct == G
    assert layout.replication == max(1, W // G)
    assert layout.as_dict()["kv_heads"] == kv_heads


@pytest.mark.parametrize(
    "H,G,W,match",
    [
        (8, 2, 3, "n_heads=8 must be divisible by world_size=3"),
        (12, 6, 4, "n_kv_heads=6 must be divisible by world_size=4"),
        (12, 4, 6, "world_size=6 must be divisible by n_kv_heads=4"),
        (8, 3, 2, "n_heads=8 must be a multiple of n_kv_heads=3"),
        (8, 2, 0, "world_size must be an integer >= 1; got 0"),
        (8, 2.0, 2, "n_kv_heads must be an integer"),
    ],
)
def test_tp_kv_layout_names_bad_values(H, G, W, match):
    with pytest.raises(ValueError, match=match):
        tp_kv_layout(H, G, W)


def test_tp_kv_bytes_per_token_real_configs():
    tp8 = tp_kv_bytes_per_token(80, 64, 8, 128, 8)  # Llama 2 70B
    assert (tp8["per_rank"], tp8["total"], tp8["distinct"], tp8["replication"]) == (40960, 327680, 327680, 1)
    tp16 = tp_kv_bytes_per_token(80, 64, 8, 128, 16)  # twice the ranks, the same bytes on each
    assert (tp16["per_rank"], tp16["total"], tp16["distinct"], tp16["replication"]) == (40960, 655360, 327680, 2)
    assert tp_kv_bytes_per_token(80, 64, 8, 128, 8, bytes_per_elem=1)["per_rank"] == 20480
    with pytest.raises(ValueError, match="n_heads=71 must be divisible by world_size=4"):
        tp_kv_bytes_per_token(32, 71, 1, 64, 4)  # Falcon 7B: 71 query heads cannot split over 4 ranks


def test_shard_counts_and_slices():
    torch.manual_seed(0)
    full = GroupedQueryAttention(64, 8, 2, bias=True)
    shards = [shard_attention(full, r, 2) for r in range(2)]
    assert [s.kv_heads for s in shards] == [(0,), (1,)]
    for s in shards:
        assert isinstance(s, TensorParallelAttention) and (s.local_heads, s.local_kv_heads) == (4, 1)
        assert s.kv_cache_bytes_per_token() == 2 * 1 * 8 * 2  # K and V, one head of D=8, bf16
        assert s.kv_cache_bytes_per_token(4) == 64
        assert s.kv_weight_params() == 2 * (8 * 64 + 8)  # k_proj and v_proj, weights and biases
        assert not any(p.requires_grad for p in s.parameters())
    assert torch.equal(torch.cat([s.q_proj.weight for s in shards]), full.q_proj.weight)
    assert torch.equal(torch.cat([s.o_proj.weight for s in shards], dim=1), full.o_proj.weight)
    assert torch.equal(torch.cat([s.k_proj.weight for s in shards]), full.k_proj.weight)
    assert "kv_heads=[1]" in repr(shards[1])


def test_world_size_1_needs_no_process_group_and_equals_the_layer():
    torch.manual_seed(0)
    full = GroupedQueryAttention(32, 4, 2).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    pe = rope_cos_sin(torch.arange(5), full.head_dim, dtype=torch.float64)
    with torch.no_grad():
        sharded = shard_attention(full, 0, 1)(x, position_embeddings=pe)
        torch.testing.assert_close(sharded, full(x, position_embeddings=pe))


def test_shard_attention_names_bad_values():
    full = GroupedQueryAttention(32, 4, 2)
    with pytest.raises(ValueError, match="rank must be in \\[0, world_size=2\\); got rank=2"):
        shard_attention(full, 2, 2)
    with pytest.raises(ValueError, match="n_heads=4 must be divisible by world_size=3"):
        shard_attention(full, 0, 3)
    with pytest.raises(ValueError, match="attn must be a GroupedQueryAttention"):
        shard_attention(torch.nn.Linear(2, 2), 0, 1)
    with pytest.raises(ValueError, match="x must have shape"):
        shard_attention(full, 0, 1)(torch.zeros(1, 3, 16))


def test_sharded_forward_without_a_process_group_says_so():
    shard = shard_attention(GroupedQueryAttention(32, 4, 2), 0, 2)
    with pytest.raises(RuntimeError, match="not initialised"):
        shard(torch.zeros(1, 3, 32))
