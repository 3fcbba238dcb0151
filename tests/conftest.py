"""Shared fixtures: the real GPT-2 tokenizer and small random-weight checkpoints built here."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
GPT2_TOKENIZER = DATA / "gpt2-tokenizer"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_configure(config):
    """Under xdist, each worker's PyTorch (and the processes it starts: the command line, notebook
    kernels) gets its share of the cores, unless OMP_NUM_THREADS says otherwise. Without it every
    worker ran one OpenMP thread per core: 2 workers x 2 threads on 2 cores spin-wait on each other
    (measured: one multitoken test, two at once, 66 s of CPU each instead of 5.5 s)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))
    if "torch" in sys.modules:  # already imported by a plugin: it read the variable before it was set
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# CI runs `-n 2 --dist loadfile`: xdist hands out whole files, those with the most tests first, and
# gives a worker its next file while that worker still has up to two tests pending. The longest files
# have few tests (a tutorial is one test, test_scale.py two, test_real_weights.py eight), so they came
# last, and one worker could hold test_scale.py and both tutorials (~4 min) while the other had nothing
# left. Handing these out first (longest first) lets the many short files fill in behind them.
# Seconds: CI --durations, after the trims of this file's commit; only their order matters.
LONGEST_FIRST = {"tests/test_real_weights.py": 150, "docs/tutorials/patching-and-circuits.ipynb": 80,
                 "tests/test_scale.py": 75, "docs/tutorials/seed-study.ipynb": 50}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's loadfile scheduling, with the files of LONGEST_FIRST handed out before the rest (the
    rest in xdist's own order); any other --dist is xdist's own."""
    if config.getvalue("dist") != "loadfile":
        return None
    from collections import OrderedDict

    from xdist.scheduler import LoadFileScheduling

    class LongestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            if not getattr(self, "_reordered", False):  # the queue is complete before the first unit goes out
                self._reordered = True
                order = sorted(self.workqueue, key=lambda scope: -LONGEST_FIRST.get(scope, 0))  # stable
                self.workqueue = OrderedDict((scope, self.workqueue[scope]) for scope in order)
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


def pytest_runtest_setup(item):
    """Tests marked ``browser`` need headless chromium: skipped without it, unless
    LOGITSCOPE_REQUIRE_BROWSER is set (as .ci/run does), where a missing browser fails them."""
    if item.get_closest_marker("browser") is None or CHROMIUM is not None:
        return
    why = "needs headless chromium on PATH (apt-get install chromium)"
    if os.environ.get("LOGITSCOPE_REQUIRE_BROWSER"):
        pytest.fail(f"LOGITSCOPE_REQUIRE_BROWSER is set and the test {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 checkpoint with hard random weights and the real GPT-2 tokenizer."""
    from oracle import make_hf_model, save_checkpoint

    return save_checkpoint(make_hf_model("gpt2", size="tiny", seed=1), tmp_path_factory.mktemp("tiny-gpt2"))
