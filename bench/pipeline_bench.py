"""`python -m bench.pipeline_bench`: usage-pipeline throughput and latency, access-log line → callback.

Real processes on free ports: redis-server, the tansu broker, `python -m log_shipper`,
`python -m callback_consumer`, and a receiver (a raw asyncio HTTP server, its own process) that verifies every
Standard Webhooks signature and records when each webhook-id arrived. This process plays Envoy:
it appends access-log lines in Envoy's JSON format (mostly admitted requests with usage, some
streamed with captured content, some denials the shipper skips) and times each one.

- latency: lines written one by one at `--rate`/s for `--seconds`; per event, receipt time minus the
  moment its line was written and flushed (Envoy's own file flush, 200 ms in the stack, comes on top);
- throughput: `--events` lines written at once; events/s = events / (last receipt − write).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.harness import free_ports
from dynaseal_launcher.probes import http_ok, redis_ping
from dynaseal_launcher.processes import ServiceSpec, Supervisor, tcp_open
from dynaseal_launcher.stack import redis_server_binary, tansu_binary

HOST = "127.0.0.1"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"pipeline-bench-webhook-secret-01").decode()
TENANT_SECRET = "pipeline-bench-tenant-secret-0123456789"
REPO = Path(__file__).resolve().parent.parent
# `python -c RUN_FROM_TREE TREE MODULE ARGS...`: MODULE's main from TREE, whatever the working directory
# (`python -m` would put the working directory, this tree, ahead of TREE on the path).
RUN_FROM_TREE = ("import sys, runpy\ntree, module = sys.argv[1], sys.argv[2]\nsys.path.insert(0, tree)\n"
                 "sys.argv = [module, *sys.argv[3:]]\nrunpy.run_module(module, run_name='__main__', alter_sys=True)\n")


# --- the receiver process ----------------------------------------------------------------------

class _ReceiverProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, just enough for the consumer's POSTs and the bench's GET /stats.

    A raw protocol rather than an ASGI server: the receiver stands in for the tenant's backend,
    which runs elsewhere in production, so its own cost should stay small beside the pipeline's.
    Every signature is still verified with the standardwebhooks library, as a backend would.
    """

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = self.buffer[:head_end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            size = int(headers.get("content-length", "0"))
            if len(self.buffer) < head_end + 4 + size:
                return
            body = self.buffer[head_end + 4:head_end + 4 + size]
            self.buffer = self.buffer[head_end + 4 + size:]
            self._answer(lines[0].split(" "), headers, body)

    def _answer(self, request_line: list[str], headers: dict[str, str], body: bytes) -> None:
        state, status, payload = self.state, 200, b""
        if request_line[0] == "GET":  # /stats?since=N: the arrivals after the first N
            since = int(request_line[1].partition("since=")[2] or 0)
            payload = json.dumps({"arrivals": state["order"][since:], "bad": state["bad"]}).encode()
        else:
            now = time.time()
            try:
                state["webhook"].verify(body, headers, json_parse=False)
                if headers["webhook-id"] not in state["seen"]:
                    state["seen"].add(headers["webhook-id"])
                    state["order"].append((headers["webhook-id"], now))
            except Exception:
                state["bad"] += 1
                status = 401
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, len(payload), payload))


def serve_receiver(port: int) -> None:
    """Run the receiver until killed."""
    import uvloop
    from standardwebhooks import Webhook

    state: dict[str, Any] = {"webhook": Webhook(WEBHOOK_SECRET), "seen": set(), "order": [], "bad": 0}

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _ReceiverProtocol(state), HOST, port)
        await server.serve_forever()

    uvloop.run(serve())


