"""The usage record: every field of Envoy's access-log line, with where its value comes from.

One definition, three uses: the metadata keys authz sets on an allow (`authz_metadata`), the
access log's `json_format` in the rendered Envoy config (`json_format_yaml`), and the fields the
event parser copies into a `UsageEvent` (`copied_fields`). A field added here appears in all three.

Beside the fields, the other names Envoy and authz exchange are defined here and rendered into the
Envoy config by `dynaseal.envoy`: the usage rules that read the upstream's token counts into the
record's `llm.usage` fields (`USAGE_RULES`), and the control keys of the Lua filters (`LUA_CONTROL_KEYS`).
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

# Control keys: what authz sets for the Lua filters (in AUTHZ_NAMESPACE), what those filters keep between
# tries (ROUTE_NAMESPACE) and capture (CONTENT_NAMESPACE), and the gateway's own headers. Each Lua filter
# gets them as `local NAME = "value"` lines (`lua_constants`), never spelled out by hand.
BODY_PREFIX = "body_prefix"  # the additions to insert after the body's `{`
STRIP_USAGE = "strip_usage"  # take the usage-only SSE event the client did not ask for out of its stream
CAPTURE_CONTENT = "capture_content"  # copy the answer (bounded) for a callback that includes content
GIVE_BACK = "give_back"  # the token of the give-back request of an unserved request
PROVIDER_HEADERS = "provider_headers"  # the tenant sees the provider's account and rate-limit headers
TENANT = "tenant"  # set on every allow: the answer is the upstream's, its headers are filtered
UP_AUTH_PREFIX = "up_auth."  # + upstream name: the credential for that upstream
UP_AUTH_HEADER = "up_auth_header"  # the header that credential goes in (absent: authorization)
UP_MODEL_PREFIX = "up_model."  # + upstream name: `<offset> <length> <json string>`, the model's bytes replaced
ROUTE_ENDPOINT = "endpoint"  # the endpoint path of the first try (later tries see the rewritten one)
ROUTE_TRIED = "tried"
ROUTE_LAST_TRY = "last_try"
ROUTE_LAST_TRY_MS = "last_try_ms"
ROUTE_OVERDUE = "overdue"
ROUTE_GIVEN_BACK = "given_back"
CONTENT_BODY = "body_b64"
CONTENT_TRUNCATED = "truncated"
TRY_HEADER = "x-dynaseal-try"  # the try's upstream name, from its host's metadata
ROUTE_HEADER = "x-dynaseal-route"  # authz's route choice (an Envoy cluster)
GIVE_BACK_HEADER = "x-dynaseal-give-back"
GIVE_BACK_PATH = "/_dynaseal/give-back"
REQUEST_ID_HEADER = "x-dynaseal-request-id"
GATEWAY_CLUSTER = "dynaseal_gateway"  # the gateway's own listener, for the give-back request

LUA_CONTROL_KEYS: Mapping[str, str] = {
    "AUTHZ": AUTHZ_NAMESPACE, "ROUTE": ROUTE_NAMESPACE, "CONTENT": CONTENT_NAMESPACE,
    "BODY_PREFIX": BODY_PREFIX, "STRIP_USAGE": STRIP_USAGE, "CAPTURE_CONTENT": CAPTURE_CONTENT,
    "GIVE_BACK": GIVE_BACK, "PROVIDER_HEADERS": PROVIDER_HEADERS, "TENANT": TENANT,
    "UP_AUTH_PREFIX": UP_AUTH_PREFIX, "UP_AUTH_HEADER": UP_AUTH_HEADER, "UP_MODEL_PREFIX": UP_MODEL_PREFIX,
    "ROUTE_ENDPOINT": ROUTE_ENDPOINT, "ROUTE_TRIED": ROUTE_TRIED, "ROUTE_LAST_TRY": ROUTE_LAST_TRY,
    "ROUTE_LAST_TRY_MS": ROUTE_LAST_TRY_MS, "ROUTE_OVERDUE": ROUTE_OVERDUE, "ROUTE_GIVEN_BACK": ROUTE_GIVEN_BACK,
    "CONTENT_BODY": CONTENT_BODY, "CONTENT_TRUNCATED": CONTENT_TRUNCATED,
    "TRY_HEADER": TRY_HEADER, "GIVE_BACK_HEADER": GIVE_BACK_HEADER, "GIVE_BACK_PATH": GIVE_BACK_PATH,
    "REQUEST_ID_HEADER": REQUEST_ID_HEADER, "GATEWAY_CLUSTER": GATEWAY_CLUSTER,
}

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
    LogField("content_b64", _meta(CONTENT_NAMESPACE, CONTENT_BODY), "content", "rule",
             note="Response body (base64, bounded) only for tenants whose callback includes content; "
                  "null for everyone else. The shipper parses the assistant text out of it."),
    LogField("content_truncated", _meta(CONTENT_NAMESPACE, CONTENT_TRUNCATED), "content_truncated", "flag"),
    LogField("upstreams_tried", _meta(ROUTE_NAMESPACE, ROUTE_TRIED), "upstreams_tried", "text",
             note="Routing: the named upstreams tried in order (the last one answered), and whether an unserved "
                  "request's use and reservation were given back."),
    LogField("given_back", _meta(ROUTE_NAMESPACE, ROUTE_GIVEN_BACK), "given_back", "flag"),
    _authz("endpoint", "endpoint", "text", "optional",
           "The API called beside chat completions (responses, messages, messages_count_tokens, embeddings); "
           "absent for chat. Its usage fields are read into the same keys; Messages' cache writes apart."),
    LogField("cache_write_tokens", _meta(USAGE_NAMESPACE, "cache_write_tokens"), "cache_write_tokens", "rule"),
    LogField("overdue", _meta(ROUTE_NAMESPACE, ROUTE_OVERDUE),
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


def lua_constants(names: tuple[str, ...] = tuple(LUA_CONTROL_KEYS)) -> str:
    """`local NAME = "value"` lines of the control keys a Lua filter uses (the values are plain ASCII)."""
    return "\n".join(f'local {name} = "{LUA_CONTROL_KEYS[name]}"' for name in names)


@dataclass(frozen=True, slots=True)
class UsageRule:
    """One place an upstream's answer reports a count, and the record field (in `llm.usage`) it fills."""

    selectors: tuple[str, ...]
    field: str
    json: bool = True  # json_to_metadata reads it from a JSON body too; SSE events always
    note: str = ""  # a comment above the rule in the rendered config


