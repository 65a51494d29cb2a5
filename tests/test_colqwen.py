"""The optional ColQwen2.5 adapter against small fakes that mimic colpali-engine's interface (no extra needed)."""

from __future__ import annotations

import sys

import pytest
import torch

from spikehijack.chapters import ch04_real as real
from spikehijack.chapters import ch04_views as views
from spikehijack.worlds import colqwen, tasks

IMAGE_TOKEN = 7


class FakeBatch(dict):
    """Like transformers' BatchFeature: a dict of tensors with ``.to``."""

    def to(self, device):
        return FakeBatch({k: v.to(device) for k, v in self.items()})


class FakeProcessor:
    """process_queries / process_images -> left-padded input_ids + attention_mask; images are ints = #patches."""

    def _batch(self, seqs):
        L = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        att = torch.zeros(len(seqs), L, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, L - len(s):] = torch.tensor(s)
            att[i, L - len(s):] = 1
        return FakeBatch(input_ids=ids, attention_mask=att)

    def process_queries(self, texts):
        return self._batch([[1] + [2 + len(w) for w in t.split()] + [3] * 2 for t in texts])

    def process_images(self, images):
        return self._batch([[1, 4] + [IMAGE_TOKEN] * n + [5, 6] for n in images])

    def get_image_mask(self, batch):
        return batch["input_ids"] == IMAGE_TOKEN


class FakeModel:
    """model(**batch) -> [B, L, 128]: a fixed embedding of each token id, zero on padding (as ColQwen2.5 does)."""

    def __init__(self):
        self.table = torch.randn(16, 128, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def __call__(self, input_ids, attention_mask):
        self.calls += 1
        pos = torch.arange(input_ids.shape[1]).float()[None, :, None] * 0.01
        return (self.table[input_ids] + pos) * attention_mask[..., None]


@pytest.fixture()
def enc():
    return colqwen.ColQwenEncoder(device="cpu", batch_size=2, model=FakeModel(), processor=FakeProcessor())


def test_image_tokens_only(enc):
    docs = enc.encode_documents([3, 1, 5])
    assert [tuple(d.shape) for d in docs] == [(3, 128), (1, 128), (5, 128)]  # prompt tokens and padding dropped
    for d in docs:
        torch.testing.assert_close(d.norm(dim=-1), torch.ones(len(d)))
    assert enc.model.calls == 2  # batched


def test_queries_keep_all_real_tokens(enc):
    qs = enc.encode_queries(["a bb", "ccc d ee f"])
    assert [len(q) for q in qs] == [1 + 2 + 2, 1 + 4 + 2]


def test_missing_extra_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "colpali_engine", None)
    monkeypatch.setitem(sys.modules, "colpali_engine.models", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[colqwen\]'"):
        colqwen.ColQwenEncoder(device="cpu")


def fake_load_dataset(name, config, split):
    return {
        "corpus": [{"corpus-id": f"p{j}", "image": n} for j, n in enumerate([2, 4, 3, 1])],
        "queries": [{"query-id": "q0", "query": "red cells", "language": "english"},
                    {"query-id": "q1", "query": "bone marrow", "language": "english"},
                    {"query-id": "q2", "query": "no label", "language": "english"},
                    {"query-id": "q3", "query": "hématies", "language": "french"}],
        "qrels": [{"query-id": "q0", "corpus-id": "p1", "score": 1}, {"query-id": "q0", "corpus-id": "p3", "score": 1},
                  {"query-id": "q1", "corpus-id": "p0", "score": 2}, {"query-id": "q2", "corpus-id": "p2", "score": 0},
                  {"query-id": "q3", "corpus-id": "p2", "score": 1}],
    }[config]


def test_beir_loader_embed_and_task(enc, tmp_path):
    data = colqwen.load_beir(language="english", load_dataset=fake_load_dataset)
    assert data.query_ids == ["q0", "q1"]  # q2 has no positive qrel, q3 is French
    assert data.qrels == {"q0": {"p1": 1, "p3": 1}, "q1": {"p0": 2}}
    path = colqwen.embed_beir(enc, data, tmp_path / "emb.npz")
    task = colqwen.load_vidore_task(path)
    assert [len(d) for d in task.documents] == [2, 4, 3, 1]
    R = task.meta["relevance"]
    assert R.tolist() == [[False, True, False, True], [True, False, False, False]]
    assert task.gold.tolist() == [1, 0]
    ev = real.evaluate(task, ["maxsim", "softmax:0.1"])  # the CPU-side protocol runs on it
    assert set(ev.metric) >= {"recall@1", "ndcg@5"}
    spikes = torch.randn(2, 3, 128)
    after = tasks.injection_scores(task, "maxsim", torch.nn.functional.normalize(spikes, dim=-1))
    clean = tasks.score_ragged(task.queries, task.documents, "maxsim")
    torch.testing.assert_close(after[R], clean[R])  # every relevant page untouched


def test_notebook04_vidore_switch(enc, tmp_path):
    """Notebook 04 section 8 with view="vidore-biomed": the cached ColQwen embeddings run the whole protocol."""
    data = colqwen.load_beir(language="english", load_dataset=fake_load_dataset)
    path = colqwen.embed_beir(enc, data, tmp_path / "emb.npz")
    task, val = views.second_view("vidore-biomed", embeddings=path)
    assert val is None and task.name == "vidore-biomed"
    ev = views.view_evidence(task, 0.1, Ks=[0, 2], factors=[1, 2], K=2, spike_size=2)
    assert set(ev.claims["world"]) == {"real ViDoRe"} and len(ev.injection) > 0


def test_cli_registered():
    from spikehijack.__main__ import build_parser

    args = build_parser().parse_args(["embed-colqwen", "--out", "x.npz"])
    assert args.out == "x.npz" and args.model == colqwen.DEFAULT_MODEL
