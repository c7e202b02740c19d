"""Content rules without Envoy: matching, the built-ins, where each endpoint's text is, bad rules at load."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from dynaseal.content.builtin_rules import has_card_number, luhn_valid
from dynaseal.content.fields import (
    FIELDS,
    chat_texts,
    embeddings_texts,
    messages_texts,
    responses_texts,
)
from dynaseal.content.rules import MAX_INSPECTED_BYTES, CompiledRules, ContentBlocked, InspectionFailed
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.tenant_config import ContentRules, Limits


def compiled(*rules: dict[str, Any]) -> CompiledRules:
    return ContentRules.model_validate(list(rules)).compiled


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def blocked_by(rules: CompiledRules, body: dict[str, Any]) -> str | None:
    found = rules.first_match(chat_texts(body))
    return None if found is None else found[0]


CARD = compiled({"builtin": "payment_card"})


# --- the card rule ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "4111111111111111", "pay with 4111 1111 1111 1111 please", "4111-1111-1111-1111", "378282246310005",
    "5555555555554444", "6011000990139424", "card:4012888888881881.", "call 555 1234 4111 1111 1111 1111",
    "3530111333300000 then", "x4242424242424242y",
])
def test_the_card_rule_refuses_valid_card_numbers(text: str) -> None:
    assert blocked_by(CARD, user(text)) == "payment_card"


@pytest.mark.parametrize("text", [
    "4111111111111112", "4111 1111 1111 1112", "1234 5678 9012 3456", "411111111111",  # Luhn fails / 12 digits
    "41111111111111111111111", "order 12345678901234567890123 shipped",  # inside a longer digit run
    "4111  1111  1111  1111", "2026-12-06 14:00", "+1 555 123 4567",  # two separators; dates; phones
])
def test_the_card_rule_passes_numbers_that_are_not_cards(text: str) -> None:
    assert blocked_by(CARD, user(text)) is None


def test_luhn() -> None:
    assert luhn_valid(b"79927398713") is False  # valid Luhn, but 11 digits is no card
    assert luhn_valid(b"4111111111111111") and not luhn_valid(b"4111111111111121")
    assert has_card_number(b"1 " * 5000 + b"4111111111111111")
    assert not has_card_number(b"1 " * 5000)


# --- the other built-ins ---------------------------------------------------------------------------

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(("builtin", "text"), [
    ("private_key", PEM),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----"),
    ("private_key", "-----BEGIN ENCRYPTED PRIVATE KEY-----"),
    ("private_key", "-----BEGIN PGP PRIVATE KEY BLOCK-----"),
    ("cloud_credentials", "aws_access_key_id = AKIA" + "IOSFODNN7EXAMPLE"),
    ("cloud_credentials", "ASIA" + "Y34FZKBOKMUTVV7A is the session key"),
    ("cloud_credentials", '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nMII"}'),
    ("cloud_credentials", "key=AIza" + "S" * 35),
    ("cloud_credentials", "DefaultEndpointsProtocol=https;AccountKey=" + "A" * 86 + "==;"),
    ("cloud_credentials", "client_secret: abc8Q~" + "x" * 34),
    ("cloud_credentials", "token ghp_" + "a1B2" * 9),
    ("cloud_credentials", "github_pat_" + "A" * 82),
    ("cloud_credentials", "SLACK=xoxb-" + "1234567890-abcdef"),
    ("cloud_credentials", "OPENAI_API_KEY=sk-proj-" + "Ab3_" * 10),
    ("cloud_credentials", "sk-ant-api03-" + "x" * 40),
    ("email", "write to jane.doe+llm@mail.example.co.uk today"),
])
def test_builtins_refuse_their_shapes(builtin: str, text: str) -> None:
    assert blocked_by(compiled({"builtin": builtin}), user(text)) == builtin


@pytest.mark.parametrize(("builtin", "text"), [
    ("private_key", "-----BEGIN PUBLIC KEY-----"),
    ("private_key", "-----BEGIN CERTIFICATE-----"),
    ("cloud_credentials", "AKIA is a prefix; AKIAshort"),
    ("cloud_credentials", "ghp_tooshort"),
    ("cloud_credentials", "a sk-short key"),
    ("email", "user at example dot com, @handle, a@b"),
])
def test_builtins_pass_lookalikes(builtin: str, text: str) -> None:
    assert blocked_by(compiled({"builtin": builtin}), user(text)) is None


# --- tenant rules ----------------------------------------------------------------------------------

def test_literals_patterns_and_case() -> None:
    rules = compiled({"name": "hosts", "literals": ["db.acme.internal"]},
                     {"name": "projects", "patterns": [r"\bproject-[0-9]{3}\b"], "case_insensitive": True})
    assert blocked_by(rules, user("connect to db.acme.internal")) == "hosts"
    assert blocked_by(rules, user("connect to dbXacmeXinternal")) is None  # a literal's dot is a dot
    assert blocked_by(rules, user("connect to DB.ACME.INTERNAL")) is None  # literals are case-sensitive here
    assert blocked_by(rules, user("see PROJECT-042")) == "projects"
    assert blocked_by(rules, user("see project-0420")) is None


def test_the_first_rule_in_config_order_is_named() -> None:
    rules = compiled({"name": "second", "literals": ["zz"]}, {"name": "first", "literals": ["zz"]})
    assert blocked_by(rules, user("zz")) == "second"


def test_a_refusal_names_the_rule_never_the_text() -> None:
    rules = compiled({"builtin": "payment_card"})
    with pytest.raises(ContentBlocked) as caught:
        rules.check(chat_texts(user("my card is 4111 1111 1111 1111")))
    assert caught.value.code == ErrorCode.CONTENT_BLOCKED and caught.value.rule == "payment_card"
    assert "4111" not in caught.value.message and "payment_card" in caught.value.message


def test_backtracking_bomb_is_linear() -> None:
    # A backtracking engine takes exponential time on this; RE2 answers in one pass either way.
    rules = compiled({"name": "bomb", "patterns": ["(a+)+$"], "where": ["system"]})
    assert blocked_by(rules, {"messages": [{"role": "system", "content": "a" * 200_000 + "!"}]}) is None
    assert blocked_by(rules, {"messages": [{"role": "system", "content": "a" * 200_000}]}) == "bomb"


def test_where_limits_the_fields_a_rule_reads() -> None:
    rules = compiled({"name": "sys", "literals": ["SECRET"], "where": ["system"]})
    assert blocked_by(rules, {"messages": [{"role": "system", "content": "SECRET"}]}) == "sys"
    assert blocked_by(rules, {"messages": [{"role": "developer", "content": "SECRET"}]}) == "sys"
    assert blocked_by(rules, user("SECRET")) is None


def test_a_lone_surrogate_is_inspected_not_a_crash() -> None:
    rules = compiled({"name": "x", "literals": ["needle"]})
    assert blocked_by(rules, user("\ud800 needle")) == "x"
    assert blocked_by(rules, user("\ud800\udfff")) is None


def test_more_text_than_the_cap_is_refused_not_passed_unread() -> None:
    rules = compiled({"name": "x", "literals": ["needle"]})
    with pytest.raises(Refusal) as caught:
        rules.check(chat_texts(user("a" * (MAX_INSPECTED_BYTES + 1))))
    assert caught.value.code == ErrorCode.BODY_TOO_LARGE


def test_no_rules_is_falsy_and_matches_nothing() -> None:
    assert not Limits().content_rules.compiled
    assert Limits().content_rules.compiled.first_match(chat_texts(user("4111111111111111"))) is None


# --- where each endpoint's text is -----------------------------------------------------------------

def test_chat_fields() -> None:
    body = {"messages": [
        {"role": "system", "content": "S1"}, {"role": "developer", "content": [{"type": "text", "text": "S2"}]},
        {"role": "user", "content": [{"type": "text", "text": "U1"}, {"type": "image_url", "image_url": {"url": "I"}}]},
        {"role": "assistant", "content": "A1", "refusal": "A2",
         "tool_calls": [{"id": "c", "type": "function", "function": {"name": "A3", "arguments": '{"q": "\\u0041K"}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "T1"}, {"role": "function", "name": "f", "content": "T2"},
        {"role": "mystery", "content": "U2"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "D1",
                                                    "parameters": {"properties": {"P1": {"enum": ["E1"]}}}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "R1", "schema": {"description": "R2"}}},
        "prediction": {"type": "content", "content": [{"type": "text", "text": "U3"}]}}
    texts = chat_texts(body)
    assert texts["system"] == ["S1", "S2"]
    assert texts["user"] == ["U1", "U2", "U3"]  # an image part has no text; an unknown role counts as user
    assert texts["assistant"] == ["A1", "A2", "A3", '{"q": "\\u0041K"}', "q", "AK"]  # arguments also decoded
    assert texts["tool"] == ["T1", "T2"]
    assert {"lookup", "D1", "P1", "E1", "R1", "R2"} <= set(texts["tools"])


def test_responses_fields() -> None:
    texts = responses_texts({"instructions": "I1", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "U1"}]}, {"role": "system", "content": "S1"},
        {"type": "function_call", "name": "f", "arguments": '{"a": "A1"}'},
        {"type": "function_call_output", "call_id": "c", "output": "T1"}],
        "tools": [{"name": "t", "description": "D"}]})
    assert texts["instructions"] == ["I1"] and texts["user"] == ["U1"] and texts["system"] == ["S1"]
    assert "A1" in texts["assistant"] and texts["tool"] == ["T1"] and "D" in texts["tools"]
    assert responses_texts({"input": "plain"}) == {"user": ["plain"]}


def test_messages_fields() -> None:
    texts = messages_texts({"system": [{"type": "text", "text": "S1"}], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "U1"},
                                     {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "text",
                                                                                              "text": "T1"}]}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "n", "input": {"q": "A1"}}]}],
        "tools": [{"name": "n", "description": "D", "input_schema": {}}]})
    assert texts["system"] == ["S1"] and texts["user"] == ["U1"] and texts["tool"] == ["T1"]
    assert "A1" in texts["assistant"] and "D" in texts["tools"]
    assert messages_texts({"system": "S2"})["system"] == ["S2"]


def test_embeddings_fields() -> None:
    assert embeddings_texts({"input": "E1"}) == {"input": ["E1"]}
    assert embeddings_texts({"input": ["E1", "E2", 3]}) == {"input": ["E1", "E2"]}
    assert embeddings_texts({"input": [[1, 2, 3]]}) == {}


def test_every_field_is_named_in_the_extractors() -> None:
    seen: set[str] = set()
    for extract, body in ((chat_texts, {"messages": [{"role": r, "content": "x"} for r in
                                                     ("user", "system", "assistant", "tool")], "tools": ["x"]}),
                          (responses_texts, {"instructions": "x"}), (embeddings_texts, {"input": "x"})):
        seen |= set(extract(body))
    assert seen == set(FIELDS)


# --- bad rules are refused at load, naming the rule and the reason ---------------------------------

@pytest.mark.parametrize(("rule", "says"), [
    ({"name": "look", "patterns": ["(?<=a)b"]}, ["'look'", "does not compile", "invalid perl operator"]),
    ({"name": "backref", "patterns": [r"(a)\1"]}, ["'backref'", "does not compile"]),
    ({"name": "big", "patterns": ["a{2000}"]}, ["'big'", "invalid repetition size"]),
    ({"builtin": "ssn"}, ["'ssn'", "unknown built-in 'ssn'", "payment_card"]),
    ({"name": "where", "literals": ["x"], "where": ["user", "headers"]}, ["'where'", "unknown field", "headers"]),
    ({"name": "empty", "literals": [""]}, ["'empty'", "empty literal"]),
    ({"name": "nothing"}, ["'nothing'", "give a builtin, literals or patterns"]),
    ({"literals": ["x"]}, ["needs a name"]),
    ({"name": "bad name!", "literals": ["x"]}, ["needs a name"]),
    ({"name": "mixed", "builtin": "email", "literals": ["x"]}, ["'mixed'", "takes no literals"]),
    ({"name": "act", "literals": ["x"], "action": "log"}, ["action"]),
])
def test_bad_rules_are_refused_at_load(rule: dict[str, Any], says: list[str]) -> None:
    with pytest.raises(ValidationError) as caught:
        Limits.model_validate({"content_rules": [rule]})
    for part in says:
        assert part in str(caught.value)


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="unique"):
        Limits.model_validate({"content_rules": [{"builtin": "email"}, {"name": "email", "literals": ["x"]}]})


def test_deep_structures_are_walked_without_recursion() -> None:
    nested: Any = "db.acme.internal"
    for _ in range(100_000):
        nested = {"k": [nested]}
    rules = compiled({"name": "hosts", "literals": ["db.acme.internal"], "where": ["tools", "assistant"]})
    assert rules.first_match(chat_texts({"messages": [], "tools": [nested]})) == ("hosts", "tools")
    call = {"function": {"name": "f", "arguments": "[" * 2000 + "]" * 2000}}  # beyond orjson's depth: kept raw
    assert blocked_by(rules, {"messages": [{"role": "assistant", "tool_calls": [call]}]}) is None


def test_rules_too_large_for_one_set_are_refused_at_load() -> None:
    rules = [{"name": f"r{i}", "patterns": [f"x{i}y{j}[a-z]{{1000}}" for j in range(4)]} for i in range(64)]
    with pytest.raises(ValidationError, match="too large for one RE2 set"):
        Limits.model_validate({"content_rules": rules})


class GaveUp:
    """An RE2 set whose DFA ran out of memory: RE2::Set::Match then answers 'no match'."""

    def Match(self, text: bytes) -> None:
        return None


def test_a_scan_re2_gave_up_on_fails_closed_instead_of_passing() -> None:
    rules = compiled({"name": "x", "literals": ["needle"]})
    assert blocked_by(rules, user("hay")) is None  # the sentinel is there on every real scan
    broken = CompiledRules(rules.rules, {name: replace(found, matcher=GaveUp()) for name, found in rules.sets.items()})
    with pytest.raises(InspectionFailed):
        broken.first_match(chat_texts(user("hay")))
