"""`python -m bench.pipeline_bench --before REV`: the usage pipeline's throughput, REV against the working tree.

Two rigs side by side, each with its own Redis, broker and receiver: one runs REV's shipper and consumer
(`git archive` of REV), the other this tree's. Each round writes the same number of event lines into one
rig's access log at once and times the drain to the last signed callback, then does the same on the other
rig; the sides alternate for `--rounds`, so the machine's drift hits both alike, and each round's pair is
compared within itself. One consumer process per rig (the `--consumers` option is not used here).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.ab import export
from bench.pipeline_bench import REPO, PipelineRig, run_throughput


@dataclass
class Side:
    """One tree's rig and what each round measured on it."""

    label: str
    rig: PipelineRig
    rates: list[float] = field(default_factory=list)
    consumer_us: list[float] = field(default_factory=list)
    shipper_us: list[float] = field(default_factory=list)

    def round(self, events: int, rng: random.Random, jtis: list[str]) -> None:
        """Drain `events` lines once; record events/s and the consumer's and shipper's CPU µs per event."""
        before = self.rig.cpu()
        result = run_throughput(self.rig, events, rng, jtis)
        after = self.rig.cpu()
        if result["delivered"] != events:
            raise RuntimeError(f"{self.label}: {result['delivered']} of {events} callbacks arrived")
        self.rates.append(result["events_per_s"])
        self.consumer_us.append((after["consumer"] - before["consumer"]) / events * 1e6)
        self.shipper_us.append((after["shipper"] - before["shipper"]) / events * 1e6)


def table(before: Side, after: Side) -> list[str]:
    """Every round's figures, the ratio within each round, and the median ratio."""
    lines = ["| round | events/s before | after | after / before | consumer CPU µs/event before | after | "
             "after / before | shipper CPU µs/event before | after |", "|---|" + "---:|" * 8]
    for n in range(len(before.rates)):
        rb, ra, cb, ca = before.rates[n], after.rates[n], before.consumer_us[n], after.consumer_us[n]
        lines.append(f"| {n + 1} | {rb:,.0f} | {ra:,.0f} | {ra / rb:.2f} | {cb:.0f} | {ca:.0f} | {ca / cb:.2f} | "
                     f"{before.shipper_us[n]:.0f} | {after.shipper_us[n]:.0f} |")

    def median_ratio(b: list[float], a: list[float]) -> float:
        return statistics.median(y / x for x, y in zip(b, a, strict=True))

    return [*lines, "", f"Median ratio after / before: events/s {median_ratio(before.rates, after.rates):.2f}, "
            f"consumer CPU per event {median_ratio(before.consumer_us, after.consumer_us):.2f}, "
            f"shipper CPU per event {median_ratio(before.shipper_us, after.shipper_us):.2f}."]


def run(args: argparse.Namespace) -> int:
    """Start both rigs, warm them, alternate the throughput rounds; print the table."""
    work = Path(tempfile.mkdtemp(prefix="dynaseal-pipeline-ab-"))
    tree = export(args.before, work / "before-tree")
    backlog = args.tenant_backlog or max(5000, 2 * args.events)
    for name in ("before", "after"):
        (work / name).mkdir()
    sides = [Side(f"before ({args.before})", PipelineRig(work / "before", backlog, 1, tree)),
             Side(f"after (working tree, redis-py: ?{args.after_redis_query})" if args.after_redis_query
                  else "after (working tree)", PipelineRig(work / "after", backlog, 1, REPO, args.after_redis_query))]
    rng, jtis = random.Random(7), [f"bench-key-{i}" for i in range(200)]
    try:
        for side in sides:
            side.rig.start()
            run_throughput(side.rig, 200, rng, jtis)  # group joined, connections open, code paths warm
        for n in range(args.rounds):
            for side in sides if n % 2 == 0 else sides[::-1]:  # each side goes first in half the rounds
                side.round(args.events, rng, jtis)
                print(f"round {n + 1} {side.label}: {side.rates[-1]:,.0f} events/s", flush=True)
    finally:
        for side in sides:
            side.rig.stop()
    print(f"\n## Usage pipeline before/after, one consumer each, {os.cpu_count()} cores\n")
    query = f" --after-redis-query {args.after_redis_query}" if args.after_redis_query else ""
    print(f"Command: `python -m bench.pipeline_bench --before {args.before} --rounds {args.rounds} "
          f"--events {args.events}{query}`\n")
    print("\n".join(table(*sides)))
    return 0
