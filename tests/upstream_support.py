"""A scripted OpenAI-compatible upstream for routing tests: answers like the provider's API (a chat
completion, a stream with usage, or OpenAI's error bodies for 429/5xx with their headers), records every
request, and can be switched between behaviours by the test."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERRORS = {
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests"),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded, please try again later"),
}


@dataclass
class Recorded:
    """One request as the upstream received it."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed."""
        return json.loads(self.body)


@dataclass
class Behaviour:
    """What the upstream answers: `status` 200 (a completion) or an error status; `delay_s` before headers."""

    status: int = 200
    delay_s: float = 0.0
    retry_after: str = "7"
    # Send the stream's headers and first event, then drop the connection (a stream that started and broke).
    break_stream: bool = False
    extra_headers: dict[str, str] = field(default_factory=lambda: {
        "x-request-id": "req_scripted", "openai-organization": "org-secret", "openai-project": "proj_x",
        "x-ratelimit-remaining-requests": "99", "set-cookie": "__cf_bm=tracking", "server": "scripted",
        "openai-processing-ms": "12"})


class ScriptedUpstream:
    """A threaded HTTP server on 127.0.0.1:`port`, started at once."""

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.port = port
        self.behaviour = Behaviour()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with upstream._lock:
                    upstream.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body))
                upstream._answer(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        behaviour = self.behaviour
        if behaviour.delay_s:
            time.sleep(behaviour.delay_s)
        if behaviour.status != 200:
            kind, code, message = ERRORS.get(behaviour.status, ("server_error", None, "error"))
            self._send(handler, behaviour.status, "application/json", json.dumps(
                {"error": {"message": message, "type": kind, "param": None, "code": code}}).encode(),
                {"retry-after": behaviour.retry_after, "x-request-id": "req_failed"})
            return
        request = json.loads(body)
        model = request.get("model")
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        base = {"id": "chatcmpl-scripted", "created": 1, "model": model, "system_fingerprint": self.name}
        if not request.get("stream"):
            answer = {**base, "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": f"from {self.name}"}}], "usage": usage}
            self._send(handler, 200, "application/json", json.dumps(answer).encode(), behaviour.extra_headers)
            return
        chunk = {**base, "object": "chat.completion.chunk"}
        events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": f"from {self.name}"},
                                         "finish_reason": None}]},
                  {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                  {**chunk, "choices": [], "usage": usage}]
        payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        if behaviour.break_stream:
            first = b"data: " + json.dumps(events[0]).encode() + b"\n\n"
            handler.send_response(200)
            handler.send_header("content-type", "text/event-stream")
            handler.send_header("transfer-encoding", "chunked")
            handler.end_headers()
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(first), first))
            handler.wfile.flush()
            time.sleep(0.2)
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        self._send(handler, 200, "text/event-stream", payload, behaviour.extra_headers)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, content_type: str, payload: bytes,
              headers: dict[str, str]) -> None:
        handler.send_response(status)
        handler.send_header("content-type", content_type)
        handler.send_header("content-length", str(len(payload)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)

    def take(self) -> list[Recorded]:
        """The requests received since the last call."""
        with self._lock:
            taken, self.requests = self.requests, []
        return taken

    def close(self) -> None:
        """Stop serving (the port is then dead: connections are refused)."""
        self.server.shutdown()
        self.server.server_close()
