"""The tenant part of the config file's schema: verification keys, limits, prices, callback.

Every config model derives from `StrictModel`: unknown fields are errors and values are frozen.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, RootModel, field_validator, model_validator

from dynaseal.content.builtin_rules import BUILTINS
from dynaseal.content.fields import FIELDS
from dynaseal.content.rules import CompiledRules, RuleSpec, builtin_spec, compile_rules, literal_pattern, pattern_error
from dynaseal.origin_patterns import check_origin_pattern
from dynaseal.upstreams import ModelRoute

KID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class StrictModel(BaseModel):
    """A config object: unknown fields are refused, values cannot change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyConfig(StrictModel):
    """One verification key of a tenant: an inline public JWK or an HMAC secret from the env."""

    kid: str | None = None
    alg: Literal["EdDSA", "ES256", "HS256"]
    public_jwk: dict[str, Any] | None = None
    secret_env: str | None = None
    # A mounted file holding the secret (a Kubernetes Secret volume): read again on change.
    secret_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        if self.kid is not None and not KID_PATTERN.match(self.kid):
            raise ValueError("kid must match [A-Za-z0-9._-]{1,64}")
        if self.alg == "HS256":
            if (self.secret_env is None) == (self.secret_file is None) or self.public_jwk:
                raise ValueError("HS256 keys take one of secret_env or secret_file (and no public_jwk)")
        elif not self.public_jwk or self.secret_env or self.secret_file:
            raise ValueError(f"{self.alg} keys take public_jwk (and no secret_env or secret_file)")
        return self


class ParamLimit(StrictModel):
    """Numeric range for one request parameter."""

    min: float | None = None
    max: float | None = None


class TenantBudget(StrictModel):
    """Tokens all of a tenant's keys may use together per UTC calendar day or month."""

    tokens: int = Field(ge=1)
    window: Literal["day", "month"] = "day"


class ModelAllowance(StrictModel):
    """What one model's requests can cost beyond their body's bytes, added to the reservation bound."""

    # Tokens a model may generate outside max_tokens, per choice (DeepSeek's deepseek-reasoner: up to 32K).
    reasoning_tokens: int = Field(0, ge=0, le=1_000_000)
    # A chat template that re-serialises the request (tools indented, role markup) makes more prompt
    # tokens than body bytes: the body's length is multiplied by this, and this constant added.
    template_factor: float = Field(1.0, ge=1.0, le=16.0)
    template_tokens: int = Field(0, ge=0, le=1_000_000)


