"""Tensor-parallel attention over ``torch.distributed``: what each rank holds (GQA paper, section 2.2).

Megatron-style tensor parallelism splits one attention layer over ``W``
processes ("ranks", the TP degree). Rank ``r`` computes the query heads
``r*H/W .. (r+1)*H/W - 1`` and therefore needs the KV heads those query heads
read. With contiguous groups (query head ``h`` reads KV head ``h // (H/G)``):

* ``G >= W`` (MHA, or GQA with at least one KV head per rank): rank ``r`` holds
  the ``G/W`` KV heads ``r*G/W .. (r+1)*G/W - 1``; no KV head is stored twice.
* ``G < W`` (MQA, or GQA with fewer KV heads than ranks): every rank's query
  heads read a single KV head, ``r // (W/G)``, which each rank must hold; every
  KV head is stored on ``W/G`` ranks. Across ranks ``max(G, W)`` KV heads are
  stored for ``G`` distinct ones: the replication factor is ``max(1, W/G)``.

This is the paper's argument: a single KV head is replicated on every
partition, so MQA's cache stops shrinking per rank once the model is sharded,
while GQA with ``G >= W`` keeps every rank's share at ``G/W`` heads.

The layer itself (:class:`TensorParallelAttention`, made by
:func:`shard_attention`) slices a :class:`~gqa_lib.core.attention.GroupedQueryAttention`'s
weights: ``q_proj``, ``k_proj`` and ``v_proj`` are column-parallel (rank ``r``
keeps the output rows of its heads), ``o_proj`` is row-parallel (rank ``r``
keeps the input columns of its query heads), and the ranks' partial outputs
are summed with ``torch.distributed.all_reduce``. The attention math is
:mod:`gqa_lib.core.attention`'s and RoPE is :mod:`gqa_lib.core.rope`'s; nothing is
re-implemented here.

Units: bytes are bytes, per token and per layer unless a function takes
``n_layers`` (then all layers); parameter counts are numbers of elements.
Shapes: ``B`` batch, ``T`` positions, ``H``/``G`` query/KV heads of the whole
layer, ``Hr = H/W`` and ``Gr`` those of one rank, ``D`` head dimension.

:func:`run_tensor_parallel` starts ``W`` processes (``spawn``) joined by the
``gloo`` backend on 127.0.0.1 only, runs a function on each and returns each
rank's (small, picklable) result; :func:`tp_attention_report` uses it to check
the sharded layer against the single-process one and to count what each rank
stores. :func:`tp_kv_bytes_per_token` does the same accounting for real model
sizes, by arithmetic.
"""

from __future__ import annotations

import datetime
import json
import os
import queue as queue_module
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ..checks import as_count, as_positive_float
from ..core.attention import (
    ATTENTION_IMPLEMENTATIONS,
    GroupedQueryAttention,
    attend_heads,
    check_head_counts,
    check_layer_input,
)
from ..core.kv_cache import KVCache, kv_cache_bytes
from ..core.rope import rope_cos_sin

__all__ = [
    "TPKVLayout",
    "TensorParallelAttention",
    "run_tensor_parallel",
    "shard_attention",
    "tp_attention_report",
    "tp_kv_bytes_per_token",
    "tp_kv_layout",
]

LOOPBACK = "127.0.0.1"  # every socket run_tensor_parallel opens listens here and nowhere else


# ------------------------------------------------------------------ layout


def _check_tp_heads(n_heads, n_kv_heads, world_size) -> tuple[int, int, int]:
    """(H, G, W) as ints; ValueError naming the values unless W ranks can split the heads evenly."""
    n_heads = as_count("n_heads", n_heads)
    n_kv_heads = as_count("n_kv_heads", n_kv_heads)
    world_size = as_count("world_size", world_size)
    if not 1 <= n_kv_heads <= n_heads or n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    if n_heads % world_size:
        raise ValueError(
            f"n_heads={n_heads} must be divisible by world_size={world_size} "
            "(each rank computes n_heads/world_size query heads)"
        )
    if n_kv_heads >= world_size and n_kv_heads % world_size:
        raise ValueError(
            f"n_kv_heads={n_kv_heads} must be divisible by world_size={world_size} when n_kv_heads >= world_size "
            "(otherwise some rank's query heads straddle two groups)"
        )
    if n_kv_heads < world_size and world_size % n_kv_heads:
        raise ValueError(
            f"world_size={world_size} must be divisible by n_kv_heads={n_kv_heads} when n_kv_heads < world_size "
            "(otherwise some rank's query heads straddle two groups)"
        )
    return n_heads, n_kv_heads, world_size


