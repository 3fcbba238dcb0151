"""One CLI verb per method (run, patch, ablate, paths, circuit, edges): each --help fits on one 80x50
screen (the rest under --help-all, which lists every option), each names its own flags in errors, and
patch's old flags for ablation, path patching and circuits still work for one release, with a
warning naming the new verb, giving the same files, byte for byte in their arrays."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from logitscope.cli import build_parser, main

VERBS = ("run", "patch", "ablate", "paths", "circuit", "edges")


def _doc(folder) -> dict:
    doc = json.loads((folder / "results.json").read_text())
    for part in (doc, doc.get("patching") or {}, *((doc.get("patching") or {}).get(k) or {} for k in ("circuit", "paths"))):
        part.pop("timing", None)
    doc.pop("created", None)
    return doc


# what each verb needs besides the shared required options, for parsing only
OWN_REQUIRED = {"run": [], "patch": [], "ablate": ["L0H0"], "paths": ["--senders", "all"], "circuit": ["ioi"],
                "edges": []}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _help(verb: str, flag: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as e:
        main([verb, flag])
    assert e.value.code == 0
    return capsys.readouterr().out


def _listed(text: str) -> set[str]:
    """The options a help text lists as options (at the start of an option line), not merely names."""
    return set(re.findall(r"^  (?:-h, )?(--[a-z][a-z0-9-]*)", text, flags=re.M))


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_help_fits_on_one_80_by_50_screen(verb, capsys, monkeypatch):
    text = _help(verb, "--help", capsys, monkeypatch)
    lines = text.splitlines()
    rows = sum(max(1, math.ceil(len(line) / 80)) for line in lines)  # a terminal wraps a long line
    assert rows <= 50, f"{rows} rows:\n{text}"
    assert max(len(line) for line in lines) <= 80, text  # nothing left for the terminal to wrap
    assert {"--model", "--prompts", "--out", "--help-all"} <= _listed(text)
    assert not {"--device", "--dtype", "--batch-size", "--dist-timeout"} & _listed(text)  # --help-all's
    assert "--help-all" in lines[-1] and f"docs/cli.md#logitscope-{verb}" in lines[-1]
    assert f"\n## logitscope {verb}\n" in DOCS.read_text()  # the docs line points at a real section


@pytest.mark.parametrize("verb", VERBS)
def test_help_all_lists_every_option_the_parser_accepts(verb, capsys, monkeypatch):
    text = _help(verb, "--help-all", capsys, monkeypatch)
    parser = _verb_parser(verb)
    accepted = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    assert accepted == _listed(text)
    for action in parser._actions:
        if not action.option_strings:  # a positional (SET, CIRCUIT)
            assert f"\n  {action.metavar} " in text, action.metavar
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert text.splitlines()[-1] == f"docs: docs/cli.md#logitscope-{verb}"
    assert _listed(_help(verb, "--help", capsys, monkeypatch)) < accepted  # --help shows fewer


def _value(action: argparse.Action) -> tuple[list[str], object]:
    """Arguments that set ``action`` to something other than its default, and what it becomes."""
    if action.nargs == 0:
        return [], action.const
    if action.choices:
        return [action.choices[-1]], action.choices[-1]
    if action.type is int:
        return ["7"], 7
    if action.type is float:
        return ["7.5"], 7.5
    return ["x7"], "x7"


@pytest.mark.parametrize("verb", VERBS)
def test_options_hidden_from_help_still_parse(verb, capsys, monkeypatch):
    shown = _listed(_help(verb, "--help", capsys, monkeypatch))
    hidden = [a for a in _verb_parser(verb)._actions  # not -h or --help-all, which exit
              if a.default != argparse.SUPPRESS and a.option_strings and not set(a.option_strings) & shown]
    assert {"--device", "--dtype", "--batch-size", "--seed", "--quiet", "--dist-timeout"} <= {
        o for a in hidden for o in a.option_strings}
    base = [verb, *OWN_REQUIRED[verb], "--model", "m", "--prompts", "seed", "--out", "o"]
    for action in hidden:
        values, expected = _value(action)
        assert expected != action.default, action.dest
        args = build_parser().parse_args([*base, action.option_strings[0], *values])
        assert getattr(args, action.dest) == expected, action.option_strings
        assert args.execute is _verb_parser(verb).get_default("execute")


def test_the_top_level_help_lists_every_verb(capsys):
    assert main([]) == 2
    text = capsys.readouterr().out
    for verb in VERBS:
        assert f"    {verb}" in text


def _arrays(folder) -> dict[str, np.ndarray]:
    """Every array the run wrote: FILE.npy, and FILE.npz's members as FILE:KEY."""
    out = {}
    for path in sorted(folder.glob("*.np[yz]")):
        if path.suffix == ".npy":
            out[path.name] = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                out.update({f"{path.name}:{key}": npz[key] for key in npz.files})
    return out


