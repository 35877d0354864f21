#!/usr/bin/env python3
"""Drives `moe serve` with the official `openai` Python package (issue 22): models list,
chat and completions, whole and streamed, concurrent streams, and an error answer, all over
loopback. Starts the server itself on a free port and stops it at the end.

    pip install openai                     # once; never needed by CI
    cargo build --release
    python3 scripts/openai_client.py [--model DIR_OR_GGUF] [--moe target/release/moe]

Default model: the tiny Qwen3-MoE test fixture. Exits non-zero if any check fails.
"""
import argparse
import concurrent.futures
import os
import re
import subprocess
import sys
import time

import openai

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..")
p = argparse.ArgumentParser()
p.add_argument("--model", default=os.path.join(root, "crates/moe-infer/tests/fixtures/qwen3_moe"))
p.add_argument("--moe", default=os.path.join(root, "target/release/moe"))
p.add_argument("--max-tokens", type=int, default=16)
a = p.parse_args()

srv = subprocess.Popen([a.moe, "serve", "--model", a.model, "--port", "0", "--alias", "m", "--parallel", "8"],
                       stderr=subprocess.PIPE, text=True)
try:
    url = None
    for line in srv.stderr:  # bounded: the server prints its address right after loading
        m = re.search(r"http://(127\.0\.0\.1:\d+)/v1", line)
        if m:
            url = f"http://{m.group(1)}/v1"
            break
    assert url, "the server did not start"
    c = openai.OpenAI(base_url=url, api_key="unused")
    checks = []

    def check(name, ok, detail=""):
        checks.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")

    check("models", [m.id for m in c.models.list().data] == ["m"])
    msgs = [{"role": "user", "content": "Say hello."}]
    r = c.chat.completions.create(model="m", messages=msgs, max_tokens=a.max_tokens, temperature=0)
    whole = r.choices[0].message.content
    check("chat, whole", r.usage.completion_tokens <= a.max_tokens and r.choices[0].finish_reason in ("stop", "length"),
          repr(whole))
    t0 = time.time()
    parts, usage = [], None
    for ch in c.chat.completions.create(model="m", messages=msgs, max_tokens=a.max_tokens, temperature=0, stream=True,
                                        stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            parts.append(ch.choices[0].delta.content)
        if ch.usage:
            usage = ch.usage
    check("chat, streamed = whole", "".join(parts) == whole, f"({len(parts)} chunks, {time.time() - t0:.2f} s)")
    check("stream usage", usage is not None and usage.completion_tokens == r.usage.completion_tokens)
    r = c.completions.create(model="m", prompt="fn main() {", max_tokens=a.max_tokens, temperature=0)
    check("completion, whole", r.choices[0].text is not None, repr(r.choices[0].text))

    def one(i):
        s = c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"Count to {i}."}],
                                      max_tokens=a.max_tokens, temperature=0.7, seed=i, stream=True)
        return "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(16)))
    check("16 concurrent streams", len(outs) == 16)
    try:
        c.chat.completions.create(model="m", messages=msgs, max_tokens=-1)
        check("max_tokens -1 refused", False)
    except openai.BadRequestError as e:
        check("max_tokens -1 refused", "max_tokens" in str(e), f"({e.status_code})")
    try:
        c.chat.completions.create(model="other", messages=msgs)
        check("unknown model refused", False)
    except openai.NotFoundError as e:
        check("unknown model refused", True, f"({e.status_code})")
    print(f"{sum(checks)}/{len(checks)} checks passed")
    sys.exit(0 if all(checks) else 1)
finally:
    srv.terminate()
    srv.wait(timeout=30)
