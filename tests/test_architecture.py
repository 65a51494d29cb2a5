"""The package's layers: who may import whom, no private names across modules, small modules, one settings table."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "spikehijack"
MODULES = sorted(p for p in PKG.rglob("*.py"))
#: Layers in import order: a module may import from its own layer and the ones before it, never after.
LAYERS = ["core", "worlds", "runner", "reporting", "chapters"]
#: Top-level services and where they sit: ``io`` serves worlds and above, ``profiles`` runner and above.
SERVICES = {"io": 1, "profiles": 2}
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int | None:
    """Layer rank of a spikehijack module (None: the package root and the CLI, which may import anything)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return SERVICES.get(parts[1])


def _imports(path: Path) -> list[tuple[str, list[str], ast.AST]]:
    """(absolute module, imported names, node) of every spikehijack import in a file."""
    here = _name(path).split(".")
    pkg = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if module.split(".")[0] == "spikehijack":
                out.append((module, [a.name for a in node.names], node))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node) for a in node.names if a.name.split(".")[0] == "spikehijack"]
    return out


def _is_module(dotted: str) -> bool:
    base = PKG.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _name(p))
def test_no_private_name_crosses_a_module(path):
    modules = set()  # local names bound to spikehijack modules (``from . import sweeps``, ``import ... as x``)
    for module, names, node in _imports(path):
        private = [n for n in names if _private(n)]
        assert not private, f"{_name(path)}:{node.lineno} imports {private} from {module}"
        for alias in node.names:
            full = f"{module}.{alias.name}" if names else alias.name
            if _is_module(full):
                modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            assert not _private(node.attr), f"{_name(path)}:{node.lineno} uses {node.value.id}.{node.attr}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _name(p))
def test_layers_import_only_downwards(path):
    rank = _rank(_name(path))
    if rank is None:
        return
    for module, names, node in _imports(path):
        targets = [module, *(f"{module}.{n}" for n in names if _is_module(f"{module}.{n}"))]
        for target in targets:
            r = _rank(target)
            assert r is None or r <= rank, f"{_name(path)}:{node.lineno} imports {target} from a higher layer"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _name(p))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{_name(path)} has grown past {MAX_LINES} lines"


def test_core_is_tensor_maths_only():
    for path in (PKG / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            assert not any(m.split(".")[0] in ("pandas", "matplotlib", "seaborn") for m in mods), path.name


def test_public_modules_of_0_1_are_the_core_modules():
    import spikehijack
    from spikehijack import core

    for name in ("pooling", "scoring", "metrics", "gradients", "device"):
        assert importlib.import_module(f"spikehijack.{name}") is getattr(core, name) is getattr(spikehijack, name)
    from spikehijack.scoring import score_matrix, score_pairs  # noqa: F401  (the documented entry points)


def test_one_profiles_table_with_both_profiles_and_a_clear_error():
    from spikehijack import profiles

    assert set(profiles.PROFILES) == {"quick", "paper"}
    quick, paper = profiles.get("quick"), profiles.get("paper")
    assert type(quick) is type(paper) and quick.name == "quick" and paper.name == "paper"
    with pytest.raises(ValueError, match="profile must be one of"):
        profiles.get("fast")
