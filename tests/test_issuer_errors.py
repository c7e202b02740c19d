"""The issuer's error codes are one closed enum, and its error body has the gateway's shape."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import orjson

from dynaseal.errors import ErrorCode
from dynaseal.policy.decision import deny
from issuer_api.errors import ApiError, IssuerError, forbidden, invalid_request, unauthenticated

ISSUER = Path(__file__).resolve().parent.parent / "issuer_api"
# Where each constructor takes its code: (positional index, keyword).
CODE_ARGUMENT = {"ApiError": (1, "code"), "invalid_request": (2, "code"), "unauthenticated": (1, "code"),
                 "forbidden": (1, "code")}


def test_codes_are_unique_snake_case_and_shared_with_the_gateway() -> None:
    values = [code.value for code in IssuerError]
    assert len(values) == len(set(values)) and all(re.fullmatch(r"[a-z]+(_[a-z]+)*", v) for v in values)
    gateway = {code.value for code in ErrorCode}
    assert {IssuerError.INVALID_REQUEST, IssuerError.REQUEST_TOO_LARGE, IssuerError.MODEL_NOT_ALLOWED} <= gateway


def test_every_error_the_issuer_raises_names_an_enum_code() -> None:
    """No free-form code literal anywhere in issuer_api: a code is `IssuerError.X` or the default."""
    offenders = []
    for path in sorted(ISSUER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CODE_ARGUMENT):
                continue
            index, keyword = CODE_ARGUMENT[node.func.id]
            args = [a for i, a in enumerate(node.args) if i == index] + \
                [k.value for k in node.keywords if k.arg == keyword]
            for arg in args:
                named = isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and \
                    arg.value.id == "IssuerError"
                passed_on = isinstance(arg, ast.Name) and arg.id == "code"  # a helper's typed parameter
                if not (named or passed_on):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders


def test_the_envelope_is_the_gateways() -> None:
    issuer = ApiError(404, IssuerError.KEY_NOT_FOUND, "no such key", "jti").body()
    gateway = orjson.loads(deny(ErrorCode.MODEL_NOT_ALLOWED, "no", "model").error_body())
    assert list(issuer) == list(gateway) == ["error"]
    assert list(issuer["error"]) == list(gateway["error"]) == ["message", "type", "code", "param"]
    assert issuer["error"] == {"message": "no such key", "type": "not_found_error", "code": "key_not_found",
                               "param": "jti"}
    for error, status, code in ((invalid_request("x"), 400, "invalid_request_error"),
                                (unauthenticated("x"), 401, "invalid_token"),
                                (forbidden("x", IssuerError.SCOPE_NOT_ALLOWED), 403, "scope_not_allowed")):
        assert (error.status, error.body()["error"]["code"]) == (status, code)
