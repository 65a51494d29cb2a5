"""The synthetic world of the paper (PAPER.md section 3): concepts, queries, positives and hard negatives.

- Concept bank: C vectors in R^d, standard Gaussian then l2-normalised, fixed for the whole run.
- Query: T tokens q_i = normalize(c_{k_i} + eps), k_i uniform over the bank, eps ~ N(0, sigma_q^2 I).
- Positive document: M patches; the first K are the concepts of the query's first K tokens ("distributed
  support"), the rest random concepts; every patch gets noise sigma_d and is re-normalised.
- Hard negative: ``n_shared`` patches carry query concepts (partial overlap), one "spike" patch is
  normalize(mean of ``spike_size`` distinct query concepts) (noise-free), the rest random concepts.
- Evaluation corpus: every evaluation query is ranked against all evaluation positives and hard negatives.

Generation is deterministic in ``SyntheticConfig.seed``. Queries, their concepts and the support/shared/spike
assignments come from generators that do not depend on the document length M, so a length sweep changes
only the random filler patches (PAPER.md: "queries and concept assignments fixed").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.checks import check_positive_int

#: Patch kinds stored in ``Split.pos_kind`` / ``Split.neg_kind``.
FILLER, SUPPORT, SHARED, SPIKE = 0, 1, 2, 3
KIND_NAMES = {FILLER: "filler", SUPPORT: "support", SHARED: "shared", SPIKE: "spike"}


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the synthetic world. Defaults follow PAPER.md ("our default" where the paper is silent)."""

    n_concepts: int = 100  # C
    dim: int = 16  # d
    n_tokens: int = 16  # T
    length: int = 64  # M, patches per document
    n_support: int = 8  # K, query concepts planted in the positive (K <= T)
    query_noise: float = 0.1  # sigma_q
    doc_noise: float = 0.1  # sigma_d
    n_shared: int = 2  # query concepts planted in a hard negative
    spike_size: int = 4  # query concepts averaged into the spike patch
    n_train: int = 2048
    n_eval: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_concepts", "dim", "n_tokens", "length", "n_train", "n_eval"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("n_support", self.n_support, minimum=0)
        check_positive_int("n_shared", self.n_shared, minimum=0)
        check_positive_int("spike_size", self.spike_size, minimum=0)
        if self.n_support > min(self.n_tokens, self.length):
            raise ValueError(f"n_support must be <= min(n_tokens, length), got {self.n_support}")
        if self.spike_size > self.n_tokens:
            raise ValueError(f"spike_size must be <= n_tokens={self.n_tokens}, got {self.spike_size}")
        if self.n_shared + (self.spike_size > 0) > self.length:
            raise ValueError(f"length={self.length} too short for n_shared + spike patches")
        if self.query_noise < 0 or self.doc_noise < 0:
            raise ValueError("query_noise and doc_noise must be >= 0")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def with_(self, **changes: object) -> SyntheticConfig:
        """A copy with some knobs changed (validated)."""
        return replace(self, **changes)


@dataclass
class Split:
    """One split. Raw vectors (before the encoder), all unit-norm:

    queries [N, T, d], positives [N, M, d], negatives [N, M, d]; query_concepts [N, T] (concept ids),
    pos_kind / neg_kind [N, M] (FILLER/SUPPORT/SHARED/SPIKE), spike_concepts [N, spike_size].
    """

    queries: Tensor
    positives: Tensor
    negatives: Tensor
    query_concepts: Tensor
    pos_kind: Tensor
    neg_kind: Tensor
    spike_concepts: Tensor

    def __len__(self) -> int:
        return self.queries.shape[0]

    def corpus(self) -> tuple[Tensor, Tensor]:
        """Evaluation corpus: (documents [2N, M, d] = positives then negatives, gold [N] = arange(N))."""
        docs = torch.cat([self.positives, self.negatives], dim=0)
        return docs, torch.arange(len(self))


@dataclass
class SyntheticData:
    config: SyntheticConfig
    concepts: Tensor  # [C, d]
    train: Split
    eval: Split


