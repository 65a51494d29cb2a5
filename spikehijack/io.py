"""Atomic, pickle-free persistence: CSV tables, npz arrays and JSON records.

Every writer goes through ``atomic_write``: the data lands in a temporary file in the same folder and is
renamed over the target, so an interrupted run never leaves a half-written cache file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The tracked reports of each profile, relative to the repository: the quick profile's result tables and
#: the paper profile's notebooks, with its tables under ``tables/`` and its trained runs under ``cache/``.
REPORTS = {"quick": Path("reports") / "quick", "paper": Path("reports") / "paper"}


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file next to ``path``; on success rename it over ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    with atomic_write(path, "w") as fh:
        df.to_csv(fh, index=False)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
    return Path(path)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an npz file (never unpickles; a corrupt file raises ValueError)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"corrupt or unreadable npz file {path}: {e}") from e


def config_hash(config: Mapping[str, Any], length: int = 16) -> str:
    """Stable hex digest of a JSON-serialisable mapping (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def cached_csv(path: str | os.PathLike, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """Return the table at ``path`` if it is readable, else compute it, write it atomically, return it."""
    path = Path(path)
    if path.exists():
        try:
            return pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            path.unlink()  # corrupt: recompute
    df = compute()
    write_csv(df, path)
    return df


def results_root() -> Path:
    """``$SPIKEHIJACK_RESULTS`` or ``<repo>/results`` (git-ignored): regenerated tables and training caches."""
    return Path(os.environ.get("SPIKEHIJACK_RESULTS", REPO_ROOT / "results"))


def display_path(path: str | os.PathLike) -> str:
    """A path as a reader should see it: relative to the repository (or to ``$SPIKEHIJACK_RESULTS``)."""
    path = Path(path).resolve()
    for base, name in ((results_root().resolve(), "results"), (REPO_ROOT, "")):
        if path.is_relative_to(base):
            return (Path(name) / path.relative_to(base)).as_posix()
    return path.name


def cache_dir(name: str, profile: str = "quick") -> Path:
    """The config-hash cache folder of one experiment family (``synthetic``, ``beyond_real``, ...): under
    ``results_root()`` (git-ignored), or for the paper profile ``reports/paper/cache/<name>``, committed: its
    trained weights and per-run tables are small, and a later change of analysis re-evaluates them without
    retraining."""
    if profile == "paper":
        return REPO_ROOT / REPORTS["paper"] / "cache" / name
    return results_root() / "cache" / name


def results_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    """Where a notebook writes its result tables: ``results/<profile>/`` (quick; under ``results_root()``) or
    ``reports/paper/tables``; ``root`` replaces the repository root."""
    if profile == "paper":
        path = (Path(root) if root is not None else REPO_ROOT) / REPORTS["paper"] / "tables"
    else:
        path = (Path(root) / "results" if root is not None else results_root()) / profile
    path.mkdir(parents=True, exist_ok=True)
    return path
