"""Benchmark: exact activation patching, logitscope vs TransformerLens 3.9 (and nnsight, when its
environment is there), in forward-pass equivalents.

    .venv/bin/python bench/patching.py --n 512 --threads 1            # writes bench/results/patching-cpu-512.{json,md}
    .venv/bin/python bench/patching.py --n 64 --quick                  # a smoke run: small model, no TL

One run, one machine, each contender its own process (``bench/run.py``'s ``run_process``: wall
time from spawn to exit, peak RSS from ``os.wait4``):

1. a random-weight GPT-2-small-shaped checkpoint (``make_checkpoint.py``) and N equal-length IOI
   prompts (``prompts.py``) with the IOI paper's ABC counterparts (``--corrupt abc``) as JSONL;
2. ``floor``: one plain forward pass over the clean prompts (``contenders/floor.py``); its
   ``forward`` phase is the unit: a grid's cost in *forward-pass equivalents* is its patching time
   divided by it;
3. logitscope (``logitscope patch``, the whole command) for three grids, each its own process:
   every head's output at every position (``attn_head_out_all_pos``), every head at END
   (``attn_head_out_by_pos --positions end``), and ``resid_pre`` by layer x position
   (``--positions index``); the patching time is the run's own clock (results.json
   ``patching.timing.patching_s``: both unpatched runs of every batch and every patched run);
4. TransformerLens 3.9 used well on the first grid (``contenders/patch_tl.py``: batches of 64, a
   cache filtered to ``hook_z``, ``get_act_patch_attn_head_out_all_pos``), timed in-process;
5. logitscope's END grid again on ``--flat-n`` pairs (default 10x N): peak RSS must stay flat (both END
   runs in batches of ``--flat-batch-size`` pairs, default N, so only the number of batches differs);
6. attribution patching of every grid at once (``--what heads,heads_by_pos,resid,layers,qkv
   --positions index --method attribution``, not ``all``, which adds the exact ablation grid: every head's z, q, k, v and pattern, every layer's resid_pre, resid_mid,
   attn_out and mlp_out at every position, every head at every position), its cost in the same
   unit, and its agreement with the three exact grids above (Pearson, Spearman, largest error,
   cells off by more than 10% of clean − corrupted);
7. with ``--baseline-src DIR``: logitscope's first grid again from another source tree (``DIR``
   holds the ``logitscope`` package, e.g. ``git archive <commit> src``), right after this tree's,
   so two versions are compared on the same machine in one go;
8. checks that the grids agree (TL's within 1e-4 of logitscope's), prints the table and writes
   ``--out`` (.json and .md).

Targets (issue 10; L layers, H heads, T tokens per prompt): heads at all positions <= 0.6 L*H
forward passes; heads at END <= L*H/T + 2; resid_pre by layer x position <= 0.6 L*T; at least 3x
faster than TransformerLens and 2x faster than nnsight on all heads at all positions; peak memory
flat from 512 to 5,000 pairs. Attribution patching of everything (issue 11): <= 4 forward passes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from make_checkpoint import make_checkpoint  # noqa: E402
from prompts import equal_length_ioi  # noqa: E402
from run import CONTENDERS, GB, child_env, interpreter, machine_info, measured, wait_for_idle  # noqa: E402

GRIDS = {  # name: (logitscope patch arguments, grid key)
    "heads_all_pos": (["--what", "attn_head_out_all_pos"], "attn_head_out_all_pos"),
    "heads_end": (["--what", "attn_head_out_by_pos", "--positions", "end"], "attn_head_out_by_pos"),
    "resid_pre": (["--what", "resid_pre", "--positions", "index"], "resid_pre"),
    "attribution_all": (["--what", "heads,heads_by_pos,resid,layers,qkv", "--positions", "index", "--method", "attribution"],
                        None),  # every grid; not "all", which also runs the exact single-head ablation grid
}
# The exact grids attribution patching is checked against: exact run -> (estimate, slice of it).
ESTIMATES = {"heads_all_pos": ("attn_head_out_all_pos_attribution", (slice(None), slice(None))),
             "heads_end": ("attn_head_out_by_pos_attribution", (slice(None), slice(-1, None))),  # END: the last index
             "resid_pre": ("resid_pre_attribution", (slice(None), slice(None)))}


def write_pairs(path: Path, n: int, seed: int = 0) -> tuple[Path, int]:
    """``n`` equal-length IOI prompts with ABC counterparts, as JSONL; ``(path, tokens without BOS)``."""
    from transformers import AutoTokenizer

    from logitscope.inputs.counterparts import with_counterparts
    from logitscope.inputs.prompts import Prompt

    tok = AutoTokenizer.from_pretrained(str(BENCH.parent / "tests" / "data" / "gpt2-tokenizer"))
    rows, length = equal_length_ioi(n, seed=seed, tokenizer=tok)
    prompts = [Prompt(r["prompt"], r["correct"], r["incorrect"], {k: v for k, v in r.items()
                                                                  if k not in ("prompt", "correct", "incorrect")})
               for r in rows]
    pairs = with_counterparts(prompts, "abc", seed=seed, tokenizer=tok)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p.text, "correct": p.correct, "incorrect": p.incorrect,
                                        "corrupted": p.corrupted, **p.meta}) + "\n" for p in pairs), encoding="utf-8")
    return path, length


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--flat-n", type=int, default=None, help="pairs for the memory-flatness run (default 10 x n)")
    ap.add_argument("--flat-batch-size", type=int, default=None,
                    help="pairs per batch in the flatness run and the END run it is compared with (default n: "
                         "the n-pair run is one batch, the flatness run --flat-n / n batches of the same size)")
    ap.add_argument("--threads", type=int, default=None, help="threads per process (OMP/MKL/torch); default: all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="smoke run: skip TransformerLens and the flatness run")
    ap.add_argument("--skip", default="", help="comma list of contenders to skip (transformer_lens, nnsight, flat, "
                    "attribution, or a logitscope grid: heads_all_pos, heads_end, resid_pre)")
    ap.add_argument("--wait-idle", type=float, default=0.0, help="seconds to wait for a quiet machine first")
    ap.add_argument("--timeout", type=float, default=4 * 3600)
    ap.add_argument("--out", default=None)
    ap.add_argument("--baseline-src", default=None,
                    help="a directory holding another version's logitscope package: its heads_all_pos grid is run "
                         "too (PYTHONPATH=DIR), right after this version's, and compared")
    args = ap.parse_args(argv)
    args.flat_batch_size = args.flat_batch_size or args.n
    skip = set(filter(None, args.skip.split(","))) | ({"transformer_lens", "nnsight", "flat"} if args.quick else set())
    mode = str(args.threads) if args.threads else "default"
    out = Path(args.out or BENCH / "results" / f"patching-{args.device.split(':')[0]}-{args.n}.json")
    cache = BENCH / ".cache"
    model = make_checkpoint(cache / "gpt2-small-random")
    pairs, length = write_pairs(cache / f"ioi-pairs-{args.n}.jsonl", args.n)
    T = length + 1
    load = wait_for_idle(args.wait_idle) if args.wait_idle else None
    py = sys.executable
    runs: dict[str, Any] = {}
    mem_limit = int(20 * GB)
    tmp = Path(tempfile.mkdtemp(prefix="logitscope-patch-bench-"))

    def run(name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        result = tmp / f"{name}.json"
        cmd = [str(result) if c == "{r}" else c for c in cmd]
        entry, r = measured(name, mode, cmd, result, child_env(mode, extra_env or {}), mem_limit_bytes=mem_limit,
                            timeout_s=args.timeout)
        runs[name] = entry
        print(f"{name}: wall {r.wall_s:.1f} s, peak RSS {r.peak_rss_bytes / GB:.2f} GB", flush=True)
        return entry

    common = ["--model", str(model), "--device", args.device]
    # Memory is compared at equal batches: only the number of batches differs between the two END runs.
    flat_batch = args.flat_batch_size
    run("floor", [py, str(CONTENDERS / "floor.py"), *common, "--prompts", str(pairs), "--result", "{r}"])
    for name, (extra, _) in GRIDS.items():
        if name in skip or (name == "attribution_all" and "attribution" in skip):
            continue
        batch = ["--batch-size", str(flat_batch)] if name == "heads_end" else []
        cli = ["patch", "--model", str(model), "--prompts", str(pairs), "--quiet", "--no-report", "--device",
               args.device, *extra, *batch]
        run(f"logitscope_{name}", [py, str(CONTENDERS / "patch_logitscope.py"), "--result", "{r}", "--", *cli,
                                   "--out", str(tmp / name)])
        if name == "heads_all_pos" and args.baseline_src:
            src = str(Path(args.baseline_src).resolve())
            run("baseline_heads_all_pos", [py, str(CONTENDERS / "patch_logitscope.py"), "--result", "{r}", "--", *cli,
                                           "--out", str(tmp / "baseline")], {"PYTHONPATH": src})
    if "transformer_lens" not in skip:
        run("transformer_lens_heads_all_pos", [py, str(CONTENDERS / "patch_tl.py"), *common, "--prompts", str(pairs),
                                               "--result", "{r}"])
    if "nnsight" not in skip:
        nn_python, nn_env = interpreter("nnsight-0.8", {})
        run("nnsight_heads_all_pos", [nn_python, str(CONTENDERS / "patch_nnsight.py"), *common, "--prompts", str(pairs),
                                      "--result", "{r}"], nn_env)
    if "flat" not in skip:
        flat_n = args.flat_n or 10 * args.n
        flat_pairs, _ = write_pairs(cache / f"ioi-pairs-{flat_n}.jsonl", flat_n)
        extra = GRIDS["heads_end"][0]
        run("logitscope_heads_end_flat", [py, str(CONTENDERS / "patch_logitscope.py"), "--result", "{r}", "--", "patch",
                                          "--model", str(model), "--prompts", str(flat_pairs), "--out",
                                          str(tmp / "flat"), "--quiet", "--no-report", "--device", args.device, *extra,
                                          "--batch-size", str(flat_batch)])
    doc = summarise(runs, args, T, load)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(doc), encoding="utf-8")
    print(markdown(doc))
    return 0 if doc["agree"] is not False else 1


def summarise(runs: dict[str, Any], args: argparse.Namespace, T: int, load: float | None) -> dict[str, Any]:
    import numpy as np

    L, H = 12, 12
    forward = runs["floor"]["child"].get("phases_s", {}).get("forward")
    forward_cpu = runs["floor"]["child"].get("phases_cpu_s", {}).get("forward")

    def cpu_fpe(run: dict[str, Any], phase: str) -> float | None:
        cpu = run["child"].get("phases_cpu_s", {}).get(phase)
        return cpu / forward_cpu if cpu is not None and forward_cpu else None
    rows = {}
    targets = {"heads_all_pos": 0.6 * L * H, "heads_end": L * H / T + 2, "resid_pre": 0.6 * L * T, "attribution_all": 4.0}
    for name in GRIDS:
        r = runs.get(f"logitscope_{name}")
        if not r or not r["ok"]:
            continue
        s = r["child"]["timing"]["patching_s"]
        rows[name] = {"patching_s": s, "fpe": s / forward, "target_fpe": targets[name], "wall_s": r["wall_s"],
                      "cpu_s": r["cpu_s"], "fpe_cpu": cpu_fpe(r, "patch"), "peak_rss_gb": r["peak_rss_gb"]}
    doc: dict[str, Any] = {"n": args.n, "tokens": T, "threads": args.threads, "device": args.device,
                           "machine": machine_info(args.device), "load_before": load, "forward_s": forward,
                           "forward_cpu_s": forward_cpu,
                           "grids": rows, "runs": runs, "agree": None}
    tl = runs.get("transformer_lens_heads_all_pos")
    ours = runs.get("logitscope_heads_all_pos")
    if tl and tl["ok"] and ours and ours["ok"]:
        tl_s = tl["child"]["phases_s"]["patching"]
        doc["transformer_lens"] = {"patching_s": tl_s, "fpe": tl_s / forward, "wall_s": tl["wall_s"],
                                   "peak_rss_gb": tl["peak_rss_gb"],
                                   "own_forward_s": tl["child"]["phases_s"].get("plain_forward"),
                                   "fpe_cpu": cpu_fpe(tl, "patching")}
        diff = np.abs(np.array(tl["child"]["grid"]) - np.array(ours["child"]["grids"]["attn_head_out_all_pos"])).max()
        doc["max_abs_diff_vs_tl"] = float(diff)
        doc["agree"] = bool(diff <= 1e-4)
        doc["speedup_vs_tl"] = tl_s / rows["heads_all_pos"]["patching_s"]
        doc["speedup_vs_tl_wall"] = tl["wall_s"] / ours["wall_s"]
        doc["speedup_vs_tl_cpu"] = tl["cpu_s"] / ours["cpu_s"]  # whole process; robust where the machine is shared
    nn = runs.get("nnsight_heads_all_pos")
    if nn and nn["ok"] and ours and ours["ok"]:
        nn_s = nn["child"]["phases_s"]["patching"]
        doc["nnsight"] = {"patching_s": nn_s, "fpe": nn_s / forward, "wall_s": nn["wall_s"], "peak_rss_gb": nn["peak_rss_gb"],
                          "own_forward_s": nn["child"]["phases_s"].get("plain_forward")}
        diff = np.abs(np.array(nn["child"]["grid"]) - np.array(ours["child"]["grids"]["attn_head_out_all_pos"])).max()
        doc["max_abs_diff_vs_nnsight"] = float(diff)
        doc["agree"] = bool(diff <= 1e-4) and doc["agree"] is not False
        doc["speedup_vs_nnsight"] = nn_s / rows["heads_all_pos"]["patching_s"]
        doc["speedup_vs_nnsight_wall"] = nn["wall_s"] / ours["wall_s"]
    base = runs.get("baseline_heads_all_pos")
    if base and base["ok"] and ours and ours["ok"]:
        b_s = base["child"]["timing"]["patching_s"]
        diff = np.abs(np.array(base["child"]["grids"]["attn_head_out_all_pos"])
                      - np.array(ours["child"]["grids"]["attn_head_out_all_pos"])).max()
        doc["baseline"] = {"src": args.baseline_src, "patching_s": b_s, "fpe": b_s / forward, "wall_s": base["wall_s"],
                           "cpu_s": base["cpu_s"], "peak_rss_gb": base["peak_rss_gb"], "max_abs_diff": float(diff),
                           "speedup": b_s / rows["heads_all_pos"]["patching_s"],
                           "speedup_cpu": base["cpu_s"] / ours["cpu_s"], "fpe_cpu": cpu_fpe(base, "patch")}
    doc["attribution"] = attribution_agreement(runs)
    flat = runs.get("logitscope_heads_end_flat")
    if flat and flat["ok"] and "heads_end" in rows:
        doc["flat"] = {"n": flat["child"]["n_prompts"], "peak_rss_gb": flat["peak_rss_gb"],
                       "batch_size": args.flat_batch_size,
                       "ratio": flat["peak_rss_gb"] / rows["heads_end"]["peak_rss_gb"]}
    return doc


def attribution_agreement(runs: dict[str, Any]) -> dict[str, Any]:
    """The attribution run's estimates against each exact grid run in the same benchmark."""
    import numpy as np

    from logitscope.results.agreement import agreement

    atp = runs.get("logitscope_attribution_all")
    if not atp or not atp["ok"]:
        return {}
    out = {}
    for name, (key, cut) in ESTIMATES.items():
        exact = runs.get(f"logitscope_{name}")
        if not exact or not exact["ok"]:
            continue
        a = np.array(exact["child"]["grids"][GRIDS[name][1]], dtype=float)
        b = np.array(atp["child"]["grids"][key], dtype=float)[cut]
        c, x = exact["child"]["clean"], exact["child"]["corrupted"]
        shape = a.shape

        def label(k: int, shape=shape, name=name) -> str:
            idx = np.unravel_index(k, shape)
            return (f"L{idx[0]} @ {idx[1]}" if name == "resid_pre" else
                    f"L{idx[0]}H{idx[-1]}" + (" @ END" if name == "heads_end" else ""))

        out[name] = {**agreement(a.reshape(shape), b.reshape(shape), c, x, label), "estimate": key,
                     "clean": c, "corrupted": x, "estimate_clean": atp["child"]["clean"],
                     "estimate_corrupted": atp["child"]["corrupted"]}
    return out


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _cpu_ratio(theirs: float | None, ours: float | None) -> str:
    if not theirs or not ours:
        return ""
    return f"; in the patching stage's CPU time {theirs / ours:.2f}x ({theirs:.1f} against {ours:.1f} forward passes)"


