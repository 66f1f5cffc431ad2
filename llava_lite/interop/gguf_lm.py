"""A transformers Llama-family LM (LoRA merged) and its tokenizer as one llama.cpp GGUF file.

    write_lm(lm, tokenizer, "out/model.gguf", outtype="f16", chat_template=template, name="model")

What maps: `LlamaForCausalLM` (and Mistral without a sliding window) -> architecture `llama`, with
q/k rows reordered from transformers' rotate-half layout to the interleaved pairs llama.cpp's rope
turns; a byte-level BPE tokenizer (tokenizer.json) -> `tokenizer.ggml.model = gpt2` with its tokens,
token types, merges and the pre-tokenizer named as llama.cpp names it (gpt-2, smollm, llama-bpe); rope
scaled by frequency (llama3, linear) as `rope_freqs.weight`. Anything else (yarn or dynamic rope, MLP
biases, a SentencePiece or unrecognised pre-tokenizer) is refused with one FormatError naming it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from llava_lite.errors import FormatError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
ARCHES = {"llama", "mistral"}
FREQ_SCALED = ("default", "linear", "llama3")  # rope types that only divide frequencies (rope_freqs.weight)
# Llama 3's split regex (its tokenizer.json pre_tokenizer), which llama.cpp names "llama-bpe".
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# tokenizer.json pre_tokenizer (normalised, see _pre_signature) -> llama.cpp's tokenizer.ggml.pre.
# "gpt-2": GPT-2's regex alone; "smollm": every digit split first, then GPT-2's regex (SmolLM, StarCoder).
PRE_TOKENIZERS = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
    (("Split", LLAMA3_SPLIT), ("ByteLevel", False)): "llama-bpe",
}
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp token types


def tensor_data(t: torch.Tensor, outtype: str):
    """(array, raw ggml type or None) for GGUFWriter.add_tensor: 1-D tensors stay f32 (norms, biases),
    matrices take `outtype`; q8_0 needs rows that split into 32-value blocks, else f16."""
    import gguf

    x = t.detach().to(torch.float32).cpu().numpy()
    if x.ndim == 1 or outtype == "f32":
        return x, None
    if outtype == "q8_0" and x.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(x, qtype), qtype
    if outtype == "bf16":
        qtype = gguf.GGMLQuantizationType.BF16
        return gguf.quants.quantize(x, qtype), qtype
    return x.astype(np.float16), None


def file_type(outtype: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]


def check_lm(lm) -> None:
    """check_lm_config, then what only the built LM tells: rope that also scales attention."""
    check_lm_config(lm.config)
    if getattr(lm.get_decoder().rotary_emb, "attention_scaling", 1.0) != 1.0:
        raise FormatError("cannot export the LM to GGUF: rope attention_scaling != 1: llama.cpp's llama graph "
                          "does not scale attention")


def check_lm_config(c) -> None:
    """Raise one FormatError naming every option of an LM config the `llama` graph cannot hold."""
    problems = []
    if c.model_type not in ARCHES:
        problems.append(f"model_type={c.model_type!r}: only Llama-family LMs export (llama, mistral)")
    rope_type = rope_kind(c)
    if rope_type not in FREQ_SCALED:
        problems.append(f"rope_type={rope_type!r}: the export holds rope whose scaling only rescales frequencies "
                        f"({', '.join(FREQ_SCALED)})")
    if getattr(c, "mlp_bias", False):
        problems.append("mlp_bias=True: llama.cpp's llama graph has no MLP biases")
    if getattr(c, "sliding_window", None):
        problems.append(f"sliding_window={c.sliding_window}: the llama graph attends to the whole context")
    if getattr(c, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={c.hidden_act!r}: the llama graph uses SiLU (SwiGLU)")
    if problems:
        raise FormatError("cannot export the LM to GGUF: " + "; ".join(problems))


def rope_kind(config) -> str:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return rope.get("rope_type") or rope.get("type") or "default"


def rope_factors(lm) -> torch.Tensor:
    """Per-frequency divisors that turn unscaled rope into the LM's own (llama3, linear): `rope_freqs.weight`,
    which llama.cpp's rope divides each frequency by. Read from the inverse frequencies the LM really uses."""
    c = lm.config
    used = lm.get_decoder().rotary_emb.inv_freq.float()
    d = 2 * used.numel()
    plain = 1.0 / (rope_theta(c) ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    return (plain / used.double()).float()


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def interleave_heads(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers pairs dimension i with i + d/2 of each head (rotate_half); llama.cpp's rope pairs
    2i with 2i + 1. Reorder each head's rows so row 2i is old row i and row 2i+1 is old row i + d/2."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def lm_tensors(lm) -> dict[str, torch.Tensor]:
    """The LM's weights under llama.cpp's llama tensor names."""
    c = lm.config
    sd = lm.get_decoder().state_dict()
    out = {"token_embd.weight": sd["embed_tokens.weight"], "output_norm.weight": sd["norm.weight"]}
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    heads = {"self_attn.q_proj": ("attn_q", c.num_attention_heads),
             "self_attn.k_proj": ("attn_k", getattr(c, "num_key_value_heads", None) or c.num_attention_heads)}
    for i in range(c.num_hidden_layers):
        for key, t in sd.items():
            if not key.startswith(f"layers.{i}."):
                continue
            module, param = key[len(f"layers.{i}."):].rsplit(".", 1)
            if module in heads:
                name, n = heads[module]
                out[f"blk.{i}.{name}.{param}"] = interleave_heads(t, n)
            elif module in names:
                out[f"blk.{i}.{names[module]}.{param}"] = t
            else:
                raise FormatError(f"LM weight layers.{i}.{module}.{param} has no llama.cpp counterpart")
    if not getattr(c, "tie_word_embeddings", False):
        out["output.weight"] = lm.get_output_embeddings().weight
    if rope_kind(c) != "default":
        out["rope_freqs.weight"] = rope_factors(lm)
    return out


def _pre_signature(pre: dict | None) -> tuple:
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    sig = []
    for s in steps:
        if s["type"] == "ByteLevel":
            if s.get("add_prefix_space"):
                return ()
            sig.append(("ByteLevel", bool(s.get("use_regex", True))))
        elif s["type"] == "Digits":
            sig.append(("Digits", bool(s.get("individual_digits"))))
        elif s["type"] == "Split" and s.get("behavior") == "Isolated" and not s.get("invert"):
            sig.append(("Split", (s.get("pattern") or {}).get("Regex")))
        else:
            sig.append((s["type"], None))
    return tuple(sig)


def tokenizer_fields(tokenizer, vocab_size: int) -> dict:
    """tokens, token types, merges, pre-tokenizer name and special ids of a byte-level BPE tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise FormatError("GGUF export needs a fast (tokenizer.json) tokenizer")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = spec["model"], (spec.get("decoder") or {}).get("type")
    if model["type"] != "BPE" or decoder != "ByteLevel":
        raise FormatError(f"tokenizer model {model['type']!r} with decoder {decoder!r}: GGUF export writes "
                          "byte-level BPE tokenizers only (tokenizer.ggml.model gpt2)")
    if spec.get("normalizer"):
        raise FormatError(f"tokenizer normalizer {spec['normalizer']['type']!r}: llama.cpp's BPE tokenizer has none")
    pre = PRE_TOKENIZERS.get(_pre_signature(spec.get("pre_tokenizer")))
    if pre == "llama-bpe" and not model.get("ignore_merges"):
        raise FormatError("tokenizer splits like Llama 3 but does not set ignore_merges, which llama.cpp's "
                          "llama-bpe tokenizer always does: the two would tokenise some words differently")
    if pre is None:
        raise FormatError(f"tokenizer pre_tokenizer {json.dumps(spec.get('pre_tokenizer'))[:200]} is not one llama.cpp "
                          f"names here (known: {', '.join(PRE_TOKENIZERS.values())})")
    tokens: list[str | None] = [None] * vocab_size
    types = [NORMAL] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i] = text
    for added in spec.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = CONTROL if added["special"] else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:  # embedding rows past the tokenizer (padded vocabularies)
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre}


def write_lm(lm, tokenizer, path: Path, outtype: str, chat_template: str, name: str,
             eot_token_id: int | None = None) -> Path:
    """Write the LM (adapters already merged) with its tokenizer and `chat_template` to `path`."""
    import gguf

    check_lm(lm)
    c = lm.config
    vocab = lm.get_input_embeddings().weight.shape[0]
    tok = tokenizer_fields(tokenizer, vocab)
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name(name)
    w.add_file_type(file_type(outtype))
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(getattr(c, "num_key_value_heads", None) or heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope_theta(c))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    for key, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                       ("pad", tokenizer.pad_token_id), ("unk", tokenizer.unk_token_id), ("eot", eot_token_id)):
        if value is not None:
            getattr(w, f"add_{key}_token_id")(value)
    w.add_add_bos_token(False)  # llava-lite renders with add_special_tokens=False: the template holds any bos
    w.add_add_eos_token(False)
    w.add_chat_template(chat_template)
    write_tensors(w, ((tname, t, outtype) for tname, t in lm_tensors(lm).items()))
    return path


def write_tensors(w, tensors) -> None:
    """Add (name, tensor, weight type) triples to the GGUFWriter `w`, then write the file and close it."""
    for name, t, kind in tensors:
        data, raw = tensor_data(t, kind)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
