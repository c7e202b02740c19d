"""The built-in content rules a tenant switches on by name, each a few RE2 patterns and maybe a check.

Every pattern here is RE2 syntax (linear time, no look-around, no back-references). A rule with
a `confirm` function only blocks when its patterns match and `confirm` holds for the field's text:
the card rule's pattern finds any run of 13+ digits, then `has_card_number` looks for 13-19 of
them (single spaces or dashes between) that pass the Luhn check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import re2

# Maximal runs of digits with single separators; RE2 finds them in one linear pass.
_DIGIT_RUN = re2.compile(rb"[0-9]+(?:[ -][0-9]+)*")
_GROUP = re2.compile(rb"[0-9]+")


@dataclass(frozen=True, slots=True)
class Builtin:
    """One built-in rule: its patterns, what it is for, and an optional check of a matching text."""

    patterns: tuple[str, ...]
    description: str
    confirm: Callable[[bytes], bool] | None = None


def luhn_valid(candidate: bytes) -> bool:
    """Whether the digits of `candidate` (separators ignored) are 13-19 long and pass the Luhn check."""
    digits = [c - 48 for c in candidate if 48 <= c <= 57]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def has_card_number(text: bytes) -> bool:
    """Whether `text` holds 13-19 digits in a row (single spaces or dashes between groups) passing Luhn.

    Each digit run is tried from every group start, so a card right after another number
    ("call 555 1234 4111 1111 1111 1111") is found; a card inside a longer unbroken digit string is not
    a card. Cost: at most 19 digits looked at per group.
    """
    for run in _DIGIT_RUN.finditer(text):
        groups = [g.group() for g in _GROUP.finditer(run.group())]
        for start in range(len(groups)):
            digits = b""
            for group in groups[start:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_valid(digits):
                    return True
    return False


BUILTINS: dict[str, Builtin] = {
    "payment_card": Builtin(
        # A cheap filter in the tenant's set: 13 digits with at most single separators between them.
        (r"[0-9](?:[ -]?[0-9]){12}",),
        "payment card numbers (13-19 digits, single spaces or dashes allowed) that pass the Luhn check",
        has_card_number),
    "private_key": Builtin(
        (r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",),
        "PEM / OpenSSH / PGP private-key blocks (-----BEGIN ... PRIVATE KEY-----)"),
    "cloud_credentials": Builtin(
        (
            r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",  # AWS access key id (long-term and STS)
            r"\"private_key\"\s*:\s*\"-----BEGIN",  # a GCP service-account JSON key file
            r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API key
            r"\bAccountKey=[A-Za-z0-9+/]{86}==",  # Azure storage connection string
            r"\b[A-Za-z0-9_~.-]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}\b",  # Azure AD (Entra) client secret
            r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b",  # GitHub tokens
            r"\bgithub_pat_[A-Za-z0-9_]{82}\b",  # GitHub fine-grained token
            r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
            r"\bsk-(?:proj-|svcacct-|admin-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{20,}",  # OpenAI / Anthropic keys
        ),
        "cloud and API credential shapes: AWS access key ids, GCP service-account keys, Google API keys, "
        "Azure storage keys and client secrets, GitHub, Slack, OpenAI and Anthropic tokens"),
    "email": Builtin(
        (r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",),
        "e-mail addresses"),
}
