"""Data parallelism on torch.distributed: torchrun launched from the tests on CPU ranks (gloo).

Every rank runs one thread (OMP_NUM_THREADS=1) and the single-process reference runs with one
thread too, with the same batch size: the batches are then the same, so the per-prompt numbers must
be equal bit for bit, and so must the intervals. Each torchrun launch costs a few seconds of start-up
per rank (imports, model load); the launches that only check faults or other set-ups are slow.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import logitscope as ls
from logitscope.engine import distributed
from logitscope.errors import ArgumentError

HERE = Path(__file__).parent
HARNESS = HERE / "dist_harness.py"
WORDS = ["the store", "the big old market by the river", "school", "a party at the house of a friend of theirs"]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """Llama (no learned positions: some per-prompt fields are absent) with hard random weights."""
    from oracle import make_hf_model, save_checkpoint

    return save_checkpoint(make_hf_model("llama", size="tiny", seed=5), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def mixed_jsonl(tmp_path_factory) -> Path:
    """Eleven prompts of seven to twenty-odd tokens: batches of three mix lengths and pad."""
    rows = []
    for i in range(11):
        a, b = (" Mary", " John") if i % 2 else (" John", " Mary")
        rows.append({"prompt": f"When{b} and{a} went to {WORDS[i % 4]}{', again,' * (i // 4)}{b} gave a drink to",
                     "correct": a, "incorrect": b})
    path = tmp_path_factory.mktemp("prompts") / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def one_thread():
    """The single-process reference with one thread, as each rank has."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str, launcher: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), *launcher]
    if not launcher:
        cmd += ["--master-port", str(_free_port())]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)


def assert_same_outputs(single: Path, many: Path, world_size: int) -> dict:
    """results.json equal but for when it was made and how long it took; every array file bit for bit."""
    a, b = (json.loads((d / "results.json").read_text()) for d in (single, many))
    ta, tb = a.pop("timing"), b.pop("timing")
    a.pop("created"), b.pop("created")
    if "patching" in a:
        pa, pb = a["patching"].pop("timing"), b["patching"].pop("timing")
        assert (pa["world_size"], pb["world_size"]) == (1, world_size)
        assert sum(pb["pairs_per_rank"]) == pa["pairs_per_rank"][0] and len(pb["pairs_per_rank"]) == world_size
    assert a == b
    assert (ta["world_size"], tb["world_size"]) == (1, world_size)
    ran = ta.get("rows", a["n_prompts"])  # answers of several tokens: each rank's teacher-forced rows
    assert ta["prompts_per_rank"] == [ran] and sum(tb["prompts_per_rank"]) == ran and tb.get("rows") == ta.get("rows")
    assert len(tb["prompts_per_rank"]) == world_size and min(tb["prompts_per_rank"]) > 0
    files = sorted(p.name for p in single.iterdir())
    assert files == sorted(p.name for p in many.iterdir())
    for name in files:
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(single / name), np.load(many / name), err_msg=name)
        elif name.endswith(".npz"):
            x, y = np.load(single / name), np.load(many / name)
            assert sorted(x) == sorted(y)
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name}:{k}")
    return tb


