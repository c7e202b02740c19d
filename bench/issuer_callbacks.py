"""`python -m bench.issuer_callbacks`: CPU the issuer spends per stored usage callback.

Starts `python -m issuer_api` on a fresh data directory (the bundled dev config, SQLite), sends
signed callbacks over keep-alive connections, and reads the issuer process's user + system CPU
from /proc before and after the measured batch. Prints one Markdown table row per concurrency.
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
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import yaml
from standardwebhooks.webhooks import Webhook

from bench.harness import free_ports
from dynaseal.config import bundled_dev_config, config_environment, load_config

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def write_config(work: Path, port: int) -> Path:
    """The bundled dev config, moved to `work` and to a free issuer port."""
    source = bundled_dev_config()
    raw = yaml.safe_load(source.read_text())
    raw["env_file"] = str(source.parent / raw["env_file"])
    raw["gateway"]["data_dir"] = str(work / "data")
    raw["gateway"].setdefault("ports", {})["issuer"] = port
    path = work / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def signed(secret: str, n: int) -> list[tuple[bytes, dict[str, str]]]:
    """n distinct callbacks in the gateway's shape, signed now."""
    webhook = Webhook(secret)
    out = []
    for i in range(n):
        msg_id = f"req-{secrets.token_hex(8)}"
        body = orjson.dumps({
            "type": "usage", "event_id": f"ev-{i}", "content": "hello from the model " * 8, "tokens": 57,
            "usage": {"prompt_tokens": 12, "completion_tokens": 45, "total_tokens": 57},
            "model": "deepseek-chat", "key_id": f"jti-{i % 50}", "sub": "client1", "request_id": msg_id,
            "status": 200, "stream": True, "started_at": "2025-01-01T00:00:00Z", "duration_ms": 812, "cb": {}})
        now = datetime.now(UTC)
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": webhook.sign(msg_id, now, body.decode()),
                   "content-type": "application/json"}
        out.append((body, headers))
    return out


def send(url: str, batch: list[tuple[bytes, dict[str, str]]], concurrency: int) -> None:
    """POST every callback, `concurrency` keep-alive connections at a time; each must be stored."""
    chunks = [batch[i::concurrency] for i in range(concurrency)]
    errors: list[str] = []

    def worker(chunk: list[tuple[bytes, dict[str, str]]]) -> None:
        with httpx.Client(timeout=30) as client:
            for body, headers in chunk:
                response = client.post(url, content=body, headers=headers)
                if response.status_code != 200 or response.json().get("status") != "stored":
                    errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} callbacks not stored, first: {errors[0]}")


def main(argv: list[str] | None = None) -> int:
    """Start the issuer, measure CPU per stored callback at each concurrency, print a table."""
    parser = argparse.ArgumentParser(prog="python -m bench.issuer_callbacks", description=__doc__)
    parser.add_argument("--callbacks", type=int, default=2000, help="measured callbacks per run (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured callbacks first (default 200)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8],
                        help="concurrent senders, one run each (default 1 8)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dynaseal-bench-issuer-"))
    (port,) = free_ports(1)
    config = write_config(work, port)
    cfg = load_config(config)
    callback = cfg.tenants[0].callback
    assert callback is not None and callback.secret_env is not None
    secret = config_environment(cfg)[callback.secret_env]  # from dev.env, as the issuer reads it
    issuer = subprocess.Popen([sys.executable, "-m", "issuer_api", "--config", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("issuer did not start")
        url = base + "/v1/callback/usage"
        send(url, signed(secret, args.warmup), 1)
        print("| senders | callbacks | issuer CPU µs / callback (user + sys) | callbacks / s (wall) |")
        print("|---:|---:|---:|---:|")
        for concurrency in args.concurrency:
            batch = signed(secret, args.callbacks)
            (user0, sys0), wall0 = cpu_seconds(issuer.pid), time.perf_counter()
            send(url, batch, concurrency)
            (user1, sys1), wall = cpu_seconds(issuer.pid), time.perf_counter() - wall0
            user, system = (user1 - user0) / args.callbacks * 1e6, (sys1 - sys0) / args.callbacks * 1e6
            print(f"| {concurrency} | {args.callbacks} | {user + system:.0f} ({user:.0f} + {system:.0f}) | "
                  f"{args.callbacks / wall:.0f} |", flush=True)
    finally:
        issuer.terminate()
        issuer.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
