"""Pre-training, uptraining, evaluation and checkpoints (gqa_lib.recipe.train, gqa_lib.recipe.experiments)."""

import math

import pytest
import torch

from gqa_lib import TransformerConfig, TransformerLM
from gqa_lib.recipe.convert import convert_to_gqa
from gqa_lib.recipe.corpus import CorpusConfig, make_corpus
from gqa_lib.recipe.experiments import load_checkpoint, save_checkpoint
from gqa_lib.recipe.train import TrainRecipe, alpha_to_steps, evaluate, lr_at, pretrain, train, uptrain

CORPUS = make_corpus(0, CorpusConfig(seq_len=24, n_keys=8, n_values=8, n_pairs=4, n_words=10, n_train=256, n_heldout=32))
MODEL = TransformerConfig(vocab_size=CORPUS.vocab_size, max_seq_len=24, d_model=16, n_layers=1, n_heads=4, n_kv_heads=4, d_ff=32)
RECIPE = TrainRecipe(batch_size=8, peak_lr=1e-2, warmup_steps=4, pretrain_steps=40)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_schedule_warms_up_linearly_then_decays_as_inverse_square_root():
    r = TrainRecipe(peak_lr=1.0, warmup_steps=10)
    assert lr_at(0, r) == pytest.approx(0.1)
    assert lr_at(9, r) == pytest.approx(1.0)
    assert lr_at(39, r) == pytest.approx(0.5)
    assert lr_at(999, r) == pytest.approx(math.sqrt(10 / 1000))


def test_alpha_to_steps():
    r = TrainRecipe(pretrain_steps=2000)
    assert [alpha_to_steps(a, r) for a in (0, 0.01, 0.025, 0.05, 0.1)] == [0, 20, 50, 100, 200]
    with pytest.raises(ValueError, match="alpha"):
        alpha_to_steps(-0.1, r)


def test_pretraining_is_deterministic_and_learns():
    a, ra = pretrain(MODEL, CORPUS, RECIPE, seed=0, eval_steps=[0, 40], progress=False)
    b, rb = pretrain(MODEL, CORPUS, RECIPE, seed=0, eval_steps=[0, 40], progress=False)
    assert ra.train_losses == rb.train_losses
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    assert ra.at(40)["loss"] < ra.at(0)["loss"] - 0.5  # it learns
    _, rc = pretrain(MODEL, CORPUS, RECIPE, seed=1, progress=False)
    assert rc.train_losses != ra.train_losses


def test_uptraining_continues_the_schedule_and_one_run_gives_every_alpha():
    base, _ = pretrain(MODEL, CORPUS, RECIPE, seed=0, progress=False)
    long_model = convert_to_gqa(base, 1)
    long = uptrain(long_model, CORPUS, RECIPE, alpha=0.25, data_seed=7, eval_alphas=[0, 0.1, 0.25], progress=False)
    assert [e["step"] for e in long.evals] == [0, 4, 10]
    assert [e["alpha"] for e in long.evals] == [0, 0.1, 0.25]
    assert long.lrs[0] == pytest.approx(lr_at(RECIPE.pretrain_steps, RECIPE))
    assert long.lrs[-1] == pytest.approx(lr_at(RECIPE.pretrain_steps + 9, RECIPE))
    # the checkpoint after 4 steps of the long run is what a 4-step run gives
    short = uptrain(convert_to_gqa(base, 1), CORPUS, RECIPE, steps=4, data_seed=7, progress=False)
    assert short.evals[-1]["loss"] == pytest.approx(long.at(4)["loss"], abs=1e-6)
    # alpha = 0 is the converted model itself
    assert long.at(0)["loss"] == pytest.approx(evaluate(convert_to_gqa(base, 1), CORPUS)["loss"], abs=1e-6)


