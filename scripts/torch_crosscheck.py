#!/usr/bin/env python3
"""Cross-check of moe's training dynamics against PyTorch (issue 20, item 4).

Trains the `default` preset's dense and MoE shapes with transformers' LlamaForCausalLM and
MixtralForCausalLM on exactly the token stream `moe train` uses: the same cached tokens, the same
train/validation split, the same training windows in the same order (moe's SplitMix64 sampler,
ported below) and the same validation windows, with moe's initialisation scale (normal 0.02,
output projections 0.02 / sqrt(2 L), norms 1), AdamW (0.9, 0.95, eps 1e-8, weight decay 0.1 on
matrices), linear warm-up then cosine to 10 %, global-norm clipping at 1. Only the random initial
weights differ. It then runs `moe train` with the same settings and writes one plot and a table
of validation losses, so the difference can be set against the spread across seeds.

Mixtral has no router z-loss and no selection bias: the MoE runs on both sides use
--z-loss-coef 0, --bias-update-rate 0 and the Switch loss pooled over layers (0.01, the `global`
scope, which is Hugging Face's form).

    pip install torch transformers matplotlib      # once; never needed by CI
    python scripts/torch_crosscheck.py --steps 1000 --seeds 1 2 3 --out runs/crosscheck
    python scripts/torch_crosscheck.py --steps 20 --seeds 1 --out /tmp/cc   # smoke run

Runs one process at a time on all cores (torch with 2 threads, moe with its default replicas).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

MASK = (1 << 64) - 1
CHUNK, VAL_EVERY = 4096, 20  # moe's dataset split (crates/moe-engine/src/dataset.rs)


class Rng:
    """moe's SplitMix64 (crates/moe-engine/src/rng.rs)."""

    def __init__(self, seed):
        self.state = (seed ^ ((0x5DEECE66D * 0x9E3779B97F4A7C15) & MASK)) & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        return (self.next_u64() * n) >> 64


