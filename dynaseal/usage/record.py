"""The usage record: every field of Envoy's access-log line, with where its value comes from.

One definition, three uses: the metadata keys authz sets on an allow (`authz_metadata`), the
access log's `json_format` in the rendered Envoy config (`json_format_yaml`), and the fields the
event parser copies into a `UsageEvent` (`copied_fields`). A field added here appears in all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
# json_to_metadata / sse_to_metadata put the upstream's usage here; the Lua filter the captured body.
USAGE_NAMESPACE = "llm.usage"
CONTENT_NAMESPACE = "dynaseal.content"
# The per-try upstream filter records the upstreams it tried here; the Lua filter a give-back.
ROUTE_NAMESPACE = "dynaseal.route"

# How the parser turns a logged value into the UsageEvent field: copied as text, as a count, as a flag
# (true only for JSON true), or by a rule of its own in `dynaseal.usage.events` ("rule").
Copy = Literal["text", "count", "flag", "rule", "none"]
MetadataValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class LogField:
    """One key of the access-log JSON line."""

    name: str
    operator: str  # the Envoy command operator that fills it
    event: str | None = None  # the UsageEvent field it feeds
    copy: Copy = "none"
    # Set by authz on an allow ("allow"), always present there ("required"), or only on a refusal ("deny").
    authz: Literal["required", "optional", "deny"] | None = None
    note: str = ""

    @property
    def metadata(self) -> tuple[str, str] | None:
        """(namespace, key) when the value is dynamic metadata."""
        if not self.operator.startswith("%DYNAMIC_METADATA("):
            return None
        namespace, _, key = self.operator[len("%DYNAMIC_METADATA("):-2].partition(":")
        return namespace, key


def _meta(namespace: str, key: str) -> str:
    return f"%DYNAMIC_METADATA({namespace}:{key})%"


def _authz(key: str, event: str | None, copy: Copy, authz: Literal["required", "optional", "deny"],
           note: str = "") -> LogField:
    return LogField(key, _meta(AUTHZ_NAMESPACE, key), event, copy, authz, note)


FIELDS: tuple[LogField, ...] = (
    LogField("ts", "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%", "started_at", "text"),
    LogField("request_id", "%CEL('envoy.filters.http.ext_authz' in metadata.filter_metadata && 'request_id' in "
                           "metadata.filter_metadata['envoy.filters.http.ext_authz'] ? "
                           "metadata.filter_metadata['envoy.filters.http.ext_authz'].request_id : "
                           "request.headers['x-request-id'])%", "request_id", "rule", "required",
             "authz's billing id (the idempotency key downstream); Envoy's own for requests authz never answered."),
    LogField("method", "%REQ(:METHOD)%"),
    LogField("path", "%REQ(:PATH)%", "path", "text"),
    LogField("code", "%RESPONSE_CODE%", "status", "rule"),
    LogField("flags", "%RESPONSE_FLAGS%", "response_flags", "text"),
    LogField("details", "%RESPONSE_CODE_DETAILS%", "response_details", "text"),
    LogField("duration_ms", "%DURATION%", "duration_ms", "count"),
    LogField("upstream_ms", "%COMMON_DURATION(US_TX_END:US_RX_BEG:ms)%"),
    LogField("resp_ct", "%RESP(CONTENT-TYPE)%"),
    LogField("bytes_sent", "%BYTES_SENT%"),
    _authz("tenant", "tenant", "rule", "required"),
    _authz("jti", "jti", "rule", "required"),
    _authz("event_id", "event_id", "rule", "required"),
    _authz("sub", "sub", "rule", "optional"),
    _authz("root_jti", "root_jti", "rule", "optional", "A child key's family: its root key's jti and every jti from "
                                                       "the root down (JSON list)."),
    _authz("chain", "chain", "rule", "optional"),
    _authz("cb", "cb_json", "rule", "optional", "the key's cb claim as a JSON string (Struct values are flat)"),
    _authz("model", "model", "text", "required"),
    _authz("stream", "stream", "flag", "required"),
    _authz("reserved", "reserved", "count", "required"),
    _authz("deny_code", None, "none", "deny", "set on refusals: such a line is no usage event"),
    _authz("content_rule", "content_rule", "rule", "deny",
           "the tenant's content rule that refused the request (never the text): a content_blocked callback"),
    LogField("prompt_tokens", _meta(USAGE_NAMESPACE, "prompt_tokens"), "prompt_tokens", "rule"),
    LogField("completion_tokens", _meta(USAGE_NAMESPACE, "completion_tokens"), "completion_tokens", "rule"),
    LogField("total_tokens", _meta(USAGE_NAMESPACE, "total_tokens"), "total_tokens", "rule"),
    LogField("cached_tokens", _meta(USAGE_NAMESPACE, "cached_tokens"), "cached_tokens", "rule",
             note="Money: the token details prices depend on, the price authz applied, the key's budgets."),
    LogField("reasoning_tokens", _meta(USAGE_NAMESPACE, "reasoning_tokens"), "reasoning_tokens", "rule"),
    _authz("price", "price", "rule", "optional"),
    _authz("reserved_cost", "reserved_cost_micros", "rule", "optional"),
    _authz("budget", "budget_tokens", "rule", "optional"),
    _authz("budget_cost", "budget_cost_micros", "rule", "optional"),
    LogField("content_b64", _meta(CONTENT_NAMESPACE, "body_b64"), "content", "rule",
             note="Response body (base64, bounded) only for tenants whose callback includes content; "
                  "null for everyone else. The shipper parses the assistant text out of it."),
    LogField("content_truncated", _meta(CONTENT_NAMESPACE, "truncated"), "content_truncated", "flag"),
    LogField("upstreams_tried", _meta(ROUTE_NAMESPACE, "tried"), "upstreams_tried", "text",
             note="Routing: the named upstreams tried in order (the last one answered), and whether an unserved "
                  "request's use and reservation were given back."),
    LogField("given_back", _meta(ROUTE_NAMESPACE, "given_back"), "given_back", "flag"),
    _authz("endpoint", "endpoint", "text", "optional",
           "The API called beside chat completions (responses, messages, messages_count_tokens, embeddings); "
           "absent for chat. Its usage fields are read into the same keys; Messages' cache writes apart."),
    LogField("cache_write_tokens", _meta(USAGE_NAMESPACE, "cache_write_tokens"), "cache_write_tokens", "rule"),
    LogField("overdue", _meta(ROUTE_NAMESPACE, "overdue"),
             note="Routing: a try ran past its upstream's first_byte_s before the next began (that provider may "
                  "have generated): never given back, and billed at least its reservation."),
)
BY_NAME: Mapping[str, LogField] = {f.name: f for f in FIELDS}
ALLOW_KEYS = frozenset(f.name for f in FIELDS if f.authz in ("required", "optional"))
REQUIRED_ALLOW_KEYS = frozenset(f.name for f in FIELDS if f.authz == "required")


def authz_metadata(**values: MetadataValue | None) -> dict[str, MetadataValue]:
    """The logged metadata of an allow: exactly the record's authz keys (an optional one may be None)."""
    unknown = set(values) - ALLOW_KEYS
    missing = REQUIRED_ALLOW_KEYS - {k for k, v in values.items() if v is not None}
    if unknown or missing:
        raise ValueError(f"usage record mismatch: unknown {sorted(unknown)}, missing {sorted(missing)}")
    return {k: v for k, v in values.items() if v is not None}


def json_format_yaml(indent: int) -> str:
    """The access log's `json_format:` block for the Envoy config, its first line unindented."""
    pad = " " * (indent + 2)
    lines = ["json_format:"]
    for f in FIELDS:
        lines += [f"{pad}# {part}" for part in _wrap(f.note)]
        lines.append(f'{pad}{f.name}: "{f.operator}"')
    return "\n".join(lines)


def _wrap(text: str, width: int = 96) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def log_count(value: Any) -> int | None:
    """A count from the log (Envoy writes metadata numbers as JSON numbers); None if absent or not one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        return None
    return max(number, 0)


def copied_fields(record: Mapping[str, Any]) -> dict[str, str | int | bool]:
    """The UsageEvent fields copied straight from a log line (text, count, flag); rules do the rest."""
    out: dict[str, str | int | bool] = {}
    for f in FIELDS:
        if f.event is None:
            continue
        value = record.get(f.name)
        if f.copy == "text":
            out[f.event] = "" if value is None else str(value)
        elif f.copy == "count":
            out[f.event] = log_count(value) or 0
        elif f.copy == "flag":
            out[f.event] = value is True
    return out
