#!/usr/bin/env python3
"""GGUF files carrying only tokenizer metadata, written by the gguf package (gguf-py), for
loquat's GGUF tokenizer loader (datasets/tokenizer_gguf.c, tests/test_tokenizer_gguf.c).

Writes into the folder given (default tests/fixtures/tokenizer_gguf/):
  llama3.gguf  the tokenizer of tests/fixtures/tokenizer/llama3.json as llama.cpp's converter
               stores it: tokenizer.ggml.model "gpt2", pre "llama-bpe", tokens by id, token_type
               (added special tokens CONTROL = 3, the rest NORMAL = 1), merges "a b",
               bos_token_id (<|begin_of_text|>, the TemplateProcessing prefix) with
               add_bos_token = true, eos_token_id (<|endoftext|>), and a ChatML chat_template
               with a default system prompt; no tensors.
  tiny_chat.gguf  tests/fixtures/llama_tiny/tied.f32.gguf (the tiny random Llama, vocab 128)
               with a 128-token byte-level tokenizer added: 0 <|endoftext|>, 1 <|begin_of_text|>
               (bos, add_bos_token), 2 <|im_end|> (eos), 3 <|im_start|> (all CONTROL), 4..98 the
               byte-level characters of bytes 0x20..0x7e, 99 newline, 100..127 made by 28 merges;
               pre "gpt-2" and a ChatML chat_template. tests/test_cli_generate.sh runs
               `loquat generate` / `loquat perplexity` on it.
  tiny_tokenizer.json  the same tokenizer as a Hugging Face tokenizer.json (BPE, ByteLevel
               pre-tokenizer with the GPT-2 regex, TemplateProcessing "<|begin_of_text|> $A"),
               made with the tokenizers library; the CLI test puts it beside
               tests/fixtures/llama_tiny/tied/ to run the Hugging Face folder path.
The test encodes tests/fixtures/tokenizer/text.txt with llama3.gguf and with llama3.json and
expects the same ids (with and without add_special).

Format version 1. Run: $(tools/pyenv.sh) tools/gen_tokenizer_gguf.py tests/fixtures/tokenizer_gguf
"""
import json
import os
import sys

import gguf

FORMAT_VERSION = 1
CHAT = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a test assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tokenizer_gguf"
    here = os.path.dirname(os.path.abspath(__file__))
    j = json.load(open(os.path.join(here, "..", "tests", "fixtures", "tokenizer", "llama3.json")))
    vocab = j["model"]["vocab"]
    n = max(list(vocab.values()) + [a["id"] for a in j["added_tokens"]]) + 1
    tokens = [""] * n
    types = [1] * n
    for tok, i in vocab.items():
        tokens[i] = tok
    for a in j["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = 3 if a["special"] else 4
    merges = [m if isinstance(m, str) else m[0] + " " + m[1] for m in j["model"]["merges"]]
    os.makedirs(out, exist_ok=True)
    w = gguf.GGUFWriter(os.path.join(out, "llama3.gguf"), "llama")
    w.add_uint32("loquat.fixture_version", FORMAT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab.get("<|begin_of_text|>", 3))
    w.add_eos_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", os.path.join(out, "llama3.gguf"))
    tiny_chat(here, out)


def byte_chars():
    """GPT-2's byte -> character map: printable Latin-1 bytes map to themselves, the others to
    U+0100 upwards in byte order."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    m, k = {}, 0
    for b in range(256):
        if b in keep:
            m[b] = chr(b)
        else:
            m[b] = chr(256 + k)
            k += 1
    return m


def tiny_chat(here, out):
    bc = byte_chars()
    tokens = ["<|endoftext|>", "<|begin_of_text|>", "<|im_end|>", "<|im_start|>"]
    tokens += [bc[b] for b in range(0x20, 0x7F)] + [bc[0x0A]]
    pairs = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġt", "he"), ("a", "n"),
             ("r", "e"), ("Ġ", "s"), ("e", "n"), ("a", "t"), ("o", "u"), ("Ġ", "w"), ("e", "d"), ("i", "s"),
             ("Ġ", "o"), ("n", "d"), ("Ġ", "h"), ("o", "r"), ("Ġ", "b"), ("i", "t"), ("Ġ", "c"), ("e", "s"),
             ("Ġ", "f"), ("a", "r"), ("l", "l"), ("Ġ", "m")]
    for a, b in pairs:
        assert a in tokens and b in tokens and a + b not in tokens
        tokens.append(a + b)
    assert len(tokens) == 128
    types = [3, 3, 3, 3] + [1] * 124
    src = gguf.GGUFReader(os.path.join(here, "..", "tests", "fixtures", "llama_tiny", "tied.f32.gguf"))
    arch = src.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(os.path.join(out, "tiny_chat.gguf"), arch)
    for key, f in src.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, f.contents(), vt, sub_type=f.types[-1])
        else:
            w.add_key_value(key, f.contents(), vt)
    w.add_uint32("loquat.fixture_version", FORMAT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([a + " " + b for a, b in pairs])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT)
    for t in src.tensors:
        w.add_tensor(t.name, t.data.copy(), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", os.path.join(out, "tiny_chat.gguf"))
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab, list(pairs)))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens[:4]])
    tk.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                      special_tokens=[("<|begin_of_text|>", 1)])
    tk.save(os.path.join(out, "tiny_tokenizer.json"))
    probe = "the cat sat on the mat, and then? 123 <|im_start|>"
    assert tk.encode(probe).ids[0] == 1
    print("wrote", os.path.join(out, "tiny_tokenizer.json"))


if __name__ == "__main__":
    main()
