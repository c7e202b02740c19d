"""A tenant's content rules, compiled once per config load and matched in one pass per text field.

Every pattern — the tenant's, literals escaped, and the built-ins' — goes through RE2, whose time
is linear in the text whatever the pattern: `(a+)+$` on a megabyte of `a`s costs what `a` does.
For each field name (`fields.FIELDS`) the rules that look there are one `re2.Set`, so a
field's text is scanned once for all of them. A refusal names the rule, never what it matched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from dynaseal.content.builtin_rules import BUILTINS
from dynaseal.content.fields import FIELDS, Texts
from dynaseal.errors import ErrorCode, Refusal

# Text looked at per request, all fields together. The gateway's body limit bounds it already; this
# holds if that limit is raised: a request with more text than this is refused, never passed unread.
MAX_INSPECTED_BYTES = 4 << 20
# RE2's memory budget for one tenant's set of one field (its default is 8 MiB per pattern): the compiled
# program and the DFA's state cache, which is filled lazily and reset when full.
_SET_MAX_MEM = 16 << 20
# Entry 0 of every set: `\A`, which matches every text (at its start). RE2::Set::Match answers "no match"
# when its DFA runs out of memory and the Python binding cannot tell that apart; a result without the
# sentinel is that failure, and the request fails closed instead of passing uninspected. (The empty
# pattern would do too, but matching at every position it doubles the scan's time; `\A` costs nothing.)
_SENTINEL = r"\A"


class InspectionFailed(RuntimeError):
    """RE2 could not finish scanning a text (its DFA ran out of memory): the request must fail closed."""


def _options(max_mem: int = 8 << 20) -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a bad tenant pattern is reported at load, not printed by the C++ library
    options.max_mem = max_mem
    return options


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule ready to compile: RE2 patterns (literals already escaped), the fields it looks in."""

    name: str
    patterns: tuple[str, ...]
    where: frozenset[str]
    confirm: Callable[[bytes], bool] | None = None


def pattern_error(pattern: str) -> str | None:
    """Why RE2 refuses a pattern, or None when it compiles."""
    try:
        re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    return None


def literal_pattern(literal: str, case_insensitive: bool) -> str:
    """The RE2 pattern matching exactly `literal`."""
    escaped = re2.escape(literal)
    return f"(?i:{escaped})" if case_insensitive else escaped


def builtin_spec(builtin: str, name: str, where: Iterable[str]) -> RuleSpec:
    """The spec of a built-in rule (KeyError when no built-in has that name)."""
    found = BUILTINS[builtin]
    return RuleSpec(name, found.patterns, frozenset(where), found.confirm)


class ContentBlocked(Refusal):
    """A request refused by a content rule; `rule` is its name (the metric label and the logged value)."""

    def __init__(self, rule: str, where: str) -> None:
        super().__init__(ErrorCode.CONTENT_BLOCKED,
                         f"this request was refused by the tenant's content rule '{rule}' (in {where} text)")
        self.rule = rule
        self.where = where
        self.model = ""  # the request's, set by the step that raised it (logged, never the text)


@dataclass(frozen=True, slots=True)
class _FieldSet:
    matcher: Any  # re2.Set (untyped)
    rule_of: tuple[int, ...]  # set entry index -> rule index


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """A tenant's rules, one RE2 set per field some rule looks in."""

    rules: tuple[RuleSpec, ...] = ()
    sets: Mapping[str, _FieldSet] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledRules:
        return self  # immutable, and RE2 objects do not copy

    def first_match(self, texts: Texts) -> tuple[str, str] | None:
        """(rule name, field) of the first rule, in config order, that matches a field's text; None if none."""
        inspected = 0
        hits: dict[tuple[int, str], bytes] = {}
        for name, parts in texts.items():
            found = self.sets.get(name)
            if found is None:
                continue
            # Parts joined by a newline: a match never spans two messages, and RE2 sees valid UTF-8 only
            # (a lone surrogate from JSON becomes U+FFFD here, exactly as a provider's decoder would).
            text = "\n".join(parts).encode("utf-8", "replace")
            inspected += len(text)
            if inspected > MAX_INSPECTED_BYTES:
                raise Refusal(ErrorCode.BODY_TOO_LARGE,
                              f"the request carries more than {MAX_INSPECTED_BYTES} bytes of text to inspect")
            entries = found.matcher.Match(text) or ()  # None when nothing matched (or RE2 gave up)
            if 0 not in entries:
                raise InspectionFailed(f"RE2 could not scan the {name} text ({len(text)} bytes)")
            for entry in entries:
                if entry:
                    hits[found.rule_of[entry], name] = text
        for (index, name), text in sorted(hits.items(), key=lambda hit: hit[0][0]):
            rule = self.rules[index]
            if rule.confirm is None or rule.confirm(text):
                return rule.name, name
        return None

    def check(self, texts: Texts) -> None:
        """Raise ContentBlocked naming the first matching rule."""
        matched = self.first_match(texts)
        if matched is not None:
            raise ContentBlocked(*matched)


NO_RULES = CompiledRules()


def compile_rules(specs: Iterable[RuleSpec]) -> CompiledRules:
    """One RE2 set per field; ValueError when the set outgrows RE2's memory budget."""
    rules = tuple(specs)
    if not rules:
        return NO_RULES
    sets: dict[str, _FieldSet] = {}
    for name in FIELDS:
        matcher = re2.Set.SearchSet(_options(_SET_MAX_MEM))
        matcher.Add(_SENTINEL)
        rule_of: list[int] = [-1]
        for index, rule in enumerate(rules):
            if name in rule.where:
                for pattern in rule.patterns:
                    matcher.Add(pattern)
                    rule_of.append(index)
        if len(rule_of) == 1:
            continue
        try:
            matcher.Compile()
        except re2.error:
            raise ValueError(f"the content rules looking in {name} text are too large for one RE2 set") from None
        if 0 not in (matcher.Match(b"") or ()):  # the DFA cannot even start within the budget
            raise ValueError(f"the content rules looking in {name} text exceed RE2's memory budget")
        sets[name] = _FieldSet(matcher, tuple(rule_of))
    return CompiledRules(rules, sets)
