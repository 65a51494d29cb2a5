"""The ``"ray"`` sweep executor: one Ray task per run, results written by the driver into the shared cache.

``run_ray`` follows the ``Executor`` protocol of spikehijack.runner.sweeps: ``run_grid(..., executor="ray")`` hands
it the pending ``(key, config)`` pairs. Each run becomes one Ray task named ``run-<key>`` that only computes
and returns its table; the driver consumes results with ``ray.wait`` as they finish and passes them to
``on_result``, which writes the cache atomically. A task never touches the cache, so resubmitting it is
harmless (idempotent) and a dead or failing task leaves no record: a rerun computes only what is missing,
with either executor.

Without ``address`` a private local instance is started (sized to the machine, no dashboard, its own
short-lived temp folder, the driver's ``sys.path`` visible to workers) and shut down at the end. With
``address="auto"`` or ``"ray://host:port"`` the driver connects to a running cluster, whose nodes must be
able to import ``run_fn`` (install the package there, or pass ``runtime_env={"working_dir": ...}``).
If Ray is already initialised in this process, that session is used and left running.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

try:
    import ray
    import ray.exceptions
except ImportError as e:  # pragma: no cover - exercised by a test that hides ray
    raise ImportError(
        "the 'ray' sweep executor needs Ray, which is not installed: pip install -e .[ray]"
    ) from e

import pandas as pd
import torch

from ..core.checks import check_positive_float, check_positive_int

__all__ = ["gpus_per_run", "ray_session", "run_ray"]

# Environment variables ray.init may set in the driver; restored when our session ends.
_ENV_TOUCHED = ("PYTHONPATH", "RAY_AUTH_MODE")


def _run_one(run_fn: Callable[[dict[str, Any]], pd.DataFrame], config: dict[str, Any], threads: int) -> Any:
    """Body of one Ray task: pin torch threads to the task's CPU allotment, then run."""
    torch.set_num_threads(threads)
    return run_fn(config)


_remote_run = ray.remote(_run_one)


def _short_tmp() -> str:
    """A parent for Ray's temp folder short enough for its unix sockets (paths must stay < 108 bytes)."""
    tmp = tempfile.gettempdir()
    return tmp if len(tmp) <= 40 or not os.path.isdir("/tmp") else "/tmp"


def _driver_path() -> list[str]:
    """The driver's import path minus what every interpreter of this environment already has."""
    base = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out: list[str] = []
    for p in sys.path:
        ap = os.path.abspath(p or os.curdir)
        if os.path.isdir(ap) and not any(os.path.realpath(ap).startswith(b) for b in base) and ap not in out:
            out.append(ap)
    return out


@contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
) -> Iterator[bool]:
    """Make Ray available for the block; yield whether this call opened the session (and will close it).

    Reuses an initialised Ray; else connects to ``address``; else starts a local instance of ``num_cpus``
    CPUs (default: all of this machine) and ``num_gpus`` GPUs (default: detected) in a temp folder that is
    deleted afterwards. Only a session opened here is shut down here.
    """
    if ray.is_initialized():
        if address is not None or num_cpus is not None:
            raise ValueError("Ray is already initialised in this process; do not pass address or num_cpus")
        yield False
        return
    saved = {k: os.environ.get(k) for k in _ENV_TOUCHED}
    tmp = None
    env = dict(runtime_env) if runtime_env else None
    common = dict(log_to_driver=False, logging_level=logging.WARNING, runtime_env=env)
    try:
        if address is None:
            tmp = tempfile.mkdtemp(prefix="shray-", dir=_short_tmp())
            # Workers are spawned by the raylet, which inherits this environment at ray.init.
            os.environ["PYTHONPATH"] = os.pathsep.join(_driver_path())
            ray.init(
                address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus,
                include_dashboard=False, _temp_dir=tmp, **common,
            )
        else:
            ray.init(address=address, **common)
        _restore_env(saved, keep=("RAY_AUTH_MODE",))
        yield True
    finally:
        # Also after a half-finished ray.init (e.g. Ctrl-C); waiting lets no process write into tmp after rmtree.
        ray.shutdown(wait_for_processes=True)
        _restore_env(saved)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _restore_env(saved: Mapping[str, str | None], keep: Sequence[str] = ()) -> None:
    for k, v in saved.items():
        if k in keep:
            continue
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def gpus_per_run(
    config: Mapping[str, Any],
    num_gpus: float = 0,
    gpu_fraction: float | None = None,
    cluster_gpus: float = 0,
    device: str | None = None,
) -> float:
    """GPUs one run asks Ray for.

    ``num_gpus > 0`` forces that request for every run. Otherwise a run whose device (the config's
    ``"device"``, else ``device``) is ``"cuda"`` (or ``"cuda:N"``, or ``"auto"`` on a cluster that has GPUs)
    asks for ``gpu_fraction`` of a GPU (default one whole GPU, so a multi-GPU cluster runs one run per GPU
    and Ray pins each task to its GPU via CUDA_VISIBLE_DEVICES); CPU runs ask for none.

    >>> gpus_per_run({"device": "cuda"}), gpus_per_run({"device": "cuda"}, gpu_fraction=0.25)
    (1.0, 0.25)
    >>> gpus_per_run({"device": "cpu"}), gpus_per_run({"device": "auto"}), gpus_per_run({}, num_gpus=2)
    (0.0, 0.0, 2.0)
    """
    if num_gpus:
        return float(num_gpus)
    device = str(config.get("device", device or "cpu"))
    wants = device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)
    return (1.0 if gpu_fraction is None else float(gpu_fraction)) if wants else 0.0


