"""Pipeline test harness: a verifying receiver, private consumer/shipper/broker processes, gateway calls."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml
from conftest import DEMO_TENANT, free_ports
from ledger_sync import counters
from openai.types.chat import ChatCompletionMessageParam
from redis import Redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from dynaseal.config import DynasealConfig, expand_path
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.local_stack import LEGACY_PORTS
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import RunningService, ServiceSpec, Supervisor, tcp_open
from dynaseal_launcher.stack import tansu_binary

REPO = Path(__file__).resolve().parent.parent
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about usage callbacks at the edge."}]
Behaviour = Callable[[dict[str, Any], int], int]


# The bounds below are liveness limits, not timings: on a loaded 2-core machine (two test workers, a
# whole stack each) a stage can take several times its quiet figure, so each wait gets this much slack.
LOAD_SLACK = 3
# kafka-python's lines while a broker is away: hundreds a second, they bury what a failure needs.
LOG_NOISE = ("ECONNREFUSED", "No node available", "socket disconnected", "Abort (KafkaConnectionError",
             "Fetch to node", "appears to be retention-based")


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll until predicate() holds; fail with `what` after timeout_s (times LOAD_SLACK)."""
    timeout_s *= LOAD_SLACK
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# --- the tenant's receiver ---------------------------------------------------------------------

@dataclass(frozen=True)
class Delivery:
    """One callback attempt as the receiver saw it."""

    webhook_id: str
    payload: dict[str, Any]
    status: int
    attempt: int
    at: float


class Receiver:
    """A tenant backend: verifies every callback with Standard Webhooks and answers as told per key."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.bad_signatures = 0
        self.behaviours: dict[str, Behaviour] = {}
        self.on_receive: Callable[[Delivery], None] | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/callback/usage"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request (kill -9): not a signature problem
                    self.close_connection = True
                    return
                status = receiver.handle(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        """Verify, record, and answer one attempt."""
        try:
            payload = self.webhook.verify(body, headers)
        except WebhookVerificationError:
            with self.lock:
                self.bad_signatures += 1
            return 401
        webhook_id = headers["webhook-id"]
        with self.lock:
            attempt = 1 + sum(1 for d in self.deliveries if d.webhook_id == webhook_id)
            behaviour = self.behaviours.get(payload.get("key_id", ""))
        status = behaviour(payload, attempt) if behaviour else 200
        delivery = Delivery(webhook_id, payload, status, attempt, time.monotonic())
        with self.lock:
            self.deliveries.append(delivery)
        if self.on_receive is not None:
            self.on_receive(delivery)
        return status

    def for_key(self, key_id: str) -> list[Delivery]:
        """Every attempt for one dynamic key, in arrival order."""
        with self.lock:
            return [d for d in self.deliveries if d.payload.get("key_id") == key_id]

    def delivered(self, key_id: str) -> dict[str, dict[str, Any]]:
        """webhook-id → payload of the callbacks for a key that were answered 2xx."""
        return {d.webhook_id: d.payload for d in self.for_key(key_id) if 200 <= d.status < 300}

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- services of our own (consumer, shipper, broker) -------------------------------------------

def pipeline_config(session_config: Path, directory: Path, callback_url: str, kafka_port: int | None = None,
                    max_attempts: int = 8, timeout_s: float = 2.0) -> Path:
    """A copy of the session config: the demo tenant's callbacks go to `callback_url`, own metrics ports."""
    raw = yaml.safe_load(session_config.read_text())
    session_data_dir = raw["gateway"]["data_dir"]
    demo = next(t for t in raw["tenants"] if t["id"] == DEMO_TENANT)
    demo["jwks_file"] = demo["jwks_file"].replace("{data_dir}", session_data_dir)
    demo["callback"].update({"url": callback_url, "max_attempts": max_attempts, "timeout_s": timeout_s})
    ports = raw["gateway"]["ports"]
    ports["consumer_metrics"], ports["shipper_metrics"] = free_ports(2)
    if kafka_port is not None:
        raw["local"]["kafka_port"] = kafka_port
    raw["gateway"]["data_dir"] = str(directory / "data")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Services:
    """Runs our own pipeline processes; each can be killed (-9) and started again."""

    def __init__(self, config_path: Path, session_cfg: DynasealConfig, log_dir: Path) -> None:
        self.config_path = config_path
        self.cfg = yaml.safe_load(config_path.read_text())
        self.session_cfg = session_cfg
        self.supervisor = Supervisor(log_dir, "127.0.0.1")
        self.current: dict[str, RunningService] = {}
        self.group_id = f"test-{uuid.uuid4().hex[:8]}"
        self.consumer_args: list[str] = []  # more options for the consumer's command line
        self.checkpoint = Path(self.cfg["gateway"]["data_dir"]) / "shipper" / "checkpoint.json"

    @property
    def ports(self) -> dict[str, int]:
        """The copy's ports (those of `local:` under their old names: kafka, redis, mock_upstream)."""
        local = self.cfg.get("local") or {}
        lifted = {old: local[new] for old, new in LEGACY_PORTS.items() if new in local}
        return {**self.cfg["gateway"]["ports"], **lifted}

    def spec(self, name: str) -> ServiceSpec:
        """How to run one of: consumer, shipper, kafka.

        No port pre-check: after a kill -9 the port sits in TIME_WAIT, which a pre-check (bind without
        SO_REUSEADDR) reports as taken while the restarted server binds it fine.
        """
        py = [sys.executable, "-m"]
        # The packages from this checkout, whatever the editable install knew when it was made.
        env = {"PYTHONPATH": str(REPO)}
        if name == "consumer":
            port = self.ports["consumer_metrics"]
            return ServiceSpec("consumer", [*py, "callback_consumer", "--config", str(self.config_path),
                                            "--group-id", self.group_id, "--retry-base-s", "0.2",
                                            "--retry-cap-s", "2", "--session-timeout-ms", "3000",
                                            "--heartbeat-interval-ms", "300", *self.consumer_args],
                               "", lambda: http_ok(f"http://127.0.0.1:{port}/metrics"),
                               env=env, ready_timeout_s=30)
        if name == "shipper":
            port = self.ports["shipper_metrics"]
            access_log = expand_path("{data_dir}/envoy/access.log", self.session_cfg)
            # The shipper holds events until this group commits them (its broker may lose them).
            return ServiceSpec("shipper", [*py, "log_shipper", "--config", str(self.config_path),
                                           "--access-log", str(access_log), "--group-id", self.group_id],
                               "", lambda: http_ok(f"http://127.0.0.1:{port}/metrics"),
                               env=env, ready_timeout_s=30)
        port = self.ports["kafka"]
        return ServiceSpec("kafka", [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                                     "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                                     "--storage-engine", "memory://tansu/"],
                           "", lambda: tcp_open("127.0.0.1", port))

    def start(self, name: str) -> None:
        """Start (or start again) one service and wait until it is ready."""
        self.current[name] = self.supervisor.start(self.spec(name))

    def kill(self, name: str) -> None:
        """SIGKILL one service: no cleanup, no commit, no checkpoint."""
        process = self.current[name].process
        process.kill()
        process.wait(10)

    def terminate(self, name: str, timeout_s: float = 15.0) -> int:
        """SIGTERM one service and wait for it to exit; its exit code."""
        process = self.current[name].process
        process.terminate()
        return process.wait(timeout_s)

    def metric(self, name: str, metric: str, labels: dict[str, str] | None = None) -> float:
        """Sum of one metric's samples (matching labels) from a service's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        port = self.ports[f"{name}_metrics"]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metric and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += sample.value
        return total

    def stop(self) -> None:
        """Stop everything (SIGTERM, then SIGKILL)."""
        self.supervisor.stop()

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of each service's log, without the Kafka client's reconnect chatter.

        Printed when a fault test fails, so a failure seen once in CI can be explained afterwards.
        """
        parts = []
        for path in sorted(self.supervisor.log_dir.glob("*.log")):
            kept = [line for line in path.read_text(errors="replace").splitlines()
                    if not any(noise in line for noise in LOG_NOISE)]
            parts.append(f"--- {path.name} (last {min(lines, len(kept))} of {len(kept)} lines)")
            parts.extend(line[:400] for line in kept[-lines:])
        for name in ("consumer", "shipper"):
            parts.append(f"--- {name} metrics")
            parts.extend(self._own_metrics(name))
        return "\n".join(parts)

    def _own_metrics(self, name: str) -> list[str]:
        """The service's own samples (dynaseal_*), or why there are none."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.ports[f'{name}_metrics']}/metrics", timeout=2).text
        except (httpx.HTTPError, KeyError) as exc:
            return [f"unreadable: {exc!r}"]
        return [line for line in text.splitlines() if line.startswith("dynaseal_") and "_bucket{" not in line]


# --- requests through the gateway --------------------------------------------------------------

def sdk(cfg: DynasealConfig, key: str) -> openai.OpenAI:
    """The official SDK pointed at Envoy; no retries, so every request is exactly one request."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1", api_key=key, max_retries=0,
                         timeout=15)


