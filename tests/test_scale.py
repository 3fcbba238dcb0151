"""The IOI distribution at scale: streaming keeps peak memory flat in the number of prompts, and
generated prompt sets are reproducible from their seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

EXE = Path(sys.executable).with_name("logitscope")


def _peak_rss_kb(args: list[str]) -> int:
    """Run one process and return its own peak resident set size (KB), via wait4."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    assert proc.returncode == 0, err
    return usage.ru_maxrss


# Issue 19's bound is 20,000 prompts within 1.3x the peak of 2,000: a growth of at most 0.3 x the
# smaller peak over 18,000 more prompts. Growth with N is linear (per-prompt arrays, a bootstrap
# block, a report drawing every prompt), so the test runs a smaller pair with that same allowance per
# prompt: 1,000 and 10,000 prompts, 9,000 more, hence at most 0.3 x 9,000 / 18,000 = 0.15 x the
# smaller peak. The smaller peak is the fixed cost (imports, model, report): measured 566 MB at
# 1,000 and 568 MB at 2,000, so the allowance is the same number of bytes a prompt as issue 19's.
SMALL, LARGE = 1000, 10000
ALLOWED = 1 + 0.3 * (LARGE - SMALL) / (20000 - 2000)


def test_peak_memory_does_not_grow_with_prompts(tiny_gpt2_dir, tmp_path):
    """10,000 prompts within 1.15x the peak of 1,000, report on: issue 19's 1.3x from 2,000 to
    20,000, per prompt (measured there 1.07x, see bench/memory_report.py). The per-prompt logits, a
    bootstrap block that grows with N (1.31x before) or a report that draws every prompt (1.94x
    before) would break it."""
    peaks = {}
    for n in (SMALL, LARGE):
        out = tmp_path / f"ioi{n}"
        peaks[n] = _peak_rss_kb([str(EXE), "run", "--model", str(tiny_gpt2_dir), "--prompts", f"ioi:{n}",
                                 "--out", str(out), "--quiet"])
        doc = json.loads((out / "results.json").read_text())
        assert doc["n_prompts"] == n and len(doc["prompts"]) == n
        assert np.load(out / "per_prompt_heads.npy").shape == (n, 2, 4)
        assert doc["decomposition"]["max_abs_error"] < 1e-4
        assert len(doc["by_template"]) == 30  # 15 templates x 2 orders
    assert peaks[LARGE] <= ALLOWED * peaks[SMALL], (peaks, ALLOWED)


def test_same_seed_same_prompts_other_seed_other_prompts(tiny_gpt2_dir, tmp_path):
    """`run --seed` (the command line in this process: three interpreters would cost more than the
    runs; the console script itself is tests/test_cli.py's)."""
    from logitscope.cli import main

    docs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / name
        assert main(["run", "--model", str(tiny_gpt2_dir), "--prompts", "ioi:50", "--seed", str(seed),
                     "--out", str(out), "--quiet", "--no-report"]) == 0
        docs[name] = json.loads((out / "results.json").read_text())
    rows = lambda d: [(p["prompt"], p["correct"], p["incorrect"], p["template"], p["order"]) for p in d["prompts"]]  # noqa: E731
    assert rows(docs["a"]) == rows(docs["b"])
    assert docs["a"]["logit_diff"] == docs["b"]["logit_diff"]  # intervals are seeded too
    assert rows(docs["a"]) != rows(docs["c"])
    assert {p["order"] for p in docs["a"]["prompts"]} == {"ABBA", "BABA"}
