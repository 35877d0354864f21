"""Fixtures for the tokenizers embedded in GGUF files (crates/moe-infer/tests/gguf_tokenizer.rs).

Two small tokenizers are trained here on a fixed multilingual text, the two kinds GGUF files
carry:
- `llama`: a SentencePiece BPE model with byte fallback (as Llama, Mistral and Mixtral ship),
  turned into transformers' LlamaTokenizer (tokenizer.json by transformers' own converter);
- `qwen2`: a byte-level BPE with Qwen2's pre-tokenizer regex and ChatML special tokens.
Each gets a tiny random Hugging Face checkpoint (Llama / Qwen2 shapes, one layer) that
llama.cpp's convert_hf_to_gguf.py turns into a GGUF file, so the tokenizer.ggml.* keys are the
converter's own. (Its table of known pre-tokenizers is keyed by hashes of real tokenizers;
ours are not in it, so the qwen2 file is told its pre-tokenizer is "qwen2", which is what the
converter writes for Qwen2 models.)

transformers' token ids for a set of test strings (and the rendered chat of one conversation)
go to reference.json; the Rust test builds each tokenizer from the GGUF file alone and must
reproduce them exactly.

Run by hand, never by CI (needs torch, transformers, sentencepiece, tokenizers and a llama.cpp
source tree, e.g. the one in llama-cpp-python's PyPI sdist, vendor/llama.cpp):
    python3 scripts/gguf_tokenizer_fixtures.py LLAMA_CPP_DIR
"""
import json
import os
import shutil
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
out_dir = os.path.join(here, "..", "crates", "moe-infer", "tests", "fixtures", "gguf_tokenizer")
llama = os.path.abspath(sys.argv[1])
sys.path.insert(0, here)

TEXT = [
    "The quick brown fox jumps over the lazy dog. The model routes each token to two experts.",
    'fn main() {\n    println!("hello, world {}", 42);\n}\n',
    "Numbers 12345 and 3.14159; naïve café, Übermäßig große Wörter; 日本語のテキスト; emoji 🎉🚀",
    "  leading spaces\n\nand\ttabs   and trailing  ",
    "I'm sure they'll say it's done, isn't it? WE'RE DONE.",
] * 30

TESTS = [
    "Hello world",
    "hello  world   x",
    " leading space",
    "trailing space ",
    "a\n\nb\r\nc\td",
    "Numbers: 1234567 and 3.14, 2024-12-06",
    "naïve café Übermäßig 日本語 🎉 ü",
    "I'm sure they'll say it's done; WE'RE DONE",
    'fn main() { println!("hi"); }',
    "unseen: zqxj ЖЖЖ ⊕⊗ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "",
]
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Route 12 tokens, please."},
    {"role": "assistant", "content": "Done."},
    {"role": "user", "content": "Again!"},
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA_CHAT = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
)


def spm_tokenizer(d, corpus):
    import sentencepiece as spm

    prefix = os.path.join(d, "sp")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=480, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )
    shutil.copy(prefix + ".model", os.path.join(d, "tokenizer.model"))
    cfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "add_bos_token": True, "legacy": False, "chat_template": LLAMA_CHAT}
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))


def bpe_tokenizer(d, corpus):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    qwen2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen2), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([corpus], trainer)
    tok.save(os.path.join(d, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "bos_token": None, "chat_template": CHATML}
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))


def tiny_model(d, arch, vocab, bos, eos):
    import torch
    import transformers

    torch.manual_seed(0)
    cls, cfg_cls = {"llama": ("LlamaForCausalLM", "LlamaConfig"), "qwen2": ("Qwen2ForCausalLM", "Qwen2Config")}[arch]
    cfg = getattr(transformers, cfg_cls)(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                         bos_token_id=bos, eos_token_id=eos)
    getattr(transformers, cls)(cfg).save_pretrained(d)


def main():
    from transformers import AutoTokenizer
    from llama_convert import convert, _converter

    _converter(llama)
    from conversion import base

    known = base.TextModel.get_vocab_base_pre
    os.makedirs(out_dir, exist_ok=True)
    ref = {"tests": TESTS, "chat": CHAT}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        open(corpus, "w").write("\n".join(TEXT))
        for name, make, arch in [("llama", spm_tokenizer, "llama"), ("qwen2", bpe_tokenizer, "qwen2")]:
            d = os.path.join(tmp, name)
            os.makedirs(d)
            make(d, corpus)
            tok = AutoTokenizer.from_pretrained(d)
            tok.save_pretrained(d)
            bos = tok.bos_token_id
            tiny_model(d, arch, len(tok), bos, tok.eos_token_id)
            base.TextModel.get_vocab_base_pre = (lambda self, t, pre=name: pre) if name == "qwen2" else known
            convert(llama, d, os.path.join(out_dir, f"{name}.gguf"), "f32")
            ref[name] = {
                "ids": [tok(t).input_ids for t in TESTS],
                "decoded": [tok.decode(tok(t).input_ids, skip_special_tokens=True) for t in TESTS],
                "chat": tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                "chat_ids": tok(tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                                add_special_tokens=False).input_ids,
                "eos": tok.eos_token,
            }
    json.dump(ref, open(os.path.join(out_dir, "reference.json"), "w"), ensure_ascii=False, indent=1)
    print("wrote", out_dir)


if __name__ == "__main__":
    main()
