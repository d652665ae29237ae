"""Head measurements (gqa_lib.recipe.head_similarity), head reordering and similarity grouping (gqa_lib.recipe.convert).

Every measurement is checked against a float64 reference written here from
its formula, and against the cases where its value is known exactly
(identical, negated, rotated, orthogonal heads). The grouping search is
compared with brute force over all permutations; reordering heads and
pooling identical heads are checked to leave a model's function unchanged.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.model import TransformerConfig, TransformerLM
from gqa_lib.core.rope import apply_rope, rope_cos_sin
from gqa_lib.recipe.convert import convert_to_gqa, permute_heads
from gqa_lib.recipe.head_similarity import (
    attention_maps,
    cosine_matrix,
    head_projections,
    linear_cka_matrix,
    mean_pooling_error,
    pooled_norm_ratio,
    pooling_distance,
    similar_head_order,
    weight_cosine_matrix,
)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _heads(seed: int, heads: int = 4, n: int = 30, d: int = 6) -> torch.Tensor:
    return torch.randn(heads, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # (d, d), Q^T Q = I


def _model(n_heads=4, n_kv_heads=4, n_layers=2, d_model=16, seed=0, dtype=torch.float64, vocab=21, T=12):
    torch.manual_seed(seed)
    config = TransformerConfig(vocab_size=vocab, max_seq_len=T, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                               n_kv_heads=n_kv_heads, d_ff=24)
    model = TransformerLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype).eval()


def _tokens(model: TransformerLM, batch: int = 3, seed: int = 1) -> torch.Tensor:
    c = model.config
    return torch.randint(0, c.vocab_size, (batch, c.max_seq_len), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# float64 references, written from the formulas
# --------------------------------------------------------------------------------------------


def ref_cosine(x):
    H = x.shape[0]
    flat = [x[h].reshape(-1).double() for h in range(H)]
    return torch.tensor([[float(a @ b) / (float(a.norm()) * float(b.norm())) for b in flat] for a in flat],
                        dtype=torch.float64)


def ref_cka(x):
    H = x.shape[0]
    cen = [(x[h] - x[h].mean(dim=0)).double() for h in range(H)]  # (N, D), centred over tokens

    def hsic(a, b):
        return float(torch.linalg.matrix_norm(b.T @ a) ** 2)

    return torch.tensor([[hsic(a, b) / math.sqrt(hsic(a, a) * hsic(b, b)) for b in cen] for a in cen],
                        dtype=torch.float64)


def ref_pooling_distance(x):
    H = x.shape[0]
    mean_sq = sum(float(x[h].double().pow(2).sum()) for h in range(H)) / H
    return torch.tensor([[float((x[i] - x[j]).double().pow(2).sum()) / mean_sq for j in range(H)] for i in range(H)],
                        dtype=torch.float64)


def ref_mean_pooling_error(x, n_groups, order):
    R = len(order) // n_groups
    lost = 0.0
    for g in range(n_groups):
        members = [x[h].double() for h in order[g * R : (g + 1) * R]]
        mean = sum(members) / R
        lost += sum(float((m - mean).pow(2).sum()) for m in members)
    return lost / float(x.double().pow(2).sum())


def ref_pooled_norm_ratio(x, n_groups, order):
    R = len(order) // n_groups
    pooled = [sum(x[h].double() for h in order[g * R : (g + 1) * R]) / R for g in range(n_groups)]
    pooled_ms = sum(float(p.pow(2).sum()) for p in pooled) / (n_groups * x[0].numel())
    return math.sqrt(pooled_ms / (float(x.double().pow(2).sum()) / x.numel()))


def group_cost(distance, order, n_groups):
    R = len(order) // n_groups
    return sum(float(distance[i, j]) for g in range(n_groups)
               for i, j in itertools.combinations(order[g * R : (g + 1) * R], 2))


# --------------------------------------------------------------------------------------------
# head_projections
# --------------------------------------------------------------------------------------------


def test_head_projections_are_each_heads_q_k_v_before_rope():
    model = _model(n_heads=4, n_kv_heads=2, n_layers=2)
    tokens = _tokens(model, batch=5)
    inputs = {}
    hooks = [layer.self_attn.register_forward_hook(lambda mod, args, out, i=i: inputs.__setitem__(i, args[0]))
             for i, layer in enumerate(model.layers)]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    got = head_projections(model, tokens, batch_size=2)  # batches of 2, 2, 1 sequences
    assert len(got) == 2
    N, D = 5 * 12, 4
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        for name, heads in (("q", 4), ("k", 2), ("v", 2)):
            with torch.no_grad():
                out = getattr(attn, f"{name}_proj")(inputs[i])  # (B, T, heads*D)
            expected = torch.stack([out[..., h * D : (h + 1) * D].reshape(N, D) for h in range(heads)])
            assert got[i][name].dtype == torch.float64 and got[i][name].shape == (heads, N, D)
            torch.testing.assert_close(got[i][name], expected.double(), rtol=0, atol=1e-12)
    assert model.training is False


# --------------------------------------------------------------------------------------------
# cosine, CKA, weight cosine
# --------------------------------------------------------------------------------------------


@settings(max_examples=30, **SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), heads=st.integers(1, 5), n=st.integers(2, 40), d=st.integers(1, 6))
def test_cosine_and_cka_equal_their_references(seed, heads, n, d):
    x = _heads(seed, heads, n, d)
    torch.testing.assert_close(cosine_matrix(x), ref_cosine(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(linear_cka_matrix(x), ref_cka(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(cosine_matrix(x).diagonal(), torch.ones(heads, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(linear_cka_matrix(x).diagonal(), torch.ones(heads, dtype=torch.float64), rtol=0,
                               atol=1e-12)


@settings(max_examples=30, **SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 8), scale=st.floats(1e-3, 1e3), shift=st.floats(-5, 5))
def test_cka_is_one_for_a_rotated_scaled_copy_where_cosine_is_not(seed, d, scale, shift):
    base = _heads(seed, 1, 50, d)[0]  # (N, D)
    rotation = _orthogonal(d, seed + 1)
    x = torch.stack([base, base @ rotation, scale * base, scale * (base @ rotation) + shift, -base])
    cka = linear_cka_matrix(x)
    torch.testing.assert_close(cka, torch.ones(5, 5, dtype=torch.float64), rtol=0, atol=1e-9)
    cos = cosine_matrix(x)
    assert cos[0, 2] == pytest.approx(1.0, abs=1e-12)  # a positive multiple: cosine 1 too
    assert cos[0, 4] == pytest.approx(-1.0, abs=1e-12)  # negated head: cosine -1, CKA 1


def test_cosine_is_minus_one_for_a_negated_head_and_unrelated_heads_score_near_zero():
    x = _heads(0, 2, 5000, 4)
    x = torch.cat([x, -x[:1], 3 * x[:1]])  # heads 2 = -head 0, 3 = 3 * head 0
    cos = cosine_matrix(x)
    assert cos[0, 2] == pytest.approx(-1.0, abs=1e-12)
    assert cos[0, 3] == pytest.approx(1.0, abs=1e-12)
    assert abs(float(cos[0, 1])) < 0.05  # independent random heads
    assert abs(float(linear_cka_matrix(x)[0, 1])) < 0.05
    torch.testing.assert_close(cos, cos.T, rtol=0, atol=0)


def test_weight_cosine_matrix_compares_the_head_blocks_of_a_projection():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4 * 3, 10, generator=g, dtype=torch.float64)  # 4 heads of D = 3
    w[6:9] = -2 * w[0:3]  # head 2 = -2 * head 0
    got = weight_cosine_matrix(w, 4)
    blocks = [w[h * 3 : (h + 1) * 3].reshape(-1) for h in range(4)]
    expected = torch.tensor([[float(a @ b / (a.norm() * b.norm())) for b in blocks] for a in blocks], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got[0, 2] == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(ValueError, match="n_heads=5"):
        weight_cosine_matrix(w, 5)


@pytest.mark.parametrize("fn", [cosine_matrix, linear_cka_matrix, pooling_distance])
def test_measurements_refuse_a_tensor_that_is_not_heads_tokens_dims(fn):
    for bad in (torch.zeros(3, 4), torch.zeros(0, 3, 2), [[[1.0]]]):
        with pytest.raises(ValueError, match="heads, N, D"):
            fn(bad)


# --------------------------------------------------------------------------------------------
# pooling distance, pooling error, pooled norm
# --------------------------------------------------------------------------------------------


@settings(max_examples=30, **SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), groups=st.sampled_from([(4, 1), (4, 2), (4, 4), (6, 2), (6, 3)]),
       data=st.data())
def test_pooling_measures_equal_their_references(seed, groups, data):
    H, G = groups
    x = _heads(seed, H, 20, 4) * torch.rand(H, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    order = data.draw(st.permutations(range(H)))
    torch.testing.assert_close(pooling_distance(x), ref_pooling_distance(x), rtol=1e-10, atol=1e-12)
    assert mean_pooling_error(x, G, order) == pytest.approx(ref_mean_pooling_error(x, G, order), rel=1e-10, abs=1e-14)
    assert pooled_norm_ratio(x, G, order) == pytest.approx(ref_pooled_norm_ratio(x, G, order), rel=1e-10)
    assert mean_pooling_error(x, G) == pytest.approx(ref_mean_pooling_error(x, G, list(range(H))), rel=1e-10, abs=1e-14)
    # the pooling error of a group is its within-group distances summed, over R, in units of the mean square norm
    R, d = H // G, ref_pooling_distance(x)
    expected = group_cost(d, order, G) / R / H
    assert mean_pooling_error(x, G, order) == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_pooling_distance_by_hand():
    x = torch.zeros(3, 1, 2, dtype=torch.float64)
    x[0, 0] = torch.tensor([1.0, 0.0])
    x[1, 0] = torch.tensor([0.0, 2.0])
    x[2, 0] = torch.tensor([1.0, 0.0])
    # squared norms 1, 4, 1: mean 2; ||x0 - x1||^2 = 5
    expected = torch.tensor([[0, 2.5, 0], [2.5, 0, 2.5], [0, 2.5, 0]], dtype=torch.float64)
    torch.testing.assert_close(pooling_distance(x), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("R", [2, 3, 4, 8])
@pytest.mark.parametrize("G", [1, 2])
def test_pooling_orthogonal_equal_norm_heads_loses_one_minus_one_over_r(R, G):
    H, N, D = R * G, 7, 5
    basis, _ = torch.linalg.qr(torch.randn(N * D, H, generator=torch.Generator().manual_seed(R), dtype=torch.float64))
    x = 3.0 * basis.T.reshape(H, N, D)  # orthogonal (flattened) heads of equal norm
    assert mean_pooling_error(x, G) == pytest.approx(1 - 1 / R, abs=1e-12)
    assert pooled_norm_ratio(x, G) == pytest.approx(1 / math.sqrt(R), abs=1e-12)
    torch.testing.assert_close(pooling_distance(x), 2 * (1 - torch.eye(H, dtype=torch.float64)), rtol=0, atol=1e-12)
    same = x[:G].repeat_interleave(R, dim=0)  # each group: R copies of one head
    assert mean_pooling_error(same, G) == pytest.approx(0.0, abs=1e-15)  # the mean of R equal numbers: to 1 ulp
    assert pooled_norm_ratio(same, G) == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("R", [2, 4, 8])
def test_pooled_norm_of_independent_random_heads_is_about_one_over_sqrt_r(R):
    x = _heads(R, R, 4000, 8)  # large N: independent heads are nearly orthogonal
    assert pooled_norm_ratio(x, 1) == pytest.approx(1 / math.sqrt(R), rel=0.03)
    assert mean_pooling_error(x, 1) == pytest.approx(1 - 1 / R, abs=0.02)


def test_pooling_measures_refuse_groups_that_do_not_split_the_heads():
    x = _heads(0, 6, 5, 2)
    with pytest.raises(ValueError, match="n_groups=4"):
        mean_pooling_error(x, 4)
    with pytest.raises(ValueError, match="n_groups=4"):
        pooled_norm_ratio(x, 4)


# --------------------------------------------------------------------------------------------
# similar_head_order
# --------------------------------------------------------------------------------------------


def _random_distance(seed: int, H: int) -> torch.Tensor:
    points = torch.randn(H, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.cdist(points, points).pow(2)  # symmetric, zero diagonal


@settings(max_examples=25, **SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), G=st.sampled_from([3, 2]))
def test_similar_head_order_is_optimal_against_brute_force(seed, G):
    H = 6  # G = 3: groups of 2; G = 2: groups of 3
    d = _random_distance(seed, H)
    order = similar_head_order(d, G)
    assert sorted(order) == list(range(H))
    best = min(group_cost(d, list(p), G) for p in itertools.permutations(range(H)))
    assert group_cost(d, order, G) == pytest.approx(best, rel=1e-12, abs=1e-12)
    R = H // G
    groups = [order[g * R : (g + 1) * R] for g in range(G)]
    assert all(g == sorted(g) for g in groups)  # heads in increasing order within a group
    assert [g[0] for g in groups] == sorted(g[0] for g in groups)  # groups listed by their smallest head
    assert groups[0][0] == 0


def test_similar_head_order_finds_planted_groups():
    planted = [[0, 5], [1, 3], [2, 4]]
    d = torch.ones(6, 6, dtype=torch.float64) - torch.eye(6, dtype=torch.float64)
    for a, b in planted:
        d[a, b] = d[b, a] = 0.0
    assert similar_head_order(d, 3) == [0, 5, 1, 3, 2, 4]
    assert similar_head_order(d, 6) == list(range(6))  # groups of one: nothing to pool
    assert sorted(similar_head_order(d, 1)) == list(range(6))


@pytest.mark.parametrize("G", [8, 4])
def test_similar_head_order_is_greedy_for_many_heads_and_returns_a_permutation(G, monkeypatch):
    from gqa_lib.recipe import head_similarity

    def no_exhaustive_search(*args):
        raise AssertionError("the exhaustive search was used")

    monkeypatch.setattr(head_similarity, "_partitions", no_exhaustive_search)
    H = 16  # groups of 2: 2,027,025 partitions; groups of 4: 2,627,625; beyond the exhaustive limit
    d = _random_distance(0, H)
    order = similar_head_order(d, G)
    assert sorted(order) == list(range(H))
    # planted pairs (h, h + 8) at distance 0 are found by the greedy search too
    planted = torch.ones(H, H, dtype=torch.float64) - torch.eye(H, dtype=torch.float64)
    for h in range(8):
        planted[h, h + 8] = planted[h + 8, h] = 0.0
    if G == 8:
        assert similar_head_order(planted, 8) == [h for p in range(8) for h in (p, p + 8)]


def test_similar_head_order_refuses_bad_input():
    with pytest.raises(ValueError, match="square"):
        similar_head_order(torch.zeros(4, 3), 2)
    with pytest.raises(ValueError, match="n_groups=3"):
        similar_head_order(torch.zeros(4, 4), 3)
    with pytest.raises(ValueError, match="n_groups"):
        similar_head_order(torch.zeros(4, 4), 0)


# --------------------------------------------------------------------------------------------
# permute_heads
# --------------------------------------------------------------------------------------------


@settings(max_examples=15, **SETTINGS)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_permute_heads_preserves_the_model_exactly(data, seed):
    model = _model(n_heads=4, n_kv_heads=4, n_layers=3, seed=seed % 1000)
    tokens = _tokens(model, batch=2, seed=seed)
    with torch.no_grad():
        before = model(tokens)
    originals = [{n: p.detach().clone() for n, p in layer.self_attn.named_parameters()} for layer in model.layers]
    orders = [data.draw(st.permutations(range(4))) for _ in model.layers]
    for layer, order in zip(model.layers, orders):
        permute_heads(layer.self_attn, order)
    with torch.no_grad():
        after = model(tokens)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)
    D = 4
    for layer, order, old in zip(model.layers, orders, originals):
        attn = layer.self_attn
        for i, h in enumerate(order):  # new head i is old head order[i]
            for name in ("q_proj", "k_proj", "v_proj"):
                assert torch.equal(getattr(attn, name).weight[i * D : (i + 1) * D],
                                   old[f"{name}.weight"][h * D : (h + 1) * D])
            assert torch.equal(attn.o_proj.weight[:, i * D : (i + 1) * D], old["o_proj.weight"][:, h * D : (h + 1) * D])


def test_permute_heads_moves_biases_too():
    torch.manual_seed(0)
    attn = GroupedQueryAttention(12, 3, 3, bias=True).double().eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(5), 4, dtype=torch.float64)
    with torch.no_grad():
        before = attn(x, position_embeddings=(cos, sin))
        permute_heads(attn, [2, 0, 1])
        torch.testing.assert_close(attn(x, position_embeddings=(cos, sin)), before, rtol=0, atol=1e-12)


def test_permute_heads_refuses_a_gqa_layer_and_a_non_permutation():
    with pytest.raises(ValueError, match="n_kv_heads=2"):
        permute_heads(GroupedQueryAttention(16, 4, 2), [1, 0, 3, 2])
    attn = GroupedQueryAttention(16, 4, 4)
    before = {n: p.detach().clone() for n, p in attn.named_parameters()}
    for bad in ([0, 1, 2], [0, 1, 2, 2], [0, 1, 2, 4], [1, 2, 3, 4, 0]):
        with pytest.raises(ValueError, match="permutation"):
            permute_heads(attn, bad)
    assert all(torch.equal(p, before[n]) for n, p in attn.named_parameters())  # nothing moved
    with pytest.raises(ValueError, match="GroupedQueryAttention"):
        permute_heads(torch.nn.Linear(4, 4), [0])


# --------------------------------------------------------------------------------------------
# convert_to_gqa(grouping="similar")
# --------------------------------------------------------------------------------------------

PAIRS = {0: [[0, 5], [1, 3], [2, 4]], 1: [[0, 2], [1, 4], [3, 5]]}  # per layer: heads with identical K and V


def _model_with_twin_heads() -> TransformerLM:
    """6 heads per layer; in each layer the heads of each pair of PAIRS share their K and V projections."""
    model = _model(n_heads=6, n_kv_heads=6, n_layers=2, d_model=24, seed=3)
    D = 4
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for a, b in PAIRS[i]:
                for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.weight[b * D : (b + 1) * D] = proj.weight[a * D : (a + 1) * D]
    return model


@pytest.mark.parametrize("method", ["mean", "first"])
def test_similar_grouping_pools_identical_heads_and_loses_nothing(method):
    model = _model_with_twin_heads()
    tokens = _tokens(model, batch=4, seed=5)
    calibration = _tokens(model, batch=6, seed=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(tokens)
    converted = convert_to_gqa(model, 3, method, grouping="similar", calibration=calibration)
    assert converted.config.n_kv_heads == 3
    for i, layer in enumerate(converted.layers):
        assert layer.self_attn.head_order == [h for pair in PAIRS[i] for h in pair]
        assert layer.self_attn.n_kv_heads == 3 and layer.self_attn.k_proj.out_features == 12
    with torch.no_grad():
        after = converted(tokens)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)  # pooling identical heads loses nothing
    contiguous = convert_to_gqa(model, 3, method)  # pools (0, 1), (2, 3), (4, 5): different heads
    with torch.no_grad():
        assert (contiguous(tokens) - before).abs().max() > 1e-3
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the original is untouched


def test_similar_grouping_at_g_equal_h_is_the_model_itself():
    model = _model(n_heads=4, n_kv_heads=4, n_layers=2)
    tokens = _tokens(model)
    converted = convert_to_gqa(model, 4, "mean", grouping="similar", calibration=tokens)
    with torch.no_grad():
        torch.testing.assert_close(converted(tokens), model(tokens), rtol=0, atol=1e-12)


def test_similar_grouping_refusals():
    model = _model(n_heads=4, n_kv_heads=4, n_layers=1)
    tokens = _tokens(model)
    with pytest.raises(ValueError, match="random"):
        convert_to_gqa(model, 2, "random", grouping="similar", calibration=tokens)
    with pytest.raises(ValueError, match="calibration"):
        convert_to_gqa(model, 2, "mean", grouping="similar")
    with pytest.raises(ValueError, match="calibration"):
        convert_to_gqa(model, 2, "mean", grouping="contiguous", calibration=tokens)
    with pytest.raises(ValueError, match="grouping"):
        convert_to_gqa(model, 2, "mean", grouping="nearest")
    gqa = convert_to_gqa(model, 2, "mean")
    with pytest.raises(ValueError, match="multi-head"):
        convert_to_gqa(gqa, 1, "mean", grouping="similar", calibration=tokens)


# --------------------------------------------------------------------------------------------
# attention_maps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_attention_maps_are_causal_distributions_that_reproduce_the_attention_output(n_kv_heads):
    model = _model(n_heads=4, n_kv_heads=n_kv_heads, n_layers=2)
    tokens = _tokens(model, batch=2)
    B, T, H, D = 2, 12, 4, 4
    inputs, before_o = {}, {}
    hooks = []
    for i, layer in enumerate(model.layers):
        hooks.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: inputs.__setitem__(i, a[0])))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: before_o.__setitem__(i, a[0])))
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    model.train()
    maps = attention_maps(model, tokens)
    assert model.training  # mode restored
    assert len(maps) == 2
    for i, (w, layer) in enumerate(zip(maps, model.layers)):
        assert w.shape == (B, H, T, T)
        torch.testing.assert_close(w.sum(-1).double(), torch.ones(B, H, T, dtype=torch.float64), rtol=0, atol=1e-6)
        assert (w >= 0).all()
        assert (w.triu(diagonal=1) == 0).all()  # position t never looks ahead
        assert (w[..., torch.ones(T, T, dtype=torch.bool).tril()] > 0).all()  # and at every earlier one, a little
        with torch.no_grad():
            v = layer.self_attn.v_proj(inputs[i]).view(B, T, n_kv_heads, D).transpose(1, 2)  # (B, G, T, D)
        v = v.repeat_interleave(H // n_kv_heads, dim=1)  # query head h reads KV head h // (H/G)
        out = w.double() @ v  # (B, H, T, D)
        expected = before_o[i].view(B, T, H, D).transpose(1, 2)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)  # the maps are float32


def test_attention_maps_equal_a_float64_softmax_reference():
    model = _model(n_heads=4, n_kv_heads=2, n_layers=1)
    tokens = _tokens(model, batch=1)
    proj = head_projections(model, tokens)[0]  # (heads, N, D) before RoPE, N = T here
    cos, sin = rope_cos_sin(torch.arange(12), 4, dtype=torch.float64)
    q = apply_rope(proj["q"], cos, sin)  # (H, T, D)
    k = apply_rope(proj["k"], cos, sin).repeat_interleave(2, dim=0)  # (H, T, D)
    scores = q @ k.transpose(-2, -1) / 2.0  # sqrt(D) = 2
    scores = scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
    expected = torch.softmax(scores, dim=-1)
    torch.testing.assert_close(attention_maps(model, tokens)[0][0].double(), expected, rtol=0, atol=1e-6)
