"""gqa_lib.recipe.hf: Hugging Face Llama checkpoints in and out, held equal to transformers itself (no download)."""

import json

import pytest
import torch

from gqa_lib import TransformerConfig, TransformerLM
from gqa_lib.recipe import hf

transformers = pytest.importorskip("transformers")


def tiny_llama(n_heads=4, n_kv_heads=2, tie=False, seed=0, **extra):
    """A random transformers LlamaForCausalLM, built locally."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads, max_position_embeddings=40, rms_norm_eps=1e-5, tie_word_embeddings=tie,
        **extra,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # away from the tiny init, so that every weight matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


TOKENS = torch.randint(0, 61, (2, 17), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("n_heads, n_kv_heads, tie", [(4, 4, False), (4, 2, True), (4, 1, False), (8, 2, True)])
def test_a_transformers_checkpoint_loads_with_the_same_logits(tmp_path, n_heads, n_kv_heads, tie):
    theirs = tiny_llama(n_heads, n_kv_heads, tie)
    theirs.save_pretrained(tmp_path / "ckpt")
    ours = hf.from_pretrained(tmp_path / "ckpt")
    assert ours.config.n_kv_heads == n_kv_heads and ours.config.tie_word_embeddings == tie
    with torch.no_grad():
        torch.testing.assert_close(ours(TOKENS), theirs(TOKENS).logits, atol=1e-5, rtol=1e-5)


def test_a_sharded_checkpoint_loads_through_its_index(tmp_path):
    theirs = tiny_llama()
    theirs.save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    assert (tmp_path / "ckpt" / hf.INDEX_FILE).exists() and len(list((tmp_path / "ckpt").glob("*.safetensors"))) > 1
    with torch.no_grad():
        torch.testing.assert_close(hf.from_pretrained(tmp_path / "ckpt")(TOKENS), theirs(TOKENS).logits,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_a_saved_model_loads_in_transformers_with_the_same_logits(tmp_path, tie):
    torch.manual_seed(3)
    ours = TransformerLM(TransformerConfig(vocab_size=61, max_seq_len=40, d_model=32, n_layers=2, n_heads=4,
                                           n_kv_heads=2, d_ff=48, tie_word_embeddings=tie)).eval()
    hf.save_pretrained(ours, tmp_path / "out")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(theirs).__name__ == "LlamaForCausalLM" and theirs.config.num_key_value_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(theirs(TOKENS).logits, ours(TOKENS), atol=1e-5, rtol=1e-5)
    again = hf.from_pretrained(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_save_in_bfloat16_and_refuse_to_overwrite(tmp_path):
    ours = TransformerLM(TransformerConfig(vocab_size=61, max_seq_len=40, d_model=32, n_layers=1, n_heads=4,
                                           n_kv_heads=4, d_ff=48))
    folder = hf.save_pretrained(ours, tmp_path / "bf16", dtype=torch.bfloat16)
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
    before = (folder / hf.WEIGHTS_FILE).read_bytes()
    with pytest.raises(ValueError, match="already holds"):
        hf.save_pretrained(ours, folder)
    assert (folder / hf.WEIGHTS_FILE).read_bytes() == before  # nothing overwritten
    assert hf.from_pretrained(folder, dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("change, match", [
    ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"sliding_window": 4096}, "sliding_window=4096"),
    ({"head_dim": 16}, "head_dim=16"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope type 'llama3'"),
])
def test_configs_gqa_lib_cannot_compute_are_refused_naming_the_field(change, match):
    config = hf.config_to_hf(TransformerConfig(vocab_size=61, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48))
    assert hf.config_from_hf(config) == TransformerConfig(vocab_size=61, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48)
    with pytest.raises(ValueError, match=match):
        hf.config_from_hf({**config, **change})


def test_broken_folders_are_value_errors_naming_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        hf.from_pretrained(tmp_path)
    tiny_llama().save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted((tmp_path / "sharded").glob("*.safetensors"))
    shards[0].unlink()
    with pytest.raises(ValueError, match="lacks the shards"):
        hf.from_pretrained(tmp_path / "sharded")
    tiny_llama().save_pretrained(tmp_path / "wrong")
    config = json.loads((tmp_path / "wrong" / "config.json").read_text())
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(ValueError, match="mlp.gate_proj.weight has shape"):
        hf.from_pretrained(tmp_path / "wrong")


def reference_pool(weight, g0, g, method):
    """Independent reference: the rows of each contiguous group of g0 // g heads, averaged or the first kept."""
    d = weight.shape[0] // g0
    heads = [weight[h * d:(h + 1) * d] for h in range(g0)]
    r = g0 // g
    if method == "first":
        return torch.cat([heads[i * r] for i in range(g)])
    return torch.cat([sum(heads[i * r + j].double() for j in range(r)) / r for i in range(g)]).to(weight.dtype)