@dataclass(frozen=True)
class TPKVLayout:
    """Which heads each of ``world_size`` ranks holds; see :func:`tp_kv_layout`."""

    n_heads: int  # H, query heads of the whole layer
    n_kv_heads: int  # G, distinct KV heads of the whole layer
    world_size: int  # W, tensor-parallel degree
    query_heads: tuple[tuple[int, ...], ...]  # per rank: the global indices of its H/W query heads
    kv_heads: tuple[tuple[int, ...], ...]  # per rank: the global indices of the KV heads it stores

    @property
    def stored(self) -> int:
        """KV heads stored, summed over ranks: ``max(G, W)``."""
        return sum(len(heads) for heads in self.kv_heads)

    @property
    def distinct(self) -> int:
        """Distinct KV heads: ``G``."""
        return self.n_kv_heads

    @property
    def replication(self) -> int:
        """How many ranks store each KV head: ``max(1, W/G)`` (an integer under the layout's rules)."""
        return self.stored // self.distinct

    def as_dict(self) -> dict:
        """The layout as JSON-ready lists and ints."""
        return {
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "world_size": self.world_size,
            "query_heads": [list(h) for h in self.query_heads],
            "kv_heads": [list(h) for h in self.kv_heads],
            "stored": self.stored,
            "distinct": self.distinct,
            "replication": self.replication,
        }


