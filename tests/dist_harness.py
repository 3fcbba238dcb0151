"""A logitscope command under torchrun with a fault planted on one rank (tests/test_distributed.py).

    python -m torch.distributed.run --nproc-per-node 2 tests/dist_harness.py FAULT RANK WRITERS -- run --model ...
    python -m torch.distributed.run --nproc-per-node 3 tests/dist_harness.py api - WRITERS -- OUT MODEL JSONL

FAULT, on rank RANK, at its first batch of the study: ``none``, ``oom`` (raises torch.OutOfMemoryError),
``kill`` (SIGKILL to itself), ``hang`` (sleeps for an hour), ``device`` (its model load raises as for a
GPU it does not have). Every rank that opens an output folder appends its rank to the file WRITERS.
``api``: the Python API in a process group the program initialised itself (gloo): the study of the
seed prompts, of JSONL and of ioi:500, and the seed's patching grid of every head, saved by rank 0
into OUT/seed, OUT/jsonl, OUT/ioi500 and OUT/patch (see :func:`api_runs`, which the test also runs in one process).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

import logitscope.results.io
import logitscope.results.serialize
from logitscope import cli
from logitscope.engine import distributed
from logitscope.engine.capture import Recorder
from logitscope.errors import ArgumentError


def main() -> None:
    fault, target, writers = sys.argv[1], sys.argv[2], sys.argv[3]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    rank = int(os.environ["RANK"])
    opened = logitscope.results.io.atomic_output_dir

    def recorded(*args, **kwargs):
        with open(writers, "a") as f:
            f.write(f"{rank}\n")
        return opened(*args, **kwargs)

    logitscope.results.io.atomic_output_dir = recorded
    logitscope.results.serialize.atomic_output_dir = recorded
    if fault == "api":  # target unused
        torch.distributed.init_process_group("gloo")
        for name, result in api_runs(*argv[1:]):
            assert (result is None) == (rank != 0), (name, rank)
            if result is not None:
                result.save(os.path.join(argv[0], name), report=False)
        code = 0
    else:
        if fault != "none" and rank == int(target):
            plant(fault)
        code = cli.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def api_runs(model: str, jsonl: str):
    """The API runs of the ``api`` mode, as ``(name, result)``."""
    import logitscope as ls

    yield "seed", ls.run_study("seed", model, device="cpu", batch_size=2)
    yield "jsonl", ls.run_study(jsonl, model, device="cpu", batch_size=3)
    yield "ioi500", ls.run_study("ioi:500", model, device="cpu", batch_size=64)
    yield "patch", ls.run_patching("seed", model, device="cpu", batch_size=3, what="heads")
    # An Experiment shares one study between study() and the causal methods, in either order, and
    # study() by its options: every rank must take the same branch (None on ranks > 0 is "made" too).
    exp = ls.Experiment(model, "seed", device="cpu", batch_size=3)
    yield "exp_study", exp.study()
    yield "exp_study_again", exp.study()
    yield "exp_patch", exp.patch("heads")
    yield "exp_ablate", exp.ablate("L1H0,L0H1")
    exp = ls.Experiment(model, "seed", device="cpu", batch_size=3)
    yield "exp_patch_first", exp.patch("heads")
    yield "exp_study_after", exp.study()


def plant(fault: str) -> None:
    if fault == "device":
        def placement(device, device_map, ranks):
            raise ArgumentError("device", device, f"local rank {ranks.local_rank} has no GPU of its own: this node has 0")

        distributed.placement = placement
        return
    run_batch = Recorder.run_batch

    def faulty(self, *args, **kwargs):
        if fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            time.sleep(3600)
        return run_batch(self, *args, **kwargs)

    Recorder.run_batch = faulty


if __name__ == "__main__":
    main()
