"""One CLI verb per method (run, patch, ablate, paths, circuit, edges): each --help fits on a screen,
each names its own flags in errors, and patch's old flags for ablation, path patching and circuits
still work for one release, with a warning naming the new verb, giving the same files."""

from __future__ import annotations

import json

import pytest

from logitscope.cli import main

VERBS = ("run", "patch", "ablate", "paths", "circuit", "edges")


def _doc(folder) -> dict:
    doc = json.loads((folder / "results.json").read_text())
    for part in (doc, doc.get("patching") or {}, *((doc.get("patching") or {}).get(k) or {} for k in ("circuit", "paths"))):
        part.pop("timing", None)
    doc.pop("created", None)
    return doc


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_help_fits_on_one_screen(verb, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 60, text
    assert "--model" in text and "--prompts" in text and "--out" in text
    assert max(len(line) for line in text.splitlines() if not line.startswith(("Activation", "Run ", "The ",
                                                                                  "Path ", "Faith", "Score"))) <= 110


def test_the_top_level_help_lists_every_verb(capsys):
    assert main([]) == 2
    text = capsys.readouterr().out
    for verb in VERBS:
        assert f"    {verb}" in text


@pytest.mark.parametrize("old, new", [
    (["patch", "--what", "none", "--ablate", "L1H0,L0H1", "--ablation", "zero"], ["ablate", "L1H0,L0H1", "--ablation", "zero"]),
    (["patch", "--what", "none", "--senders", "L0H1", "--receivers", "logits,L1H0:q", "--direction", "noise"],
     ["paths", "--senders", "L0H1", "--receivers", "logits,L1H0:q", "--direction", "noise"]),
    (["patch", "--what", "none", "--circuit", "nm: L1H0 @ END", "--circuit-random", "1"],
     ["circuit", "nm: L1H0 @ END", "--random", "1"]),
])
def test_deprecated_patch_flags_give_the_new_verbs_files(old, new, tiny_gpt2_dir, tmp_path, capsys):
    common = ["--model", str(tiny_gpt2_dir), "--prompts", "ioi:6", "--device", "cpu", "--quiet", "--no-report"]
    assert main([*old, *common, "--out", str(tmp_path / "old")]) == 0
    warned = capsys.readouterr().err
    assert "deprecated" in warned and f"logitscope {new[0]}" in warned
    assert main([*new, *common, "--out", str(tmp_path / "new")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert _doc(tmp_path / "old") == _doc(tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == sorted(p.name for p in (tmp_path / "new").iterdir())


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
