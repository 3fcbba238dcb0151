"""Benchmark: logitscope's whole run vs the tools a researcher would pick instead, and the floor.

    .venv/bin/python bench/run.py --n 512 --repeat 3 --threads 1,default   # CPU; bench/results/cpu-512.*
    .venv/bin/python bench/run.py --n 512 --device cuda                    # a GPU machine; cuda-512.*
    .venv/bin/python bench/run.py --n 512 --contenders logitscope,nnsight,floor --threads 1

What it does, in one run on one machine:

1. builds (or reuses) a random-weight GPT-2-small-shaped checkpoint (``make_checkpoint.py``) and
   writes N equal-length IOI prompts to JSONL (``prompts.py``), so every contender reads the same
   model and the same prompts; reads the checkpoint once so that every contender finds it in the
   page cache;
2. makes (or reuses) each peer's own virtual environment from its pinned list in ``envs/``
   (``bench/.cache/venvs/<env>``: ``torch==2.13.0`` first, then ``pip install -r envs/<env>.txt``;
   remade when the list changes); ``--env-site ENV=DIR`` runs ENV's contenders with this
   interpreter and DIR on ``PYTHONPATH`` instead (a machine with no network, ``gpu_check.sh``);
3. runs each contender as its own process, one at a time (``--repeat`` rounds; in each round every
   ``--threads`` mode in turn, the contenders in the same order):

   - ``logitscope``: ``logitscope run --model DIR --prompts FILE --out TMP --quiet --device D``
     (through ``contenders/logitscope_run.py``, which calls the same ``logitscope.cli.main``):
     the whole run, bootstrap intervals, results.json and report.html included;
   - ``tl_bridge``: ``contenders/tl_bridge.py``: TransformerLens 4.3's ``TransformerBridge`` on the
     local folder, compatibility mode with the seed's flags, batches of 64, the cache filtered to
     the hooks the study reads and to the answer position, the seed's study;
   - ``tl_bridge_dla``: the same bridge, with TransformerLens 4.3's ``direct_logit_attribution``
     tool on each batch's cache;
   - ``nnsight``: ``contenders/nnsight_by_hand.py``: nnsight 0.8 on the unmodified HF model, one
     trace per batch of 64 saving the last position only, the conventions by hand;
   - ``transformer_lens``: ``contenders/tl_used_well.py``: TransformerLens 3.9's
     ``HookedTransformer`` (the seed's own tool; logitscope's test oracle), batches of 64, the
     cache filtered to the hooks the study reads;
   - ``floor``: ``contenders/floor.py``: the HF model's plain forward per batch of 64, keeping the
     two answer logits at the last position;
   - ``floor_lean`` (information only): the base transformer plus two unembedding rows;
   - ``tl_naive`` (only with ``--naive``): the seed's way, one ``run_with_cache`` over all prompts
     and every hook. It needs far more memory than a laptop has; it is killed at ``--mem-limit-gb``;

   ``--threads 1`` gives every process one thread (``OMP_NUM_THREADS=1``: wall time ≈ CPU time,
   far steadier on a shared machine); ``default`` leaves torch its own choice (every core);
4. measures, per process: wall time from just before the process is spawned to its exit
   (interpreter start-up, imports, model load and writing outputs all included); peak RSS from
   ``os.wait4``'s rusage for that one child (``ru_maxrss``); CPU time (user + sys); on CUDA the
   child's ``torch.cuda.max_memory_allocated``; and the CPU time other processes used meanwhile
   (from ``/proc/stat``), to flag a busy machine;
5. checks that the contenders agree with logitscope before their times count: every mean logit
   difference within ``--tolerance`` (1e-4) of logitscope's; every study's logit lens, layer and
   head attributions within the same tolerance, with the same labels and the same top heads. A
   disagreement makes the exit status 1 (after the results are written);
6. prints a table (per mode: median wall over rounds, max peak RSS, each as a multiple of
   logitscope's, and the targets) and writes ``--out`` (JSON: every run's raw numbers, the
   machine, the versions each contender ran) and the same path with ``.md`` (the table the
   README's performance section is built from). Both are rewritten after every process, so a run
   cut short leaves what it measured.

Targets (issue 15): logitscope's whole run ≤ 1.0× the floor's wall time, and ahead of every peer
(TransformerLens 4.3 both ways, nnsight, TransformerLens 3.9) in wall time and peak memory, at
one thread and at two.
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
ENVS = BENCH / "envs"
VENVS = BENCH / ".cache" / "venvs"
sys.path.insert(0, str(BENCH))

from make_checkpoint import DEFAULT_DIR, make_checkpoint  # noqa: E402
from prompts import write_prompts  # noqa: E402

GB = 1e9
TARGET_FLOOR_RATIO = 1.0
TORCH_PIN = "torch==2.13.0"  # every environment's torch: logitscope's; CPU build from local disk here


@dataclass(frozen=True)
class Contender:
    env: str  # "project" (this interpreter: logitscope's .venv) or a list in envs/
    label: str  # the table's row; {versions} filled from what the child reported
    peer: bool = False  # a tool a researcher would pick instead: a target's "every contender"


REGISTRY: dict[str, Contender] = {  # in the order they run: what matters most first (a GPU call is short)
    "logitscope": Contender("project", "logitscope {logitscope} (whole run: study, intervals, results.json, report.html)"),
    "floor": Contender("project", "floor: plain HF forward, two answer logits"),
    "nnsight": Contender("nnsight-0.8", "nnsight {nnsight}, by hand (one trace a batch, last position only)", peer=True),
    "tl_bridge": Contender("tl-4.3", "TransformerLens {transformer-lens} TransformerBridge (filtered cache, answer position)", peer=True),
    "tl_bridge_dla": Contender("tl-4.3", "TransformerLens {transformer-lens}, its direct_logit_attribution tool", peer=True),
    "transformer_lens": Contender("project", "TransformerLens {transformer-lens} HookedTransformer, the seed's tool (filtered cache)", peer=True),
    "floor_lean": Contender("project", "floor, lean: base model + two unembedding rows"),
    "tl_naive": Contender("project", "TransformerLens {transformer-lens}, the seed's way (one run_with_cache, every hook)"),
}
ALL_CONTENDERS = tuple(REGISTRY)
DEFAULT_CONTENDERS = tuple(c for c in REGISTRY if c != "tl_naive")


@dataclass
class Run:
    """One process: what the parent measured and what the child reported."""

    contender: str
    mode: str  # the --threads mode: "1", "2", ... or "default"
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
    contender: str, mode: str, round_: int, cmd: list[str], result_path: Path, *,
    env: dict[str, str], mem_limit_bytes: int, timeout_s: float,
) -> Run:
    """Spawn ``cmd`` with ``env``, wait for it with ``os.wait4`` (rusage of this child alone), read
    its result."""
    result_path.unlink(missing_ok=True)
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
        mode=mode,
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


# ------------------------------------------------------------------ environments
def _requirements(env: str) -> Path:
    return ENVS / f"{env}.txt"


def ensure_venv(env: str) -> Path:
    """The python of ``env``'s virtual environment, made from ``envs/<env>.txt`` if it is missing
    or was made from another list: ``python -m venv``, ``pip install torch==2.13.0`` (first, so
    that pip takes the pinned build rather than whatever a dependency would pull), then
    ``pip install -r envs/<env>.txt`` (every package pinned)."""
    req = _requirements(env)
    if not req.is_file():
        raise SystemExit(f"error: no pinned list {req} for environment {env!r}")
    root = VENVS / env
    python = root / "bin" / "python"
    stamp_path = root / "bench-env.json"
    want = {"requirements_sha1": hashlib.sha1(req.read_bytes()).hexdigest(), "torch": TORCH_PIN,
            "python": platform.python_version()}
    if python.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()) == want:
        return python
    print(f"making the {env} environment in {root} (pip; a few minutes, once)", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(root)],
        [str(python), "-m", "pip", "install", "-q", TORCH_PIN],
        [str(python), "-m", "pip", "install", "-q", "-r", str(req)],
    ]
    for step in steps:
        out = subprocess.run(step, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"error: making the {env} environment failed at {' '.join(step)}:\n{out.stderr[-3000:]}")
    stamp_path.write_text(json.dumps(want) + "\n", encoding="utf-8")
    return python


def interpreter(env: str, sites: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The python that runs ``env``'s contenders and the variables its environment needs.
    Peers run isolated: their own venv, or this python with only their site folder on the path."""
    if env == "project":
        return sys.executable, {}
    if env in sites:
        return sys.executable, {"PYTHONPATH": sites[env]}
    return str(ensure_venv(env)), {"PYTHONPATH": ""}