def test_train_leaves_model_in_eval_mode_and_validates_arguments():
    model = TransformerLM(MODEL)
    with pytest.raises(ValueError, match="eval_steps"):
        train(model, CORPUS, 3, RECIPE, data_seed=0, eval_steps=[5], progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        uptrain(model, CORPUS, RECIPE, alpha=0.1, steps=3, data_seed=0)
    with pytest.raises(ValueError, match="vocab_size"):
        pretrain(TransformerConfig(vocab_size=8, max_seq_len=24), CORPUS, RECIPE, seed=0)
    train(model, CORPUS, 2, RECIPE, data_seed=0, progress=False)
    assert not model.training


def test_evaluate_counts_the_answers_and_scores_a_perfect_predictor():
    model = TransformerLM(MODEL)
    out = evaluate(model, CORPUS)
    assert out["n_answers"] == int(CORPUS.heldout_recall_mask.sum()) > 0
    assert 0 <= out["recall_acc"] <= 1
    assert out["loss"] == pytest.approx(math.log(MODEL.vocab_size), abs=0.1)  # untrained: near uniform

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            logits = torch.full((*x.shape, MODEL.vocab_size), -30.0)
            logits[:, :-1].scatter_(-1, x[:, 1:, None], 30.0)
            return logits

    perfect = evaluate(Oracle(), CORPUS)
    assert perfect["recall_acc"] == 1.0 and perfect["loss"] < 1e-6


def test_checkpoint_round_trip_through_safetensors(tmp_path):
    model, _ = pretrain(MODEL, CORPUS, RECIPE, seed=0, progress=False)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(model, path, metadata={"seed": 0})
    loaded, meta = load_checkpoint(path)
    assert loaded.config == model.config and meta["seed"] == 0
    x = CORPUS.heldout[:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert path.read_bytes()[:8] != b"PK\x03\x04"  # not a zip/pickle file


@pytest.mark.parametrize(
    "field, bad",
    [
        ("grad_clip", -1.0), ("grad_clip", 0.0), ("grad_clip", float("nan")), ("grad_clip", float("inf")),
        ("peak_lr", -1e-3), ("peak_lr", float("nan")), ("peak_lr", float("inf")), ("peak_lr", None),
        ("weight_decay", -0.1), ("weight_decay", float("nan")),
        ("batch_size", 0), ("batch_size", 8.0), ("batch_size", True),
        ("warmup_steps", 0), ("warmup_steps", 2.5),
        ("pretrain_steps", -5), ("pretrain_steps", None),
        ("betas", (0.9,)), ("betas", (0.9, 1.0)), ("betas", (float("nan"), 0.9)), ("betas", None),
    ],
)
def test_recipe_refuses_bad_numbers_naming_the_field(field, bad):
    with pytest.raises(ValueError, match=field.split("[")[0]) as info:
        TrainRecipe(**{field: bad})
    assert str(bad) in str(info.value) or repr(bad) in str(info.value)


def test_recipe_stores_plain_numbers_and_stays_equal():
    import json
    from dataclasses import asdict

    import numpy as np

    r = TrainRecipe(batch_size=np.int64(8), pretrain_steps=np.int32(40), peak_lr=np.float32(0.5), betas=[0.9, 0.98])
    assert type(r.batch_size) is int and type(r.pretrain_steps) is int and type(r.peak_lr) is float
    assert r.betas == (0.9, 0.98)
    json.dumps(asdict(r))  # numpy numbers would not serialise
    assert TrainRecipe() == TrainRecipe(batch_size=32, peak_lr=5e-3, warmup_steps=200, pretrain_steps=6000)


@pytest.mark.parametrize("bad", [0, -1, 2.0, None])
def test_evaluate_bad_batch_size_raises_naming_it(bad):
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(TransformerLM(MODEL), CORPUS, batch_size=bad)


def test_lr_at_and_alpha_to_steps_refuse_bad_numbers():
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, RECIPE)  # used to divide by zero
    for bad in (float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="alpha"):
            alpha_to_steps(bad, RECIPE)


def test_train_pretrain_and_uptrain_refuse_bad_arguments_naming_them():
    model = TransformerLM(MODEL)
    with pytest.raises(ValueError, match="steps"):
        train(model, CORPUS, 2.5, RECIPE, data_seed=0, progress=False)
    with pytest.raises(ValueError, match="data_seed"):
        train(model, CORPUS, 2, RECIPE, data_seed=None, progress=False)
    with pytest.raises(ValueError, match="eval_steps"):
        train(model, CORPUS, 2, RECIPE, data_seed=0, eval_steps=[1.5], progress=False)
    with pytest.raises(ValueError, match="eval_steps"):
        train(model, CORPUS, 2, RECIPE, data_seed=0, eval_steps=2, progress=False)
    with pytest.raises(ValueError, match="recipe"):
        train(model, CORPUS, 2, {"batch_size": 8}, data_seed=0, progress=False)
    with pytest.raises(ValueError, match="seed"):
        pretrain(MODEL, CORPUS, RECIPE, seed=1.5, progress=False)
    with pytest.raises(ValueError, match="max_seq_len"):
        pretrain(TransformerConfig(vocab_size=MODEL.vocab_size, max_seq_len=8), CORPUS, RECIPE, seed=0, progress=False)
    with pytest.raises(ValueError, match="eval_alphas"):
        uptrain(model, CORPUS, RECIPE, alpha=0.1, data_seed=0, eval_alphas=[0.0, 0.5], progress=False)
    with pytest.raises(ValueError, match="eval_alphas"):
        uptrain(model, CORPUS, RECIPE, alpha=0.1, data_seed=0, eval_alphas=[float("nan")], progress=False)
    with pytest.raises(ValueError, match="steps"):
        uptrain(model, CORPUS, RECIPE, steps=-1, data_seed=0, progress=False)
