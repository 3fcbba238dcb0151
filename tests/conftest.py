"""Shared fixtures: the real GPT-2 tokenizer and small random-weight checkpoints built here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
GPT2_TOKENIZER = DATA / "gpt2-tokenizer"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_runtest_setup(item):
    """Tests marked ``browser`` need headless chromium: skipped without it, unless
    LOGITSCOPE_REQUIRE_BROWSER is set (as .ci/run does), where a missing browser fails them."""
    if item.get_closest_marker("browser") is None or CHROMIUM is not None:
        return
    why = "needs headless chromium on PATH (apt-get install chromium)"
    if os.environ.get("LOGITSCOPE_REQUIRE_BROWSER"):
        pytest.fail(f"LOGITSCOPE_REQUIRE_BROWSER is set and the test {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 checkpoint with hard random weights and the real GPT-2 tokenizer."""
    from oracle import make_hf_model, save_checkpoint

    return save_checkpoint(make_hf_model("gpt2", size="tiny", seed=1), tmp_path_factory.mktemp("tiny-gpt2"))
