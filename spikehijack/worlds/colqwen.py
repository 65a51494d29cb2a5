"""Optional: ColQwen2.5 on ViDoRe v2 biomedical lectures, the paper's own real setting (PAPER.md section 4).

Needs the extra (``pip install -e '.[colqwen]'``, i.e. colpali-engine), a GPU and the Hugging Face hub for the
weights and pages; it is never imported by the default path or the tests' real-model code. The adapter follows
colpali-engine's interface: ``ColQwen2_5.from_pretrained`` / ``ColQwen2_5_Processor.from_pretrained``,
``processor.process_queries(texts)`` and ``processor.process_images(images)`` return batches for ``model(**batch)``
(embeddings [B, L, 128]); ``processor.get_image_mask(batch)`` marks the image tokens, the only page vectors kept.

Workflow: on a GPU machine ``python -m spikehijack embed-colqwen --out .cache/vidore_biomed.npz`` encodes the BEIR
layout (corpus, queries, qrels) once; then ``load_vidore_task(path)`` gives a ``tasks.RealTask`` (several relevant
pages per query in ``meta["relevance"]``) that every function of ``spikehijack.chapters.ch04_real`` accepts, on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import check_positive_int
from ..core.device import resolve_device
from ..io import read_npz, write_npz
from .tasks import RealTask

DEFAULT_MODEL = "vidore/colqwen2.5-v0.2"
DEFAULT_DATASET = "vidore/biomedical_lectures_eng_v2"

_HINT = ("ColQwen2.5 is an optional extra: pip install -e '.[colqwen]' (colpali-engine), on a machine with a GPU "
         "and access to the Hugging Face hub (weights and ViDoRe pages are downloaded). The default benchmark "
         "(HPO + MiniLM) needs none of this.")


def _import_colpali() -> tuple[Any, Any]:
    try:
        from colpali_engine.models import ColQwen2_5, ColQwen2_5_Processor
    except ImportError as e:
        raise ImportError(f"{_HINT} ({e})") from e
    return ColQwen2_5, ColQwen2_5_Processor


class ColQwenEncoder:
    """``Encoder`` over colpali-engine's ColQwen2.5: queries -> all query tokens (attention mask), page images ->
    image tokens only (``processor.get_image_mask``); every vector l2-normalised, float32, on CPU.

    ``model`` / ``processor`` may be given (tests pass fakes); otherwise they are loaded from ``model_name``.
    """

    name = "colqwen2.5"
    dim = 128

    def __init__(self, model_name: str = DEFAULT_MODEL, device: str = "auto", batch_size: int = 4,
                 model: Any = None, processor: Any = None, progress: bool = False):
        self.device = resolve_device(device)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.progress = progress
        if model is None or processor is None:
            ColQwen2_5, Processor = _import_colpali()
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            model = ColQwen2_5.from_pretrained(model_name, torch_dtype=dtype, device_map=str(self.device)).eval()
            processor = Processor.from_pretrained(model_name)
        self.model, self.processor = model, processor

    def _run(self, items: Sequence[Any], process: Callable[[list[Any]], Any], mask_of: Callable[[Any], Tensor],
             what: str) -> list[Tensor]:
        out: list[Tensor] = []
        for s in tqdm(range(0, len(items), self.batch_size), desc=f"colqwen {what}", disable=not self.progress):
            batch = process(list(items[s : s + self.batch_size]))
            mask = mask_of(batch).bool()
            batch = batch.to(self.device) if hasattr(batch, "to") else batch
            with torch.inference_mode():
                emb = self.model(**batch)
            emb = emb.float().cpu()
            if emb.shape[:2] != mask.shape:
                raise ValueError(f"model output {tuple(emb.shape)} does not align with the token mask "
                                 f"{tuple(mask.shape)}")
            for e, m in zip(emb, mask.cpu(), strict=True):
                if not bool(m.any()):
                    raise ValueError(f"a {what} item has no token selected by the mask")
                out.append(F.normalize(e[m], dim=-1))
        return out

    def encode_queries(self, queries: Sequence[str]) -> list[Tensor]:
        """Query texts -> [n_tokens_i, 128] (prefix and augmentation tokens included, padding dropped)."""
        return self._run(queries, self.processor.process_queries, lambda b: b["attention_mask"], "queries")

    def encode_documents(self, documents: Sequence[Any]) -> list[Tensor]:
        """Page images (PIL) -> [n_image_tokens_i, 128] (text prompt tokens dropped)."""
        return self._run(documents, self.processor.process_images, self.processor.get_image_mask, "pages")


@dataclass
class BeirData:
    """A BEIR-layout retrieval set: corpus (ids, images), queries (ids, texts) and qrels {query: {corpus: score}}."""

    corpus_ids: list[str]
    images: list[Any]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]


def _rows(ds: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(r) for r in ds]


def load_beir(name: str = DEFAULT_DATASET, split: str = "test", language: str | None = None,
              load_dataset: Callable[..., Iterable[dict[str, Any]]] | None = None) -> BeirData:
    """Load the ``corpus`` / ``queries`` / ``qrels`` configs of a ViDoRe v2 dataset (columns corpus-id, image;
    query-id, query[, language]; query-id, corpus-id, score). ``load_dataset`` defaults to ``datasets``'s;
    tests pass a fake. Queries without a positive qrel are dropped."""
    if load_dataset is None:
        try:
            from datasets import load_dataset
        except ImportError as e:
            raise ImportError(f"{_HINT} ({e})") from e
    corpus = _rows(load_dataset(name, "corpus", split=split))
    queries = _rows(load_dataset(name, "queries", split=split))
    qrels_rows = _rows(load_dataset(name, "qrels", split=split))
    if language is not None:
        queries = [q for q in queries if q.get("language", language) == language]
    qrels: dict[str, dict[str, int]] = {}
    for r in qrels_rows:
        if int(r["score"]) > 0:
            qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = int(r["score"])
    queries = [q for q in queries if str(q["query-id"]) in qrels]
    qrels = {str(q["query-id"]): qrels[str(q["query-id"])] for q in queries}
    if not queries or not corpus:
        raise ValueError(f"{name}: no query with a positive qrel, or an empty corpus")
    return BeirData([str(c["corpus-id"]) for c in corpus], [c["image"] for c in corpus],
                    [str(q["query-id"]) for q in queries], [str(q["query"]) for q in queries], qrels)


def _ragged_arrays(items: list[Tensor]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in items])]).astype(np.int64)
    return torch.cat(items).numpy().astype(np.float32), offsets


def embed_beir(encoder: Any, data: BeirData, path: str | Path) -> Path:
    """Encode queries and pages once and write them (atomic npz, no pickle) for CPU-side experiments."""
    qv, qo = _ragged_arrays(encoder.encode_queries(data.queries))
    dv, do = _ragged_arrays(encoder.encode_documents(data.images))
    col = {c: j for j, c in enumerate(data.corpus_ids)}
    pairs = np.array([(i, col[c]) for i, q in enumerate(data.query_ids) for c in data.qrels[q] if c in col],
                     dtype=np.int64).reshape(-1, 2)
    return write_npz(path, q_vectors=qv, q_offsets=qo, d_vectors=dv, d_offsets=do, qrels=pairs,
                     query_ids=np.array(data.query_ids, dtype=str), corpus_ids=np.array(data.corpus_ids, dtype=str),
                     queries=np.array(data.queries, dtype=str), model=np.array(getattr(encoder, "name", "")))


def load_vidore_task(path: str | Path, name: str = "vidore-biomed") -> RealTask:
    """The cached embeddings as a ``tasks.RealTask``: gold = first relevant page, ``meta["relevance"]`` = all."""
    z = read_npz(path)

    def split(v: np.ndarray, o: np.ndarray) -> list[Tensor]:
        return [torch.from_numpy(v[o[i] : o[i + 1]].copy()) for i in range(len(o) - 1)]

    qs, ds = split(z["q_vectors"], z["q_offsets"]), split(z["d_vectors"], z["d_offsets"])
    R = torch.zeros(len(qs), len(ds), dtype=torch.bool)
    R[torch.from_numpy(z["qrels"][:, 0]), torch.from_numpy(z["qrels"][:, 1])] = True
    if bool((~R.any(1)).any()):
        raise ValueError(f"{path}: a query has no relevant page in the corpus")
    gold = R.float().argmax(1)
    return RealTask(name=name, queries=qs, documents=ds, gold=gold, query_ids=[str(x) for x in z["query_ids"]],
                    doc_ids=[str(x) for x in z["corpus_ids"]], query_text=[[str(x)] for x in z["queries"]],
                    release=str(z["model"]), meta={"relevance": R})