@pytest.mark.parametrize("n_kv_heads, target, tie, dtype, method", [
    (4, 2, False, torch.float32, "mean"), (4, 1, True, torch.float32, "first"), (8, 4, False, torch.bfloat16, "mean"),
    (8, 1, True, torch.float32, "mean"), (2, 1, False, torch.float32, "first"),
])
def test_convert_checkpoint_equals_an_independent_pooling_in_transformers(tmp_path, n_kv_heads, target, tie, dtype,
                                                                         method):
    theirs = tiny_llama(8, n_kv_heads, tie).to(dtype)
    theirs.save_pretrained(tmp_path / "src", max_shard_size="30KB")
    (tmp_path / "src" / "tokenizer.json").write_text('{"model": "test"}')
    report = hf.convert_checkpoint(tmp_path / "src", tmp_path / "dst", target, method)
    assert report["shards"] > 1 and "tokenizer.json" in report["copied"] and report["peak_rss_growth_bytes"] >= 0
    assert (tmp_path / "dst" / "tokenizer.json").read_text() == '{"model": "test"}'
    assert f"from {n_kv_heads} to {target} heads" in (tmp_path / "dst" / "README.md").read_text()
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert config["num_key_value_heads"] == target
    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dst", dtype=dtype).eval()
    # the reference: a fresh transformers model with the target heads, loaded with explicitly pooled weights
    expected = {}
    for name, tensor in theirs.state_dict().items():
        if ".k_proj." in name or ".v_proj." in name:
            tensor = reference_pool(tensor, n_kv_heads, target, method)
        expected[name] = tensor
    for name, tensor in converted.state_dict().items():
        assert tensor.dtype == dtype, name
        if ".k_proj." in name or ".v_proj." in name:  # pooled (float32 in the library, float64 here): to rounding
            torch.testing.assert_close(tensor, expected[name])
        else:
            assert torch.equal(tensor, expected[name]), name  # every other tensor: unchanged
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**theirs.config.to_dict(),
                                                                            "num_key_value_heads": target}))
    reference.load_state_dict(expected, strict=False)
    reference = reference.to(dtype).eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(TOKENS).logits, reference(TOKENS).logits)
        ours = hf.from_pretrained(tmp_path / "dst", dtype=dtype)
        torch.testing.assert_close(ours(TOKENS).float(), converted(TOKENS).logits.float(), atol=2e-2, rtol=2e-2)


def test_convert_checkpoint_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    tiny_llama(4, 4).save_pretrained(tmp_path / "src")
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide the checkpoint's 4 KV heads"):
        hf.convert_checkpoint(tmp_path / "src", tmp_path / "dst", 3)
    with pytest.raises(ValueError, match="method must be one of"):
        hf.convert_checkpoint(tmp_path / "src", tmp_path / "dst", 2, method="median")
    assert not (tmp_path / "dst").exists() and not (tmp_path / "dst.partial").exists()
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit):
        hf.main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--kv-heads", "2"])
    assert "exists" in capsys.readouterr().err and (tmp_path / "dst" / "mine.txt").read_text() == "keep"
    hf.main(["convert", str(tmp_path / "src"), str(tmp_path / "new"), "--kv-heads", "2", "--method", "random"])
    assert "converted" in capsys.readouterr().out
    weights = hf.from_pretrained(tmp_path / "new").layers[0].self_attn.k_proj.weight.detach()
    assert weights.shape == (2 * 8, 32) and 0.01 < float(weights.std()) < 0.03


@pytest.mark.parametrize("method", ["mean", "first"])
def test_similar_grouping_in_the_cli_equals_convert_to_gqa_in_memory(tmp_path, method, capsys):
    from gqa_lib.recipe.convert import convert_to_gqa

    tiny_llama(8, 8, tie=False, seed=4).save_pretrained(tmp_path / "src", max_shard_size="30KB")
    calibration = torch.randint(0, 61, (6, 12), generator=torch.Generator().manual_seed(5))
    (tmp_path / "calibration.json").write_text(json.dumps(calibration.tolist()))
    hf.main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--kv-heads", "2", "--method", method,
             "--grouping", "similar", "--calibration", str(tmp_path / "calibration.json")])
    assert "converted" in capsys.readouterr().out
    in_memory = convert_to_gqa(hf.from_pretrained(tmp_path / "src"), 2, method, grouping="similar",
                               calibration=calibration)
    orders = [layer.self_attn.head_order for layer in in_memory.layers]
    assert any(order != list(range(8)) for order in orders)  # the heads really were reordered
    assert str(orders) in (tmp_path / "dst" / "README.md").read_text()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dst").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(TOKENS).logits, in_memory(TOKENS), atol=1e-5, rtol=1e-5)


def test_similar_grouping_refuses_what_it_cannot_do(tmp_path, capsys):
    tiny_llama(8, 4).save_pretrained(tmp_path / "gqa")
    tiny_llama(8, 8).save_pretrained(tmp_path / "mha")
    tokens = torch.randint(0, 61, (2, 8))
    with pytest.raises(ValueError, match="multi-head checkpoint"):
        hf.convert_checkpoint(tmp_path / "gqa", tmp_path / "a", 2, grouping="similar", calibration=tokens)
    with pytest.raises(ValueError, match="calibration missing"):
        hf.convert_checkpoint(tmp_path / "mha", tmp_path / "b", 2, grouping="similar")
    with pytest.raises(ValueError, match="method='random'"):
        hf.convert_checkpoint(tmp_path / "mha", tmp_path / "c", 2, "random", grouping="similar", calibration=tokens)
    with pytest.raises(ValueError, match="only used with grouping='similar'"):
        hf.convert_checkpoint(tmp_path / "mha", tmp_path / "d", 2, calibration=tokens)
    (tmp_path / "bad.json").write_text("[[1, 2], [3]]")
    with pytest.raises(SystemExit):
        hf.main(["convert", str(tmp_path / "mha"), str(tmp_path / "e"), "--kv-heads", "2", "--grouping", "similar",
                 "--calibration", str(tmp_path / "bad.json")])
    assert "--calibration" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abcde")
