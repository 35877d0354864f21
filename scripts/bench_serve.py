#!/usr/bin/env python3
"""Load test of an OpenAI-compatible server over loopback (issue 22, item 6): N concurrent
clients, each sending R streamed /v1/completions requests one after another (a bounded loop),
with the same prompt (token ids) and a fixed number of new tokens (ignore_eos, which moe serve and
llama-server both accept). Reports, per concurrency level: aggregate generated tokens/s,
requests/s, time to first token and inter-token latency per request (p50 and p99), failed requests,
and two checks of what "first token" means for a server: chunks per generated token, and the median
of each request's longest pause between chunks (a first chunk sent before the prompt is read shows
as a long pause after it).

    python3 scripts/bench_serve.py --url http://127.0.0.1:8080 --model NAME --clients 1 4 16 64
Prints one JSON line per level (and a table to stderr). Standard library only.
"""
import argparse
import http.client
import json
import math
import random
import statistics
import sys
import threading
import time
import urllib.parse

def prompt(i, n):
    """n token ids (3..99: inside every vocabulary, clear of BOS/EOS) drawn at random, seeded by
    the request's number in the whole run (warm-up and every level), so no two prompts share a
    prefix a server could reuse from its cache (llama-server keeps each slot's last prompt); ids
    rather than text, so both servers see exactly the same tokens."""
    rng = random.Random(1000 + i)
    return [rng.randrange(3, 100) for _ in range(n)]


def one(url, body):
    """Streams one completion; returns (ttft, [chunk times], tokens)."""
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    times, tokens = [], 0
    for raw in r:  # one line per SSE field; the stream ends with [DONE]
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
        if ev.get("choices"):  # one chunk per token on both servers (text may be empty)
            times.append(time.perf_counter() - t0)
    c.close()
    return (times[0] if times else float("nan")), times, tokens


def level(url, model, clients, per_client, prompt_tokens, max_tokens, first):
    """clients x per_client requests, numbered from `first` (their prompts' seeds)."""
    results, errors = [], []

    def client(k):
        for r in range(per_client):
            body = {"model": model, "prompt": prompt(first + k * per_client + r, prompt_tokens), "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            try:
                results.append(one(url, body))
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    # inter-token latency of a request: (last chunk - first chunk) / (tokens - 1), which does
    # not depend on whether the finish_reason rides on the last token's chunk or its own
    itl = sorted((ts[-1] - ts[0]) / (n - 1) for _, ts, n in results if n > 1 and len(ts) > 1)

    def pct(xs, q, scale=1.0, nd=3):
        return round(scale * xs[max(0, math.ceil(q * len(xs)) - 1)], nd) if xs else None

    tokens = sum(r[2] or len(r[1]) for r in results)
    # whether a server's first chunk comes before the prompt is read: then the chunks outnumber
    # the tokens, or the longest pause falls after the first chunk
    chunks = sum(len(ts) for _, ts, _ in results)
    gaps = sorted(max(b - a for a, b in zip(ts, ts[1:])) for _, ts, _ in results if len(ts) > 1)
    return {
        "clients": clients, "requests": len(results), "errors": len(errors), "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2), "requests_per_s": round(len(results) / wall, 3),
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_p99_s": pct(ttft, 0.99),
        "itl_p50_ms": round(1000 * statistics.median(itl), 1) if itl else None,
        "itl_p99_ms": pct(itl, 0.99, 1000, 1),
        "chunks_per_token": round(chunks / tokens, 3) if tokens else None,
        "longest_pause_p50_s": round(statistics.median(gaps), 3) if gaps else None,
        "first_error": errors[0] if errors else None,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--label", default="")
    a = p.parse_args()
    level(a.url, a.model, 1, 1, a.prompt_tokens, 4, 0)  # warm-up (first-touch of the weights), not reported
    used = 1
    for n in a.clients:
        per_client = max(a.requests_per_client, -(-8 // n))  # at least 8 requests per level
        r = level(a.url, a.model, n, per_client, a.prompt_tokens, a.max_tokens, used)
        used += n * per_client
        r["label"] = a.label
        print(json.dumps(r), flush=True)
        print(f"{a.label:>24} {n:>3} clients: {r['tokens_per_s']:8.1f} tok/s  ttft {r['ttft_p50_s']}/{r['ttft_p99_s']} s  "
              f"itl {r['itl_p50_ms']}/{r['itl_p99_ms']} ms  errors {r['errors']}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
