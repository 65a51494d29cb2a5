"""Stacked training in the synthetic world: exactness of the fast scorer, learning, determinism, cache resume."""

import functools
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from spikehijack import profiles
from spikehijack.core.metrics import patch_gradient_norms
from spikehijack.core.scoring import score_matrix
from spikehijack.runner import groups, sweeps
from spikehijack.runner.train import TrainConfig, stacked_patch_gradient_norms, stacked_scores, train_stack
from spikehijack.worlds.model import Encoder, StackedEncoder
from spikehijack.worlds.synthetic import SyntheticConfig, generate

POOLINGS = ["maxsim", "topk:3", "softmax:0.5", "softmax:1", "mean"]
TINY = SyntheticConfig(length=16, n_support=6, n_train=256, n_eval=64, seed=0)
TINY_TRAIN = TrainConfig(epochs=4, eval_every=2, batch_size=32, lr=3e-3, gini_pairs=32)


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_stacked_scores_match_score_matrix_values_and_gradients(pooling):
    Q, D, W = _unit(3, 6, 5, 4), _unit(3, 7, 9, 4), torch.randn(3, 6, 7, dtype=torch.float64)
    Qa, Da = Q.clone().requires_grad_(), D.clone().requires_grad_()
    Za = stacked_scores(Qa, Da, pooling)
    (Za * W).sum().backward()
    Qb, Db = Q.clone().requires_grad_(), D.clone().requires_grad_()
    Zb = torch.stack([score_matrix(Qb[r], Db[r], pooling) for r in range(3)])
    (Zb * W).sum().backward()
    torch.testing.assert_close(Za, Zb)
    torch.testing.assert_close(Qa.grad, Qb.grad)
    torch.testing.assert_close(Da.grad, Db.grad)
    with torch.no_grad():  # the chunked evaluation path
        torch.testing.assert_close(stacked_scores(Q, D, pooling, chunk_size=2), Zb.detach())


@pytest.mark.parametrize("pooling", ["maxsim", "topk:3", "softmax:1"])
@pytest.mark.parametrize("loss", ["pair", "infonce"])
def test_stacked_gradient_norms_match_metrics(pooling, loss):
    Q, D = _unit(2, 8, 5, 4), _unit(2, 8, 11, 4)
    got = stacked_patch_gradient_norms(Q, D, pooling, loss)
    ref = torch.stack([patch_gradient_norms(Q[r], D[r], pooling, loss=loss) for r in range(2)])
    torch.testing.assert_close(got, ref)


def test_stacked_scores_rejects_bad_shapes():
    with pytest.raises(ValueError, match="R, Nq, T, d"):
        stacked_scores(torch.randn(2, 3, 4), torch.randn(2, 3, 4, 5), "maxsim")


def test_encoder_unit_norm_and_stack_matches_single():
    x = torch.randn(5, 7, 16)
    stack = StackedEncoder([3, 8])
    out = stack(x.expand(2, -1, -1, -1))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 5, 7))
    torch.testing.assert_close(out[1], Encoder(seed=8)(x))
    with pytest.raises(ValueError, match="shape"):
        stack(torch.randn(3, 4, 16))


def test_runs_in_a_stack_are_independent():
    """Run 'seed 1' gives the same table alone and next to another run (float64: the two stacks multiply
    differently shaped batches, whose last bits training would amplify in float32)."""
    w = generate(TINY)
    tcfg = replace(TINY_TRAIN, dtype="float64")
    both, _ = train_stack([w, w], ["maxsim", "softmax:1"], [0, 1], tcfg, progress=False)
    alone, _ = train_stack([w], ["softmax:1"], [1], tcfg, progress=False)
    a = both[both["seed"] == 1].reset_index(drop=True)
    pd.testing.assert_series_equal(a["value"], alone["value"], atol=1e-9, rtol=1e-9)


