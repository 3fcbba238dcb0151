"""Benchmark: edge attribution (EAP, EAP-IG-inputs) and MIB's faithfulness curve, logitscope vs the
EAP-IG library on TransformerLens 3.9, in forward-pass equivalents (issue 21).

    .venv/bin/python bench/edges.py --n 256 --threads 1 --eap-ig-src DIR     # bench/results/edges-cpu-256.{json,md}
    .venv/bin/python bench/edges.py --n 16 --threads 1                       # a smoke run (library skipped without DIR)

One run, one machine, each contender its own process (``bench/run.py``'s ``run_process``: wall
time from spawn to exit, peak RSS from ``os.wait4``):

1. a random-weight GPT-2-small-shaped checkpoint (``make_checkpoint.py``) and N equal-length IOI
   prompts with the IOI paper's ABC counterparts (``patching.py``'s ``write_pairs``);
2. the unit, one *forward-pass equivalent* (FPE): a plain Hugging Face forward pass over the N
   clean prompts in batches of 64, in CPU seconds, timed inside each logitscope process (the
   median); ``floor`` (``contenders/floor.py``, its own process, wall clock) is run for reference.
   Every cost is CPU seconds of the phase: with one thread per process that is the work done, which
   other load on a shared machine changes far less than wall time (both are in the output);
3. logitscope (``contenders/edges_logitscope.py``): EAP, EAP-IG-inputs with ``--steps`` (default
   5), and EAP followed by the faithfulness curve by |score| at MIB's ten fractions, each its own
   process; the cost is the phase (``scores``, ``curve``) over the unit;
4. the EAP-IG library (``contenders/edges_eapig.py``; not on PyPI, never copied here: its folder
   comes from ``--eap-ig-src`` or ``$EAP_IG_SRC``; absent, its runs are skipped with a line that
   says so): EAP and EAP-IG-inputs on the same pairs and batches, its scores moved off CUDA at run
   time; its ``scores`` phase is its ``attribute(...)`` call;
5. logitscope's EAP again on ``--flat-n`` pairs (default 10 N) in the same batches: peak RSS must
   stay flat;
6. TransformerLens 4.3's own EAP (``contenders/edges_tl4.py``, ``attribution_patch`` at edge
   granularity; it has no EAP-IG) in its own venv (``bench/.cache/venvs/tl-4.3``, made by
   ``run.py``'s ``ensure_venv`` from ``envs/tl-4.3.txt``): with ``--tl4``, or whenever that venv
   exists (``--skip tl4`` skips it). Its gradient is at the *corrupted* prompt and its difference
   clean − corrupted, so its scores are negated and compared with logitscope's estimate at the
   corrupted prompt, 2 × ``clean-corrupted`` − ``eap`` (logitscope's ``clean-corrupted`` averages
   the gradients at both prompts; its ``eap`` takes the clean one), run for this in its own process;
7. the agreement check (every edge's score, logitscope's against the library's: largest absolute
   difference over the largest |score|, must be <= ``--rel-tol``, default 1e-4: float32 sums over
   d_model, positions and prompts, and TransformerLens's folded/centred weights against the plain
   Hugging Face model), the table, and ``--out`` (.json and .md).

TransformerLens 4 is not installed in logitscope's venv (3.9 is, as the oracle; installing 4.3
beside it would replace it): its EAP runs in its own venv (step 6).

Targets (issue 21): >= 2x faster than the EAP-IG library and >= 2x less peak memory; EAP <= 3 FPE;
EAP-IG-inputs with m steps <= 1.3 (2m + 2) FPE; the whole faithfulness curve <= 12 FPE; peak memory
flat from N to 10 N pairs (here: at most 1.10x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from make_checkpoint import make_checkpoint  # noqa: E402
from patching import write_pairs  # noqa: E402
from run import CONTENDERS, GB, VENVS, child_env, ensure_venv, machine_info, measured, wait_for_idle  # noqa: E402

FLAT_RATIO = 1.10  # "flat": peak RSS at 10x the pairs within 10% of the N-pair run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256, help="IOI pairs (default 256)")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG-inputs steps (default 5)")
    ap.add_argument("--batch-size", type=int, default=32, help="pairs per batch, every contender (default 32)")
    ap.add_argument("--flat-n", type=int, default=None, help="pairs for the memory-flatness run (default 10 x n)")
    ap.add_argument("--threads", type=int, default=1, help="threads per process (default 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eap-ig-src", default=os.environ.get("EAP_IG_SRC"),
                    help="folder of the EAP-IG library (hannamw/EAP-IG clone or its src/); default $EAP_IG_SRC")
    ap.add_argument("--rel-tol", type=float, default=1e-4)
    ap.add_argument("--tl4", action="store_true",
                    help="run TransformerLens 4.3's EAP, making its venv if missing (default: only if bench/.cache/venvs/tl-4.3 exists)")
    ap.add_argument("--skip", default="", help="comma list: library, library-eap, library-eap-ig-inputs, tl4, curve, flat, eap, eap-ig-inputs")
    ap.add_argument("--wait-idle", type=float, default=0.0, help="seconds to wait for a quiet machine first")
    ap.add_argument("--timeout", type=float, default=4 * 3600)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if not args.eap_ig_src:
        print("skip: the EAP-IG library (give --eap-ig-src DIR or set EAP_IG_SRC to a hannamw/EAP-IG clone); "
              "only logitscope runs", flush=True)
        skip.add("library")
    if "tl4" not in skip and not args.tl4 and not (VENVS / "tl-4.3" / "bin" / "python").exists():
        print("skip: TransformerLens 4.3's EAP (no bench/.cache/venvs/tl-4.3; --tl4 makes it)", flush=True)
        skip.add("tl4")
    tl4_python = None if "tl4" in skip or "eap" in skip else str(ensure_venv("tl-4.3"))
    mode = str(args.threads) if args.threads else "default"
    out = Path(args.out or BENCH / "results" / f"edges-{args.device.split(':')[0]}-{args.n}.json")
    cache = BENCH / ".cache"
    model = make_checkpoint(cache / "gpt2-small-random")
    pairs, length = write_pairs(cache / f"ioi-pairs-{args.n}.jsonl", args.n)
    load = wait_for_idle(args.wait_idle) if args.wait_idle else None
    py = sys.executable
    runs: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="logitscope-edges-bench-"))

    def run(name: str, script: str, extra: list[str], prompts: Path = pairs, python: str = py,
            env: dict[str, str] | None = None) -> dict[str, Any]:
        result = tmp / f"{name}.json"
        cmd = [python, str(CONTENDERS / script), "--model", str(model), "--prompts", str(prompts), "--device", args.device,
               "--result", str(result), *extra]
        entry, r = measured(name, mode, cmd, result, child_env(mode, env or {}), mem_limit_bytes=int(20 * GB),
                            timeout_s=args.timeout)
        runs[name] = entry
        phase = r.child.get("phases_s", {})
        print(f"{name}: wall {r.wall_s:.1f} s, peak RSS {r.peak_rss_bytes / GB:.2f} GB, phases "
              + ", ".join(f"{k} {v:.1f} s" for k, v in phase.items()), flush=True)
        return entry

    bs = ["--batch-size", str(args.batch_size)]
    run("floor", "floor.py", [])
    for method in ("eap", "eap-ig-inputs"):
        if method in skip:
            continue
        m = ["--method", method, "--steps", str(args.steps), *bs]
        run(f"logitscope_{method}", "edges_logitscope.py", [*m, "--scores-out", str(tmp / f"ours-{method}.json")])
        if "library" not in skip and f"library-{method}" not in skip:
            run(f"eapig_{method}", "edges_eapig.py", [*m, "--eap-ig-src", args.eap_ig_src,
                                                      "--scores-out", str(tmp / f"theirs-{method}.json")])
        if method == "eap" and tl4_python:  # logitscope at the corrupted end (see step 6), then TransformerLens 4.3
            run("logitscope_clean-corrupted", "edges_logitscope.py",
                ["--method", "clean-corrupted", *bs, "--scores-out", str(tmp / "ours-clean-corrupted.json")])
            run("tl4_eap", "edges_tl4.py", [*bs, "--scores-out", str(tmp / "tl4-eap.json")], python=tl4_python,
                env={"PYTHONPATH": ""})
    if "curve" not in skip:
        run("logitscope_curve", "edges_logitscope.py", ["--method", "eap", *bs, "--curve"])
    if "flat" not in skip:
        flat_n = args.flat_n or 10 * args.n
        flat_pairs, _ = write_pairs(cache / f"ioi-pairs-{flat_n}.jsonl", flat_n)
        run("logitscope_eap_flat", "edges_logitscope.py", ["--method", "eap", *bs], prompts=flat_pairs)
    doc = summarise(runs, args, length + 1, load, tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(doc), encoding="utf-8")
    print(markdown(doc))
    return 0 if doc["agree"] is not False else 1


def agreement(ours_path: Path, theirs_path: Path) -> dict[str, Any] | None:
    """Every edge's score, ours against the library's: largest absolute difference, relative to the
    largest |score|, and whether the edge sets are the same."""
    if not (ours_path.exists() and theirs_path.exists()):
        return None
    import numpy as np

    ours, theirs = json.loads(ours_path.read_text()), json.loads(theirs_path.read_text())
    names = sorted(ours)
    a = np.array([ours[n] for n in names])
    b = np.array([theirs.get(n, np.nan) for n in names])
    scale = float(np.nanmax(np.abs(b)))
    diff = float(np.nanmax(np.abs(a - b)))
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    return {"edges": len(names), "same_edges": set(ours) == set(theirs), "max_abs_diff": diff, "max_abs_score": scale,
            "rel_diff": diff / scale if scale else float("nan"), "spearman": float(np.corrcoef(ra, rb)[0, 1])}


def tl4_agreement(tmp: Path) -> dict[str, Any] | None:
    """TransformerLens 4.3's EAP against logitscope's estimate at the corrupted prompt: theirs negated
    (clean − corrupted to corrupted − clean), ours 2 × clean-corrupted − eap; both written to ``tmp``
    and compared as :func:`agreement` does. Also the largest difference to logitscope's ``eap``
    (gradient at the clean prompt), which is a different estimate and is not expected to agree."""
    paths = [tmp / f for f in ("tl4-eap.json", "ours-eap.json", "ours-clean-corrupted.json")]
    if not all(p.exists() for p in paths):
        return None
    theirs, eap, cc = (json.loads(p.read_text()) for p in paths)
    (tmp / "tl4-eap-negated.json").write_text(json.dumps({k: -v for k, v in theirs.items()}))
    (tmp / "ours-eap-at-corrupted.json").write_text(json.dumps({k: 2 * cc[k] - eap[k] for k in eap}))
    ag = agreement(tmp / "ours-eap-at-corrupted.json", tmp / "tl4-eap-negated.json")
    vs_clean = agreement(tmp / "ours-eap.json", tmp / "tl4-eap-negated.json")
    if ag and vs_clean:
        ag["vs_eap_at_clean"] = {k: vs_clean[k] for k in ("max_abs_diff", "rel_diff", "spearman")}
    return ag


def _cpu(run: dict[str, Any] | None, phase: str) -> float | None:
    return None if not run or not run["ok"] else run["child"].get("cpu_phases_s", {}).get(phase)


def summarise(runs: dict[str, Any], args: argparse.Namespace, T: int, load: float | None, tmp: Path) -> dict[str, Any]:
    """The table's numbers. Costs are CPU seconds of each phase (one thread per process: the work
    done, little changed by other load on a shared machine); the unit (1 FPE) is the CPU time of a
    plain Hugging Face forward pass over the clean prompts, measured inside each logitscope process
    (the median over them); ``floor`` (its own process, wall clock) is kept for reference."""
    import numpy as np

    units = [u for name, r in runs.items()  # the flatness run's forward is over 10 N prompts: not the unit
             if name.startswith("logitscope_") and name != "logitscope_eap_flat" and (u := _cpu(r, "plain_forward"))]
    unit = float(np.median(units)) if units else None
    m = args.steps
    targets = {"eap": 3.0, "eap-ig-inputs": 1.3 * (2 * m + 2)}
    rows: dict[str, Any] = {}
    floor = runs.get("floor", {}).get("child", {}).get("phases_s", {}).get("forward")
    doc: dict[str, Any] = {"n": args.n, "tokens": T, "steps": m, "batch_size": args.batch_size, "threads": args.threads,
                           "device": args.device, "machine": machine_info(args.device), "load_before": load,
                           "unit_cpu_s": unit, "units_cpu_s": units, "floor_forward_wall_s": floor,
                           "rel_tol": args.rel_tol, "rows": rows, "runs": runs, "agree": None, "targets": {}}

    def row(run: dict[str, Any], phase: str) -> dict[str, Any]:
        c = _cpu(run, phase)
        return {"cpu_s": c, "fpe": c / unit if unit else None, "phase_wall_s": run["child"]["phases_s"][phase],
                "wall_s": run["wall_s"], "peak_rss_gb": run["peak_rss_gb"]}

    for method in ("eap", "eap-ig-inputs"):
        ours, theirs = runs.get(f"logitscope_{method}"), runs.get(f"eapig_{method}")
        if ours and ours["ok"]:
            rows[f"logitscope_{method}"] = a = row(ours, "scores")
            doc["targets"][f"{method} <= {targets[method]:g} FPE"] = a["fpe"] <= targets[method]
        if theirs and theirs["ok"]:
            rows[f"eapig_{method}"] = row(theirs, "scores")
        if ours and ours["ok"] and theirs and theirs["ok"]:
            ag = agreement(tmp / f"ours-{method}.json", tmp / f"theirs-{method}.json")
            doc[f"agreement_{method}"] = ag
            ok = bool(ag and ag["same_edges"] and ag["rel_diff"] <= args.rel_tol)
            doc["agree"] = ok and doc["agree"] is not False
            a, b = rows[f"logitscope_{method}"], rows[f"eapig_{method}"]
            a["speedup"], a["speedup_wall"] = b["cpu_s"] / a["cpu_s"], b["phase_wall_s"] / a["phase_wall_s"]
            a["memory_ratio"] = b["peak_rss_gb"] / a["peak_rss_gb"]
            doc["targets"][f"{method}: >= 2x faster than the EAP-IG library"] = a["speedup"] >= 2
            doc["targets"][f"{method}: >= 2x less peak memory than the EAP-IG library"] = a["memory_ratio"] >= 2
    tl4, ours = runs.get("tl4_eap"), runs.get("logitscope_eap")
    if tl4 and tl4["ok"]:
        rows["tl4_eap"] = b = row(tl4, "scores")
        ag = tl4_agreement(tmp)
        doc["agreement_tl4_eap"] = ag
        ok = bool(ag and ag["same_edges"] and ag["rel_diff"] <= args.rel_tol)
        doc["agree"] = ok and doc["agree"] is not False
        if ours and ours["ok"]:
            a = rows["logitscope_eap"]
            a["tl4_speedup"], a["tl4_memory_ratio"] = b["cpu_s"] / a["cpu_s"], b["peak_rss_gb"] / a["peak_rss_gb"]
    curve = runs.get("logitscope_curve")
    if curve and curve["ok"]:
        rows["logitscope_curve"] = r = row(curve, "curve")
        r["cpr"], r["cmd"] = curve["child"]["curve"]["cpr"], curve["child"]["curve"]["cmd"]
        doc["targets"]["faithfulness curve (ten evaluations) <= 12 FPE"] = r["fpe"] <= 12
    flat, base = runs.get("logitscope_eap_flat"), runs.get("logitscope_eap")
    if flat and flat["ok"] and base and base["ok"]:
        ratio = flat["peak_rss_gb"] / base["peak_rss_gb"]
        doc["flat"] = {"n": flat["child"]["n_prompts"], "peak_rss_gb": flat["peak_rss_gb"], "ratio": ratio,
                       "scores_cpu_s": _cpu(flat, "scores")}
        doc["targets"][f"peak memory flat from {args.n} to {flat['child']['n_prompts']} pairs (<= {FLAT_RATIO}x)"] = \
            ratio <= FLAT_RATIO
    return doc


LABELS = {"logitscope_eap": "logitscope: EAP", "eapig_eap": "EAP-IG library: EAP",
          "logitscope_eap-ig-inputs": "logitscope: EAP-IG-inputs ({m} steps)",
          "eapig_eap-ig-inputs": "EAP-IG library: EAP-IG-inputs ({m} steps)",
          "tl4_eap": "TransformerLens 4.3: EAP (attribution_patch, granularity='edge')",
          "logitscope_curve": "logitscope: faithfulness curve by |score| (ten fractions + the empty circuit)"}


def markdown(doc: dict[str, Any]) -> str:
    mach = doc["machine"]
    unit = doc["unit_cpu_s"]
    lines = [
        f"{doc['n']} equal-length IOI pairs (ABC counterparts, {doc['tokens']} tokens with BOS), GPT-2-small-shaped "
        f"random-weight model (32,491 edges), fp32, device {doc['device']}, {doc['threads']} thread(s) per process, "
        f"batches of {doc['batch_size']} pairs, each contender its own process; {mach['cpu']}, {mach['cores']} cores "
        f"shared with other work (wall times are noisy: costs are CPU seconds); torch {mach['torch']}.",
        "",
        f"Unit (1 FPE): one plain forward pass over the {doc['n']} clean prompts, {unit:.2f} CPU s (median inside the "
        f"logitscope processes: {', '.join(f'{u:.2f}' for u in doc['units_cpu_s'])})"
        + (f"; the separate floor process took {doc['floor_forward_wall_s']:.2f} s wall." if doc['floor_forward_wall_s'] else "."),
        "",
        "| contender | CPU (s) | forward-pass equivalents | phase wall (s) | whole process wall (s) | peak RSS (GB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, r in doc["rows"].items():
        lines.append(f"| {LABELS[key].format(m=doc['steps'])} | {r['cpu_s']:.1f} | {r['fpe']:.1f} | "
                     f"{r['phase_wall_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} |")
    if not any(k.startswith("eapig") for k in doc["rows"]):
        lines += ["", "The EAP-IG library was not run (no --eap-ig-src)."]
    ag = doc.get("agreement_tl4_eap")
    if "tl4_eap" not in doc["rows"]:
        lines += ["", "TransformerLens 4.3's own EAP: not run (no bench/.cache/venvs/tl-4.3; --tl4 makes it)."]
    elif ag:
        a, vc = doc["rows"].get("logitscope_eap", {}), ag.get("vs_eap_at_clean", {})
        lines += ["", f"TransformerLens 4.3's EAP (its own venv; gradient at the corrupted prompt, clean − corrupted: "
                  f"negated) vs logitscope's estimate at the corrupted prompt (2 × clean-corrupted − eap) on all "
                  f"{ag['edges']:,} edges: largest difference {ag['max_abs_diff']:.2e} (largest |score| "
                  f"{ag['max_abs_score']:.3f}: {ag['rel_diff']:.1e} of it; tolerance {doc['rel_tol']:g}), Spearman "
                  f"{ag['spearman']:.6f}. Against logitscope's eap (gradient at the clean prompt, a different estimate): "
                  f"largest difference {vc.get('max_abs_diff', float('nan')):.2e} ({vc.get('rel_diff', float('nan')):.1e} "
                  f"of the largest |score|), Spearman {vc.get('spearman', float('nan')):.4f}."
                  + (f" logitscope's EAP is {a['tl4_speedup']:.1f}x faster (CPU time of the scoring); peak RSS "
                     + (f"{a['tl4_memory_ratio']:.2f}x less." if a["tl4_memory_ratio"] >= 1 else
                        f"{1 / a['tl4_memory_ratio']:.2f}x more (TransformerLens runs one pair at a time; "
                        f"logitscope batches of {doc['batch_size']})." ) if "tl4_speedup" in a else "")]
    for method in ("eap", "eap-ig-inputs"):
        ag = doc.get(f"agreement_{method}")
        r = doc["rows"].get(f"logitscope_{method}", {})
        if ag:
            lines += ["", f"{method}: logitscope vs the library on all {ag['edges']:,} edges: largest difference "
                      f"{ag['max_abs_diff']:.2e} (largest |score| {ag['max_abs_score']:.3f}: {ag['rel_diff']:.1e} of it; "
                      f"tolerance {doc['rel_tol']:g}), Spearman {ag['spearman']:.6f}; "
                      f"{r['speedup']:.2f}x faster (CPU time of the scoring; {r['speedup_wall']:.2f}x on its wall time), "
                      f"{r['memory_ratio']:.2f}x less peak RSS."]
    c = doc["rows"].get("logitscope_curve")
    if c:
        lines += ["", f"Curve of the EAP scores (random weights: the numbers only show it runs): CPR {c['cpr']:.3f}, "
                  f"CMD {c['cmd']:.3f}."]
    flat = doc.get("flat")
    if flat:
        lines += ["", f"Memory with the number of pairs (EAP): {doc['n']} pairs "
                  f"{doc['rows']['logitscope_eap']['peak_rss_gb']:.2f} GB, {flat['n']} pairs {flat['peak_rss_gb']:.2f} GB "
                  f"(x{flat['ratio']:.2f}), same batches."]
    lines += ["", "| target | met? |", "|---|---|"]
    lines += [f"| {k} | {'met' if v else 'not met'} |" for k, v in doc["targets"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
