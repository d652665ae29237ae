"""gqa_lib.speed.gpu_plan: every chapter's GPU sizes from free memory (simulated devices; formulas against CPU tensors)."""

import inspect
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gqa_lib.core.model import TransformerConfig, TransformerLM
from gqa_lib.speed import bench, gpu_plan
from gqa_lib.speed.gpu_plan import (
    GPU_BUDGET_FRACTION,
    GiB,
    attention_parts,
    attention_peak_bytes,
    attention_plan,
    chapter_plans,
    decode_dtype,
    describe_plans,
    model_parts,
    model_peak_bytes,
    model_plan,
)

CPU_WORKSPACE = 256 * 2**10  # a CPU fp16/bf16 GEMM's packing buffer (about 100 KiB seen), not the 32 MiB of cuBLAS
CUDA_CONTEXT = 500_000_000  # bytes the CUDA context and PyTorch take before free memory is read
T4_TOTAL = 15_095_000_000
DEVICES = {  # name: (free bytes, native bf16)
    "T4": (T4_TOTAL - CUDA_CONTEXT, False),
    "T4, 14.5 GiB free": (int(14.5 * GiB), False),
    "L4": (22_500_000_000 - CUDA_CONTEXT, True),
    "A100 40GB": (40_000_000_000 - CUDA_CONTEXT, True),
    "A100 80GB": (80_000_000_000 - CUDA_CONTEXT, True),
}
TODAY = {  # chapters' GPU sizes before the plans: an 80 GB device keeps them
    "ch1_roofline": {"n": 4096},
    "ch5_attention": dict(batch_size=8, n_heads=32, head_dim=128, context=8192),
    "ch5_sweep": dict(contexts=[512, 1024, 2048, 4096, 8192, 16384, 32768], batch_size=8),
    "ch5_model": dict(d_model=4096, n_layers=4, d_ff=4096, batch_size=16, context=8192),
    "ch5_explorer": dict(preset="Llama 2 7B", G=8, context=8192, batch_size=1),
    "ch8_model": dict(d_model=128, n_layers=2, d_ff=344, vocab_size=362, batch_size=256, context=16384),
}


