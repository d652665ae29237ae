"""Pre-training, uptraining, evaluation and checkpoints (gqa_lib.train, gqa_lib.experiments)."""

import math

import pytest
import torch

from gqa_lib import TransformerConfig, TransformerLM
from gqa_lib.convert import convert_to_gqa
from gqa_lib.corpus import CorpusConfig, make_corpus
from gqa_lib.experiments import load_checkpoint, save_checkpoint
from gqa_lib.train import TrainRecipe, alpha_to_steps, evaluate, lr_at, pretrain, train, uptrain

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
