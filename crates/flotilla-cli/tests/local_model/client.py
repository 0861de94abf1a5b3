"""The official `openai` client against `flotilla model serve`.

Usage: client.py BASE_URL CHECK   (CHECK: plain, stream, tool, twenty,
concurrent, kill). Prints one JSON object with what it saw; exits non-zero
when a check fails, with the reason on stderr.
"""

import json
import os
import signal
import sys
import threading
import time
import urllib.request

from openai import OpenAI

BASE = sys.argv[1]
CHECK = sys.argv[2]
client = OpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=120)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


def fail(why):
    print(why, file=sys.stderr)
    sys.exit(1)


def check_call(call):
    """A call of an offered tool whose arguments match its schema."""
    name = call.function.name
    args = json.loads(call.function.arguments)
    if name == "get_weather":
        if set(args) != {"city", "unit"}:
            fail(f"get_weather arguments {args}")
        if not isinstance(args["city"], str) or len(args["city"]) > 40:
            fail(f"city {args['city']!r}")
        if args["unit"] not in ("celsius", "fahrenheit"):
            fail(f"unit {args['unit']!r}")
    elif name == "add":
        if set(args) != {"a", "b"} or not all(type(args[k]) is int for k in "ab"):
            fail(f"add arguments {args}")
    else:
        fail(f"a call of {name!r}, which was not offered")
    return {"name": name, "arguments": args}


def health():
    with urllib.request.urlopen(BASE.rsplit("/v1", 1)[0] + "/health", timeout=10) as r:
        return json.load(r)


if CHECK == "plain":
    r = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
    )
    c = r.choices[0]
    if c.finish_reason not in ("stop", "length"):
        fail(f"finish_reason {c.finish_reason}")
    if r.usage.completion_tokens < 1 or r.usage.prompt_tokens < 1:
        fail(f"usage {r.usage}")
    print(json.dumps({"content": c.message.content, "finish": c.finish_reason,
                      "usage": r.usage.completion_tokens, "model": r.model}))

elif CHECK == "stream":
    chunks, text, finish, usage = 0, "", None, None
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    for ch in stream:
        chunks += 1
        if ch.usage is not None:
            usage = ch.usage.completion_tokens
        for c in ch.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    if chunks < 3 or finish not in ("stop", "length") or not usage:
        fail(f"chunks {chunks} finish {finish} usage {usage}")
    print(json.dumps({"chunks": chunks, "text": text, "finish": finish, "usage": usage}))

elif CHECK == "tool":
    r = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "What is the weather in Paris, in celsius?"}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=200,
    )
    c = r.choices[0]
    if c.finish_reason != "tool_calls" or not c.message.tool_calls:
        fail(f"no call: {c}")
    # And streamed: the call arrives whole.
    s = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
        stream=True,
    )
    streamed, sfinish = [], None
    for ch in s:
        for cc in ch.choices:
            streamed += cc.delta.tool_calls or []
            sfinish = cc.finish_reason or sfinish
    if sfinish != "tool_calls" or len(streamed) != 1:
        fail(f"streamed call: {streamed} {sfinish}")
    print(json.dumps({"call": check_call(c.message.tool_calls[0]),
                      "id": c.message.tool_calls[0].id,
                      "streamed": check_call(streamed[0])}))

elif CHECK == "twenty":
    prompts = [
        "What is the weather in Paris?", "Add 2 and 3.", "Is it raining in Tokyo?",
        "What is 40 plus 2?", "Weather in Lagos, in fahrenheit.", "Sum 7 and 8.",
        "How cold is it in Oslo?", "Add 100 and -5.", "Forecast for Lima?", "1 + 1?",
        "Weather for Cairo.", "Add 12 and 30.", "Temperature in Quito?", "What is 9 plus 9?",
        "Is it sunny in Rome?", "Add 0 and 0.", "Weather in Seoul.", "Compute 21 + 21.",
        "How hot is Delhi?", "Add 5 and 6.",
    ]
    calls = []
    for p in prompts:
        r = client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": p}],
            tools=[WEATHER, ADD],
            tool_choice="required",
            max_tokens=200,
        )
        c = r.choices[0]
        if not c.message.tool_calls:
            fail(f"{p!r}: no call ({c.message.content!r}, {c.finish_reason})")
        calls.append(check_call(c.message.tool_calls[0]))
    print(json.dumps({"calls": calls}))

elif CHECK == "concurrent":
    results, errors = {}, []

    def ask(i):
        try:
            t0 = time.monotonic()
            r = client.chat.completions.create(
                model="local",
                messages=[{"role": "user", "content": f"Tell a story number {i}."}],
                max_tokens=64,
                temperature=0,
            )
            results[i] = {"start": t0, "end": time.monotonic(),
                          "tokens": r.usage.completion_tokens}
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors or len(results) != 2:
        fail(f"errors {errors}")
    a, b = results[0], results[1]
    overlap = min(a["end"], b["end"]) - max(a["start"], b["start"])
    print(json.dumps({"results": results, "overlap_s": overlap}))

elif CHECK == "kill":
    before = health()
    pid = before["engine_pid"]
    got, error = 0, None
    try:
        stream = client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "Write a very long essay."}],
            max_tokens=2000,
            stream=True,
        )
        for ch in stream:
            got += 1
            if got == 3:
                os.kill(pid, signal.SIGKILL)
    except Exception as e:  # noqa: BLE001
        error = type(e).__name__
    # The front starts a new engine; the next request succeeds.
    deadline = time.monotonic() + 120
    while True:
        try:
            h = health()
            if h.get("status") == "ok" and h.get("engine_pid") != pid:
                break
        except Exception:  # noqa: BLE001
            pass
        if time.monotonic() > deadline:
            fail("the engine did not come back")
        time.sleep(0.2)
    r = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8,
    )
    print(json.dumps({"chunks_before_kill": got, "error": error, "old_pid": pid,
                      "new_pid": h["engine_pid"], "restarts": h["restarts"],
                      "after": r.choices[0].finish_reason}))

else:
    fail(f"unknown check {CHECK}")
