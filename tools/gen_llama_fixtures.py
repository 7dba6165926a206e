#!/usr/bin/env python3
"""Tiny random Llama models and their reference logits, for tests/test_llama.c. Format version 1.

Writes into the folder given (default tests/fixtures/llama_tiny/):
  tied/      LlamaForCausalLM (hidden 32, 2 layers, 4 heads, 2 kv heads, head_dim 8,
             intermediate 64, vocab 128, rope_theta 10000, tie_word_embeddings true) saved with
             save_pretrained in float32 (config.json + model.safetensors).
  untied/    the same architecture with its own lm_head, weights f16-rounded and saved in float16.
  tied.f32.gguf    the tied model as llama.cpp's converter writes it: arch "llama", its llama.*
                   keys, tensor names token_embd / blk.N.* / output_norm (no "output": tied),
                   q and k rows permuted for interleaved RoPE, every tensor f32.
  tied.q8_0.gguf   the same with every 2-D tensor Q8_0 (gguf.quants.quantize), norms f32.
  untied.f16.gguf  the untied model with 2-D tensors f16 (with "output").
  qwen2_bf16/  Qwen2ForCausalLM (q / k / v biases; hidden 32, 1 layer, 4 heads, 2 kv heads,
               intermediate 64, vocab 64, tied) saved in bfloat16.
  logits.lqfx      LQFX v1 (tools/lqfx.py): "ids" i32 (1, T); "<model>/logits" f32 (1, T, V)
                   from transformers in float32 for tied, untied; "tied_q8_0/logits" from the
                   tied model with its weights replaced by the dequantized Q8_0 weights (what
                   loquat's qmatmul computes with); "untied_f16/logits" likewise for f16;
                   "qwen2_bf16/logits" from the qwen2 model in float32 with bf16-rounded weights
                   (ids taken modulo 64).

Run: $(tools/pyenv.sh) tools/gen_llama_fixtures.py tests/fixtures/llama_tiny
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lqfx  # noqa: E402

import gguf  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

FORMAT_VERSION = 1
IDS = [1, 17, 99, 3, 127, 64, 5, 42, 0, 88]


def make_model(tied, seed, round_f16=False):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
                      max_position_embeddings=64, tie_word_embeddings=tied,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      bos_token_id=1, eos_token_id=2)
    m = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
            if round_f16:
                p.copy_(p.half().float())
    return m


def logits_of(m, ids=None):
    with torch.no_grad():
        return m(torch.tensor([ids or IDS])).logits.float()


def make_qwen2(seed):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                      max_position_embeddings=64, tie_word_embeddings=True, use_sliding_window=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    m = Qwen2ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            v = 1.0 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.15 * torch.randn_like(p)
            p.copy_(v.bfloat16().float())
    return m


def permute(w, n_head):
    """llama.cpp's converter row order for q / k (interleaved RoPE pairs within each head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(m):
    c = m.config
    sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}
    out = [("token_embd.weight", sd["model.embed_tokens.weight"])]
    for i in range(c.num_hidden_layers):
        p = "model.layers.%d." % i
        b = "blk.%d." % i
        out += [(b + "attn_norm.weight", sd[p + "input_layernorm.weight"]),
                (b + "attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads)),
                (b + "attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads)),
                (b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"]),
                (b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"]),
                (b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"]),
                (b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"]),
                (b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"]),
                (b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"])]
    out.append(("output_norm.weight", sd["model.norm.weight"]))
    if not c.tie_word_embeddings:
        out.append(("output.weight", sd["lm_head.weight"]))
    return out


def write_gguf(m, path, qtype):
    """Returns {gguf name: the float values the file holds (dequantized)}."""
    c = m.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("loquat tiny llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_rope_dimension_count(c.head_dim)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type({gguf.GGMLQuantizationType.F32: 0, gguf.GGMLQuantizationType.F16: 1,
                     gguf.GGMLQuantizationType.Q8_0: 7}[qtype])
    held = {}
    for name, t in gguf_tensors(m):
        t = np.ascontiguousarray(t, dtype=np.float32)
        if t.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
            held[name] = t
        elif qtype == gguf.GGMLQuantizationType.F16:
            h = t.astype(np.float16)
            w.add_tensor(name, h)
            held[name] = h.astype(np.float32)
        else:
            q = gguf.quants.quantize(t, qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
            held[name] = gguf.quants.dequantize(q, qtype).reshape(t.shape).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def unpermute(w, n_head):
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def with_weights(m, held):
    """A copy of m holding the GGUF file's (dequantized) values, q / k rows back in HF order."""
    c = m.config
    m2 = LlamaForCausalLM(c).float().eval()
    m2.load_state_dict(m.state_dict())
    names = dict(gguf_tensors_names(c))
    with torch.no_grad():
        sd = m2.state_dict()
        for g, hf in names.items():
            t = held[g]
            if g.endswith("attn_q.weight"):
                t = unpermute(t, c.num_attention_heads)
            elif g.endswith("attn_k.weight"):
                t = unpermute(t, c.num_key_value_heads)
            sd[hf].copy_(torch.from_numpy(np.ascontiguousarray(t)))
        if c.tie_word_embeddings:
            m2.tie_weights()
    return m2


def gguf_tensors_names(c):
    out = [("token_embd.weight", "model.embed_tokens.weight")]
    for i in range(c.num_hidden_layers):
        p, b = "model.layers.%d." % i, "blk.%d." % i
        for g, hf in [("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"),
                      ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                      ("attn_output", "self_attn.o_proj"), ("ffn_norm", "post_attention_layernorm"),
                      ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj")]:
            out.append((b + g + ".weight", p + hf + ".weight"))
    out.append(("output_norm.weight", "model.norm.weight"))
    if not c.tie_word_embeddings:
        out.append(("output.weight", "lm_head.weight"))
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/llama_tiny"
    os.makedirs(out, exist_ok=True)
    lqfx.put("ids", np.array([IDS], dtype=np.int32))
    tied = make_model(True, 1)
    untied = make_model(False, 2, round_f16=True)
    for name, m in (("tied", tied), ("untied", untied)):
        lqfx.put(name + "/logits", logits_of(m))
    tied.save_pretrained(os.path.join(out, "tied"), safe_serialization=True)
    untied.half().save_pretrained(os.path.join(out, "untied"), safe_serialization=True)
    untied.float()
    write_gguf(tied, os.path.join(out, "tied.f32.gguf"), gguf.GGMLQuantizationType.F32)
    held = write_gguf(tied, os.path.join(out, "tied.q8_0.gguf"), gguf.GGMLQuantizationType.Q8_0)
    lqfx.put("tied_q8_0/logits", logits_of(with_weights(tied, held)))
    held = write_gguf(untied, os.path.join(out, "untied.f16.gguf"), gguf.GGMLQuantizationType.F16)
    lqfx.put("untied_f16/logits", logits_of(with_weights(untied, held)))
    q = make_qwen2(3)
    assert q.model.layers[0].self_attn.q_proj.bias is not None
    lqfx.put("qwen2_bf16/logits", logits_of(q, [i % 64 for i in IDS]))
    q.to(torch.bfloat16).save_pretrained(os.path.join(out, "qwen2_bf16"), safe_serialization=True)
    for d in ("tied", "untied", "qwen2_bf16"):
        g = os.path.join(out, d, "generation_config.json")
        if os.path.exists(g):
            os.remove(g)
    lqfx.write(os.path.join(out, "logits.lqfx"))
    # sanity: the dequantized-f32 rebuild of the f32 file reproduces the model exactly
    held = write_gguf(tied, "/tmp/lq_llama_check.gguf", gguf.GGMLQuantizationType.F32)
    d = (logits_of(with_weights(tied, held)) - logits_of(tied)).abs().max().item()
    os.remove("/tmp/lq_llama_check.gguf")
    assert d == 0.0, d
    print("wrote", out, "(permute round trip exact)")


if __name__ == "__main__":
    main()
