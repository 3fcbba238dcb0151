"""Writing outputs so that a failed run never leaves half-written files or clobbers earlier ones."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from logitscope.errors import InputError

# Every file a logitscope run (a study or a patch run) writes into its folder. A run removes those of
# them it did not write, so that a folder never mixes two runs (a patch run's
# patching_per_prompt.npz beside a later study's results.json, a report of an earlier run).
RUN_FILES = ("results.json", "per_prompt_heads.npy", "per_prompt.npz", "attention.npy", "per_prompt.csv",
             "report.html", "patching_per_prompt.npz", "patching_per_prompt.csv", "graph.json",
             "edges_per_prompt.npz")


def check_out_dir(out_dir: str | Path, *, label: str = "out_dir") -> Path:
    """Fail early, before any work, if ``out_dir`` cannot receive the outputs. ``label`` names it
    in the message: the Python argument (``out_dir``) or the command-line flag (``--out``)."""
    if not str(out_dir).strip():
        raise InputError(f"{label} is empty: give the folder to write into (e.g. {_example(label)})")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"{_named(label, out_dir)}: is a file, not a folder; choose a folder path")
    parent = out if out.exists() else _existing_parent(out, label)
    try:  # the only reliable test (root passes os.access; read-only mounts don't show in modes)
        Path(tempfile.mkdtemp(prefix=".logitscope-probe-", dir=parent)).rmdir()
    except OSError as e:
        raise InputError(f"{_named(label, out_dir)}: cannot write into {parent} ({e.strerror}); choose another folder") from None
    return out


def _named(label: str, value: str | Path) -> str:
    """``--out runs/x`` for a flag, ``out_dir='runs/x'`` for a Python argument."""
    return f"{label} {value}" if label.startswith("--") else f"{label}={str(value)!r}"


def _example(label: str) -> str:
    return "--out runs/first" if label.startswith("--") else f"{label}='runs/first'"


def _existing_parent(path: Path, label: str) -> Path:
    p = path.absolute().parent
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise InputError(f"{_named(label, path)}: {p} is a file, not a folder")
    return p


@contextmanager
def atomic_output_dir(out_dir: str | Path, owned: tuple[str, ...] = (), *, label: str = "out_dir") -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out_dir``; on success move its files into
    ``out_dir`` (each by an atomic rename) and delete any file named in ``owned`` or
    :data:`RUN_FILES` that this run did not write (a report or a patch run's arrays from an
    earlier run must not sit beside newer results); on failure delete the temporary folder and
    leave ``out_dir`` as it was."""
    out = check_out_dir(out_dir, label=label).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output folder should not be
    try:
        yield tmp
        if not out.exists():
            os.replace(tmp, out)
            return
        written = set()
        for item in tmp.iterdir():
            os.replace(item, out / item.name)
            written.add(item.name)
        for name in (set(owned) | set(RUN_FILES)) - written:
            (out / name).unlink(missing_ok=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def json_text(obj: Any) -> str:
    """``obj`` as JSON that is quick to write and easy to read: every object one key per line,
    a list of objects one item per line, anything else (numbers, lists of numbers) on one line.

    ``json.dumps(obj, indent=...)`` runs the pure-Python encoder; this writes each leaf with the C
    encoder, about five times faster for 10,000 prompts' rows, and keeps one prompt per line."""
    def dump(value: Any, pad: str) -> str:
        inner = pad + " "
        if isinstance(value, dict) and value:
            items = (f"{inner}{_key(k)}: {dump(v, inner)}" for k, v in value.items())
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return "[\n" + ",\n".join(inner + json.dumps(v) for v in value) + f"\n{pad}]"
        return json.dumps(value)

    return dump(obj, "") + "\n"


def _key(k: Any) -> str:
    """An object key as ``json.dumps`` writes it (``True`` -> ``"true"``; it raises where it would)."""
    return json.dumps({k: 0})[1:-4]


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path``: a temporary file in the same folder (created if missing), synced,
    then ``os.replace``, so a reader never sees half a file and a failure leaves any earlier file in
    place. The caller renders ``text`` first, so bad data fails before anything is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
