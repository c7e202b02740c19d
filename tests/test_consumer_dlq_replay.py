"""`dynaseal dlq replay`: a receiver that said 400 is fixed, the replay delivers each entry once; failures go back.

The DLQ is filled for real (the consumer dead-letters what the receiver rejects), one entry at a
time so its order is known: A1 A2 A3 B (fast tenant), then C (slow tenant).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from consumer_support import FAST, SLOW, ConsumerRig
from pipeline_harness import REPO, wait_until

from callback_consumer.dlq import dlq_headers


def test_a_replay_that_fails_again_keeps_the_origin_and_counts_replays() -> None:
    first = dlq_headers("rejected:http_400", 400, 1, "dynaseal.usage.v1/2/17")
    again = dlq_headers("exhausted:timeout_or_connection", None, 3, "dynaseal.usage.v1.dlq/0/4", first)
    assert again["dlq_source"] == "dynaseal.usage.v1/2/17" and again["dlq_replays"] == "1"
    assert again["dlq_first_reason"] == "rejected:http_400" and again["dlq_status"] == ""
    third = dlq_headers("rejected:http_410", 410, 1, "dynaseal.usage.v1.dlq/0/9", {**again, "dlq_replays": "x"})
    assert third["dlq_replays"] == "1" and third["dlq_first_reason"] == "rejected:http_400"


@pytest.fixture(scope="module")
def rig(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsumerRig]:
    """Broker + consumer; callbacks that fail are retried once, quickly."""
    running = ConsumerRig(tmp_path_factory.mktemp("dlq-replay"), redis_server,
                          callback={"max_attempts": 2, "timeout_s": 5})
    try:
        running.start()
        yield running
    finally:
        running.stop()


def replay(rig: ConsumerRig, *args: str) -> tuple[int, str]:
    """`dynaseal --config … dlq replay ARGS` as a user runs it: (exit code, stdout)."""
    done = subprocess.run([sys.executable, "-m", "dynaseal_launcher.cli", "--config", str(rig.config_path),
                           "dlq", "replay", "--retry-base-s", "0.1", "--retry-cap-s", "0.2", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=_env())
    return done.returncode, done.stdout


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.integration
def test_rejected_callbacks_are_replayed_once_after_the_receiver_is_fixed(rig: ConsumerRig) -> None:
    fast, slow = rig.receivers[FAST], rig.receivers[SLOW]
    jti_a, jti_b, jti_c = (f"{name}-{uuid.uuid4().hex[:8]}" for name in "abc")
    answers = {jti_a: 400, jti_b: 400, jti_c: 400}
    fast.behaviours[jti_a] = fast.behaviours[jti_b] = slow.behaviours[jti_c] = \
        lambda payload, attempt: answers[payload["key_id"]]
    ids: list[str] = []
    for tenant, jti in [(FAST, jti_a), (FAST, jti_a), (FAST, jti_a), (FAST, jti_b), (SLOW, jti_c)]:
        ids += rig.produce(tenant, jti)
        expected = len(ids)
        wait_until(lambda: len(rig.dlq()) == expected, 30, f"entry {expected} in the DLQ")  # noqa: B023
    a1, a2, a3, b, c = ids
    assert {h["dlq_reason"] for _, h in rig.dlq()} == {"rejected:http_400"}

    code, out = replay(rig, "--dry-run", "--tenant", FAST)
    assert code == 0 and [line.split()[2] for line in out.splitlines() if "would replay" in line] == [a1, a2, a3, b]
    assert "4 would be replayed, 1 would stay" in out
    assert len(rig.dlq()) == 5 and not fast.delivered(jti_a)  # a dry run sends and changes nothing

    answers[jti_a] = 200
    code, out = replay(rig, "--tenant", FAST, "--max", "2")
    assert code == 0 and "2/5 read, 2 delivered" in out
    assert set(fast.delivered(jti_a)) == {a1, a2}

    code, out = replay(rig, "--tenant", FAST)  # A3 delivered; B fails again; C is another tenant's
    assert code == 1 and "3/3 read, 1 delivered, 1 failed again (back on the DLQ), 1 left as they were" in out
    assert set(fast.delivered(jti_a)) == {a1, a2, a3}
    back = {e.request_id: h for e, h in rig.dlq()[5:]}  # put back concurrently: in no set order
    assert {rid: (h["dlq_reason"], h.get("dlq_replays")) for rid, h in back.items()} == \
        {b: ("rejected:http_400", "1"), c: ("rejected:http_400", None)}
    assert back[b]["dlq_source"].startswith("dynaseal.usage.v1/")  # where it first came from
    assert back[b]["dlq_first_reason"] == "rejected:http_400"

    answers[jti_b] = answers[jti_c] = 200
    code, out = replay(rig)
    assert code == 0 and "2/2 read, 2 delivered" in out
    code, out = replay(rig)
    assert code == 0 and "0/0 read, 0 delivered" in out

    # Delivered exactly once each, signed as the consumer signs, with the original body.
    assert set(fast.delivered(jti_b)) == {b} and set(slow.delivered(jti_c)) == {c}
    for receiver, jti in [(fast, jti_a), (fast, jti_b), (slow, jti_c)]:
        attempts = receiver.for_key(jti)
        assert Counter(d.webhook_id for d in attempts if d.status == 200) == Counter(receiver.delivered(jti).keys())
        by_id: dict[str, list[dict[str, object]]] = {}
        for attempt in attempts:
            by_id.setdefault(attempt.webhook_id, []).append(attempt.payload)
        assert all(p == payloads[0] and p["request_id"] == wid for wid, payloads in by_id.items() for p in payloads)
    assert fast.bad_signatures == slow.bad_signatures == 0
    # The receiver saw: A once rejected by the consumer then once OK; B rejected twice then OK.
    assert Counter(d.status for d in fast.for_key(jti_b)) == Counter({400: 2, 200: 1})