def _gen(seed: int, stream: int) -> torch.Generator:
    """An independent CPU generator per (seed, stream): streams do not shift when a size changes."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def concept_bank(n_concepts: int, dim: int, seed: int) -> Tensor:
    """C unit vectors [C, d] from a standard Gaussian."""
    return F.normalize(torch.randn(n_concepts, dim, generator=_gen(seed, 1)), dim=-1)


def _noisy(vectors: Tensor, sigma: float, gen: torch.Generator) -> Tensor:
    return F.normalize(vectors + sigma * torch.randn(vectors.shape, generator=gen), dim=-1)


def _rank_choice(n: int, pool: int, k: int, gen: torch.Generator) -> Tensor:
    """k distinct indices in [0, pool) for each of n rows [n, k] (random permutation prefix)."""
    return torch.rand(n, pool, generator=gen).argsort(dim=1)[:, :k]


def _make_split(cfg: SyntheticConfig, concepts: Tensor, n: int, stream: int) -> Split:
    C, T, M, K = cfg.n_concepts, cfg.n_tokens, cfg.length, cfg.n_support
    # Length-independent streams: query concepts, query noise, support noise, shared/spike choices.
    qc = torch.randint(0, C, (n, T), generator=_gen(cfg.seed, stream + 10))
    queries = _noisy(concepts[qc], cfg.query_noise, _gen(cfg.seed, stream + 11))
    support = _noisy(concepts[qc[:, :K]], cfg.doc_noise, _gen(cfg.seed, stream + 12))
    g_sel = _gen(cfg.seed, stream + 13)
    shared_tok = _rank_choice(n, T, cfg.n_shared, g_sel)
    spike_tok = _rank_choice(n, T, cfg.spike_size, g_sel)
    shared = _noisy(concepts[qc.gather(1, shared_tok)], cfg.doc_noise, _gen(cfg.seed, stream + 14))
    spike_concepts = qc.gather(1, spike_tok)
    spike = F.normalize(concepts[spike_concepts].mean(1), dim=-1)  # [n, d]
    # Length-dependent filler streams (seeded by M too, so each length is its own draw).
    g_fill = _gen(cfg.seed * 7919 + M, stream + 15)
    pos_fill = _noisy(concepts[torch.randint(0, C, (n, M - K), generator=g_fill)], cfg.doc_noise, g_fill)
    n_fixed = cfg.n_shared + (1 if cfg.spike_size > 0 else 0)
    neg_fill = _noisy(concepts[torch.randint(0, C, (n, M - n_fixed), generator=g_fill)], cfg.doc_noise, g_fill)
    positives = torch.cat([support, pos_fill], dim=1)
    neg_parts = [shared] + ([spike[:, None]] if cfg.spike_size > 0 else []) + [neg_fill]
    negatives = torch.cat(neg_parts, dim=1)
    pos_kind = torch.full((n, M), FILLER, dtype=torch.int8)
    pos_kind[:, :K] = SUPPORT
    neg_kind = torch.full((n, M), FILLER, dtype=torch.int8)
    neg_kind[:, : cfg.n_shared] = SHARED
    if cfg.spike_size > 0:
        neg_kind[:, cfg.n_shared] = SPIKE
    return Split(queries, positives, negatives, qc, pos_kind, neg_kind, spike_concepts)


def generate(cfg: SyntheticConfig) -> SyntheticData:
    """Build the whole world for ``cfg`` (deterministic in cfg.seed)."""
    if not isinstance(cfg, SyntheticConfig):
        raise TypeError(f"cfg must be a SyntheticConfig, got {type(cfg).__name__}")
    concepts = concept_bank(cfg.n_concepts, cfg.dim, cfg.seed)
    return SyntheticData(
        cfg, concepts, _make_split(cfg, concepts, cfg.n_train, 100), _make_split(cfg, concepts, cfg.n_eval, 200)
    )


def concept_ids(patches: Tensor, concepts: Tensor, kind: Tensor | None = None) -> Tensor:
    """The concept of each raw patch [..., M, d] -> [..., M] (nearest concept of the bank [C, d]); spike patches
    (``kind == SPIKE``, a mixture of concepts) get -1."""
    ids = (patches @ concepts.T).argmax(-1)
    return ids if kind is None else ids.masked_fill(kind == SPIKE, -1)


#: Fixed-point scale of the oracle's log-counts: integer scores, so two documents with the same count profile tie
#: exactly on every CPU code path (float sums of log1p may differ in the last bit between code paths).
ORACLE_SCALE = 2**20


def oracle_scores(split: Split, concepts: Tensor) -> Tensor:
    """Scores [N, 2N] (``split.corpus()`` order) of a retriever that knows every patch's concept: the sum over
    the query's distinct concepts c of log(1 + n_c), n_c the patches of concept c in the document (of the
    counting rules we tried, coverage, counts and log-counts, the one with the highest Recall@1 at every
    length). A reference for what concept identities allow at this length, not a bound on a trained encoder.
    Each log(1 + n) is rounded to ``ORACLE_SCALE`` units and summed in integers, so ties are exact; the scores
    are those integers / ``ORACLE_SCALE`` in float64 (exact).

    >>> w = generate(SyntheticConfig(n_train=1, n_eval=8, length=32, n_support=8))
    >>> oracle_scores(w.eval, w.concepts).shape
    torch.Size([8, 16])
    """
    docs = torch.cat([concept_ids(split.positives, concepts, split.pos_kind),
                      concept_ids(split.negatives, concepts, split.neg_kind)])  # [2N, M]
    counts = torch.zeros(docs.shape[0], concepts.shape[0] + 1, dtype=torch.long)
    counts.scatter_add_(1, docs + 1, torch.ones_like(docs))  # column 0: "no concept" (spikes)
    qc = split.query_concepts  # [N, T]
    first = torch.ones_like(qc, dtype=torch.bool)  # each distinct concept once
    for i in range(1, qc.shape[1]):
        first[:, i] = ~(qc[:, :i] == qc[:, i : i + 1]).any(1)
    log1p = torch.tensor([round(math.log1p(n) * ORACLE_SCALE) for n in range(docs.shape[1] + 1)])
    n = counts[:, 1:][:, qc].permute(1, 0, 2)  # [N, 2N, T]
    return (log1p[n] * first[:, None, :]).sum(-1).double() / ORACLE_SCALE


def expected_recall_at_1(scores: Tensor, gold: Tensor) -> Tensor:
    """Recall@1 per query [N] with ties broken at random (its expectation): 1 / (1 + ties) when the gold
    document's score is the maximum, else 0. For integer-like scores such as ``oracle_scores``."""
    g = scores.gather(1, gold[:, None])
    others = scores.scatter(1, gold[:, None], float("-inf"))
    ties = (others == g).sum(1)
    return torch.where(g[:, 0] >= others.max(1).values, 1.0 / (1 + ties), torch.zeros_like(g[:, 0]))
