"""`dynaseal dlq replay`: deliver dead-lettered callbacks again, to the tenant's callback as configured now.

Each entry is signed and sent exactly as the consumer sends it (same body, `webhook-id` = the
request id, so a receiver that stores by id keeps it once). An entry that fails again goes back
on the DLQ with its new reason (`dlq_replays` counts the tries, `dlq_source` keeps its origin);
entries of other tenants (`--tenant`) and undecodable ones go back unchanged. How far a replay got
is committed to the `dynaseal-dlq-replay` group, so the next run starts after it. Settlement is
not repeated: the consumer settled each event before it dead-lettered it. Run one replay at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType

from google.protobuf.message import DecodeError
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from callback_consumer.delivery import Deliverer, Job, Outcome, RetryPolicy
from callback_consumer.dlq import DeadLetters, dlq_headers
from callback_consumer.dlq_reader import REPLAY_GROUP_ID, DlqReader
from callback_consumer.money import THRESHOLD_DLQ_TYPE
from dynaseal.config import ConfigError, DynasealConfig, load_config
from dynaseal.logs import setup_logging
from dynaseal.pb import UsageEvent
from dynaseal.runtime.views import Runtime
from dynaseal.usage import kafka_io

BATCH = 64


@dataclass
class Tally:
    """What a replay did so far."""

    total: int
    read: int = 0
    delivered: int = 0
    failed: int = 0
    kept: int = 0

    def line(self, dry_run: bool) -> str:
        """The progress line."""
        if dry_run:
            return f"dlq replay (dry run): {self.read}/{self.total} read, {self.delivered} would be replayed, " \
                   f"{self.kept} would stay"
        return f"dlq replay: {self.read}/{self.total} read, {self.delivered} delivered, " \
               f"{self.failed} failed again (back on the DLQ), {self.kept} left as they were"


def _headers(record: ConsumerRecord) -> dict[str, str]:
    return {name: (value or b"").decode(errors="replace") for name, value in record.headers}


def _event(record: ConsumerRecord) -> UsageEvent | None:
    try:
        return UsageEvent.FromString(record.value)
    except DecodeError:
        return None


class Replay:
    """One pass: select entries, deliver them in batches, put failures back, commit after each batch."""

    def __init__(self, args: argparse.Namespace, cfg: DynasealConfig) -> None:
        runtime = Runtime.from_config(cfg)
        bootstrap = args.bootstrap or runtime.kafka.value
        self.registry = runtime.consumer()
        self.args = args
        self.stopping = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.abandon = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dlq")
        self.dead_letters = DeadLetters(bootstrap, "dynaseal-dlq-replay", self.stopping)
        self.deliverer = Deliverer(lambda: self.registry, None, self.dead_letters, self.executor,
                                   RetryPolicy(args.retry_base_s, args.retry_cap_s), args.per_tenant, self.abandon,
                                   max_attempts=args.attempts)
        self.reader = DlqReader(bootstrap, args.group_id, commit=not args.dry_run)
        self.tally = Tally(self.reader.total)

    def stop(self) -> None:
        """Stop after what is in flight (safe from a signal handler)."""
        self.stopping.set()
        with contextlib.suppress(RuntimeError):  # the loop already closed: nothing left to stop
            self.loop.call_soon_threadsafe(self.abandon.set)

    def _wanted(self, event: UsageEvent | None) -> bool:
        return event is not None and (self.args.tenant is None or event.tenant == self.args.tenant)

    async def _put_back(self, record: ConsumerRecord, headers: dict[str, str]) -> bool:
        return bool(await self.loop.run_in_executor(self.executor, self.dead_letters.publish,
                                                    record.key, record.value, headers))

    async def _one(self, record: ConsumerRecord) -> Outcome | None:
        """None: left as it was (put back unchanged)."""
        event, headers = _event(record), _headers(record)
        if event is None or not self._wanted(event):
            return None if await self._put_back(record, headers) else Outcome.ABANDONED
        tp = TopicPartition(record.topic, record.partition)
        job = Job(tp, record.offset, record.key, record.value, headers)
        if headers.get("dlq_type") == THRESHOLD_DLQ_TYPE:  # a budget threshold callback (money)
            threshold = await self.deliverer.thresholds.replay(job, event, headers)
            if threshold is not None:
                return threshold
            return None if await self._put_back(record, headers) else Outcome.ABANDONED
        outcome = await self.deliverer.deliver(job, event)
        if outcome is Outcome.NO_CALLBACK:  # the tenant has no callback any more: keep it for later
            again = dlq_headers("no_callback", None, 0, f"{record.topic}/{record.partition}/{record.offset}", headers)
            return Outcome.DLQ if await self._put_back(record, again) else Outcome.ABANDONED
        return outcome

    async def _batch(self, records: list[ConsumerRecord]) -> list[Outcome | None]:
        return list(await asyncio.gather(*(self._one(r) for r in records)))

    def _count(self, outcome: Outcome | None) -> None:
        if outcome is Outcome.DELIVERED:
            self.tally.delivered += 1
        elif outcome is Outcome.DLQ:
            self.tally.failed += 1
        else:
            self.tally.kept += 1

    def _dry(self, record: ConsumerRecord) -> None:
        event, headers = _event(record), _headers(record)
        if self._wanted(event):
            assert event is not None
            self.tally.delivered += 1
            print(f"  would replay {event.request_id} tenant={event.tenant} reason={headers.get('dlq_reason', '')} "
                  f"attempts={headers.get('dlq_attempts', '')}", flush=True)
        else:
            self.tally.kept += 1

    def run(self) -> bool:
        """Replay until the pass ends, --max entries were taken, or a stop; False if stopped early."""
        batch: list[ConsumerRecord] = []
        taken = 0
        for record in self.reader.records():
            if self.stopping.is_set():
                return False
            wanted = self._wanted(_event(record))
            if wanted and self.args.max is not None and taken >= self.args.max:
                break  # the first entry past --max is not read: the next run starts with it
            taken += wanted
            if self.args.dry_run:
                self.tally.read += 1
                self._dry(record)
                continue
            batch.append(record)
            if len(batch) >= BATCH and not self._flush(batch):
                return False
        return self._flush(batch)

    def _flush(self, batch: list[ConsumerRecord]) -> bool:
        """Handle a batch; commit past every entry before the first one a stop cut off."""
        if not batch:
            return True
        outcomes = self.loop.run_until_complete(self._batch(batch))
        batch_records, batch[:] = list(batch), []
        commit: dict[TopicPartition, int] = {}
        cut: set[TopicPartition] = set()
        for record, outcome in zip(batch_records, outcomes, strict=True):
            tp = TopicPartition(record.topic, record.partition)
            if outcome is Outcome.ABANDONED or tp in cut:
                cut.add(tp)
                continue
            self.tally.read += 1
            self._count(outcome)
            commit[tp] = record.offset + 1
        self.reader.commit(commit)
        print(self.tally.line(False), flush=True)
        return not cut

    def close(self) -> None:
        """Close connections and the Kafka clients."""
        self.loop.run_until_complete(self.deliverer.aclose())
        self.reader.close()
        self.dead_letters.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.loop.close()


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of `dynaseal dlq`."""
    parser = argparse.ArgumentParser(prog="dynaseal dlq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config file (default: $DYNASEAL_CONFIG or dynaseal.yaml)")
    sub = parser.add_subparsers(dest="action", required=True)
    replay = sub.add_parser("replay", help="deliver the DLQ's entries again")
    replay.add_argument("--config", dest="replay_config", help=argparse.SUPPRESS)
    replay.add_argument("--tenant", help="only this tenant's entries (others stay on the DLQ)")
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed; send and change nothing")
    replay.add_argument("--max", type=int, help="replay at most N entries")
    replay.add_argument("--attempts", type=int, default=3, help="attempts per entry before it goes back (%(default)s)")
    replay.add_argument("--retry-base-s", type=float, default=0.5, help="first retry delay (doubles each time)")
    replay.add_argument("--retry-cap-s", type=float, default=5.0, help="longest retry delay")
    replay.add_argument("--per-tenant", type=int, default=8, help="callbacks in flight per tenant")
    replay.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP, config)")
    replay.add_argument("--group-id", default=REPLAY_GROUP_ID, help="where the replay position is kept")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `dlq replay`; 0 when every selected entry was delivered, 1 when some failed again or it stopped."""
    args = build_parser().parse_args(argv)
    args.config = args.replay_config or args.config
    if args.max is not None and args.max < 1:
        print("dynaseal dlq: --max must be at least 1", file=sys.stderr)
        return 2
    setup_logging("dlq-replay")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    try:
        replay = Replay(args, load_config(args.config))
    except ConfigError as exc:
        print(f"dynaseal dlq: {exc}", file=sys.stderr)
        return 2
    except (KafkaError, TimeoutError) as exc:
        print(f"dynaseal dlq: cannot read the DLQ: {exc}", file=sys.stderr)
        return 1

    def _stop(signum: int, frame: FrameType | None) -> None:
        replay.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        print(f"dlq replay: {replay.tally.total} entries on {kafka_io.DLQ_TOPIC} since the last replay", flush=True)
        finished = replay.run()
    finally:
        replay.close()
    print(replay.tally.line(args.dry_run) + ("" if finished else " (stopped)"), flush=True)
    return 0 if finished and replay.tally.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
