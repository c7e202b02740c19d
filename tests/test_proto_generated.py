"""The committed generated code in dynaseal/pb/ is exactly what protos/generate.py produces."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("protos_generate", REPO / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("protos_generate", module)
    spec.loader.exec_module(module)
    return module


def test_committed_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    generator = _generator()
    written = generator.generate(tmp_path)  # type: ignore[attr-defined]
    assert written, "nothing generated"
    for fresh in written:
        committed = REPO / "dynaseal" / "pb" / fresh.name
        assert committed.exists(), f"{committed} is not committed; run protos/generate.py"
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed} is stale; run protos/generate.py"


def test_usage_event_has_its_contract_name_and_fields() -> None:
    from dynaseal.pb import UsageEvent

    descriptor = UsageEvent.DESCRIPTOR
    assert descriptor.full_name == "dynaseal.v1.UsageEvent"
    assert descriptor.file.name == "dynaseal/v1/usage_event.proto"
    fields = {f.name: f.number for f in descriptor.fields}
    for name in ("request_id", "tenant", "jti", "event_id", "sub", "model", "stream", "status", "response_flags",
                 "prompt_tokens", "completion_tokens", "total_tokens", "reserved", "usage_source", "started_at",
                 "duration_ms", "path", "content"):
        assert name in fields
    assert fields["request_id"] == 1 and fields["content"] == 18