def test_torchrun_run_equals_one_process(tiny_llama_dir, mixed_jsonl, tmp_path, one_thread):
    """``torchrun -m logitscope run`` on two CPU ranks: the same files as one process, written once."""
    out = tmp_path / "two"
    proc = torchrun(2, "-m", "logitscope", "run", "--model", str(tiny_llama_dir), "--prompts", str(mixed_jsonl),
                    "--out", str(out), "--device", "cpu", "--batch-size", "3", "--no-report", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("wrote ") == 1 and proc.stdout.count("mean logit diff") == 1  # rank 0 alone speaks
    ls.run_study(str(mixed_jsonl), str(tiny_llama_dir), device="cpu", batch_size=3).save(tmp_path / "one", report=False)
    timing = assert_same_outputs(tmp_path / "one", out, 2)
    assert timing["prompts_per_rank"] == [5, 6]  # batches 0 and 3 on rank 0, 1 and 2 on rank 1 (snake order)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no temporary folder left


def test_torchrun_run_of_several_token_answers_counts_each_ranks_rows(tiny_gpt2_dir, tmp_path, one_thread):
    """Answers of several tokens on two ranks: the rows (prompt, then one per further answer token)
    are dealt in batches; ``prompts_per_rank`` is each rank's rows as the snake order deals them
    (``Ranks.shares`` of the row count), summing to ``timing.rows``; the files equal one process's."""
    from oracle import gpt2_tokenizer

    tok = gpt2_tokenizer()
    answers = [(" Mary Smith", " John"), (" John", " Mary Ann Evans"), (" Mary", " John")] * 3
    path = tmp_path / "several.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"When John and Mary went to {WORDS[i % 4]}, they gave it to",
                                        "correct": c, "incorrect": x}) + "\n" for i, (c, x) in enumerate(answers)))
    rows = sum(len(tok(c)["input_ids"]) + len(tok(x)["input_ids"]) - 1 for c, x in answers)
    out = tmp_path / "two"
    proc = torchrun(2, "-m", "logitscope", "run", "--model", str(tiny_gpt2_dir), "--prompts", str(path),
                    "--out", str(out), "--device", "cpu", "--batch-size", "3", "--no-report", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "teacher-forced rows" in proc.stdout
    ls.run_study(str(path), str(tiny_gpt2_dir), device="cpu", batch_size=3).save(tmp_path / "one", report=False)
    timing = assert_same_outputs(tmp_path / "one", out, 2)
    assert timing["rows"] == rows and timing["prompts_per_rank"] == _ranks(0, 2).shares(rows, 3)


def test_torchrun_finer_parts_equal_one_process(tiny_llama_dir, mixed_jsonl, tmp_path, one_thread):
    """``--dla-by-source top:2 --neurons 1`` on two CPU ranks: the extra pass's per-prompt arrays
    gathered as the study's, and ``top:2`` picked from every prompt's head means (rank 0's pick, sent
    to all): each rank's own prompts would pick other heads, so a per-rank pick could not pass."""
    from logitscope.results.decomposition import rank_heads

    out = tmp_path / "two"
    proc = torchrun(2, "-m", "logitscope", "run", "--model", str(tiny_llama_dir), "--prompts", str(mixed_jsonl),
                    "--out", str(out), "--device", "cpu", "--batch-size", "3", "--no-report", "--quiet",
                    "--dla-by-source", "top:2", "--neurons", "1")
    assert proc.returncode == 0, proc.stderr
    one = ls.run_study(str(mixed_jsonl), str(tiny_llama_dir), device="cpu", batch_size=3, dla_by_source="top:2",
                       neurons=1)
    one.save(tmp_path / "one", report=False)
    assert_same_outputs(tmp_path / "one", out, 2)
    saved = np.load(out / "per_prompt.npz")
    assert {"dla_by_source", "source_value_bias", "neurons"} <= set(saved)
    order = np.argsort(one.n_tokens, kind="stable")
    shares = [np.concatenate([order[0:3], order[9:]]), order[3:9]]  # batches 0, 3 on rank 0; 1, 2 on rank 1
    top = [(l, h) for l, h, _ in rank_heads(np.abs(one.head_results.mean(-1)), 2, 1)]
    assert list(one.source_heads) == top
    for rows in shares:
        assert [(l, h) for l, h, _ in rank_heads(np.abs(one.head_results[..., rows].mean(-1)), 2, 1)] != top


def test_torchrun_patch_equals_one_process(tiny_gpt2_dir, tmp_path, one_thread):
    """Three ranks, every head's patching grid, its attribution estimate and a mean ablation
    (per-template sums added over ranks): the same as one process; only rank 0 opened an output folder."""
    out, writers = tmp_path / "three", tmp_path / "writers.txt"
    proc = torchrun(3, str(HARNESS), "none", "-", str(writers), "--", "patch", "--model", str(tiny_gpt2_dir),
                    "--prompts", "ioi:20", "--out", str(out), "--device", "cpu", "--batch-size", "3",
                    "--what", "heads", "--ablate", "L1H0,L0H2", "--method", "both", "--no-report", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert writers.read_text() == "0\n"
    ls.run_patching("ioi:20", str(tiny_gpt2_dir), device="cpu", batch_size=3, what="heads",
                    ablate="L1H0,L0H2", method="both").save(tmp_path / "one", report=False)
    assert_same_outputs(tmp_path / "one", out, 3)


def _earlier_run(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"an": "earlier run"}\n')
    (out / "report.html").write_text("<p>earlier</p>\n")
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def _run_with_fault(fault: str, model: Path, out: Path, writers: Path, *extra: str) -> subprocess.CompletedProcess:
    return torchrun(2, str(HARNESS), fault, "1", str(writers), "--", "run", "--model", str(model), "--prompts", "seed",
                    "--out", str(out), "--device", "cpu", "--batch-size", "3", "--quiet", *extra)


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("logitscope: error:")]


def test_a_failing_rank_fails_the_run_and_writes_nothing(tiny_gpt2_dir, tmp_path):
    """Rank 1 runs out of memory in its first batch: one message, from rank 0, naming rank 1 and the
    cause; exit status 1; the earlier run's files as they were; no rank opened the output folder."""
    out, before = _earlier_run(tmp_path)
    writers = tmp_path / "writers.txt"
    proc = _run_with_fault("oom", tiny_gpt2_dir, out, writers)
    assert proc.returncode == 1
    [message] = _errors(proc)
    assert "rank 1 of 2 (local rank 1 on " in message and "failed: OutOfMemoryError: CUDA out of memory" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not writers.exists()


@pytest.mark.slow
@pytest.mark.parametrize("fault,expected,status", [
    ("kill", "rank 1 of 2 (local rank 1 on {host}, pid {pid}) is no longer running: it was killed or crashed", 1),
    ("hang", "rank 1 of 2 (local rank 1 on {host}, pid {pid}) did not reach the sum of the token lens's probabilities within 6 s", 1),
    ("device", "rank 1 of 2 (local rank 1 on {host}, pid {pid}) failed: --device cpu: local rank 1 has no GPU", 2),
])
def test_a_killed_hung_or_misplaced_rank_fails_the_run(fault, expected, status, tiny_gpt2_dir, tmp_path):
    """Killed (torchrun stops rank 0), hung (the collectives' timeout), or failing before the study (its
    model load; rank 0 stops at its first batch, not after its share): one message from rank 0 naming
    the rank, nothing written, no rank left running."""
    import re

    out, before = _earlier_run(tmp_path)
    writers = tmp_path / "writers.txt"
    proc = _run_with_fault(fault, tiny_gpt2_dir, out, writers, *(["--dist-timeout", "6"] if fault == "hang" else []))
    assert proc.returncode != 0
    errors = _errors(proc)
    assert len(errors) == 1, proc.stderr[-4000:]  # the whole story when it is not one message (seen once, loaded machine)
    [message] = errors
    pattern = re.escape(expected).replace(r"\{host\}", r"\S+").replace(r"\{pid\}", r"\d+")
    assert re.search(pattern, message), message
    assert f"exitcode  : {status}" in proc.stderr or fault == "kill"  # torchrun's summary: rank 1's own status
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not writers.exists()


@pytest.mark.slow
def test_the_api_in_a_process_group_equals_one_process(tiny_gpt2_dir, mixed_jsonl, tmp_path, one_thread):
    """The Python API in a program that initialised the process group itself, three ranks: the study
    of the seed prompts, of a mixed-length JSONL and of ioi:500, the seed's grid of every head, and an
    Experiment's study, study again, patch and ablate (and patch before study), each as one process."""
    sys.path.insert(0, str(HERE))
    from dist_harness import api_runs

    out, writers = tmp_path / "three", tmp_path / "writers.txt"
    proc = torchrun(3, str(HARNESS), "api", "-", str(writers), "--", str(out), str(tiny_gpt2_dir), str(mixed_jsonl))
    assert proc.returncode == 0, proc.stderr
    runs = list(api_runs(str(tiny_gpt2_dir), str(mixed_jsonl)))
    assert writers.read_text() == "0\n" * len(runs) and len(runs) == 10
    for name, result in runs:
        result.save(tmp_path / "one" / name, report=False)
        timing = assert_same_outputs(tmp_path / "one" / name, out / name, 3)
        if name == "ioi500":
            assert timing["prompts_per_rank"] == [192, 180, 128]  # 8 batches of 64: ranks 0 1 2 2 1 0 0 1


@pytest.mark.slow
def test_two_nodes_by_rendezvous_equal_one_process(tiny_gpt2_dir, tmp_path, one_thread):
    """``torchrun --nnodes 2`` with the c10d rendezvous, one rank a node (two launchers on this
    machine stand in for two nodes): ioi:500 as one process computes it."""
    port = _free_port()
    launcher = ("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test")
    args = ["-m", "logitscope", "run", "--model", str(tiny_gpt2_dir), "--prompts", "ioi:500", "--out", str(tmp_path / "two"),
            "--device", "cpu", "--batch-size", "64", "--no-report", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", *launcher]
    nodes = [subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=HERE.parent) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs
    assert sum(o.count("wrote ") for o, _ in outputs) == 1
    ls.run_study("ioi:500", str(tiny_gpt2_dir), device="cpu", batch_size=64).save(tmp_path / "one", report=False)
    assert assert_same_outputs(tmp_path / "one", tmp_path / "two", 2)["prompts_per_rank"] == [244, 256]


# ------------------------------------------------------------------------------------ without torchrun
def _ranks(rank: int, world: int) -> distributed.Ranks:
    return distributed.Ranks(rank, world, rank, world, group=None)


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("n,batch_size", [(1, 4), (7, 3), (500, 64), (64, 64)])
def test_shards_are_the_single_process_batches(world, n, batch_size):
    """Every batch goes to one rank; each rank's prompts, re-cut in batches, are those batches."""
    order = np.random.default_rng(n).permutation(n)
    batches = [order[s : s + batch_size].tolist() for s in range(0, n, batch_size)]
    seen = []
    for r in range(world):
        rows = _ranks(r, world).shard(order, batch_size)
        mine = [rows[s : s + batch_size].tolist() for s in range(0, len(rows), batch_size)]
        assert mine == [b for i, b in enumerate(batches) if _ranks(0, world).owner(i) == r]
        assert len(rows) == _ranks(r, world).shares(n, batch_size)[r]
        seen += mine
    assert sorted(map(tuple, seen)) == sorted(map(tuple, batches))


def test_batches_are_dealt_in_snake_order():
    assert [_ranks(0, 3).owner(i) for i in range(9)] == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert _ranks(0, 2).shares(10_000, 100) == [5000, 5000]


def test_a_replica_takes_an_equal_share_of_the_gpus():
    assert [distributed.replica_gpus(r, 4, 8) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert distributed.replica_gpus(0, 1, 8) == list(range(8))
    with pytest.raises(ArgumentError, match=r"8 GPUs do not divide among 3 ranks; start 1, 2, 4, 8 processes per node"):
        distributed.replica_gpus(0, 3, 8)
    with pytest.raises(ArgumentError, match="needs GPUs"):
        distributed.replica_gpus(0, 2, 0)


def test_a_device_map_under_several_ranks_spreads_each_replica_over_its_gpus(monkeypatch):
    """--device-map with data parallelism, on this GPU-less machine: no GPUs is an error naming the
    flag; 8 GPUs (pretended) among 3 ranks do not divide; among 4, rank 1's replica gets GPUs 2 and 3."""
    from logitscope.cli import _in_flags

    with pytest.raises(ArgumentError, match="a device map needs GPUs, and this node has none") as e:
        distributed.placement(None, "auto", distributed.Ranks(0, 2, 0, 2, group=None))
    assert _in_flags(e.value).startswith("--device-map auto: a device map needs GPUs")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    with pytest.raises(ArgumentError, match=r"device_map='balanced': this node's 8 GPUs do not divide among 3 ranks"):
        distributed.placement(None, "balanced", distributed.Ranks(1, 3, 1, 3, group=None))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (10 + i, 100))
    assert distributed.placement(None, "auto", distributed.Ranks(1, 4, 1, 4, group=None)) == {
        "device": None, "device_map": "auto", "max_memory": {2: 12, 3: 13}}


def test_each_rank_takes_its_own_gpu(monkeypatch):
    assert distributed.rank_device("cpu", 3, 4) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.rank_device("auto", 1, 2) == torch.device("cuda", 1)
    assert distributed.rank_device("cuda", 0, 2) == torch.device("cuda", 0)
    assert distributed.rank_device("cuda:1", 0, 1) == torch.device("cuda", 1)  # one rank a node: as asked
    with pytest.raises(ArgumentError, match=r"local rank 2 has no GPU of its own: this node has 2; start at most 2"):
        distributed.rank_device("auto", 2, 3)
    with pytest.raises(ArgumentError, match=r"each rank takes its own GPU"):
        distributed.rank_device("cuda:1", 0, 2)


def test_outside_a_process_group_nothing_changes():
    assert distributed.current() is None
    assert distributed.placement("cpu", None, None) == {"device": "cpu", "device_map": None}


def test_an_argument_error_travels_between_ranks():
    """A rank's error reaches rank 0 pickled; ours keep what the command line needs to name its flag."""
    e = pickle.loads(pickle.dumps(ArgumentError("batch_size", 0, "must be at least 1", fix=8)))
    assert (e.argument, e.value, e.problem, e.fix, str(e)) == ("batch_size", 0, "must be at least 1", 8,
                                                             "batch_size=0: must be at least 1; pass batch_size=8")
    f = distributed.RankFailure("", rank=1, world_size=3, where="local rank 1 on n1, pid 7", cause=e)
    assert f.describe() == "rank 1 of 3 (local rank 1 on n1, pid 7) failed: batch_size=0: must be at least 1; pass batch_size=8"
    assert f.user_error


def test_path_patching_and_circuits_say_they_run_in_one_process(monkeypatch):
    """In a process group, senders or a circuit stop every rank before any model load, with the way out."""
    from logitscope.methods.patching.options import one_process_only as _one_process_only

    _one_process_only(senders="L0H0", circuit=None)  # one process: fine
    monkeypatch.setattr(distributed, "current", lambda: _ranks(0, 2))
    _one_process_only(senders=None, circuit=None)
    with pytest.raises(ArgumentError, match=r"senders='L0H0': path patching and circuit checks run in one process only.*"
                                            r"without torchrun"):
        _one_process_only(senders="L0H0", circuit=None)


class _Polled(distributed.Ranks):
    """Rank 0 of one, with no process group: counts its polls; ``fail_at``: the poll that finds a
    failed rank (raises, as :meth:`~logitscope.engine.distributed.Ranks.poll` does)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(0, 1, 0, 1, group=None)
        self.polls, self.fail_at = 0, fail_at

    def poll(self, every_s: float = 0.5) -> None:
        self.polls += 1
        if self.polls == self.fail_at:
            raise RuntimeError("rank 1 failed")


def test_the_finer_pass_polls_for_a_failed_rank_between_batches():
    """DLA by source position and by neuron (its own pass) asks after the other ranks once a batch,
    as the main pass does, so a failed rank stops it at the next batch, not at the gather after this
    rank's whole share. In process, on a tiny GPT-2: 7 prompts in batches of 3 are 3 polls."""
    from oracle import gpt2_tokenizer, make_hf_model

    from logitscope.engine.core import Engine
    from logitscope.engine.setup import as_loaded
    from logitscope.inputs.encode import encode_prompts
    from logitscope.methods.dla import _finer_parts

    lm = as_loaded(make_hf_model("gpt2", size="tiny", seed=1), gpt2_tokenizer(), device="cpu", dtype="float32",
                   device_map=None)
    prompts = ls.builtin_prompts("arena")[:7]
    enc = encode_prompts(prompts, lm)
    rows = np.argsort(enc.lengths, kind="stable")
    ranks = _Polled()
    done = _finer_parts(Engine(lm), enc, rows, 3, [(0, 0)], 0, ranks)
    assert ranks.polls == 3 and done["neurons"].shape[-1] == 7
    with pytest.raises(RuntimeError, match="rank 1 failed"):
        _finer_parts(Engine(lm), enc, rows, 3, [(0, 0)], 0, _Polled(fail_at=2))
