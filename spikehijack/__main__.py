"""Command line: ``python -m spikehijack <command> ...`` (also installed as ``spikehijack``).

- ``synthetic``: train (or load from the cache) a synthetic grid of a profile (the length sweep, or notebook 03's
  frontier stack; ``--lengths`` picks and orders its stacks) and print a summary;
- ``real``: baseline quality per pooling on an HPO task (prints a table, writes a CSV);
- ``embed-colqwen``: (optional extra, GPU and the hub) encode ViDoRe biomedical with ColQwen2.5.

Every setting comes from ``spikehijack.profiles``; each command only calls package functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import io, profiles
from .chapters.ch04_real import evaluate
from .runner.groups import grid_configs, run_groups, summary_table
from .worlds import hpo, tasks
from .worlds.colqwen import DEFAULT_DATASET, DEFAULT_MODEL, ColQwenEncoder, embed_beir, load_beir
from .worlds.encoders import MiniLMPhrases, MiniLMTokens


def _synthetic(args: argparse.Namespace) -> int:
    cache = Path(args.out) if args.out else io.cache_dir("synthetic", args.profile)
    grid = getattr(profiles.get(args.profile).synthetic, args.grid)
    unknown = sorted(set(args.lengths or ()) - set(grid.lengths))
    if unknown:
        raise SystemExit(f"--lengths: {unknown} not in the {args.profile} {args.grid} grid's lengths "
                         f"{list(grid.lengths)}")
    configs = grid_configs(grid, lengths=args.lengths)  # in the order asked: a long stack first, say
    df = run_groups(configs, cache, device=args.device, executor=args.executor, address=args.ray_address)
    print(summary_table(df).to_string())
    return 0


def _real(args: argparse.Namespace) -> int:  # pragma: no cover - needs the MiniLM package
    H = hpo.load_hpo()
    n_dis = profiles.get(args.profile).cli_distractors[args.task]
    if args.task == "hpo-dx":
        task = tasks.build_hpo_dx(H, MiniLMPhrases(release=H.release, progress=True), n_distractors=n_dis,
                                  seed=args.seed)
    else:
        task = tasks.build_syn2def(H, MiniLMTokens(release=H.release, progress=True), n_distractors=n_dis,
                                   seed=args.seed)
    specs = ["maxsim", *[f"topk:{k}" for k in profiles.TOPK_REAL], "softmax:0.05"]
    table = evaluate(task, specs)
    print(table.pivot_table(index="pooling", columns="metric", values="value", sort=False).round(4).to_string())
    path = io.write_csv(table, io.results_dir(args.profile) / f"real_cli_{args.task}.csv")
    print(f"wrote {path}")
    return 0


def _embed_colqwen(args: argparse.Namespace) -> int:  # pragma: no cover - needs the extra, a GPU and the hub
    data = load_beir(args.dataset, language=args.language)
    enc = ColQwenEncoder(args.model, device=args.device, batch_size=args.batch_size, progress=True)
    path = embed_beir(enc, data, args.out)
    print(f"wrote {len(data.queries)} queries and {len(data.corpus_ids)} pages to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="spikehijack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("synthetic", help="train the synthetic grid (Fig 1) and print a summary")
    sp.add_argument("--profile", choices=sorted(profiles.PROFILES), default="quick")
    sp.add_argument("--grid", choices=["sweep", "frontier"], default="sweep",
                    help="the length sweep (notebooks 02, 03, 05) or notebook 03's frontier stack")
    sp.add_argument("--lengths", type=int, nargs="+", default=None, help="train only these lengths, in this order")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--out", default=None, help="cache folder (default: io.cache_dir(\"synthetic\", profile))")
    sp.add_argument("--executor", choices=["local", "ray"], default="local")
    sp.add_argument("--ray-address", default=None)
    sp.set_defaults(func=_synthetic)
    rp = sub.add_parser("real", help="HPO real benchmark: baseline quality per pooling (prints a table)")
    rp.add_argument("--task", choices=["hpo-dx", "hpo-syn2def"], default="hpo-dx")
    rp.add_argument("--profile", choices=sorted(profiles.PROFILES), default="quick")
    rp.add_argument("--seed", type=int, default=0)
    rp.set_defaults(func=_real)
    cp = sub.add_parser("embed-colqwen", help="(optional extra, GPU + hub) encode ViDoRe biomedical with ColQwen2.5")
    cp.add_argument("--out", default=".cache/vidore_biomed_colqwen.npz")
    cp.add_argument("--model", default=DEFAULT_MODEL)
    cp.add_argument("--dataset", default=DEFAULT_DATASET)
    cp.add_argument("--language", default=None)
    cp.add_argument("--device", default="auto")
    cp.add_argument("--batch-size", type=int, default=4)
    cp.set_defaults(func=_embed_colqwen)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