def measured(name: str, mode: str, cmd: list[str], result: Path, env: dict[str, str], *, mem_limit_bytes: int,
             timeout_s: float | None) -> tuple[dict[str, Any], Any]:
    """Run one contender's process (:func:`run_process`, sample 0), say on stderr if it failed, and
    return its table entry (wall, peak RSS, CPU, the child's own report, the command) and the run."""
    r = run_process(name, mode, 0, cmd, result, env=env, mem_limit_bytes=mem_limit_bytes, timeout_s=timeout_s)
    if not r.ok:
        print(f"{name} failed (exit {r.returncode}):\n{r.stderr_tail}", file=sys.stderr)
    entry = {"wall_s": r.wall_s, "peak_rss_gb": r.peak_rss_bytes / GB, "cpu_s": r.cpu_user_s + r.cpu_sys_s,
             "other_cpu_s": r.other_cpu_s, "ok": r.ok, "child": r.child, "command": " ".join(cmd)}
    return entry, r


def child_env(mode: str, extra: dict[str, str]) -> dict[str, str]:
    """The child's environment: offline, no tokenizer threads, and the mode's thread count
    (``default``: none set, whatever the calling shell had, so torch takes every core)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
        if mode != "default":
            env[var] = mode
    for key, value in extra.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    return env


def command(contender: str, python: str, args: argparse.Namespace, model: Path, prompts: Path, result: Path, out_dir: Path) -> list[str]:
    common = ["--model", str(model), "--prompts", str(prompts), "--device", args.device, "--result", str(result)]
    batch = ["--batch-size", str(args.batch_size)]
    if contender == "logitscope":
        cmd = [python, str(CONTENDERS / "logitscope_run.py"), "--result", str(result), "--",
               "run", "--model", str(model), "--prompts", str(prompts), "--out", str(out_dir),
               "--quiet", "--device", args.device]
        if args.logitscope_batch_size:
            cmd += ["--batch-size", str(args.logitscope_batch_size)]
        if args.no_report:
            cmd.append("--no-report")
        return cmd
    scripts = {
        "nnsight": ["nnsight_by_hand.py", *batch],
        "tl_bridge": ["tl_bridge.py", *batch, "--route", "cache"],
        "tl_bridge_dla": ["tl_bridge.py", *batch, "--route", "tool"],
        "transformer_lens": ["tl_used_well.py", *batch],
        "tl_naive": ["tl_used_well.py", "--batch-size", str(args.n), "--all-hooks"],
        "floor": ["floor.py", *batch],
        "floor_lean": ["floor.py", *batch, "--lean"],
    }
    script, *rest = scripts[contender]
    return [python, str(CONTENDERS / script), *common, *rest]


def _rel(arg: str) -> str:
    """A command-line argument with this checkout's path left out (results are committed)."""
    return arg.replace(str(REPO) + os.sep, "")


