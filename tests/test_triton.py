"""The fused Triton kernels (spikehijack.core.fused) against the torch reference path: values and gradients.

On CUDA the kernels run compiled; without a GPU they run on CPU tensors through Triton's interpreter
(TRITON_INTERPRET=1, set here), so the sizes stay small. Skipped where Triton is not installed: the default CPU
environment of ``make test`` has none (``pip install -e '.[gpu]'`` adds it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and importlib.util.find_spec("triton") is not None:  # before Triton is imported: interpreter mode
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[gpu]'): the fused kernels are "
                                     "tested on CUDA, or on CPU with Triton's interpreter")
if not CUDA:  # kernels decorated before (e.g. by a doctest collection) are compiled ones: decorate them again
    importlib.reload(importlib.import_module("spikehijack.core.triton_kernels"))

import triton  # noqa: E402

OLD_INTERPRETER = not CUDA and tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 8)


@pytest.fixture(autouse=True)
def _kernels_can_run(request):
    """Triton < 3.8's interpreter fails under numpy 2 on any loop with a runtime bound (before our code runs)."""
    if OLD_INTERPRETER and "compile" not in request.node.name:
        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run these kernels on numpy 2: use triton>=3.8 "
                    "on CPU (the compile test still runs), or a GPU")


from spikehijack.core.fused import Blocks, fused_scores, resolve_backend  # noqa: E402
from spikehijack.core.scoring import score_matrix  # noqa: E402
from spikehijack.runner.train import stacked_infonce, stacked_scores  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
SPECS = ["maxsim", "topk:3", "topk:4", "topk:16", "softmax:0.05", "softmax:1"]


def _data(Nq=2, T=5, N=3, M=40, d=16, G=None, seed=0, ragged=True):
    g = torch.Generator().manual_seed(seed)
    lead = () if G is None else (G,)
    Q = torch.randn(*lead, Nq, T, d, generator=g)
    D = torch.randn(*lead, N, M, d, generator=g)
    qm = torch.rand(*lead, Nq, T, generator=g) > 0.3
    dm = torch.rand(*lead, N, M, generator=g) > 0.4
    qm[..., 0] = True
    dm[..., 0] = True
    if ragged:
        dm[..., -1, 2:] = False  # a document with at most 2 real patches: fewer than k
    return Q, D, (qm if ragged else None), (dm if ragged else None)


def _grads(fn, Q, D, weights):
    Qg, Dg = Q.detach().clone().requires_grad_(True), D.detach().clone().requires_grad_(True)
    Z = fn(Qg, Dg)
    (Z.double() * weights).sum().backward()
    return Z.detach().double(), Qg.grad.double(), Dg.grad.double()


def _close(got, ref, tol, what):
    scale = ref.abs().max().clamp_min(1.0)
    err = float((got - ref).abs().max() / scale)
    assert err <= tol, f"{what}: max relative error {err:.2e} > {tol:.0e}"
    return err


