"""`python -m bench peers`: the parts that decide what is measured, checked without running the bench."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bench import gateway, peers, wrk
from bench.fixture import BODY, MODEL, PROVIDER_KEY_ENV


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 200 to every POST and keeps the first request's headers and body."""

    seen: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if not _Recorder.seen:
            _Recorder.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_peer_script_sends_the_extra_headers_and_the_body(tmp_path: Path, recorder: str) -> None:
    """Regression: `wrk.headers[[==[name]==]]` opened a Lua long string and wrk ran no request at all."""
    script = peers.write_script(tmp_path, BODY, "sk-provider", {"x-portkey-provider": "openai",
                                                               "x-portkey-custom-host": "http://127.0.0.1:1/v1"})
    result = wrk.run(recorder, script, 1, 1, threads=1)
    assert result.requests > 0 and result.non_2xx == 0
    headers, body = _Recorder.seen[0]
    assert headers["x-portkey-provider"] == "openai"
    assert headers["x-portkey-custom-host"] == "http://127.0.0.1:1/v1"
    assert headers["authorization"] == "Bearer sk-provider"
    assert body == BODY


def test_tensorzero_config_turns_observability_off_and_points_at_the_mock() -> None:
    config = tomllib.loads(peers.tensorzero_config(4321))
    assert config["gateway"]["observability"]["enabled"] is False
    provider = config["models"][MODEL]["providers"]["mock"]
    assert provider["api_base"] == "http://127.0.0.1:4321/v1/"
    assert provider["api_key_location"] == f"env::{PROVIDER_KEY_ENV}"
    assert config["models"][MODEL]["routing"] == ["mock"]


def test_tensorzero_body_differs_from_the_bench_body_only_in_the_model() -> None:
    ours, theirs = orjson.loads(BODY), orjson.loads(peers.tensorzero_body())
    assert theirs.pop("model") == f"tensorzero::model_name::{MODEL}"
    ours.pop("model")
    assert theirs == ours


def test_absent_peers_are_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(peers, "PEERS_VENV", tmp_path / "no-venv")
    monkeypatch.delenv("TENSORZERO_PYTHON", raising=False)
    python, why = peers.tensorzero_python()
    assert python is None and "pip install tensorzero" in why
    monkeypatch.setenv("PORTKEY_GATEWAY", str(tmp_path / "missing" / "start-server.js"))
    found, why = peers.portkey_entry()
    assert found is None and ("npm install" in why or "Node.js" in why)


def test_an_interpreter_without_the_wheel_is_not_taken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$TENSORZERO_PYTHON must name a venv that has the wheel: an interpreter alone is not enough."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    monkeypatch.setattr(peers, "PEERS_VENV", tmp_path / "no-venv")
    monkeypatch.setenv("TENSORZERO_PYTHON", str(venv / "bin" / "python"))
    assert peers.tensorzero_python()[0] is None
    (venv / "lib" / "python3.11" / "site-packages" / "tensorzero-2026.6.0.dist-info").mkdir(parents=True)
    assert peers.tensorzero_python()[0] == venv / "bin" / "python"
    assert peers.site_version(venv / "bin" / "python", "tensorzero") == "2026.6.0"


def _run(label: str, requests: int, cpu_s: dict[str, float]) -> gateway.GatewayRun:
    result = wrk.WrkResult(requests=requests, seconds=10, non_2xx=0, errors=0, p50_ms=1, p90_ms=2, p99_ms=3)
    return gateway.GatewayRun(label, f"{label} proxy", result, cpu_s)


def test_table_counts_only_each_proxys_own_processes() -> None:
    """D is Envoy + authz (every process) + Redis; T is TensorZero alone, however busy the mock was."""
    runs = [_run("D", 1000, {"envoy": 0.3, "authz": 0.2, "authz-2": 0.05, "redis": 0.05, "mock-llm": 0.25}),
            _run("T", 1000, {"tensorzero": 0.15, "envoy": 0.01, "mock-llm": 0.3})]
    assert peers.own_cpu(runs[0]) == pytest.approx(600)
    assert peers.own_cpu(runs[1]) == pytest.approx(150)
    lines = peers.table(runs, ["P Portkey: not installed"])
    assert "D / T = 4.00" in "\n".join(lines)
    assert lines[-1] == "- skipped: P Portkey: not installed"


def test_the_tensorzero_runner_imports_nothing_from_the_project() -> None:
    """It runs under another venv's interpreter, where the project is not installed."""
    source = peers.TENSORZERO_SERVE.read_text()
    assert "dynaseal" not in source.split('"""', 2)[2] and "from bench" not in source
    compiled = subprocess.run(["python3", "-m", "py_compile", str(peers.TENSORZERO_SERVE)], check=False)
    assert compiled.returncode == 0
