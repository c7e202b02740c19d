"""A reload asked for (SIGHUP) is done by the config watcher, off the delivery loop, and a bad config keeps the old.

Without a poll thread there is no loop turn that would pick the request up: the watcher must, promptly,
even when no file changed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml
from consumer_support import SLOW, ConsumerRig
from pipeline_harness import wait_until

from callback_consumer.consumer import CallbackConsumer, ConsumerOptions


def _url(consumer: CallbackConsumer) -> str | None:
    target = consumer.targets.get(SLOW)
    return None if target is None or target.callback is None else str(target.callback.url)


def test_a_requested_reload_loads_the_new_config_and_a_bad_one_keeps_the_old(
        tmp_path: Path, redis_server: str, caplog: pytest.LogCaptureFixture) -> None:
    rig = ConsumerRig(tmp_path / "rig", redis_server)  # its config only: nothing is started
    for receiver in rig.receivers.values():
        receiver.server.server_close()
    consumer = CallbackConsumer(ConsumerOptions(config_path=str(rig.config_path), bootstrap="127.0.0.1:9",
                                                park_after=0))
    consumer.tenancy.changed = lambda: False  # type: ignore[method-assign]  # only the request may reload
    watcher = threading.Thread(target=consumer._watch_tenancy, name="tenancy-watch", daemon=True)
    watcher.start()
    try:
        raw = yaml.safe_load(rig.config_path.read_text())
        moved = "http://127.0.0.1:9/v1/callback/moved"
        next(t for t in raw["tenants"] if t["id"] == SLOW)["callback"]["url"] = moved
        rig.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        consumer.reload()
        wait_until(lambda: _url(consumer) == moved, 10, "the requested reload")
        rig.config_path.write_text("gateway: [not, a, mapping]\n")
        consumer.reload()
        wait_until(lambda: "config reload rejected" in caplog.text, 10, "the bad config to be refused")
        assert _url(consumer) == moved, "the previous config was not kept"
    finally:
        consumer.stop()
        watcher.join(5)
        consumer.executor.shutdown()
    assert not watcher.is_alive()
