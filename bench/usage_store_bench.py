"""How fast the usage store takes events and answers the console: `python -m bench.usage_store_bench [--url URL]`.

Records N synthetic events (3 tenants, 4 models, 2 hours of start times) in batches as the recorder
does, then again (every one a repeat), then times the console's queries. SQLite in a temporary
directory unless --url names another database (its `usage_requests` table is emptied first).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from dynaseal.pb import UsageEvent
from dynaseal.usage_store.queries import UsageFilter, usage_series, usage_totals
from dynaseal.usage_store.recording import record
from dynaseal.usage_store.schema import make_engine, metadata

T0 = 1_780_000_000


def events(count: int) -> list[UsageEvent]:
    """`count` priced events spread over tenants, models and two hours."""
    made = []
    for n in range(count):
        at = T0 + (n * 7200) // count
        made.append(UsageEvent(request_id=str(uuid.uuid4()), tenant=f"tenant-{n % 3}", jti=f"key-{n % 200}",
                               model=f"model-{n % 4}", status=200, prompt_tokens=100, completion_tokens=20 + n % 50,
                               total_tokens=120 + n % 50, usage_source="upstream", cost="0.0000421", currency="USD",
                               started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))))
    return made


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print one line per step."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="SQLAlchemy URL (default: SQLite in a temporary directory)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="records per poll, as the recorder commits them")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        engine = make_engine(args.url or f"sqlite:///{Path(directory) / 'usage.db'}")
        metadata.drop_all(engine)
        metadata.create_all(engine)
        batch = events(args.events)
        for label in ("new", "repeat"):
            started = time.perf_counter()
            stored = sum(record(engine, batch[i:i + args.batch]) for i in range(0, len(batch), args.batch))
            took = time.perf_counter() - started
            print(f"{label}: {len(batch)} events, {stored} stored, {took:.2f} s, {len(batch) / took:,.0f} events/s")
        where = UsageFilter(T0 - 60, T0 + 7200)
        for bucket, groups in (("minute", ("tenant", "model")), ("hour", ("key",)), ("day", ("tenant",))):
            started = time.perf_counter()
            rows = usage_series(engine, where, bucket, groups)
            print(f"query per {bucket} by {','.join(groups)}: {len(rows)} rows, "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms")
        started = time.perf_counter()
        usage_totals(engine, where)
        print(f"totals per tenant: {(time.perf_counter() - started) * 1000:.0f} ms")
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
