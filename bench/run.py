"""Benchmark: logitscope's whole run vs TransformerLens 3.9 used well vs a plain forward pass.

    .venv/bin/python bench/run.py --n 512                      # CPU; writes bench/results/cpu-512.{json,md}
    .venv/bin/python bench/run.py --n 512 --device cuda        # a GPU machine; bench/results/cuda-512.*
    .venv/bin/python bench/run.py --n 512 --repeat 3 --wait-idle 120 --naive

What it does, in one run on one machine:

1. builds (or reuses) a random-weight GPT-2-small-shaped checkpoint (``make_checkpoint.py``) and
   writes N equal-length IOI prompts to JSONL (``prompts.py``), so every contender reads the same
   model and the same prompts; reads the checkpoint once so that every contender finds it in the
   page cache;
2. runs each contender as its own process, one at a time (``--repeat`` rounds, contenders in the
   same order each round):

   - ``logitscope``: ``logitscope run --model DIR --prompts FILE --out TMP --quiet --device D``
     (through ``contenders/logitscope_run.py``, which calls the same ``logitscope.cli.main``):
     the whole run, results.json and report.html included, default batch size;
   - ``transformer_lens``: ``contenders/tl_used_well.py``: TL 3.9, batches of 64, cache filtered
     to the hooks the study reads, the seed's study with per-batch sums;
   - ``floor``: ``contenders/floor.py``: the HF model's plain forward per batch of 64, keeping the
     two answer logits at the last position;
   - ``floor_lean`` (information only): the base transformer plus two unembedding rows;
   - ``tl_naive`` (only with ``--naive``): the seed's way, one ``run_with_cache`` over all prompts
     and every hook. It needs far more memory than a laptop has; it is killed at ``--mem-limit-gb``.

3. measures, per process: wall time from just before the process is spawned to its exit
   (interpreter start-up, imports, model load and writing outputs all included); peak RSS from
   ``os.wait4``'s rusage for that one child (``ru_maxrss``); CPU time (user + sys); on CUDA the
   child's ``torch.cuda.max_memory_allocated``; and the CPU time other processes used meanwhile
   (from ``/proc/stat``), to flag a busy machine;
4. checks that the contenders agree: every mean logit difference within ``--tolerance`` (1e-4) of
   logitscope's; TL's logit lens, layer and head attributions within the same tolerance and the
   same top heads. A disagreement makes the exit status 1 (after the results are written);
5. prints a table (median wall over rounds, max peak RSS, prompts/s, ratios and the issue's
   targets) and writes ``--out`` (JSON, every round's raw numbers and the machine) and the same
   path with ``.md`` (the table the README's performance section is built from).

Targets (the issue, CPU, 512 prompts): logitscope ≥ 8× faster and ≥ 5× less peak memory than TL
used well, and ≤ 1.2× the floor's wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CONTENDERS = BENCH / "contenders"
sys.path.insert(0, str(BENCH))

from make_checkpoint import DEFAULT_DIR, make_checkpoint  # noqa: E402
from prompts import write_prompts  # noqa: E402

GB = 1e9
TARGET_SPEEDUP = 8.0
TARGET_MEMORY = 5.0
TARGET_FLOOR_RATIO = 1.2
ALL_CONTENDERS = ("logitscope", "transformer_lens", "floor", "floor_lean", "tl_naive")
DEFAULT_CONTENDERS = ("logitscope", "transformer_lens", "floor", "floor_lean")


@dataclass
class Run:
    """One process: what the parent measured and what the child reported."""

    contender: str
    round: int
    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    cpu_user_s: float
    cpu_sys_s: float
    other_cpu_s: float  # CPU time other processes on the machine used during this run
    killed_for_memory: bool = False
    timed_out: bool = False
    child: dict[str, Any] = field(default_factory=dict)  # the contender's --result JSON
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.child)


# ------------------------------------------------------------------ the machine
def _cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    vals = [int(x) for x in fields]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(max_wait_s: float, busy_cores: float = 0.25) -> float:
    """Wait (up to ``max_wait_s``) until the machine's other load is below ``busy_cores``; return
    the load seen last (cores busy, averaged over 2 s)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        a = _cpu_busy_seconds()
        time.sleep(2.0)
        load = (_cpu_busy_seconds() - a) / 2.0
        if load < busy_cores or time.monotonic() >= deadline:
            return load


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo_bytes(key: str) -> int | None:
    """A /proc/meminfo field (``MemTotal``, ``MemAvailable``) in bytes; ``None`` where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def source_state() -> dict[str, Any]:
    """The commit measured and whether logitscope's sources differed from it (uncommitted edits)."""
    def git(*a: str) -> str:
        out = subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO, check=False)
        return out.stdout.strip()

    untracked = git("ls-files", "--others", "--exclude-standard", "--", "src").splitlines()
    dirty = git("diff", "--name-only", "HEAD", "--", "src").splitlines() + untracked
    digest = hashlib.sha1(git("diff", "HEAD", "--", "src").encode())
    for f in untracked:
        digest.update((REPO / f).read_bytes() if (REPO / f).is_file() else b"")
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "src_tree": git("rev-parse", "--short", "HEAD:src") or None,  # what was measured
        "src_uncommitted": dirty,
        "src_diff_sha1": digest.hexdigest() if dirty else None,
    }


