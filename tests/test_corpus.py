"""The toy corpus: deterministic, the right structure, and a recall metric that scores the answers only."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gqa_lib.recipe.corpus import BOS, SEP, CorpusConfig, _transition_table, make_corpus, recall_accuracy

SMALL = CorpusConfig(seq_len=40, n_keys=12, n_values=5, n_pairs=8, min_pairs=3, n_words=9, n_train=400, n_heldout=60)


@pytest.fixture(scope="module")
def default_corpus():
    return make_corpus(0)


def test_default_corpus_is_big_enough_and_uses_its_vocabulary(default_corpus):
    c = default_corpus
    cfg = c.config
    assert c.n_train_tokens >= 1_000_000
    assert c.vocab_size == 2 + cfg.n_words + cfg.n_keys + cfg.n_values + cfg.n_keys * cfg.n_values == 362
    assert int(c.train.max()) < c.vocab_size and int(c.train.min()) >= 0
    assert len(torch.unique(c.train)) == c.vocab_size  # every token occurs
    assert c.train.dtype == torch.int64 and c.train.shape[1] == c.config.seq_len


def test_same_seed_same_tokens_and_fingerprint_is_stable(default_corpus):
    again = make_corpus(0)
    assert torch.equal(again.train, default_corpus.train)
    assert torch.equal(again.heldout_recall_mask, default_corpus.heldout_recall_mask)
    # Fingerprint of seed 0 (PCG64 integers/uniforms only): guards against silent changes of the
    # generator or the layout, which would make committed results and checkpoints stale.
    assert int(default_corpus.train.sum()) == 79186989
    assert int(default_corpus.heldout_recall_mask.sum()) == 6608
    assert default_corpus.heldout[0, :6].tolist() == [0, 188, 275, 233, 248, 298]


def test_other_seed_differs_and_splits_do_not_overlap():
    a, b = make_corpus(0, SMALL), make_corpus(1, SMALL)
    assert not torch.equal(a.train, b.train)
    train_rows = {tuple(r) for r in a.train[a.train_is_recall].tolist()}
    held_rows = {tuple(r) for r in a.heldout[a.heldout_is_recall].tolist()}
    assert held_rows and not (train_rows & held_rows)


def test_recall_sequences_answer_every_query_with_its_value():
    cfg = SMALL
    c = make_corpus(3, cfg)
    sizes = set()
    n_checked = 0
    for seq, mask, is_recall in zip(c.train, c.train_recall_mask, c.train_is_recall):
        seq, mask = seq.tolist(), mask.tolist()
        if not is_recall:
            assert not any(mask)
            continue
        assert seq[0] == BOS
        n_pairs = seq.index(SEP, 1) - 1
        assert cfg.min_pairs <= n_pairs <= cfg.n_pairs
        sizes.add(n_pairs)
        table = {}
        for e in seq[1 : 1 + n_pairs]:
            assert cfg.entry_offset <= e < cfg.vocab_size
            k, v = divmod(e - cfg.entry_offset, cfg.n_values)
            assert k not in table  # keys are distinct within a sequence
            table[k] = v
        start = 2 + n_pairs
        answers = [t for t in range(len(seq)) if mask[t]]
        assert answers == list(range(start + 1, start + 2 * cfg.queries_for(n_pairs), 2))
        for t in answers:
            key = seq[t - 1] - cfg.key_offset
            assert 0 <= key < cfg.n_keys
            assert seq[t] - cfg.value_offset == table[key]  # the value stored with the queried key
        n_checked += 1
    assert n_checked > 150
    assert sizes == set(range(cfg.min_pairs, cfg.n_pairs + 1))
    assert 0.35 < float(c.train_is_recall.float().mean()) < 0.65


def test_text_sequences_follow_the_second_order_chain():
    cfg = SMALL
    c = make_corpus(5, cfg)
    table = _transition_table(cfg, np.random.default_rng([5, 0]))
    text = c.train[~c.train_is_recall]
    assert (text[:, 0] == BOS).all()
    words = (text[:, 1:] - cfg.word_offset).numpy()
    assert words.min() >= 0 and words.max() < cfg.n_words
    counts = np.zeros(cfg.successors)
    for row in words:
        for t in range(2, len(row)):
            allowed = list(table[row[t - 2]])  # successors of the word two positions back
            assert row[t] in allowed
            counts[allowed.index(row[t])] += 1
    np.testing.assert_allclose(counts / counts.sum(), [0.4, 0.3, 0.2, 0.1], atol=0.02)


def test_recall_accuracy_scores_answer_positions_only():
    c = make_corpus(0, SMALL)
    x, m = c.heldout, c.heldout_recall_mask
    V = c.vocab_size
    oracle = torch.zeros(*x.shape, V)
    oracle[:, :-1] = F.one_hot(x[:, 1:], V).float()  # logits at t predict token t + 1
    correct, total = recall_accuracy(oracle, x, m)
    n_pairs = (x == SEP).int().argmax(dim=1) - 1  # entries of each sequence (first SEP)
    expected = sum(SMALL.queries_for(int(n)) for n, r in zip(n_pairs, c.heldout_is_recall) if r)
    assert total == int(m.sum()) == expected
    assert correct == total
    # predicting the *current* token instead of the next one is always wrong at answers
    shifted = F.one_hot(x, V).float()
    assert recall_accuracy(shifted, x, m) == (0, total)
    # right on the answers only of the first recall sequence
    partial = shifted.clone()
    first = int(torch.nonzero(c.heldout_is_recall)[0])
    partial[first] = oracle[first]
    assert recall_accuracy(partial, x, m) == (SMALL.queries_for(int(n_pairs[first])), total)
    with pytest.raises(ValueError, match="must agree"):
        recall_accuracy(oracle[:, :-1], x, m)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_pairs=40, n_keys=32), "n_pairs=40"),
        (dict(seq_len=26, n_pairs=24), "seq_len=26"),
        (dict(min_pairs=0), "min_pairs must be an integer >= 1; got 0"),
        (dict(min_pairs=30), "min_pairs=30"),
        (dict(successors=5), "successors"),
        (dict(recall_fraction=1.5), "recall_fraction"),
        (dict(n_train=0), "n_train"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CorpusConfig(**kwargs)


def test_bad_seed_and_split_raise():
    with pytest.raises(ValueError, match="seed"):
        make_corpus(-1, SMALL)
    with pytest.raises(ValueError, match="'test'"):
        make_corpus(0, SMALL).split("test")


def test_describe_renders_tokens():
    cfg = SMALL
    c = make_corpus(0, cfg)
    entry = cfg.entry_offset + 7 * cfg.n_values + 2
    tokens = torch.tensor([BOS, entry, SEP, cfg.key_offset + 7, cfg.value_offset + 2, cfg.word_offset + 4])
    assert c.describe(tokens) == "<bos> k7=v2 | k7 v2 w4"


SIZE_FIELDS = ["seq_len", "n_keys", "n_values", "n_pairs", "min_pairs", "n_words", "successors", "n_train", "n_heldout"]


@pytest.mark.parametrize("bad", [2.0, True, None, "3"])
@pytest.mark.parametrize("field", SIZE_FIELDS)
def test_sizes_must_be_integers_naming_the_field(field, bad):
    with pytest.raises(ValueError, match=field) as info:
        CorpusConfig(**{field: bad})
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), None, -0.1, True])
def test_recall_fraction_must_be_a_number_in_0_1(bad):
    with pytest.raises(ValueError, match="recall_fraction"):
        CorpusConfig(recall_fraction=bad)


def test_numpy_sizes_are_accepted_and_stored_as_int():
    cfg = CorpusConfig(**{**SMALL.__dict__, "n_train": np.int64(400), "seq_len": np.int32(40)})
    assert type(cfg.n_train) is int and type(cfg.seq_len) is int and cfg == SMALL
    assert torch.equal(make_corpus(np.int64(2), cfg).train, make_corpus(2, SMALL).train)


@pytest.mark.parametrize("bad", [2.0, True, None, "0", float("nan")])
def test_make_corpus_seed_must_be_an_integer(bad):
    with pytest.raises(ValueError, match="seed"):
        make_corpus(bad, SMALL)


def test_make_corpus_config_must_be_a_corpus_config():
    with pytest.raises(ValueError, match="config must be a CorpusConfig"):
        make_corpus(0, {"seq_len": 40})


def test_sample_batch_and_describe_refuse_bad_input():
    c = make_corpus(0, SMALL)
    g = torch.Generator().manual_seed(0)
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            c.sample_batch(bad, g)
    assert c.describe([BOS, SEP]) == "<bos> |"  # a list works like a tensor
    with pytest.raises(ValueError, match=f"valid ids are 0 .. {SMALL.vocab_size - 1}"):
        c.describe(torch.tensor([0, SMALL.vocab_size]))
    with pytest.raises(ValueError, match="1-D"):
        c.describe(c.heldout[:2])
