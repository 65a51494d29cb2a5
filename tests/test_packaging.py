"""The environment files, the Makefile and the notebooks agree with each other and with pyproject.toml."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _torch_pin(requirements: list[str]) -> str:
    pins = [r for r in requirements if re.match(r"torch\s*==", r)]
    assert len(pins) == 1, requirements
    return pins[0].replace(" ", "")


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert _torch_pin(pip) == _torch_pin(PYPROJECT["project"]["dependencies"]) == "torch==2.13.0"
    editable = [p for p in pip if p.startswith("-e")]
    assert len(editable) == 1
    extras = re.fullmatch(r"-e\s+\.\[([a-z0-9_,\s-]+)\]", editable[0]).group(1).split(",")
    available = PYPROJECT["project"]["optional-dependencies"]
    assert {"notebooks", "dev"} <= set(extras) and set(extras) <= set(available), extras
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def _make_rules() -> dict[str, list[str]]:
    rules = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z][\w.-]*)\s*:(?!=)\s*(.*)$", line)
        if m:
            rules[m.group(1)] = m.group(2).split()
    return rules


def test_makefile_targets():
    rules = _make_rules()
    for target in ("venv", "reproduce", "paper", "test", "bench", "html", "clean"):
        assert target in rules, f"Makefile lacks target {target}"
    assert "venv" in rules["reproduce"] and "venv" in rules["test"]
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert {"venv", "reproduce", "test", "clean"} <= set(phony)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_makefile_extras_exist_in_pyproject():
    extras = re.search(r"^EXTRAS\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1).split(",")
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
    assert {"notebooks", "dev"} <= set(extras)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_conventions(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name)
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert tagged[0]["cell_type"] == "code"
    assert not any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    values = {}
    for node in ast.parse("".join(tagged[0]["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = node.value
    assert "profile" in values and ast.literal_eval(values["profile"]) == "quick"
    # committed in canonical form: executed (every code cell has a count), no papermill run metadata
    assert "papermill" not in nb["metadata"], "papermill metadata left in: strip it (see the Makefile's STRIP)"
    unrun = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and not c.get("execution_count")]
    assert not unrun, f"code cells {unrun} were never executed: run `make reproduce`"


def test_readme_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in readme, f"README does not list {path.name}"
