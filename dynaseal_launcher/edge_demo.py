"""The demo edge client: log in, get a dynamic key, stream a completion through Envoy.

It does what a phone app would, with the official `openai` SDK, and never sees a provider key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from dynaseal.config import DynasealConfig


def _sdk_client(auth: httpx.Auth) -> Any:
    """An httpx client that signs a DPoP proof per request, for the openai SDK.

    The SDK is typed against its own httpx fork (httpx2) but only calls the client's `send`: an
    httpx.Client with an auth flow serves it unchanged.
    """
    return httpx.Client(auth=auth, timeout=30)

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
    # The seed client's own call: no stream_options; the gateway asks the upstream for usage itself
    # and keeps the usage-only chunk out of this stream, so every chunk has a choice.
    _say(f"streaming a completion from {model} through Envoy with the openai SDK, as the seed's client does:")
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello to the edge in a few words."}],
        stream=True, max_tokens=100, temperature=0.6, top_p=0.9,
    )
    print("  > ", end="", flush=True)
    for chunk in raw.parse():
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    print(flush=True)
    _say(f"the gateway's id of that request (x-dynaseal-request-id): {raw.headers.get('x-dynaseal-request-id')}")

    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        _say("a model outside the key was NOT refused")
        return 1
    except openai.PermissionDeniedError as exc:
        _say(f"a model outside the key is refused: {exc.status_code} {exc.code}")
    if run_delegation_demo(cfg) != 0:
        return 1

    jti = _jti_of(key)
    line = _wait_for_usage_line(access_log, jti)
    if line is None:
        _say("no access-log line with token counts appeared")
        return 1
    _say(f"Envoy metered it from the upstream's usage: tenant={line['tenant']} jti={line['jti']} "
         f"prompt={line['prompt_tokens']} completion={line['completion_tokens']} total={line['total_tokens']}")
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


def run_delegation_demo(cfg: DynasealConfig) -> int:
    """An agent gets a key bound to its own key pair, then hands a sub-agent a 1-use, 50-token child; 0 on success."""
    from dynaseal.keys.mint import DpopAuth, HolderKey

    gw = cfg.gateway
    issuer, base_url = f"http://{gw.host}:{gw.ports.issuer}", f"http://{gw.host}:{gw.ports.envoy}/v1"
    agent, sub_agent = HolderKey.generate(), HolderKey.generate()
    with httpx.Client(base_url=issuer, timeout=10) as backend:
        login = backend.post("/user/login", data={"username": "client1", "password": "client1"})
        login.raise_for_status()
        created = backend.post("/key/create", json={"holder_jwk": agent.public_jwk()},
                               headers={"Authorization": f"Bearer {login.json()['access_token']}",
                                        "DPoP": agent.proof("POST", f"{issuer}/key/create")})
        created.raise_for_status()
        key = created.json()["token"]
    _say("an agent got a key bound to its own key pair (cnf.jwk): lifted without the private key it is useless")
    try:
        openai.OpenAI(base_url=base_url, api_key=key, max_retries=0).chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        _say("the bound key worked without a DPoP proof")
        return 1
    except openai.AuthenticationError as exc:
        _say(f"the same key without a DPoP proof: {exc.status_code} {exc.code}")
    own = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0,
                        http_client=_sdk_client(DpopAuth(agent, key)))
    own.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    _say("with a fresh proof per request (DPoP header) the agent's own call passes")

    child = agent.child(key, uses=1, max_tokens=50, ttl=120, cnf=sub_agent.cnf_jkt())
    _say(f"the agent mints offline a child key for a sub-agent: 1 use, at most 50 tokens ({len(child)} chars)")
    worker = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0,
                           http_client=_sdk_client(DpopAuth(sub_agent, child)))
    try:
        worker.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=100)
        _say("the child was allowed more than 50 tokens")
        return 1
    except openai.PermissionDeniedError as exc:
        _say(f"the sub-agent asking for 100 tokens: {exc.status_code} {exc.code}")
    reply = worker.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=50)
    _say(f"the sub-agent's one call: {reply.usage.total_tokens if reply.usage else '?'} tokens, charged to both keys")
    try:
        worker.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=50)
        _say("the 1-use child was used twice")
        return 1
    except openai.RateLimitError as exc:
        _say(f"its second call: {exc.status_code} {exc.code}")
    return 0