def _capacity() -> tuple[float, float, float]:
    """(GPUs in the cluster, most GPUs on one node, most CPUs on one node) over the alive nodes."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpus = [float(r.get("GPU", 0)) for r in nodes] or [0.0]
    cpus = [float(r.get("CPU", 0)) for r in nodes] or [0.0]
    return sum(gpus), max(gpus), max(cpus)


def _describe(err: BaseException) -> str:
    """Error text for a failed task; its last line names the error (what SweepResult reports)."""
    if isinstance(err, ray.exceptions.RayTaskError):
        return str(err)  # the remote traceback, ending with "ExcType: message"
    return f"{type(err).__name__}: {err}".strip().replace("\n", " ")


def run_ray(
    pending: Sequence[tuple[str, dict[str, Any]]],
    run_fn: Callable[[dict[str, Any]], pd.DataFrame],
    on_result: Callable[[str, pd.DataFrame], None],
    on_failure: Callable[[str, str], None],
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: float = 0,
    gpu_fraction: float | None = None,
    retries: int = 0,
    cpus_per_run: float = 1,
    device: str | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    **options: Any,
) -> None:
    """Run each pending ``(key, config)`` as one Ray task; report results and failures as they finish.

    ``address``: None (start a local instance), ``"auto"`` or ``"ray://host:port"``. ``num_cpus``: size of
    the local instance (default all cores). ``cpus_per_run``: CPUs each task reserves and its torch thread
    count. ``num_gpus`` / ``gpu_fraction`` / ``device``: see ``gpus_per_run``; ``device`` is the device of
    runs whose config has none (default: the ``device`` keyword of a ``functools.partial`` run_fn, else cpu;
    a GPU run must ask Ray for its GPU, else every task would land on GPU 0). ``retries``: extra attempts after an
    exception or a dead worker (Ray's ``max_retries`` with ``retry_exceptions``). ``runtime_env`` goes to
    ``ray.init`` (e.g. ``{"working_dir": "."}`` on a cluster without the package installed).
    """
    if options:
        raise ValueError(
            f"unknown option(s) for the ray executor: {sorted(options)}; valid: address, num_cpus, "
            "num_gpus, gpu_fraction, retries, cpus_per_run, device, runtime_env"
        )
    if address is not None and num_cpus is not None:
        raise ValueError("num_cpus sizes a local Ray instance; with address= the cluster's size is fixed")
    if num_cpus is not None:
        check_positive_int("num_cpus", num_cpus)
    check_positive_int("retries", retries, minimum=0)
    cpus_per_run = check_positive_float("cpus_per_run", cpus_per_run)
    if num_gpus != 0:
        num_gpus = check_positive_float("num_gpus", num_gpus)
    if gpu_fraction is not None and not 0 < float(gpu_fraction) <= 1:
        raise ValueError(f"gpu_fraction must be in (0, 1], got {gpu_fraction!r}")
    if not pending:
        return
    threads = max(1, int(cpus_per_run))
    if device is None:
        device = getattr(run_fn, "keywords", {}).get("device")
    with ray_session(address, num_cpus=num_cpus, runtime_env=runtime_env):
        cluster_gpus, node_gpus, node_cpus = _capacity()
        if cpus_per_run > node_cpus:
            raise ValueError(f"cpus_per_run={cpus_per_run:g} but the largest Ray node has {node_cpus:g} CPUs")
        fn_ref = ray.put(run_fn)
        keys: dict[Any, str] = {}
        try:
            for key, config in pending:
                gpus = gpus_per_run(config, num_gpus, gpu_fraction, cluster_gpus, device)
                if gpus > node_gpus:
                    msg = f"run asks for {gpus:g} GPU(s), the largest Ray node has {node_gpus:g}"
                    on_failure(key, f"RuntimeError: {msg}")
                    continue
                task = _remote_run.options(
                    name=f"run-{key}", num_cpus=cpus_per_run, num_gpus=gpus,
                    max_retries=retries, retry_exceptions=retries > 0,
                )
                keys[task.remote(fn_ref, dict(config), threads)] = key
            waiting = list(keys)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                for ref in done:
                    key = keys.pop(ref)
                    try:
                        df = ray.get(ref)
                    except ray.exceptions.RayError as err:
                        on_failure(key, _describe(err))
                    else:
                        on_result(key, df)
        finally:
            for ref in keys:  # interrupted: stop what is still queued or running
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # best effort on the way out
                    pass
