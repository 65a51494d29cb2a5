"""Run functions for the sweep tests, at module top level so Ray workers can import them by name.

Each takes a config dict and returns a tidy table, like a real run function. ``log_dir`` in a config makes
the run leave a marker file per call, so tests can count which runs actually executed (in any process).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch


def _log(config: dict) -> None:
    if config.get("log_dir"):
        d = Path(config["log_dir"])
        d.mkdir(parents=True, exist_ok=True)
        n = len(list(d.glob(f"x{config['x']}-*")))
        (d / f"x{config['x']}-{n}-{os.getpid()}").touch()


def calls(log_dir: str | Path, x: int | None = None) -> int:
    """How many times runs (of ``x``, or all) were executed with this ``log_dir``."""
    return len(list(Path(log_dir).glob("x*-*" if x is None else f"x{x}-*")))


def square_run(config: dict) -> pd.DataFrame:
    """Pure python: two rows per run."""
    _log(config)
    x = config["x"]
    return pd.DataFrame({"metric": ["square", "cube"], "value": [x**2, x**3]})


def torch_run(config: dict) -> pd.DataFrame:
    """A tiny seeded torch fit: a few SGD steps of least squares on random data."""
    _log(config)
    g = torch.Generator().manual_seed(config["seed"])
    X = torch.randn(64, 8, generator=g)
    y = X @ torch.randn(8, generator=g) + 0.1 * torch.randn(64, generator=g)
    w = torch.zeros(8, requires_grad=True)
    opt = torch.optim.SGD([w], lr=config["lr"])
    for _ in range(20):
        opt.zero_grad()
        loss = ((X @ w - y) ** 2).mean()
        loss.backward()
        opt.step()
    return pd.DataFrame({"metric": ["loss"], "value": [float(loss.detach())]})


def failing_run(config: dict) -> pd.DataFrame:
    """Raises for x == 3 while the file ``config["fail_flag"]`` exists, else behaves like ``square_run``."""
    if config["x"] == 3 and Path(config["fail_flag"]).exists():
        _log(config)
        raise ValueError(f"boom at x={config['x']}")
    return square_run(config)


def crashing_run(config: dict) -> pd.DataFrame:
    """Kills its own process for x == 3 (a dead worker), else behaves like ``square_run``."""
    if config["x"] == 3:
        os._exit(1)
    return square_run(config)


def flaky_run(config: dict) -> pd.DataFrame:
    """Fails on the first call of each x (marker file in ``log_dir``), succeeds on the next."""
    first = calls(config["log_dir"], config["x"]) == 0
    _log(config)
    if first:
        raise RuntimeError(f"transient failure at x={config['x']}")
    return square_run({k: v for k, v in config.items() if k != "log_dir"})


def threads_run(config: dict) -> pd.DataFrame:
    """Reports the torch thread count the run sees."""
    return pd.DataFrame({"metric": ["threads"], "value": [torch.get_num_threads()]})


def gpu_ids_run(config: dict, device: str = "cpu") -> pd.DataFrame:
    """Reports the GPU ids Ray assigned to the task (one row per id; none for a CPU task)."""
    import ray

    ids = [str(i) for i in ray.get_gpu_ids()]
    return pd.DataFrame({"metric": ["gpu"] * len(ids) or ["none"], "value": ids or [""]})


def not_a_table_run(config: dict) -> list:
    return [config["x"]]