def tp_kv_layout(n_heads: int, n_kv_heads: int, world_size: int) -> TPKVLayout:
    """The KV heads each rank must store when ``world_size`` ranks split ``n_heads`` query heads.

    Rank ``r`` computes query heads ``r*H/W .. (r+1)*H/W - 1`` and stores the
    KV heads they read (``h // (H/G)``, contiguous groups). ValueError naming
    the values unless ``H % W == 0`` and either ``G % W == 0`` (``G >= W``) or
    ``W % G == 0`` (``G < W``), the splits in which every rank holds whole
    groups. Example: ``tp_kv_layout(8, 1, 2).kv_heads == ((0,), (0,))``,
    replication 2.
    """
    n_heads, n_kv_heads, world_size = _check_tp_heads(n_heads, n_kv_heads, world_size)
    heads_per_rank, group_size = n_heads // world_size, n_heads // n_kv_heads
    query_heads = tuple(tuple(range(r * heads_per_rank, (r + 1) * heads_per_rank)) for r in range(world_size))
    kv_heads = tuple(tuple(sorted({h // group_size for h in heads})) for heads in query_heads)
    return TPKVLayout(n_heads, n_kv_heads, world_size, query_heads, kv_heads)


def tp_kv_bytes_per_token(
    n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int, world_size: int, bytes_per_elem: int = 2
) -> dict:
    """KV-cache bytes one token adds, all layers, per rank and over all ranks, at TP degree ``world_size``.

    Returns a dict: ``per_rank`` (bytes on each rank: ``2 * n_layers *
    max(1, G/W) * head_dim * bytes_per_elem``, keys and values), ``total``
    (``per_rank * W``, what the W ranks store together), ``distinct`` (the
    unsharded model's cache, ``2 * n_layers * G * head_dim * bytes_per_elem``),
    ``kv_heads_per_rank`` and ``replication`` (``total / distinct``). The
    default 2 bytes per element is bf16/fp16. Same ValueErrors as
    :func:`tp_kv_layout` (e.g. n_heads must be divisible by world_size).
    """
    n_layers = as_count("n_layers", n_layers)
    head_dim = as_count("head_dim", head_dim)
    bytes_per_elem = as_count("bytes_per_elem", bytes_per_elem)
    layout = tp_kv_layout(n_heads, n_kv_heads, world_size)
    kv_heads_per_rank = len(layout.kv_heads[0])  # every rank holds as many
    per_rank = kv_cache_bytes(n_layers, kv_heads_per_rank, head_dim, seq_len=1, bytes_per_elem=bytes_per_elem)
    distinct = kv_cache_bytes(n_layers, layout.n_kv_heads, head_dim, seq_len=1, bytes_per_elem=bytes_per_elem)
    return {
        "n_layers": n_layers,
        "n_heads": layout.n_heads,
        "n_kv_heads": layout.n_kv_heads,
        "head_dim": head_dim,
        "world_size": layout.world_size,
        "bytes_per_elem": bytes_per_elem,
        "kv_heads_per_rank": kv_heads_per_rank,
        "per_rank": per_rank,
        "total": per_rank * layout.world_size,
        "distinct": distinct,
        "replication": layout.replication,
    }


# ------------------------------------------------------------------- layer


class TensorParallelAttention(nn.Module):
    """One rank's share of a :class:`~gqa_lib.core.attention.GroupedQueryAttention`; make it with :func:`shard_attention`.

    Holds ``Hr = H/W`` query heads and the ``Gr`` KV heads they read
    (``tp_kv_layout(H, G, W).kv_heads[rank]``): ``q_proj`` maps d_model to
    ``Hr*D``, ``k_proj``/``v_proj`` to ``Gr*D``, ``o_proj`` maps ``Hr*D`` to
    d_model without bias; ``o_bias`` (the full o_proj bias, or None) is added
    once, after the sum over ranks. Parameters are frozen: the all-reduce in
    :meth:`forward` carries no gradient, so the layer is for inference.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        rank: int,
        world_size: int,
        bias: bool = False,
        impl: str = "grouped",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        d_model, n_heads, n_kv_heads = check_head_counts(d_model, n_heads, n_kv_heads)
        layout = tp_kv_layout(n_heads, n_kv_heads, world_size)
        rank = as_count("rank", rank, minimum=0)
        if rank >= layout.world_size:
            raise ValueError(f"rank must be in [0, world_size={layout.world_size}); got rank={rank}")
        if not isinstance(impl, str) or impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {sorted(ATTENTION_IMPLEMENTATIONS)}; got {impl!r}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.rank, self.world_size, self.impl = rank, layout.world_size, impl
        self.query_heads = layout.query_heads[rank]  # global indices of this rank's query heads
        self.kv_heads = layout.kv_heads[rank]  # global indices of the KV heads this rank stores
        self.local_heads, self.local_kv_heads = len(self.query_heads), len(self.kv_heads)  # Hr, Gr
        factory = {"dtype": dtype, "device": device}
        D = self.head_dim
        self.q_proj = nn.Linear(d_model, self.local_heads * D, bias=bias, **factory)  # column-parallel
        self.k_proj = nn.Linear(d_model, self.local_kv_heads * D, bias=bias, **factory)  # column-parallel
        self.v_proj = nn.Linear(d_model, self.local_kv_heads * D, bias=bias, **factory)  # column-parallel
        self.o_proj = nn.Linear(self.local_heads * D, d_model, bias=False, **factory)  # row-parallel
        self.o_bias = nn.Parameter(torch.zeros(d_model, **factory)) if bias else None
        self.requires_grad_(False)

    def kv_cache_bytes_per_token(self, bytes_per_elem: int = 2) -> int:
        """Bytes of keys and values this rank caches per token for this layer: ``2 * Gr * D * bytes_per_elem``."""
        return kv_cache_bytes(1, self.local_kv_heads, self.head_dim, seq_len=1, bytes_per_elem=bytes_per_elem)

    def kv_weight_params(self) -> int:
        """Elements of this rank's ``k_proj`` and ``v_proj`` (weights and biases): ``2 * Gr * D * (d_model [+ 1])``."""
        return sum(p.numel() for p in (*self.k_proj.parameters(), *self.v_proj.parameters()))

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model), causal; the same on every rank, after an all-reduce.

        Arguments as :meth:`GroupedQueryAttention.forward`; a ``cache`` holds
        this rank's ``Gr`` KV heads only (``KVCache(..., n_kv_heads=Gr, ...)``).
        With ``world_size > 1`` the default process group must be initialised
        with this rank and world size (see :func:`run_tensor_parallel`).
        """
        check_layer_input(x, self.d_model)
        if self.world_size > 1:
            self._check_process_group()
        # local head j is global head query_heads[0] + j; its group is j // (Hr/Gr), as in the full layer
        out = attend_heads(x, self.q_proj, self.k_proj, self.v_proj, self.local_heads, self.local_kv_heads,
                           self.head_dim, self.impl, cache, layer, position_embeddings)  # (B, T, Hr*D)
        partial = self.o_proj(out)  # (B, T, d_model): this rank's query heads' share of the output
        if self.world_size > 1:
            if partial.requires_grad:
                raise RuntimeError(
                    "TensorParallelAttention's all-reduce carries no gradient; run it under torch.no_grad()"
                )
            dist.all_reduce(partial, op=dist.ReduceOp.SUM)  # (B, T, d_model): the sum over ranks
        if self.o_bias is not None:
            partial = partial + self.o_bias  # the bias once, not once per rank
        return partial

    def _check_process_group(self) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                f"rank {self.rank} of {self.world_size}: torch.distributed is not initialised "
                "(run the layer inside run_tensor_parallel, or call init_process_group first)"
            )
        if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world_size):
            raise RuntimeError(
                f"this shard is rank {self.rank} of {self.world_size}, but the process group is "
                f"rank {dist.get_rank()} of {dist.get_world_size()}"
            )

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, world_size={self.world_size}, query_heads={self.query_heads[0]}.."
            f"{self.query_heads[-1]}, kv_heads={list(self.kv_heads)}, head_dim={self.head_dim}, impl={self.impl!r}"
        )


def shard_attention(attn: GroupedQueryAttention, rank: int, world_size: int) -> TensorParallelAttention:
    """Rank ``rank``'s share of ``attn`` out of ``world_size``: weight slices copied into a new module.

    Same dtype and device as ``attn``. ValueError naming the values unless
    ``tp_kv_layout(attn.n_heads, attn.n_kv_heads, world_size)`` accepts them
    and ``0 <= rank < world_size``.
    """
    if not isinstance(attn, GroupedQueryAttention):
        raise ValueError(f"attn must be a GroupedQueryAttention; got {type(attn).__name__}")
    weight = attn.q_proj.weight
    shard = TensorParallelAttention(
        attn.d_model,
        attn.n_heads,
        attn.n_kv_heads,
        rank,
        world_size,
        bias=attn.q_proj.bias is not None,
        impl=attn.impl,
        dtype=weight.dtype,
        device=weight.device,
    )
    D = attn.head_dim
    q_rows = slice(shard.query_heads[0] * D, (shard.query_heads[-1] + 1) * D)  # rows of this rank's query heads
    kv_rows = slice(shard.kv_heads[0] * D, (shard.kv_heads[-1] + 1) * D)  # rows of its KV heads (contiguous)
    with torch.no_grad():
        shard.q_proj.weight.copy_(attn.q_proj.weight[q_rows])  # (H*D, d_model) -> (Hr*D, d_model)
        shard.k_proj.weight.copy_(attn.k_proj.weight[kv_rows])  # (G*D, d_model) -> (Gr*D, d_model)
        shard.v_proj.weight.copy_(attn.v_proj.weight[kv_rows])  # (G*D, d_model) -> (Gr*D, d_model)
        shard.o_proj.weight.copy_(attn.o_proj.weight[:, q_rows])  # (d_model, H*D) -> (d_model, Hr*D)
        if shard.o_bias is not None:
            shard.q_proj.bias.copy_(attn.q_proj.bias[q_rows])  # (H*D,) -> (Hr*D,)
            shard.k_proj.bias.copy_(attn.k_proj.bias[kv_rows])  # (G*D,) -> (Gr*D,)
            shard.v_proj.bias.copy_(attn.v_proj.bias[kv_rows])  # (G*D,) -> (Gr*D,)
            shard.o_bias.copy_(attn.o_proj.bias)  # (d_model,): whole, added after the all-reduce
    return shard


# --------------------------------------------------------------- processes


def _loopback_interface() -> str:
    """Name of the loopback network interface, for GLOO_SOCKET_IFNAME."""
    return "lo0" if sys.platform == "darwin" else "lo"


def _rank_main(fn, rank: int, world_size: int, port: int, timeout_s: float, args: tuple, results) -> None:
    """Body of one spawned rank: join the gloo group on 127.0.0.1, run ``fn``, leave, report."""
    try:
        os.environ["MASTER_ADDR"] = LOOPBACK
        os.environ["MASTER_PORT"] = str(port)
        os.environ["GLOO_SOCKET_IFNAME"] = _loopback_interface()  # gloo's own sockets on loopback only
        torch.set_num_threads(1)  # W ranks share the machine's cores
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(LOOPBACK, port, world_size, is_master=False, timeout=timeout)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
        try:
            result = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        ForkingPickler.dumps(result)  # an unpicklable result fails here, as an error the parent sees
        results.put((rank, True, result))
    except BaseException:  # noqa: BLE001 - the parent re-raises it, with the traceback
        results.put((rank, False, traceback.format_exc()))


def _failure_report(failed: dict[int, str], results, world_size: int, grace_s: float = 2.0) -> str:
    """All ranks' tracebacks, the cause first: when one rank raises, its peers soon fail too ("connection
    closed by peer"), and whichever the queue delivers first need not be the cause. Waits up to ``grace_s``
    for the other ranks' reports, then lists those that are not mere lost connections first."""
    end = time.monotonic() + grace_s
    while len(failed) < world_size and time.monotonic() < end:
        try:
            rank, ok, payload = results.get(timeout=0.1)
        except queue_module.Empty:
            continue
        if not ok:
            failed[rank] = payload
    def lost_peer(text: str) -> bool:
        return "Connection closed by peer" in text or "remote worker crashing" in text
    order = sorted(failed, key=lambda r: (lost_peer(failed[r]), r))
    return "\n".join(f"rank {r} of {world_size} raised:\n{failed[r]}" for r in order)


def run_tensor_parallel(
    fn: Callable[..., Any], world_size: int, *, args: tuple = (), timeout_s: float = 60.0
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes joined by gloo; results by rank.

    ``fn`` must be importable (a module-level function: processes are
    started with ``spawn``) and return something small and picklable (the
    results come back through a multiprocessing queue). Inside ``fn`` the
    default process group is initialised, so ``torch.distributed`` calls
    work; each rank uses one CPU thread.

    Networking: this process hosts the rendezvous store on a socket it binds
    to 127.0.0.1 with a port the OS picks (no race for a "free" port), and
    the ranks' gloo sockets are bound to the loopback interface
    (``GLOO_SOCKET_IFNAME``); ``MASTER_ADDR`` is 127.0.0.1. Nothing listens
    on another address. (``init_method="tcp://127.0.0.1:port"`` would not
    do: its store listens on every interface.)

    ``timeout_s`` bounds the whole run, start-up included, and is the
    process group's timeout. RuntimeError, after killing every rank still
    running, if a rank raises (its traceback in the message), dies without
    a result, or the run exceeds ``timeout_s``.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable; got {fn!r}")
    world_size = as_count("world_size", world_size)
    timeout_s = as_positive_float("timeout_s", timeout_s)
    if not isinstance(args, tuple):
        raise ValueError(f"args must be a tuple; got {type(args).__name__}")
    deadline = time.monotonic() + timeout_s
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        port = listener.getsockname()[1]
        store = dist.TCPStore(
            LOOPBACK,
            port,
            None,
            is_master=True,
            timeout=datetime.timedelta(seconds=timeout_s),
            wait_for_workers=False,
            master_listen_fd=listener.fileno(),
        )
        listener.detach()  # the store owns the socket now and closes it
    procs = [
        ctx.Process(target=_rank_main, args=(fn, rank, world_size, port, timeout_s, args, results), daemon=True)
        for rank in range(world_size)
    ]
    done: dict[int, Any] = {}
    try:
        for proc in procs:
            proc.start()
        while len(done) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [r for r in range(world_size) if r not in done]
                raise RuntimeError(f"run_tensor_parallel timed out after {timeout_s} s; ranks {missing} did not finish")
            try:
                rank, ok, payload = results.get(timeout=min(remaining, 0.2))
            except queue_module.Empty:
                for rank, proc in enumerate(procs):
                    if rank not in done and proc.exitcode not in (None, 0):
                        raise RuntimeError(f"rank {rank} of {world_size} died with exit code {proc.exitcode}")
                continue
            if not ok:
                raise RuntimeError(_failure_report({rank: payload}, results, world_size))
            done[rank] = payload
        for rank, proc in enumerate(procs):
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                raise RuntimeError(f"rank {rank} of {world_size} did not exit within timeout_s={timeout_s} s")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            if proc.pid is not None:
                proc.join(5.0)
        results.close()
        del store  # stops the rendezvous server and closes its socket
    return [done[rank] for rank in range(world_size)]


# ------------------------------------------------------------- measurement


def _report_rank(rank: int, world_size: int, workdir: str) -> dict:
    """One rank of :func:`tp_attention_report`: load the full layer, shard it, run it, save the output."""
    from safetensors.torch import load_file, save_file

    config = json.loads((Path(workdir) / "config.json").read_text())
    tensors = load_file(str(Path(workdir) / "inputs.safetensors"))
    dtype = getattr(torch, config["dtype"])
    full = GroupedQueryAttention(config["d_model"], config["n_heads"], config["n_kv_heads"]).to(dtype)
    full.load_state_dict({k.removeprefix("attn."): v for k, v in tensors.items() if k.startswith("attn.")})
    shard = shard_attention(full, rank, world_size)
    del full  # a real rank would load only its slices
    with torch.no_grad():
        out = shard(tensors["x"], position_embeddings=(tensors["cos"], tensors["sin"]))  # (B, T, d_model)
    save_file({"out": out.contiguous()}, str(Path(workdir) / f"out_rank{rank}.safetensors"))
    return {
        "kv_heads": list(shard.kv_heads),
        "query_heads": list(shard.query_heads),
        "kv_cache_bytes_per_token": shard.kv_cache_bytes_per_token(2),
        "kv_weight_params": shard.kv_weight_params(),
    }


def tp_attention_report(
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    world_size: int,
    batch: int,
    seq_len: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    timeout_s: float = 60.0,
) -> dict:
    """Run a random attention layer single-process and over ``world_size`` gloo ranks; compare and count.

    Builds a ``GroupedQueryAttention(d_model, n_heads, n_kv_heads)`` and an
    input x (B, T, d_model) from ``seed`` (the caller's RNG is untouched),
    computes the output here, then in ``world_size`` processes
    (:func:`run_tensor_parallel`) that load the same weights and input from a
    temporary safetensors file, shard the layer, run it with RoPE and write
    their outputs back. Returns a dict with ``max_abs_diff`` (largest
    |tensor-parallel - single-process| over every rank's output), per-rank
    ``kv_heads``, ``kv_cache_bytes_per_token`` (bf16, this layer),
    ``kv_weight_params``, the same two for the unsharded layer
    (``single_*``), ``kv_heads_stored``, ``kv_heads_distinct``,
    ``replication`` and ``seconds`` (wall time of the parallel run).
    """
    from safetensors.torch import load_file, save_file

    d_model, n_heads, n_kv_heads = check_head_counts(d_model, n_heads, n_kv_heads)
    layout = tp_kv_layout(n_heads, n_kv_heads, world_size)
    batch, seq_len, seed = as_count("batch", batch), as_count("seq_len", seq_len), as_count("seed", seed, minimum=0)
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attn = GroupedQueryAttention(d_model, n_heads, n_kv_heads).to(dtype)
        x = torch.randn(batch, seq_len, d_model, dtype=dtype)  # (B, T, d_model)
    cos, sin = rope_cos_sin(torch.arange(seq_len), attn.head_dim, dtype=dtype)  # (T, D) each
    with torch.no_grad():
        reference = attn(x, position_embeddings=(cos, sin))  # (B, T, d_model)
    with tempfile.TemporaryDirectory(prefix="gqa_tp_") as workdir:
        config = {"d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "dtype": str(dtype).split(".")[-1]}
        (Path(workdir) / "config.json").write_text(json.dumps(config))
        tensors = {f"attn.{k}": v.contiguous() for k, v in attn.state_dict().items()}
        save_file({**tensors, "x": x, "cos": cos, "sin": sin}, str(Path(workdir) / "inputs.safetensors"))
        start = time.perf_counter()
        ranks = run_tensor_parallel(_report_rank, layout.world_size, args=(workdir,), timeout_s=timeout_s)
        seconds = time.perf_counter() - start
        outputs = [load_file(str(Path(workdir) / f"out_rank{r}.safetensors"))["out"] for r in range(len(ranks))]
    max_abs_diff = max((out - reference).abs().max().item() for out in outputs)
    single_bytes = kv_cache_bytes(1, n_kv_heads, attn.head_dim, seq_len=1, bytes_per_elem=2)
    return {
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "head_dim": attn.head_dim,
        "world_size": layout.world_size,
        "batch": batch,
        "seq_len": seq_len,
        "seed": seed,
        "dtype": config["dtype"],
        "max_abs_diff": max_abs_diff,
        "kv_heads": [r["kv_heads"] for r in ranks],
        "query_heads": [r["query_heads"] for r in ranks],
        "kv_cache_bytes_per_token": [r["kv_cache_bytes_per_token"] for r in ranks],
        "kv_weight_params": [r["kv_weight_params"] for r in ranks],
        "single_kv_cache_bytes_per_token": single_bytes,
        "single_kv_weight_params": sum(p.numel() for p in (*attn.k_proj.parameters(), *attn.v_proj.parameters())),
        "kv_heads_stored": layout.stored,
        "kv_heads_distinct": layout.distinct,
        "replication": layout.replication,
        "seconds": seconds,
    }