def split(tokens):
    chunks = [tokens[i : i + CHUNK] for i in range(0, len(tokens), CHUNK)]
    pick = min(VAL_EVERY // 2, len(chunks) - 1)
    val = np.concatenate([c for i, c in enumerate(chunks) if i % VAL_EVERY == pick])
    train = np.concatenate([c for i, c in enumerate(chunks) if i % VAL_EVERY != pick])
    return train, val


def batch(stream, rng, b, t):
    starts = [rng.below(len(stream) - t) for _ in range(b)]
    x = np.stack([stream[s : s + t] for s in starts]).astype(np.int64)
    y = np.stack([stream[s + 1 : s + t + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def build(cfg, moe):
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    common = dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=cfg["rope_theta"],
        tie_word_embeddings=False,
        attention_bias=False,
    )
    if moe:
        c = MixtralConfig(
            **common,
            intermediate_size=cfg["moe_intermediate_size"],
            num_local_experts=cfg["num_local_experts"],
            num_experts_per_tok=cfg["num_experts_per_tok"],
            router_aux_loss_coef=cfg["router_aux_loss_coef"],
            output_router_logits=True,
            sliding_window=None,
        )
        model = MixtralForCausalLM(c)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, intermediate_size=cfg["intermediate_size"], mlp_bias=False))
    std, std_out = 0.02, 0.02 / math.sqrt(2 * cfg["num_hidden_layers"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif any(k in name for k in ("o_proj", "down_proj", ".w2")):
                p.normal_(0.0, std_out)
            else:
                p.normal_(0.0, std)
    return model


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    progress = min((step - a.warmup) / max(a.steps - a.warmup, 1), 1.0)
    lo = a.lr * a.min_lr_ratio
    return lo + 0.5 * (a.lr - lo) * (1 + math.cos(math.pi * progress))


def evaluate(model, val, a):
    rng = Rng(0xE7A1)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for _ in range(a.eval_batches):
            x, y = batch(val, rng, a.batch_size, a.seq_len)
            logits = model(input_ids=x).logits
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    model.train()
    return total / a.eval_batches


def train_torch(cfg, moe, seed, train, val, a, log):
    torch.manual_seed(seed)
    model = build(cfg, moe)
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=a.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    rng = Rng(seed ^ 0xDA7A)  # moe's data stream for this seed
    rows = []
    t0 = time.time()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        x, y = batch(train, rng, a.batch_size, a.seq_len)
        out = model(input_ids=x)
        logits = out.logits
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss = ce
        if moe:
            loss = ce + cfg["router_aux_loss_coef"] * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        done = step + 1
        if done % a.eval_every == 0 or done == a.steps:
            v = evaluate(model, val, a)
            rows.append({"step": done, "val_loss": v, "train_ce": ce.item(), "seconds": time.time() - t0})
            log(f"torch {'moe' if moe else 'dense'} seed {seed}: step {done}, val {v:.4f}")
    return rows


def train_moe(moe_bin, moe, seed, a, out):
    args = [moe_bin, "train", "--preset", "default", "--steps", str(a.steps), "--seed", str(seed),
            "--eval-every", str(a.eval_every), "--eval-batches", str(a.eval_batches),
            "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--warmup", str(a.warmup),
            "--z-loss-coef", "0", "--aux-loss-scope", "global", "--bias-update-rate", "0",
            "--checkpoint-every", "0", "--sample-tokens", "0", "--quiet",
            "--cache-dir", a.cache_dir, "--out", out]
    if not moe:
        args += ["--experts", "0"]
    def val_rows():
        path = os.path.join(out, "metrics.jsonl")
        if not os.path.exists(path):
            return []
        rows = [json.loads(line) for line in open(path)]
        return [{"step": r["step"], "val_loss": r["val_loss"]} for r in rows if r.get("kind") == "val"]

    rows = val_rows()
    if not rows or rows[-1]["step"] != a.steps:  # absent, or cut short by an earlier kill
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(args, check=True)
        rows = val_rows()
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--moe-bin", default="target/release/moe")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/moe"))
    p.add_argument("--out", default="runs/crosscheck")
    a = p.parse_args()
    torch.set_num_threads(2)
    os.makedirs(a.out, exist_ok=True)
    log = lambda m: print(m, flush=True)

    # moe prepares (or finds) the cached corpus and prints the model config.
    cfg = json.loads(subprocess.run([a.moe_bin, "inspect", "default", "--print-config"], check=True,
                                    capture_output=True, text=True).stdout)
    key = subprocess.run([a.moe_bin, "corpus", "--cache-dir", a.cache_dir], check=True, capture_output=True,
                         text=True).stdout.split("cache: ")[1].split()[0]
    tokens = np.fromfile(os.path.join(key, "tokens.bin"), dtype="<u4")
    train, val = split(tokens)
    log(f"{len(train)} training and {len(val)} validation tokens from {key}")

    results = {}
    for seed in a.seeds:  # seed by seed, so a partial run has both models of its first seeds
        for moe in (False, True):
            kind = "moe" if moe else "dense"
            path = os.path.join(a.out, f"torch-{kind}-{seed}.json")
            if not os.path.exists(path):
                json.dump(train_torch(cfg, moe, seed, train, val, a, log), open(path, "w"))
            results[("torch", kind, seed)] = json.load(open(path))
            results[("moe", kind, seed)] = train_moe(a.moe_bin, moe, seed, a, os.path.join(a.out, f"moe-{kind}-{seed}"))

    # Table: final validation loss per engine, kind and seed; mean and spread.
    lines = ["| model | engine | " + " | ".join(f"seed {s}" for s in a.seeds) + " | mean | max - min |",
             "|---|---|" + "---:|" * (len(a.seeds) + 2)]
    for kind in ("dense", "moe"):
        for eng in ("moe", "torch"):
            finals = [results[(eng, kind, s)][-1]["val_loss"] for s in a.seeds]
            lines.append(f"| {kind} | {eng} | " + " | ".join(f"{v:.4f}" for v in finals)
                         + f" | {np.mean(finals):.4f} | {max(finals) - min(finals):.4f} |")
    table = "\n".join(lines)
    open(os.path.join(a.out, "crosscheck.md"), "w").write(table + "\n")
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, color in (("dense", "tab:blue"), ("moe", "tab:red")):
        for eng, style in (("moe", "-"), ("torch", "--")):
            for i, s in enumerate(a.seeds):
                r = results[(eng, kind, s)]
                ax.plot([x["step"] for x in r], [x["val_loss"] for x in r], style, color=color, alpha=0.7,
                        label=f"{'8x2 MoE' if kind == 'moe' else 'dense'}, {eng}" if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats)")
    ax.set_title("moe (solid) vs PyTorch/transformers (dashed), same token stream")
    ax.legend()
    fig.savefig(os.path.join(a.out, "crosscheck.png"), dpi=110)


if __name__ == "__main__":
    sys.exit(main())
