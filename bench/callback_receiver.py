"""`python -m bench callback-receiver`: usage callbacks the bundled issuer stores per second, before vs after.

Starts `python -m issuer_api` on the bundled dev config (SQLite, fresh data directory) once for this
tree and, with `--before REF`, once for a `git archive` of REF, and sends both the same shape of
signed callbacks over keep-alive connections in alternating rounds (so a busy moment of the machine
hits both alike). `--events-per-request N` sends them as signed batches (`callback.batch`); a batch
is only sent to a version that answers it. Every callback must come back `stored`. Prints one
Markdown row per version, senders and batch size: stored per second (wall) and the issuer's CPU per
stored callback (user + system, from /proc).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from bench.harness import free_ports
from bench.issuer_callbacks import cpu_seconds, write_config
from dynaseal.config import bundled_dev_config, config_environment, load_config

ROOT = Path(__file__).resolve().parent.parent
Request = tuple[bytes, dict[str, str]]


@dataclass
class Issuer:
    """One running issuer of one version of the code."""

    label: str
    process: subprocess.Popen[bytes]
    url: str


def event(i: int, request_id: str) -> dict[str, object]:
    """One usage callback in the gateway's shape."""
    return {"type": "usage", "event_id": f"ev-{i}", "content": "hello from the model " * 8, "tokens": 57,
            "usage": {"prompt_tokens": 12, "completion_tokens": 45, "total_tokens": 57},
            "model": "deepseek-chat", "key_id": f"jti-{i % 50}", "sub": "client1", "request_id": request_id,
            "usage_source": "upstream", "status": 200, "stream": True, "started_at": "2025-01-01T00:00:00Z",
            "duration_ms": 812, "cb": {}, "cost": {"amount": "0.0000123", "currency": "USD"}}


def signed_requests(secret: str, callbacks: int, per_request: int) -> list[Request]:
    """`callbacks` distinct callbacks, signed now, one per request or `per_request` to a batch."""
    webhook = Webhook(secret)
    out: list[Request] = []
    for start in range(0, callbacks, per_request):
        ids = [f"req-{secrets.token_hex(8)}" for _ in range(min(per_request, callbacks - start))]
        if per_request == 1:
            msg_id, body = ids[0], orjson.dumps(event(start, ids[0]))
        else:
            msg_id = f"batch_{secrets.token_hex(16)}"
            body = orjson.dumps({"type": "batch", "events": [
                {"id": rid, "event": event(start + n, rid)} for n, rid in enumerate(ids)]})
        now = datetime.now(UTC)
        out.append((body, {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                           "webhook-signature": webhook.sign(msg_id, now, body.decode()),
                           "content-type": "application/json"}))
    return out


def not_stored(reply: httpx.Response) -> int:
    """Callbacks of one request the issuer did not answer `stored` for."""
    if reply.status_code != 200:
        return 1
    answer = reply.json()
    if answer.get("status") == "batch":
        return sum(1 for status in answer["results"].values() if status != "stored")
    return 0 if answer.get("status") == "stored" else 1


def send(url: str, requests: list[Request], senders: int) -> None:
    """POST every request, `senders` keep-alive connections at a time; each callback must be stored."""
    failures: list[int] = []

    def worker(chunk: list[Request]) -> None:
        with httpx.Client(timeout=60) as client:
            failures.extend(not_stored(client.post(url, content=body, headers=headers)) for body, headers in chunk)

    threads = [threading.Thread(target=worker, args=(requests[i::senders],)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if sum(failures):
        raise SystemExit(f"{sum(failures)} callbacks not stored at {url}")


def checkout(ref: str, into: Path) -> Path:
    """A `git archive` of `ref` unpacked under `into` (the code as it was, without .git)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start(label: str, tree: Path, work: Path) -> Issuer:
    """Start the issuer of `tree` on its own port and data directory; wait until it answers."""
    (port,) = free_ports(1)
    work.mkdir(parents=True)
    config = write_config(work, port)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    process = subprocess.Popen([sys.executable, "-m", "issuer_api", "--config", str(config)], cwd=tree, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return Issuer(label, process, base + "/v1/callback/usage")
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise SystemExit(f"the {label} issuer did not start")


def answers_batches(issuer: Issuer, secret: str) -> bool:
    """Whether this version stores a signed batch per event."""
    body, headers = signed_requests(secret, 2, 2)[0]
    reply = httpx.post(issuer.url, content=body, headers=headers, timeout=30)
    return reply.status_code == 200 and reply.json().get("status") == "batch"


def measure(issuer: Issuer, secret: str, callbacks: int, senders: int, per_request: int) -> tuple[float, float]:
    """(stored per second, issuer CPU µs per callback) of one round."""
    requests = signed_requests(secret, callbacks, per_request)
    user0, sys0 = cpu_seconds(issuer.process.pid)
    started = time.perf_counter()
    send(issuer.url, requests, senders)
    wall = time.perf_counter() - started
    user1, sys1 = cpu_seconds(issuer.process.pid)
    return callbacks / wall, (user1 - user0 + sys1 - sys0) / callbacks * 1e6


def _table(args: argparse.Namespace, issuers: list[Issuer], secret: str) -> None:
    """Every setting's rounds, alternating the issuers, as one markdown table."""
    batching = {issuer.label: answers_batches(issuer, secret) for issuer in issuers}
    print("| version | senders | callbacks / request | stored / s (each round) | issuer CPU µs / callback |")
    print("|---|---:|---:|---|---|")
    for senders in args.senders:
        for per_request in args.events_per_request:
            rows: dict[str, list[tuple[float, float]]] = {issuer.label: [] for issuer in issuers}
            for _ in range(args.rounds):
                for issuer in issuers:
                    if per_request == 1 or batching[issuer.label]:
                        rows[issuer.label].append(measure(issuer, secret, args.callbacks, senders, per_request))
            for label, figures in rows.items():
                rates = ", ".join(f"{rate:.0f}" for rate, _cpu in figures) or "no batches"
                cpus = ", ".join(f"{cpu:.0f}" for _rate, cpu in figures) or "–"
                print(f"| {label} | {senders} | {per_request} | {rates} | {cpus} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Start the issuer(s), run the rounds, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench callback-receiver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="a git ref to compare against in the same run (e.g. main)")
    parser.add_argument("--callbacks", type=int, default=3000, help="callbacks per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per setting (default 2)")
    parser.add_argument("--senders", type=int, nargs="+", default=[8], help="concurrent connections (default 8)")
    parser.add_argument("--events-per-request", type=int, nargs="+", default=[1, 50],
                        help="1 = one callback per request (the seed's format); N = signed batches of N (default 1 50)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dynaseal-bench-receiver-"))
    trees = [("after", ROOT)]
    if args.before:
        trees.insert(0, (f"before ({args.before})", checkout(args.before, work / "before-tree")))
    issuers: list[Issuer] = []
    try:
        for n, (label, tree) in enumerate(trees):
            issuers.append(start(label, tree, work / f"run-{n}"))
        cfg = load_config(bundled_dev_config())
        callback = cfg.tenants[0].callback
        assert callback is not None and callback.secret_env is not None
        secret = config_environment(cfg)[callback.secret_env]  # dev.env's value, as the issuer reads it
        for issuer in issuers:
            send(issuer.url, signed_requests(secret, 200, 1), 4)  # warm-up
        _table(args, issuers, secret)
    finally:
        for issuer in issuers:
            issuer.process.terminate()
            issuer.process.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
