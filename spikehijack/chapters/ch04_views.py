"""Chapter 04, section 8: the real benchmark's claims again in a second view at the paper's lengths.

"hpo-dx-tokens": HPO-Dx with a disease as the MiniLM token vectors of its phenotype names (tens to hundreds of
patches, offline); "vidore-biomed": the paper's own ViDoRe biomedical pages as ColQwen2.5 patch vectors
(embeddings cached on a GPU). ``view_evidence`` runs notebook 04's protocol (``ch04_real``) on either in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..worlds.tasks import RealTask, build_hpo_dx
from .ch04_real import LengthSweep, claims_table, evaluate, gold_pair_gini, injection_experiment, length_sweep

#: The views section 8 of notebook 04 can run on: name -> (world of its claims rows, what a document is).
VIEWS = {"hpo-dx-tokens": ("real tokens", "a disease as the MiniLM token vectors of its phenotype names (offline)"),
         "vidore-biomed": ("real ViDoRe", "a ViDoRe biomedical page as ColQwen2.5 image-patch vectors (embeddings "
                           "cached on a GPU with `python -m spikehijack embed-colqwen`)")}


def second_view(view: str, hpo=None, n_queries: int = 160, n_distractors: int | None = 300, seed: int = 0,
                universe: Sequence[str] | None = None, embeddings: str | Path | None = None
                ) -> tuple[RealTask, RealTask | None]:
    """(evaluation task, validation task or None) of a ``VIEWS`` entry. "hpo-dx-tokens": HPO-Dx built with
    ``MiniLMPhraseTokens`` (needs ``hpo``; validation: patients of ``universe`` diseases, the head's training
    split, against as many distractors as the evaluation); "vidore-biomed":
    ``worlds.colqwen.load_vidore_task(embeddings)``, no validation split."""
    if view == "hpo-dx-tokens":
        from ..worlds.encoders import MiniLMPhraseTokens

        if hpo is None:
            raise ValueError("second_view('hpo-dx-tokens') needs hpo (worlds.hpo.load_hpo())")
        enc = MiniLMPhraseTokens(release=hpo.release)
        task = build_hpo_dx(hpo, enc, n_queries=n_queries, n_distractors=n_distractors, seed=seed)
        val = None if universe is None else build_hpo_dx(hpo, enc, n_queries=n_queries, n_distractors=n_distractors,
                                                         universe=universe, seed=seed + 1)
        return task, val
    if view == "vidore-biomed":
        from ..worlds.colqwen import load_vidore_task

        if embeddings is None or not Path(embeddings).exists():
            raise ValueError(f"second_view('vidore-biomed') needs embeddings=<npz written by colqwen.embed_beir>, "
                             f"got {embeddings!r}")
        return load_vidore_task(embeddings), None
    raise ValueError(f"view must be one of {sorted(VIEWS)}, got {view!r}")


@dataclass
class ViewEvidence:
    """Every table of one view (notebook 04's protocol in one call): quality, per-query gold-pair Gini, the
    neutral length sweep, the per-query injection table and the claims rows."""

    task: str
    tau: float
    quality: pd.DataFrame
    gini: pd.DataFrame
    sweep: LengthSweep
    injection: pd.DataFrame
    claims: pd.DataFrame


def view_claims(view: str, gi: pd.DataFrame, sweep: pd.DataFrame, inj: pd.DataFrame, K: int = 100) -> pd.DataFrame:
    """Claims 1 and 4-8 of a view (a task name) from its tables (``claims_table``; ``sweep`` is the per-query
    length sweep, ``LengthSweep.queries``): the Gini ordering as ``gi`` lists its poolings, softmax the one
    softmax spec of ``inj``, the world from ``VIEWS`` ("real <view>" for a task of your own), where
    "04 real (<view>, zero-shot)". Notebook 04 and ``scripts/rejudge_paper.py`` both
    judge a view by it."""
    softmax = next(s for s in inj["spec"].unique() if s.startswith("softmax"))
    world = VIEWS[view][0] if view in VIEWS else f"real {view}"
    return claims_table(gi, list(gi["pooling"].unique()), sweep, inj, softmax, K=K,
                        where=f"04 real ({view}, zero-shot)", world=world)


def view_evidence(task: RealTask, tau: float, Ks: Sequence[int], factors: Sequence[int], K: int = 100,
                  spike_size: int = 4, seed: int = 0, gini_batch: int = 32, progress: bool = False) -> ViewEvidence:
    """Notebook 04's protocol on ``task`` with softmax at ``tau``: quality of MaxSim, Top-1/4/5/16 and softmax;
    gold-pair Gini of MaxSim, Top-5, softmax in the pair reading (which does not depend on the batch: in-batch
    InfoNCE batches of ``gini_batch`` pairs, as one batch of every pair would be a [Nq, Nq, T, M] block);
    the neutral length sweep by ``factors``; spike and Gaussian
    injection of ``Ks`` patches (Top-1 and Top-16 at ``K``); claims 1 and 4-8 (``view_claims``, ``task.name`` the
    view)."""
    sm = f"softmax:{tau:g}"
    main = ["maxsim", "topk:4", sm]
    quality = evaluate(task, ["maxsim", "topk:1", "topk:4", "topk:5", "topk:16", sm])
    gspecs = ["maxsim", "topk:5", sm]
    gi = gold_pair_gini(task, gspecs, losses=("pair",), batch_size=gini_batch)
    sweep = length_sweep(task, main, factors, seed=seed, progress=progress)
    Ks = sorted({0, K, *Ks})
    inj = pd.concat([injection_experiment(task, main, Ks, spike_size=spike_size, seed=seed, progress=progress),
                     injection_experiment(task, ["topk:1", "topk:16"], [0, K], kinds=("spike",),
                                          spike_size=spike_size, seed=seed)], ignore_index=True)
    return ViewEvidence(task.name, float(tau), quality, gi, sweep, inj,
                        view_claims(task.name, gi, sweep.queries, inj, K))


def compare_views(*tables: pd.DataFrame) -> pd.DataFrame:
    """Verdicts of claims tables side by side: rows (claim, link), one column per world; each softmax label
    (whose tau is validated per view) reads "Softmax"."""
    df = pd.concat(tables, ignore_index=True)
    df = df.assign(link=df["link"].str.replace(r"Softmax τ=[\d.]+", "Softmax", regex=True))
    return df.pivot_table(index=["claim", "link"], columns="world", values="verdict", aggfunc="first", sort=False)