def new_key(signing_key: SigningKey, **claims: Any) -> tuple[str, str]:
    """(key, jti) of a fresh demo-tenant key."""
    jti = f"pipe-{uuid.uuid4().hex[:12]}"
    fields: dict[str, Any] = {"tenant": DEMO_TENANT, "models": ["deepseek-chat"], "max_tokens": 40, "ttl": 600}
    fields.update(claims)
    return mint(signing_key, jti=jti, **fields), jti


def complete(cfg: DynasealConfig, key: str, max_tokens: int = 12) -> int:
    """One non-streaming completion; its total tokens."""
    reply = sdk(cfg, key).chat.completions.create(model="deepseek-chat", messages=MESSAGES, max_tokens=max_tokens)
    assert reply.usage is not None
    return reply.usage.total_tokens


def stream(cfg: DynasealConfig, key: str, max_tokens: int = 16) -> tuple[str, int]:
    """One streamed completion with usage; (text, total tokens)."""
    chunks = sdk(cfg, key).chat.completions.create(model="deepseek-chat", messages=MESSAGES, max_tokens=max_tokens,
                                                   stream=True, stream_options={"include_usage": True})
    text, total = [], 0
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            total = chunk.usage.total_tokens
    return "".join(text), total


def settled(redis_client: Redis, jti: str, spent: int, uses: int) -> Callable[[], bool]:
    """Predicate: the key's token counters settled to exactly `spent`, nothing left reserved."""
    # The money counters (reserved_cost, spent_cost) sit beside them for priced models.
    tokens = ("uses", "reserved", "spent")
    return lambda: {k: v for k, v in counters(redis_client, DEMO_TENANT, jti).items() if k in tokens} == \
        {"uses": uses, "reserved": 0, "spent": spent}
