"""Helpers shared by the contender scripts: argument parsing, phase timing, the result file.

Every contender is run by ``bench/run.py`` as its own process. The parent measures wall time
(process start to exit) and peak RSS (``os.wait4``); the child writes a small JSON result
(``--result FILE``) with what only it can know: its own phase timings (from the first line of
the script, so interpreter start-up is excluded from them), the mean logit difference it computed
(to check the contenders agree), the versions it ran, and on CUDA its peak
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

T0 = time.perf_counter()


class Phases:
    """Named, consecutive phases (seconds), in the order they ran: wall-clock time, and the
    process's CPU time (``cpu``; what to compare where other jobs share the cores)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu


class CpuPhases:
    """CPU seconds of this process (user + system, ``time.process_time``) per phase, beside the
    wall-clock ``wall`` phases it enters too: with one thread per process, CPU time is the work done,
    and other load on a shared machine changes it far less than wall time. (The edge contenders'
    ``cpu_phases_s``: the phases they name this way only.)"""

    def __init__(self, wall: Phases) -> None:
        self.wall = wall
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.process_time()
        with self.wall(name):
            try:
                yield
            finally:
                self.times[name] = self.times.get(name, 0.0) + time.process_time() - start


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="checkpoint folder (bench/make_checkpoint.py)")
    p.add_argument("--prompts", required=True, help="JSONL of {prompt, correct, incorrect} (bench/prompts.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--result", required=True, help="where to write this contender's JSON result")
    return p


def read_prompts(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def cuda_peak_bytes(device: str) -> int | None:
    """Peak bytes allocated by torch on the CUDA device this process used, or None off CUDA."""
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def versions() -> dict[str, str]:
    """The versions this process ran, of the packages the table names."""
    from importlib import metadata

    found = {}
    for dist in ("torch", "transformers", "transformer-lens", "nnsight", "logitscope"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # e.g. run from a source folder on PYTHONPATH
            module = sys.modules.get(dist.replace("-", "_"))
            if getattr(module, "__version__", None):
                found[dist] = module.__version__
    return found


def write_result(path: str, phases: Phases, device: str, **fields: Any) -> None:
    doc = {
        "phases_s": phases.times,
        "phases_cpu_s": phases.cpu,
        "in_process_s": time.perf_counter() - T0,
        "cuda_peak_bytes": cuda_peak_bytes(device),
        "versions": versions(),
        **fields,
    }
    if "torch" in sys.modules:
        import torch

        doc["torch_threads"] = torch.get_num_threads()
    Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
