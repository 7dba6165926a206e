#!/usr/bin/env python3
"""Hugging Face config.json fixtures for io/hf_config.c, written and read back by transformers.

Format version 1. Writes into OUT (tests/fixtures/hf_configs/):
  <name>.json     a config.json as transformers 5 saves it (save_pretrained), or, for the
                  legacy_* cases, in the older spelling (top-level "rope_theta", "rope_scaling"
                  with "type"/"rope_type", "torch_dtype", nulls) that transformers 4 wrote and
                  transformers 5 still loads;
  expected.json   for each name, the fields as transformers reports them after loading the file
                  (defaults resolved: head_dim, num_key_value_heads, rope_parameters after
                  standardize_rope_params, whether the attention / MLP linears have biases, read
                  off the model's own modules built on the meta device);
  rope.lqfx       "<name>/inv_freq": the model's rotary embedding buffer (f32, head_dim / 2),
                  computed by transformers' ROPE_INIT_FUNCTIONS on the CPU, and
                  "<name>/inv_freq_plain": the unscaled theta^(-2i/d) from the model's
                  compute_default_rope_parameters (the input of the linear / llama3 scaling).
tests/test_io_hf_config.c parses every <name>.json with loquat and compares with these.

Run: $(tools/pyenv.sh) tools/gen_hf_configs.py tests/fixtures/hf_configs
"""
import json
import os
import sys
import tempfile

import torch
import transformers
from transformers import AutoConfig, LlamaConfig, MistralConfig, Qwen2Config
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen2 import modeling_qwen2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lqfx  # noqa: E402

FORMAT_VERSION = 1

MODULES = {"llama": modeling_llama, "mistral": modeling_mistral, "qwen2": modeling_qwen2}
PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}


def saved(cfg):
    """The config.json text transformers writes for cfg."""
    with tempfile.TemporaryDirectory() as d:
        cfg.save_pretrained(d)
        with open(os.path.join(d, "config.json")) as f:
            return json.load(f)


def configs():
    """name -> config.json dict."""
    out = {}
    out["llama_default"] = saved(LlamaConfig())
    out["smollm2_135m"] = saved(LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        bos_token_id=1, eos_token_id=2, pad_token_id=2, dtype="bfloat16"))
    out["llama3_like"] = saved(LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009], dtype="bfloat16"))
    # Llama 3.2 1B-like: llama3 scaling with factor 32, head_dim 64, tied.
    out["llama32_like"] = saved(LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        tie_word_embeddings=True, head_dim=64,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001))
    # Not a real model: a wide smoothing band (low / high wavelengths 120000 / 1500) and odd factors,
    # so most frequencies go through llama3's blend and its float32 rounding.
    out["llama3_wideband"] = saved(LlamaConfig(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=2, num_attention_heads=12,
        num_key_value_heads=4, vocab_size=1000, max_position_embeddings=240000,
        rope_parameters={"rope_type": "llama3", "rope_theta": 123456.0, "factor": 11.0, "low_freq_factor": 0.5,
                         "high_freq_factor": 40.0, "original_max_position_embeddings": 60000},
        bos_token_id=0, eos_token_id=[5, 6]))
    out["llama_linear"] = saved(LlamaConfig(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, vocab_size=32000, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        attention_bias=True, mlp_bias=True, dtype="float32"))
    out["mistral"] = saved(MistralConfig())
    out["qwen2"] = saved(Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=151643, eos_token_id=151645, dtype="bfloat16"))
    # The transformers 4 spelling: top-level rope_theta, rope_scaling, torch_dtype.
    out["legacy_llama3"] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 3072,
        "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "attention_bias": False,
        "transformers_version": "4.45.0.dev0"}
    out["legacy_linear"] = {
        "model_type": "llama", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
        "num_attention_heads": 8, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}, "torch_dtype": "float16",
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}
    # Llama 2-like: no head_dim, no num_key_value_heads, null rope_scaling, no rope_theta at all.
    out["legacy_llama2"] = {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": None, "tie_word_embeddings": False, "hidden_act": "silu"}
    out["legacy_mistral"] = {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": None, "vocab_size": 32768,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
        "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
    return out


def ids(v):
    return [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]


def expected(path):
    """The fields as transformers understands the file, plus its rotary inv_freq."""
    cfg = AutoConfig.from_pretrained(os.path.dirname(path))
    mt = cfg.model_type
    mod, pre = MODULES[mt], PREFIX[mt]
    rp = dict(cfg.rope_parameters)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    with torch.device("meta"):
        attn = getattr(mod, pre + "Attention")(cfg, layer_idx=0)
        mlp = getattr(mod, pre + "MLP")(cfg)
    rot = getattr(mod, pre + "RotaryEmbedding")(cfg)
    if mt == "qwen2":
        sliding = cfg.sliding_window if getattr(cfg, "use_sliding_window", False) else None
    else:
        sliding = getattr(cfg, "sliding_window", None)
    e = {
        "model_type": mt, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": head_dim, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": rp["rope_theta"], "rope_type": rp["rope_type"],
        "tie_word_embeddings": bool(cfg.tie_word_embeddings), "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "qkv_bias": attn.q_proj.bias is not None, "o_bias": attn.o_proj.bias is not None,
        "mlp_bias": mlp.gate_proj.bias is not None,
        "bos_token_id": ids(cfg.bos_token_id), "eos_token_id": ids(cfg.eos_token_id),
        "dtype": None if cfg.dtype is None else str(cfg.dtype).replace("torch.", ""),
        "sliding_window": sliding,
    }
    assert attn.k_proj.bias is not None and attn.v_proj.bias is not None if e["qkv_bias"] else True
    for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if k in rp and rp["rope_type"] != "default":
            e[k] = rp[k]
    assert rot.attention_scaling == 1.0, "loquat's RoPE has no cos/sin scaling"
    plain, _ = type(rot).compute_default_rope_parameters(cfg)
    return e, rot.inv_freq.detach().clone(), plain


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    exp = {"format_version": FORMAT_VERSION, "transformers": transformers.__version__, "torch": torch.__version__,
           "configs": {}}
    for name, cfg in configs().items():
        path = os.path.join(out_dir, name + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        with tempfile.TemporaryDirectory() as d:
            tmp = os.path.join(d, "config.json")
            with open(tmp, "w") as f:
                json.dump(cfg, f)
            e, inv, plain = expected(tmp)
        assert inv.dtype == torch.float32 and inv.numel() == e["head_dim"] // 2, name
        exp["configs"][name] = e
        lqfx.put(name + "/inv_freq", inv)
        lqfx.put(name + "/inv_freq_plain", plain)
        print(f"{name}: {e['model_type']} rope {e['rope_type']} head_dim {e['head_dim']}", file=sys.stderr)
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(exp, f, indent=1, sort_keys=True)
        f.write("\n")
    lqfx.write(os.path.join(out_dir, "rope.lqfx"))


if __name__ == "__main__":
    main()