@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("spec", SPECS)
def test_values_and_gradients_match_the_reference_in_float32(spec, ragged):
    Q, D, qm, dm = (x if x is None else x.to(DEV) for x in _data(ragged=ragged))
    weights = torch.randn(Q.shape[0], D.shape[0], dtype=torch.float64, device=DEV)
    ref = _grads(lambda a, b: score_matrix(a.double(), b.double(), spec, qm, dm, backend="torch"), Q, D, weights)
    got = _grads(lambda a, b: score_matrix(a, b, spec, qm, dm, backend="triton"), Q, D, weights)
    for name, x, y in zip(("scores", "dQ", "dD"), got, ref, strict=True):
        _close(x, y, 2e-5 if name == "scores" else 1e-4, f"{spec} {name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("spec", ["maxsim", "topk:4", "softmax:0.1"])
def test_low_precision_inputs_accumulate_in_float32(spec, dtype):
    Q, D, qm, dm = (x.to(DEV) for x in _data())
    Q, D = Q.to(dtype), D.to(dtype)
    weights = torch.randn(Q.shape[0], D.shape[0], dtype=torch.float64, device=DEV)
    got = _grads(lambda a, b: score_matrix(a, b, spec, qm, dm, backend="triton"), Q, D, weights)
    exact = _grads(lambda a, b: score_matrix(a.double(), b.double(), spec, qm, dm, backend="torch"), Q, D, weights)
    _close(got[0], exact[0], 2e-5, f"{spec} scores vs float64 of the same {dtype} inputs")
    for name, x, y in zip(("dQ", "dD"), got[1:], exact[1:], strict=True):  # gradients come back in the input dtype
        _close(x, y, 2e-2, f"{spec} {name}")
    torch_path = _grads(lambda a, b: score_matrix(a, b, spec, qm, dm, backend="torch"), Q, D, weights)
    _close(got[0], torch_path[0], 5e-2, f"{spec} scores vs the torch path (which rounds S to {dtype})")


@pytest.mark.parametrize("spec", ["maxsim", "topk:4", "softmax:0.3"])
def test_several_blocks_and_runs(spec):
    """G = 3 runs in one launch, ragged tiles (rows 10 of 16, patches 40 in blocks of 16), per-run masks."""
    Q, D, qm, dm = (x.to(DEV) for x in _data(Nq=2, T=5, N=4, M=40, G=3, seed=1))
    weights = torch.randn(3, 2, 4, dtype=torch.float64, device=DEV)
    got = _grads(lambda a, b: fused_scores(a, b, spec, qm, dm, blocks=Blocks(16, 16, 1, 1)), Q, D, weights)
    ref = _grads(lambda a, b: torch.stack([score_matrix(a[r].double(), b[r].double(), spec, qm[r], dm[r],
                                                        backend="torch") for r in range(3)]), Q, D, weights)
    for name, x, y in zip(("scores", "dQ", "dD"), got, ref, strict=True):
        _close(x, y, 2e-5 if name == "scores" else 1e-4, f"{spec} {name}")


def test_shared_document_mask_broadcasts_over_runs():
    Q, D, _, dm = (x.to(DEV) for x in _data(G=2, seed=2))
    shared = dm[:1]
    got = fused_scores(Q, D, "topk:4", d_mask=shared)
    ref = torch.stack([score_matrix(Q[r].double(), D[r].double(), "topk:4", d_mask=shared[0], backend="torch")
                       for r in range(2)])
    _close(got.double(), ref, 2e-5, "broadcast mask")


def test_maxsim_ties_route_to_the_first_patch_like_the_reference():
    Q = torch.ones(1, 2, 16, device=DEV)
    D = torch.zeros(2, 20, 16, device=DEV)
    D[:, [3, 7, 18]] = 1.0  # three equal maxima; 18 sits in another 16-patch block
    for backend in ("triton", "torch"):
        Dg = D.clone().requires_grad_(True)
        score_matrix(Q, Dg, "maxsim", backend=backend).sum().backward()
        hit = Dg.grad.abs().sum(-1).nonzero()[:, 1].unique().tolist()
        assert hit == [3], f"{backend}: the gradient reached patches {hit}"


def test_stacked_training_loss_and_gradient_match():
    Q, D, _, _ = _data(Nq=4, T=3, N=4, M=24, G=2, seed=3, ragged=False)
    Q, D = Q.to(DEV), D.to(DEV)
    for spec in ("topk:4", "softmax:1"):
        out = {}
        for backend in ("torch", "triton"):
            Qg = Q.clone().requires_grad_(True)
            loss = stacked_infonce(stacked_scores(Qg, D, spec, backend=backend))
            loss.backward()
            out[backend] = (loss.detach().double(), Qg.grad.double())
        assert abs(float(out["torch"][0] - out["triton"][0])) <= 1e-5 * float(out["torch"][0].abs())
        _close(out["triton"][1], out["torch"][1], 1e-4, f"{spec} stacked dQ")


def test_auto_takes_the_fused_kernel_only_on_cuda():
    Q, D, _, _ = _data(ragged=False)
    assert resolve_backend("auto", "maxsim", Q.to(DEV), D.to(DEV)) == ("triton" if CUDA else "torch")
    assert resolve_backend("auto", "mean", Q.to(DEV), D.to(DEV)) == "torch"
    assert resolve_backend("auto", "maxsim", Q.double().to(DEV), D.double().to(DEV)) == "torch"
    with pytest.raises(ValueError, match="float64"):
        score_matrix(Q.double().to(DEV), D.double().to(DEV), "maxsim", backend="triton")
    with pytest.raises(ValueError, match="no fused kernel"):
        score_matrix(Q.to(DEV), D.to(DEV), "mean", backend="triton")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kernels_compile_for_hopper_without_a_gpu(dtype):
    """Lowering to sm_90 machine code (ptxas included) needs no GPU: catches what the interpreter accepts and the
    compiler does not (loops with a tensor condition, dot shapes, layouts). In its own process: kernels decorated
    in interpreter mode cannot be compiled."""
    script = Path(__file__).with_name("triton_compile.py")
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script), dtype], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU (the bookkeeping is tested on CPU in test_fused.py)")
def test_graphed_training_agrees_with_eager_training_on_cuda():
    from spikehijack.runner.train import TrainConfig, train_stack
    from spikehijack.worlds.synthetic import SyntheticConfig, generate

    worlds = [generate(SyntheticConfig(length=32, n_train=256, n_eval=64, seed=s)) for s in (0, 1, 0)]
    tcfg = TrainConfig(epochs=3, eval_every=3, gini_pairs=64)
    tables = [train_stack(worlds, ["maxsim", "topk:4", "softmax:1"], [0, 1, 2], tcfg, "cuda", False, graph)[0]
              for graph in (False, True)]
    eager, graphed = (t.set_index(["seed", "pooling", "epoch", "metric"]).value for t in tables)
    loss = eager.index.get_level_values("metric") == "loss"
    assert float((eager[loss] - graphed[loss]).abs().max()) <= 1e-4