def tl_cpu(doc: dict[str, Any]) -> float:
    return doc["runs"]["transformer_lens_heads_all_pos"]["cpu_s"]


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"{doc['n']} equal-length IOI pairs (ABC counterparts, {doc['tokens']} tokens with BOS), GPT-2-small-shaped "
        f"random-weight model, fp32, device {doc['device']}, {doc['threads'] or 'all'} thread(s) per process; "
        f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}, transformers {m['transformers']}.",
        "",
        f"One plain forward pass over the {doc['n']} clean prompts (the unit): {doc['forward_s']:.2f} s"
        + (f" ({doc['forward_cpu_s']:.2f} s of CPU time; *in CPU time*: each side's CPU time in that unit, what to "
           "compare where other jobs share the cores)." if doc.get("forward_cpu_s") else "."),
        "",
        "| grid | patches | patching time (s) | forward-pass equivalents | in CPU time | target | whole process wall (s) | peak RSS (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    L, H, T = 12, 12, doc["tokens"]
    patches = {"heads_all_pos": L * H, "heads_end": L * H, "resid_pre": L * T,
               "attribution_all": 4 * L * T + 5 * L * H + L * T * H}
    labels = {"heads_all_pos": "each head, all positions (`attn_head_out_all_pos`)",
              "heads_end": "each head at END (`attn_head_out_by_pos --positions end`)",
              "resid_pre": "`resid_pre`, layer x position",
              "attribution_all": "attribution patching of every grid (`--what heads,heads_by_pos,resid,layers,qkv "
                                 "--positions index --method attribution`)"}
    for name, r in doc["grids"].items():
        ok = "met" if r["fpe"] <= r["target_fpe"] else "missed"
        lines.append(f"| logitscope: {labels[name]} | {patches[name]} | {r['patching_s']:.1f} | {r['fpe']:.1f} | "
                     f"{_f(r.get('fpe_cpu'))} | <= {r['target_fpe']:.1f} ({ok}) | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} |")
    tl, nn, bl = doc.get("transformer_lens"), doc.get("nnsight"), doc.get("baseline")
    if bl:
        lines.append(f"| logitscope baseline (`{bl['src']}`): each head, all positions | {L * H} | {bl['patching_s']:.1f} | "
                     f"{bl['fpe']:.1f} | {_f(bl.get('fpe_cpu'))} | | {bl['wall_s']:.1f} | {bl['peak_rss_gb']:.2f} |")
    if tl:
        lines.append(f"| TransformerLens 3.9: `get_act_patch_attn_head_out_all_pos`, batches of 64 | {L * H} | "
                     f"{tl['patching_s']:.1f} | {tl['fpe']:.1f} | {_f(tl.get('fpe_cpu'))} | | {tl['wall_s']:.1f} | {tl['peak_rss_gb']:.2f} |")
    if nn:
        lines.append(f"| nnsight 0.8.1: a layer's heads as the invokes of one trace, batches of 64 | {L * H} | "
                     f"{nn['patching_s']:.1f} | {nn['fpe']:.1f} | | | {nn['wall_s']:.1f} | {nn['peak_rss_gb']:.2f} |")
    if tl:
        lines += ["", f"logitscope vs TransformerLens on every head at every position: {doc['speedup_vs_tl']:.2f}x faster "
                  f"(patching time; target >= 3x), {doc['speedup_vs_tl_wall']:.2f}x on whole-process wall time; grids agree "
                  f"within {doc['max_abs_diff_vs_tl']:.1e} (tolerance 1e-4)."]
        if doc.get("speedup_vs_tl_cpu"):
            lines.append(f"In whole-process CPU time (user + system; what to compare where other jobs share the "
                         f"cores): {doc['speedup_vs_tl_cpu']:.2f}x ({tl_cpu(doc):.1f} s against "
                         f"{doc['runs']['logitscope_heads_all_pos']['cpu_s']:.1f} s)"
                         + _cpu_ratio(tl.get("fpe_cpu"), doc["grids"]["heads_all_pos"].get("fpe_cpu")) + ".")
    if bl:
        lines += ["", f"This version vs the baseline on every head at every position: {bl['speedup']:.2f}x faster "
                  f"(patching time), {bl['fpe']:.1f} -> {doc['grids']['heads_all_pos']['fpe']:.1f} forward-pass "
                  f"equivalents; grids agree within {bl['max_abs_diff']:.1e}. In whole-process CPU time: "
                  f"{bl['speedup_cpu']:.2f}x ({bl['cpu_s']:.1f} s against "
                  f"{doc['runs']['logitscope_heads_all_pos']['cpu_s']:.1f} s)"
                  + _cpu_ratio(bl.get("fpe_cpu"), doc["grids"]["heads_all_pos"].get("fpe_cpu")) + "."]
    if nn:
        lines += ["", f"logitscope vs nnsight on every head at every position: {doc['speedup_vs_nnsight']:.2f}x faster "
                  f"(patching time; target >= 2x), {doc['speedup_vs_nnsight_wall']:.2f}x on whole-process wall time; grids "
                  f"agree within {doc['max_abs_diff_vs_nnsight']:.1e}."]
    atp = doc.get("attribution")
    if atp:
        lines += ["", "Attribution patching against the exact grids above (grid cells' mean patched logit difference; "
                  "off: error > 10% of |clean − corrupted|):", "",
                  "| exact grid | cells | Pearson | Spearman | largest abs error (at) | cells off | |clean − corrupted| |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        for name, ag in atp.items():
            lines.append(f"| {labels[name]} | {ag['n_cells']} | {f(ag['pearson'])} | {f(ag['spearman'])} | "
                         f"{ag['max_abs_error']:.4f} ({ag['max_abs_error_at']}) | {len(ag['off'])} | "
                         f"{abs(ag['clean'] - ag['corrupted']):.4f} |")
    flat = doc.get("flat")
    if flat:
        lines += ["", f"Memory with the number of pairs (each head at END): {doc['n']} pairs "
                  f"{doc['grids']['heads_end']['peak_rss_gb']:.2f} GB, {flat['n']} pairs {flat['peak_rss_gb']:.2f} GB "
                  f"(x{flat['ratio']:.2f}), both in batches of {flat.get('batch_size', '?')} pairs."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
