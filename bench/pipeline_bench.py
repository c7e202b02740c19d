"""`python -m bench.pipeline_bench`: usage-pipeline throughput and latency, access-log line → callback.

Real processes on free ports: redis-server, the tansu broker, `python -m log_shipper`,
`python -m callback_consumer`, and a receiver (uvicorn, its own process) that verifies every
Standard Webhooks signature and records when each webhook-id arrived. This process plays Envoy:
it appends access-log lines in Envoy's JSON format (mostly admitted requests with usage, some
streamed with captured content, some denials the shipper skips) and times each one.

- latency: lines written one by one at `--rate`/s for `--seconds`; per event, receipt time minus the
  moment its line was written and flushed (Envoy's own file flush, 200 ms in the stack, comes on top);
- throughput: `--events` lines written at once; events/s = events / (last receipt − write).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.harness import free_ports
from dynaseal.probes import http_ok, redis_ping
from dynaseal.processes import ServiceSpec, Supervisor, tcp_open
from dynaseal.stack import redis_server_binary, tansu_binary

HOST = "127.0.0.1"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"pipeline-bench-webhook-secret-01").decode()
TENANT_SECRET = "pipeline-bench-tenant-secret-0123456789"
REPO = Path(__file__).resolve().parent.parent


# --- the receiver process ----------------------------------------------------------------------

def receiver_app(secret: str) -> Any:
    """A tiny ASGI app: POST verifies and records (webhook-id, arrival); GET /stats dumps them."""
    from standardwebhooks import Webhook

    webhook = Webhook(secret)
    arrivals: dict[str, float] = {}
    state = {"bad": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, payload = 200, b""
        if scope["method"] == "GET":
            payload = json.dumps({"arrivals": arrivals, "bad": state["bad"]}).encode()
        else:
            now = time.time()
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            try:
                webhook.verify(body, headers, json_parse=False)
                arrivals.setdefault(headers["webhook-id"], now)
            except Exception:
                state["bad"] += 1
                status = 401
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def serve_receiver(port: int) -> None:
    """Run the receiver until killed."""
    import uvicorn

    uvicorn.run(receiver_app(WEBHOOK_SECRET), host=HOST, port=port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools" if _has("httptools") else "h11")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def arrivals(port: int) -> tuple[dict[str, float], int]:
    """(webhook-id → arrival time, bad signatures) from the receiver."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/stats", timeout=10) as reply:
        data = json.loads(reply.read())
    return data["arrivals"], data["bad"]


# --- synthetic access-log lines ----------------------------------------------------------------

def _content_b64(words: int) -> str:
    frames = [{"choices": [{"index": 0, "delta": {"content": f"word{i} "}}]} for i in range(words)]
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + b"data: [DONE]\n\n"
    return base64.b64encode(body).decode()


CONTENT = _content_b64(40)


def access_line(jti: str, rng: random.Random) -> tuple[str | None, bytes]:
    """(request_id if it makes an event, the line): 70 % JSON, 20 % streamed with content, 10 % denied."""
    request_id = str(uuid.uuid4())
    kind = rng.random()
    prompt, completion = rng.randint(5, 60), rng.randint(1, 200)
    record: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "request_id": request_id, "method": "POST",
        "path": "/v1/chat/completions", "code": 200, "flags": "-", "details": "via_upstream", "duration_ms": 40,
        "tenant": "bench", "jti": jti, "event_id": jti, "sub": "user-1", "model": "gpt-4o-mini",
        "stream": False, "reserved": 300, "deny_code": None, "prompt_tokens": prompt,
        "completion_tokens": completion, "total_tokens": prompt + completion, "content_b64": None,
    }
    if kind < 0.1:
        record.update(code=429, details="ext_authz_denied", deny_code="rate_limit_exceeded", tenant=None,
                      prompt_tokens=None, completion_tokens=None, total_tokens=None)
        return None, json.dumps(record).encode() + b"\n"
    if kind < 0.3:
        record.update(stream=True, content_b64=CONTENT)
    return request_id, json.dumps(record).encode() + b"\n"


