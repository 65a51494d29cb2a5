"""Command line: ``python -m spikehijack <command> ...`` (also installed as ``spikehijack``).

Each command lives in the module that owns it; a module joins the CLI by defining
``add_cli(subparsers)`` and being listed in ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define add_cli(subparsers); imported lazily so `--help` stays fast.
_COMMAND_MODULES: list[str] = ["runner.train", "chapters.ch04_real", "worlds.colqwen"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spikehijack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"spikehijack.{name}").add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
