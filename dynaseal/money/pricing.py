"""Money: a model's price, the cost of the usage an upstream reported, and integer micro-units for Redis.

Prices are per million tokens in the tenant's currency, so `tokens × price` *is* the cost in
micro-units (10⁻⁶ of the currency): every cost below is exact Decimal arithmetic, never a float.
Redis counts integer micro-units; a cost with finer digits is rounded *up* there (a budget is
never overspent by rounding), while callbacks carry the exact decimal.

How usage maps onto price lines (OpenAI's usage semantics): `prompt_tokens` includes
`cached_tokens`, `completion_tokens` includes `reasoning_tokens`. So

    cost = (prompt − cached) × input + cached × cached_input
         + (completion − reasoning) × output + reasoning × reasoning        (÷ 10⁶)

with `cached_input` defaulting to `input` and `reasoning` to `output` when the table omits them.
Prompt tokens written to the provider's cache (Anthropic's `cache_creation_input_tokens`) are a part
of the prompt priced on their own line, `cache_write` (default: `input`).
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

MICROS = 6  # Redis holds integer 10⁻⁶ units of the currency
# Enough digits for any realistic amount: token counts ≤ 2⁶³ times prices with a few decimals.
_CONTEXT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation])
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one request as the upstream reported them."""

    prompt: int
    completion: int
    cached: int = 0
    reasoning: int = 0
    cache_write: int = 0

    def lines(self) -> dict[str, int]:
        """Tokens per price line: input (uncached), cached_input, output (not reasoning), reasoning, and
        cache_write when there are any."""
        cached = min(max(self.cached, 0), max(self.prompt, 0))
        written = min(max(self.cache_write, 0), max(self.prompt, 0) - cached)
        reasoning = min(max(self.reasoning, 0), max(self.completion, 0))
        lines = {"input": max(self.prompt, 0) - cached - written, "cached_input": cached,
                 "output": max(self.completion, 0) - reasoning, "reasoning": reasoning}
        if written:
            lines["cache_write"] = written
        return lines


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price per million tokens, per token type, in one currency."""

    currency: str
    input: Decimal
    cached_input: Decimal
    output: Decimal
    reasoning: Decimal
    # Prompt tokens written to the provider's cache; None = priced as input.
    cache_write: Decimal | None = None

    @property
    def cache_write_rate(self) -> Decimal:
        """The price of a token written to the cache (input's when the table sets none)."""
        return self.input if self.cache_write is None else self.cache_write

    def line_costs(self, usage: TokenUsage) -> dict[str, Decimal]:
        """The exact cost of each price line (in currency units)."""
        rates = {"input": self.input, "cached_input": self.cached_input, "output": self.output,
                 "reasoning": self.reasoning, "cache_write": self.cache_write_rate}
        return {line: _CONTEXT.multiply(Decimal(tokens), rates[line]).scaleb(-MICROS, _CONTEXT)
                for line, tokens in usage.lines().items()}

    def cost(self, usage: TokenUsage) -> Decimal:
        """The exact cost of one request's usage (in currency units)."""
        total = _ZERO
        for part in self.line_costs(usage).values():
            total = _CONTEXT.add(total, part)
        return total

    def bound_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Micro-units to reserve for at most this many prompt and completion tokens (rounded up).

        Each side is charged at its dearest line, so whatever mix of cached and reasoning tokens the
        upstream reports, the true cost is never above the bound.
        """
        top_in = max(self.input, self.cached_input, self.cache_write_rate)
        top_out = max(self.output, self.reasoning)
        micro = _CONTEXT.add(_CONTEXT.multiply(Decimal(prompt_tokens), top_in),
                             _CONTEXT.multiply(Decimal(completion_tokens), top_out))
        return int(micro.to_integral_value(ROUND_CEILING))

    def encode(self) -> str:
        """The compact form authz hands to the access log: `CUR input cached_input output reasoning`."""
        rates = (self.input, self.cached_input, self.output, self.reasoning) + \
            (() if self.cache_write is None else (self.cache_write,))
        return " ".join([self.currency, *(format_amount(v) for v in rates)])

    @classmethod
    def decode(cls, text: str) -> Price | None:
        """Parse `encode`'s form; None if it is not one (a line from an older gateway, or damage)."""
        parts = text.split()
        if len(parts) not in (5, 6) or not (len(parts[0]) == 3 and parts[0].isalpha() and parts[0].isupper()):
            return None
        try:
            values = [Decimal(p) for p in parts[1:]]
        except decimal.InvalidOperation:
            return None
        if any(not v.is_finite() or v < 0 for v in values):
            return None
        return cls(parts[0], *values)


def to_micros(amount: Decimal) -> int:
    """Integer micro-units of an amount, rounded up (what Redis counts)."""
    return int(amount.scaleb(MICROS, _CONTEXT).to_integral_value(ROUND_CEILING))


def from_micros(micros: int) -> Decimal:
    """The amount of a number of micro-units."""
    return Decimal(micros).scaleb(-MICROS, _CONTEXT)


def format_amount(amount: Decimal) -> str:
    """A decimal as a plain string without exponent or trailing zeros: `0.000123`, `12`, `0`."""
    if amount == 0:
        return "0"
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def money(amount: Decimal, currency: str) -> dict[str, str]:
    """The `{"amount", "currency"}` object of callbacks and the issuer's `GET /usage`."""
    return {"amount": format_amount(amount), "currency": currency}
