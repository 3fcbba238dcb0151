"""Bit-for-bit guard of the forward machineries (issue 20, step 0 of the engine unification).

Every value the study's observed pass (``Recorder``, ``PartsRecorder``, the token lens), the
patched-run ``Engine`` (``record`` / ``patched``; logit difference and ``kl``), ``gradient_run``,
the user-hook passes (``intervene``, ``activations``) and the edge engine (``EdgeEngine.scores`` /
``evaluate``) produce on three short prompts, per tiny random-weight
family, must equal the values stored in ``tests/data/golden/engine_bits.npz`` BIT FOR BIT: same
dtype, same shape, same bytes (so one ulp, a ``-0.0`` for a ``0.0`` or a new NaN payload fails).
Refactors that only move code must leave every one of them as it is; a change meant to alter
numbers regenerates the file in its own commit, saying why.

Regenerate (from the repository root, with the code whose numbers are the reference):

    PYTHONPATH=$PWD/src .venv/bin/python tests/test_engine_bits.py --regen

Bit identity holds for one build of the numerical stack on one kind of CPU: the file records the
torch and transformers versions and torch's CPU capability (the SIMD kernels it dispatches to);
where any differs the tests skip and say which. The committed file: torch 2.13.0+cpu,
transformers 5.25.0, CPU capability AVX512, written by the code of main @ 58cae56. Everything runs
on the CPU in float32 with one thread and float32 matmul precision "highest" (a thread count can
change how a reduction is split; both are set here, then restored).

Models are the suite's own tiny checkpoints (``oracle.make_hf_model(family, size="tiny", seed=3)``,
with a vocabulary of 512), saved and read back through ``logitscope.load_model`` as a user's model
is (SDPA attention where the family has it; GPT-Neo eager).

Not guarded here: torchrun ranks, bf16, CUDA.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import transformers

FILE = Path(__file__).parent / "data" / "golden" / "engine_bits.npz"
FAMILIES = ("gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3", "olmo2",
            "gemma", "gemma2", "gemma3")  # every family tests/oracle.py builds

VOCAB = 512  # small: the token lens keeps a [L + 1, VOCAB] sum
# Three prompts of different lengths, right-padded with 0 (answers at 8, 6, 5: not one column).
# Clean and corrupted agree before START, so patched runs can start there (a suffix run).
B, T, START = 3, 9, 3
END = torch.tensor([8, 6, 5])
CORRECT, INCORRECT = torch.tensor([11, 12, 13]), torch.tensor([14, 15, 16])
SETS_C = torch.tensor([[11, 17], [12, -1], [13, 18]])  # answer sets ([B, K], -1 pads)
SETS_I = torch.tensor([[14, -1], [15, 19], [16, -1]])
Z_SRC_HEADS = (0, 3)  # group g of a head patch replaces head Z_SRC_HEADS[g]
GRAD_POINTS = [("resid_pre", 1), ("z", 0), ("mlp_out", 1)]


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1, VOCAB, (B, T), generator=g)
    corrupted = torch.randint(1, VOCAB, (B, T), generator=g)
    corrupted[:, :START] = clean[:, :START]
    for b, e in enumerate(END.tolist()):
        clean[b, e + 1 :] = corrupted[b, e + 1 :] = 0
    return clean, corrupted


def stack_versions() -> dict[str, str]:
    """What bit identity depends on besides the code."""
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@contextmanager
def _pinned() -> Iterator[None]:
    """One thread and full float32 matmuls (another test may have changed either), then as before."""
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    torch.set_num_threads(1)
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().copy()


# ---------------------------------------------------------------------- what is recorded
def _recorder(lm, clean: torch.Tensor) -> dict[str, np.ndarray]:
    """Every field of BatchScalars for one batch (single answers, then answer sets), as the study
    runs it (study_mode, the Recorder's hooks, equivalent kernels), and the token lens's sum."""
    from logitscope.engine.capture import Recorder
    from logitscope.models.kernels import equivalent_kernels
    from logitscope.models.state import study_mode

    out: dict[str, np.ndarray] = {}
    with study_mode(lm.model):
        with Recorder(lm, lens_top_k=3) as rec, equivalent_kernels(lm.model):
            single = rec.run_batch(clean, END, CORRECT, INCORRECT)
            sets = rec.run_batch(clean, END, SETS_C, SETS_I)
        for tag, scalars in (("single", single), ("sets", sets)):
            for f in dataclasses.fields(scalars):
                value = getattr(scalars, f.name)
                if value is not None:  # a field turning None (or no longer None) changes the key set
                    out[f"{tag}.{f.name}"] = _np(value)
        out["lens_prob_sum"] = _np(rec.token_lens.prob_sum)
    return out


def _parts(lm, clean: torch.Tensor) -> dict[str, np.ndarray]:
    """PartsRecorder's DLA by source position of two heads and by neuron of the last MLP (none for
    a mixture of experts), as the study's finer pass runs it."""
    from logitscope.engine.parts import PartsRecorder
    from logitscope.models.state import study_mode

    moe = lm.adapter.experts(lm.adapter.blocks(lm.model)[1]) is not None
    with study_mode(lm.model), torch.inference_mode():
        parts = PartsRecorder(lm, [(0, 1), (1, 2)], None if moe else 1, T).run_batch(clean, END, CORRECT, INCORRECT)
    return {f.name: _np(getattr(parts, f.name)) for f in dataclasses.fields(parts) if getattr(parts, f.name) is not None}


