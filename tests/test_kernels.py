"""gqa_lib.speed.kernels: the profiler's view of attention calls (operators, copies), never timings."""

import torch

import gqa_lib
from gqa_lib.speed.kernels import attention_kernels, copies_kv, profile_operators


def _inputs(G=2):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 1, 16, generator=gen)  # (B, H, 1, D)
    k = torch.randn(2, G, 64, 16, generator=gen)  # (B, G, Tk, D)
    v = torch.randn(2, G, 64, 16, generator=gen)
    return q, k, v


def test_folded_fast_path_runs_one_fused_kernel_and_copies_nothing():
    q, k, v = _inputs()
    report = profile_operators(lambda: gqa_lib.grouped_attention(q, k, v))
    assert attention_kernels(report), report  # a fused SDPA kernel ran
    assert not copies_kv(report, k.nbytes + v.nbytes), report


def test_repeating_kv_is_seen_as_a_copy():
    q, k, v = _inputs()
    report = profile_operators(lambda: gqa_lib.repeat_kv_attention(q, k, v))
    assert copies_kv(report, k.nbytes + v.nbytes), report
    assert not attention_kernels(report)  # two matmuls, no fused kernel


def test_profiler_log_lines_do_not_reach_stderr(capfd):
    q, k, v = _inputs()
    profile_operators(lambda: gqa_lib.grouped_attention(q, k, v))
    assert "profiler_start" not in capfd.readouterr().err
