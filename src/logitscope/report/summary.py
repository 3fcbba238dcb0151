"""The few lines a terminal shows after a study: mean logit difference, the DLA check, top heads."""

from __future__ import annotations

from logitscope.labels import counted, head_label, rate
from logitscope.results.study import StudyData

SIGN_WORDS = {1: "positive", -1: "negative"}


def top_heads_text(data: StudyData, sign: int) -> str:
    """``L9H9 +2.985, L9H6 +1.384, ...``; when fewer than ``top_k`` heads have that sign, the ones
    that do not are listed after a note saying so."""
    heads = data.top_heads(sign=sign)
    signed = [f"{head_label(l, h)} {v:+.3f}" for l, h, v in heads if v * sign > 0]
    other = [f"{head_label(l, h)} {v:+.3f}" for l, h, v in heads if v * sign <= 0]
    text = ", ".join(signed) if signed else "none"
    if other:
        word = SIGN_WORDS[sign]
        n = data.n_signed_heads(sign)
        text += f" (only {n} head{'s' if n != 1 else ''} {'are' if n != 1 else 'is'} {word}; next: {', '.join(other)})"
    return text


def summary_text(data: StudyData) -> str:
    lo, hi = data.intervals["logit_diff"]
    lines = [
        f"model {data.model} ({data.family}, {data.n_layers} layers x {data.n_heads} heads) on {data.device}",
        f"prompts {data.n_prompts}   mean logit diff {data.mean_logit_diff:.4f}  95% CI [{lo:.4f}, {hi:.4f}]"
        f"   correct > incorrect in {100 * (data.logit_diff > 0).mean():.1f}%",
        f"DLA check: final residual / frozen scale . direction = {data.direct.mean():.4f}"
        f"  (logit diff {data.mean_logit_diff:.4f}; the gap is the final norm bias term {data.final_norm_bias.mean():+.4f})",
        f"top positive heads: {top_heads_text(data, 1)}",
        f"top negative heads: {top_heads_text(data, -1)}",
    ]
    if data.logit_diff_softcapped is not None:
        lines.append("logit diff of the linear logits, before the final soft-cap; the model's capped logits differ by "
                     f"{data.logit_diff_softcapped.mean():.4f} on average")
    if data.experts is not None:
        lines.append(f"top experts: {', '.join(f'L{l}E{e} {v:+.3f}' for l, e, v in data.top_experts())}")
    if data.source_by_role is not None:
        for j, name in enumerate(data.source_head_labels):
            parts = ", ".join(f"{r} {v:+.3f}" for r, v in zip(data.source_roles, data.source_by_role[j].mean(-1)))
            lines.append(f"{name} by source position: {parts}")
    if data.neurons is not None:
        top = ", ".join(f"L{data.neuron_layer}N{i} {v:+.3f}" for i, v in data.top_neurons(5))
        lines.append(f"top neurons of layer {data.neuron_layer} (by |mean|): {top}")
    t = data.timing
    if t:
        lines.append(f"study {counted(data.n_prompts, 'prompt')} in {t['study_s']:.2f} s "
                     f"({rate(data.n_prompts, t['study_s'], 'prompt')}; "
                     f"tokenize {t['tokenize_s']:.2f} s, forward {t['forward_s']:.2f} s, attention {t['attention_s']:.2f} s)"
                     + _split(t))
    return "\n".join(lines)


def _split(timing: dict) -> str:
    """How a distributed run was split: `` on 2 ranks (5,000 and 5,000 prompts; gather 0.12 s)``; where
    answers are several tokens, the teacher-forced rows each rank ran (``timing["rows"]``)."""
    world = timing.get("world_size", 1)
    if world < 2:
        return ""
    shares = [f"{n:,}" for n in timing.get("prompts_per_rank", [])]
    listed = ", ".join(shares[:-1]) + f" and {shares[-1]}" if shares else "?"
    gather = f"; gather {timing['gather_s']:.2f} s" if "gather_s" in timing else ""
    unit = "teacher-forced rows" if "rows" in timing else "prompts"
    return f" on {world} ranks ({listed} {unit}{gather})"
