"""The usage recorder without a broker: what it skips, and that `dynaseal up` starts it with the pipeline."""

from __future__ import annotations

from pathlib import Path

from kafka.consumer.fetcher import ConsumerRecord

from dynaseal.config import DynasealConfig
from dynaseal.pb import UsageEvent
from dynaseal_launcher.stack import LocalStack
from usage_recorder import metrics
from usage_recorder.recorder import decode


def _record(value: bytes | None) -> ConsumerRecord:
    return ConsumerRecord(topic="dynaseal.usage.v1", partition=0, leader_epoch=-1, offset=1, timestamp=0,
                          timestamp_type=0, key=b"k", value=value, headers=[], checksum=None, serialized_key_size=1,
                          serialized_value_size=len(value or b""), serialized_header_size=-1)


def test_undecodable_records_are_counted_and_skipped() -> None:
    before = metrics.RECORDS.labels("undecodable")._value.get()
    good = UsageEvent(request_id="r", tenant="t", jti="k").SerializeToString()
    assert [e.request_id for e in decode([_record(good), _record(b"\xff\xff\xff"), _record(None),
                                                  _record(good)])] == ["r", "r"]
    assert metrics.RECORDS.labels("undecodable")._value.get() == before + 2


def test_the_stack_starts_the_recorder_after_the_shipper(cfg: DynasealConfig, config_path: Path) -> None:
    names = [spec.name for spec in LocalStack(cfg, config_path, pipeline=True).specs(Path("envoy.yaml"))]
    assert names.index("usage-recorder") > names.index("shipper")
    assert "usage-recorder" not in [spec.name for spec in
                                    LocalStack(cfg, config_path, pipeline=False).specs(Path("envoy.yaml"))]