class _Arrivals:
    """The receiver's arrivals, fetched incrementally (a full dump per poll cost the receiver more
    than the callbacks did once tens of thousands had arrived)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.count = 0


_ARRIVALS: dict[int, _Arrivals] = {}


def arrivals(port: int) -> tuple[dict[str, float], int]:
    """(webhook-id → arrival time, bad signatures) from the receiver, everything so far."""
    known = _ARRIVALS.setdefault(port, _Arrivals())
    with urllib.request.urlopen(f"http://{HOST}:{port}/stats?since={known.count}", timeout=10) as reply:
        data = json.loads(reply.read())
    known.seen.update((webhook_id, at) for webhook_id, at in data["arrivals"])
    known.count += len(data["arrivals"])
    return known.seen, data["bad"]


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

    def __init__(self, work: Path, tenant_backlog: int = 5000, consumers: int = 1, tree: Path = REPO,
                 redis_query: str = "") -> None:
        self.work = work
        self.tree = tree  # whose shipper and consumer run (the receiver is always this tree's)
        self.consumers = consumers
        self.tenant_backlog = tenant_backlog
        names = ["kafka", "redis", "consumer_metrics", "shipper_metrics", "receiver"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.access_log = work / "data" / "envoy" / "access.log"
        self.supervisor = Supervisor(work / "logs", HOST)
        os.environ["BENCH_TENANT_SECRET"] = TENANT_SECRET
        os.environ["BENCH_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        self.config = work / "pipeline-bench.yaml"
        gateway: dict[str, Any] = {"host": HOST, "data_dir": str(work / "data"),
                                   "ports": {k: v for k, v in self.ports.items() if k != "receiver"}}
        if redis_query:  # a URL with options: the services take redis-py's asyncio client, not the pipelined one
            gateway["redis_url"] = f"redis://{HOST}:{self.ports['redis']}/0?{redis_query}"
        self.config.write_text(yaml.safe_dump({
            "gateway": gateway,
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
        tree_env, tree_py = {"PYTHONPATH": str(self.tree)}, [sys.executable, "-c", RUN_FROM_TREE, str(self.tree)]
        for spec in (
            ServiceSpec("redis", [redis_server_binary(), "--port", str(p["redis"]), "--bind", HOST, "--save", "",
                                  "--appendonly", "no", "--dir", str(self.work)], "",
                        lambda: redis_ping(HOST, p["redis"])),
            ServiceSpec("kafka", [tansu_binary(), "broker", "--listener-url", f"tcp://{HOST}:{p['kafka']}",
                                  "--advertised-listener-url", f"tcp://{HOST}:{p['kafka']}",
                                  "--storage-engine", "memory://tansu/"], "", lambda: tcp_open(HOST, p["kafka"])),
            ServiceSpec("receiver", [*py, "bench.pipeline_bench", "--serve-receiver", str(p["receiver"])], "",
                        lambda: http_ok(f"http://{HOST}:{p['receiver']}/stats"), env=env),
            *self._consumers(tree_py, tree_env),
            ServiceSpec("shipper", [*tree_py, "log_shipper", "--config", str(self.config)], "",
                        lambda: http_ok(f"http://{HOST}:{p['shipper_metrics']}/metrics"), env=tree_env),
        ):
            self.supervisor.start(spec)

    def _consumers(self, py: list[str], env: dict[str, str]) -> list[ServiceSpec]:
        """The consumer processes of the one group (the usage topic's partitions are split among them)."""
        ports = [self.ports["consumer_metrics"], *free_ports(self.consumers - 1)]
        return [ServiceSpec("consumer" if n == 0 else f"consumer-{n + 1}",
                            [*py, "callback_consumer", "--config", str(self.config), "--group-id", "bench",
                             "--metrics-port", str(port), "--tenant-backlog", str(self.tenant_backlog)], "",
                            lambda port=port: http_ok(f"http://{HOST}:{port}/metrics"), env=env)  # type: ignore[misc]
                for n, port in enumerate(ports)]

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

    def profile(self, directory: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
        """py-spy (non-blocking) on the shipper and the consumer for `seconds`, started now."""
        from bench.profile import py_spy

        directory.mkdir(parents=True, exist_ok=True)
        return [subprocess.Popen([py_spy(), "record", "--nonblocking", "-r", "200", "-d", str(max(1, round(seconds))),
                                  "-f", "raw", "-o", str(directory / f"{s.spec.name}.txt"), "-p",
                                  str(s.process.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for s in self.supervisor.running if s.spec.name in ("shipper", "consumer")]  # the first consumer

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
    """Lines at `rate`/s (written every 5 ms, the lines due by then, so the writer keeps up at
    thousands per second); latency of each event from its write to its callback."""
    written: dict[str, float] = {}
    start, total, sent = time.monotonic(), int(rate * seconds), 0
    while sent < total:
        time.sleep(0.005)
        due = min(total, int((time.monotonic() - start) * rate))
        batch = [access_line(rng.choice(jtis), rng) for _ in range(due - sent)]
        sent = due
        at = rig.write([line for _, line in batch])
        written.update((request_id, at) for request_id, _ in batch if request_id)
    achieved = len(written) / (time.monotonic() - start)
    received = rig.wait(set(written), 60)
    latencies = [(received[i] - written[i]) * 1000 for i in received]
    return {"events": len(written), "delivered": len(received), "event_rate": achieved,
            "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies), "mean_ms": statistics.fmean(latencies)}


def run_throughput(rig: PipelineRig, events: int, rng: random.Random, jtis: list[str]) -> dict[str, Any]:
    """`events` event lines at once; events/s until the last callback arrived."""
    lines: list[bytes] = []
    ids: set[str] = set()
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
    parser.add_argument("--tenant-backlog", type=int,
                        help="the consumer's --tenant-backlog (default: above --events, so the backlog run "
                             "measures delivery, not the overload guard)")
    parser.add_argument("--consumers", type=int, default=1, help="consumer processes in the group (default 1)")
    parser.add_argument("--profile", type=Path,
                        help="py-spy the shipper and consumer during the latency run; raw stacks and a summary "
                             "go to this directory")
    parser.add_argument("--before", help="a git revision whose shipper and consumer drain the same backlogs in "
                        "alternating rounds beside this tree's (throughput only; bench/pipeline_ab.py)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side with --before (default 5)")
    parser.add_argument("--after-redis-query", default="",
                        help="with --before: URL options for the working tree's Redis URL (e.g. "
                             "health_check_interval=0), so its consumer runs on redis-py's asyncio client instead "
                             "of the pipelined one")
    parser.add_argument("--serve-receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver:
        serve_receiver(args.serve_receiver)
        return 0
    if args.before:
        from bench import pipeline_ab  # it imports this module

        return pipeline_ab.run(args)
    rng = random.Random(7)
    jtis = [f"bench-key-{i}" for i in range(200)]
    rig = PipelineRig(Path(tempfile.mkdtemp(prefix="dynaseal-pipeline-bench-")),
                      args.tenant_backlog or max(5000, 2 * args.events), args.consumers)
    try:
        rig.start()
        warm = run_throughput(rig, 200, rng, jtis)  # group joined, connections open, code paths warm
        print(f"warm-up: {warm['delivered']} events in {warm['seconds']:.1f} s", flush=True)
        before = rig.cpu()
        spies = rig.profile(args.profile, args.seconds) if args.profile else []
        latency = run_latency(rig, args.rate, args.seconds, rng, jtis)
        for spy in spies:
            spy.wait(60)
        middle = rig.cpu()
        throughput = run_throughput(rig, args.events, rng, jtis)
        after = rig.cpu()
    finally:
        rig.stop()
    if args.profile:
        from bench.profile import summarize

        for name in ("shipper", "consumer"):
            raw = args.profile / f"{name}.txt"
            if raw.exists():
                (args.profile / f"{name}.md").write_text("\n".join(summarize(raw, 30)) + "\n")
    print(f"\n## Usage pipeline (shipper → Kafka → consumer → receiver), {os.cpu_count()} cores\n")
    print(f"Command: `python -m bench.pipeline_bench {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
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
