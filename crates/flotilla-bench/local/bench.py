"""Prompt-processing and decode speed of two OpenAI-compatible servers on
the same model, measured the same way from the client side, alternating.

Usage: bench.py OURS_BASE PEER_BASE ROUNDS   (bases end in /v1)

A round streams one greedy completion: prompt processing is the prompt's
tokens over the time to the first streamed token; decode is the tokens
after the first over the time from the first to the last. Prints JSON.
"""

import json
import os
import statistics
import sys
import time
import urllib.request

OURS, PEER, ROUNDS = sys.argv[1], sys.argv[2], int(sys.argv[3])
MAX_TOKENS = 128
TEXT = (
    "The history of computing is a history of abstractions built on top of one another. "
    "Early machines were programmed by rewiring them; later ones read instructions from "
    "punched cards, then from memory. Assemblers gave names to instructions, compilers "
    "turned formulas into programs, and operating systems shared one machine among many "
    "users. Each layer hid the one below it and let people think about larger problems. "
) * 5


def stream(base, prompt):
    body = json.dumps({
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
    }).encode()
    req = urllib.request.Request(base + "/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    t0 = time.monotonic()
    first = last = None
    tokens = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for c in chunk.get("choices", []):
                if (c.get("delta") or {}).get("content"):
                    now = time.monotonic()
                    tokens += 1
                    first = first or now
                    last = now
    return t0, first, last, tokens


def prompt_tokens(base, prompt):
    """Prompt tokens as the server counts them (a non-streamed call)."""
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["usage"]["prompt_tokens"]


def main():
    servers = {"flotilla": OURS, "llama-cpp-python": PEER}
    n_prompt = {name: prompt_tokens(base, TEXT) for name, base in servers.items()}
    # Warm up each once (page cache, first allocation).
    for base in servers.values():
        stream(base, "Warm up. " + TEXT[:200])
    samples = {name: {"pp": [], "tg": []} for name in servers}
    for i in range(ROUNDS):
        order = list(servers.items()) if i % 2 == 0 else list(reversed(servers.items()))
        for name, base in order:
            # A different prompt each round, so no prefix cache helps.
            t0, first, last, tokens = stream(base, f"Round {i}. " + TEXT)
            if first is None or tokens < 2:
                raise SystemExit(f"{name}: no tokens streamed")
            samples[name]["pp"].append(n_prompt[name] / (first - t0))
            samples[name]["tg"].append((tokens - 1) / (last - first))
    out = {"rounds": ROUNDS, "max_tokens": MAX_TOKENS, "prompt_tokens": n_prompt["flotilla"],
           "cpu": f"{os.cpu_count()} CPUs"}
    for name, s in samples.items():
        out[name] = {
            "pp_p50": statistics.median(s["pp"]),
            "tg_p50": statistics.median(s["tg"]),
            "pp": s["pp"],
            "tg": s["tg"],
            "prompt_tokens": n_prompt[name],
        }
    print(json.dumps(out, indent=1))


main()
