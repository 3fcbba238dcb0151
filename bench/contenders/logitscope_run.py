"""logitscope's whole run, as a user runs it: ``logitscope run --model DIR --prompts FILE --out DIR``.

    python bench/contenders/logitscope_run.py --result OUT.json -- run --model DIR --prompts FILE.jsonl \
        --out TMP --quiet [--device cuda] [--no-report]

Everything after ``--`` is passed unchanged to ``logitscope.cli.main``, the function behind both
the ``logitscope`` console script and ``python -m logitscope``, so the process does exactly what
``python -m logitscope run ...`` does (imports, model load, study, results.json, report.html), and
it ends as they do, with ``os._exit`` once everything is written (no interpreter teardown). The
only additions happen after ``main`` returns: reading the mean logit difference back from
``OUT/results.json`` (with the study's own phase timings, ``timing``: tokenization to every
number, measured by ``run_study``) and, on CUDA, ``torch.cuda.max_memory_allocated``; they are
written to ``--result``. Nothing else is instrumented (``bench/profile_logitscope.py`` breaks the
same run down by phase).
"""

from __future__ import annotations

import _common  # noqa: I001

import json
import os
import sys
from pathlib import Path


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv or argv[:1] != ["--result"]:
        print("usage: logitscope_run.py --result OUT.json -- run --model ... --out DIR ...", file=sys.stderr)
        return 2
    result, cli_args = argv[1], argv[argv.index("--") + 1 :]
    phases = _common.Phases()
    with phases("logitscope.cli.main"):
        from logitscope.cli import main as logitscope_main

        rc = logitscope_main(cli_args)
    if rc != 0:
        return rc
    out = Path(cli_args[cli_args.index("--out") + 1])
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    device = cli_args[cli_args.index("--device") + 1] if "--device" in cli_args else "cpu"
    _common.write_result(
        result,
        phases,
        device,
        mean_logit_diff=doc["logit_diff"]["mean"],
        n_prompts=doc["n_prompts"],
        device_used=doc["device"],
        direct=doc["dla_check"]["direct"],
        logit_lens=doc["logit_lens"]["values"],
        logit_lens_labels=doc["logit_lens"]["labels"],
        layer_attribution=doc["layer_attribution"]["values"],
        layer_attribution_labels=doc["layer_attribution"]["labels"],
        head_attribution=doc["head_attribution"]["values"],
        top_heads=[[h["layer"], h["head"]] for h in doc["top_heads"]["positive"]],
        bottom_heads=[[h["layer"], h["head"]] for h in doc["top_heads"]["negative"]],
        report_written=(out / "report.html").exists(),
        study_timing=doc.get("timing"),
    )
    return 0


if __name__ == "__main__":
    # As the ``logitscope`` console script does (``logitscope.cli.entry``): flush and leave without
    # interpreter teardown; every output, this script's result file included, is already closed.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
