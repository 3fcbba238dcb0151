"""GGUF input, offline: a small Llama checkpoint written here as a float32 GGUF file (tests/gguf_file.py)
loads as exactly the model it holds, its study equals TransformerLens's and the folder's, from the
Python API and the CLI; every way a GGUF input can be wrong is one clear error.

The real quantized files (SmolLM2, Gemma 3) are in tests/test_real_weights.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.cli import main
from oracle import make_hf_model, save_checkpoint, tl_default_flags, tl_model
from test_parity import assert_matches, tl_reference

pytest.importorskip("gguf")

from gguf_file import small_gpt2_vocabulary, write_llama_gguf  # noqa: E402  (needs gguf)

# Answers that are single tokens of the file's vocabulary, prompts of four lengths.
PROMPTS = [
    ls.Prompt("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    ls.Prompt("Then, John and Mary had a long argument, and afterwards John said to", " Mary", " John"),
    ls.Prompt("When Tom and James went to the park, James gave the ball to", " Tom", " James"),
    ls.Prompt("After the lunch, Dan and Martin went home. Martin gave a book to", " Dan", " Martin"),
]


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    """(the random-weight model, its GGUF file, the same model as a folder with the file's tokenizer)."""
    from transformers import AutoTokenizer

    n_vocab = len(small_gpt2_vocabulary()[0])
    hf = make_hf_model("llama", size="tiny", seed=7, vocab_size=n_vocab)
    hf.config.bos_token_id = hf.config.eos_token_id = n_vocab - 1
    root = tmp_path_factory.mktemp("gguf")
    path = write_llama_gguf(hf, root / "tiny-random.gguf")
    folder = save_checkpoint(hf, root / "folder")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json"):
        (folder / name).unlink()
    AutoTokenizer.from_pretrained(root, gguf_file=path.name).save_pretrained(folder)
    return hf, path, folder


def test_a_gguf_file_is_the_model_it_holds(llama_gguf):
    hf, path, folder = llama_gguf
    result = ls.run_study(PROMPTS, str(path), device="cpu", batch_size=3)
    assert result.family == "llama" and result.model == str(path)
    assert len(set(result.n_tokens.tolist())) >= 3

    # Same tokens as GPT-2's tokenizer for these texts; BOS is the file's <|endoftext|>.
    tok = ls.load_model(str(folder), device="cpu").tokenizer
    assert [tok.convert_ids_to_tokens(int(i)) for i in result.correct_ids] == ["ĠMary", "ĠMary", "ĠTom", "ĠDan"]
    assert result.prepend_bos and tok.bos_token == "<|endoftext|>"

    tl = tl_model(hf, "llama", tokenizer=tok, **tl_default_flags("llama"))
    ids = [[tok.bos_token_id] + tok.encode(p.text, add_special_tokens=False) for p in result.prompts]
    assert_matches(result, tl_reference(tl, ids, result.correct_ids, result.incorrect_ids))

    # Float32 tensors in the file: the same numbers as the folder, bit for bit up to kernel order.
    same = ls.run_study(PROMPTS, str(folder), device="cpu", batch_size=3)
    for name in ("logit_diff", "heads", "attn", "mlp", "embed", "logit_lens_per_prompt"):
        np.testing.assert_allclose(getattr(result, name), getattr(same, name), rtol=0, atol=1e-6, err_msg=name)
    assert np.abs(result.heads).max() > 1e-2


def test_load_model_keeps_every_weight_exactly(llama_gguf):
    hf, path, _ = llama_gguf
    lm = ls.load_model(str(path), device="cpu")
    want, got = hf.state_dict(), lm.model.state_dict()
    assert set(want) == set(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert lm.model.config.architectures == ["LlamaForCausalLM"]  # a GGUF config has none; set on load
    assert not lm.model.training


def test_cli_runs_a_gguf_file(llama_gguf, tmp_path, capsys):
    _, path, folder = llama_gguf
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.text, "correct": p.correct, "incorrect": p.incorrect}) + "\n" for p in PROMPTS))
    out = tmp_path / "run"
    assert main(["run", "--model", str(path), "--prompts", str(prompts), "--out", str(out), "--quiet", "--no-report"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"] == str(path) and doc["n_prompts"] == 4
    expected = ls.run_study(PROMPTS, str(folder), device="cpu")  # the same model (test above)
    np.testing.assert_allclose(doc["logit_diff"]["per_prompt"], expected.logit_diff, rtol=0, atol=1e-6)


def test_a_file_that_is_not_gguf_is_a_clear_error(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ls.ModelLoadError, match=r"model.gguf is not a GGUF file: it does not start with the GGUF magic"):
        ls.load_model(str(fake), device="cpu")
    out = tmp_path / "run"
    assert main(["run", "--model", str(fake), "--prompts", "arena", "--out", str(out)]) == 2
    assert "is not a GGUF file" in capsys.readouterr().err and not out.exists()


def test_a_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ls.ModelLoadError, match=r"GGUF file not found: .*nowhere.gguf"):
        ls.run_study("arena", str(tmp_path / "nowhere.gguf"), device="cpu")


def test_without_the_gguf_package_the_error_says_what_to_install(llama_gguf, monkeypatch):
    import importlib.util

    _, path, _ = llama_gguf
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ls.ModelLoadError, match=r"only with the gguf package, not installed here: pip install 'logitscope\[gguf\]'"):
        ls.load_model(str(path), device="cpu")


def test_an_unsupported_gguf_architecture_is_refused_before_its_weights_are_read(tmp_path):
    hf = make_hf_model("llama", size="tiny", seed=7, vocab_size=len(small_gpt2_vocabulary()[0]))
    path = write_llama_gguf(hf, tmp_path / "other.gguf", architecture="bloom")
    with pytest.raises(ls.ModelLoadError, match=r"unsupported architecture 'BloomForCausalLM' \(model_type 'bloom'\)"):
        ls.load_model(str(path), device="cpu")


def test_a_folder_named_like_a_gguf_file_is_still_a_folder(tiny_gpt2_dir, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_gpt2_dir, tmp_path / "checkpoint.gguf")
    assert ls.load_model(str(folder), device="cpu").adapter.family == "gpt2"