def test_trainer_learns_tiny_world_and_is_deterministic():
    w = generate(TINY)
    df1, _ = train_stack([w], ["maxsim"], [0], TINY_TRAIN, progress=False)
    df2, _ = train_stack([w], ["maxsim"], [0], TINY_TRAIN, progress=False)
    pd.testing.assert_frame_equal(df1, df2)
    r1 = df1[df1["metric"] == "recall@1"].set_index("epoch")["value"]
    assert r1.loc[4] > 0.3 > 10 / (2 * TINY.n_eval)  # far above chance (1 / 128)
    assert r1.loc[4] > r1.loc[0]
    assert set(df1.columns) == {"seed", "pooling", "length", "epoch", "metric", "value"}
    gin = df1[df1["metric"].str.startswith("gini_")]
    assert len(gin) == 3 * 8 and gin["value"].between(0, 1).all()
    assert df1[df1["metric"] == "gini_pair_mean"]["value"].min() >= 1 - TINY.n_tokens / TINY.length - 1e-6


def _interrupt_on_second(config, seen):
    seen.append(config["seeds"])
    if len(seen) == 2:
        raise KeyboardInterrupt  # the sweep is stopped midway
    return groups.run_group(config)


def test_cache_resume_after_interruption(tmp_path, monkeypatch):
    tcfg = TrainConfig(epochs=1, eval_every=1, batch_size=32, gini_pairs=32)
    configs = [groups.group_config(TINY.with_(n_train=64, n_eval=16), ["maxsim"], [s], tcfg) for s in (0, 1, 2)]
    seen: list = []
    with pytest.raises(KeyboardInterrupt):
        sweeps.run_grid(configs, functools.partial(_interrupt_on_second, seen=seen), tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.csv"))) == 1
    calls: list = []
    real = groups.run_group
    monkeypatch.setattr(groups, "run_group", lambda c, **kw: calls.append(c["seeds"]) or real(c, **kw))
    table = groups.run_groups(configs, tmp_path, progress=False)
    assert calls == [[1], [2]]  # the finished run was not recomputed
    assert sorted(table["seed"].unique()) == [0, 1, 2]
    assert len(list((tmp_path / "weights").glob("*.npz"))) == 2
    calls.clear()
    groups.run_groups(configs, tmp_path, progress=False)
    assert calls == []


def test_cli_runs_tiny_profile_and_passes_executor_options(tmp_path, monkeypatch, capsys):
    from spikehijack.__main__ import main

    grid = profiles.Grid(lengths=(16,), seeds=(0,), train=TrainConfig(epochs=1, eval_every=1, gini_pairs=64),
                         n_train=64, n_eval=16)
    quick = profiles.get("quick")
    tiny = replace(quick, synthetic=replace(quick.synthetic, sweep=grid))
    monkeypatch.setitem(profiles.PROFILES, "quick", tiny)
    assert main(["synthetic", "--profile", "quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "maxsim" in out and "recall@1" in out
    import spikehijack.__main__ as cli

    asked = []
    monkeypatch.setattr(cli, "run_groups", lambda configs, *a, **k: asked.append([c["length"] for c in configs])
                        or pd.DataFrame())
    monkeypatch.setattr(cli, "summary_table", lambda df: df)
    frontier = profiles.get("paper").synthetic.frontier.lengths
    assert main(["synthetic", "--profile", "paper", "--lengths", "256", "32"]) == 0
    assert main(["synthetic", "--profile", "paper", "--grid", "frontier"]) == 0
    assert asked == [[256, 32], list(frontier)]  # a long stack can go first
    with pytest.raises(SystemExit, match="--lengths: \\[48\\] not in the paper sweep grid"):
        main(["synthetic", "--profile", "paper", "--lengths", "48"])
    seen = {}

    def fake_run_grid(configs, fn, cache_dir, executor="local", progress=True, desc="", **opts):
        seen.update(executor=executor, **opts)
        return sweeps.SweepResult(table=pd.DataFrame())

    monkeypatch.setattr(groups.sweeps, "run_grid", fake_run_grid)
    groups.run_groups([], tmp_path, executor="ray", address="10.0.0.1:6379", progress=False)
    assert seen == {"executor": "ray", "address": "10.0.0.1:6379"}
    seen.clear()
    groups.run_groups([], tmp_path, executor="local", address="ignored", progress=False)
    assert seen == {"executor": "local"}
