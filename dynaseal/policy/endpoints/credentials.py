"""Where each API's clients put the key, and which of their headers reach the provider.

The Anthropic SDK sends its key as `x-api-key`; everything else as `Authorization: Bearer`. Toward the
provider the credential goes in the provider's own header: `x-api-key` for the Messages format,
`Authorization: Bearer` for OpenAI's. `anthropic-version` and `anthropic-beta` pass on Messages paths.
"""

from __future__ import annotations

from collections.abc import Mapping

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.safe_text import safe_text

ANTHROPIC_FORWARDED = frozenset({"anthropic-version", "anthropic-beta"})


def with_api_key(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The headers with an `x-api-key` key read as `Authorization: Bearer` (a second, different key refused)."""
    api_key = headers.get("x-api-key", "").strip()
    if not api_key:
        return headers
    bearer = headers.get("authorization", "")
    if bearer:
        scheme, _, value = bearer.partition(" ")
        if scheme.lower() != "bearer" or value.strip() != api_key:
            raise Refusal(ErrorCode.INVALID_API_KEY, "x-api-key and Authorization carry different keys")
        return headers
    return {**headers, "authorization": f"Bearer {api_key}"}


def check_betas(headers: Mapping[str, str], key: VerifiedKey) -> None:
    """Every `anthropic-beta` value (comma-separated) is one the tenant allows (`limits.anthropic_betas`)."""
    for beta in headers.get("anthropic-beta", "").split(","):
        beta = beta.strip()
        if beta and beta not in key.tenant.limits.anthropic_betas:
            raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                          f"anthropic-beta '{safe_text(beta, 64)}' is not allowed for this tenant "
                          "(limits.anthropic_betas)", "anthropic-beta")


def provider_credential(provider_key: str, fmt: str) -> dict[str, str]:
    """The provider credential in the header the provider of `fmt` reads."""
    if fmt == "messages":
        return {"x-api-key": provider_key}
    return {"authorization": f"Bearer {provider_key}"}