def _replace_heads(src: torch.Tensor, start: int):
    """Group g's rows get head Z_SRC_HEADS[g] of ``src`` (positions ``start:``)."""

    def hook(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        for g, h in enumerate(Z_SRC_HEADS):
            z[g * B : (g + 1) * B, :, h] = src[:, start:, h]
        return z

    return hook


def _replace_resid(src: torch.Tensor, start: int):
    """Group 0: the whole residual stream from ``src``; group 1: only each row's answer position."""

    def edit(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:B] = src[:, start:]
        rows = torch.arange(B)
        h[B + rows, END - start] = src[rows, END]
        return h

    return edit


def _engine(lm) -> dict[str, dict[str, np.ndarray]]:
    """Engine.record (clean and corrupted: metric, layer 1's resid_pre, z at both layers) and
    Engine.patched (heads' z at layer 0 and 1, resid_pre at layer 1; from 0 and from START where the
    family allows suffix runs)."""
    from logitscope.engine.patched import Engine

    clean, corrupted = _pairs()
    engine = Engine(lm)
    acts = [("z", 0), ("z", 1)]
    a = engine.record(clean, END, CORRECT, INCORRECT, acts=acts)
    base = engine.record(corrupted, END, CORRECT, INCORRECT, acts=acts, keep_kv=True)
    record: dict[str, np.ndarray] = {}
    for tag, run in (("clean", a), ("corrupted", base)):
        record[f"{tag}.value"] = _np(run.value)
        record[f"{tag}.resid_pre.1"] = _np(run.resid_pre[1])  # layer 0's is the embedding
        for (name, layer), x in sorted(run.acts.items()):
            record[f"{tag}.{name}.{layer}"] = _np(x)
    record["suffix_ok"] = np.array(base.suffix_ok)  # its keys and values are guarded by the suffix runs
    patched: dict[str, np.ndarray] = {}
    common = dict(groups=2, end=END, correct=CORRECT, incorrect=INCORRECT)
    for start in (0, START) if base.suffix_ok else (0,):
        for layer in (0, 1):
            hooks = {("z", layer): _replace_heads(a.acts[("z", layer)], start)}
            patched[f"z.{layer}.start{start}"] = _np(engine.patched(base, layer, hooks=hooks, start=start, **common))
        edit = _replace_resid(a.resid_pre[1], start)
        patched[f"resid_pre.1.start{start}"] = _np(engine.patched(base, 1, hooks={}, start=start, edit_input=edit,
                                                                  **common))
        patched[f"nothing.0.start{start}"] = _np(engine.patched(base, 0, hooks={}, start=start, **common))
    return {"record": record, "patched": patched}


def _gradient(lm) -> dict[str, np.ndarray]:
    """gradient_run on the corrupted prompts: the metric and the gradients at 3 points (the
    activations it returns are the forward pass's, which the metric and gradients depend on)."""
    from logitscope.engine.patched import Engine
    from logitscope.methods.attribution import gradient_run

    _, corrupted = _pairs()
    diff, _, grads = gradient_run(Engine(lm), corrupted, END, CORRECT, INCORRECT, GRAD_POINTS)
    out = {"metric": _np(diff)}
    for name, layer in GRAD_POINTS:
        out[f"grad.{name}.{layer}"] = _np(grads[(name, layer)])
    return out


def _kl(lm) -> dict[str, np.ndarray]:
    """A metric read from the full logits (``kl`` against the clean run): Engine.record with a
    reference run, a head patch from 0 and from START, and gradient_run with the clean logits."""
    from logitscope.engine.patched import Engine
    from logitscope.methods.attribution import gradient_run

    clean, corrupted = _pairs()
    engine = Engine(lm, "kl")
    a = engine.record(clean, END, CORRECT, INCORRECT, acts=[("z", 0)])
    base = engine.record(corrupted, END, CORRECT, INCORRECT, keep_kv=True, reference=a)
    out = {"clean.value": _np(a.value), "clean.reference": _np(a.reference), "corrupted.value": _np(base.value)}
    for start in (0, START) if base.suffix_ok else (0,):
        hooks = {("z", 0): _replace_heads(a.acts[("z", 0)], start)}
        out[f"patched.z.0.start{start}"] = _np(engine.patched(base, 0, groups=2, hooks=hooks, end=END, correct=CORRECT,
                                                              incorrect=INCORRECT, start=start))
    diff, _, grads = gradient_run(engine, corrupted, END, CORRECT, INCORRECT, [("z", 1)], a.reference)
    out["gradient.metric"], out["gradient.grad.z.1"] = _np(diff), _np(grads[("z", 1)])
    return out


def _zero_head_1(z: torch.Tensor, hook) -> torch.Tensor:
    z = z.clone()
    z[:, :, 1] = 0
    return z


def _hooks(lm) -> dict[str, np.ndarray]:
    """The user-hook passes (methods/hooks.py): intervene (head 0.1's z zeroed; the logit difference
    and kl) and activations at the answer position, in batches of 2."""
    from logitscope.inputs.encode import Encoded
    from logitscope.methods.hooks import activations, intervene

    clean, _ = _pairs()
    enc = Encoded([r[: int(e) + 1].tolist() for r, e in zip(clean, END)], CORRECT.numpy(), INCORRECT.numpy())
    out: dict[str, np.ndarray] = {}
    for metric in (None, "kl"):
        res = intervene(lm, enc, {"blocks.0.attn.hook_z": _zero_head_1}, metric=metric, batch_size=2)
        out[f"intervene.{metric or 'logit_diff'}.hooked"], out[f"intervene.{metric or 'logit_diff'}.clean"] = (
            res.hooked, res.clean)
    names = ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"]
    acts = activations(lm, enc, names, batch_size=2)
    for name in names:
        out[f"activations.{name}"] = _np(acts[name])
    return out


def _edges(lm) -> dict[str, np.ndarray]:
    """EdgeEngine scores (eap; eap-ig-inputs with 2 steps; eap of prob-diff) and one evaluate of the
    top-third circuit by |eap score| (batches of 2: one full batch and one of one prompt)."""
    from logitscope.methods.edges.attribute import EdgeData, EdgeEngine

    clean, corrupted = _pairs()
    n = [int(e) + 1 for e in END]
    data = EdgeData([r[:k].tolist() for r, k in zip(clean, n)], [r[:k].tolist() for r, k in zip(corrupted, n)],
                    CORRECT.numpy(), INCORRECT.numpy())
    eng = EdgeEngine(lm, data, batch_size=2)
    eap = eng.scores("eap")
    ig = eng.scores("eap-ig-inputs", steps=2)
    real = eng.graph.real
    magnitude = torch.where(real, eap.abs(), torch.tensor(-1.0, dtype=eap.dtype))
    k = max(1, int(real.sum()) // 3)
    circuit = torch.zeros_like(real)
    circuit.view(-1)[magnitude.view(-1).topk(k).indices] = True
    m_circuit, m_clean = eng.evaluate([circuit])
    prob = EdgeEngine(lm, data, metric="prob-diff", batch_size=2).scores("eap")
    return {"eap": _np(eap), "eap_ig_inputs_2": _np(ig), "circuit": _np(circuit), "evaluate.circuit": m_circuit,
            "evaluate.clean": m_clean, "eap_prob_diff": _np(prob)}


def load(family: str):
    """``family``'s tiny checkpoint, saved and read back by ``logitscope.load_model``, and the
    folder it was saved in (kept as long as the model is)."""
    import logitscope as ls
    from oracle import make_hf_model, save_checkpoint

    folder = tempfile.TemporaryDirectory(prefix=f"engine-bits-{family}-")
    with _pinned():
        hf = make_hf_model(family, size="tiny", seed=3, vocab_size=VOCAB)
    hf.config.bos_token_id = hf.config.eos_token_id = None  # GPT-2's 50256 is outside the small vocabulary
    hf.generation_config.bos_token_id = hf.generation_config.eos_token_id = None
    return ls.load_model(str(save_checkpoint(hf, folder.name)), device="cpu"), folder


PART_FNS = {
    "recorder": lambda lm: _recorder(lm, _pairs()[0]),
    "parts": lambda lm: _parts(lm, _pairs()[0]),
    "record": lambda lm: _engine(lm)["record"],
    "patched": lambda lm: _engine(lm)["patched"],
    "gradient": _gradient,
    "kl": _kl,
    "hooks": _hooks,
    "edges": _edges,
}
PARTS = tuple(PART_FNS)


def compute(lm, part: str) -> dict[str, np.ndarray]:
    """Every guarded value of ``part`` on ``lm``, keyed by name (each part alone: none depends on
    another having run)."""
    with _pinned():
        return PART_FNS[part](lm)


# ---------------------------------------------------------------------- the test
@functools.lru_cache(maxsize=None)
def _stored() -> dict[str, np.ndarray]:
    with np.load(FILE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=1)  # the families run one after the other: keep only the current one
def _model(family: str):
    return load(family)


def _skip_unless_same_stack() -> None:
    stored = _stored()
    for name, now in stack_versions().items():
        then = str(stored[f"_stack/{name}"])
        if then != now:
            pytest.skip(f"{FILE.name} was written with {name} {then}, this is {now}: bit identity holds for one "
                        f"build on one kind of CPU (regenerate it with the reference code: see this file's top)")


def _ulps(a: np.ndarray, b: np.ndarray) -> str:
    if a.dtype.kind != "f":
        return f"{int((a != b).sum())} of {a.size} differ"
    ints = {4: np.int32, 8: np.int64, 2: np.int16}[a.dtype.itemsize]
    gap = np.abs(a.view(ints).astype(np.int64) - b.view(ints).astype(np.int64))
    return (f"{int((gap != 0).sum())} of {a.size} differ, by up to {int(gap.max())} ulp "
            f"(max |diff| {float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)))):.3g})")


def bit_differences(stored: dict[str, np.ndarray], now: dict[str, np.ndarray]) -> list[str]:
    """Every way ``now`` is not bit-identical to ``stored``: keys, dtypes, shapes, bytes."""
    problems = [f"{k}: stored, no longer produced" for k in sorted(set(stored) - set(now))]
    problems += [f"{k}: produced, not stored" for k in sorted(set(now) - set(stored))]
    for k in sorted(set(stored) & set(now)):
        a, b = stored[k], now[k]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{k}: {a.dtype}{list(a.shape)} stored, {b.dtype}{list(b.shape)} now")
        elif a.tobytes() != b.tobytes():
            problems.append(f"{k}: {_ulps(b, a)}")
    return problems


@pytest.mark.parametrize("part", PARTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_bit_identical(family: str, part: str) -> None:
    _skip_unless_same_stack()
    prefix = f"{family}/{part}/"
    stored = {k: v for k, v in _stored().items() if k.startswith(prefix)}
    now = {f"{prefix}{k}": v for k, v in compute(_model(family)[0], part).items()}
    assert stored, f"{FILE.name} holds nothing for {prefix}"
    assert not (problems := bit_differences(stored, now)), "values moved:\n" + "\n".join(problems)


def test_the_comparison_sees_one_ulp() -> None:
    """The check can fail: one value one ulp away, a sign of zero, a dtype, a missing key."""
    a = {"x": np.array([1.0, 0.0, 2.5], dtype=np.float32)}
    assert bit_differences(a, {"x": a["x"].copy()}) == []
    one_ulp = a["x"].copy()
    one_ulp[2] = np.nextafter(one_ulp[2], np.float32(3))
    assert bit_differences(a, {"x": one_ulp}) == ["x: 1 of 3 differ, by up to 1 ulp (max |diff| 2.38e-07)"]
    assert bit_differences(a, {"x": np.array([1.0, -0.0, 2.5], dtype=np.float32)})
    assert bit_differences(a, {"x": a["x"].astype(np.float64)})
    assert bit_differences(a, {}) == ["x: stored, no longer produced"]


def test_the_file_covers_every_family_and_part() -> None:
    names = {tuple(k.split("/")[:2]) for k in _stored() if not k.startswith("_stack/")}
    assert names == {(f, p) for f in FAMILIES for p in PARTS}
    assert FILE.stat().st_size < 2 * 2**20


def regenerate() -> None:
    """Write FILE from the code on PYTHONPATH (see the module docstring)."""
    arrays = {f"_stack/{k}": np.array(v) for k, v in stack_versions().items()}
    for family in FAMILIES:
        print(f"{family} ...", flush=True)
        lm, _folder = load(family)
        arrays.update({f"{family}/{part}/{k}": v for part in PARTS for k, v in compute(lm, part).items()})
    FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FILE, **arrays)
    print(f"wrote {FILE} ({FILE.stat().st_size} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        sys.exit("usage: python tests/test_engine_bits.py --regen")
    sys.path.insert(0, str(Path(__file__).parent))
    regenerate()
