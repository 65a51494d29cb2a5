"""The fused backend's dispatch, in the default CPU environment: nothing here imports Triton.

The kernels themselves are compared with the reference path in tests/test_triton.py (CUDA, or Triton's
interpreter where Triton is installed).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from spikehijack.core.fused import FUSABLE, fused_spec, resolve_backend, unfusable_reason
from spikehijack.core.pooling import MaxSim, Softmax, TopK
from spikehijack.core.scoring import score_matrix
from spikehijack.runner.train import stacked_scores


def test_every_fusable_pooling_has_its_form():
    assert fused_spec("maxsim") == (0, 1, 1.0)
    assert fused_spec("topk:5") == (0, 5, 1.0)
    assert fused_spec("softmax:0.1") == (1, 1, 0.1)
    assert fused_spec("mean") is None and fused_spec("lcmaxsim") is None
    assert set(FUSABLE) == {MaxSim, TopK, Softmax}


def test_auto_is_the_torch_path_on_cpu_and_bad_backends_are_named(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # test_triton.py sets it where Triton is installed
    Q, D = torch.randn(2, 3, 16), torch.randn(4, 5, 16)
    assert resolve_backend("auto", "maxsim", Q, D) == "torch"
    with pytest.raises(ValueError, match="backend must be one of auto, torch, triton, got 'cuda'"):
        score_matrix(Q, D, "maxsim", backend="cuda")
    with pytest.raises(ValueError, match="backend='triton' cannot score this case: device cpu"):
        stacked_scores(Q[None], D[None], "maxsim", backend="triton")
    auto = score_matrix(Q, D, "topk:2")
    assert torch.equal(auto, score_matrix(Q, D, "topk:2", backend="torch"))  # one code path on CPU


def test_unfusable_cases_say_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors count as a kernel device; no kernel runs here
    Q = torch.randn(2, 3, 16)
    assert "float64" in unfusable_reason("maxsim", Q.double()) or "Triton is not installed" in unfusable_reason(
        "maxsim", Q.double())
    assert unfusable_reason("maxsim", torch.randn(2, 3, 300)) in (
        "embedding dim 300 > 256", "Triton is not installed (pip install 'spikehijack[gpu]')")


def test_cpu_scoring_and_training_never_import_triton():
    code = ("import sys, torch\n"
            "from spikehijack.core.scoring import score_matrix\n"
            "from spikehijack.runner.train import stacked_infonce, stacked_scores\n"
            "Q = torch.randn(2, 4, 3, 16, requires_grad=True)\n"
            "stacked_infonce(stacked_scores(Q, torch.randn(2, 4, 5, 16), 'softmax:1')).backward()\n"
            "score_matrix(Q[0], torch.randn(3, 5, 16), 'maxsim')\n"
            "assert 'triton' not in sys.modules, 'triton was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": ":".join(sys.path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_graphed_step_bookkeeping_reproduces_eager_steps():
    """Warm-up steps undone in place, static batch buffer, capturable state: everything of ``GraphedStep`` but
    the capture itself (CUDA only) gives the eager steps' losses and weights."""
    from spikehijack.runner.train import GraphedStep, eager_step, graph_reason
    from spikehijack.worlds.model import StackedEncoder

    g = torch.Generator().manual_seed(0)
    Xq, Xp = torch.randn(2, 24, 4, 16, generator=g), torch.randn(2, 24, 6, 16, generator=g)
    batches = [torch.stack([torch.randperm(24, generator=g)[:8] for _ in range(2)]) for _ in range(4)]
    groups = {"maxsim": torch.tensor([0]), "softmax:1": torch.tensor([1])}
    out = []
    for graphed in (False, True):
        enc = StackedEncoder([3, 4])
        opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
        step = GraphedStep(enc, opt, Xq, Xp, batches[0], groups, capture=False) if graphed else None
        losses = [(step(b) if step else eager_step(enc, opt, Xq, Xp, b, groups)).clone() for b in batches]
        out.append((torch.stack(losses), [p.detach().clone() for p in enc.parameters()]))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-6, atol=1e-7)
    for a, b in zip(out[1][1], out[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert graph_reason(["maxsim"], torch.device("cpu"), torch.float32) == "device cpu (CUDA graphs need CUDA)"