def _src_changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether logitscope's sources changed while contenders ran (a commit that touched only docs
    does not count)."""
    keys = ("src_tree", "src_uncommitted", "src_diff_sha1")
    return any(before.get(k) != after.get(k) for k in keys)


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round((_meminfo_bytes("MemTotal") or 0) / GB, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "transformer_lens": _version("transformer-lens"),
        "logitscope": _version("logitscope"),
        "device": device,
    }
    if device.startswith("cuda") and shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        )
        info["gpu"] = out.stdout.strip().splitlines()
    return info


# ------------------------------------------------------------------ running one process
def _rss_watchdog(pid: int, limit_bytes: int, stop: threading.Event, hit: list[bool]) -> None:
    """Kill ``pid`` if its resident memory passes ``limit_bytes`` (protects a shared machine)."""
    status = Path(f"/proc/{pid}/status")
    while not stop.wait(0.2):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    if int(line.split()[1]) * 1024 > limit_bytes:
                        hit.append(True)
                        os.kill(pid, signal.SIGKILL)
                        return
                    break
        except (OSError, ValueError):
            return


def run_process(
    contender: str, round_: int, cmd: list[str], result_path: Path, *, mem_limit_bytes: int, timeout_s: float
) -> Run:
    """Spawn ``cmd``, wait for it with ``os.wait4`` (rusage of this child alone), read its result."""
    result_path.unlink(missing_ok=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0 = _cpu_busy_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=env)
        stop, hit, timed_out = threading.Event(), [], []
        watchdog = threading.Thread(target=_rss_watchdog, args=(proc.pid, mem_limit_bytes, stop, hit), daemon=True)
        watchdog.start()

        def on_timeout() -> None:
            timed_out.append(True)
            os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, on_timeout)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy = _cpu_busy_seconds() - busy0
        timer.cancel()
        stop.set()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
        err.seek(0)
        stderr_tail = err.read().decode("utf-8", "replace")[-2000:]
    cpu = usage.ru_utime + usage.ru_stime
    child: dict[str, Any] = {}
    if proc.returncode == 0 and result_path.exists():
        child = json.loads(result_path.read_text())
    return Run(
        contender=contender,
        round=round_,
        command=cmd,
        returncode=proc.returncode,
        wall_s=wall,
        peak_rss_bytes=usage.ru_maxrss * 1024,  # Linux: kilobytes
        cpu_user_s=usage.ru_utime,
        cpu_sys_s=usage.ru_stime,
        other_cpu_s=max(0.0, busy - cpu),
        killed_for_memory=bool(hit),
        timed_out=bool(timed_out),
        child=child,
        stderr_tail="" if proc.returncode == 0 else stderr_tail,
    )


def command(contender: str, args: argparse.Namespace, model: Path, prompts: Path, result: Path, out_dir: Path) -> list[str]:
    py = sys.executable
    common = ["--model", str(model), "--prompts", str(prompts), "--device", args.device, "--result", str(result)]
    if contender == "logitscope":
        cmd = [py, str(CONTENDERS / "logitscope_run.py"), "--result", str(result), "--",
               "run", "--model", str(model), "--prompts", str(prompts), "--out", str(out_dir),
               "--quiet", "--device", args.device]
        if args.logitscope_batch_size:
            cmd += ["--batch-size", str(args.logitscope_batch_size)]
        if args.no_report:
            cmd.append("--no-report")
        return cmd
    if contender == "transformer_lens":
        return [py, str(CONTENDERS / "tl_used_well.py"), *common, "--batch-size", str(args.batch_size)]
    if contender == "tl_naive":
        return [py, str(CONTENDERS / "tl_used_well.py"), *common, "--batch-size", str(args.n), "--all-hooks"]
    if contender == "floor":
        return [py, str(CONTENDERS / "floor.py"), *common, "--batch-size", str(args.batch_size)]
    if contender == "floor_lean":
        return [py, str(CONTENDERS / "floor.py"), *common, "--batch-size", str(args.batch_size), "--lean"]
    raise ValueError(contender)


def _rel(arg: str) -> str:
    """A command-line argument with this checkout's path left out (results are committed)."""
    return arg.replace(str(REPO) + os.sep, "")


