"""A width-256 Mixtral (one layer, random weights, the fixture tokenizer) as an f32 GGUF file
written by llama.cpp's converter: k-quants need rows of 256, so the quantised fixtures of
scripts/gguf_fixtures.py and scripts/quant_fixtures.py are made from it by llama-quantize.
Needs torch and transformers (pip)."""
import os
import shutil

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "crates", "moe-infer", "tests", "fixtures")


def mixtral256_f32(llama, tmp):
    """Writes the model under tmp and returns the path of its f32 GGUF file."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from llama_convert import convert

    torch.manual_seed(0)
    cfg = MixtralConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=128,
                        max_position_embeddings=64, rope_theta=1e6, tie_word_embeddings=False)
    hf = os.path.join(tmp, "mixtral256")
    model = MixtralForCausalLM(cfg).float()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    model.save_pretrained(hf)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(fixtures, "mixtral", f), hf)
    f32 = os.path.join(tmp, "mixtral256-f32.gguf")
    convert(llama, hf, f32, "f32")
    return f32
