"""Key verification decides as revision 4bddeff did (before the identity mechanisms): every adversarial key
in key_cases_support, verified and presented, gets the outcome recorded from that revision in
key_differential_expected.json — accepted or refused, the error code, and for an accepted key the limits in
force. Recorded by running the same cases through both trees side by side; no difference was found, so
every outcome here is the old one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from key_cases_support import HOST, NOW, PATH, SECRET_ENV, Case, Keys, build_cases, child, jws, native, write_config

from dynaseal.config import load_config
from dynaseal.errors import Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.identity import Presentation
from dynaseal.keys.tenants import Registry, build_registry
from dynaseal.keys.verification import check_bindings, verify_token

EXPECTED: dict[str, dict[str, Any]] = json.loads((Path(__file__).parent / "key_differential_expected.json").read_text())


def limits_in_force(key: VerifiedKey, labels: dict[str, str]) -> dict[str, Any]:
    """What an accepted key may do, with random key material replaced by the names of the keys."""
    def jti(value: str) -> str:
        return "h-*" if value.startswith("h-") else value  # the seed format's id hashes the signed content

    return {
        "tenant": key.tenant.id, "jti": jti(key.jti), "exp": key.exp,
        "event_id": "=jti" if key.event_id == key.jti else key.event_id, "sub": key.sub,
        "models": sorted(key.models) if key.models is not None else None, "max_tokens": key.max_tokens,
        "budget": key.budget, "uses": key.uses, "rpm": key.rpm,
        "params": {name: [limit.min, limit.max] for name, limit in sorted(key.param_limits.items())},
        "allowed": sorted(key.allowed_params) if key.allowed_params is not None else None,
        "cb": key.cb, "seed_format": key.seed_format,
        "cnf": labels.get(key.cnf_jkt, key.cnf_jkt) if key.cnf_jkt else None, "holder": key.holder is not None,
        "depth": key.depth, "budget_cost": key.budget_cost,
        "origins": sorted(key.origins) if key.origins is not None else None,
        "chain": [jti(level.jti) for level in key.chain],
    }


def outcome(case: Case, registry: Registry, labels: dict[str, str]) -> dict[str, Any]:
    """Verify the key and check how it was presented, as authz does for one POST to the chat endpoint."""
    headers = {":authority": HOST, ":scheme": "https", **({"dpop": case.proof} if case.proof is not None else {})}
    try:
        key = verify_token(case.token, registry, NOW)
        check_bindings(key, Presentation(case.token, case.via_dpop, "POST", PATH, headers), registry, NOW)
    except Refusal as refusal:
        return {"ok": False, "code": refusal.code.value}
    return {"ok": True, "limits": limits_in_force(key, labels)}


@pytest.fixture(scope="module")
def keys() -> Keys:
    """This run's keys (every outcome is independent of their bytes)."""
    return Keys()


@pytest.fixture(scope="module")
def registry(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The cases' three tenants, built from a config file as authz builds them."""
    cfg = load_config(write_config(tmp_path_factory.mktemp("keydiff"), keys))
    return build_registry(cfg, fetch_new_jwks=False, env=SECRET_ENV)


def test_every_case_decides_as_before_the_redesign(keys: Keys, registry: Registry) -> None:
    cases = build_cases(keys)
    assert set(cases) == set(EXPECTED), "a case was added or removed: record its outcome from 4bddeff"
    labels = keys.labels()
    differences = {name: (outcome(case, registry, labels), EXPECTED[name]) for name, case in cases.items()
                   if outcome(case, registry, labels) != EXPECTED[name]}
    assert not differences, json.dumps(differences, indent=1, default=str)[:4000]


def test_the_cases_cover_what_they_are_named_for(keys: Keys) -> None:
    accepted = {name for name, expected in EXPECTED.items() if expected["ok"]}
    assert {f"chain.depth{n}" for n in range(1, 5)} <= accepted
    assert {"root.ed1", "root.es1", "root.hs1_kid", "root.seed_native", "seed.valid", "size.at_limit",
            "dpop.bound_valid"} <= accepted
    cases = build_cases(keys)
    assert len(cases["size.at_limit"].token) == 16384 and len(cases["size.over_limit"].token) == 16385
    assert EXPECTED["chain.depth4"]["limits"]["depth"] == 4


_VALID = ("root.ed1", "root.es1", "root.seed_native", "seed.valid", "chain.depth2", "dpop.bound_valid")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(_VALID), position=st.integers(min_value=0), replacement=st.characters(
    codec="ascii", exclude_characters="\x00"))
