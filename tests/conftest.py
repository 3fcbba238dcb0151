"""Shared fixtures: the real GPT-2 tokenizer and small random-weight checkpoints built here."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
GPT2_TOKENIZER = DATA / "gpt2-tokenizer"


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))
