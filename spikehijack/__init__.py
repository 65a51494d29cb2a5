"""spikehijack: an executable reproduction of "Spike Hijacking in Late-Interaction Retrieval".

Core API: ``pool`` / ``parse_pooling`` (spikehijack.pooling), ``score_matrix`` / ``score_pairs``
(spikehijack.scoring), ``gini`` / ``patch_gradient_norms`` / ``recall_at_k`` (spikehijack.metrics).

Layers, each importing only from the ones listed before it:
``core/`` tensor maths (torch only); ``worlds/`` the synthetic and real worlds; ``runner/`` training and sweeps;
``reporting/`` statistics, figures, regeneration; ``chapters/`` one module per notebook. Two services serve all
but core: ``profiles`` (every chapter's quick and paper settings) and ``io`` (result and cache files).
"""

import sys as _sys

from .core import device, gradients, metrics, pooling, robust, scoring
from .core.device import resolve_device, set_determinism
from .core.metrics import gini, mrr, ndcg_at_k, patch_gradient_norms, recall_at_k
from .core.pooling import Pooling, available_poolings, parse_pooling, pool, register
from .core.scoring import pad, score_matrix, score_pairs

# The public module names of 0.1 stay importable (``import spikehijack.pooling``, ``from spikehijack.scoring
# import score_matrix``): they are the very modules of spikehijack.core, not copies.
for _module in (device, gradients, metrics, pooling, scoring):
    _sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
del robust  # imported for its @register side effect: the poolings beyond the paper

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
