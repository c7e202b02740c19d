"""CPU per decision with a tenant's built-in content rules on vs off, same run, same process.

Run: `python -m bench.content_rules [--requests 2000] [--rounds 5] [--no-record]`. Two authorizers over
the same bench tenant, one with every built-in rule (payment_card, private_key, cloud_credentials,
email) switched on, decide the same requests (no Redis: the admission is not what changes), in
alternating rounds so machine drift hits both alike. Reported: the median over rounds of CPU µs
per `Authorizer.decide`, and of the content step alone (text extraction + RE2 sets + card check),
for three bodies: the bench's 330-byte request, a 4 KiB conversation with a tool, and a 60 KiB one
(the bench's body limit is 64 KiB). Every request is admitted: the rules scan everything.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.fixture import BODY, PATH, PROVIDER_KEY, PROVIDER_KEY_ENV, make_keys, write_config
from dynaseal.config import load_config
from dynaseal.content.fields import chat_texts
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer, AuthRequest

BUILTINS = ["payment_card", "private_key", "cloud_credentials", "email"]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
FILLER = ("Our order 58213 shipped on 2026-11-30; the invoice total was 1,249.00 EUR, reference "
          "INV-2026-0042, call +49 30 1234 5678. ")


def conversation(target_bytes: int) -> bytes:
    """A chat body of about `target_bytes`: system prompt, turns of user/assistant text, one tool."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a support assistant. " * 4}]
    turn = 0
    while len(orjson.dumps(messages)) < target_bytes - 600:
        role = "user" if turn % 2 == 0 else "assistant"
        messages.append({"role": role, "content": FILLER * 3})
        turn += 1
    tools = [{"type": "function", "function": {"name": "lookup_order", "description": "Find an order by number",
                                               "parameters": {"type": "object", "properties": {
                                                   "order": {"type": "string", "description": "order number"}}}}}]
    return orjson.dumps({"model": "gpt-4o-mini", "messages": messages, "tools": tools, "max_tokens": 64,
                         "user": "bench-user-0000000001"})


def authorizer(directory: Path, keys: Any, rules: list[dict[str, str]]) -> Authorizer:
    """An authorizer over the bench tenant with these content rules, without Redis."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_config(directory, {}, keys)
    raw = yaml.safe_load(path.read_text())
    raw["tenants"][0]["limits"]["content_rules"] = rules
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return Authorizer(build_registry(load_config(path)), quota=None)


def cpu_per_call(fn: Any, requests: int) -> float:
    """CPU µs per call of `fn()` over `requests` calls."""
    started = time.process_time()
    for _ in range(requests):
        fn()
    return (time.process_time() - started) / requests * 1e6


def main(argv: list[str] | None = None) -> None:
    """Measure, print the Markdown section, and append it to bench/RESULTS.md unless --no-record."""
    parser = argparse.ArgumentParser(prog="python -m bench.content_rules")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    from bench.results import git_commit, machine

    os.environ.setdefault(PROVIDER_KEY_ENV, PROVIDER_KEY)
    keys = make_keys()
    headers = {"authorization": f"Bearer {keys.token}", "content-type": "application/json"}
    bodies = {"330 B (bench body)": BODY, "4 KiB conversation + tool": conversation(4096),
              "60 KiB conversation + tool": conversation(60 * 1024)}
    with tempfile.TemporaryDirectory() as tmp:
        off = authorizer(Path(tmp) / "off", keys, [])
        on = authorizer(Path(tmp) / "on", keys, [{"builtin": name} for name in BUILTINS])
    loop = asyncio.new_event_loop()
    rows = []
    for label, body in bodies.items():
        request = AuthRequest("POST", PATH, headers, body)
        for who in (off, on):
            decision = loop.run_until_complete(who.decide(request))
            assert decision.allowed, decision  # every request is admitted: the rules scan all of it
        parsed = orjson.loads(body)
        rules = on.registry.get("bench").limits.content_rules.compiled  # type: ignore[union-attr]
        count = max(args.requests * 330 // len(body), 200)  # about the same bytes per round
        calls = {"off": lambda a=off, r=request: loop.run_until_complete(a.decide(r)),
                 "on": lambda a=on, r=request: loop.run_until_complete(a.decide(r)),
                 "step": lambda c=rules, p=parsed: c.check(chat_texts(p))}
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                samples[name].append(cpu_per_call(call, count))
        med = {k: statistics.median(v) for k, v in samples.items()}
        added = f"{med['on'] - med['off']:+.1f} ({(med['on'] / med['off'] - 1) * 100:+.0f} %)"
        rows.append(f"| {label} | {len(body):,} | {count} × {args.rounds} | {med['off']:.1f} | {med['on']:.1f} | "
                    f"{added} | {med['step']:.1f} |")
    loop.close()

    command = "python -m bench.content_rules" + (f" --requests {args.requests}" if args.requests != 2000 else "") \
        + (f" --rounds {args.rounds}" if args.rounds != 5 else "")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {now} · commit `{git_commit()}` · content rules: CPU per decision, built-ins on vs off", "",
             f"- command: `{command}`", f"- machine: {machine()}",
             "- in process, no Redis (quota off), one event loop; rounds alternate off/on; median of rounds; "
             f"on = {', '.join(BUILTINS)}", "",
             "| body | bytes | requests × rounds | off µs/decision | on µs/decision | added | content step alone µs |",
             "|---|---:|---:|---:|---:|---:|---:|", *rows, ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        with RESULTS.open("a") as out:
            out.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
