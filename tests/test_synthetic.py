"""The synthetic world: invariants of the generator (PAPER.md section 3)."""

import pytest
import torch
import torch.nn.functional as F

from spikehijack.worlds.synthetic import (
    FILLER,
    SHARED,
    SPIKE,
    SUPPORT,
    SyntheticConfig,
    generate,
)

SMALL = SyntheticConfig(length=24, n_train=32, n_eval=16, seed=3)


@pytest.fixture(scope="module")
def world():
    return generate(SMALL)


def test_shapes_and_unit_norms(world):
    cfg = world.config
    assert world.concepts.shape == (cfg.n_concepts, cfg.dim)
    for split, n in ((world.train, cfg.n_train), (world.eval, cfg.n_eval)):
        assert split.queries.shape == (n, cfg.n_tokens, cfg.dim)
        assert split.positives.shape == split.negatives.shape == (n, cfg.length, cfg.dim)
        for x in (split.queries, split.positives, split.negatives, world.concepts):
            torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[:-1]))


def test_support_patches_are_the_query_concepts(world):
    s, K = world.train, SMALL.n_support
    assert (s.pos_kind[:, :K] == SUPPORT).all() and (s.pos_kind[:, K:] == FILLER).all()
    # each support patch is the noisy version of the concept of query token j (cos well above chance)
    target = world.concepts[s.query_concepts[:, :K]]
    cos = (s.positives[:, :K] * target).sum(-1)
    assert cos.min() > 0.8
    # and that concept is its nearest concept in the bank
    nearest = (s.positives[:, :K] @ world.concepts.T).argmax(-1)
    assert (nearest == s.query_concepts[:, :K]).float().mean() > 0.95


def test_hard_negative_shares_concepts_and_spike_is_normalised_mean(world):
    s = world.eval
    assert (s.neg_kind[:, : SMALL.n_shared] == SHARED).all() and (s.neg_kind[:, SMALL.n_shared] == SPIKE).all()
    spike = s.negatives[:, SMALL.n_shared]
    expected = F.normalize(world.concepts[s.spike_concepts].mean(1), dim=-1)
    torch.testing.assert_close(spike, expected)
    # spike concepts are distinct concepts of that query's tokens
    for i in range(len(s)):
        assert set(s.spike_concepts[i].tolist()) <= set(s.query_concepts[i].tolist())
    shared_nearest = (s.negatives[:, : SMALL.n_shared] @ world.concepts.T).argmax(-1)
    hit = [set(shared_nearest[i].tolist()) <= set(s.query_concepts[i].tolist()) for i in range(len(s))]
    assert sum(hit) / len(hit) > 0.9


def test_deterministic_and_seed_dependent():
    a, b = generate(SMALL), generate(SMALL)
    torch.testing.assert_close(a.train.positives, b.train.positives, rtol=0, atol=0)
    c = generate(SMALL.with_(seed=4))
    assert not torch.equal(a.train.queries, c.train.queries)


def test_length_sweep_keeps_queries_and_assignments():
    a, b = generate(SMALL), generate(SMALL.with_(length=48))
    torch.testing.assert_close(a.eval.queries, b.eval.queries, rtol=0, atol=0)
    torch.testing.assert_close(a.eval.positives[:, : SMALL.n_support], b.eval.positives[:, : SMALL.n_support])
    assert torch.equal(a.eval.spike_concepts, b.eval.spike_concepts)


def test_corpus_is_positives_then_negatives(world):
    docs, gold = world.eval.corpus()
    assert docs.shape[0] == 2 * SMALL.n_eval and torch.equal(gold, torch.arange(SMALL.n_eval))
    assert torch.equal(docs[: SMALL.n_eval], world.eval.positives)


@pytest.mark.parametrize("bad", [{"n_support": 20}, {"spike_size": 17}, {"length": 0}, {"doc_noise": -1.0}])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_generate_rejects_non_config():
    with pytest.raises(TypeError, match="SyntheticConfig"):
        generate({"length": 3})