class Limits(StrictModel):
    """A tenant's ceilings: no key of the tenant may exceed them."""

    models: tuple[str, ...] = ("*",)
    max_tokens: int = Field(4096, ge=1)
    max_ttl: int = Field(86400, ge=1)
    # Per-key ceilings: a key's own `rpm` / `budget` is capped by these, and a key without one gets them.
    rpm: int | None = Field(None, ge=1)
    budget: int | None = Field(None, ge=1)
    params: dict[str, ParamLimit] = Field(default_factory=dict)
    # Refuse requests without a token cap or streams without usage (instead of the gateway adding them).
    strict_requests: bool = False
    # The member the gateway adds when a request sets no cap (o-series models take max_completion_tokens).
    cap_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # Tokens reserved per image/audio/file part (their bytes do not bound their cost); unset = such parts
    # are refused whenever a budget applies (the key's, a key's above it, or the tenant's).
    media_part_tokens: int | None = Field(None, ge=0)
    # Set when the upstream honours both max_tokens and max_completion_tokens (OpenAI): then a client's
    # cap in either is enough; otherwise the gateway adds `cap_field` when the client used the other.
    upstream_reads_both_caps: bool = False
    # Request members beyond the gateway's known set a request may use: the price- or storage-changing
    # ones it knows (service_tier, web_search_options, modalities, audio, store, metadata, prediction)
    # and any it does not (vLLM's top_k, ...; dynaseal.policy.request_members); none by default.
    provider_features: tuple[str, ...] = ()
    # Every key presented must be sender-constrained (RFC 9449 DPoP: a `cnf` claim and a proof per request).
    require_dpop: bool = False
    # How many levels of narrowed child keys a key of this tenant may have below it (0 = no children).
    max_chain_depth: int = Field(0, ge=0, le=4)
    # Per-key ceiling (and default) of a key's budget in money, in the currency of the tenant's price
    # table (`upstream.currency`); whole micro-units at most (6 decimals).
    budget_cost: Decimal | None = Field(None, gt=0, le=10**9, decimal_places=6)

    @field_validator("budget_cost", mode="before")
    @classmethod
    def _exact_amount(cls, value: Any) -> Any:
        return repr(value) if isinstance(value, float) else value
    # Tenant-wide, over all of the tenant's keys together (rpm and budget above are per key); checked
    # at admit together with the key's own limits (dynaseal.ledger.tenant_quota).
    tenant_budget: TenantBudget | None = None
    tenant_rpm: int | None = Field(None, ge=1)
    # Per model name (or "*" for every model without its own entry): reasoning and chat-template
    # allowances added to the reservation bound (dynaseal.policy.reservation_bound).
    model_allowances: dict[str, ModelAllowance] = Field(default_factory=dict)

    @field_validator("provider_features")
    @classmethod
    def _member_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        # provider_features names request members: the same spelling the policy accepts in a body.
        for name in names:
            if not re.fullmatch(r"[a-z0-9_]{1,64}", name):
                raise ValueError(f"provider_features: {name!r} is not a request member name (a-z, 0-9, _)")
        return names
    # Requests carrying what these match are refused with content_blocked (dynaseal.content.rules).
    content_rules: ContentRules = Field(default_factory=lambda: ContentRules(()))
    # Tokens reserved per document part (chat `file`, Responses `input_file`, Messages `document`): a PDF of
    # many pages costs far more than an image, so media_part_tokens does not bound it. Unset = documents are
    # refused whenever a budget applies (dynaseal.policy.documents).
    document_part_tokens: int | None = Field(None, ge=0)
    # Responses / Messages members and tools that pull in context the body does not hold or run on the
    # provider's side (previous_response_id, conversation, prompt, item_reference; web_search, file_search,
    # code_interpreter, image_generation, computer_use, mcp; Messages' server tools, mcp_servers, container):
    # refused unless named here; a request using any reserves `server_side_tokens` more prompt tokens
    # (dynaseal.policy.endpoints.server_side).
    server_side: tuple[str, ...] = ()
    server_side_tokens: int | None = Field(None, ge=1)
    # `anthropic-beta` values a Messages request may send (a beta can change what a request costs, e.g. a
    # long-context premium): any other is refused; none by default.
    anthropic_betas: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _server_side_ceiling(self) -> Limits:
        if self.server_side and self.server_side_tokens is None:
            raise ValueError("limits.server_side needs limits.server_side_tokens: the tokens such a request "
                             "reserves beyond its body")
        return self


