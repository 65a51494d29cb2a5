"""Cached, resumable sweeps over run configurations.

A *run* is a JSON-serialisable config dict and a top-level function ``run_fn(config) -> DataFrame`` (a tidy
table). Each finished run is written atomically to ``<cache_dir>/<config_hash>.csv`` with its config
columns and ``run_key``; a rerun skips runs whose file exists, so an interrupted sweep resumes where it
stopped. Only the driver writes the cache, whatever the executor, so a failed run never leaves a record.

Executors: ``"local"`` runs in this process; ``"ray"`` (``pip install -e .[ray]``) fans runs out on a Ray
cluster (spikehijack.runner.distributed). Both share the cache, the progress bar and the failure report.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from tqdm.auto import tqdm

from ..io import config_hash, write_csv

RunFn = Callable[[dict[str, Any]], pd.DataFrame]


@dataclass
class Failure:
    """A run that raised: its config and the error text."""

    key: str
    config: dict[str, Any]
    error: str


@dataclass
class SweepResult:
    """All rows of the finished runs (cached and new) and the runs that failed."""

    table: pd.DataFrame
    failures: list[Failure] = field(default_factory=list)
    n_cached: int = 0
    n_computed: int = 0

    def raise_for_failures(self) -> SweepResult:
        if self.failures:
            lines = "\n".join(f"  {f.key} {f.config}: {f.error.strip().splitlines()[-1]}" for f in self.failures)
            raise RuntimeError(f"{len(self.failures)} run(s) failed (rerun to retry only these):\n{lines}")
        return self


class Executor(Protocol):
    def __call__(
        self,
        pending: Sequence[tuple[str, dict[str, Any]]],
        run_fn: RunFn,
        on_result: Callable[[str, pd.DataFrame], None],
        on_failure: Callable[[str, str], None],
        **options: Any,
    ) -> None: ...


def _run_local(pending, run_fn, on_result, on_failure, retries: int = 0, **options: Any) -> None:
    """Run every pending config in this process, in order."""
    if options:
        raise ValueError(f"the local executor takes no options, got {sorted(options)}")
    for key, config in pending:
        for attempt in range(retries + 1):
            try:
                df = run_fn(dict(config))
            except Exception:
                if attempt == retries:
                    on_failure(key, traceback.format_exc())
            else:
                on_result(key, df)
                break


# name -> executor, or "module:function" imported on first use (keeps optional dependencies optional).
EXECUTORS: dict[str, Executor | str] = {"local": _run_local, "ray": "spikehijack.runner.distributed:run_ray"}


def get_executor(name: str) -> Executor:
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; valid: {', '.join(sorted(EXECUTORS))}")
    ex = EXECUTORS[name]
    if isinstance(ex, str):
        module, _, fn = ex.partition(":")
        ex = getattr(importlib.import_module(module), fn)
    return ex


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as the cache hashes it: lists and tuples joined with "," (``["maxsim", "topk:4"]`` ->
    ``"maxsim,topk:4"``), everything else as it is.

    >>> flat_config({"poolings": ["maxsim", "topk:4"], "seeds": (0, 1), "length": 64})
    {'poolings': 'maxsim,topk:4', 'seeds': '0,1', 'length': 64}
    """
    return {k: ",".join(str(x) for x in v) if isinstance(v, list | tuple) else v for k, v in config.items()}


def _columns(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as table columns: ``flat_config``, with any other non-scalar as its string form."""
    return {k: v if isinstance(v, int | float | str | bool) or v is None else str(v)
            for k, v in flat_config(config).items()}


def run_key(config: Mapping[str, Any]) -> str:
    """The cache key of a run: a hash of its flattened config (``flat_config``)."""
    return config_hash(flat_config(config))


def load_cached(configs: Iterable[Mapping[str, Any]], cache_dir: str | Path) -> pd.DataFrame:
    """Concatenate the cached tables of the given configs that have finished (others are skipped)."""
    frames = []
    for c in configs:
        path = Path(cache_dir) / f"{run_key(c)}.csv"
        if path.exists():
            frames.append(pd.read_csv(path))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_grid(
    configs: Sequence[Mapping[str, Any]],
    run_fn: RunFn,
    cache_dir: str | Path,
    executor: str = "local",
    progress: bool = True,
    desc: str = "runs",
    **executor_options: Any,
) -> SweepResult:
    """Run every config not yet cached under ``cache_dir``; return all rows and the failures.

    ``run_fn`` must be a top-level (importable) function so that remote executors can ship it.
    ``executor_options`` go to the executor (e.g. ``retries=1``, ``address="auto"``, ``num_gpus=1``).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    configs = [dict(c) for c in configs]
    keys = [run_key(c) for c in configs]
    if len(set(keys)) != len(keys):
        raise ValueError("configs contains duplicates (identical configs hash to the same run)")
    by_key = dict(zip(keys, configs, strict=True))
    pending = [(k, c) for k, c in by_key.items() if not (cache_dir / f"{k}.csv").exists()]
    failures: list[Failure] = []
    bar = tqdm(total=len(configs), initial=len(configs) - len(pending), desc=desc, disable=not progress)

    def on_result(key: str, df: pd.DataFrame) -> None:
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"run_fn must return a pandas DataFrame, got {type(df).__name__}")
        cols = {"run_key": key, **_columns(by_key[key])}
        df = df.assign(**{k: v for k, v in cols.items() if k not in df.columns})
        write_csv(df, cache_dir / f"{key}.csv")
        bar.update(1)

    def on_failure(key: str, error: str) -> None:
        failures.append(Failure(key, by_key[key], error))
        bar.update(1)

    try:
        if pending:
            get_executor(executor)(pending, run_fn, on_result, on_failure, **executor_options)
    finally:
        bar.close()
    return SweepResult(
        table=load_cached(configs, cache_dir),
        failures=failures,
        n_cached=len(configs) - len(pending),
        n_computed=len(pending) - len(failures),
    )