# ------------------------------------------------------------------ summarising
def summarise(runs: list[Run], n: int) -> dict[str, dict[str, Any]]:
    """Per contender (runs of one mode): median wall and CPU time, the largest peak RSS, ..."""
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
            torch_threads=good[-1].child.get("torch_threads"),
            versions=good[-1].child.get("versions"),
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
    """Every contender's mean logit difference against logitscope's (of the same mode, else any);
    every study's attributions, labels and top heads too."""
    import numpy as np

    refs = {r.mode: r.child for r in runs if r.contender == "logitscope" and r.ok}
    if not refs:
        return {"checked": False, "why": "logitscope did not finish"}
    first = next(iter(refs.values()))
    checks: dict[str, Any] = {"checked": True, "tolerance": tol, "logitscope_mean_logit_diff": first["mean_logit_diff"]}
    ok = True
    for r in runs:
        if not r.ok or (r.contender == "logitscope" and r.child is refs[r.mode]):
            continue
        ref = refs.get(r.mode, first)
        key = f"{r.contender}@{r.mode}#{r.round}"
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


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each contender's wall time and peak memory as a multiple of logitscope's (above 1:
    logitscope is ahead), and logitscope's wall time as a multiple of the floors'."""
    ls = summary.get("logitscope", {})
    out: dict[str, Any] = {"wall_x": {}, "rss_x": {}, "cuda_x": {}}
    for name, row in summary.items():
        if name == "logitscope" or "wall_s" not in row or "wall_s" not in ls:
            continue
        out["wall_x"][name] = row["wall_s"] / ls["wall_s"]
        out["rss_x"][name] = row["peak_rss_gb"] / ls["peak_rss_gb"]
        if row.get("cuda_peak_gb") and ls.get("cuda_peak_gb"):
            out["cuda_x"][name] = row["cuda_peak_gb"] / ls["cuda_peak_gb"]
    fl, lean = summary.get("floor", {}).get("wall_s"), summary.get("floor_lean", {}).get("wall_s")
    out["wall_vs_floor"] = ls["wall_s"] / fl if fl and "wall_s" in ls else None
    out["wall_vs_floor_lean"] = ls["wall_s"] / lean if lean and "wall_s" in ls else None
    return out


def targets_met(summary: dict[str, dict[str, Any]], r: dict[str, Any], planned: list[str]) -> dict[str, Any]:
    """Issue 15's targets for one mode; a peer that failed or never ran counts as not beaten."""
    peers = [name for name in planned if REGISTRY[name].peer]
    missing = [name for name in peers if name not in r["wall_x"]]
    return {
        "wall_vs_floor": r["wall_vs_floor"] is not None and r["wall_vs_floor"] <= TARGET_FLOOR_RATIO,
        "ahead_in_wall": not missing and all(r["wall_x"][p] > 1.0 for p in peers),
        "ahead_in_peak_rss": not missing and all(r["rss_x"][p] > 1.0 for p in peers),
        "peers": peers,
        "peers_behind_in_wall": sorted(p for p in peers if p in r["wall_x"] and r["wall_x"][p] <= 1.0),
        "peers_behind_in_peak_rss": sorted(p for p in peers if p in r["rss_x"] and r["rss_x"][p] <= 1.0),
        "peers_failed": [p for p in missing if p in summary],
        "peers_not_run": [p for p in missing if p not in summary],
    }


