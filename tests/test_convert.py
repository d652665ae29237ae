"""Multi-head -> grouped-query checkpoint conversion (gqa_lib.recipe.convert)."""

import pytest
import torch

from gqa_lib import GroupedQueryAttention, TransformerConfig, TransformerLM
from gqa_lib.recipe.convert import convert_to_gqa, pool_heads

H, D_MODEL = 8, 32
D = D_MODEL // H


def random_mha(seed=0, bias=False):
    """A multi-head model with weights far from the tiny init, so heads differ clearly."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=37, max_seq_len=16, d_model=D_MODEL, n_layers=2, n_heads=H, n_kv_heads=H, d_ff=64, bias=bias)
    model = TransformerLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def reference_pool(weight, n_groups, method):
    """Independent reference: loop over groups and the heads inside each group."""
    R = H // n_groups
    out = []
    for g in range(n_groups):
        heads = [weight[h * D : (h + 1) * D] for h in range(g * R, (g + 1) * R)]
        if method == "mean":
            acc = torch.zeros_like(heads[0])
            for w in heads:
                acc = acc + w
            out.append(acc / R)
        else:
            out.append(heads[0])
    return torch.cat(out, dim=0)


def attn_layers(model):
    return [m for m in model.modules() if isinstance(m, GroupedQueryAttention)]


def tokens(seed=1):
    return torch.randint(0, 37, (3, 16), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["mean", "first"])
@pytest.mark.parametrize("G", [1, 2, 4, 8])
def test_pooled_kv_equal_reference_loop(G, method):
    model = random_mha(bias=True)
    new = convert_to_gqa(model, G, method=method)
    for old_attn, new_attn in zip(attn_layers(model), attn_layers(new)):
        assert new_attn.n_kv_heads == G
        for name in ("k_proj", "v_proj"):
            old, got = getattr(old_attn, name), getattr(new_attn, name)
            assert got.weight.shape == (G * D, D_MODEL)
            torch.testing.assert_close(got.weight, reference_pool(old.weight, G, method), rtol=0, atol=1e-7)
            torch.testing.assert_close(got.bias, reference_pool(old.bias, G, method), rtol=0, atol=1e-7)


def test_pool_heads_is_contiguous_not_strided():
    w = torch.arange(4.0).reshape(4, 1)  # 4 heads of dim 1: rows 0, 1, 2, 3
    assert pool_heads(w, 4, 2, "mean").flatten().tolist() == [0.5, 2.5]  # groups {0,1}, {2,3}
    assert pool_heads(w, 4, 2, "first").flatten().tolist() == [0.0, 2.0]
    # a strided grouping {0,2}, {1,3} would have given [1.0, 2.0] and [0.0, 1.0]


def make_groups_identical(model, G):
    """Copy the first head of each contiguous group onto the other heads of that group (K and V)."""
    R = H // G
    with torch.no_grad():
        for attn in attn_layers(model):
            for proj in (attn.k_proj, attn.v_proj):
                w = proj.weight.view(G, R, D, D_MODEL)
                w[:] = w[:, :1]
    return model


@pytest.mark.parametrize("method", ["mean", "first"])
@pytest.mark.parametrize("G", [1, 2, 4])
def test_identical_heads_in_each_group_reproduce_mha_logits(G, method):
    model = make_groups_identical(random_mha(), G)
    x = tokens()
    with torch.no_grad():
        expected = model(x)
        got = convert_to_gqa(model, G, method=method)(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_strided_grouping_would_not_reproduce_the_logits():
    """The test above has teeth: pooling strided heads (0, G, 2G, ...) changes the logits."""
    G = 2
    model = make_groups_identical(random_mha(), G)
    x = tokens()
    strided = convert_to_gqa(model, G, method="first")
    with torch.no_grad():
        for old, new in zip(attn_layers(model), attn_layers(strided)):
            for name in ("k_proj", "v_proj"):
                w = getattr(old, name).weight.view(H, D, D_MODEL)
                # strided groups: group g = heads g, g + G, g + 2G, ...
                getattr(new, name).weight.copy_(w.view(H // G, G, D, D_MODEL).mean(0).reshape(G * D, D_MODEL))
        assert (strided(x) - model(x)).abs().max() > 1e-2


def test_mha_conversion_to_h_heads_is_an_exact_copy():
    model = random_mha()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(convert_to_gqa(model, H)(x), model(x), rtol=0, atol=0)


def test_original_untouched_and_other_weights_copied():
    model = random_mha()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = convert_to_gqa(model, 2, method="random", seed=3)
    assert model.config.n_kv_heads == H and new.config.n_kv_heads == 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    new_sd = new.state_dict()
    for k, v in before.items():
        if ".k_proj." in k or ".v_proj." in k:
            assert new_sd[k].shape[0] == 2 * D
        else:
            torch.testing.assert_close(new_sd[k], v, rtol=0, atol=0)
    # no shared storage: training the copy cannot change the original
    with torch.no_grad():
        for p in new.parameters():
            p.add_(1.0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert new.new_cache(1).n_kv_heads == 2


def test_random_method_is_seeded_and_reinitialises():
    model = random_mha()
    a = convert_to_gqa(model, 2, method="random", seed=0)
    b = convert_to_gqa(model, 2, method="random", seed=0)
    c = convert_to_gqa(model, 2, method="random", seed=1)
    mean = convert_to_gqa(model, 2, method="mean")
    ka, kb, kc, km = (attn_layers(m)[0].k_proj.weight for m in (a, b, c, mean))
    torch.testing.assert_close(ka, kb, rtol=0, atol=0)
    assert not torch.equal(ka, kc)
    assert not torch.allclose(ka, km, atol=1e-3)
    assert 0.01 < float(ka.detach().std()) < 0.03  # the model's init scale (std 0.02), not the trained weights


@pytest.mark.parametrize("bad", [0, -1, 3, 5, 16, 9])
def test_wrong_n_kv_heads_raises_naming_the_value(bad):
    with pytest.raises(ValueError, match=f"n_kv_heads={bad}"):
        convert_to_gqa(random_mha(), bad)


def test_unknown_method_raises():
    with pytest.raises(ValueError, match="'median'"):
        convert_to_gqa(random_mha(), 2, method="median")


def test_gqa_checkpoint_can_be_pooled_further():
    model = convert_to_gqa(random_mha(), 4)
    twice = convert_to_gqa(model, 2)
    once = convert_to_gqa(random_mha(), 2)
    for a, b in zip(attn_layers(twice), attn_layers(once)):
        torch.testing.assert_close(a.k_proj.weight, b.k_proj.weight, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="n_kv_heads=8"):
        convert_to_gqa(model, 8)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), 2.0, True, "2", [2]])
def test_n_kv_heads_that_is_not_an_integer_raises_naming_it(bad):
    with pytest.raises(ValueError, match="n_kv_heads"):
        convert_to_gqa(random_mha(), bad)


def test_numpy_integer_n_kv_heads_is_accepted():
    import numpy as np

    model = random_mha()
    got = convert_to_gqa(model, np.int64(2))
    assert got.config.n_kv_heads == 2 and type(got.config.n_kv_heads) is int


@pytest.mark.parametrize("method", ["mean", "first", "random"])
def test_frozen_model_stays_frozen_and_keeps_its_mode(method):
    model = random_mha(bias=True)
    model.requires_grad_(False)
    new = convert_to_gqa(model, 2, method=method)
    assert not any(p.requires_grad for p in new.parameters())
    assert not any(m.training for m in new.modules())  # random_mha() is in eval mode; so are the new K/V layers


def test_requires_grad_is_kept_parameter_by_parameter():
    model = random_mha(bias=True)
    first = attn_layers(model)[0]
    first.k_proj.weight.requires_grad_(False)
    first.v_proj.bias.requires_grad_(False)
    model.model.embed_tokens.weight.requires_grad_(False)
    new = convert_to_gqa(model, 4)
    expected = {name: p.requires_grad for name, p in model.named_parameters()}
    assert {name: p.requires_grad for name, p in new.named_parameters()} == expected
    assert not expected["model.layers.0.self_attn.k_proj.weight"] and expected["model.layers.0.self_attn.k_proj.bias"]


@pytest.mark.parametrize("bad", [-1, 1.5, None, True])
def test_bad_seed_raises_naming_it(bad):
    with pytest.raises(ValueError, match="seed"):
        convert_to_gqa(random_mha(), 2, method="random", seed=bad)


def test_not_a_model_raises_naming_it():
    with pytest.raises(ValueError, match="model must be"):
        convert_to_gqa(random_mha().state_dict(), 2)


@pytest.mark.parametrize("n_heads, n_groups, match", [(0, 1, "n_heads"), (4, 0, "n_groups"), (4.0, 2, "n_heads"), (4, 3, "cannot pool")])
def test_pool_heads_bad_counts_raise_naming_them(n_heads, n_groups, match):
    with pytest.raises(ValueError, match=match):
        pool_heads(torch.zeros(8, 2), n_heads, n_groups, "mean")


def test_pool_heads_refuses_a_scalar_weight():
    with pytest.raises(ValueError, match="weight"):
        pool_heads(torch.tensor(1.0), 1, 1, "mean")
