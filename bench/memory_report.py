"""Peak memory of ``logitscope run`` with the report on, at 2,000 and 20,000 IOI prompts.

Not a unit test: a benchmark that runs each size in its own process and reads that process's peak
resident set size (``os.wait4``'s ``ru_maxrss``), then writes
``bench/results/memory-report.json`` and ``.md``. The target (issue 19): the peak for 20,000
prompts within 1.3x of that for 2,000, report on.

    .venv/bin/python bench/memory_report.py                    # tiny demo checkpoint, 2,000 and 20,000
    .venv/bin/python bench/memory_report.py --repeat 3 --no-report-too --phases
    .venv/bin/python bench/memory_report.py --model DIR --sizes 2000,20000

``--phases`` also runs the same steps in one process per size and prints the peak after each one
(prompts, model, study, bootstrap intervals, results.json text, report), to see where it goes.
The model defaults to ``logitscope.demo_checkpoint``'s tiny GPT-2 (2 layers, 4 heads, d_model 64),
so the study's own arrays are small and what grows with N is the prompts, the bootstrap, the
files' text and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
TARGET = 1.3

# One process per size: the peak after each step, as (step, VmHWM MB).
_PHASES = r"""
import json, sys
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
steps = []
from logitscope.models.load import load_model
from logitscope.api.study import run_study
from logitscope.inputs.prompts import parse_prompts
steps.append(("imports", hwm()))
lm = load_model(sys.argv[1]); steps.append(("model", hwm()))
data = run_study(parse_prompts(sys.argv[2]), lm, progress=False); steps.append(("study", hwm()))
data.intervals; steps.append(("bootstrap intervals", hwm()))
from logitscope.results.io import json_text
from logitscope.results.serialize import results_document
text = json_text(results_document(data)); steps.append(("results.json text", hwm())); del text
from logitscope.report import report_html
page = report_html(data); steps.append(("report.html text", hwm()))
print(json.dumps(steps))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(BENCH.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its peak RSS in MB (Linux ``ru_maxrss`` is in KB) and its wall time in s."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return usage.ru_maxrss / 1024, wall


def run_once(model: str, n: int, report: bool, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "logitscope", "run", "--model", model, "--prompts", f"ioi:{n}", "--out", str(out),
           "--quiet"] + ([] if report else ["--no-report"])
    mb, wall = peak_rss(cmd)
    sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    return {"peak_rss_mb": round(mb, 1), "wall_s": round(wall, 2), "file_bytes": sizes}


def phases(model: str, n: int) -> list[tuple[str, float]]:
    out = subprocess.run([sys.executable, "-c", _PHASES, model, f"ioi:{n}"], env=_env(), capture_output=True,
                         text=True, check=True)
    return [(k, round(v, 1)) for k, v in json.loads(out.stdout.strip().splitlines()[-1])]


def markdown(doc: dict[str, Any]) -> str:
    small, large = doc["sizes"]
    lines = [f"# Peak memory of `logitscope run` with the report, {small:,} and {large:,} prompts", "",
             f"Model: {doc['model_desc']}. {doc['machine']}. Each run its own process, peak RSS "
             f"(`ru_maxrss`), median of {doc['repeat']}.", "",
             "| run | prompts | peak RSS (MB) | × the smaller | report.html | results.json | wall (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode in doc["runs"]:
        base = doc["runs"][mode][str(small)]["peak_rss_mb"]
        for n in doc["sizes"]:
            r = doc["runs"][mode][str(n)]
            rep = r["file_bytes"].get("report.html")
            lines.append(f"| {mode} | {n:,} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base:.2f} | "
                         f"{'—' if rep is None else f'{rep / 1e6:.2f} MB'} | "
                         f"{r['file_bytes']['results.json'] / 1e6:.2f} MB | {r['wall_s']:.1f} |")
    ratio = doc["ratio_report"]
    lines += ["", f"Report on: {large:,} prompts peak at **{ratio:.2f}×** the memory of {small:,} "
              f"(target ≤ {TARGET}×: **{'met' if ratio <= TARGET else 'not met'}**)."]
    if doc.get("phases"):
        lines += ["", "Peak RSS (MB) after each step, one process per size:", "",
                  "| step | " + " | ".join(f"{n:,}" for n in doc["sizes"]) + " |",
                  "|---|" + "---:|" * len(doc["sizes"])]
        steps = [k for k, _ in doc["phases"][str(small)]]
        for i, step in enumerate(steps):
            lines.append(f"| {step} | " + " | ".join(f"{doc['phases'][str(n)][i][1]:.0f}" for n in doc["sizes"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a checkpoint folder (default: the tiny demo checkpoint, made in a temp folder)")
    ap.add_argument("--sizes", default="2000,20000", help="two prompt counts, smaller first")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size (the median is kept)")
    ap.add_argument("--no-report-too", action="store_true", help="also measure with --no-report")
    ap.add_argument("--phases", action="store_true", help="also the peak after each step, one process per size")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for memory-report.json and .md")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="logitscope-mem-") as tmp:
        model = args.model
        desc = model
        if model is None:
            model = str(Path(tmp) / "tiny")
            subprocess.run([sys.executable, "-m", "logitscope.demo_checkpoint", model], env=_env(), check=True,
                           capture_output=True)
            desc = "logitscope.demo_checkpoint (tiny random GPT-2: 2 layers × 4 heads, d_model 64)"
        modes = {"report": True, **({"no report": False} if args.no_report_too else {})}
        runs: dict[str, dict[str, Any]] = {}
        for mode, report in modes.items():
            runs[mode] = {}
            for n in sizes:
                tries = [run_once(model, n, report, Path(tmp) / f"out-{mode}-{n}-{i}") for i in range(args.repeat)]
                best = sorted(tries, key=lambda r: r["peak_rss_mb"])[len(tries) // 2]
                best["all_peak_rss_mb"] = [r["peak_rss_mb"] for r in tries]
                runs[mode][str(n)] = best
                print(f"{mode:>9} {n:>7,} prompts: peak {best['peak_rss_mb']:.0f} MB {best['all_peak_rss_mb']}",
                      flush=True)
        doc: dict[str, Any] = {
            "what": "peak RSS of `logitscope run --prompts ioi:N --quiet`, each run its own process",
            "model_desc": desc, "sizes": sizes, "repeat": args.repeat, "target_ratio": TARGET,
            "machine": f"{platform.machine()} Linux, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
                       f"{_env()['OMP_NUM_THREADS']}, Python {platform.python_version()}",
            "runs": runs,
            "ratio_report": round(runs["report"][str(sizes[1])]["peak_rss_mb"] / runs["report"][str(sizes[0])]["peak_rss_mb"], 3),
        }
        doc["target_met"] = doc["ratio_report"] <= TARGET
        if args.phases:
            doc["phases"] = {str(n): phases(model, n) for n in sizes}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory-report.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    md = markdown(doc)
    (args.out / "memory-report.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
