"""The study's own throughput, in one process: prompts/s of ``run_study`` and of writing its outputs.

    .venv/bin/python bench/study_throughput.py --n 10000 --device cuda          # the issue's GPU target
    .venv/bin/python bench/study_throughput.py --n 10000 --model narrow         # host-side costs, CPU

``bench/run.py`` times whole processes (interpreter start, imports, model load, study, outputs) and
compares contenders. This script answers the narrower question the GPU target asks: once the model
is loaded and the prompts are in hand, how many prompts a second does the study go through? It
loads the model once, generates ``--n`` IOI prompts (``ioi:N``, seeded), then runs ``run_study``
``--repeat`` times on them (the first run on a GPU also pays CUDA's one-time start: context,
cuBLAS, kernel loading; it is reported on its own and left out of the median), and after the last
run times ``StudyResult.save`` (bootstrap intervals, results.json, per_prompt_heads.npy, report).

``--model``: a checkpoint folder; ``gpt2-small`` (default) for the benchmark's random-weight
GPT-2-small-shaped checkpoint (``make_checkpoint.py``); ``narrow`` for a GPT-2 of the same layout
and vocabulary but ``d_model`` 48 (built in ``bench/.cache``), whose forward pass is nearly free, so
what remains is what the host costs: tokenization, batching, hooks, the vocabulary-wide softmax
(50,257 logits a prompt), bootstrap, JSON, report.

Writes ``--out`` (JSON, default ``bench/results/study-<device>-<model>-<n>.json``) and the same path
with ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from make_checkpoint import DEFAULT_DIR, TOKENIZER_DIR, TOKENIZER_FILES, make_checkpoint  # noqa: E402

NARROW_DIR = BENCH / ".cache" / "gpt2-narrow-random"
TARGET_GPU_PROMPTS_PER_S = 10_000  # issue 5: the whole study, 10,000 prompts, on an H100


def make_narrow(path: Path = NARROW_DIR) -> Path:
    """GPT-2's layout and vocabulary (12 layers, 12 heads, 50,257 tokens), d_model 48, seeded."""
    if (path / "config.json").exists():
        return path
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=48, n_positions=256)).eval()
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, tmp / name)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--model", default="gpt2-small", help="gpt2-small, narrow, or a checkpoint folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=None, help="default: logitscope's own choice")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    model_dir = {"gpt2-small": lambda: make_checkpoint(DEFAULT_DIR), "narrow": make_narrow}.get(
        args.model, lambda: Path(args.model))()
    label = args.model if args.model in ("gpt2-small", "narrow") else Path(args.model).name
    out = Path(args.out or BENCH / "results" / f"study-{args.device.split(':')[0]}-{label}-{args.dtype}-{args.n}.json")

    import torch

    import logitscope as ls
    from logitscope.engine.setup import auto_batch_size

    t = time.perf_counter()
    lm = ls.load_model(str(model_dir), device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    prompts = ls.load_prompts(f"ioi:{args.n}", seed=args.seed, tokenizer=lm.tokenizer)
    prompts_s = time.perf_counter() - t

    runs = []
    for _ in range(args.repeat):
        res = ls.run_study(prompts, lm, batch_size=args.batch_size, seed=args.seed)
        runs.append(dict(res.timing))
        print(f"run_study: {res.timing['study_s']:.3f} s, {res.timing['prompts_per_s']:,.0f} prompts/s "
              f"(tokenize {res.timing['tokenize_s']:.3f}, forward {res.timing['forward_s']:.3f}, "
              f"attention {res.timing['attention_s']:.3f})", flush=True)
    steady = runs[1:] if len(runs) > 1 else runs
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res.save(Path(tmp) / "out")
        save_s = time.perf_counter() - t
    median_study = statistics.median(r["study_s"] for r in steady)
    lengths = res.n_tokens
    doc = {
        "n": args.n, "model": label, "device": str(lm.device), "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(), "cores": len(__import__("os").sched_getaffinity(0)),
        "torch": torch.__version__, "batch_size": args.batch_size or auto_batch_size(lm, int(lengths.max())),
        "prompt_tokens": [int(lengths.min()), int(lengths.max())],
        "load_model_s": load_s, "generate_prompts_s": prompts_s, "runs": runs,
        "study_s_median": median_study, "study_prompts_per_s": args.n / median_study,
        "save_s": save_s, "study_and_save_prompts_per_s": args.n / (median_study + save_s),
        "mean_logit_diff": res.mean_logit_diff,
    }
    md = (
        f"`bench/study_throughput.py --n {args.n} --model {label} --device {args.device} --dtype {args.dtype}`: "
        f"{doc['gpu'] or doc['cpu']}, {doc['cores']} cores, torch {doc['torch']}; IOI prompts of "
        f"{doc['prompt_tokens'][0]}–{doc['prompt_tokens'][1]} tokens, batch size {doc['batch_size']}.\n\n"
        "| | seconds | prompts/s |\n|---|---:|---:|\n"
        f"| run_study, first run | {runs[0]['study_s']:.3f} | {args.n / runs[0]['study_s']:,.0f} |\n"
        f"| run_study, median of the {len(steady)} later run(s) | {median_study:.3f} | {doc['study_prompts_per_s']:,.0f} |\n"
        f"| … of which tokenize / forward / attention | {statistics.median(r['tokenize_s'] for r in steady):.3f} / "
        f"{statistics.median(r['forward_s'] for r in steady):.3f} / {statistics.median(r['attention_s'] for r in steady):.3f} | |\n"
        f"| save: intervals, results.json, per_prompt_heads.npy, report.html | {save_s:.3f} | |\n"
        f"| run_study + save | {median_study + save_s:.3f} | {doc['study_and_save_prompts_per_s']:,.0f} |\n"
        f"\nNot included: model load ({load_s:.2f} s) and generating the prompts ({prompts_s:.2f} s).\n"
    )
    if lm.device.type == "cuda":
        verdict = "met" if doc["study_prompts_per_s"] >= TARGET_GPU_PROMPTS_PER_S else "NOT met"
        md += (f"\nThe issue's target, the study at ≥ {TARGET_GPU_PROMPTS_PER_S:,} prompts/s on an H100 "
               f"(warm runs): {verdict} on this {doc['gpu']}.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(md)
    print("\n" + md + f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