def test_any_one_character_changed_in_a_valid_key_is_a_refusal(keys: Keys, registry: Registry, which: str,
                                                               position: int, replacement: str) -> None:
    case = build_cases_once(keys)[which]
    index = position % len(case.token)
    forged = case.token[:index] + replacement + case.token[index + 1:]
    if forged == case.token:
        return
    # One spelling per key (canonical base64url, signatures over the exact bytes): every other spelling fails,
    # and only ever as a Refusal (a 401), never another exception.
    with pytest.raises(Refusal):
        verify_token(forged, registry, NOW)


_BUILT: dict[int, dict[str, Case]] = {}


def build_cases_once(keys: Keys) -> dict[str, Case]:
    """The cases of these keys, built once per run (hypothesis calls the test many times)."""
    if id(keys) not in _BUILT:
        _BUILT[id(keys)] = build_cases(keys)
    return _BUILT[id(keys)]


_CHILD_CLAIMS = st.fixed_dictionaries({}, optional={
    "models": st.sampled_from([["m1"], ["m1", "m2"], ["m3"], ["m9"], [], ["*"]]),
    "max_tokens": st.sampled_from([1, 499, 500, 501, 1000, 0, 10**20]),
    "budget": st.sampled_from([1, 999, 1000, 1001, 50001]),
    "uses": st.sampled_from([1, 10, 11]),
    "rpm": st.sampled_from([1, 50, 51, 101]),
    "exp": st.sampled_from([NOW + 1, NOW + 899, NOW + 900, NOW + 901, NOW + 3600]),
    "budget_cost": st.sampled_from([{"amount": a, "currency": "USD"}
                                    for a in ("0.5", "1.999999", "2", "2.000001", "11")]),
    "params": st.sampled_from([{"temperature": {"max": m}} for m in (0.5, 1.0, 1.01, 2)]
                              + [{"temperature": {"min": -1}}, {"allow": ["top_p"]}, {"allow": ["top_p", "n"]},
                                 {"n": {"max": 1}}, {"top_p": {"max": 0.9}}]),
    "cnf": st.none(),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claims=_CHILD_CLAIMS, root_allow=st.booleans())
def test_an_accepted_child_never_has_more_than_its_parent(keys: Keys, registry: Registry, claims: dict[str, Any],
                                                          root_allow: bool) -> None:
    root_claims: dict[str, Any] = {"cnf": {"jwk": keys.holder_ed.jwk()}, "budget": 1000, "uses": 10, "rpm": 50,
                                   "exp": NOW + 900, "budget_cost": {"amount": "2", "currency": "USD"},
                                   "params": {"allow": ["top_p"], "temperature": {"max": 1.0}} if root_allow
                                   else {"temperature": {"max": 1.0}}}
    root = jws({"alg": "EdDSA", "kid": "ed1"}, native(**root_claims), keys.ed1.sign)
    try:
        key = verify_token(child(root, keys.holder_ed, **claims), registry, NOW)
    except Refusal:
        return
    parent = key.parent
    assert parent is not None
    assert parent.models is not None and key.models is not None and key.models <= parent.models
    assert key.max_tokens <= parent.max_tokens and key.exp <= parent.exp
    for name in ("budget", "uses", "rpm", "budget_cost"):
        assert getattr(key, name) is not None and getattr(key, name) <= getattr(parent, name), name
    for name, limit in parent.param_limits.items():
        narrowed = key.param_limits[name]
        assert limit.max is None or (narrowed.max is not None and narrowed.max <= limit.max), name
        assert limit.min is None or (narrowed.min is not None and narrowed.min >= limit.min), name
    if parent.allowed_params is not None:
        permitted = parent.allowed_params | frozenset(parent.param_limits)
        assert key.allowed_params is not None and key.allowed_params <= permitted
        assert set(key.param_limits) <= permitted
