"""A study's files: writing ``results.json`` and its companions, and reading them back.

An output folder holds

- ``results.json``: every mean with its 95% interval, labels, the prompts with their per-prompt
  numbers, and what was run (schema :data:`RESULTS_SCHEMA_VERSION`);
- ``per_prompt_heads.npy``: ``[n_prompts, n_layers, n_heads]`` float32 head attributions;
- ``per_prompt.npz``: every other per-prompt array, prompt axis first, float32 (the study computes
  in float32, so nothing is lost): what reopening the study needs;
- ``attention.npy``: ``[n_heads_kept, T, T]`` float32 attention patterns of the heads named in
  ``results.json``'s ``attention.heads``;
- ``report.html`` and, if asked, ``per_prompt.csv``.

:func:`read_study` turns a folder back into the fields of a :class:`~logitscope.results.study.StudyData`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from logitscope.inputs.circuits import known_circuit
from logitscope.errors import InputError
from logitscope.results.io import atomic_output_dir, json_text
from logitscope.labels import head_label, parse_head
from logitscope.results.study import AttentionView, StudyData
from logitscope.results.tables import meta_of_row, prompt_rows, write_csv
from logitscope.inputs.prompt import Prompt

# 2: per_prompt.npz and attention.npy beside results.json, which gained parallel_attn_mlp, top_k,
# attention.heads and top_heads.n_positive / n_negative (version 1 files cannot be reopened).
RESULTS_SCHEMA_VERSION = 2
OUTPUT_FILES = ("results.json", "per_prompt_heads.npy", "per_prompt.npz", "attention.npy", "per_prompt.csv",
                "report.html")

# per_prompt.npz: the result's per-prompt arrays other than the heads (those are per_prompt_heads.npy).
_PER_PROMPT = ("logit_diff", "prob_correct", "prob_incorrect", "direct", "scale", "embed", "pos_embed", "attn_out",
               "mlp_out", "attn_bias", "mlp_bias", "final_norm_bias", "lens_recomputed", "logit_diff_softcapped",
               "experts", "expert_routing") + ("lens_top_ids", "lens_top_probs", "dla_by_source", "source_value_bias",
                                               "source_by_role", "neurons")
# Those only some models have (learned positions, a final soft-cap, mixtures of experts), or only
# some studies (the token lens, DLA by source position and by neuron).
_OPTIONAL = ("pos_embed", "lens_recomputed", "logit_diff_softcapped", "experts", "expert_routing", "lens_top_ids",
             "lens_top_probs", "dla_by_source", "source_value_bias", "source_by_role", "neurons")
# Number of top neurons listed in results.json (all neurons' means are there too).
TOP_NEURONS = 10

# results.json's keys that are not StudyData.extra.
_DOCUMENT_KEYS = frozenset({
    "schema_version", "logitscope_version", "created", "model", "family", "norm", "parallel_attn_mlp", "device",
    "dtype", "n_layers", "n_heads", "n_prompts", "prepend_bos", "seed", "top_k", "prompts", "logit_diff",
    "dla_check", "logit_lens", "layer_attribution", "logit_lens_recomputed", "head_attribution", "top_heads",
    "decomposition", "by_template", "attention", "timing", "logit_diff_softcapped", "expert_attribution",
    "token_lens", "dla_by_source", "neuron_attribution",
})


# ---------------------------------------------------------------------------------------------- writing
def _tolist(a: Any) -> Any:
    return np.asarray(a, dtype=np.float64).tolist()


def top_head_rows(data: StudyData, sign: int) -> list[dict[str, Any]]:
    """results.json's ``top_heads.positive`` (``sign=1``) or ``.negative``: each of
    :meth:`StudyData.top_heads` with its label, interval and, on GPT-2 small, its IOI class."""
    circuit = known_circuit(data) or {}
    lo, hi = data.intervals["head_attribution"]
    rows = []
    for layer, head, value in data.top_heads(sign=sign):
        row = {"layer": layer, "head": head, "name": head_label(layer, head), "value": value,
               "ci95_low": float(lo[layer, head]), "ci95_high": float(hi[layer, head])}
        if circuit:
            row["ioi_class"] = circuit.get((layer, head))
        rows.append(row)
    return rows


def results_document(data: StudyData) -> dict[str, Any]:
    """The ``results.json`` document (means over prompts, divided by the number of prompts as
    the seed does, with 95% bootstrap intervals)."""
    ci = data.intervals

    def block(values: np.ndarray, key: str, **extra: Any) -> dict[str, Any]:
        lo, hi = ci[key]
        return {**extra, "values": _tolist(values), "ci95_low": _tolist(lo), "ci95_high": _tolist(hi)}

    lo, hi = ci["logit_diff"]
    group_names, groups = data.decomposition_groups_per_prompt
    doc: dict[str, Any] = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "logitscope_version": data.version,
        "created": data.created,
        "model": data.model,
        "family": data.family,
        "norm": data.norm,
        "parallel_attn_mlp": data.parallel_attn_mlp,
        "device": data.device,
        "dtype": data.dtype,
        "n_layers": data.n_layers,
        "n_heads": data.n_heads,
        "n_prompts": data.n_prompts,
        "prepend_bos": data.prepend_bos,
        "seed": data.seed,
        "top_k": data.top_k,
        "prompts": prompt_rows(data),
        "logit_diff": {
            "mean": data.mean_logit_diff,
            "ci95_low": float(lo),
            "ci95_high": float(hi),
            "per_prompt": _tolist(data.logit_diff),
            "frac_correct": float((data.logit_diff > 0).mean()),
        },
        "dla_check": {"direct": float(data.direct.mean()), "logit_diff": data.mean_logit_diff},
        "logit_lens": block(data.logit_lens, "logit_lens", labels=data.logit_lens_labels),
        "layer_attribution": block(data.layer_attribution, "layer_attribution", labels=data.layer_labels),
        **(
            {"logit_lens_recomputed": block(data.lens_recomputed.mean(-1), "logit_lens_recomputed",
                                            labels=data.logit_lens_labels)}
            if data.lens_recomputed is not None else {}
        ),
        "head_attribution": block(data.head_attribution, "head_attribution"),
        "top_heads": {
            "positive": top_head_rows(data, 1),
            "negative": top_head_rows(data, -1),
            "n_positive": data.n_signed_heads(1),
            "n_negative": data.n_signed_heads(-1),
        },
        "decomposition": block(
            data.decomposition_per_prompt.mean(-1),
            "decomposition",
            labels=data.decomposition_labels,
            max_abs_error=float(np.abs(data.decomposition_error).max()),
            groups=block(groups.mean(-1), "decomposition_groups", labels=group_names),
        ),
        "by_template": data.by_template(),
    }
    if data.logit_diff_softcapped is not None:  # Gemma 2: the model's own, capped, logits
        doc["logit_diff_softcapped"] = {
            "mean": float(data.logit_diff_softcapped.mean()),
            "per_prompt": _tolist(data.logit_diff_softcapped),
            "frac_correct": float((data.logit_diff_softcapped > 0).mean()),
        }
    if data.experts is not None:
        doc["expert_attribution"] = expert_block(data)
    if data.lens_top_ids is not None:
        doc["token_lens"] = token_lens_block(data)
    if data.source_by_role is not None:
        doc["dla_by_source"] = source_block(data)
    if data.neurons is not None:
        doc["neuron_attribution"] = neuron_block(data)
    if data.attention is not None:
        doc["attention"] = {
            "prompt_index": data.attention.prompt_index,
            "str_tokens": list(data.attention.str_tokens),
            "heads": [head_label(*h) for h in data.attention.kept],
        }
    if data.timing:
        doc["timing"] = dict(data.timing)
    doc.update(data.extra)
    return doc


def expert_block(data: StudyData) -> dict[str, Any]:
    """results.json ``expert_attribution`` (mixtures of experts): per ``[layer][expert]`` the mean
    attribution over prompts (``values``) with its 95% interval, the mean routing weight, the
    fraction of prompts routed to it at the answer position, and the top experts of each sign."""
    lo, hi = data.intervals["expert_attribution"]

    def rows(sign: int) -> list[dict[str, Any]]:
        return [{"layer": l, "expert": e, "name": f"L{l}E{e}", "value": v} for l, e, v in data.top_experts(sign=sign)]

    return {
        "values": _tolist(data.experts.mean(-1)),
        "ci95_low": _tolist(lo),
        "ci95_high": _tolist(hi),
        "routing_weight": _tolist(data.expert_routing.mean(-1)),
        "frac_routed": _tolist((data.expert_routing > 0).mean(-1)),
        "top": {"positive": rows(1), "negative": rows(-1)},
    }


def token_lens_block(data: StudyData) -> dict[str, Any]:
    """results.json ``token_lens``: the top-k tokens of the probabilities averaged over prompts at
    each point (per-prompt top-k ids and probabilities are in per_prompt.npz)."""
    tok = data.lens_tokens
    return {
        "labels": data.token_lens_labels,
        "k": int(data.lens_top_ids.shape[1]),
        "normalization": "final norm applied afresh to each point (accumulated_resid(apply_ln=True)), "
                         "then W_U, b_U and any final soft-cap; softmax over the vocabulary",
        "mean_ids": data.lens_mean_ids.tolist(),
        "mean_tokens": [[tok[i] for i in row] for row in data.lens_mean_ids.tolist()],
        "mean_probs": _tolist(data.lens_mean_probs),
        "tokens": {str(i): t for i, t in sorted(tok.items())},
    }


def source_block(data: StudyData) -> dict[str, Any]:
    """results.json ``dla_by_source``: each head's attribution split by named source position,
    mean over prompts with 95% intervals; the rows add up to ``head_total`` (the head's
    ``head_attribution``); ``value_bias`` is the head's value-bias part (inside ``attn_bias``)."""
    lo, hi = data.intervals["dla_by_source"]
    blo, bhi = data.intervals["source_value_bias"]
    return {
        "heads": data.source_head_labels,
        "positions": list(data.source_roles),
        "values": _tolist(data.source_by_role.mean(-1)),
        "ci95_low": _tolist(lo),
        "ci95_high": _tolist(hi),
        "head_total": [float(data.head_results[l, h].mean()) for l, h in data.source_heads],
        "value_bias": {"values": _tolist(data.source_value_bias.mean(-1)), "ci95_low": _tolist(blo),
                       "ci95_high": _tolist(bhi)},
    }


