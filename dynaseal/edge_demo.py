"""The demo edge client: log in, get a dynamic key, stream a completion through Envoy.

It does what a phone app would, with the official `openai` SDK, and never sees a provider key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai

from dynaseal.config import DynasealConfig


def _say(line: str) -> None:
    print(f"demo: {line}", flush=True)


def _wait_for_usage_line(access_log: Path, jti: str, timeout_s: float = 5.0) -> dict[str, object] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if access_log.exists():
            for line in reversed(access_log.read_text().splitlines()):
                record = json.loads(line)
                if record.get("jti") == jti and record.get("total_tokens") is not None:
                    return dict(record)
        time.sleep(0.1)
    return None


def _wait_for_callback(issuer: str, jti: str, timeout_s: float = 30.0) -> dict[str, object] | None:
    """Poll the backend's stored callbacks (as the tenant account user1) for this key's usage."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=issuer, timeout=5) as backend:
        login = backend.post("/user/login", data={"username": "user1", "password": "user1"})
        login.raise_for_status()
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        while time.monotonic() < deadline:
            items = backend.get("/usage", params={"jti": jti}, headers=auth).json().get("items", [])
            streamed = [i for i in items if (i.get("usage") or {}).get("completion_tokens", 0) > 8]
            if streamed:
                return dict(streamed[0])
            time.sleep(0.2)
    return None


def run_demo(cfg: DynasealConfig, access_log: Path, expect_callback: bool = False) -> int:
    """Run the edge-client flow against a running stack; 0 on success."""
    gw = cfg.gateway
    issuer = f"http://{gw.host}:{gw.ports.issuer}"
    with httpx.Client(base_url=issuer, timeout=10) as backend:
        _say("client1 logs in to the business backend (POST /user/login)")
        login = backend.post("/user/login", data={"username": "client1", "password": "client1"})
        login.raise_for_status()
        access_token = login.json()["access_token"]
        _say("client1 asks for a dynamic key (POST /key/create)")
        created = backend.post("/key/create", headers={"Authorization": f"Bearer {access_token}"})
        created.raise_for_status()
        key = created.json()["token"]
    _say(f"got a dynamic key ({len(key)} chars, EdDSA-signed, short-lived); no provider key on the device")

    client = openai.OpenAI(base_url=f"http://{gw.host}:{gw.ports.envoy}/v1", api_key=key, max_retries=0)
    model = (cfg.issuer.key_models[0] if cfg.issuer and cfg.issuer.key_models else "deepseek-chat")
    _say(f"streaming a completion from {model} through Envoy with the openai SDK:")
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello to the edge in a few words."}],
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    print("  > ", end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage is not None:
            usage = chunk.usage
    print(flush=True)
    if usage is None:
        _say("the stream carried no usage")
        return 1
    _say(f"usage: prompt={usage.prompt_tokens} completion={usage.completion_tokens} total={usage.total_tokens}")

    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        _say("a model outside the key was NOT refused")
        return 1
    except openai.PermissionDeniedError as exc:
        _say(f"a model outside the key is refused: {exc.status_code} {exc.code}")

    jti = _jti_of(key)
    line = _wait_for_usage_line(access_log, jti)
    if line is None:
        _say("no access-log line with token counts appeared")
        return 1
    _say(f"Envoy metered it: tenant={line['tenant']} jti={line['jti']} total_tokens={line['total_tokens']}")
    if not expect_callback:
        return 0
    _say("waiting for the signed usage callback to reach the backend (log → Kafka → consumer → backend) …")
    callback = _wait_for_callback(f"http://{gw.host}:{gw.ports.issuer}", jti)
    if callback is None:
        _say("no callback arrived within 30 s")
        return 1
    content = str(callback.get("content") or "")
    _say(f"callback stored by the backend: event_id={callback['event_id']} tokens={callback['tokens']} "
         f"content={content[:60]!r}{'…' if len(content) > 60 else ''}")
    cost = callback.get("cost")
    _say(f"it cost {cost['amount']} {cost['currency']} at the tenant's prices" if isinstance(cost, dict)
         else "the model has no price in the tenant's table (unpriced)")
    return 0


def _jti_of(key: str) -> str:
    import base64

    payload = key.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])