# ------------------------------------------------------------------ summarising
def summarise(runs: list[Run], n: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r.contender for r in runs):
        mine = [r for r in runs if r.contender == name]
        good = [r for r in mine if r.ok]
        row: dict[str, Any] = {"runs": len(mine), "ok_runs": len(good)}
        if not good:
            last = mine[-1]
            row["failed"] = (
                "killed at the memory limit" if last.killed_for_memory
                else "timed out" if last.timed_out
                else f"exit status {last.returncode}"
            )
            row["peak_rss_gb_at_failure"] = max(r.peak_rss_bytes for r in mine) / GB
            out[name] = row
            continue
        wall = statistics.median(r.wall_s for r in good)
        row.update(
            wall_s=wall,
            wall_s_all=[round(r.wall_s, 3) for r in good],
            peak_rss_gb=max(r.peak_rss_bytes for r in good) / GB,  # the most of any run: conservative
            peak_rss_gb_all=[round(r.peak_rss_bytes / GB, 3) for r in good],
            cpu_s=statistics.median(r.cpu_user_s + r.cpu_sys_s for r in good),
            other_cpu_s=statistics.median(r.other_cpu_s for r in good),
            prompts_per_s=n / wall,
            mean_logit_diff=good[-1].child.get("mean_logit_diff"),
            phases_s=good[-1].child.get("phases_s"),
        )
        studies = [r.child["study_timing"] for r in good if r.child.get("study_timing")]
        if studies:  # logitscope's own timing of run_study: tokenization to every number, in-process
            row["study_s"] = statistics.median(t["study_s"] for t in studies)
            row["study_prompts_per_s"] = n / row["study_s"]
            row["study_timing_all"] = studies
        peaks = [r.child.get("cuda_peak_bytes") for r in good if r.child.get("cuda_peak_bytes") is not None]
        if peaks:
            row["cuda_peak_gb"] = max(peaks) / GB
        out[name] = row
    return out


