"""What the ledger answers: result codes defined once, here, and the typed outcomes built from them.

The Lua scripts never spell a code as a number: `lua_constants` writes these enums as Lua locals at the
top of every script (dynaseal.ledger.quota_scripts, tenant_scripts), so Python and Lua cannot disagree.
What a refusal means to a client (its message, its HTTP status) is the policy layer's business
(dynaseal.policy.quota_refusals), not the ledger's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class AdmitCode(IntEnum):
    """What an admission script answered; `level` in the reply says where (1 = the root, 0 = the tenant)."""

    ADMITTED = 1
    REVOKED = -1
    USES_SPENT = -2
    RATE_LIMITED = -3
    BUDGET_SPENT = -4
    # The request id is already known there: never admitted twice.
    DUPLICATE_REQUEST = -5
    # Redis ran the script after authz gave up on it: nothing was written.
    PAST_DEADLINE = -6
    PROOF_REPLAYED = -7
    MONEY_SPENT = -8
    TENANT_RATE_LIMITED = -9
    TENANT_BUDGET_SPENT = -10


class SettleOutcome(IntEnum):
    """What settling one request did (at the key that made it)."""

    ALREADY_SETTLED = 0
    SETTLED = 1
    # An expired reservation had been billed in full: corrected to the real usage, once.
    CORRECTED = 2
    # No reservation was found (e.g. Redis lost it): the usage was billed as it is.
    UNRESERVED = 3


def lua_constants(*enums: type[IntEnum]) -> str:
    """Lua `local NAME = value` lines for every member of `enums` (the prelude of each script)."""
    return "".join(f"local {member.name} = {int(member)}\n" for enum in enums for member in enum)


# The prelude every ledger script starts with.
LUA_CONSTANTS = lua_constants(AdmitCode, SettleOutcome)


@dataclass(frozen=True, slots=True)
class Admitted:
    """The request holds its reservation at every level (and on the tenant's slot, where one applies)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing is held: the code, the level that refused (1 = root, 0 = the tenant tier or none), and that
    level's counters (money counters, in micro-units, for MONEY_SPENT)."""

    code: AdmitCode
    level: int = 0
    spent: int = 0
    reserved: int = 0
    retry_ms: int = 0


Outcome = Admitted | Refused


def outcome_of(reply: list[int], tenant: bool = False) -> Outcome:
    """Read an admission script's reply `{code, level, spent, reserved, retry_ms}` (the tenant's has no level)."""
    if tenant:
        code, spent, reserved, retry_ms = (int(v) for v in reply[:4])
        level = 0
    else:
        code, level, spent, reserved, retry_ms = (int(v) for v in reply[:5])
    if code == AdmitCode.ADMITTED:
        return Admitted()
    return Refused(AdmitCode(code), level, spent, reserved, retry_ms)


class LedgerUnavailable(Exception):
    """Redis could not be reached or answered an error: the caller must fail closed.

    `reason` is a metric label (`redis_error`, `no_request_id`).
    """

    def __init__(self, message: str, reason: str = "redis_error") -> None:
        super().__init__(message)
        self.reason = reason
