"""The scope of a dynamic key a user asks for, checked against the issuer's defaults and tenant ceilings.

Issuer defaults are also the issuer's ceilings: a user may narrow them, never widen them, and the
tenant's limits bound everything (the gateway would refuse a key beyond them anyway; refusing here
gives the user a clear error instead of a key that never works).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from dynaseal.config import IssuerConfig
from dynaseal.tenant_config import Limits
from issuer_api.errors import IssuerError, forbidden, invalid_request
from issuer_api.users import Account

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class ScopeRequest(BaseModel):
    """The optional JSON body of `POST /key/create`; every field narrows the defaults."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelName] | None = Field(None, min_length=1, max_length=32)
    max_tokens: int | None = Field(None, ge=1)
    ttl: int | None = Field(None, ge=1)
    uses: int | None = Field(None, ge=1)
    budget: int | None = Field(None, ge=1)
    rpm: int | None = Field(None, ge=1)
    sub: str | None = Field(None, min_length=1, max_length=256)
    # Bind the key to the client's key (RFC 9449): its RFC 7638 thumbprint (DPoP proofs required), or the
    # public JWK itself (proofs required, and the holder may mint narrowed child keys offline).
    dpop_jkt: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{43}$")
    holder_jwk: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class KeyScope:
    """What a minted key will allow, resolved and within every ceiling."""

    models: tuple[str, ...]
    max_tokens: int
    ttl: int
    sub: str
    uses: int | None = None
    budget: int | None = None
    rpm: int | None = None
    cnf: dict[str, Any] | None = None

    def as_record(self) -> dict[str, object]:
        """The scope as stored with the minted key and returned to the client."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v is not None}


def _default_models(issuer: IssuerConfig, limits: Limits) -> tuple[str, ...]:
    if issuer.key_models:
        return issuer.key_models
    # A "*" allowlist cannot be written into a key (the claim lists concrete names).
    return tuple(m for m in limits.models if m != "*")


def _check_models(models: tuple[str, ...], issuer: IssuerConfig, limits: Limits) -> None:
    for model in models:
        if issuer.key_models and model not in issuer.key_models:
            raise forbidden(f"model {model!r} is not among the models this issuer grants",
                            IssuerError.MODEL_NOT_ALLOWED, "models")
        if "*" not in limits.models and model not in limits.models:
            raise forbidden(f"model {model!r} is not allowed for this tenant", IssuerError.MODEL_NOT_ALLOWED, "models")


def _at_most(name: str, value: int | None, ceiling: int | None, whose: str) -> None:
    if value is not None and ceiling is not None and value > ceiling:
        raise forbidden(f"{name} {value} is above the {whose} limit of {ceiling}", IssuerError.SCOPE_NOT_ALLOWED, name)


def resolve_scope(request: ScopeRequest | None, account: Account, issuer: IssuerConfig,
                  limits: Limits) -> KeyScope:
    """The key scope for this request; raise a 400/403 ApiError if it asks for more than allowed."""
    request = request or ScopeRequest()
    models = tuple(dict.fromkeys(request.models)) if request.models else _default_models(issuer, limits)
    if not models:
        raise invalid_request("no default models are configured: name the models", "models",
                              IssuerError.MODELS_REQUIRED)
    _check_models(models, issuer, limits)

    _at_most("max_tokens", request.max_tokens, issuer.key_max_tokens, "issuer's")
    _at_most("ttl", request.ttl, issuer.key_ttl, "issuer's")
    _at_most("max_tokens", request.max_tokens, limits.max_tokens, "tenant's")
    _at_most("ttl", request.ttl, limits.max_ttl, "tenant's")
    _at_most("rpm", request.rpm, limits.rpm, "tenant's")
    _at_most("budget", request.budget, limits.budget, "tenant's")

    # An end user speaks only for themself; the tenant account may mint on behalf of any end user.
    sub = request.sub or account.username
    if sub != account.username and not account.is_tenant:
        raise forbidden("only the tenant account may mint keys for another subject", IssuerError.SUB_NOT_ALLOWED, "sub")

    return KeyScope(
        models=models,
        # Defaults are clipped to the tenant's ceilings, so a loose issuer config still mints valid keys.
        max_tokens=request.max_tokens or min(issuer.key_max_tokens, limits.max_tokens),
        ttl=request.ttl or min(issuer.key_ttl, limits.max_ttl),
        sub=sub,
        uses=request.uses,
        budget=request.budget,
        rpm=request.rpm,
    )
