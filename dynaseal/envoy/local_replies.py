"""Envoy's own replies (404, 408, 413, 503, 504), rendered from the one error registry.

Every reply Envoy makes itself gets an error body SDKs surface: OpenAI's shape, and Anthropic's on
the Messages paths. The code, status, type and message of each come from
`dynaseal.contracts.error_registry`; the mappers only say when each applies. Every local reply
names its request id: authz's refusals carry their own (kept), Envoy's get Envoy's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dynaseal.contracts import usage_record
from dynaseal.contracts.error_registry import EnvoyReply, ErrorCode, anthropic_type, spec_of

_MESSAGES_PATHS = (
    "- or_filter:\n"
    "    filters:\n"
    '    - header_filter: { header: { name: ":path", string_match: { prefix: /v1/messages } } }\n'
    '    - header_filter: { header: { name: ":path", string_match: { prefix: /api/v1/messages } } }\n'
    "    # A routed try rewrites :path to the upstream's; authz's endpoint still says Messages.\n"
    "    - metadata_filter: { matcher: { filter: NAMESPACE, path: [{ key: endpoint }], "
    "value: { string_match: { prefix: messages } } }, match_if_key_not_found: false }\n"
).replace("NAMESPACE", usage_record.AUTHZ_NAMESPACE)
_UAEX = "- response_flag_filter: { flags: [UAEX] }\n"
# Envoy's own 404 (no route); authz's 404 (a model no upstream serves in this API) keeps its body.
_NO_ROUTE = "- response_flag_filter: { flags: [NR] }\n"


@dataclass(frozen=True, slots=True)
class LocalReply:
    """One mapper: a registry code answered when the status matches (and the extra filters hold)."""

    code: str
    runtime_key: str  # Envoy wants one per status comparison; never set, so the default applies
    anthropic: bool = False  # the Messages paths' shape
    at_least: bool = False  # the status filter is `>=` (every 5xx), not `==`
    extra: str = ""  # further filters, YAML list items
    message: str | None = None  # instead of the registry's (Envoy's own text for a catch-all)
    note: str = ""


REPLIES: tuple[LocalReply, ...] = (
    LocalReply(ErrorCode.BODY_TOO_LARGE, "dynaseal.unused_413a", anthropic=True,
               note="On the Messages paths Envoy's own replies take Anthropic's error shape, so its SDK raises "
                    "its own."),
    LocalReply(ErrorCode.AUTHZ_UNAVAILABLE, "dynaseal.unused_503a", anthropic=True, extra=_UAEX),
    LocalReply(EnvoyReply.NOT_FOUND, "dynaseal.unused_404a", anthropic=True, extra=_NO_ROUTE,
               message="unknown path: served are POST /v1/messages and /v1/messages/count_tokens"),
    LocalReply(EnvoyReply.UPSTREAM_UNAVAILABLE, "dynaseal.unused_5xxa", anthropic=True, at_least=True,
               message="%LOCAL_REPLY_BODY%",
               note="Envoy's other errors on those paths (no healthy upstream, an upstream timeout or reset, ...)."),
    LocalReply(ErrorCode.AUTHZ_UNAVAILABLE, "dynaseal.unused_503", extra=_UAEX),
    LocalReply(EnvoyReply.UPSTREAM_UNAVAILABLE, "dynaseal.unused_503b",
               note="Envoy's own 503s past authz (no healthy upstream, connect failure, every try refused, "
                    "overflow) and 504 (no first byte in time): retryable, so SDKs retry them; a provider's own "
                    "5xx is its own."),
    LocalReply(EnvoyReply.UPSTREAM_TIMEOUT, "dynaseal.unused_504"),
    LocalReply(EnvoyReply.REQUEST_TIMEOUT, "dynaseal.unused_408"),
    LocalReply(ErrorCode.BODY_TOO_LARGE, "dynaseal.unused_413"),
    # Envoy's own (no route), and authz's on the give-back path (which must look like any unknown path).
    LocalReply(EnvoyReply.NOT_FOUND, "dynaseal.unused_404",
               extra="- or_filter:\n    filters:\n    " + _NO_ROUTE +
                     f'    - header_filter: {{ header: {{ name: ":path", string_match: '
                     f"{{ exact: {usage_record.GIVE_BACK_PATH} }} }} }}\n"),
)


def _indent(text: str, pad: str) -> list[str]:
    return [pad + line for line in text.splitlines()]


def reply_body(reply: LocalReply, max_body_bytes: int) -> dict[str, object]:
    """The JSON body of one local reply: the registry's code, type and message in the reply's shape."""
    spec = spec_of(reply.code)
    message = (reply.message if reply.message is not None else spec.message).format(max_body_bytes=max_body_bytes)
    if reply.anthropic:
        return {"type": "error", "error": {"type": anthropic_type(spec.status), "message": message,
                                           "code": spec.code}}
    return {"error": {"message": message, "type": spec.type, "code": spec.code, "param": None}}


def _status_filter(reply: LocalReply) -> str:
    status = spec_of(reply.code).status
    op, value = ("GE", status // 100 * 100) if reply.at_least else ("EQ", status)
    return (f"- status_code_filter: {{ comparison: {{ op: {op}, value: {{ default_value: {value}, "
            f"runtime_key: {reply.runtime_key} }} }} }}\n")


def _request_id_header(pad: str) -> list[str]:
    return [f"{pad}headers_to_add:",
            f'{pad}- header: {{ key: {usage_record.REQUEST_ID_HEADER}, value: "%REQ(X-REQUEST-ID)%" }}',
            f"{pad}  append_action: ADD_IF_ABSENT"]


def mappers_yaml(indent: int, max_body_bytes: int) -> str:
    """The `mappers:` list of `local_reply_config`, each line indented by `indent`, the first unindented."""
    pad = " " * indent
    lines: list[str] = []
    for reply in REPLIES:
        lines += [f"{pad}# {reply.note}"] if reply.note else []
        filters = [f for f in (_MESSAGES_PATHS if reply.anthropic else "", _status_filter(reply), reply.extra) if f]
        if len(filters) == 1:  # the status alone: no and_filter
            lines.append(f"{pad}- filter:")
            lines += _indent(filters[0][2:], pad + "    ")
        else:
            lines += [f"{pad}- filter:", f"{pad}    and_filter:", f"{pad}      filters:"]
            lines += _indent("".join(filters), pad + "      ")
        lines += [f"{pad}  body_format_override:",
                  f"{pad}    json_format: {json.dumps(reply_body(reply, max_body_bytes))}"]
        lines += _request_id_header(pad + "  ")
    # Every other local reply (authz's refusals keep their own id): only the request id.
    lines += [f"{pad}- filter:",
              f"{pad}    status_code_filter: {{ comparison: {{ op: GE, value: {{ default_value: 0, "
              f"runtime_key: dynaseal.unused_any }} }} }}"]
    lines += _request_id_header(pad + "  ")
    return "\n".join(lines).lstrip()


def not_amendable_body() -> str:
    """The Lua filter's own refusal (a body authz allowed that cannot be amended): a registry code, as JSON."""
    spec = spec_of(ErrorCode.INVALID_REQUEST)
    return json.dumps({"error": {"message": spec.message, "type": spec.type, "code": spec.code, "param": None}},
                      separators=(",", ":"))