class ModelPrice(StrictModel):
    """One model's price per million tokens; cached input defaults to input, reasoning to output."""

    input: Decimal = Field(ge=0)
    cached_input: Decimal | None = Field(None, ge=0)
    output: Decimal = Field(ge=0)
    reasoning: Decimal | None = Field(None, ge=0)

    @field_validator("input", "cached_input", "output", "reasoning", mode="before")
    @classmethod
    def _exact(cls, value: Any) -> Any:
        # YAML gives 0.15 as a float; its shortest repr is what the operator wrote, not its binary value.
        if isinstance(value, bool):
            raise ValueError("a price is a number or a decimal string")
        return repr(value) if isinstance(value, float) else value

    @field_validator("input", "cached_input", "output", "reasoning")
    @classmethod
    def _finite(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and not value.is_finite():
            raise ValueError("a price must be a finite number")
        return value

    # Prompt tokens written to the provider's prompt cache (Anthropic's cache writes); defaults to input.
    cache_write: Decimal | None = Field(None, ge=0, allow_inf_nan=False)

    @field_validator("cache_write", mode="before")
    @classmethod
    def _exact_cache_write(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a price is a number or a decimal string")
        return repr(value) if isinstance(value, float) else value


class TenantUpstream(StrictModel):
    """A tenant's own provider credential (named by env var), used instead of the gateway's, and the
    price table of what it is billed for the upstream's models."""

    api_key_env: str | None = None
    # ISO 4217 code of every price, cost and money budget of this tenant.
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    # A model without a price: served and flagged (`serve`), or refused (`refuse`).
    unpriced: Literal["serve", "refuse"] = "serve"
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    # Each model the tenant serves -> its upstreams in order of preference (dynaseal.upstreams); none = the
    # gateway's single upstream. The client's model name is what limits and prices apply to.
    routes: tuple[ModelRoute, ...] = ()
    # Pass the provider's account and rate-limit headers (openai-organization, x-ratelimit-*) to clients.
    provider_headers: bool = False


class CallbackBatch(StrictModel):
    """Several usage callbacks in one signed request (`type: batch`), each with its own id."""

    max_events: int = Field(50, ge=1, le=1000)
    # How long the first event of a batch waits for others.
    max_wait_ms: int = Field(200, ge=0, le=10_000)


class CallbackConfig(StrictModel):
    """The tenant's usage callback endpoint."""

    url: str
    secret_env: str | None = None
    include_content: bool = False
    # Covers a handler that works before it answers (the seed backend's takes 10 s): an attempt that
    # times out is retried although it arrived, and a too-short timeout dead-letters every callback.
    timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    # Callbacks in flight to this tenant at once (null: the consumer's --per-tenant). Throughput to a
    # tenant is at most concurrency / its answer time.
    concurrency: int | None = Field(None, ge=1, le=1024)
    # Fractions of a key's budget (tokens and money) whose crossing sends a `budget_threshold` callback,
    # each at most once per key and budget.
    budget_thresholds: tuple[float, ...] = ()
    # Batched delivery (null: one event per request, the seed's format). callback_consumer.batches.
    batch: CallbackBatch | None = None

    @field_validator("budget_thresholds")
    @classmethod
    def _fractions(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        for value in values:
            # Redis compares in basis points: a finer fraction would be a different threshold there.
            if not 0 < value <= 1 or Decimal(repr(float(value))).scaleb(4) % 1 != 0:
                raise ValueError(f"budget threshold {value} must be in (0, 1] with at most 4 decimals")
        if len(set(values)) != len(values):
            raise ValueError("duplicate budget threshold")
        return tuple(sorted(values))

    # The signing secret in a mounted file instead of secret_env (exactly one of the two).
    secret_file: str | None = None
    # Secrets that also sign every callback during a rotation's grace period: the `webhook-signature`
    # header carries one signature per secret (Standard Webhooks), so a receiver on either verifies.
    previous_secret_envs: tuple[str, ...] = Field((), max_length=4)

    @model_validator(mode="after")
    def _url_and_secret(self) -> CallbackConfig:
        # A malformed URL (`htp:/...`) is refused at load, not at the first callback.
        if not re.match(r"^https?://(\[[0-9a-f:.]+\]|[^/?#\s:\[\]@]+)(:\d{1,5})?([/?#]\S*)?$", self.url, re.IGNORECASE):
            raise ValueError(f"callback url {self.url!r} must be an absolute http:// or https:// URL")
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("callback takes one of secret_env or secret_file")
        return self


class CorsConfig(StrictModel):
    """Web pages allowed to call the gateway with this tenant's keys (dynaseal.keys.origins)."""

    # Exact origins (`https://app.example.com`) or `scheme://*.host[:port]` patterns.
    origins: tuple[str, ...] = Field(default=(), max_length=100)

    @field_validator("origins")
    @classmethod
    def _origins(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_origin_pattern(value) for value in values)


class TenantConfig(StrictModel):
    """One tenant: its verification keys, limits, upstream and callback."""

    id: str = Field(min_length=1, max_length=128)
    name: str = ""
    keys: tuple[KeyConfig, ...] = ()
    jwks_file: str | None = None
    jwks_url: str | None = None
    # How often the jwks_url is fetched again (default: gateway.jwks_refresh_s).
    jwks_refresh_s: float | None = Field(None, ge=30, le=86400)
    limits: Limits = Field(default_factory=Limits)
    upstream: TenantUpstream | None = None
    callback: CallbackConfig | None = None
    # Browser origins allowed to use the tenant's keys (CORS at the edge, checked again by authz).
    cors: CorsConfig | None = None

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/?#\s]+(?:[/?#]\S*)?$", url, re.IGNORECASE):
            raise ValueError("jwks_url must be an absolute http:// or https:// URL")
        return url

    @model_validator(mode="after")
    def _has_keys(self) -> TenantConfig:
        if not (self.keys or self.jwks_file or self.jwks_url):
            raise ValueError("a tenant needs keys, jwks_file or jwks_url")
        # Several seed-format secrets (keys without kid) may verify side by side while one is rotated.
        if sum(1 for k in self.keys if k.kid is None) > 1 and any(k.alg != "HS256" for k in self.keys
                                                                   if k.kid is None):
            raise ValueError("keys without kid are seed-format HS256 secrets: several only when all are HS256")
        kids = [k.kid for k in self.keys if k.kid is not None]
        if len(kids) != len(set(kids)):
            raise ValueError("duplicate kid")
        return self


# Content rules (dynaseal.content.rules): what a tenant never wants sent to a provider.
CONTENT_RULE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ContentRule(StrictModel):
    """One rule: a built-in by name, or the tenant's literals and RE2 patterns; where it looks; refuse."""

    name: str | None = None  # a built-in's defaults to the built-in's name
    builtin: str | None = None
    literals: tuple[str, ...] = Field((), max_length=1024)
    patterns: tuple[str, ...] = Field((), max_length=256)
    case_insensitive: bool = False
    # Field names of dynaseal.content.fields; all of them when not set.
    where: tuple[str, ...] | None = None
    action: Literal["refuse"] = "refuse"

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        # Name first, so every later error says which rule it is about.
        if isinstance(data, dict) and data.get("name") is None and isinstance(data.get("builtin"), str):
            data = {**data, "name": data["builtin"]}
        return data

    @model_validator(mode="after")
    def _valid(self) -> ContentRule:
        label = f"content rule {self.name!r}"
        if self.name is None or not CONTENT_RULE_NAME.match(self.name):
            raise ValueError(f"{label}: a rule needs a name of 1-64 characters A-Z a-z 0-9 _ . -")
        if self.builtin is not None:
            if self.builtin not in BUILTINS:
                raise ValueError(f"{label}: unknown built-in {self.builtin!r} (known: {', '.join(BUILTINS)})")
            if self.literals or self.patterns or self.case_insensitive:
                raise ValueError(f"{label}: a built-in takes no literals, patterns or case_insensitive")
        elif not (self.literals or self.patterns):
            raise ValueError(f"{label}: give a builtin, literals or patterns")
        self._check_matchers(label)
        unknown = sorted(set(self.where or ()) - set(FIELDS))
        if unknown or self.where == ():
            raise ValueError(f"{label}: unknown field(s) {unknown or '(none listed)'} in where "
                             f"(known: {', '.join(FIELDS)})")
        return self

    def _check_matchers(self, label: str) -> None:
        """Every literal matches something less than every request; every pattern compiles on RE2."""
        for literal in self.literals:
            if not literal:
                raise ValueError(f"{label}: an empty literal would match every request")
        for pattern in self.patterns:
            reason = pattern_error(pattern)
            if reason is not None:
                raise ValueError(f"{label}: pattern {pattern!r} does not compile (RE2 syntax): {reason}")


class ContentRules(RootModel[tuple[ContentRule, ...]]):
    """A tenant's content rules, in order (the first that matches names the refusal), compiled at load."""

    model_config = ConfigDict(frozen=True)
    root: tuple[ContentRule, ...] = Field((), max_length=64)
    _compiled: CompiledRules | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _compile(self) -> ContentRules:
        names = [rule.name for rule in self.root]
        if len(names) != len(set(names)):
            raise ValueError("content rule names must be unique")
        specs = []
        for rule in self.root:
            where = rule.where or FIELDS
            assert rule.name is not None  # _valid
            if rule.builtin is not None:
                specs.append(builtin_spec(rule.builtin, rule.name, where))
                continue
            flags = "(?i)" if rule.case_insensitive else ""
            patterns = [literal_pattern(lit, rule.case_insensitive) for lit in rule.literals]
            patterns += [f"{flags}(?:{p})" for p in rule.patterns]
            specs.append(RuleSpec(rule.name, tuple(patterns), frozenset(where)))
        self._compiled = compile_rules(specs)
        return self

    @property
    def compiled(self) -> CompiledRules:
        """The rules compiled into one RE2 set per field (`dynaseal.content.rules.CompiledRules`)."""
        assert self._compiled is not None  # _compile runs on every validation
        return self._compiled

    def __bool__(self) -> bool:
        return bool(self.root)


def unbounded_media_warning(tenant: TenantConfig) -> str | None:
    """The load-time warning for a tenant whose budgets will refuse every media request, or None."""
    limits = tenant.limits
    if limits.media_part_tokens is not None:
        return None
    budgets = [name for name in ("budget", "budget_cost", "tenant_budget") if getattr(limits, name) is not None]
    if not budgets:
        return None
    return (f"tenant {tenant.id}: limits.{', limits.'.join(budgets)} set but no limits.media_part_tokens: "
            "requests with image, audio or file parts will be refused (403 param_not_allowed); "
            "set media_part_tokens to reserve for them")
