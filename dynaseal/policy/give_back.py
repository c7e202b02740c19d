"""The give-back request: Envoy's way to return what an unserved request took.

On an allow, authz puts a token in the request's metadata (`give_back`): the request's tenant,
request id and key path (the jtis from the root down to the key: a child key gives back at every
level), signed with a key every authz sharing the Redis shares. When the answer is
a failure no provider served (429, 500, 502, 503), Envoy's Lua filter POSTs the token to
`GIVE_BACK_PATH` on its own listener before the client sees the answer; ext_authz hands that to
authz, which checks the signature and gives the use, rpm slot and reservation back
(dynaseal.ledger.give_back). A client cannot forge a token, and one holding its own request's
token (it never sees it) could only give back an open reservation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import orjson

from dynaseal.contracts.error_registry import EnvoyReply, spec_of
from dynaseal.contracts.usage_record import GIVE_BACK_HEADER as TOKEN_HEADER
from dynaseal.contracts.usage_record import GIVE_BACK_PATH
from dynaseal.errors import error_envelope
from dynaseal.policy.decision import Decision, answer

__all__ = ["GIVE_BACK_PATH", "TOKEN_HEADER", "make_token", "read_token", "reply"]
_MAC_CHARS = 32
# A root and at most 4 levels of child keys below it (limits.max_chain_depth).
MAX_PATH = 5


def _mac(key: bytes, ids: str) -> str:
    return hmac.new(key, ids.encode(), hashlib.sha256).hexdigest()[:_MAC_CHARS]


def make_token(key: bytes, tenant: str, path: tuple[str, ...], request_id: str) -> str:
    """The opaque token naming one request of the key at the end of `path` (header-safe: base64url and hex)."""
    ids = base64.urlsafe_b64encode(orjson.dumps([tenant, request_id, *path])).decode().rstrip("=")
    return f"{ids}.{_mac(key, ids)}"


def read_token(key: bytes, token: str) -> tuple[str, tuple[str, ...], str] | None:
    """(tenant, key path, request_id) of a token this key signed; None for anything else."""
    ids, _, mac = token.partition(".")
    if not ids or len(mac) != _MAC_CHARS or not hmac.compare_digest(mac, _mac(key, ids)):
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(ids + "=" * (-len(ids) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not (isinstance(value, list) and 3 <= len(value) <= 2 + MAX_PATH
            and all(isinstance(v, str) and v for v in value)):
        return None
    return value[0], tuple(value[2:]), value[1]


def reply(status: int, given_back: bool, request_id: str) -> Decision:
    """authz's own answer to a give-back request (404, as for any unknown path, when the token is bad)."""
    if status == 200:
        return answer(orjson.dumps({"given_back": given_back}), None, request_id)
    unknown = spec_of(EnvoyReply.NOT_FOUND)  # the answer of any unknown path (Envoy's reply replaces it)
    body = orjson.dumps(error_envelope("unknown path", unknown.type, unknown.code))
    return Decision(False, status, "invalid_request_error", "", None,
                    {"content-type": "application/json"}, (), {}, None, request_id, body)
