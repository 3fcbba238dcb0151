"""logitscope's patching, as a user runs it: ``logitscope patch --model DIR --prompts PAIRS --out DIR``.

    python bench/contenders/patch_logitscope.py --result OUT.json -- patch --model DIR --prompts PAIRS.jsonl \
        --out TMP --quiet --what attn_head_out_all_pos [--positions end]

Everything after ``--`` goes to ``logitscope.cli.main`` unchanged (the whole command: imports,
load, the study of the clean prompts, every patched run, results.json, the report). Afterwards it
reads ``results.json`` back: each grid's means and the run's own clock (``patching.timing``:
``study_s``, the DLA study, and ``patching_s``, the two unpatched runs per batch and every patched
run), written to ``--result``.
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
        print("usage: patch_logitscope.py --result OUT.json -- patch --model ... --out DIR ...", file=sys.stderr)
        return 2
    result, cli_args = argv[1], argv[argv.index("--") + 1 :]
    phases = _common.Phases()
    with phases("logitscope.cli.main"):
        from logitscope.cli import main as logitscope_main

        _time_patching(phases)
        rc = logitscope_main(cli_args)
    if rc != 0:
        return rc
    out = Path(cli_args[cli_args.index("--out") + 1])
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    pt = doc["patching"]
    grids = {k: v["values"] for k, v in pt.items() if isinstance(v, dict) and "values" in v and "axes" in v}
    device = cli_args[cli_args.index("--device") + 1] if "--device" in cli_args else "cpu"
    _common.write_result(result, phases, device, grids=grids, timing=pt.get("timing"), n_prompts=doc["n_prompts"],
                         clean=pt["clean_logit_diff"]["mean"], corrupted=pt["corrupted_logit_diff"]["mean"])
    return 0


def _time_patching(phases: "_common.Phases") -> None:
    """Time ``run_patching``'s patching stage (every batch's two unpatched runs and patched runs) as
    the phase ``patch``, its CPU time too: the run's own clock (``patching.timing``) is wall time."""
    try:
        import logitscope.methods.patching.loop as module
        name = "patch_batches"
    except ImportError:  # an older layout: the loop in api/patching.py
        try:
            import logitscope.api.patching as module
            name = "_patch"
        except ImportError:  # older still: the phase is absent
            return
    inner = getattr(module, name)

    def timed(*args, **kwargs):
        with phases("patch"):
            return inner(*args, **kwargs)

    setattr(module, name, timed)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