@pytest.mark.parametrize("old, new, warning, key", [
    (["patch", "--what", "none", "--ablate", "L1H0,L0H1", "--ablation", "zero"], ["ablate", "L1H0,L0H1", "--ablation", "zero"],
     "patch --ablate is deprecated and goes in the next release; use `logitscope ablate`", "ablated_0"),
    (["patch", "--what", "none", "--senders", "L0H1", "--receivers", "logits,L1H0:q", "--direction", "noise"],
     ["paths", "--senders", "L0H1", "--receivers", "logits,L1H0:q", "--direction", "noise"],
     "patch --senders and --receivers are deprecated and go in the next release; use `logitscope paths`", "paths"),
    (["patch", "--what", "none", "--circuit", "nm: L1H0 L0H1 @ END", "--circuit-random", "1", "--circuit-greedy", "1",
      "--circuit-greedy-steps", "1"],
     ["circuit", "nm: L1H0 L0H1 @ END", "--random", "1", "--greedy", "1", "--greedy-steps", "1"],
     "patch --circuit, --circuit-random, --circuit-greedy and --circuit-greedy-steps are deprecated and go",
     "circuit_completeness_circuit_without_k"),
])
def test_deprecated_patch_flags_give_the_new_verbs_files(old, new, warning, key, tiny_gpt2_dir, tmp_path, capsys):
    common = ["--model", str(tiny_gpt2_dir), "--prompts", "ioi:6", "--device", "cpu", "--quiet", "--no-report"]
    assert main([*old, *common, "--out", str(tmp_path / "old")]) == 0
    warned = capsys.readouterr().err
    assert warning in warned and warned.count("deprecated") == 1, warned
    assert main([*new, *common, "--out", str(tmp_path / "new")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert _doc(tmp_path / "old") == _doc(tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == sorted(p.name for p in (tmp_path / "new").iterdir())
    old_arrays, new_arrays = _arrays(tmp_path / "old"), _arrays(tmp_path / "new")
    assert f"patching_per_prompt.npz:{key}" in old_arrays  # the method's own per-prompt array is compared too
    assert old_arrays.keys() == new_arrays.keys()
    for name, array in old_arrays.items():  # the same computation: bit for bit, dtype and shape included
        assert array.dtype == new_arrays[name].dtype and array.shape == new_arrays[name].shape, name
        np.testing.assert_array_equal(array, new_arrays[name], err_msg=name, strict=True)


@pytest.mark.parametrize("argv, flag", [
    (["circuit", "nm: L1H0 @ END", "--random", "-1"], "--random"),
    (["circuit", "nm: L1H0 @ END", "--greedy-steps", "0"], "--greedy-steps"),
    (["patch", "--what", "none", "--circuit", "nm: L1H0 @ END", "--circuit-random", "-1"], "--circuit-random"),
    (["edges", "--steps", "0"], "--steps"),
    (["ablate", "L1Hx"], "L1Hx"),  # the spelling; a head past the model is known once it loads
])
def test_a_bad_option_names_the_verbs_own_flag_before_the_model_loads(argv, flag, tmp_path, capsys):
    # a model path that does not exist: the option's error must come first
    code = main([*argv, "--model", str(tmp_path / "no-model"), "--prompts", "ioi:4", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "no-model" not in err, err
    assert not (tmp_path / "o").exists()


def test_edges_writes_scores_curves_graph_json_and_the_circuit_view(tiny_gpt2_dir, tmp_path, capsys):
    import logitscope as ls

    out = tmp_path / "e"
    assert main(["edges", "--model", str(tiny_gpt2_dir), "--prompts", "ioi:6", "--method", "eap", "--top-n", "20",
                 "--exact-top", "3", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CPR" in printed and "CMD" in printed and "graph.json" in printed
    assert {"results.json", "graph.json", "edges_per_prompt.npz", "report.html"} <= {p.name for p in out.iterdir()}
    page = (out / "report.html").read_text()
    assert "<svg" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    again = ls.load_result(out)
    doc = json.loads((out / "results.json").read_text())
    assert doc["kind"] == "edges" and doc["edges"]["curve"]["cpr"] == pytest.approx(again.curve.cpr)
    assert len(again.exact_top) == 3
    assert main(["edges", "--model", str(tiny_gpt2_dir), "--prompts", "ioi:6", "--method", "eap", "--no-curve",
                 "--no-report", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert not (out / "report.html").exists()  # a file of the earlier run this one does not write is removed