# --- the run -----------------------------------------------------------------------------------

class PipelineRig:
    """Redis, broker, shipper, consumer and receiver on free ports in a work directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        names = ["kafka", "redis", "consumer_metrics", "shipper_metrics", "receiver"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.access_log = work / "data" / "envoy" / "access.log"
        self.supervisor = Supervisor(work / "logs", HOST)
        os.environ["BENCH_TENANT_SECRET"] = TENANT_SECRET
        os.environ["BENCH_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        self.config = work / "pipeline-bench.yaml"
        self.config.write_text(yaml.safe_dump({
            "gateway": {"host": HOST, "data_dir": str(work / "data"),
                        "ports": {k: v for k, v in self.ports.items() if k != "receiver"}},
            "tenants": [{"id": "bench", "keys": [{"alg": "HS256", "secret_env": "BENCH_TENANT_SECRET"}],
                         "callback": {"url": f"http://{HOST}:{self.ports['receiver']}/usage",
                                      "secret_env": "BENCH_WEBHOOK_SECRET", "include_content": True}}],
        }, sort_keys=False))

    def start(self) -> None:
        """Start everything and wait until each is ready."""
        p = self.ports
        self.access_log.parent.mkdir(parents=True, exist_ok=True)
        self.access_log.touch()
        env = {"PYTHONPATH": str(REPO)}
        py = [sys.executable, "-m"]
        for spec in (
            ServiceSpec("redis", [redis_server_binary(), "--port", str(p["redis"]), "--bind", HOST, "--save", "",
                                  "--appendonly", "no", "--dir", str(self.work)], "",
                        lambda: redis_ping(HOST, p["redis"])),
            ServiceSpec("kafka", [tansu_binary(), "broker", "--listener-url", f"tcp://{HOST}:{p['kafka']}",
                                  "--advertised-listener-url", f"tcp://{HOST}:{p['kafka']}",
                                  "--storage-engine", "memory://tansu/"], "", lambda: tcp_open(HOST, p["kafka"])),
            ServiceSpec("receiver", [*py, "bench.pipeline_bench", "--serve-receiver", str(p["receiver"])], "",
                        lambda: http_ok(f"http://{HOST}:{p['receiver']}/stats"), env=env),
            ServiceSpec("consumer", [*py, "callback_consumer", "--config", str(self.config), "--group-id",
                                     "bench"], "", lambda: http_ok(f"http://{HOST}:{p['consumer_metrics']}/metrics"),
                        env=env),
            ServiceSpec("shipper", [*py, "log_shipper", "--config", str(self.config)], "",
                        lambda: http_ok(f"http://{HOST}:{p['shipper_metrics']}/metrics"), env=env),
        ):
            self.supervisor.start(spec)

    def write(self, lines: list[bytes]) -> float:
        """Append lines in one write, flushed; the time just after."""
        with self.access_log.open("ab") as handle:
            handle.write(b"".join(lines))
            handle.flush()
        return time.time()

    def wait(self, ids: set[str], timeout_s: float) -> dict[str, float]:
        """Arrival times of `ids`, once all arrived (or what arrived by the timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen, bad = arrivals(self.ports["receiver"])
            if bad:
                raise RuntimeError(f"{bad} callbacks failed signature verification")
            if ids <= seen.keys() or time.monotonic() > deadline:
                return {i: seen[i] for i in ids if i in seen}
            time.sleep(0.2)

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each process."""
        tick = os.sysconf("SC_CLK_TCK")
        used = {}
        for service in self.supervisor.running:
            fields = Path(f"/proc/{service.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[service.spec.name] = (int(fields[11]) + int(fields[12])) / tick
        return used

    def stop(self) -> None:
        """Stop every process."""
        self.supervisor.stop()


def cpu_per_event(before: dict[str, float], after: dict[str, float], events: int) -> str:
    """CPU µs per event of each process, e.g. `shipper 80, consumer 900`."""
    return ", ".join(f"{name} {(after[name] - before[name]) / events * 1e6:.0f}" for name in after)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def run_latency(rig: PipelineRig, rate: float, seconds: float, rng: random.Random, jtis: list[str]) -> dict[str, Any]:
    """Lines one by one at `rate`/s; latency of each event from its write to its callback."""
    written: dict[str, float] = {}
    interval, start = 1.0 / rate, time.monotonic()
    for n in range(int(rate * seconds)):
        delay = start + n * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        request_id, line = access_line(rng.choice(jtis), rng)
        at = rig.write([line])
        if request_id:
            written[request_id] = at
    achieved = len(written) / (time.monotonic() - start)
    received = rig.wait(set(written), 60)
    latencies = [(received[i] - written[i]) * 1000 for i in received]
    return {"events": len(written), "delivered": len(received), "event_rate": achieved,
            "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies), "mean_ms": statistics.fmean(latencies)}


def run_throughput(rig: PipelineRig, events: int, rng: random.Random, jtis: list[str]) -> dict[str, Any]:
    """`events` event lines at once; events/s until the last callback arrived."""
    lines, ids = [], set()
    while len(ids) < events:
        request_id, line = access_line(rng.choice(jtis), rng)
        lines.append(line)
        if request_id:
            ids.add(request_id)
    written = rig.write(lines)
    received = rig.wait(ids, 300)
    last = max(received.values())
    return {"events": events, "delivered": len(received), "seconds": last - written,
            "events_per_s": len(received) / (last - written)}


def main(argv: list[str] | None = None) -> int:
    """Run the latency and throughput measurements and print a Markdown summary."""
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_bench", description=__doc__)
    parser.add_argument("--rate", type=float, default=556,
                        help="lines per second in the latency run (10 %% are denials: 556 lines ≈ 500 events)")
    parser.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    parser.add_argument("--events", type=int, default=20_000, help="events in the throughput run")
    parser.add_argument("--serve-receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver:
        serve_receiver(args.serve_receiver)
        return 0
    rng = random.Random(7)
    jtis = [f"bench-key-{i}" for i in range(200)]
    rig = PipelineRig(Path(tempfile.mkdtemp(prefix="dynaseal-pipeline-bench-")))
    try:
        rig.start()
        warm = run_throughput(rig, 200, rng, jtis)  # group joined, connections open, code paths warm
        print(f"warm-up: {warm['delivered']} events in {warm['seconds']:.1f} s", flush=True)
        before = rig.cpu()
        latency = run_latency(rig, args.rate, args.seconds, rng, jtis)
        middle = rig.cpu()
        throughput = run_throughput(rig, args.events, rng, jtis)
        after = rig.cpu()
    finally:
        rig.stop()
    print(f"\n## Usage pipeline (shipper → Kafka → consumer → receiver), {os.cpu_count()} cores\n")
    print(f"Command: `python -m bench.pipeline_bench --rate {args.rate:g} --seconds {args.seconds:g} "
          f"--events {args.events}`\n")
    print("| run | events | delivered | result | CPU µs per event |\n|---|---|---|---|---|")
    print(f"| latency at {latency['event_rate']:.0f} events/s ({args.rate:g} lines/s) | {latency['events']} | "
          f"{latency['delivered']} | p50 {latency['p50_ms']:.0f} ms, p90 {latency['p90_ms']:.0f} ms, "
          f"p99 {latency['p99_ms']:.0f} ms, max {latency['max_ms']:.0f} ms | "
          f"{cpu_per_event(before, middle, latency['events'])} |")
    print(f"| throughput (backlog written at once) | {throughput['events']} | {throughput['delivered']} | "
          f"{throughput['events_per_s']:.0f} events/s ({throughput['seconds']:.1f} s) | "
          f"{cpu_per_event(middle, after, throughput['events'])} |")
    return 0 if latency["delivered"] == latency["events"] and throughput["delivered"] == throughput["events"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
