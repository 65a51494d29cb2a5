"""Wall time of one small synthetic grid with the local and the Ray sweep executors.

Each group trains 3 poolings x 1 seed as one stack (spikehijack.runner.groups.run_group), shrunk from the quick
profile (fewer epochs and training pairs) so the whole benchmark takes a few minutes on 2 cores. Rows:

- local: the runs one after another in this process, torch using ``--threads`` threads;
- ray (cold): ``run_grid(executor="ray")`` as the CLI calls it, starting and stopping its own Ray;
- ray (warm): inside an already started Ray session, with 1 run at a time x all threads, then one run per core.

Usage: ``python benchmarks/bench_sweeps.py [--lengths 32 64] [--seeds 0 1] [--epochs 4] [--n-train 256]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from spikehijack import profiles  # noqa: E402
from spikehijack.runner import groups, sweeps  # noqa: E402
from spikehijack.runner.train import TrainConfig  # noqa: E402


def small_grid(lengths, seeds, epochs: int, n_train: int) -> list[dict]:
    """Group configs: one per (length, seed), each training the 3 main poolings as one stack."""
    world = profiles.calibrated_world().with_(n_train=n_train, n_eval=128)
    tcfg = TrainConfig(epochs=epochs, eval_every=epochs, gini_pairs=64)
    return [groups.group_config(world.with_(length=M), profiles.POOLINGS_MAIN, (s,), tcfg)
            for M in lengths for s in seeds]


def timed(configs, run_fn, executor: str, **opts) -> tuple[float, pd.DataFrame]:
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as cache:
        t0 = time.perf_counter()
        res = sweeps.run_grid(configs, run_fn, cache, executor=executor, progress=False, **opts)
        wall = time.perf_counter() - t0
    res.raise_for_failures()
    return wall, res.table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads for local, CPUs for Ray")
    args = ap.parse_args(argv)

    configs = small_grid(args.lengths, args.seeds, args.epochs, args.n_train)
    run_fn = functools.partial(groups.run_group, device="cpu")
    n, cores = len(configs), args.cores
    rows = []

    torch.set_num_threads(cores)
    wall, ref = timed(configs, run_fn, "local")
    rows.append(("local", 1, cores, wall))

    wall, tab = timed(configs, run_fn, "ray", num_cpus=cores)
    rows.append(("ray (cold: start + stop)", cores, 1, wall))
    diff = (tab["value"] - ref["value"]).abs().max()

    from spikehijack.runner.distributed import ray_session

    t0 = time.perf_counter()
    with ray_session(num_cpus=cores):
        t_up = time.perf_counter() - t0
        wall, _ = timed(configs, run_fn, "ray", cpus_per_run=cores)
        rows.append(("ray (warm)", 1, cores, wall))
        wall, _ = timed(configs, run_fn, "ray", cpus_per_run=1)
        rows.append(("ray (warm)", cores, 1, wall))
        t1 = time.perf_counter()
    t_down = time.perf_counter() - t1

    table = pd.DataFrame(rows, columns=["executor", "concurrent runs", "threads/run", "wall s"])
    table["runs/min"] = (60 * n / table["wall s"]).round(2)
    table["speed-up vs local"] = (table["wall s"].iloc[0] / table["wall s"]).round(2)
    table["wall s"] = table["wall s"].round(1)
    print(f"grid: {n} groups x {len(profiles.POOLINGS_MAIN)} poolings, lengths {args.lengths}, seeds {args.seeds}, "
          f"{args.epochs} epochs, n_train {args.n_train}; {cores} cores, torch {torch.__version__}")
    print(table.to_string(index=False))
    print(f"Ray session start {t_up:.1f} s, shutdown {t_down:.1f} s; "
          f"max |ray - local| over all metric values: {diff:.2e}")
    return table


if __name__ == "__main__":
    main()
