"""Training groups: the cache unit of the synthetic grids (one length x several poolings x several seeds).

A group config is a flat mapping: the world's knobs (``SyntheticConfig`` without its seed), the trainer's
(``TrainConfig``), and the lists ``poolings`` and ``seeds``. It stays structured until ``sweeps.run_key``
hashes it; ``run_groups`` trains each group as one stack (``train.train_stack``) or loads it from the cache.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from .. import io
from ..core.device import default_dtype, resolve_device
from ..core.pooling import parse_pooling
from ..profiles import Grid
from ..worlds.model import StackedEncoder
from ..worlds.synthetic import SyntheticConfig, SyntheticData, generate
from . import sweeps
from .train import TrainConfig, train_stack

_WORLD_KEYS = [f.name for f in fields(SyntheticConfig) if f.name != "seed"]
_TRAIN_KEYS = [f.name for f in fields(TrainConfig)]


class Group(NamedTuple):
    """A group config read back: the world (seed 0), pooling per stack entry, seeds, trainer settings."""

    world: SyntheticConfig
    poolings: list[str]
    seeds: list[int]
    train: TrainConfig

    @property
    def runs(self) -> list[tuple[str, int]]:
        """(pooling, seed) of every run, in the stack's order."""
        return [(p, s) for p in self.poolings for s in self.seeds]


def group_config(
    world: SyntheticConfig, poolings: Sequence[str], seeds: Sequence[int], tcfg: TrainConfig
) -> dict[str, Any]:
    """The config of one stack (its hash is the cache key): world knobs, train knobs, poolings, seeds."""
    cfg = {k: v for k, v in asdict(world).items() if k != "seed"}
    cfg.update(asdict(tcfg))
    cfg["poolings"] = [parse_pooling(p).spec for p in poolings]
    cfg["seeds"] = [int(s) for s in seeds]
    return cfg


def group(config: Mapping[str, Any]) -> Group:
    """A group config -> ``Group`` (world, poolings, seeds, trainer settings)."""
    return Group(SyntheticConfig(**{k: config[k] for k in _WORLD_KEYS}), list(config["poolings"]),
                 [int(s) for s in config["seeds"]], TrainConfig(**{k: config[k] for k in _TRAIN_KEYS}))


def grid_configs(grid: Grid, lengths: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The group configs of a ``profiles.Grid`` (one per length; ``lengths`` picks a subset, in its order)."""
    chosen = grid.lengths if lengths is None else [M for M in dict.fromkeys(lengths) if M in grid.lengths]
    return [group_config(grid.world(M), grid.poolings, grid.seeds, grid.train) for M in chosen]


def world_of(config: Mapping[str, Any], seed: int, **changes: Any) -> SyntheticData:
    """The world a group config trains on for ``seed`` (with optional knob changes, e.g. another length)."""
    g = group(config)
    with default_dtype(g.train.dtype):
        return generate(g.world.with_(seed=seed, **changes))


def run_group(
    config: Mapping[str, Any], weights_dir: str | Path | None = None, device: str = "cpu", progress: bool = False
) -> pd.DataFrame:
    """Train every (pooling, seed) of a group config as one stack; optionally save weights to
    ``weights_dir/<run_key>.npz`` (the same key as the cached table)."""
    g = group(config)
    worlds = {s: world_of(config, s) for s in g.seeds}
    pairs = g.runs
    df, enc = train_stack([worlds[s] for _, s in pairs], [p for p, _ in pairs], [s for _, s in pairs], g.train,
                          device, progress)
    if weights_dir is not None:
        arrays = {k: v.numpy() for k, v in enc.state_arrays().items()}
        io.write_npz(Path(weights_dir) / f"{sweeps.run_key(config)}.npz", **arrays)
    return df


def run_groups(
    configs: Sequence[Mapping[str, Any]],
    cache_dir: str | Path,
    device: str = "cpu",
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or load from ``cache_dir``) every group config; the weights go to ``cache_dir/weights``."""
    fn = functools.partial(run_group, weights_dir=Path(cache_dir) / "weights", device=device)
    opts = {"address": address} if executor == "ray" and address is not None else {}
    res = sweeps.run_grid(list(configs), fn, cache_dir, executor=executor, progress=progress, desc="groups", **opts)
    return res.raise_for_failures().table


def load_group_models(
    config: Mapping[str, Any], cache_dir: str | Path, device: str = "cpu"
) -> tuple[StackedEncoder, list[str], list[int]]:
    """The trained stack of a cached group: (encoder, pooling per run, seed per run)."""
    g = group(config)
    path = Path(cache_dir) / "weights" / f"{sweeps.run_key(config)}.npz"
    if not path.exists():
        raise FileNotFoundError(f"no weights for this group at {path}: run it with run_groups first")
    pairs = g.runs
    with default_dtype(g.train.dtype):
        enc = StackedEncoder([s for _, s in pairs], g.world.dim, g.train.hidden, g.train.out_dim)
    return enc.load_arrays(io.read_npz(path)).to(resolve_device(device)), [p for p, _ in pairs], [s for _, s in pairs]


def summary_table(df: pd.DataFrame, metrics: Sequence[str] = ("recall@1", "mrr", "gini_pair_mean",
                                                                "gini_infonce_mean")) -> pd.DataFrame:
    """Final-epoch mean over seeds per (length, pooling) and metric, one column per metric."""
    last = df[df["epoch"] == df.groupby(["length", "pooling"])["epoch"].transform("max")]
    last = last[last["metric"].isin(metrics)]
    return last.pivot_table(index=["length", "pooling"], columns="metric", values="value", aggfunc="mean").round(4)
