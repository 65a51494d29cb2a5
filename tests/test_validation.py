"""Bad input: every public function raises ValueError/TypeError whose message names the argument (issue 2, sec. 3)."""

from __future__ import annotations

import pytest
import torch

from spikehijack.core.device import resolve_device
from spikehijack.core.gradients import pooling_jacobian, score_grad_documents, score_grad_queries
from spikehijack.core.metrics import gini, infonce_loss, mrr, ndcg_at_k, patch_gradient_norms, recall_at_k
from spikehijack.core.pooling import Softmax, TopK, available_poolings, jacobian, parse_pooling, pool, selection
from spikehijack.core.scoring import pad, score_matrix, score_pairs, similarities
from spikehijack.reporting import claims, stats
from spikehijack.runner.sweeps import get_executor, run_grid

Q = torch.randn(2, 3, 4)
D = torch.randn(2, 5, 4)
QM = torch.ones(2, 3, dtype=torch.bool)
DM = torch.ones(2, 5, dtype=torch.bool)
PAIR_FUNCS = [score_matrix, score_pairs, score_grad_documents, score_grad_queries, pooling_jacobian,
              patch_gradient_norms]


def with_value(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[3] = value
    return x


# ---------------------------------------------------------------- Q, D and their masks


@pytest.mark.parametrize("fn", PAIR_FUNCS)
@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"Q": Q[0]}, ValueError, r"^Q must have 3 dims"),
        ({"D": D[None]}, ValueError, r"^D must have 3 dims"),
        ({"D": torch.randn(2, 5, 7)}, ValueError, r"Q and D must share the embedding dim d"),
        ({"Q": Q.long()}, TypeError, r"^Q must be a floating-point tensor"),
        ({"D": D.numpy()}, TypeError, r"^D must be a torch.Tensor"),
        ({"Q": torch.empty(0, 3, 4)}, ValueError, r"^Q is empty"),
        ({"Q": with_value(Q, float("nan"))}, ValueError, r"^Q contains NaN or inf"),
        ({"D": with_value(D, float("inf"))}, ValueError, r"^D contains NaN or inf"),
        ({"D": with_value(D, float("-inf"))}, ValueError, r"^D contains NaN or inf"),
        ({"q_mask": torch.ones(2, 4, dtype=torch.bool)}, ValueError, r"^q_mask must have shape \(2, 3\)"),
        ({"d_mask": torch.ones(5, dtype=torch.bool)}, ValueError, r"^d_mask must have shape \(2, 5\)"),
        ({"q_mask": QM.float()}, TypeError, r"^q_mask must be a bool tensor"),
        ({"d_mask": DM.long()}, TypeError, r"^d_mask must be a bool tensor"),
        ({"q_mask": torch.tensor([[True, False, False], [False] * 3])}, ValueError, r"^q_mask: 1 query"),
        ({"d_mask": torch.tensor([[False] * 5, [True] * 5])}, ValueError, r"^d_mask: 1 document"),
    ],
)
def test_queries_documents_and_masks(fn, kwargs, exc, pattern):
    args = {"Q": Q, "D": D, "q_mask": QM, "d_mask": DM} | kwargs
    with pytest.raises(exc, match=pattern):
        fn(args["Q"], args["D"], "maxsim", args["q_mask"], args["d_mask"])


@pytest.mark.parametrize("fn", [score_pairs, score_grad_documents, score_grad_queries, patch_gradient_norms])
def test_aligned_pairs_need_as_many_queries_as_documents(fn):
    with pytest.raises(ValueError, match=r"queries.*documents|documents.*queries|aligned"):
        fn(Q, torch.randn(3, 5, 4), "maxsim")


def test_chunk_size_must_be_a_positive_int():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="^chunk_size must be an integer >= 1"):
            score_matrix(Q, D, "maxsim", chunk_size=bad)


def test_similarities_checks_shapes():
    with pytest.raises(ValueError, match="^Q must have 3 dims"):
        similarities(Q[0], D)
    with pytest.raises(ValueError, match="embedding dim d"):
        similarities(Q, torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="aligned pairs"):
        similarities(Q, torch.randn(3, 5, 4))


# ---------------------------------------------------------------- pooling specs


