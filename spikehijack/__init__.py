"""spikehijack: an executable reproduction of "Spike Hijacking in Late-Interaction Retrieval".

Core API: ``pool`` / ``parse_pooling`` (spikehijack.pooling), ``score_matrix`` / ``score_pairs``
(spikehijack.scoring), ``gini`` / ``patch_gradient_norms`` / ``recall_at_k`` (spikehijack.metrics).
"""

from . import robust  # noqa: F401  (registers the poolings beyond the paper)
from .device import resolve_device, set_determinism
from .metrics import gini, mrr, ndcg_at_k, patch_gradient_norms, recall_at_k
from .pooling import Pooling, available_poolings, parse_pooling, pool, register
from .scoring import pad, score_matrix, score_pairs

__version__ = "0.1.0"
__all__ = [
    "Pooling",
    "available_poolings",
    "gini",
    "mrr",
    "ndcg_at_k",
    "pad",
    "parse_pooling",
    "patch_gradient_norms",
    "pool",
    "recall_at_k",
    "register",
    "resolve_device",
    "score_matrix",
    "score_pairs",
    "set_determinism",
]