def neuron_block(data: StudyData) -> dict[str, Any]:
    """results.json ``neuron_attribution``: every neuron's mean attribution in layer ``layer``'s
    MLP and the top neurons by ``|mean|`` with 95% intervals; neurons plus ``mlp_bias`` add up to
    ``mlp_out``."""
    lo, hi = data.intervals["neuron_attribution"]
    layer = data.neuron_layer
    return {
        "layer": layer,
        "values": _tolist(data.neurons.mean(-1)),
        "mlp_out": float(data.mlp_out[layer].mean()),
        "mlp_bias": float(data.mlp_bias[layer].mean()),
        "top": [{"neuron": i, "name": f"L{layer}N{i}", "value": v, "ci95_low": float(lo[i]), "ci95_high": float(hi[i])}
                for i, v in data.top_neurons(TOP_NEURONS)],
    }


def write_study(data: StudyData, folder: Path, *, csv: bool = False) -> None:
    """Write every data file of ``data`` into ``folder`` (an existing, empty folder); the report,
    a presentation, is written by the caller (:meth:`logitscope.StudyResult.save`)."""
    (folder / "results.json").write_text(json_text(results_document(data)), encoding="utf-8")
    # [n_prompts, n_layers, n_heads] float32, prompts in results.json order.
    np.save(folder / "per_prompt_heads.npy", np.ascontiguousarray(np.moveaxis(data.head_results, -1, 0), dtype=np.float32))
    arrays = {name: np.ascontiguousarray(np.moveaxis(getattr(data, name), -1, 0),
                                         dtype=np.int32 if name == "lens_top_ids" else np.float32)
              for name in _PER_PROMPT if getattr(data, name) is not None}
    np.savez(folder / "per_prompt.npz", **arrays)
    if data.attention is not None:
        np.save(folder / "attention.npy", np.ascontiguousarray(data.attention.patterns, dtype=np.float32))
    if csv:  # ~4.6 KB a prompt for GPT-2 small (200 columns at full float64 precision)
        write_csv(data, folder / "per_prompt.csv")