USAGE_RULES: tuple[UsageRule, ...] = (
    UsageRule(("usage", "prompt_tokens"), "prompt_tokens"),
    UsageRule(("usage", "completion_tokens"), "completion_tokens"),
    UsageRule(("usage", "total_tokens"), "total_tokens"),
    UsageRule(("usage", "prompt_tokens_details", "cached_tokens"), "cached_tokens"),
    UsageRule(("usage", "completion_tokens_details", "reasoning_tokens"), "reasoning_tokens"),
    UsageRule(("response", "usage", "input_tokens"), "prompt_tokens", json=False,
              note="Responses: the usage of response.completed / .incomplete / .failed (earlier events carry null)."),
    UsageRule(("response", "usage", "output_tokens"), "completion_tokens", json=False),
    UsageRule(("response", "usage", "input_tokens_details", "cached_tokens"), "cached_tokens", json=False),
    UsageRule(("response", "usage", "output_tokens_details", "reasoning_tokens"), "reasoning_tokens", json=False),
    UsageRule(("response", "usage", "total_tokens"), "total_tokens", json=False),
    UsageRule(("message", "usage", "input_tokens"), "prompt_tokens", json=False,
              note="Messages: message_start's input (and cache) counts; message_delta's cumulative output below."),
    UsageRule(("message", "usage", "cache_read_input_tokens"), "cached_tokens", json=False),
    UsageRule(("message", "usage", "cache_creation_input_tokens"), "cache_write_tokens", json=False),
    UsageRule(("usage", "input_tokens"), "prompt_tokens",
              note="Responses and Messages: usage.input_tokens / output_tokens (Messages' message_delta in a "
                   "stream; embeddings use prompt_tokens, above)."),
    UsageRule(("usage", "output_tokens"), "completion_tokens"),
    UsageRule(("usage", "input_tokens_details", "cached_tokens"), "cached_tokens"),
    UsageRule(("usage", "output_tokens_details", "reasoning_tokens"), "reasoning_tokens"),
    UsageRule(("usage", "cache_read_input_tokens"), "cached_tokens"),
    UsageRule(("usage", "cache_creation_input_tokens"), "cache_write_tokens"),
)


def usage_target(rule: UsageRule) -> tuple[str, str]:
    """(namespace, key) a rule writes: the metadata its record field is logged from; ValueError if it is no
    usage field."""
    field = BY_NAME.get(rule.field)
    meta = field.metadata if field is not None else None
    if meta is None or meta[0] != USAGE_NAMESPACE:
        raise ValueError(f"usage rule {rule.selectors} fills {rule.field!r}, which is no {USAGE_NAMESPACE} field")
    return meta


def usage_rules_yaml(indent: int, sse: bool) -> str:
    """The `rules:` entries of sse_to_metadata (`sse=True`) or json_to_metadata, first line unindented."""
    pad = " " * indent
    lines: list[str] = []
    for rule in USAGE_RULES:
        if not (sse or rule.json):
            continue
        namespace, key = usage_target(rule)
        lines += [f"{pad}# {part}" for part in _wrap(rule.note)]
        selectors = ", ".join(f"{{ key: {s} }}" for s in rule.selectors)
        present = f"on_present: {{ metadata_namespace: {namespace}, key: {key}, type: NUMBER }}"
        if sse:
            lines += [f"{pad}- rule:", f"{pad}    selectors: [{selectors}]", f"{pad}    {present}"]
        else:
            lines += [f"{pad}- selectors: [{selectors}]", f"{pad}  {present}"]
    return "\n".join(lines).lstrip()