def agreement(runs: list[Run], tol: float) -> dict[str, Any]:
    """Every contender's mean logit difference against logitscope's; TL's attributions too."""
    import numpy as np

    ref = next((r.child for r in runs if r.contender == "logitscope" and r.ok), None)
    if ref is None:
        return {"checked": False, "why": "logitscope did not finish"}
    checks: dict[str, Any] = {"checked": True, "tolerance": tol, "logitscope_mean_logit_diff": ref["mean_logit_diff"]}
    ok = True
    for r in runs:
        if r.contender == "logitscope" or not r.ok:
            continue
        key = f"{r.contender}#{r.round}"
        d = abs(r.child["mean_logit_diff"] - ref["mean_logit_diff"])
        entry: dict[str, Any] = {"mean_logit_diff_abs_diff": d}
        ok &= d <= tol
        if "head_attribution" in r.child:
            for name in ("logit_lens", "layer_attribution", "head_attribution"):
                diff = float(np.max(np.abs(np.asarray(r.child[name]) - np.asarray(ref[name]))))
                entry[f"{name}_max_abs_diff"] = diff
                ok &= diff <= tol
            for name in ("logit_lens_labels", "layer_attribution_labels"):
                same = r.child[name] == ref[name]
                entry[f"{name}_equal"] = same
                ok &= same
            same_top = [list(x) for x in r.child["top_heads"]] == [list(x) for x in ref["top_heads"]] and [
                list(x) for x in r.child["bottom_heads"]
            ] == [list(x) for x in ref["bottom_heads"]]
            entry["top_heads_equal"] = same_top
            ok &= same_top
        checks[key] = entry
    checks["agree"] = bool(ok)
    return checks


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def get(name: str, key: str) -> float | None:
        return summary.get(name, {}).get(key)

    ls_wall, ls_rss = get("logitscope", "wall_s"), get("logitscope", "peak_rss_gb")
    out: dict[str, float | None] = {}
    tl_wall, tl_rss = get("transformer_lens", "wall_s"), get("transformer_lens", "peak_rss_gb")
    out["speedup_vs_tl"] = tl_wall / ls_wall if tl_wall and ls_wall else None
    out["memory_ratio_vs_tl"] = tl_rss / ls_rss if tl_rss and ls_rss else None
    tl_gpu, ls_gpu = get("transformer_lens", "cuda_peak_gb"), get("logitscope", "cuda_peak_gb")
    out["gpu_memory_ratio_vs_tl"] = tl_gpu / ls_gpu if tl_gpu and ls_gpu else None
    fl = get("floor", "wall_s")
    out["wall_vs_floor"] = ls_wall / fl if fl and ls_wall else None
    lean = get("floor_lean", "wall_s")
    out["wall_vs_floor_lean"] = ls_wall / lean if lean and ls_wall else None
    return out


def markdown(doc: dict[str, Any]) -> str:
    m, s, r, src = doc["machine"], doc["summary"], doc["ratios"], doc["source"]
    gpu = any("cuda_peak_gb" in row for row in s.values())
    names = {
        "logitscope": "logitscope (whole run" + (", no report)" if doc["settings"]["no_report"] else ", report included)"),
        "transformer_lens": f"TransformerLens {m.get('transformer_lens')} used well (batches of {doc['settings']['batch_size']}, filtered cache)",
        "floor": f"floor: plain HF forward, batches of {doc['settings']['batch_size']}",
        "floor_lean": "floor, lean: base model + two unembedding rows",
        "tl_naive": "TransformerLens, the seed's way (one run_with_cache, every hook)",
    }
    head = "| | wall (s) | peak RSS (GB) | prompts/s | CPU time (s) |" + (" peak GPU mem (GB) |" if gpu else "")
    lines = [
        f"{doc['n']} equal-length IOI prompts ({doc['prompt_tokens']} tokens with BOS), GPT-2-small-shaped "
        f"random-weight model, fp32, device {m['device']}; {m['cpu']}, {m['cores_usable']} cores, "
        f"{m['memory_gb']} GB"
        + (f", {m['gpu'][0]}" if m.get("gpu") else "")
        + f"; torch {m['torch']}, transformers {m['transformers']}; logitscope at {src['commit']}"
        + (" + uncommitted changes" if src["src_uncommitted"] else "")
        + (" (CHANGED during the run)" if src.get("changed_during_run") else "") + ". "
        f"Each contender is its own process, timed from start to exit; wall and CPU time are the median "
        f"of {doc['settings']['repeat']} run(s), peak RSS the largest.",
        "",
        head,
        "|---|---:|---:|---:|---:|" + ("---:|" if gpu else ""),
    ]
    for name, row in s.items():
        label = names.get(name, name)
        if "failed" in row:
            lines.append(f"| {label} | {row['failed']} | ≥ {row['peak_rss_gb_at_failure']:.1f} | | |" + (" |" if gpu else ""))
            continue
        cells = f"| {label} | {row['wall_s']:.1f} | {row['peak_rss_gb']:.2f} | {row['prompts_per_s']:.1f} | {row['cpu_s']:.1f} |"
        if gpu:
            cells += f" {row['cuda_peak_gb']:.2f} |" if "cuda_peak_gb" in row else " |"
        lines.append(cells)
    lines.append("")

    def fmt(x: float | None, what: str, target: str) -> str:
        return f"{what}: n/a" if x is None else f"{x:.2f}× {what} ({target})"

    lines.append(
        f"logitscope vs TransformerLens: {fmt(r['speedup_vs_tl'], 'faster', f'target ≥ {TARGET_SPEEDUP:g}×')}, "
        f"{fmt(r['memory_ratio_vs_tl'], 'less peak RSS', f'target ≥ {TARGET_MEMORY:g}×')}"
        + (f", {r['gpu_memory_ratio_vs_tl']:.2f}× less peak GPU memory" if r.get("gpu_memory_ratio_vs_tl") else "")
        + f"; logitscope's wall time {fmt(r['wall_vs_floor'], 'the floor', f'target ≤ {TARGET_FLOOR_RATIO:g}×')}"
        + (f", {r['wall_vs_floor_lean']:.2f}× the lean floor" if r.get("wall_vs_floor_lean") else "")
        + "."
    )
    ls = s.get("logitscope", {})
    if "study_s" in ls:
        t = ls["study_timing_all"][-1]
        lines.append(
            f"\nlogitscope's study alone (run_study's own clock, inside the process: tokenization, every "
            f"forward pass and attribution, the attention pass; not start-up, model load or writing; "
            f"the first study of a fresh process"
            + (", so CUDA's one-time start included: bench/study_throughput.py measures warm runs"
               if m["device"].startswith("cuda") else "")
            + f"): {ls['study_s']:.2f} s, {ls['study_prompts_per_s']:,.0f} prompts/s; last run: tokenize "
            f"{t['tokenize_s']:.2f} s, forward {t['forward_s']:.2f} s, attention {t['attention_s']:.2f} s."
        )
    other = max((row.get("other_cpu_s", 0.0) / row["wall_s"] for row in s.values() if "wall_s" in row), default=0.0)
    if other > 0.2:
        lines.append(
            f"\nNote: other processes kept up to {other:.1f} cores busy during some runs "
            "(the machine was shared); timings are noisier than on an idle machine."
        )
    ag = doc["agreement"]
    if ag.get("checked"):
        lines.append(
            f"\nContenders agree: {'yes' if ag['agree'] else 'NO'} (mean logit diff "
            f"{ag['logitscope_mean_logit_diff']:.6f}; tolerance {ag['tolerance']:g})."
        )
    return "\n".join(lines) + "\n"


