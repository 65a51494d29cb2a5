"""pytest plugin for the nbval run (``make test``): numbers regenerate within tolerance, words exactly.

nbval compares each stored output with the rerun after ``tests/nbval_sanitize.cfg``, whose last rule masks every
decimal number: so nbval checks the words, layout, verdicts and integers exactly. This plugin then compares the
masked numbers themselves, pairwise and in order, with ``spikehijack.reporting.regeneration.compare_text`` (the
tolerance table's text row). Loaded with ``pytest -p tests.nbval_numbers``.
"""

from __future__ import annotations

import re

from nbval.plugin import IPyNbCell, transform_streams_for_comparison

from spikehijack.reporting.regeneration import compare_text

MASK = "DECIMAL"  # the replacement of the sanitizer rule that masks decimal numbers
_compare_words = IPyNbCell.compare_outputs


def _texts(cell: IPyNbCell, outputs: list, skip: set) -> list[tuple[str, str]]:
    """The text outputs nbval compares as (kind, text), sanitized by every rule except the decimal mask; sorted by
    kind (a kernel and a stored notebook list an output's MIME types in different orders)."""
    rules = [(rx, rep) for rx, rep in cell.parent.sanitize_patterns.items() if rep != MASK]
    out = []
    for o in transform_streams_for_comparison(outputs):
        items = [("text", o["text"])] if "text" in o else list(o.get("data", {}).items())
        for key, value in items:
            if key in skip or not isinstance(value, str) or key.startswith("image/"):
                continue
            for rx, rep in rules:
                value = re.sub(rx, rep, value)
            out.append((key, value))
    return sorted(out, key=lambda kv: kv[0])  # stable: outputs of one kind keep their order


def compare_outputs(self: IPyNbCell, test: list, ref: list, skip_compare=None) -> bool:
    if not _compare_words(self, test, ref, skip_compare):
        return False
    skip = set(skip_compare or self.parent.skip_compare)
    problems = []
    for (kind, r), (_, t) in zip(_texts(self, ref, skip), _texts(self, test, skip), strict=True):
        problems += [f"{kind}: {p}" for p in compare_text(r, t)]
    if problems:
        self.comparison_traceback.append("numbers outside their regeneration tolerance:\n  " + "\n  ".join(problems))
        return False
    return True


IPyNbCell.compare_outputs = compare_outputs
