"""Encoders: shapes, normalisation, special tokens, encode-once, and the on-disk cache (stale / corrupt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikehijack.worlds import encoders
from spikehijack.worlds.encoders import EmbeddingCache, Encoder, MiniLMPhrases, MiniLMTokens

PHRASES = ["Seizure", "Small head", "Intellectual disability", "Wide-set eyes"]


@pytest.fixture(scope="module")
def phrase_enc(tmp_path_factory) -> MiniLMPhrases:
    return MiniLMPhrases(cache_dir=tmp_path_factory.mktemp("cache"), release="test")


@pytest.fixture(scope="module")
def token_enc(tmp_path_factory) -> MiniLMTokens:
    return MiniLMTokens(cache_dir=tmp_path_factory.mktemp("cache"), release="test")


def test_protocol(phrase_enc, token_enc):
    assert isinstance(phrase_enc, Encoder) and isinstance(token_enc, Encoder)
    assert phrase_enc.dim == token_enc.dim == 384


def test_phrases_shapes_norms_and_encode_once(phrase_enc):
    docs = [PHRASES[:3], [PHRASES[0]], PHRASES]  # "Seizure" three times
    out = phrase_enc.encode_documents(docs)
    assert [tuple(x.shape) for x in out] == [(3, 384), (1, 384), (4, 384)]
    for x in out:
        assert x.dtype == torch.float32
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(len(x)))
    assert phrase_enc.n_encoded == len(PHRASES)  # each unique phrase once
    torch.testing.assert_close(out[0][0], out[1][0])
    q = phrase_enc.encode_queries([["Epilepsy", "Seizure"]])[0]
    torch.testing.assert_close(q[1], out[0][0])
    assert float(q[0] @ q[1]) > float(q[1] @ out[0][2])  # epilepsy closer to seizure than to ID


def test_phrases_bad_input(phrase_enc):
    with pytest.raises(ValueError, match="non-empty list"):
        phrase_enc.encode_documents([[]])
    with pytest.raises(ValueError, match="non-empty list"):
        phrase_enc.encode_documents(["Seizure"])  # a bare string is not a list of phrases
    with pytest.raises(ValueError, match="non-empty string"):
        phrase_enc.encode_queries([["  "]])


def test_tokens_drop_special_tokens(token_enc):
    texts = ["A seizure is an abnormality.", "Small head"]
    out = token_enc.encode_documents(texts)
    token_enc._load()
    for text, x in zip(texts, out, strict=True):
        n_plain = len(token_enc._tok(text, add_special_tokens=False)["input_ids"])
        assert tuple(x.shape) == (n_plain, 384)
        torch.testing.assert_close(x.norm(dim=-1), torch.ones(n_plain))
    # contextual: the same word in two contexts gives two different vectors
    a, b = token_enc.encode_queries(["head injury", "small head"])
    assert float(a[0] @ b[1]) < 0.999


def test_cache_reload_without_model(phrase_enc, tmp_path):
    first = MiniLMPhrases(cache_dir=tmp_path, release="r1")
    v1 = first.encode_phrases(PHRASES[:2])
    second = MiniLMPhrases(cache_dir=tmp_path, release="r1")
    assert second.cache.status == "loaded"
    v2 = second.encode_phrases(PHRASES[:2])
    assert second.n_encoded == 0 and second._model is None  # served from disk, model never loaded
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    other = MiniLMPhrases(cache_dir=tmp_path, release="r2")  # another data release: another key
    assert other.cache.path != first.cache.path and other.cache.status == "new"


def test_cache_key_changes_with_settings(tmp_path):
    a = MiniLMPhrases(cache_dir=tmp_path, max_length=64)
    b = MiniLMPhrases(cache_dir=tmp_path, max_length=32)
    c = MiniLMTokens(cache_dir=tmp_path, max_length=64)
    assert len({a.cache.path, b.cache.path, c.cache.path}) == 3


def _fill(cache: EmbeddingCache) -> None:
    cache.add(["x", "y"], [np.ones((1, 3)), np.arange(6, dtype=np.float32).reshape(2, 3)])
    cache.save()


def test_embedding_cache_roundtrip_ragged(tmp_path):
    c = EmbeddingCache(tmp_path, "t", {"model": "m"})
    _fill(c)
    d = EmbeddingCache(tmp_path, "t", {"model": "m"})
    assert d.status == "loaded" and d.missing(["x", "z", "y", "z"]) == ["z"]
    np.testing.assert_array_equal(d.get("y"), np.arange(6).reshape(2, 3))


def test_embedding_cache_corrupt_is_rebuilt(tmp_path):
    c = EmbeddingCache(tmp_path, "t", {"model": "m"})
    _fill(c)
    c.path.write_bytes(b"not a zip file")
    d = EmbeddingCache(tmp_path, "t", {"model": "m"})
    assert d.status == "corrupt" and d.store == {}
    _fill(d)
    assert EmbeddingCache(tmp_path, "t", {"model": "m"}).status == "loaded"


def test_embedding_cache_stale_or_inconsistent_is_rebuilt(tmp_path):
    c = EmbeddingCache(tmp_path, "t", {"model": "m"})
    _fill(c)
    z = dict(np.load(c.path, allow_pickle=False))
    # same file name, different stored key (e.g. an older format): stale
    encoders.write_npz(c.path, **{**z, "meta": np.array('{"format": 0}')})
    assert EmbeddingCache(tmp_path, "t", {"model": "m"}).status == "stale"
    # offsets that do not match the vectors: corrupt
    encoders.write_npz(c.path, **{**z, "offsets": np.array([0, 1, 5])})
    d = EmbeddingCache(tmp_path, "t", {"model": "m"})
    assert d.status == "corrupt" and d.missing(["x"]) == ["x"]


def test_embedding_cache_two_writers_merge(tmp_path):
    """Two cache objects of one key (e.g. MiniLMTokens and MiniLMPhraseTokens) never drop each other's texts."""
    a, b = EmbeddingCache(tmp_path, "t", {"model": "m"}), EmbeddingCache(tmp_path, "t", {"model": "m"})
    a.add(["x"], [np.ones((1, 3))])
    a.save()
    b.add(["y"], [np.zeros((2, 3))])
    b.save()
    c = EmbeddingCache(tmp_path, "t", {"model": "m"})
    assert c.status == "loaded" and c.missing(["x", "y"]) == []


def test_phrase_tokens_are_each_phrase_tokens_concatenated(token_enc, tmp_path):
    from spikehijack.worlds.encoders import MiniLMPhraseTokens

    pt = MiniLMPhraseTokens(cache_dir=tmp_path, release="test")
    items = [["Seizure", "Short stature"], ["Seizure"]]
    docs = pt.encode_documents(items)
    sizes = pt.phrase_sizes(items)
    for item, doc, size in zip(items, docs, sizes, strict=True):
        parts = token_enc.encode_texts(item)
        assert size == [len(p) for p in parts] and doc.shape == (sum(size), 384)
        torch.testing.assert_close(doc, torch.cat(parts), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"documents\[0\]"):
        pt.encode_documents(["not a list"])
    memo = MiniLMPhraseTokens(use_cache=False)  # sizes, then vectors: each phrase through the model once
    assert memo.phrase_sizes(items) == sizes and len(memo.encode_documents(items)) == 2
    assert memo.n_encoded == 2
