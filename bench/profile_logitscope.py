"""Where logitscope's whole run spends its time, phase by phase, next to the floor's forward pass.

    .venv/bin/python bench/profile_logitscope.py --n 512 [--no-report] [--importtime] \
        [--cprofile bench/.cache/ls.prof] [--forward-rounds 2] [--json bench/results/profile-cpu-512.json]

Uses the benchmark's checkpoint and prompts (built if missing, as ``bench/run.py`` does), CPU.

1. **Start-up**: ``python -c pass``, ``import torch``, ``import transformers``,
   ``import logitscope.cli``, each in a fresh child, best of 3.
2. **Phases**: a fresh child times ``import logitscope.cli``, then runs
   ``logitscope.cli.main(["run", ...])`` exactly as the benchmark does, with wall-clock timers
   wrapped around the functions it calls (``load_model``; ``load_prompts``; ``run_study`` and
   inside it ``encode_prompts``, ``Recorder`` set-up, every ``Recorder.run_batch``,
   ``_assemble``, ``attention_patterns``; ``StudyResult.save`` and inside it ``to_dict``,
   ``shared_intervals`` (the bootstrap), ``np.save``, ``write_report`` / ``make_figures``; ``summary``). Times are
   inclusive (a nested line is also counted in its parent), repeated calls are summed; each line
   also shows the process's peak RSS so far. The child's wall time (spawn to exit) minus its
   in-process total is interpreter start-up plus shutdown.
3. **Forward variants** (this process, the model loaded once, the same prompts): the base
   transformer without hooks (with HF's kernels, and with logitscope's ``equivalent_kernels``
   swap where logitscope has one) and with logitscope's ``Recorder`` as ``run_study`` runs it,
   at logitscope's own batch size and at 64; the floor's plain ``model(...)`` (full-vocabulary logits at every position) at 64;
   and the full-vocabulary logits + log-softmax at the answer position alone. Rounds are
   interleaved and the fastest kept, with its CPU time, to damp other load on a shared machine.
4. Optionally ``python -X importtime -m logitscope run ...`` (self time summed by top-level
   package) and ``cProfile`` of ``logitscope.cli.main`` in a child.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from make_checkpoint import DEFAULT_DIR, make_checkpoint  # noqa: E402
from prompts import write_prompts  # noqa: E402

RECORDS: list[tuple[int, str, float, float]] = []  # (depth, name, seconds, peak RSS GB after), by completion
_DEPTH = [0]
_STARTS: list[tuple[int, str, float]] = []


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (Linux ru_maxrss is in KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a wall-clock timer: each call appends ``(depth, name, seconds)`` to RECORDS."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = _DEPTH[0]
        _DEPTH[0] += 1
        _STARTS.append((depth, name, 0.0))
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH[0] -= 1
            RECORDS.append((depth, name, time.perf_counter() - start, peak_rss_gb()))

    return wrapper


def instrument() -> None:
    """Wrap the functions ``logitscope run`` calls with timers (after ``logitscope.cli`` is imported)."""
    import numpy as np

    import logitscope.models.load as load_mod
    import logitscope.api.results as results_mod
    import logitscope.methods.dla as study_mod
    import logitscope.inputs.prompts as prompts_mod
    from logitscope.engine.capture import Recorder

    load_mod.load_model = timed("load_model (tokenizer + weights)", load_mod.load_model)
    prompts_mod.load_prompts = timed("load_prompts", prompts_mod.load_prompts)
    study_mod.run_study = timed("run_study", study_mod.run_study)
    study_mod.encode_prompts = timed("encode_prompts (tokenize + checks)", study_mod.encode_prompts)
    study_mod._assemble = timed("_assemble (host transfer)", study_mod._assemble)
    study_mod.attention_patterns = timed("attention_patterns (1 eager forward)", study_mod.attention_patterns)
    Recorder.__init__ = timed("Recorder.__init__", Recorder.__init__)
    Recorder.run_batch = timed("Recorder.run_batch (forward + hooks + logits)", Recorder.run_batch)
    import logitscope.results.study as study_data_mod

    study_data_mod.shared_intervals = timed("shared_intervals (bootstrap)", study_data_mod.shared_intervals)
    import logitscope.report as report_mod  # plotly and the rest, imported here rather than timed
    import logitscope.report.page  # noqa: F401
    import logitscope.results.serialize as serialize_mod

    R = results_mod.StudyResult

    serialize_mod.save_study = timed("save_study (results.json, .npy, .npz, report)", serialize_mod.save_study)
    serialize_mod.results_document = timed("results_document (results.json)", serialize_mod.results_document)
    report_mod.write_report = timed("write_report (report.html)", report_mod.write_report)
    R.summary = timed("StudyResult.summary", R.summary)
    np.save = timed("np.save (per_prompt_heads.npy)", np.save)
    page = sys.modules["logitscope.report.page"]
    for name, label in (("make_figures", "make_figures (plotly figures)"), ("plotly_js", "plotly_js (inline plotly.js)"),
                        ("circuitsvis_js", "circuitsvis_js (inline circuitsvis)"),
                        ("attention_views", "attention_views (attention widgets)")):
        fn = getattr(page, name, None)
        if fn is not None and not hasattr(fn, "__wrapped__"):
            setattr(page, name, timed(label, fn))


def print_phases(total: float) -> list[dict[str, Any]]:
    """Print RECORDS aggregated per (depth, name) in first-call order: seconds, share, peak RSS."""
    agg: dict[tuple[int, str], list[float]] = defaultdict(list)
    peak: dict[tuple[int, str], float] = {}
    first: dict[tuple[int, str], int] = {}
    for idx, (d, n, _) in enumerate(_STARTS):
        first.setdefault((d, n), idx)
    for (d, n, sec, rss) in RECORDS:
        agg[(d, n)].append(sec)
        peak[(d, n)] = max(peak.get((d, n), 0.0), rss)
    rows = []
    for key in sorted(agg, key=lambda k: first[k]):
        d, n = key
        ts = agg[key]
        rows.append({"depth": d, "phase": n, "seconds": sum(ts), "calls": len(ts), "peak_rss_gb_after": peak[key]})
        calls = f"  ({len(ts)} calls)" if len(ts) > 1 else ""
        print(f"  {'  ' * d}{n:<{52 - 2 * d}s} {sum(ts):7.2f} s {100 * sum(ts) / total:5.1f}%"
              f"   peak RSS {peak[key]:5.2f} GB{calls}")
    return rows


def child_seconds(code: str) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        best = min(best, time.perf_counter() - t)
    return best


def forward_variants(model_dir: Path, prompts: Path, ls_batch: int, rounds: int) -> list[dict[str, Any]]:
    """Time forward-pass variants on the same prompts, interleaved over ``rounds``; keep the best."""
    import torch

    from logitscope.engine.capture import Recorder
    from logitscope.models.load import load_model
    from logitscope.inputs.encode import encode_prompts
    from logitscope.inputs.prompts import load_prompts

    lm = load_model(str(model_dir), device="cpu")
    enc = encode_prompts(load_prompts(str(prompts)), lm, prepend_bos=True)
    ids = torch.tensor(enc.ids)  # equal lengths
    N, T = ids.shape
    pos = torch.full((N,), T - 1)
    correct, incorrect = torch.from_numpy(enc.correct), torch.from_numpy(enc.incorrect)
    base = lm.adapter.base(lm.model)
    W_U = lm.model.get_output_embeddings().weight
    rec = Recorder(lm)

    def batches(bs: int, fn: Callable[[slice], Any]) -> Callable[[], None]:
        return lambda: [fn(slice(s, s + bs)) for s in range(0, N, bs)] and None

    try:  # the study's forward swaps in fused equivalents of slow activations, where it does
        from logitscope.models.kernels import equivalent_kernels
    except ImportError:
        equivalent_kernels = None

    def kernels() -> Any:
        return equivalent_kernels(lm.model) if equivalent_kernels else contextlib.nullcontext()

    def recorded(bs: int) -> Callable[[], None]:
        def go() -> None:
            with rec, kernels():
                batches(bs, lambda sl: rec.run_batch(ids[sl], pos[sl], correct[sl], incorrect[sl]))()
        return go

    def fused(bs: int) -> Callable[[], None]:
        def go() -> None:
            with kernels():
                batches(bs, lambda sl: base(input_ids=ids[sl], use_cache=False))()
        return go

    def answer_logits() -> None:
        h = torch.randn(N, W_U.shape[1])  # final hidden states at the answer position
        torch.log_softmax(h @ W_U.T, -1)

    variants: list[tuple[str, int, Callable[[], None]]] = []
    for bs in dict.fromkeys([ls_batch, 64]):
        variants.append(("base transformer, no hooks (HF kernels)", bs, batches(bs, lambda sl: base(input_ids=ids[sl], use_cache=False))))
        if equivalent_kernels:
            variants.append(("base transformer, no hooks, logitscope's equivalent_kernels", bs, fused(bs)))
        variants.append(("logitscope Recorder.run_batch, as run_study runs it", bs, recorded(bs)))
    variants.append(("floor: model(...) full-vocab logits at every position", 64,
                     batches(64, lambda sl: lm.model(input_ids=ids[sl], use_cache=False).logits[:, -1])))
    variants.append(("  of which: full-vocab logits + log_softmax at one position", N, answer_logits))
    best: dict[int, tuple[float, float]] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for i, (_, _, fn) in enumerate(variants):
                w, c = time.perf_counter(), time.process_time()
                fn()
                w, c = time.perf_counter() - w, time.process_time() - c
                if i not in best or w < best[i][0]:
                    best[i] = (w, c)
    out = []
    for i, (label, bs, _) in enumerate(variants):
        w, c = best[i]
        out.append({"variant": label, "batch_size": bs, "seconds": w, "cpu_seconds": c})
        print(f"  {label:<64s} batch {bs:4d}  {w:7.2f} s wall  {c:7.2f} s cpu")
    return out


def phases_child(cli_args: list[str], json_out: str) -> int:
    """In a fresh process: time ``import logitscope.cli``, then ``main(cli_args)`` phase by phase."""
    w0, c0 = time.perf_counter(), time.process_time()
    from logitscope.cli import main as ls_main

    t_import, c_import = time.perf_counter() - w0, time.process_time() - c0
    rss_import = peak_rss_gb()
    instrument()
    w1, c1 = time.perf_counter(), time.process_time()
    rc = ls_main(cli_args)
    t_main, c_main = time.perf_counter() - w1, time.process_time() - c1
    total = t_import + t_main
    print(f"  {'import logitscope.cli (torch, transformers, ...)':<52s} {t_import:7.2f} s {100 * t_import / total:5.1f}%"
          f"   peak RSS {rss_import:5.2f} GB")
    rows = print_phases(total)
    print(f"  {'total (import + main), wall':<52s} {total:7.2f} s   (cpu {c_import + c_main:.2f} s, "
          f"peak RSS {peak_rss_gb():.2f} GB)  rc={rc}")
    Path(json_out).write_text(json.dumps({
        "import_logitscope_cli_s": t_import, "main_s": t_main, "total_s": total,
        "cpu_s": c_import + c_main, "phases": rows, "rc": rc, "peak_rss_gb_after_import": rss_import,
        "peak_rss_gb": peak_rss_gb(),
    }))
    return rc


def importtime_by_package(cmd: list[str]) -> list[tuple[str, float]]:
    """``python -X importtime CMD``'s self times summed by top-level package (no double counting)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True, cwd=REPO)
    totals: dict[str, float] = defaultdict(float)
    pat = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)")
    for line in proc.stderr.splitlines():
        m = pat.match(line)
        if m:
            totals[m.group(3).split(".")[0]] += int(m.group(1)) / 1e6
    return sorted(totals.items(), key=lambda kv: -kv[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=str(DEFAULT_DIR))
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--importtime", action="store_true", help="also run -X importtime in a child")
    p.add_argument("--cprofile", metavar="FILE", help="also run under cProfile (a child), write stats to FILE, print the top")
    p.add_argument("--forward-rounds", type=int, default=2, help="rounds of forward variants (0: skip)")
    p.add_argument("--json", metavar="FILE", help="write the measurements as JSON")
    p.add_argument("--phases-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phases_child:
        return phases_child(args.phases_child[1:], args.phases_child[0])

    model = make_checkpoint(args.model, seed=args.seed)
    prompts, _ = write_prompts(BENCH / ".cache" / f"ioi-{args.n}-seed{args.seed}.jsonl", args.n, seed=args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="profile-", dir=BENCH / ".cache"))

    def cli(out: str) -> list[str]:
        return ["run", "--model", str(model), "--prompts", str(prompts), "--out", str(scratch / out),
                "--quiet", "--device", "cpu"] + (["--no-report"] if args.no_report else [])

    report: dict[str, Any] = {"n": args.n, "cli_args": [a.replace(str(REPO) + "/", "") for a in cli("out")]}
    try:
        print("start-up costs (fresh children, best of 3):")
        for key, code in (("python_startup_s", "pass"), ("import_torch_s", "import torch"),
                          ("import_transformers_s", "import transformers"),
                          ("import_logitscope_cli_s", "import logitscope.cli")):
            report[key] = child_seconds(code)
            print(f"  python -c {code!r:<26s} {report[key]:6.2f} s")

        print(f"\nphases of logitscope run, {args.n} prompts, a fresh process (inclusive times):")
        sys.stdout.flush()
        child_json = scratch / "phases.json"
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--phases-child", str(child_json), *cli("out")], check=True, cwd=REPO)
        report["process_wall_s"] = time.perf_counter() - t
        report.update(json.loads(child_json.read_text()))
        # What the in-process clock cannot see: interpreter start, imports of this script's own
        # few modules, and interpreter shutdown (module teardown, torch's and transformers' state).
        report["outside_main_s"] = report["process_wall_s"] - report["total_s"]
        print(f"  {'process wall (spawn to exit)':<52s} {report['process_wall_s']:7.2f} s")
        print(f"  {'  of which outside import + main (start-up, exit)':<52s} {report['outside_main_s']:7.2f} s")

        if args.forward_rounds > 0:
            import logitscope.methods.dla as study
            from logitscope.models.load import load_model

            lm = load_model(str(model), device="cpu")
            T = max(len(x) for x in lm.tokenizer([json.loads(l)["prompt"] for l in prompts.read_text().splitlines()],
                                                 add_special_tokens=False)["input_ids"]) + 1
            auto = study.auto_batch_size(lm, T)
            del lm
            ls_batch = min(args.n, auto)
            print(f"\nforward variants, {args.n} prompts of {T} tokens (logitscope's auto batch size: {auto}), "
                  f"best of {args.forward_rounds} interleaved rounds:")
            report["logitscope_auto_batch_size"] = auto
            report["forward_variants"] = forward_variants(model, prompts, ls_batch, args.forward_rounds)

        if args.importtime:
            print("\npython -X importtime -m logitscope run ...: import time by top-level package (self times summed)")
            rows = importtime_by_package(["-m", "logitscope", *cli("it")])
            report["importtime"] = rows
            print(f"  {'all':<28s} {sum(s for _, s in rows):6.2f} s")
            for name, sec in rows[:12]:
                print(f"  {name:<28s} {sec:6.2f} s")

        if args.cprofile:
            print(f"\ncProfile of logitscope.cli.main in a child (stats in {args.cprofile}):")
            code = (
                "import cProfile, pstats, sys\n"
                "from logitscope.cli import main\n"
                "cProfile.run('main(sys.argv[2:])', sys.argv[1])\n"
                "s = pstats.Stats(sys.argv[1])\n"
                "s.sort_stats('cumulative').print_stats(30)\n"
                "s.sort_stats('tottime').print_stats(20)\n"
            )
            subprocess.run([sys.executable, "-c", code, args.cprofile, *cli("cp")], check=True, cwd=REPO)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
