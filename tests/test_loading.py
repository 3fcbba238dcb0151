"""Loading a model: bad weights files named, the hub asked the way transformers asks it, and a
cache that holds half a download told apart from one that holds nothing."""

from __future__ import annotations

import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import logitscope as ls
from logitscope.cli import main

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_weights_file_is_exit_2_naming_the_file(tiny_gpt2_dir, tmp_path, damage, capsys):
    folder = _copy(tiny_gpt2_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"x" * 5000, "empty": b""}[damage])
    assert main(["run", "--model", str(folder), "--prompts", "seed", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"logitscope: error: {weights}: the weights file is truncated or corrupt" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_a_truncated_torch_weights_file_and_a_missing_shard_are_named(tiny_gpt2_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    folder = _copy(tiny_gpt2_dir, tmp_path / "bin")
    (folder / "model.safetensors").unlink()
    torch.save(AutoModelForCausalLM.from_pretrained(str(tiny_gpt2_dir)).state_dict(), folder / "pytorch_model.bin")
    assert ls.load_model(str(folder), device="cpu").shape.n_layers == 2  # a whole .bin loads
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ls.ModelLoadError, match=r"pytorch_model\.bin: the weights file is truncated or corrupt"):
        ls.load_model(str(folder), device="cpu")

    sharded = _copy(tiny_gpt2_dir, tmp_path / "sharded")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ls.ModelLoadError, match=r"model-00002-of-00002\.safetensors is missing \(model\.safetensors\.index\.json lists 2"):
        ls.load_model(str(sharded), device="cpu")


def test_a_weights_file_given_for_its_folder(tiny_gpt2_dir, tmp_path, capsys):
    weights = tiny_gpt2_dir / "model.safetensors"
    assert main(["run", "--model", str(weights), "--prompts", "seed", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"model {str(weights)!r} is a file; pass the folder that holds it with its config.json and tokenizer ({tiny_gpt2_dir})" in err
    with pytest.raises(ls.ModelLoadError, match="is a file; pass the folder"):
        ls.load_model(str(tiny_gpt2_dir / "config.json"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ls.ModelLoadError) as caught:  # a GGUF file is a model of its own, not a misplaced file
        ls.load_model(str(gguf))
    assert "pass the folder" not in str(caught.value)


# ------------------------------------------------------------------------------------------ the hub
class _Hub(BaseHTTPRequestHandler):
    """Answers every request 404 (a hub, or a proxy to one, that is there), and records it."""

    seen: list[str] = []

    def _answer(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.send_header("X-Error-Code", "EntryNotFound")
        self.end_headers()

    do_HEAD = do_GET = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub():
    _Hub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Hub.seen
    server.shutdown()


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """huggingface_hub as a fresh process would set it up from the environment: no proxy, no
    offline mode, an empty cache, the real endpoint; each test changes what it needs."""
    import huggingface_hub
    from huggingface_hub import constants

    for key in [k for k in os.environ if k.upper().endswith("_PROXY") or k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    huggingface_hub.close_session()  # its client reads the proxies from the environment when made
    yield monkeypatch, _Endpoint(monkeypatch, constants)
    huggingface_hub.close_session()


class _Endpoint:
    """Sets HF_ENDPOINT as huggingface_hub reads it at import (its endpoint and URL template)."""

    def __init__(self, monkeypatch, constants) -> None:
        self.monkeypatch, self.constants = monkeypatch, constants

    def __call__(self, url: str) -> None:
        self.monkeypatch.setattr(self.constants, "ENDPOINT", url)
        self.monkeypatch.setattr(self.constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")

    def cache(self, folder: Path) -> None:
        self.monkeypatch.setattr(self.constants, "HF_HUB_CACHE", str(folder))


def test_the_probe_goes_through_the_proxy_and_the_endpoint_transformers_use(hub, hub_env):
    from logitscope.models.load import hub_unreachable

    url, seen = hub
    monkeypatch, endpoint = hub_env
    # Through a proxy: the endpoint's name cannot even be resolved here, only the proxy can reach it.
    endpoint("http://hub.invalid")
    monkeypatch.setenv("HTTP_PROXY", url)
    assert hub_unreachable("org/model") is None
    assert seen[-1].startswith("HEAD http://hub.invalid/org/model/resolve/main/config.json")
    with pytest.raises(ls.ModelLoadError) as caught:  # the hub answered (404): transformers says what is wrong
        ls.load_model("org/model")
    assert "cannot be reached" not in str(caught.value) and "could not load model 'org/model'" in str(caught.value)
    # A mirror named by HF_ENDPOINT.
    monkeypatch.delenv("HTTP_PROXY")
    import huggingface_hub

    huggingface_hub.close_session()
    endpoint(url)
    assert hub_unreachable("org/model") is None
    assert seen[-1].startswith("HEAD /org/model/resolve/main/config.json")
    # Nothing there: the reason, and the endpoint, in load_model's message.
    endpoint("http://127.0.0.1:9")
    with pytest.raises(ls.ModelLoadError, match=r"^model 'org/model' \(org/model\) is not a local folder, not in the local "
                       r"Hugging Face cache, and the hub \(127\.0\.0\.1\) cannot be reached: ConnectError"):
        ls.load_model("org/model")
    # HF_HUB_OFFLINE: no request at all.
    endpoint(url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(seen)
    with pytest.raises(ls.ModelLoadError, match="and HF_HUB_OFFLINE is set; unset it to download"):
        ls.load_model("org/model")
    assert len(seen) == before


def _fake_cache(cache: Path, checkpoint: Path, files: list[str]) -> None:
    """The Hugging Face cache's layout for repo org/tiny holding ``files`` of ``checkpoint``."""
    repo = cache / "models--org--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name in files:
        shutil.copyfile(checkpoint / name, snapshot / name)


def test_a_half_downloaded_model_is_not_reported_missing(tiny_gpt2_dir, tmp_path, hub_env):
    monkeypatch, endpoint = hub_env
    tokenizer = ["vocab.json", "merges.txt", "tokenizer_config.json"]
    partial, complete = tmp_path / "partial", tmp_path / "complete"
    _fake_cache(partial, tiny_gpt2_dir, ["config.json", *tokenizer])  # the weights never arrived
    _fake_cache(complete, tiny_gpt2_dir, ["config.json", "model.safetensors", *tokenizer])
    endpoint.cache(partial)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ls.ModelLoadError, match=r"^model 'org/tiny' \(org/tiny\) is only partly in the local Hugging Face "
                       r"cache \(its config\.json is there, not all its weights: a download did not finish\), and "
                       r"HF_HUB_OFFLINE is set"):
        ls.load_model("org/tiny", device="cpu")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    endpoint("http://127.0.0.1:9")
    with pytest.raises(ls.ModelLoadError, match=r"is only partly in the local Hugging Face cache .* cannot be reached: "
                       r"ConnectError.*Connect to finish the download"):
        ls.load_model("org/tiny", device="cpu")
    endpoint.cache(complete)  # all there: no hub needed
    assert ls.load_model("org/tiny", device="cpu").shape.n_layers == 2