def print_table(doc: dict[str, Any]) -> None:
    print()
    print(markdown(doc))


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="number of prompts (default 512)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (every contender runs on it)")
    p.add_argument("--repeat", type=int, default=1, help="rounds; the table shows the median wall time")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/<device>-<n>.json); the table goes beside it as .md")
    p.add_argument("--batch-size", type=int, default=64, help="TransformerLens's and the floor's batch size (default 64)")
    p.add_argument("--logitscope-batch-size", type=int, default=None, help="pass --batch-size to logitscope (default: its own choice)")
    p.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS), help=f"comma-separated, from {', '.join(ALL_CONTENDERS)}")
    p.add_argument("--naive", action="store_true", help="also run the seed's way (tl_naive); killed at --mem-limit-gb")
    p.add_argument("--no-report", action="store_true", help="run logitscope with --no-report (not the issue's measurement)")
    p.add_argument("--model", default=str(DEFAULT_DIR), help="checkpoint folder (built if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the checkpoint's weights and of the prompts")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |difference| between contenders' results")
    p.add_argument("--mem-limit-gb", type=float, default=None, help="kill a contender whose RSS passes this (default: 90%% of available memory)")
    p.add_argument("--timeout", type=float, default=1800, help="kill a contender after this many seconds")
    p.add_argument("--wait-idle", type=float, default=0, metavar="S", help="before each process, wait up to S seconds for other load to stop")
    p.add_argument("--table-from", metavar="JSON", help="only rebuild the .md table beside an existing results JSON")
    args = p.parse_args(argv)
    if args.table_from:
        src_json = Path(args.table_from)
        src_json.with_suffix(".md").write_text(markdown(json.loads(src_json.read_text())), encoding="utf-8")
        print(src_json.with_suffix(".md").read_text())
        return 0

    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if args.naive and "tl_naive" not in contenders:
        contenders.append("tl_naive")
    unknown = set(contenders) - set(ALL_CONTENDERS)
    if unknown:
        p.error(f"unknown contenders {sorted(unknown)}")
    out_json = Path(args.out) if args.out else BENCH / "results" / f"{args.device.split(':')[0]}-{args.n}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    mem_limit = int((args.mem_limit_gb * GB) if args.mem_limit_gb else 0.9 * (_meminfo_bytes("MemAvailable") or 16 * GB))

    if args.device.startswith("cuda"):
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True, check=False)
        if probe.stdout.strip() != "True":
            p.error(f"--device {args.device}: torch in this environment sees no CUDA device")
    model = make_checkpoint(args.model, seed=args.seed)
    cache = BENCH / ".cache"
    prompts, length = write_prompts(cache / f"ioi-{args.n}-seed{args.seed}.jsonl", args.n, seed=args.seed)
    for f in model.iterdir():  # page cache: every contender reads the weights from memory
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    print(f"model {model}\nprompts {prompts} ({args.n} prompts, {length} tokens + BOS)\ncontenders {', '.join(contenders)}")

    source = source_state()
    scratch = Path(tempfile.mkdtemp(prefix="runs-", dir=cache))
    runs: list[Run] = []
    try:
        for round_ in range(args.repeat):
            for name in contenders:
                if args.wait_idle:
                    load = wait_for_idle(args.wait_idle)
                    print(f"  (other load before {name}: {load:.2f} cores)")
                result = scratch / f"{name}-{round_}.json"
                out_dir = scratch / f"{name}-{round_}-out"
                cmd = command(name, args, model, prompts, result, out_dir)
                run = run_process(name, round_, cmd, result, mem_limit_bytes=mem_limit, timeout_s=args.timeout)
                runs.append(run)
                status = "ok" if run.ok else ("killed at the memory limit" if run.killed_for_memory else f"FAILED rc={run.returncode}")
                print(
                    f"[{round_ + 1}/{args.repeat}] {name:17s} {run.wall_s:8.1f} s  {run.peak_rss_bytes / GB:6.2f} GB  "
                    f"cpu {run.cpu_user_s + run.cpu_sys_s:7.1f} s  others {run.other_cpu_s:6.1f} s  {status}"
                )
                if not run.ok and run.stderr_tail and not run.killed_for_memory:
                    print("    " + run.stderr_tail.strip().replace("\n", "\n    ")[-1500:])
                shutil.rmtree(out_dir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    summary = summarise(runs, args.n)
    doc: dict[str, Any] = {
        "n": args.n,
        "prompt_tokens": length + 1,
        "machine": machine_info(args.device),
        "source": {**source, "changed_during_run": _src_changed(source, source_state())},
        "settings": {
            "repeat": args.repeat,
            "batch_size": args.batch_size,
            "logitscope_batch_size": args.logitscope_batch_size,
            "no_report": args.no_report,
            "contenders": contenders,
            "seed": args.seed,
            "mem_limit_gb": mem_limit / GB,
        },
        "targets": {"speedup_vs_tl": TARGET_SPEEDUP, "memory_ratio_vs_tl": TARGET_MEMORY, "wall_vs_floor": TARGET_FLOOR_RATIO},
        "summary": summary,
        "ratios": ratios(summary),
        "agreement": agreement(runs, args.tolerance),
        "runs": [{**asdict(r), "command": [_rel(c) for c in r.command]} for r in runs],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    r = doc["ratios"]
    doc["targets_met"] = {
        "speedup_vs_tl": r["speedup_vs_tl"] is not None and r["speedup_vs_tl"] >= TARGET_SPEEDUP,
        "memory_ratio_vs_tl": r["memory_ratio_vs_tl"] is not None and r["memory_ratio_vs_tl"] >= TARGET_MEMORY,
        "wall_vs_floor": r["wall_vs_floor"] is not None and r["wall_vs_floor"] <= TARGET_FLOOR_RATIO,
    }
    out_json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    out_md = out_json.with_suffix(".md")
    out_md.write_text(markdown(doc), encoding="utf-8")
    print_table(doc)
    print(f"wrote {out_json} and {out_md}")
    if doc["agreement"].get("checked") and not doc["agreement"]["agree"]:
        print("error: the contenders' results disagree (see 'agreement' in the JSON)", file=sys.stderr)
        return 1
    if not all(r.ok for r in runs if r.contender != "tl_naive"):
        print("error: a contender failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
