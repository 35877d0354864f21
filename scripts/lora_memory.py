#!/usr/bin/env python3
"""LoRA fine-tuning of a 1B-class OLMoE-shaped MoE in the memory of these machines: moe against
PyTorch + PEFT on the same model, batch and adapters (run by hand; never needed by CI).

  make DIR     writes the model: OlmoeForCausalLM at half OLMoE-1B-7B's width and depth (hidden
               1024, 8 layers, 16 heads, 64 experts of width 512, top-8, vocabulary 50304; 0.95 B
               parameters, 0.19 B active per token), random weights in bf16, with the tiny
               tokenizer of the test fixtures (token ids stay below its 128).
  peft DIR     trains LoRA adapters with PEFT (bf16 base, gradient checkpointing, AdamW) and
               prints one JSON line: tokens/s (median over the timed steps) and peak RSS.
  moe DIR      the same with `moe train --init DIR --lora-base bf16 --recompute` (peak RSS from
               /usr/bin/time), one JSON line.
  bench DIR    both, one after the other, and a Markdown table.

Options: --batch 4 --seq 256 --steps 4 --rank 8 --targets attn (or attn,experts for moe alone:
PEFT adapts transformers' fused expert tensors differently) --threads 2.

    pip install torch transformers safetensors peft
    cargo build --release
    python3 scripts/lora_memory.py make /tmp/olmoe-1b
    python3 scripts/lora_memory.py bench /tmp/olmoe-1b
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURE_TOKENIZER = os.path.join(ROOT, "crates", "moe-infer", "tests", "fixtures", "olmoe_noclip")
TEXT = ("the router sends each token to a few experts; the model adds their outputs. "
        "experts are small feed forward blocks, and the router picks the top experts. ")


def make(out):
    import torch
    import transformers as tf
    torch.manual_seed(0)
    cfg = tf.OlmoeConfig(vocab_size=50304, hidden_size=1024, intermediate_size=512, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                         max_position_embeddings=4096, norm_topk_prob=False, clip_qkv=None,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = tf.OlmoeForCausalLM(cfg).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(FIXTURE_TOKENIZER, f), out)
    print(f"{out}: {n / 1e9:.3f} B parameters (bf16)")


def peft_run(a):
    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = tf.OlmoeForCausalLM.from_pretrained(a.dir, dtype=torch.bfloat16)
    model.config.use_cache = False
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    targets = {"attn": ["q_proj", "k_proj", "v_proj", "o_proj"]}[a.targets]
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules=targets,
                                             lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, 128, (a.batch, a.seq))
    times = []
    for step in range(a.steps):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        print(f"peft step {step + 1}: loss {loss.item():.4f}, {times[-1]:.1f} s", file=sys.stderr)
    tps = a.batch * a.seq / statistics.median(times[1:] or times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"peer": "pytorch+peft", "torch": torch.__version__, "tokens_per_s": tps, "peak_rss_gib": rss}))


def moe_run(a):
    moe = os.path.join(ROOT, "target", "release", "moe")
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "t.txt")
        with open(text, "w") as f:
            f.write(TEXT * 4000)
        cmd = ["/usr/bin/time", "-v", moe, "train", "--init", a.dir, "--lora-rank", str(a.rank), "--lora-targets",
               a.targets, "--lora-base", "bf16", "--recompute", "--data", text, "--cache-dir",
               os.path.join(tmp, "cache"), "--out", os.path.join(tmp, "run"), "--batch-size", str(a.batch),
               "--seq-len", str(a.seq), "--steps", str(a.steps), "--log-every", "1", "--eval-every", "0",
               "--eval-batches", "1", "--checkpoint-every", "0", "--sample-tokens", "0", "--lr", "1e-4",
               "--precision", "fp32", "--quiet"]
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"moe failed:\n{out.stderr[-3000:]}")
        rss = next(int(l.split()[-1]) for l in out.stderr.splitlines() if "Maximum resident set size" in l)
        steps = [json.loads(l) for l in open(os.path.join(tmp, "run", "metrics.jsonl"))]
        tps = [s["m"]["tokens_per_s"] for s in steps if s.get("kind") == "train"]
    print(json.dumps({"peer": "moe", "tokens_per_s": statistics.median(tps[1:] or tps), "peak_rss_gib": rss / 2**20}))


def bench(a):
    rows = []
    for which in ["moe", "peft"]:
        cmd = [sys.executable, __file__, which, a.dir, "--batch", str(a.batch), "--seq", str(a.seq), "--steps",
               str(a.steps), "--rank", str(a.rank), "--targets", a.targets, "--threads", str(a.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr[-3000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"| run | tokens/s | peak RSS (GiB) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['peer']} | {r['tokens_per_s']:.1f} | {r['peak_rss_gib']:.2f} |")
    print(f"moe / peft: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x tokens/s, "
          f"{rows[0]['peak_rss_gib'] / rows[1]['peak_rss_gib']:.2f}x memory")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["make", "peft", "moe", "bench"])
    p.add_argument("dir")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default="attn")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    {"make": lambda: make(a.dir), "peft": lambda: peft_run(a), "moe": lambda: moe_run(a), "bench": lambda: bench(a)}[
        a.what]()