def save_study(data: StudyData, out_dir: str | Path, *, csv: bool = False, label: str = "out_dir",
               also: Callable[[Path], None] | None = None) -> Path:
    """Write ``data``'s files into ``out_dir``, atomically: everything goes to a temporary folder
    beside it and is moved in only when complete, so a failure leaves earlier files untouched; a
    file of an earlier run that this run does not write (``report.html`` after ``report=False``)
    is removed. ``also(tmp)`` writes more files (the report) into the same temporary folder.
    ``label`` names ``out_dir`` in error messages."""
    with atomic_output_dir(out_dir, owned=OUTPUT_FILES, label=label) as tmp:
        write_study(data, tmp, csv=csv)
        if also is not None:
            also(tmp)
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------- reading
def _fail(folder: Path, what: str) -> InputError:
    return InputError(f"cannot reopen the study in {folder}: {what}")


def read_study(folder: str | Path) -> dict[str, Any]:
    """The :class:`StudyData` fields of the study written in ``folder`` (by ``save`` or
    ``logitscope run``), from ``results.json``, ``per_prompt_heads.npy``, ``per_prompt.npz`` and
    ``attention.npy``. Raises :class:`InputError` naming what is missing, unreadable or of
    another schema version."""
    folder = Path(folder).expanduser()
    path = folder / "results.json"
    if folder.is_file() and folder.name == "results.json":
        folder, path = folder.parent, folder
    if not path.is_file():
        raise _fail(folder, "it has no results.json" if folder.is_dir() else "no such folder")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(folder, f"results.json is not readable JSON ({e})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != RESULTS_SCHEMA_VERSION:
        by = f", written by logitscope {doc.get('logitscope_version')}" if isinstance(doc, dict) and doc.get("logitscope_version") else ""
        raise _fail(folder, f"results.json has schema_version {version!r}{by}; this logitscope reads version "
                    f"{RESULTS_SCHEMA_VERSION} only. Run the study again with this version to reopen it")
    n, L, H = doc["n_prompts"], doc["n_layers"], doc["n_heads"]
    arrays = _read_arrays(folder, n, L, H)
    parts = _read_parts(doc, arrays)  # before arrays are spread below: it makes the lens ids whole numbers
    rows = doc["prompts"]
    if len(rows) != n:
        raise _fail(folder, f"results.json lists {len(rows)} prompts, not n_prompts={n}")
    prompts = tuple(Prompt(r["prompt"], r["correct"], r["incorrect"], meta_of_row(r)) for r in rows)
    ids = {k: np.array([r[k] for r in rows], dtype=np.int64) for k in ("correct_id", "incorrect_id", "n_tokens")}
    return {
        "model": doc["model"], "family": doc["family"], "norm": doc["norm"],
        "parallel_attn_mlp": doc["parallel_attn_mlp"], "device": doc["device"], "dtype": doc["dtype"],
        "n_layers": L, "n_heads": H, "prompts": prompts,
        "correct_ids": ids["correct_id"], "incorrect_ids": ids["incorrect_id"], "n_tokens": ids["n_tokens"],
        **arrays,
        "attention": _read_attention(folder, doc.get("attention"), L, H),
        "top_k": doc["top_k"], "seed": doc["seed"], "prepend_bos": doc["prepend_bos"],
        "version": doc.get("logitscope_version", ""), "created": doc.get("created", ""),
        **parts,
        "extra": {k: v for k, v in doc.items() if k not in _DOCUMENT_KEYS},
        "timing": dict(doc.get("timing", {})),
    }


def _read_parts(doc: dict[str, Any], arrays: dict[str, np.ndarray | None]) -> dict[str, Any]:
    """The token lens's, source positions' and neurons' fields that results.json holds."""
    out: dict[str, Any] = {}
    if arrays.get("lens_top_ids") is not None:
        arrays["lens_top_ids"] = arrays["lens_top_ids"].astype(np.int64)
        lens = doc["token_lens"]
        out.update(lens_mean_ids=np.array(lens["mean_ids"], dtype=np.int64),
                   lens_mean_probs=np.array(lens["mean_probs"], dtype=np.float64),
                   lens_tokens={int(k): v for k, v in lens["tokens"].items()})
    if "dla_by_source" in doc:
        L, H = doc["n_layers"], doc["n_heads"]
        out.update(source_heads=tuple(parse_head(h, L, H) for h in doc["dla_by_source"]["heads"]),
                   source_roles=tuple(doc["dla_by_source"]["positions"]))
    if "neuron_attribution" in doc:
        out["neuron_layer"] = int(doc["neuron_attribution"]["layer"])
    return out


def _load(folder: Path, name: str) -> Any:
    try:
        return np.load(folder / name, allow_pickle=False)
    except FileNotFoundError:
        raise _fail(folder, f"{name} is missing (it is written beside results.json)") from None
    except (OSError, ValueError) as e:
        raise _fail(folder, f"{name} is not readable ({e})") from None


def _read_arrays(folder: Path, n: int, L: int, H: int) -> dict[str, np.ndarray | None]:
    heads = _load(folder, "per_prompt_heads.npy")
    if heads.shape != (n, L, H):
        raise _fail(folder, f"per_prompt_heads.npy is {list(heads.shape)}, not [{n}, {L}, {H}]")
    with _load(folder, "per_prompt.npz") as npz:
        stored = {k: npz[k] for k in npz.files}
    out: dict[str, np.ndarray | None] = {"head_results": np.moveaxis(heads.astype(np.float64), 0, -1)}
    for name in _PER_PROMPT:
        a = stored.get(name)
        if a is None:
            if name not in _OPTIONAL:
                raise _fail(folder, f"per_prompt.npz has no {name!r}")
            out[name] = None
            continue
        if a.shape[0] != n:
            raise _fail(folder, f"per_prompt.npz's {name!r} has {a.shape[0]} prompts, not {n}")
        out[name] = np.moveaxis(a.astype(np.float64), 0, -1)
    return out


def _read_attention(folder: Path, block: dict | None, L: int, H: int) -> AttentionView | None:
    if not block:
        return None
    patterns = _load(folder, "attention.npy")
    kept = tuple(parse_head(h, L, H) for h in block["heads"])
    if patterns.shape[0] != len(kept):
        raise _fail(folder, f"attention.npy holds {patterns.shape[0]} patterns, results.json names {len(kept)} heads")
    return AttentionView(block["prompt_index"], tuple(block["str_tokens"]), patterns, kept, L, H)


__all__ = ["OUTPUT_FILES", "RESULTS_SCHEMA_VERSION", "read_study", "results_document", "save_study",
           "top_head_rows", "write_study"]