def mode_docs(runs: list[Run], n: int, modes: list[str], planned: list[str]) -> list[dict[str, Any]]:
    docs = []
    for mode in modes:
        mine = [r for r in runs if r.mode == mode]
        if not mine:
            continue
        summary = summarise(mine, n)
        r = ratios(summary)
        threads = {row.get("torch_threads") for row in summary.values() if row.get("torch_threads")}
        docs.append({"threads": mode, "torch_threads": sorted(threads), "summary": summary, "ratios": r,
                     "targets_met": targets_met(summary, r, planned)})
    return docs


def _mode_title(mode: dict[str, Any], device: str) -> str:
    if not device.startswith("cpu"):
        return ""
    t = mode["torch_threads"]
    count = f"{t[0]} thread{'s' if t[0] != 1 else ''}" if len(t) == 1 else "threads " + "/".join(map(str, t))
    return count + (" (torch's default)" if mode["threads"] == "default" else "")


def _runs_each(rows: list[dict[str, Any]], repeat: int) -> str:
    counts = sorted({row["ok_runs"] for row in rows if "wall_s" in row}) or [0]
    if counts == [repeat]:
        return f"{repeat} run(s)"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return f"{span} run(s) each (of {repeat} planned)"


def markdown(doc: dict[str, Any]) -> str:
    """The results as the README shows them: one table per ``--threads`` mode, then the targets."""
    m, src, modes = doc["machine"], doc["source"], doc["modes"]
    gpu = any("cuda_peak_gb" in row for mode in modes for row in mode["summary"].values())
    names = dict.fromkeys(name for mode in modes for name in mode["summary"])
    rows = [row for mode in modes for row in mode["summary"].values()]

    def versions(name: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for mode in modes:
            found.update(mode["summary"].get(name, {}).get("versions") or {})
        return found

    def label(name: str) -> str:
        text = REGISTRY[name].label if name in REGISTRY else name
        found = {k: v for other in names if REGISTRY[other].env == REGISTRY[name].env for k, v in versions(other).items()}
        for dist, version in {**found, **versions(name)}.items():
            text = text.replace("{" + dist + "}", version)
        for dist in ("logitscope", "nnsight", "transformer-lens"):
            text = text.replace(" {" + dist + "}", "")
        if name == "logitscope" and doc["settings"]["no_report"]:
            text = text.replace(", report.html", ", no report")
        return text

    def seen(dist: str) -> str:  # the version every environment ran, or each one
        found = sorted({(row.get("versions") or {}).get(dist) for row in rows} - {None}) or [m.get(dist) or "?"]
        return found[0] + " in every environment" if len(found) == 1 else " / ".join(found)

    lines = [
        f"{doc['n']} equal-length IOI prompts ({doc['prompt_tokens']} tokens with BOS), GPT-2-small-shaped "
        f"random-weight model, fp32, device {m['device']}; {m['cpu']}, {m['cores_usable']} cores, "
        f"{m['memory_gb']} GB" + (f", {m['gpu'][0]}" if m.get("gpu") else "")
        + f"; torch {seen('torch')}, transformers {seen('transformers')}; logitscope at {src['commit']}"
        + (" + uncommitted changes" if src["src_uncommitted"] else "")
        + (" (CHANGED during the run)" if src.get("changed_during_run") else "") + ". "
        f"Each contender is its own process (the peers in their own virtual environments), timed from start "
        f"to exit; wall and CPU time are the median of {_runs_each(rows, doc['settings']['repeat'])}, peak RSS the largest; "
        f"× is the contender's number divided by logitscope's (above 1: logitscope is ahead).",
    ]
    if not doc.get("complete", True):
        lines.append(f"\n**Cut short**: {len(doc['runs'])} processes ran of the "
                     f"{len(doc['settings']['contenders']) * len(doc['settings']['threads']) * doc['settings']['repeat']} planned.")

    def x(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}×"

    for mode in modes:
        s, r = mode["summary"], mode["ratios"]
        title = _mode_title(mode, m["device"])
        lines += ["", f"**{title}**" if title else f"**{m['device']}**", ""]
        lines.append("| | wall (s) | × | CPU time (s) | × | peak RSS (GB) | × | prompts/s |"
                     + (" peak GPU mem (GB) | × |" if gpu else ""))
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else ""))
        ls_cpu = s.get("logitscope", {}).get("cpu_s")
        for name in names:
            row = s.get(name)
            if row is None:
                continue
            if "failed" in row:
                lines.append(f"| {label(name)} | {row['failed']} | | | | ≥ {row['peak_rss_gb_at_failure']:.2f} | | |"
                             + (" | |" if gpu else ""))
                continue
            me = name == "logitscope"
            cpu_x = row["cpu_s"] / ls_cpu if ls_cpu and not me else None
            cells = (f"| {label(name)} | {row['wall_s']:.1f} | {'1' if me else x(r['wall_x'].get(name))} | "
                     f"{row['cpu_s']:.1f} | {'1' if me else x(cpu_x)} | "
                     f"{row['peak_rss_gb']:.2f} | {'1' if me else x(r['rss_x'].get(name))} | {row['prompts_per_s']:.1f} |")
            if gpu:
                cuda = row.get("cuda_peak_gb")
                cells += f" {cuda:.2f} | {'1' if me else x(r['cuda_x'].get(name))} |" if cuda is not None else " | |"
            lines.append(cells)

    def short(name: str) -> str:
        text = label(name)
        return text.split(", its ")[0] + "'s DLA tool" if name == "tl_bridge_dla" else text.split(" (")[0].split(", ")[0]

    lines.append("")
    for mode in modes:
        r, t = mode["ratios"], mode["targets_met"]
        title = _mode_title(mode, m["device"]) or m["device"]
        fl = "n/a" if r["wall_vs_floor"] is None else f"{r['wall_vs_floor']:.2f}×"
        lean = f", {r['wall_vs_floor_lean']:.2f}× the lean floor's" if r.get("wall_vs_floor_lean") else ""

        def verdict(met: bool, behind: list[str], kind: str) -> str:
            if met:
                return "yes"
            out = []
            if behind:
                out.append("NO, not ahead of " + ", ".join(f"{short(p)} ({r[kind][p]:.2f}×)" for p in behind))
            gaps = [f"{short(p)} failed" for p in t["peers_failed"]] + [f"{short(p)} not run" for p in t.get("peers_not_run", [])]
            if gaps:
                out.append(("unknown: " if not behind else "and unknown: ") + ", ".join(gaps))
            return "; ".join(out) if behind else out[0]

        lines.append(
            f"- {title}: logitscope's wall time {fl} the floor's (target ≤ {TARGET_FLOOR_RATIO:g}×: "
            f"{'met' if t['wall_vs_floor'] else 'NOT met'}){lean}; ahead of every peer in wall time: "
            f"{verdict(t['ahead_in_wall'], t['peers_behind_in_wall'], 'wall_x')}; in peak RSS: "
            f"{verdict(t['ahead_in_peak_rss'], t['peers_behind_in_peak_rss'], 'rss_x')}."
        )
    for mode in modes:
        ls = mode["summary"].get("logitscope", {})
        if "study_s" in ls:
            tm = ls["study_timing_all"][-1]
            title = _mode_title(mode, m["device"])
            lines.append(
                f"\nlogitscope's study alone{', ' + title if title else ''}: {ls['study_s']:.2f} s, "
                f"{ls['study_prompts_per_s']:,.0f} prompts/s; last run: tokenize {tm['tokenize_s']:.2f} s, forward "
                f"{tm['forward_s']:.2f} s, attention {tm['attention_s']:.2f} s (run_study's own clock, inside the "
                f"process: tokenization, every forward pass and attribution, the attention pass; not start-up, model "
                f"load or writing; the first study of a fresh process"
                + (", so CUDA's one-time start included: bench/study_throughput.py measures warm runs"
                   if m["device"].startswith("cuda") else "") + ")."
            )
    other = max((row.get("other_cpu_s", 0.0) / row["wall_s"] for row in rows if "wall_s" in row), default=0.0)
    if other > 0.2:
        lines.append(
            f"\nNote: other processes kept up to {other:.1f} cores busy during some runs "
            "(the machine was shared); timings are noisier than on an idle machine."
        )
    ag = doc["agreement"]
    if ag.get("checked"):
        lines.append(
            f"\nContenders agree: {'yes' if ag['agree'] else 'NO'} (mean logit diff "
            f"{ag['logitscope_mean_logit_diff']:.6f}; every study's logit lens, layer and head attributions "
            f"and top heads too; tolerance {ag['tolerance']:g})."
        )
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out_json: Path) -> None:
    out_json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    out_json.with_suffix(".md").write_text(markdown(doc), encoding="utf-8")


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="number of prompts (default 512)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (every contender runs on it)")
    p.add_argument("--repeat", type=int, default=1, help="rounds; the table shows the median wall time")
    p.add_argument("--threads", default="default", help="comma-separated modes, each a thread count per process or "
                   "'default' (torch's choice): e.g. 1,default (default: default)")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/<device>-<n>.json); the table goes beside it as .md")
    p.add_argument("--batch-size", type=int, default=64, help="the peers' and the floor's batch size (default 64)")
    p.add_argument("--logitscope-batch-size", type=int, default=None, help="pass --batch-size to logitscope (default: its own choice)")
    p.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS), help=f"comma-separated, from {', '.join(ALL_CONTENDERS)}")
    p.add_argument("--naive", action="store_true", help="also run the seed's way (tl_naive); killed at --mem-limit-gb")
    p.add_argument("--no-report", action="store_true", help="run logitscope with --no-report (not the issue's measurement)")
    p.add_argument("--env-site", action="append", default=[], metavar="ENV=DIR",
                   help="run ENV's contenders (tl-4.3, nnsight-0.8) with this python and DIR on PYTHONPATH instead of a venv")
    p.add_argument("--model", default=str(DEFAULT_DIR), help="checkpoint folder (built if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the checkpoint's weights and of the prompts")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |difference| between contenders' results")
    p.add_argument("--mem-limit-gb", type=float, default=None, help="kill a contender whose RSS passes this (default: 90%% of available memory)")
    p.add_argument("--timeout", type=float, default=1800, help="kill a contender after this many seconds")
    p.add_argument("--wait-idle", type=float, default=0, metavar="S", help="before each process, wait up to S seconds for other load to stop")
    p.add_argument("--table-from", metavar="JSON", help="only rebuild the .md table beside an existing results JSON")
    args = p.parse_args(argv)
    if args.table_from:  # the summary, ratios and checks recomputed from the raw runs by this code
        src_json = Path(args.table_from)
        doc = json.loads(src_json.read_text())
        runs = [Run(**r) for r in doc["runs"]]
        doc["modes"] = mode_docs(runs, doc["n"], doc["settings"]["threads"], doc["settings"]["contenders"])
        doc["agreement"] = agreement(runs, doc["agreement"].get("tolerance", args.tolerance))
        write(doc, src_json)
        print(src_json.with_suffix(".md").read_text())
        return 0

    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if args.naive and "tl_naive" not in contenders:
        contenders.append("tl_naive")
    unknown = set(contenders) - set(ALL_CONTENDERS)
    if unknown:
        p.error(f"unknown contenders {sorted(unknown)}")
    modes = [t.strip() for t in args.threads.split(",") if t.strip()]
    if not modes or any(t != "default" and not (t.isdigit() and int(t) > 0) for t in modes):
        p.error(f"--threads {args.threads!r}: give thread counts or 'default', comma-separated (e.g. 1,default)")
    sites = {}
    for item in args.env_site:
        env, sep, folder = item.partition("=")
        if not sep or not _requirements(env).is_file():
            p.error(f"--env-site {item!r}: give ENV=DIR with ENV one of {sorted(f.stem for f in ENVS.glob('*.txt'))}")
        sites[env] = folder
    out_json = Path(args.out) if args.out else BENCH / "results" / f"{args.device.split(':')[0]}-{args.n}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    mem_limit = int((args.mem_limit_gb * GB) if args.mem_limit_gb else 0.9 * (_meminfo_bytes("MemAvailable") or 16 * GB))

    if args.device.startswith("cuda"):
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True, check=False)
        if probe.stdout.strip() != "True":
            p.error(f"--device {args.device}: torch in this environment sees no CUDA device")
    pythons = {env: interpreter(env, sites) for env in dict.fromkeys(REGISTRY[c].env for c in contenders)}
    model = make_checkpoint(args.model, seed=args.seed)
    cache = BENCH / ".cache"
    prompts, length = write_prompts(cache / f"ioi-{args.n}-seed{args.seed}.jsonl", args.n, seed=args.seed)
    for f in model.iterdir():  # page cache: every contender reads the weights from memory
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    print(f"model {model}\nprompts {prompts} ({args.n} prompts, {length} tokens + BOS)\n"
          f"contenders {', '.join(contenders)}\nthreads {', '.join(modes)}")

    source = source_state()
    doc: dict[str, Any] = {
        "n": args.n,
        "prompt_tokens": length + 1,
        "machine": machine_info(args.device),
        "source": source,
        "settings": {
            "repeat": args.repeat,
            "threads": modes,
            "batch_size": args.batch_size,
            "logitscope_batch_size": args.logitscope_batch_size,
            "no_report": args.no_report,
            "contenders": contenders,
            "environments": {env: (f"site {sites[env]}" if env in sites else f"envs/{env}.txt")
                             for env in pythons if env != "project"},
            "seed": args.seed,
            "mem_limit_gb": mem_limit / GB,
        },
        "targets": {"wall_vs_floor": TARGET_FLOOR_RATIO, "ahead_of_every_peer": ["wall", "peak_rss"]},
    }

    def finish(runs: list[Run], complete: bool) -> None:
        doc["source"] = {**source, "changed_during_run": _src_changed(source, source_state())}
        doc["complete"] = complete
        doc["modes"] = mode_docs(runs, args.n, modes, contenders)
        doc["agreement"] = agreement(runs, args.tolerance)
        doc["runs"] = [{**asdict(r), "command": [_rel(c) for c in r.command]} for r in runs]
        doc["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write(doc, out_json)

    scratch = Path(tempfile.mkdtemp(prefix="runs-", dir=cache))
    runs: list[Run] = []
    try:
        for round_ in range(args.repeat):
            for mode in modes:
                for name in contenders:
                    if args.wait_idle:
                        load = wait_for_idle(args.wait_idle)
                        print(f"  (other load before {name}: {load:.2f} cores)")
                    result = scratch / f"{name}-{mode}-{round_}.json"
                    out_dir = scratch / f"{name}-{mode}-{round_}-out"
                    python, extra = pythons[REGISTRY[name].env]
                    cmd = command(name, python, args, model, prompts, result, out_dir)
                    run = run_process(name, mode, round_, cmd, result, env=child_env(mode, extra),
                                      mem_limit_bytes=mem_limit, timeout_s=args.timeout)
                    runs.append(run)
                    status = "ok" if run.ok else ("killed at the memory limit" if run.killed_for_memory else f"FAILED rc={run.returncode}")
                    print(
                        f"[{round_ + 1}/{args.repeat}] {mode:>7s} {name:17s} {run.wall_s:8.1f} s  {run.peak_rss_bytes / GB:6.2f} GB  "
                        f"cpu {run.cpu_user_s + run.cpu_sys_s:7.1f} s  others {run.other_cpu_s:6.1f} s  {status}",
                        flush=True,
                    )
                    if not run.ok and run.stderr_tail and not run.killed_for_memory:
                        print("    " + run.stderr_tail.strip().replace("\n", "\n    ")[-1500:])
                    shutil.rmtree(out_dir, ignore_errors=True)
                    finish(runs, complete=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    finish(runs, complete=True)
    print()
    print(markdown(doc))
    print(f"wrote {out_json} and {out_json.with_suffix('.md')}")
    if doc["agreement"].get("checked") and not doc["agreement"]["agree"]:
        print("error: the contenders' results disagree (see 'agreement' in the JSON)", file=sys.stderr)
        return 1
    if not all(r.ok for r in runs if r.contender != "tl_naive"):
        print("error: a contender failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
