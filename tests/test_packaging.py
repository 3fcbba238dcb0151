"""What pyproject.toml declares is what is tested."""

from __future__ import annotations

import re
from importlib.metadata import requires, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parent.parent


def _declared() -> dict[str, Requirement]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {Requirement(r).name: Requirement(r) for r in doc["project"]["dependencies"]}


def _floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert floors, f"{req} has no >= floor"
    return max(floors)


def test_transformers_floor_is_the_lowest_tested_version():
    """The floor is at least what the test oracle (TransformerLens 3.9) runs with: nothing lower
    can be tested. .ci/lowest runs the suite at exactly the floor."""
    floor = _floor(_declared()["transformers"])
    oracle = next(Requirement(r) for r in requires("transformer-lens") if Requirement(r).name == "transformers")
    assert floor >= _floor(oracle), (floor, str(oracle))
    assert Version(version("transformers")) >= floor
    script = (ROOT / ".ci" / "lowest").read_text()
    assert 'transformers==$floor' in script and re.search(r"transformers>=", script)


def test_packages_imported_directly_are_declared():
    declared = set(_declared())
    for name in ("torch", "transformers", "huggingface-hub", "safetensors", "tokenizers", "numpy", "plotly",
                 "circuitsvis", "tqdm"):
        assert name in declared, name


def test_version_is_written_once():
    """pyproject.toml reads the version from logitscope/version.py (the lowest layer, which results.json
    and --version name): the installed distribution and the package agree."""
    import logitscope
    from logitscope.version import __version__

    assert logitscope.__version__ == __version__ == version("logitscope")
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "logitscope.version.__version__" in text
