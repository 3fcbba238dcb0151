"""Writing outputs so that a failed run never leaves half-written files or clobbers earlier ones."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from logitscope.errors import InputError


def check_out_dir(out_dir: str | Path) -> Path:
    """Fail early, before any work, if ``out_dir`` cannot receive the outputs."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out_dir}: is a file, not a folder; choose a folder path")
    parent = out if out.exists() else _existing_parent(out)
    try:  # the only reliable test (root passes os.access; read-only mounts don't show in modes)
        Path(tempfile.mkdtemp(prefix=".logitscope-probe-", dir=parent)).rmdir()
    except OSError as e:
        raise InputError(f"--out {out_dir}: cannot write into {parent} ({e.strerror}); choose another folder") from None
    return out


def _existing_parent(path: Path) -> Path:
    p = path.absolute().parent
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise InputError(f"--out {path}: {p} is a file, not a folder")
    return p


@contextmanager
def atomic_output_dir(out_dir: str | Path, owned: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out_dir``; on success move its files into
    ``out_dir`` (each by an atomic rename) and delete any file named in ``owned`` that this run
    did not write (a report from an earlier run must not sit beside newer results); on failure
    delete the temporary folder and leave ``out_dir`` as it was."""
    out = check_out_dir(out_dir).absolute()
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
        for name in set(owned) - written:
            (out / name).unlink(missing_ok=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