def peak_allocated(fn) -> int:
    """Most bytes ``fn()`` holds at once on the CPU beyond what existed before (profiler memory events)."""
    fn()  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        pytest.skip("this torch's profiler does not expose memory events")
    events = sorted((e.start_ns(), e.nbytes()) for e in results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


# ----------------------------------------------------------------------------- simulated devices


@pytest.mark.parametrize("name", DEVICES)
def test_every_plan_fits_in_60_percent_of_free_memory(name):
    free, bf16 = DEVICES[name]
    plans = chapter_plans(free, bf16)
    assert set(plans) == {"ch1_roofline", "ch3_live", "ch5_attention", "ch5_profile", "ch5_bandwidth", "ch5_sweep",
                          "ch5_explorer", "ch5_model", "ch6_eval", "ch7_uptrain", "ch8_model"}
    for key, plan in plans.items():
        assert isinstance(plan["peak_bytes"], int) and plan["peak_bytes"] > 0, key
        assert plan["peak_bytes"] <= GPU_BUDGET_FRACTION * free, (key, plan["peak_bytes"] / GiB)
        assert plan["budget_bytes"] <= GPU_BUDGET_FRACTION * free and plan["free_bytes"] == free
        assert {"chapter", "what", "sizes", "device", "dtype", "kwargs"} <= set(plan)


@pytest.mark.parametrize("name", DEVICES)
def test_dtype_fp16_without_native_bf16_and_fp32_where_the_prose_needs_it(name):
    free, bf16 = DEVICES[name]
    plans = chapter_plans(free, bf16)
    half = "bfloat16" if bf16 else "float16"
    for key in ("ch5_attention", "ch5_profile", "ch5_sweep", "ch5_explorer", "ch5_model", "ch8_model"):
        assert plans[key]["dtype"] == half, key
        assert plans[key]["kwargs"]["dtype"] == half, key
    for key in ("ch1_roofline", "ch3_live", "ch5_bandwidth", "ch6_eval", "ch7_uptrain"):
        assert plans[key]["dtype"] == "float32", key
    assert plans["ch6_eval"]["device"] == plans["ch7_uptrain"]["device"] == "cpu"


def test_t4_gets_fp16_and_a100_bf16():
    assert chapter_plans(*DEVICES["T4"])["ch5_model"]["dtype"] == "float16"
    assert chapter_plans(*DEVICES["A100 80GB"])["ch5_model"]["dtype"] == "bfloat16"
    assert decode_dtype(False) == "float16" and decode_dtype(True) == "bfloat16"


def test_80gb_keeps_todays_sizes():
    plans = chapter_plans(*DEVICES["A100 80GB"])
    for key, sizes in TODAY.items():
        for name, value in sizes.items():
            assert plans[key]["kwargs"][name] == value, (key, name)


def test_t4_shrinks_only_the_whole_model_benchmark_and_halves_its_context():
    plans = chapter_plans(*DEVICES["T4"])
    for key in ("ch5_attention", "ch5_sweep", "ch5_explorer", "ch8_model", "ch1_roofline"):
        for name, value in TODAY[key].items():
            assert plans[key]["kwargs"][name] == value, (key, name)
    model = plans["ch5_model"]["kwargs"]
    assert (model["batch_size"], model["context"]) == (16, 4096)  # context halved once, batch kept


def test_todays_gpu_branch_does_not_fit_a_t4_but_the_plan_does():
    """Every G built at once in fp32 (chapter 5 today) against one G at a time in fp16."""
    old = sum(sum(model_parts(4096, 4, 4096, 16, 8192, 4, 32, g).values()) for g in bench.divisors(32))
    assert old > 35 * GiB > T4_TOTAL
    sweep_kv_fp32 = sum(2 * 8 * g * 32768 * 128 * 4 for g in bench.divisors(32))
    assert round(sweep_kv_fp32 / GiB, 2) == 15.75 and sweep_kv_fp32 > T4_TOTAL
    free, bf16 = DEVICES["T4"]
    assert chapter_plans(free, bf16)["ch5_sweep"]["peak_bytes"] < 0.6 * free


FREE_GRID = [int(x) for x in np.geomspace(700_000_000, 200_000_000_000, 90)]


@pytest.mark.parametrize("bf16", [False, True])
def test_plans_are_monotone_in_free_memory(bf16):
    previous = None
    for free in FREE_GRID:
        try:
            plans = chapter_plans(free, bf16)
        except ValueError:
            assert previous is None, f"a plan fitted below free_bytes={free} but not at it"
            continue
        if previous is not None:
            for key, plan in plans.items():
                for name, value in plan["kwargs"].items():
                    before = previous[key]["kwargs"][name]
                    if isinstance(value, int):
                        assert value >= before, (free, key, name, before, value)
                    elif isinstance(value, list):
                        assert value[: len(before)] == before, (free, key, name, before, value)
        previous = plans
    assert previous is not None


@pytest.mark.parametrize("bf16", [False, True])
def test_attention_and_model_plans_are_monotone_down_to_tiny_devices(bf16):
    grid = [int(x) for x in np.geomspace(20_000_000, 100_000_000_000, 200)]
    for make in (attention_plan, model_plan, gpu_plan.explorer_plan):
        previous = None
        for free in grid:
            try:
                plan = make(free, bf16)
            except ValueError as err:
                assert previous is None and "free_bytes" in str(err), (make.__name__, free)
                continue
            if previous is not None:
                for name, value in plan["kwargs"].items():
                    before = previous["kwargs"][name]
                    if isinstance(value, list):
                        assert value[: len(before)] == before, (make.__name__, free, name)
                    elif isinstance(value, int):
                        assert value >= before, (make.__name__, free, name, before, value)
            previous = plan
        assert previous["peak_bytes"] <= GPU_BUDGET_FRACTION * grid[-1]


def test_shrinking_halves_the_context_before_the_batch():
    for free in FREE_GRID:
        for bf16 in (False, True):
            try:
                a = attention_plan(free, bf16)
                m = model_plan(free, bf16)
            except ValueError:
                continue
            if a["batch_size"] < 8:
                assert a["context"] == 1024 and a["sweep_contexts"] == [512, 1024]
            if m["batch_size"] < 16:
                assert m["context"] == 1024
            for plan, sizes in ((a, (8, 8192)), (m, (16, 8192))):
                assert plan["batch_size"] in (1, 2, 4, 8, 16) and sizes[1] % plan["context"] == 0


def test_sweep_keeps_the_largest_contexts_that_fit():
    for free in FREE_GRID:
        try:
            a = attention_plan(free, False)
        except ValueError:
            continue
        longest = max(a["sweep_contexts"])
        assert a["sweep_peak_bytes"] <= a["budget_bytes"] and longest >= a["context"]
        if a["batch_size"] == 8 and longest < 32768:  # the next one would not fit
            assert attention_peak_bytes(8, 32, 128, 2 * longest, 2, None, ("grouped",)) > a["budget_bytes"]


def test_too_little_memory_raises_naming_free_bytes():
    with pytest.raises(ValueError, match=r"free_bytes=400000000 .*chapter"):
        chapter_plans(400_000_000, False)
    with pytest.raises(ValueError, match="free_bytes=10000000 .*attention"):
        attention_plan(10_000_000, True)
    with pytest.raises(ValueError, match="free_bytes=1000000 .*whole-model"):
        model_plan(1_000_000, True)


@pytest.mark.parametrize("bad", [-1, 0, True, False, 2.0, 1.5e10, "15000000000", None])
def test_bad_free_bytes_raise_naming_it(bad):
    for fn in (chapter_plans, attention_plan, model_plan, gpu_plan.explorer_plan):
        with pytest.raises(ValueError, match="free_bytes"):
            fn(bad, False)
    with pytest.raises(ValueError, match="free_bytes"):
        gpu_plan.budget_bytes(bad)


@pytest.mark.parametrize("bad", [1, 0, None, "yes", np.float64(1.0)])
def test_bad_bf16_flag_raises_naming_it(bad):
    with pytest.raises(ValueError, match="bf16_supported"):
        decode_dtype(bad)
    with pytest.raises(ValueError, match="bf16_supported"):
        chapter_plans(80_000_000_000, bad)


def test_numpy_integers_are_accepted():
    assert chapter_plans(np.int64(80_000_000_000), True) == chapter_plans(80_000_000_000, True)


def test_bad_sizes_and_names_raise():
    with pytest.raises(ValueError, match=r"n_heads=32 must be divisible by G=3 \(valid: \[1, 2, 4, 8, 16, 32\]\)"):
        attention_peak_bytes(1, 32, 128, 64, 2, [3])
    with pytest.raises(ValueError, match="unknown implementation 'flash'"):
        attention_peak_bytes(1, 32, 128, 64, 2, None, ["flash"])
    with pytest.raises(ValueError, match="context"):
        attention_peak_bytes(1, 32, 128, 0, 2)
    with pytest.raises(ValueError, match="batch_size"):
        model_peak_bytes(4096, 4, 4096, 2.0, 1024, 2)
    with pytest.raises(ValueError, match="dtype"):
        gpu_plan.element_bytes("int8")
    with pytest.raises(ValueError, match="fraction"):
        gpu_plan.budget_bytes(10**9, 1.5)


def test_describe_plans_is_a_table_with_every_plan():
    for name in ("T4", "A100 80GB"):
        plans = chapter_plans(*DEVICES[name])
        text = describe_plans(plans)
        lines = text.splitlines()
        assert lines[0].startswith(f"Free GPU memory {DEVICES[name][0] / GiB:.2f} GiB")
        assert "| chapter | what | sizes | dtype | device | peak GiB |" in lines
        rows = [line for line in lines if line.startswith("| ") and not line.startswith("| chapter")]
        assert len(rows) == len(plans)
        for row, plan in zip(rows, plans.values()):
            assert row.endswith(f"| {plan['peak_bytes'] / GiB:.3f} |") and plan["sizes"] in row
    with pytest.raises(ValueError, match="plans"):
        describe_plans({})


def test_device_plans_refuses_a_cpu():
    with pytest.raises(ValueError, match="cpu"):
        gpu_plan.device_plans("cpu")


# ----------------------------------------------------------------------------- formulas against real tensors


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("spare", [0, 24])
def test_attention_parts_equal_the_benchmarks_tensors(dtype, spare):
    """q, K, V built as bench_attention_decode builds them, one G at a time, on CPU in the plan's dtype."""
    B, H, D, T = 2, 8, 16, 256
    torch_dtype = getattr(torch, dtype)
    e = gpu_plan.element_bytes(dtype)
    per_g = []
    for g in bench.divisors(H):
        q = torch.randn(B, H, 1, D).to("cpu", torch_dtype)
        k = torch.randn(B, g, T + spare, D).to("cpu", torch_dtype)
        v = torch.randn(B, g, T + spare, D).to("cpu", torch_dtype)
        parts = attention_parts(B, H, g, D, T, e, gpu_plan.CH5_IMPLEMENTATIONS, spare, workspace_bytes=CPU_WORKSPACE)
        assert q.nbytes == parts["q"] and k.nbytes + v.nbytes == parts["k_v"]
        k_read, v_read = k[:, :, :T], v[:, :, :T]  # what the benchmark times: a slice when spare > 0
        for impl in gpu_plan.CH5_IMPLEMENTATIONS:
            fn = bench.BENCH_IMPLEMENTATIONS[impl]
            call = gpu_plan.attention_call_bytes(impl, B, H, g, T, D, e, workspace_bytes=CPU_WORKSPACE)
            measured = peak_allocated(lambda: fn(q, k_read, v_read, causal=True))
            assert measured <= call, (g, impl, measured, call)
            with sdpa_kernel(SDPBackend.MATH):  # the worst case: no fused kernel at all
                call_math = gpu_plan.attention_call_bytes(impl, B, H, g, T, D, e, math_sdpa=True,
                                                          workspace_bytes=CPU_WORKSPACE)
                measured_math = peak_allocated(lambda: fn(q, k_read, v_read, causal=True))
            assert measured_math <= call_math, (g, impl, "math", measured_math, call_math)
        per_g.append(sum(parts.values()))
    assert attention_peak_bytes(B, H, D, T, e, None, gpu_plan.CH5_IMPLEMENTATIONS, spare,
                                workspace_bytes=CPU_WORKSPACE) == max(per_g)


def test_sdpa_math_copies_are_counted_as_measured():
    """On a T4, SDPA with enable_gqa and G < H runs the math backend: fp32 K/V, repeated, and a scaled K."""
    B, H, G, D, T = 2, 8, 2, 16, 512
    q, k = torch.randn(B, H, 1, D, dtype=torch.float16), torch.randn(B, G, T, D, dtype=torch.float16)
    with sdpa_kernel(SDPBackend.MATH):
        measured = peak_allocated(lambda: bench.BENCH_IMPLEMENTATIONS["sdpa"](q, k, k, causal=True))
    copies = gpu_plan._math_sdpa_bytes(B, H, G, T, D, 2)
    assert copies == B * T * D * 4 * (2 * G + 2 * H + H)
    assert copies <= measured <= gpu_plan.attention_call_bytes("sdpa", B, H, G, T, D, 2, workspace_bytes=0)


def test_transformer_parameters_match_the_model():
    for d, L, H, G, F, V, T in [(128, 2, 8, 8, 512, 64, 128), (64, 3, 4, 1, 96, 50, 33), (256, 1, 8, 2, 256, 256, 80)]:
        config = TransformerConfig(vocab_size=V, max_seq_len=T, d_model=d, n_layers=L, n_heads=H, n_kv_heads=G, d_ff=F)
        assert gpu_plan.transformer_parameters(V, d, L, H, G, F) == TransformerLM(config).num_parameters()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("impl", ["grouped", "sdpa", "repeat_kv"])
def test_model_parts_equal_decode_step_model(dtype, impl):
    """The setup bench_model_decode times, built on CPU in the plan's dtype, for every G."""
    d, L, F, H, B, C, V = 128, 2, 256, 8, 3, 200, 256
    e = gpu_plan.element_bytes(dtype)
    sums = []
    for g in bench.divisors(H):
        config = TransformerConfig(vocab_size=V, max_seq_len=C + 64, d_model=d, n_layers=L, n_heads=H, n_kv_heads=g,
                                   d_ff=F, attn_impl=impl)
        model, cache, step = bench.decode_step_model(config, B, C, getattr(torch, dtype), "cpu")
        parts = model_parts(d, L, F, B, C, e, H, g, V, 64, (impl,), workspace_bytes=CPU_WORKSPACE)
        assert model.num_parameters() * e == sum(p.nbytes for p in model.parameters()) == parts["weights"]
        assert cache.nbytes == parts["cache"]
        assert peak_allocated(step) <= parts["activations"], (g, impl)
        with sdpa_kernel(SDPBackend.MATH):
            math_parts = model_parts(d, L, F, B, C, e, H, g, V, 64, (impl,), math_sdpa=True,
                                     workspace_bytes=CPU_WORKSPACE)
            assert peak_allocated(step) <= math_parts["activations"], (g, impl, "math")
        sums.append(sum(parts.values()))
    assert model_peak_bytes(d, L, F, B, C, e, H, None, V, 64, (impl,), workspace_bytes=CPU_WORKSPACE) == max(sums)
    if impl == "grouped":  # no K/V copies: the MHA model and cache are the largest
        assert max(sums) == sums[-1]


def test_explorer_formula_is_the_widgets_guard():
    from gqa_lib.presets import PRESETS
    from gqa_lib.viz.widgets import _memory_needed

    preset = PRESETS["Llama 2 7B"]
    for batch, context, elem in [(1, 8192, 4), (1, 8192, 2), (4, 256, 2), (64, 32768, 4)]:
        assert gpu_plan.explorer_peak_bytes(batch, context, elem) == _memory_needed(preset, batch, context, elem)


def test_training_bounds_hold_on_cpu():
    """Chapters 6-7 train and evaluate the toy model on the CPU: their stated peaks bound a measured step."""
    import torch.nn.functional as F

    from gqa_lib.recipe.convert import convert_to_gqa
    from gqa_lib.recipe.experiments import SETUP
    from gqa_lib.recipe.train import evaluate

    corpus = SETUP.make_corpus()
    model = convert_to_gqa(TransformerLM(SETUP.model), 1, "mean")
    optimizer = torch.optim.AdamW(model.parameters())
    x = corpus.sample_batch(SETUP.recipe.batch_size, torch.Generator().manual_seed(0))

    def train_step():
        logits = model(x)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    plans = chapter_plans(*DEVICES["T4"])
    state = sum(p.nbytes for p in model.parameters())
    assert peak_allocated(train_step) + 4 * state <= plans["ch7_uptrain"]["peak_bytes"]
    assert peak_allocated(lambda: evaluate(model, corpus)) + 4 * state <= plans["ch6_eval"]["peak_bytes"]


def test_constants_mirror_the_library_and_chapters():
    from gqa_lib.recipe.experiments import SETUP
    from gqa_lib.speed.timing import streaming_read_bandwidth
    from gqa_lib.viz.widgets import CONTEXTS, SPARE_POSITIONS

    model = asdict(SETUP.model)
    assert {k: model[k] for k in gpu_plan.TOY_MODEL} == gpu_plan.TOY_MODEL
    assert SETUP.recipe.batch_size == gpu_plan.TOY_TRAIN_BATCH and len(SETUP.seeds) == gpu_plan.TOY_SEEDS
    assert inspect.signature(__import__("gqa_lib.recipe.train", fromlist=["evaluate"]).evaluate).parameters[
        "batch_size"].default == gpu_plan.TOY_EVAL_BATCH
    assert gpu_plan.CH8_MODEL["n_heads"] == SETUP.model.n_heads and gpu_plan.CH8_MODEL["groups"] == SETUP.groups
    assert {k: gpu_plan.CH8_MODEL[k] for k in ("d_model", "n_layers", "d_ff", "vocab_size")} == {
        k: model[k] for k in ("d_model", "n_layers", "d_ff", "vocab_size")}
    assert set(gpu_plan.CH5_EXPLORER_CONTEXTS) <= set(CONTEXTS)
    assert gpu_plan.CH5_EXPLORER["spare_positions"] == SPARE_POSITIONS
    default_buffer = inspect.signature(streaming_read_bandwidth).parameters["n_bytes"].default
    assert gpu_plan.CH5_BANDWIDTH_BYTES == default_buffer
    assert set(gpu_plan.CH5_IMPLEMENTATIONS) <= set(bench.BENCH_IMPLEMENTATIONS)
    assert inspect.signature(bench.decode_step_model).parameters["new_tokens"].default == 64
