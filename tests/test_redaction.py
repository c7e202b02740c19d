"""The one redaction helper: resolved secret values and credential shapes never leave a process,
neither in a log line nor in a dead-lettered event; secrets print as '**********'."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from pydantic import SecretStr

from callback_consumer.dlq import DeadLetters
from dynaseal.config import DynasealConfig
from dynaseal.logs import JsonFormatter
from dynaseal.pb import UsageEvent
from dynaseal.redaction import MIN_SECRET_CHARS, REDACTOR, Redactor
from dynaseal.runtime.views import Runtime
from issuer_api.sessions import SessionTokens

JWT = "eyJhbGciOiJFZERTQSJ9.eyJpc3MiOiJhY21lIn0.c2lnbmF0dXJlLWJ5dGVz"
WEBHOOK = "whsec_ZHluYXNlYWwtdGVzdC13ZWJob29rLXNlY3JldA=="
ENV = {"T_SECRET": "hs256-tenant-secret-0123456789", "T_WEBHOOK": WEBHOOK,
       "T_PROVIDER": "provider-key-without-any-prefix-42", "T_SESSION": 'session "secret" \\ with quotes 0123456789'}


@pytest.fixture
def redactor() -> Iterator[Redactor]:
    yield REDACTOR
    REDACTOR.forget_all()


def config() -> DynasealConfig:
    return DynasealConfig.model_validate({
        "gateway": {"upstream": {"api_key_env": "T_PROVIDER"}},
        "tenants": [{"id": "acme", "keys": [{"alg": "HS256", "secret_env": "T_SECRET"}],
                     "callback": {"url": "http://127.0.0.1:1/cb", "secret_env": "T_WEBHOOK"}}],
        "issuer": {"tenant": "acme", "session_secret_env": "T_SESSION"}})


def test_credential_shapes_are_redacted() -> None:
    text = Redactor().redact(f"key={JWT} auth='Bearer abc.def-123' hook={WEBHOOK} k=sk-proj-abcdef123456 ok")
    assert JWT not in text and "abc.def-123" not in text and "ZHluYXNl" not in text and "proj-abc" not in text
    assert text == "key=[redacted-jwt] auth='Bearer [redacted]' hook=whsec_[redacted] k=sk-[redacted] ok"


def test_remembered_values_are_redacted_in_any_spelling() -> None:
    redactor = Redactor()
    secret = 'plain-secret-without-a-pattern "quoted" \\ slash'
    redactor.remember(SecretStr(secret), None, "short")  # None and short values are ignored
    assert redactor.known == 1 and len("short") < MIN_SECRET_CHARS
    assert redactor.redact(f"a {secret} b") == "a [redacted-secret] b"
    escaped = orjson.dumps({"m": secret}).decode()  # how it appears inside a JSON log line
    assert "plain-secret" not in redactor.redact(escaped)
    assert redactor.redact("a short word stays") == "a short word stays"


def test_bytes_keep_their_length_and_protobuf_framing() -> None:
    redactor = Redactor()
    redactor.remember("tenant-secret-in-content")
    event = UsageEvent(request_id="r-1", tenant="acme", jti="j-1", total_tokens=7,
                       content=f"the secret is tenant-secret-in-content and {JWT} and Bearer tok-123456")
    raw = event.SerializeToString()
    masked = redactor.redact_bytes(raw)
    assert len(masked) == len(raw)
    again = UsageEvent.FromString(masked)
    assert (again.request_id, again.tenant, again.jti, again.total_tokens) == ("r-1", "acme", "j-1", 7)
    assert "tenant-secret" not in again.content and JWT not in again.content and "tok-123456" not in again.content
    assert again.content.startswith("the secret is ****") and "Bearer ***" in again.content


def test_every_secret_the_runtime_resolves_is_redacted_from_log_lines(redactor: Redactor) -> None:
    runtime = Runtime.from_config(config(), ENV)
    runtime.consumer()
    runtime.issuer()
    with pytest.MonkeyPatch.context() as env:
        for name, value in ENV.items():
            env.setenv(name, value)
        runtime.authz(fetch_new_jwks=False)  # the registry reads the process environment
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("dynaseal.test.redaction")
    logger.addHandler(handler)
    try:
        for value in ENV.values():
            logger.warning("value %s in the message", value, extra={"field": value, "nested": {"v": value}})
        try:
            raise RuntimeError(f"an exception quoting {ENV['T_PROVIDER']}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert output.count("[redacted-secret]") >= 3 * (len(ENV) - 1)  # the webhook secret has its own shape
    for value in ENV.values():
        assert value not in output and orjson.dumps(value).decode()[1:-1] not in output
    assert "session" not in output.replace("redaction", "")


def test_the_dlq_receives_the_event_redacted(redactor: Redactor) -> None:
    Runtime.from_config(config(), ENV).consumer()  # remembers the webhook secret
    sent: list[tuple[bytes, list[tuple[str, bytes]]]] = []

    class Producer:
        def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Producer:
            sent.append((value, headers))
            return self

        def get(self, timeout: float) -> None:
            return None

    import threading

    dead = DeadLetters("127.0.0.1:1", "test", threading.Event())
    dead._producer = Producer()
    event = UsageEvent(request_id="r-2", tenant="acme", content=f"echoed {WEBHOOK} and {JWT}")
    assert dead.publish(b"j", event.SerializeToString(), {"dlq_reason": f"rejected: {ENV['T_WEBHOOK']}"})
    [(value, headers)] = sent
    assert WEBHOOK.encode() not in value and JWT.encode() not in value
    assert UsageEvent.FromString(value).request_id == "r-2"
    assert WEBHOOK.encode() not in dict(headers)["dlq_reason"]


def test_secrets_print_hidden() -> None:
    runtime = Runtime.from_config(config(), ENV)
    views = [runtime.consumer(), runtime.issuer(), SessionTokens(SecretStr(ENV["T_SESSION"]), 30, 60)]
    for view in views:
        shown = repr(view) + str(view)
        assert all(value not in shown for value in ENV.values()), shown
        assert "**********" in shown
