"""The package reads straight through: no module imports one that imports it back, at any depth,
counting imports inside functions (a lazy import is still a dependency) but not those made only
for type checkers."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import logitscope

SRC = Path(logitscope.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ["logitscope", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The logitscope modules ``path`` imports (the lazy root package itself excluded)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != "logitscope"}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "logitscope.report" in graph["logitscope.api.results"]  # the graph sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail


def test_the_layers_point_one_way():
    """The data layer knows nothing of presentation or files; the report knows nothing of files."""
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    below = reaches("logitscope.results.study")
    assert not {m for m in below if m.startswith(("logitscope.report", "logitscope.results.serialize", "logitscope.api.results",
                                                  "logitscope.results.tables", "logitscope.methods.dla"))} - {"logitscope.results.study"}
    assert not {m for m in reaches("logitscope.report") if m in ("logitscope.results.serialize", "logitscope.api.results")}
    assert "logitscope.inputs.prompts" not in reaches("logitscope.inputs.ioi")


ROOT = SRC.parent.parent


def _lint_imports(config: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    return subprocess.run([str(exe), "--config", str(config), "--no-cache"], capture_output=True, text=True,
                          cwd=ROOT, env=env)


def test_the_layers_contract_holds(tmp_path):
    """``.importlinter``'s contracts (layers: cli > api > report > methods > results > engine > models >
    inputs > base; the report reads results only) are kept, and the same check breaks on a breach."""
    config = ROOT / ".importlinter"
    if not config.exists():  # an installed package without its repository
        pytest.skip("no .importlinter beside the sources")
    kept = _lint_imports(config)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "2 kept, 0 broken" in kept.stdout
    breach = tmp_path / "breach.ini"  # methods below results: the methods' own imports of results break it
    breach.write_text(config.read_text().replace("    logitscope.methods\n    logitscope.results\n",
                                                 "    logitscope.results\n    logitscope.methods\n"))
    assert breach.read_text() != config.read_text()
    broken = _lint_imports(breach)
    assert broken.returncode != 0 and "logitscope.results" in broken.stdout


# The outputs of `run`, `patch --what all --ablate ...` and `patch --senders all ... --circuit ...` on
# the tests' tiny GPT-2, every number bit for bit (timing, the date, the model's path and the
# version aside). The files were first written by the code before the layered layout (main at
# 43959ce) and this test held bit for bit through the whole layout change (up to 30ceae9). The
# patching engine's savings that followed (issue 20 item 6: the last block on the answer positions
# only, no attention at a patched layer whose heads' z are replaced, fused gelu in patched runs)
# round float32 differently in patched runs (1.5e-6 on logit differences of ~1-3; the study's
# numbers unchanged), so the files were written again at that commit: from there on, any change of
# a number shows here. Agreement with TransformerLens is tests/test_patching.py's.
GOLDEN = Path(__file__).parent / "data" / "golden"
GOLDEN_RUNS = {
    "run": ["run", "--prompts", "ioi:12"],
    "patch": ["patch", "--prompts", "ioi:12", "--what", "all", "--ablate", "L1H0,L0H1"],
    "circuit": ["patch", "--prompts", "ioi:12", "--what", "none", "--senders", "all", "--receivers", "logits,L1H0:q",
                "--circuit", "nm: L1H0 @ END; s: L0H1 @ END", "--circuit-random", "3"],
}


def _stable(doc: dict) -> dict:
    for part in (doc, doc.get("patching") or {}, *((doc.get("patching") or {}).get(k) or {} for k in ("circuit", "paths"))):
        part.pop("timing", None)
    for key in ("created", "model", "version"):
        doc.pop(key, None)
    return json.loads(json.dumps(doc, sort_keys=True))


@pytest.mark.parametrize("name", sorted(GOLDEN_RUNS))
def test_numbers_are_bit_identical_to_before_the_layout(name, tmp_path):
    from oracle import make_hf_model, save_checkpoint

    from logitscope.cli import main

    ckpt = save_checkpoint(make_hf_model("gpt2", size="tiny", seed=1), tmp_path / "ckpt")
    out = tmp_path / name
    assert main([*GOLDEN_RUNS[name], "--model", str(ckpt), "--out", str(out), "--no-report", "--quiet",
                 "--device", "cpu"]) == 0
    now = _stable(json.loads((out / "results.json").read_text()))
    before = json.loads((GOLDEN / f"{name}.json").read_text())
    assert now == before  # exact: floats are compared as written, to the last digit


def test_the_results_layer_names_the_grids_the_method_defines():
    from logitscope.methods.patching.grids import GRIDS
    from logitscope.results.names import GRID_NAMES

    assert GRID_NAMES == tuple(GRIDS)


def test_small_rooms():
    """No module over ~400 lines without its reason written at its top (issue 20's small rooms)."""
    long = {name: len(path.read_text().splitlines()) for name, path in _modules().items()
            if len(path.read_text().splitlines()) > 400 and "on purpose:" not in path.read_text()[:4000]}
    assert not long, long


# The public entry points keep their keyword signatures for users' scripts (issue 20: "stay as thin
# wrappers, so no user's script breaks"); inside, each method takes one options object.
PUBLIC_WRAPPERS = {"logitscope.api.patching.run_patching", "logitscope.api.edges.edges", "logitscope.api.study.run_study"}


def test_functions_take_what_they_use():
    """No function inside the package takes more than 12 parameters (issue 20: "no 28-argument
    signatures inside the package either"), but the public wrappers named above."""
    wide = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                n = len(params) - (params[:1] in (["self"], ["cls"]))
                where = f"{name}.{node.name}"
                if n > 12 and where not in PUBLIC_WRAPPERS:
                    wide[f"{where} (line {node.lineno})"] = n
    assert not wide, wide
