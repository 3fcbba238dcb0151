"""Data parallelism on this machine's CPU: ``torchrun`` ranks against intra-op threads, same cores.

    .venv/bin/python bench/distributed.py [--n 2000] [--cores 2] [--repeat 1] [--batch-size 64]

Runs ``logitscope run --prompts ioi:N`` on the GPT-2-small-shaped random checkpoint
(``make_checkpoint.py``) three ways, each its own process tree, timed from start to exit:

- ``1x1``: one process, one thread (the reference for speed-ups);
- ``1xC``: one process, ``C`` threads (``OMP_NUM_THREADS=C``), PyTorch's intra-op parallelism;
- ``Cx1``: ``torchrun --nproc-per-node C``, one thread a rank, gloo.

Scaling efficiency is speed-up over ``1x1`` divided by ``C``. Where the time goes comes from
results.json's ``timing`` (rank 0's clock): ``study_s`` (run_study: tokenization, the rank's
batches, waiting for the other ranks at the gather, the attention pass), ``gather_s`` (the gather
of per-prompt results to rank 0, including the wait for the slowest rank) and the rest of the wall
time: start-up (interpreter, imports, torchrun's rendezvous, model load) and writing the outputs.
The per-prompt values of the runs are compared (different thread counts sum in different orders:
float32 round-off, not bitwise). Writes ``bench/results/distributed-cpu-N.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from make_checkpoint import DEFAULT_DIR, make_checkpoint  # noqa: E402
from run import machine_info, source_state, wait_for_idle  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(ranks: int, threads: int, model: Path, n: int, batch_size: int, out: Path) -> dict[str, Any]:
    """One ``logitscope run`` (under torchrun when ``ranks`` > 1): wall time and results.json's timing."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    args = ["run", "--model", str(model), "--prompts", f"ioi:{n}", "--out", str(out), "--device", "cpu",
            "--batch-size", str(batch_size), "--no-report", "--quiet"]
    if ranks == 1:
        cmd = [sys.executable, "-m", "logitscope", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-port", str(_free_port()), "-m", "logitscope", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{ranks}x{threads} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    timing = json.loads((out / "results.json").read_text())["timing"]
    return {"ranks": ranks, "threads": threads, "wall_s": wall, "study_s": timing["study_s"],
            "gather_s": timing.get("gather_s", 0.0), "rest_s": wall - timing["study_s"],
            "prompts_per_rank": timing["prompts_per_rank"], "out": str(out)}


def max_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two runs' per-prompt arrays."""
    x, y = np.load(a / "per_prompt.npz"), np.load(b / "per_prompt.npz")
    return max(float(np.max(np.abs(x[k].astype(np.float64) - y[k]))) for k in x if x[k].dtype.kind == "f" and x[k].size)


def markdown(doc: dict[str, Any]) -> str:
    m, c, n = doc["machine"], doc["cores"], doc["n"]
    lines = [f"ioi:{n} (batches of {doc['batch_size']}), GPT-2-small-shaped random-weight model, fp32, CPU; "
             f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}; logitscope at {doc['source']['commit']}. "
             f"Median of {doc['repeat']} run(s) each; machine load before the runs: {doc['load_before']:.2f} cores busy "
             "(shared machine: expect noise).", "",
             "| ranks × threads | wall (s) | study_s (s) | of which gather (s) | start-up + load + write (s) | prompts/s (wall) | speed-up vs 1×1 | efficiency |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['ranks']} × {r['threads']} | {r['wall_s']:.1f} | {r['study_s']:.1f} | {r['gather_s']:.2f} | "
                     f"{r['rest_s']:.1f} | {n / r['wall_s']:.0f} | {r['speedup']:.2f}× | {r['speedup'] / (r['ranks'] * r['threads']):.0%} |")
    lines += ["", f"{c} ranks × 1 thread vs 1 rank × {c} threads: wall {doc['ranks_vs_threads_wall']:.2f}× "
              f"(study alone {doc['ranks_vs_threads_study']:.2f}×; above 1: the ranks are faster). "
              + (f"Per-prompt values agree to {doc['max_difference']:.1e} (float32 round-off: different thread counts)."
               if doc["max_difference"] else "Per-prompt values of the three runs identical, bit for bit."),
              f"Prompts per rank: {doc['rows'][-1]['prompts_per_rank']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--cores", type=int, default=2, help="ranks of the data-parallel run, threads of the threaded one")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--model", default=str(DEFAULT_DIR), help="checkpoint folder (built if missing)")
    p.add_argument("--results", default=str(BENCH / "results"))
    args = p.parse_args(argv)
    model = make_checkpoint(args.model)
    load = wait_for_idle(60.0)
    setups = [(1, 1), (1, args.cores), (args.cores, 1)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ranks, threads in setups:
            runs = [one_run(ranks, threads, model, args.n, args.batch_size, Path(tmp) / f"{ranks}x{threads}-{i}")
                    for i in range(args.repeat)]
            runs.sort(key=lambda r: r["wall_s"])
            rows.append(runs[len(runs) // 2])
            print(f"{ranks} x {threads}: wall {rows[-1]['wall_s']:.1f} s, study {rows[-1]['study_s']:.1f} s", flush=True)
        for r in rows:
            r["speedup"] = rows[0]["wall_s"] / r["wall_s"]
        diff = max(max_difference(Path(rows[0]["out"]), Path(r["out"])) for r in rows[1:])
    threaded, ranked = rows[1], rows[2]
    doc = {"n": args.n, "cores": args.cores, "batch_size": args.batch_size, "repeat": args.repeat,
           "machine": machine_info("cpu"), "source": source_state(), "load_before": load, "rows": rows,
           "ranks_vs_threads_wall": threaded["wall_s"] / ranked["wall_s"],
           "ranks_vs_threads_study": threaded["study_s"] / ranked["study_s"], "max_difference": diff}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"distributed-cpu-{args.n}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
