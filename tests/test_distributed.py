"""The Ray executor: same tables as local, per-config failure reports, shared cache, clean shutdown.

One local Ray instance of 2 CPUs serves the module (started by a fixture); the first test starts and stops
its own instance to check that run_ray cleans up after itself.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import sys
import tempfile
import time

import pandas as pd
import psutil
import pytest
import sweep_fixtures as fx

ray = pytest.importorskip("ray")
distributed = importlib.import_module("spikehijack.runner.distributed")
from spikehijack.runner.sweeps import run_grid  # noqa: E402

GRID = [{"x": x} for x in range(5)]


def _ray_processes() -> set[int]:
    """PIDs of the live Ray processes this process started (raylet, GCS, agents, workers)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "ray" in " ".join(p.cmdline()).lower():
                out.add(p.pid)
        except psutil.Error:  # exited meanwhile
            pass
    return out


def _all_exited(pids: set[int], timeout: float = 15.0) -> bool:
    """True once none of ``pids`` is alive (Ray's shutdown reaps some of them asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.2)
    return False


def test_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "spikehijack.runner.distributed")
    with pytest.raises(ImportError, match=r"pip install -e \.\[ray\]"):
        importlib.import_module("spikehijack.runner.distributed")


def test_bad_options_are_rejected(tmp_path):
    for opts, match in [
        ({"num_worker": 2}, "unknown option"),
        ({"address": "auto", "num_cpus": 2}, "num_cpus"),
        ({"gpu_fraction": 1.5}, "gpu_fraction"),
        ({"retries": -1}, "retries"),
        ({"cpus_per_run": 0}, "cpus_per_run"),
    ]:
        with pytest.raises(ValueError, match=match):
            run_grid(GRID, fx.square_run, tmp_path, executor="ray", progress=False, **opts)
    assert not ray.is_initialized()


def test_own_instance_is_started_and_shut_down(tmp_path, monkeypatch):
    """Without an address run_ray starts Ray, and afterwards: no session, no processes, no temp dir."""
    assert not ray.is_initialized(), "this test must run before the module's shared instance starts"
    parent = tempfile.mkdtemp(prefix="shr-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    monkeypatch.setattr(distributed, "_short_tmp", lambda: parent)
    env_before = {k: os.environ.get(k) for k in ("PYTHONPATH", "RAY_AUTH_MODE")}
    started: set[int] = set()
    real_shutdown = ray.shutdown

    def spy_shutdown(*args, **kwargs):  # note what runs just before run_ray shuts its instance down
        started.update(_ray_processes())
        return real_shutdown(*args, **kwargs)

    monkeypatch.setattr(ray, "shutdown", spy_shutdown)
    try:
        res = run_grid(GRID, fx.square_run, tmp_path / "ray", executor="ray", num_cpus=1, progress=False)
        assert res.n_computed == len(GRID) and not res.failures
        assert not ray.is_initialized()
        assert os.listdir(parent) == []
        assert {k: os.environ.get(k) for k in env_before} == env_before
        assert started and _all_exited(started), "Ray left processes behind"
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    local = run_grid(GRID, fx.square_run, tmp_path / "local", progress=False)
    pd.testing.assert_frame_equal(res.table, local.table)


@pytest.fixture(scope="module")
def ray2():
    # One fake GPU (a Ray resource only) lets the tests check GPU requests on a CPU-only machine.
    with distributed.ray_session(num_cpus=2, num_gpus=1):
        yield
        started = _ray_processes()
    assert _all_exited(started)


@pytest.mark.parametrize(
    ("run_fn", "grid"),
    [
        (fx.square_run, GRID),
        (fx.torch_run, [{"seed": s, "lr": lr} for s in range(3) for lr in (0.01, 0.1)]),
    ],
)
def test_same_table_as_local(ray2, tmp_path, run_fn, grid):
    local = run_grid(grid, run_fn, tmp_path / "local", progress=False)
    remote = run_grid(grid, run_fn, tmp_path / "ray", executor="ray", progress=False)
    assert remote.n_computed == len(grid) and not remote.failures
    pd.testing.assert_frame_equal(remote.table, local.table)
    assert ray.is_initialized()  # a session opened by someone else is left running


def test_failure_is_reported_others_kept_rerun_computes_only_it(ray2, tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    grid = [{"x": x, "fail_flag": str(flag), "log_dir": str(tmp_path / "log")} for x in range(5)]
    cache = tmp_path / "cache"
    res = run_grid(grid, fx.failing_run, cache, executor="ray", progress=False)
    assert [f.config["x"] for f in res.failures] == [3]
    assert res.failures[0].error.strip().splitlines()[-1] == "ValueError: boom at x=3"
    assert res.n_computed == 4 and sorted(res.table["x"].unique()) == [0, 1, 2, 4]
    assert len(list(cache.glob("*.csv"))) == 4  # the failed run left no record
    with pytest.raises(RuntimeError, match=rf"(?s)1 run\(s\) failed.*{res.failures[0].key}.*boom at x=3"):
        res.raise_for_failures()

    flag.unlink()
    again = run_grid(grid, fx.failing_run, cache, executor="ray", progress=False).raise_for_failures()
    assert (again.n_cached, again.n_computed) == (4, 1)
    assert [fx.calls(tmp_path / "log", x) for x in range(5)] == [1, 1, 1, 2, 1]
    local = run_grid([{k: v for k, v in c.items() if k != "log_dir"} for c in grid], fx.failing_run,
                     tmp_path / "local", progress=False)
    pd.testing.assert_frame_equal(again.table.drop(columns=["run_key", "log_dir"]),
                                  local.table.drop(columns=["run_key"]))


def test_dead_worker_is_reported_others_kept(ray2, tmp_path):
    res = run_grid(GRID, fx.crashing_run, tmp_path, executor="ray", progress=False)
    assert [f.config["x"] for f in res.failures] == [3]
    assert "WorkerCrashedError" in res.failures[0].error
    assert res.n_computed == 4


def test_bounded_retries(ray2, tmp_path):
    grid = [{"x": x, "log_dir": str(tmp_path / "log")} for x in range(3)]
    once = run_grid(grid, fx.flaky_run, tmp_path / "no-retry", executor="ray", progress=False)
    assert len(once.failures) == 3 and "transient failure" in once.failures[0].error
    twice = run_grid(grid, fx.flaky_run, tmp_path / "retry", executor="ray", retries=1, progress=False)
    assert not twice.failures and twice.n_computed == 3
    # 1 failed call in the first sweep, then 1 success (the marker exists) in the second: retries unused.
    grid2 = [{"x": x, "log_dir": str(tmp_path / "log2")} for x in range(3)]
    res = run_grid(grid2, fx.flaky_run, tmp_path / "retry2", executor="ray", retries=1, progress=False)
    assert not res.failures and [fx.calls(tmp_path / "log2", x) for x in range(3)] == [2, 2, 2]


def test_cache_is_shared_between_executors(ray2, tmp_path):
    grid = [{"x": x, "log_dir": str(tmp_path / "log")} for x in range(4)]
    cache = tmp_path / "cache"
    first = run_grid(grid[:2], fx.square_run, cache, progress=False)  # local writes half
    second = run_grid(grid, fx.square_run, cache, executor="ray", progress=False)  # ray reads it, adds the rest
    assert (second.n_cached, second.n_computed) == (2, 2)
    third = run_grid(grid, fx.square_run, cache, progress=False)  # local reads everything ray wrote
    assert (third.n_cached, third.n_computed) == (4, 0)
    assert [fx.calls(tmp_path / "log", x) for x in range(4)] == [1, 1, 1, 1]
    pd.testing.assert_frame_equal(third.table, second.table)
    pd.testing.assert_frame_equal(second.table.iloc[: len(first.table)], first.table)


@pytest.mark.parametrize("cpus", [1, 2])
def test_torch_threads_follow_cpu_allotment(ray2, tmp_path, cpus):
    res = run_grid([{"x": 0}], fx.threads_run, tmp_path, executor="ray", cpus_per_run=cpus, progress=False)
    assert res.table["value"].tolist() == [cpus]


def test_cuda_runs_ask_for_a_gpu(ray2, tmp_path):
    grid = [{"x": 0, "device": "cpu"}, {"x": 1, "device": "cuda"}, {"x": 2, "device": "auto"}]
    res = run_grid(grid, fx.gpu_ids_run, tmp_path / "a", executor="ray", progress=False)
    assert res.table.groupby("x")["metric"].first().tolist() == ["none", "gpu", "gpu"]
    half = run_grid(grid, fx.gpu_ids_run, tmp_path / "b", executor="ray", gpu_fraction=0.5, progress=False)
    assert half.table.groupby("x")["metric"].first().tolist() == ["none", "gpu", "gpu"]
    # A sweep-level device (option, or the device keyword of a partial run_fn) covers configs without one.
    plain = [{"x": 0}, {"x": 1}]
    res = run_grid(plain, fx.gpu_ids_run, tmp_path / "c", executor="ray", device="cuda", progress=False)
    assert set(res.table["metric"]) == {"gpu"}
    part = functools.partial(fx.gpu_ids_run, device="cuda")
    res = run_grid(plain, part, tmp_path / "d", executor="ray", progress=False)
    assert set(res.table["metric"]) == {"gpu"}


def test_unsatisfiable_gpu_request_is_reported_not_hung(ray2, tmp_path):
    grid = [{"x": 0, "device": "cpu"}, {"x": 1, "device": "cuda"}]
    res = run_grid(grid, fx.square_run, tmp_path, executor="ray", num_gpus=2, progress=False)
    assert [f.config["x"] for f in res.failures] == [0, 1]
    assert "2 GPU(s), the largest Ray node has 1" in res.failures[0].error and res.n_computed == 0
    with pytest.raises(ValueError, match="cpus_per_run=3 but the largest Ray node has 2 CPUs"):
        run_grid(grid, fx.square_run, tmp_path, executor="ray", cpus_per_run=3, progress=False)
    ok = run_grid(grid[:1], fx.square_run, tmp_path, executor="ray", progress=False)
    assert ok.n_computed == 1 and not ok.failures


def test_run_fn_must_return_a_table(ray2, tmp_path):
    with pytest.raises(TypeError, match="DataFrame"):
        run_grid([{"x": 0}], fx.not_a_table_run, tmp_path, executor="ray", progress=False)
    assert list(tmp_path.glob("*.csv")) == []
