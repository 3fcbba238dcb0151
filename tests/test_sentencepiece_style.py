"""Answers for tokenizers with their own word-boundary marker (SentencePiece's ``▁``, as Llama 2 and
Mistral v0.1 use): " Mary" alone is ['▁', '▁Mary'], but after a prompt it is the one token '▁Mary'.

No such tokenizer can be downloaded here, so the tests train small ones offline on IOI sentences: a
``tokenizers`` BPE with the same normalisation (a ``▁`` prepended to the text, spaces replaced by
``▁``), and a real SentencePiece model file that transformers converts on load.
"""

from __future__ import annotations

import numpy as np
import pytest

import logitscope as ls
from logitscope.inputs.ioi import generate_ioi_prompts
from oracle import make_hf_model, save_checkpoint, tl_default_flags, tl_model
from test_parity import assert_matches, tl_reference


@pytest.fixture(scope="module")
def sp_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    corpus = [p.text + p.correct for p in generate_ioi_prompts(3000, seed=1)] * 3
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_space_led_answers_are_the_token_that_continues_the_prompt(sp_tokenizer, tmp_path):
    assert sp_tokenizer.convert_ids_to_tokens(sp_tokenizer.encode(" Mary", add_special_tokens=False)) == ["▁", "▁Mary"]
    hf = make_hf_model("llama", size="tiny", seed=2, vocab_size=len(sp_tokenizer))
    path = save_checkpoint(hf, tmp_path / "llama-sp")
    sp_tokenizer.save_pretrained(path)  # replaces the GPT-2 tokenizer files

    result = ls.run_study("ioi:24", str(path), device="cpu", batch_size=5)
    assert result.n_prompts == 24  # every IOI name survived the single-token filter
    for p, c, i in zip(result.prompts, result.correct_ids, result.incorrect_ids):
        for answer, token in ((p.correct, c), (p.incorrect, i)):
            continued = sp_tokenizer.encode(p.text + answer, add_special_tokens=False)
            assert continued[-1] == token and sp_tokenizer.convert_ids_to_tokens([token])[0] == "▁" + answer.strip()

    tl = tl_model(hf, "llama", **tl_default_flags("llama"))
    bos = [sp_tokenizer.bos_token_id] if result.prepend_bos else []
    ids = [bos + sp_tokenizer.encode(p.text, add_special_tokens=False) for p in result.prompts]
    assert_matches(result, tl_reference(tl, ids, result.correct_ids, result.incorrect_ids))


def test_an_answer_that_is_two_tokens_even_in_context_is_still_an_error(sp_tokenizer, tmp_path):
    hf = make_hf_model("llama", size="tiny", seed=2, vocab_size=len(sp_tokenizer))
    path = save_checkpoint(hf, tmp_path / "llama-sp")
    sp_tokenizer.save_pretrained(path)
    prompts = [ls.Prompt("When Mary and John went to the store, John gave a drink to", " Maryjohn", " John")]
    from logitscope.engine.setup import as_loaded
    from logitscope.inputs.encode import encode_prompts

    lm = as_loaded(str(path), None, device="cpu", dtype="float32", device_map=None)
    with pytest.raises(ls.InputError, match="answer ' Maryjohn' is"):  # edges: one token per answer
        encode_prompts(prompts, lm)
    # run teacher-forces it, as the tokens the prompt continues with (no spurious '▁' piece of its own)
    text = prompts[0].text
    base, full = (sp_tokenizer(t, add_special_tokens=False)["input_ids"] for t in (text, text + " Maryjohn"))
    assert full[: len(base)] == base and len(full) - len(base) > 1
    assert ls.run_study(prompts, str(path), device="cpu").correct_ids[0] == full[len(base)]
    assert np.isfinite(ls.run_study(prompts[:0] + [ls.Prompt(prompts[0].text, " Mary", " John")], str(path), device="cpu").logit_diff).all()


def test_fast_tokenize_path_equals_the_tokenizer_call(sp_tokenizer):
    from logitscope.inputs.encode import tokenize

    texts = [p.text for p in generate_ioi_prompts(50, seed=4)] + [" Mary", "Mary", "", "  two  spaces"]
    assert tokenize(sp_tokenizer, texts) == sp_tokenizer(texts, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory):
    """A real SentencePiece model (the sentencepiece library's BPE trainer, byte fallback, Llama 2's
    normalisation: a dummy prefix, spaces kept) saved as ``tokenizer.model`` with a
    ``LlamaTokenizer`` config and no ``tokenizer.json``: transformers converts it on load, as it does
    for a repository that ships only the SentencePiece file."""
    import json

    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(p.text + p.correct for p in generate_ioi_prompts(3000, seed=1)))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=800, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2,
    )
    (folder / "sp.model").rename(folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return folder


def test_a_sentencepiece_model_file_gives_the_tokens_the_prompt_continues_with(spm_folder, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spm_folder)
    hf = make_hf_model("llama", size="tiny", seed=5, vocab_size=len(tok))
    path = save_checkpoint(hf, tmp_path / "llama-spm")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json"):  # save_checkpoint's GPT-2 files
        (path / name).unlink(missing_ok=True)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copyfile(spm_folder / name, path / name)

    result = ls.run_study("ioi:20", str(path), device="cpu", batch_size=6)
    assert result.n_prompts == 20
    for p, c, i in zip(result.prompts, result.correct_ids, result.incorrect_ids):
        for answer, token in ((p.correct, c), (p.incorrect, i)):
            continued = tok.encode(p.text + answer, add_special_tokens=False)
            assert continued[:-1] == tok.encode(p.text, add_special_tokens=False) and continued[-1] == token
    tl = tl_model(hf, "llama", **tl_default_flags("llama"))
    ids = [[tok.bos_token_id] + tok.encode(p.text, add_special_tokens=False) for p in result.prompts]
    assert result.prepend_bos
    assert_matches(result, tl_reference(tl, ids, result.correct_ids, result.incorrect_ids))