@pytest.mark.parametrize(
    "spec,pattern",
    [
        ("maxxsim", "unknown pooling 'maxxsim'; valid names: " + ", ".join(available_poolings())),
        ("top-k:4", "valid names: .*topk"),
        ("", "unknown pooling"),
        ("topk:0", r"^k must be an integer >= 1, got 0"),
        ("topk:-3", r"^k must be an integer >= 1"),
        ("topk", r"pooling 'topk' needs k"),
        ("topk:2.5", r"'topk' needs an integer k"),
        ("softmax:0", r"^tau must be a finite number > 0"),
        ("softmax:-0.1", r"^tau must be a finite number > 0"),
        ("softmax:nan", r"^tau must be a finite number > 0"),
        ("softmax:inf", r"^tau must be a finite number > 0"),
        ("softmax", r"'softmax' needs tau"),
        ("softmax:abc", r"'softmax' needs a number tau"),
        ("maxsim:3", r"'maxsim' takes no argument"),
        ("mean:1", r"'mean' takes no argument"),
    ],
)
def test_bad_pooling_specs(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_pooling(spec)
    with pytest.raises(ValueError, match=pattern):
        score_matrix(Q, D, spec)


def test_pooling_objects_and_types():
    with pytest.raises(ValueError, match="^k must be"):
        TopK(0)
    with pytest.raises(ValueError, match="^tau must be"):
        Softmax(0.0)
    with pytest.raises(TypeError, match="^pooling must be a string spec or a Pooling"):
        parse_pooling(4)


# ---------------------------------------------------------------- pool / jacobian / selection on S


@pytest.mark.parametrize("fn", [pool, jacobian, selection])
@pytest.mark.parametrize(
    "S,mask,exc,pattern",
    [
        (torch.randn(5), None, ValueError, r"^S must have at least 2 dims"),
        (with_value(torch.randn(2, 5), float("nan")), None, ValueError, r"^S contains NaN or inf"),
        (torch.ones(2, 5, dtype=torch.int64), None, TypeError, r"^S must be a floating-point tensor"),
        (torch.randn(2, 5), torch.ones(4, dtype=torch.bool), ValueError, r"^mask must have last dim M=5"),
        (torch.randn(3, 2, 5), torch.ones(2, 5, dtype=torch.bool), ValueError, r"^mask shape \(2, 5\) does not"),
        (torch.randn(2, 5), torch.ones(3, 5, dtype=torch.bool), ValueError, r"^mask shape \(3, 5\) does not"),
        (torch.randn(2, 5), torch.ones(5), TypeError, r"^mask must be a bool tensor"),
        (torch.randn(2, 5), torch.zeros(5, dtype=torch.bool), ValueError, r"^mask: a document has no valid patch"),
    ],
)
def test_pool_bad_input(fn, S, mask, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn(S, "topk:2", mask)


# ---------------------------------------------------------------- metrics


def test_gini_bad_input():
    with pytest.raises(ValueError, match="^gini: x must be non-negative"):
        gini(torch.tensor([0.5, -1e-9, 2.0]))
    with pytest.raises(ValueError, match="^x contains NaN or inf"):
        gini(torch.tensor([0.5, float("nan")]))
    with pytest.raises(TypeError, match="^x must be a floating-point tensor"):
        gini(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"^mask must have shape \(3,\)"):
        gini(torch.ones(3), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="^mask: 1 row"):
        gini(torch.ones(2, 3), mask=torch.tensor([[True, False, False], [False] * 3]))


SCORES = torch.randn(3, 4)


@pytest.mark.parametrize("fn", [recall_at_k, mrr, ndcg_at_k])
@pytest.mark.parametrize(
    "scores,gold,exc,pattern",
    [
        (SCORES, torch.tensor([0, 4, 1]), ValueError, r"^gold indices must lie in \[0, 4\)"),
        (SCORES, torch.tensor([0, -1, 1]), ValueError, r"^gold indices must lie in \[0, 4\)"),
        (SCORES, torch.tensor([0, 1]), ValueError, r"^gold must be int indices of shape \(3,\)"),
        (SCORES, torch.tensor([0.0, 1.0, 2.0]), ValueError, r"^gold must be int indices"),
        (SCORES, [0, 1, 2], TypeError, r"^gold must be a LongTensor"),
        (SCORES, torch.ones(3, 5, dtype=torch.bool), ValueError, r"^gold mask must have shape \(3, 4\)"),
        (SCORES, torch.tensor([[True] * 4, [False] * 4, [True] * 4]), ValueError, r"^gold: every query needs"),
        (with_value(SCORES, float("nan")), torch.tensor([0, 1, 2]), ValueError, r"^scores contains NaN or inf"),
        (SCORES[0], torch.tensor([0]), ValueError, r"^scores must have 2 dims"),
    ],
)
def test_retrieval_metrics_bad_input(fn, scores, gold, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn(scores, gold)


def test_metric_arguments():
    gold = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="^k must be an integer >= 1"):
        recall_at_k(SCORES, gold, 0)
    with pytest.raises(ValueError, match="^k must be an integer >= 1"):
        ndcg_at_k(SCORES, gold, 0)
    with pytest.raises(ValueError, match="^reduction must be 'mean' or 'none'"):
        mrr(SCORES, gold, reduction="sum")
    with pytest.raises(ValueError, match=r"^Z must be a square \[B, B\]"):
        infonce_loss(torch.randn(2, 3))
    with pytest.raises(ValueError, match="^loss must be 'pair' or 'infonce'"):
        patch_gradient_norms(Q, D, "maxsim", loss="all")


# ---------------------------------------------------------------- helpers around the core


def test_pad_bad_input():
    with pytest.raises(ValueError, match="^vectors is empty"):
        pad([])
    with pytest.raises(ValueError, match=r"^vectors\[1\] must have shape \[n >= 1, d=3\]"):
        pad([torch.ones(2, 3), torch.ones(2, 4)])
    with pytest.raises(ValueError, match=r"^vectors\[0\] must have shape"):
        pad([torch.ones(0, 3)])


def test_stats_and_sweeps_bad_input(tmp_path):
    with pytest.raises(ValueError, match="^mean_ci: values is empty"):
        stats.mean_ci([float("nan")])
    with pytest.raises(ValueError, match="^paired_test needs two equal-length samples"):
        stats.paired_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="^verdict must be one of"):
        claims.row("c", "l", "w", "q", "p", 0.1, 0.0, 0.2, "maybe", "nb")
    with pytest.raises(ValueError, match="^unknown executor 'slurm'; valid: local, ray"):
        get_executor("slurm")
    with pytest.raises(ValueError, match="^configs contains duplicates"):
        run_grid([{"a": 1}, {"a": 1}], lambda c: None, tmp_path, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="^device='cuda' requested but CUDA is not available"):
        resolve_device("cuda")
