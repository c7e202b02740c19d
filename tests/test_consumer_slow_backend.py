"""A backend that takes 10 s to answer gets every callback once, none dead-lettered, and delays no other tenant.

The seed backend's callback handler sleeps 10 s before it answers. The consumer runs with its
default callback timeout and 3 callbacks in flight per tenant, so 5 slow callbacks fill the slow
tenant's slots and queue two more behind them while the fast tenant's callbacks go through.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from consumer_support import FAST, SLOW, ConsumerRig
from kafka.partitioner.default import murmur2
from pipeline_harness import wait_until

from dynaseal.tenant_config import CallbackConfig

HANDLER_S = 10.0  # the seed backend's callback handler
PER_TENANT = 3
BACKLOG = 6  # events one tenant may hold waiting
GATE_LIMIT_S = 20.0  # longest a gated handler holds its answer (below the 30 s default timeout)


def test_default_callback_timeout_covers_a_ten_second_handler() -> None:
    default = CallbackConfig(url="http://127.0.0.1:9000/v1/callback/usage", secret_env="X").timeout_s
    assert default >= 2 * HANDLER_S  # room for a handler of 10 s on a loaded machine


def slow_handler(delay_s: float, arrivals: list[str], gate: threading.Event) -> Callable[[dict[str, Any], int], int]:
    """A receiver behaviour: note the arrival, work `delay_s`, then answer 200 once `gate` is open too.

    The gate keeps the test causal on a loaded machine: the backend is still busy whenever the test
    looks, however long the other tenant's callbacks took. It is bounded below the default callback
    timeout (`GATE_LIMIT_S` in all), so it cannot itself cause a resend.
    """
    lock = threading.Lock()

    def behaviour(payload: dict[str, Any], attempt: int) -> int:
        with lock:
            arrivals.append(str(payload["request_id"]))
        time.sleep(delay_s)
        gate.wait(GATE_LIMIT_S - delay_s)
        return 200
    return behaviour


def gated_handler(gate: threading.Event, arrivals: list[str]) -> Callable[[dict[str, Any], int], int]:
    """A receiver behaviour: note the arrival, hold the answer until `gate` opens, then answer 200.

    Causal rather than timed: the backend stays busy for as long as the test needs to see the
    backlog, however slowly a loaded machine produces the events (a fixed 3 s handler freed its
    slots before the last events arrived, so the backlog never filled). The wait is bounded below
    the default callback timeout, so a test that never opens the gate still cannot cause a resend.
    """
    lock = threading.Lock()

    def behaviour(payload: dict[str, Any], attempt: int) -> int:
        with lock:
            arrivals.append(str(payload["request_id"]))
        gate.wait(GATE_LIMIT_S)
        return 200
    return behaviour


@pytest.fixture(scope="module")
def rig(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsumerRig]:
    """Broker + consumer: default callback timeout, PER_TENANT callbacks in flight and BACKLOG waiting per tenant."""
    running = ConsumerRig(tmp_path_factory.mktemp("slow-backend"), redis_server,
                          consumer_args=["--per-tenant", str(PER_TENANT), "--tenant-backlog", str(BACKLOG)])
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.mark.integration
def test_slow_backend_gets_each_callback_once_and_the_fast_tenant_is_not_delayed(rig: ConsumerRig) -> None:
    slow, fast = rig.receivers[SLOW], rig.receivers[FAST]
    slow_jti, fast_jti = f"slow-{uuid.uuid4().hex[:8]}", f"fast-{uuid.uuid4().hex[:8]}"
    arrivals: list[str] = []
    gate = threading.Event()
    slow.behaviours[slow_jti] = slow_handler(HANDLER_S, arrivals, gate)

    slow_ids = rig.produce(SLOW, slow_jti, 5)
    wait_until(lambda: len(arrivals) == PER_TENANT, 30, "the slow tenant's slots to fill")
    # 3 at the backend, 2 waiting for a slot (waited for: the broker may hand the last events over late).
    wait_until(lambda: rig.metric("dynaseal_consumer_in_flight") == 5, 10, "five callbacks in flight")

    fast_ids = rig.produce(FAST, fast_jti, 5)
    wait_until(lambda: len(fast.delivered(fast_jti)) == 5, 30, "the fast tenant's callbacks")
    # Causal, not a stopwatch: the fast tenant finished while the slow backend still held its first
    # callbacks and the rest waited for the slow tenant's slots.
    assert not slow.delivered(slow_jti) and len(arrivals) == PER_TENANT
    gate.set()

    wait_until(lambda: len(slow.delivered(slow_jti)) == 5, 60, "every slow callback")
    assert set(slow.delivered(slow_jti)) == set(slow_ids) and set(fast.delivered(fast_jti)) == set(fast_ids)
    # Once each: no attempt timed out and was sent again (arrivals are noted before the handler works).
    assert Counter(arrivals) == Counter(slow_ids)
    assert set(Counter(d.webhook_id for d in slow.for_key(slow_jti)).values()) == {1}
    assert set(Counter(d.webhook_id for d in fast.for_key(fast_jti)).values()) == {1}
    assert slow.bad_signatures == fast.bad_signatures == 0
    assert not rig.dlq() and rig.metric("dynaseal_consumer_dlq_total") == 0
    assert rig.metric("dynaseal_consumer_callback_retries_total") == 0
    # The gauge returns to 0 once the work drained (it used to stay above 0).
    wait_until(lambda: rig.metric("dynaseal_consumer_deliveries_total", {"outcome": "delivered"}) == 10, 10,
               "the consumer to count every delivery")
    assert rig.metric("dynaseal_consumer_in_flight") == 0


@pytest.mark.integration
def test_slow_backend_rig_config_uses_the_default_timeout(rig: ConsumerRig) -> None:
    raw = yaml.safe_load(Path(rig.config_path).read_text())
    assert all("timeout_s" not in tenant["callback"] for tenant in raw["tenants"])


def _partition(jti: str, partitions: int = 6) -> int:
    """The usage-topic partition a key's events go to (the producer's default partitioner)."""
    return int((murmur2(jti.encode()) & 0x7FFFFFFF) % partitions)


def _jti_apart(prefix: str, avoid: int) -> str:
    """A key whose events land on another partition than `avoid`."""
    while True:
        jti = f"{prefix}-{uuid.uuid4().hex[:8]}"
        if _partition(jti) != avoid:
            return jti


@pytest.mark.integration
def test_a_tenant_past_its_backlog_waits_in_kafka_and_the_others_flow(rig: ConsumerRig) -> None:
    slow, fast = rig.receivers[SLOW], rig.receivers[FAST]
    slow_jti = f"flood-{uuid.uuid4().hex[:8]}"
    fast_jti = _jti_apart("fast", _partition(slow_jti))
    arrivals: list[str] = []
    gate = threading.Event()
    slow.behaviours[slow_jti] = gated_handler(gate, arrivals)
    dlq_before = len(rig.dlq())
    slow_ids = rig.produce(SLOW, slow_jti, BACKLOG + 4)
    # Slow is not dead: the events past the backlog queue and their partition pauses; none is shed.
    # How many queue in memory depends on how the broker batched them: once the first is held the
    # partition pauses, and whatever was not yet fetched waits in Kafka (on a loaded machine the
    # producer's ten acknowledged sends can reach the consumer in several fetches).
    def held_and_paused() -> bool:
        return rig.metric("dynaseal_consumer_held_back") >= 1 and \
            rig.metric("dynaseal_consumer_paused_partitions") == 1
    try:
        wait_until(held_and_paused, 30, "events held behind the backlog and their partition paused")
    except AssertionError as exc:  # say what the consumer did instead
        seen = {name: rig.metric(f"dynaseal_consumer_{name}") for name in
                ("held_back", "in_flight", "parked_total", "paused_partitions", "dlq_total")}
        raise AssertionError(f"{exc}; consumer metrics {seen}, receiver arrivals {len(arrivals)}") from None
    assert rig.metric("dynaseal_consumer_held_back") <= 4  # the backlog itself was admitted, never more
    wait_until(lambda: len(arrivals) == PER_TENANT, 30, "the slow tenant's slots to fill")  # the rest wait
    fast_ids = rig.produce(FAST, fast_jti, 3)
    wait_until(lambda: len(fast.delivered(fast_jti)) == 3, 30, "the fast tenant's callbacks")
    assert not slow.delivered(slow_jti)  # the fast tenant did not wait for the slow one
    gate.set()
    wait_until(lambda: len(slow.delivered(slow_jti)) == len(slow_ids), 60, "every slow callback")
    assert set(slow.delivered(slow_jti)) == set(slow_ids) and set(fast.delivered(fast_jti)) == set(fast_ids)
    assert len(rig.dlq()) == dlq_before and not rig.dlq(slow_jti)
    assert Counter(arrivals) == Counter(slow_ids)  # each sent once
    # The held events leave the queue in the order they arrived, then go out with the tenant's concurrency
    # (several callbacks in flight), so the receiver may see them in another order: only "each once" holds
    # there. Order per key is kept where it is promised, in the replay of parked events.
    held = slow_ids[BACKLOG:]
    assert sorted(a for a in arrivals if a in held) == sorted(held)
    wait_until(lambda: rig.metric("dynaseal_consumer_paused_partitions") == 0, 10, "the partition resumed")
