"""Down is not slow: a failing receiver's events are parked in Kafka and replayed by themselves, in order.

tansu + a consumer (default parking: 5 failed attempts in a row, first probe after 1 s here). One
tenant's receiver answers 503 to everything for a while, then recovers. Every event reaches it
without `dynaseal dlq replay`, in the order produced per key, once; nothing goes to the DLQ; the
other tenant is served meanwhile. The 30 s outage is the slow tier's (`-m soak`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from consumer_support import FAST, SLOW, ConsumerRig
from pipeline_harness import wait_until


@pytest.fixture(scope="module")
def rig(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsumerRig]:
    running = ConsumerRig(tmp_path_factory.mktemp("parking"), redis_server,
                          consumer_args=["--park-probe-s", "1", "--retry-base-s", "0.2", "--retry-cap-s", "1"],
                          callback={"timeout_s": 2})
    try:
        running.start()
        yield running
    finally:
        running.stop()


def outage(rig: ConsumerRig, down_s: float, keys: int = 3, per_key: int = 8) -> None:
    """Produce while the SLOW tenant's receiver is down for `down_s`, then check what it got."""
    slow, fast = rig.receivers[SLOW], rig.receivers[FAST]
    down = threading.Event()
    down.set()
    jtis = [f"down-{uuid.uuid4().hex[:8]}" for _ in range(keys)]

    def behaviour(payload: dict[str, Any], attempt: int) -> int:
        return 503 if down.is_set() else 200
    for jti in jtis:
        slow.behaviours[jti] = behaviour
    dlq_before = len(rig.dlq())
    produced: dict[str, list[str]] = {jti: [] for jti in jtis}
    started = time.monotonic()
    for _ in range(per_key):  # interleaved keys, spread over the outage
        for jti in jtis:
            produced[jti] += rig.produce(SLOW, jti, 1)
        time.sleep(min(0.5, down_s / (2 * per_key)))
    wait_until(lambda: rig.metric("dynaseal_consumer_parked_total") >= keys * per_key, down_s + 30,
               "every event parked")
    # Parked, not held: the other tenant is served during the outage.
    fast_jti = f"fast-{uuid.uuid4().hex[:8]}"
    fast_ids = rig.produce(FAST, fast_jti, 3)
    wait_until(lambda: len(fast.delivered(fast_jti)) == 3, 30, "the other tenant's callbacks")
    assert set(fast.delivered(fast_jti)) == set(fast_ids)
    time.sleep(max(0.0, down_s - (time.monotonic() - started)))
    down.clear()  # the receiver is back: nobody runs a replay
    total = keys * per_key
    wait_until(lambda: sum(len(slow.delivered(j)) for j in jtis) == total, 90, "every parked event delivered")
    for jti in jtis:
        ok = [d.webhook_id for d in slow.for_key(jti) if 200 <= d.status < 300]
        assert ok == produced[jti], "in the order produced, each once"
    assert len(rig.dlq()) == dlq_before
    wait_until(lambda: rig.metric("dynaseal_consumer_parked_replayed_total", {"outcome": "delivered"}) >= total,
               10, "the replays counted")


@pytest.mark.integration
def test_a_receiver_down_for_seconds_gets_every_event_in_order_without_a_manual_replay(rig: ConsumerRig) -> None:
    outage(rig, down_s=6)


@pytest.mark.integration
def test_new_events_go_straight_to_the_receiver_once_the_parked_ones_are_replayed(rig: ConsumerRig) -> None:
    slow = rig.receivers[SLOW]
    jti = f"after-{uuid.uuid4().hex[:8]}"
    parked_before = rig.metric("dynaseal_consumer_parked_total")
    ids = rig.produce(SLOW, jti, 4)
    wait_until(lambda: len(slow.delivered(jti)) == 4, 30, "the callbacks")
    # One attempt each, none parked. Outside an outage a tenant's callbacks go out concurrently (its
    # `callback.concurrency`), so their order is not asserted here; the replay after an outage is in order.
    assert sorted(d.webhook_id for d in slow.for_key(jti)) == sorted(ids)
    assert rig.metric("dynaseal_consumer_parked_total") == parked_before


@pytest.mark.integration
@pytest.mark.soak
def test_a_receiver_down_for_thirty_seconds_gets_every_event_in_order(rig: ConsumerRig) -> None:
    outage(rig, down_s=30, keys=4, per_key=15)


@pytest.mark.integration
def test_status_prints_each_stage_and_the_dlq_by_reason(rig: ConsumerRig, capsys: pytest.CaptureFixture[str]) -> None:
    from dynaseal_launcher import cli

    fast = rig.receivers[FAST]
    jti = f"refused-{uuid.uuid4().hex[:8]}"
    fast.behaviours[jti] = lambda payload, attempt: 400
    before = len(rig.dlq())
    rig.produce(FAST, jti, 2)
    wait_until(lambda: len(rig.dlq()) == before + 2, 30, "two rejected events in the DLQ")
    capsys.readouterr()
    assert cli.main(["--config", str(rig.config_path), "status", "--group-id", rig.group_id]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert lines["shipper"].endswith("not answering")  # this rig runs no shipper
    assert "lag (group " in lines["consumer"] and "p0=" in lines["consumer"]
    assert "callback latency p50 ≤" in lines["receiver"]
    assert "oldest unsettled reservation" in lines["ledger"]
    reasons = Counter(h["dlq_reason"].split(":")[0] for _, h in rig.dlq())
    assert lines["dlq"].startswith(f"dlq         {sum(reasons.values())} entries (")
    assert all(f"{reason}: {count}" in lines["dlq"] for reason, count in reasons.items())
    assert "in flight 0" in out
