"""Write a small Llama checkpoint as a GGUF file, offline, the way llama.cpp's converter lays it out.

The tensors are stored unquantized (float32), so the file holds exactly the checkpoint's weights:
loading it back must give the very model it came from. The tokenizer is GPT-2's byte-level BPE
(``tokenizer.ggml.model`` gpt2) cut to its first merges: GPT-2's ids are the 256 bytes, then one
token per merge in merge order, so the first ``n_merges`` merges and the tokens they make are a
complete smaller BPE (plus ``<|endoftext|>`` as BOS/EOS). transformers parses a GGUF vocabulary in
Python at ~0.5 ms a token, so the full 50,257 would cost ~25 s a load; 6,000 merges keep the
names " John", " James", " Tom", " Mary", " Martin" and " Dan" whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel

from oracle import TOKENIZER_DIR

N_MERGES = 6000


def small_gpt2_vocabulary(n_merges: int = N_MERGES) -> tuple[list[str], list[str]]:
    """GPT-2's first ``256 + n_merges`` tokens plus ``<|endoftext|>`` (the last id), and its first
    ``n_merges`` merges."""
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    tokens = sorted(vocab, key=vocab.get)[: 256 + n_merges] + ["<|endoftext|>"]
    merges = [line for line in (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] if line]
    return tokens, merges[:n_merges]


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary re-ordering of W_Q / W_K rows (transformers undoes it on load)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(model: PreTrainedModel, path: str | Path, *, architecture: str = "llama") -> Path:
    """``model`` (a ``LlamaForCausalLM`` whose vocabulary is ``small_gpt2_vocabulary()``'s) as a
    float32 GGUF file at ``path``. ``architecture`` is the file's ``general.architecture`` (tests
    change it to exercise errors)."""
    import gguf

    cfg = model.config
    path = Path(path)
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(cfg.hidden_size // n_head)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    tokens, merges = small_gpt2_vocabulary()
    if cfg.vocab_size != len(tokens):
        raise ValueError(f"the model's vocabulary must be the file's {len(tokens)} tokens, not {cfg.vocab_size}")
    bos = len(tokens) - 1
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i == bos else 1 for i in range(len(tokens))])  # 3: control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(bos)

    def add(name: str, tensor) -> None:
        writer.add_tensor(name, np.ascontiguousarray(tensor.detach().float().numpy()))

    add("token_embd.weight", model.model.embed_tokens.weight)
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        add(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight)
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(attn.q_proj.weight.detach().float().numpy(), n_head))
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute(attn.k_proj.weight.detach().float().numpy(), n_kv))
        add(f"blk.{i}.attn_v.weight", attn.v_proj.weight)
        add(f"blk.{i}.attn_output.weight", attn.o_proj.weight)
        add(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight)
        add(f"blk.{i}.ffn_gate.weight", mlp.gate_proj.weight)
        add(f"blk.{i}.ffn_up.weight", mlp.up_proj.weight)
        add(f"blk.{i}.ffn_down.weight", mlp.down_proj.weight)
    add("output_norm.weight", model.model.norm.weight)
    if not cfg.tie_word_embeddings:
        add("output.weight", model.lm_head.weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
