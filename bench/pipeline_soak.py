"""`python -m bench pipeline-soak`: the whole local stack at the gateway's sustained rate, then the drain.

Starts what `dynaseal up` starts (Envoy, authz, Redis, tansu, issuer with its SQLite callback store,
shipper, consumer(s), mock LLM) from the bundled dev config on free ports and a fresh data dir, mints
one key of the demo tenant, and drives non-streaming completions through Envoy with wrk for
`--seconds` (default 60). Every second it samples the callbacks the issuer stored, the consumer
group's lag (Kafka) and the shipper's lag (lines). It then waits for the drain (every served request
stored, or no progress for 60 s) and prints: served, stored during the load, stored after drain,
drain time, DLQ entries by reason, lag percentiles, stored/s vs served/s.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import wrk
from bench.harness import GATEWAY_PORTS, free_ports
from dynaseal.config import bundled_dev_config, load_config
from dynaseal.keys.mint import mint
from dynaseal.keys.signing_keystore import SigningKeyStore
from dynaseal.runtime.locations import paths_of
from dynaseal.usage import kafka_io
from dynaseal_launcher import status
from dynaseal_launcher.stack import LocalStack

DEMO_TENANT = "671249a93f1cf2f8bf9b2b82"
BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}


@dataclass
class Samples:
    """What the sampler saw, once a second."""

    at: list[float] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)
    consumer_lag: list[int] = field(default_factory=list)
    shipper_lag: list[float] = field(default_factory=list)


def stored_count(db: Path) -> int:
    """Usage callbacks the issuer stored."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM callbacks").fetchone()[0])
    except sqlite3.Error:
        return -1


def sample(samples: Samples, db: Path, bootstrap: str, shipper_url: str, stop: threading.Event) -> None:
    """Sample every second until stopped."""
    while not stop.wait(1.0):
        samples.at.append(time.monotonic())
        samples.stored.append(stored_count(db))
        lag = status.group_lag(bootstrap, kafka_io.DEFAULT_GROUP_ID, kafka_io.USAGE_TOPIC)
        samples.consumer_lag.append(sum(lag.values()) if lag else 0)
        scraped = status.scrape(shipper_url)
        samples.shipper_lag.append(status.total(scraped, "dynaseal_shipper_lag_lines") if scraped else -1)


def pct(values: list[float], q: float) -> float:
    """A percentile (nearest rank) of the samples."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def write_config(work: Path, consumers: int | None, batch: int | None = None) -> Path:
    """The bundled dev config on free ports and a fresh data dir."""
    bundled = bundled_dev_config()
    raw = yaml.safe_load(bundled.read_text())
    raw["gateway"]["data_dir"] = str(work / "data")
    raw["gateway"]["ports"] = dict(zip(GATEWAY_PORTS, free_ports(len(GATEWAY_PORTS)), strict=True))
    demo = next(t for t in raw["tenants"] if t["id"] == DEMO_TENANT)
    demo["limits"]["rpm"] = 1_000_000  # the gateway's pace, not a key's rate limit
    demo["callback"]["url"] = f"http://127.0.0.1:{raw['gateway']['ports']['issuer']}/v1/callback/usage"
    if raw.get("env_file"):
        raw["env_file"] = str((bundled.parent / raw["env_file"]).resolve())
    if consumers is not None:
        raw["gateway"]["consumers"] = consumers
    if batch == 0:
        demo["callback"].pop("batch", None)  # one event per request, whatever the bundled config says
    elif batch is not None:
        demo["callback"]["batch"] = {"max_events": batch, "max_wait_ms": 200}
    path = work / "soak.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print its figures (JSON line, then Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m bench pipeline-soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--drain-max-s", type=float, default=300.0)
    parser.add_argument("--consumers", type=int, help="consumers `dynaseal up` starts (default: the config's)")
    parser.add_argument("--batch", type=int, help="the demo tenant's callback.batch max_events "
                                                   "(0: one event per request; default: the bundled config's)")
    parser.add_argument("--label", default="", help="a note for the results row")
    parser.add_argument("--work", help="keep the run's data and logs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dynaseal-soak-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        config_path = write_config(work, args.consumers, args.batch)
        cfg = load_config(config_path)
        stack = LocalStack(cfg, config_path)
        stack.start(lambda line: None)
        try:
            return run(args, cfg, stack, work)
        finally:
            stack.stop()


def run(args: argparse.Namespace, cfg: object, stack: LocalStack, work: Path) -> int:
    """Drive the running stack and report."""
    from dynaseal.config import DynasealConfig
    assert isinstance(cfg, DynasealConfig)
    paths = paths_of(cfg)
    ports, host = cfg.gateway.ports, cfg.gateway.host
    bootstrap = cfg.local.kafka_bootstrap(host)
    key = mint(SigningKeyStore(paths.issuer_dir).active(), jti=f"soak-{time.time_ns()}", tenant=DEMO_TENANT,
               models=["deepseek-chat"], max_tokens=16, ttl=3600)
    script = wrk.write_script(work, json.dumps(BODY).encode(), key)
    samples, stop = Samples(), threading.Event()
    shipper_url = f"http://{host}:{ports.shipper_metrics}/metrics"
    sampler = threading.Thread(target=sample, args=(samples, paths.issuer_db, bootstrap, shipper_url, stop),
                               daemon=True)
    sampler.start()
    started = time.monotonic()
    result = wrk.run(f"http://{host}:{ports.envoy}/v1/chat/completions", script, args.seconds, args.connections)
    load_end = time.monotonic()
    stored_load = stored_count(paths.issuer_db)
    served = result.requests - result.non_2xx
    last, last_change = stored_load, time.monotonic()
    while time.monotonic() - load_end < args.drain_max_s:
        now_stored = stored_count(paths.issuer_db)
        if now_stored >= served:
            last = now_stored
            break
        if now_stored != last:
            last, last_change = now_stored, time.monotonic()
        elif time.monotonic() - last_change > 60:
            break
        time.sleep(0.5)
    drain_s = time.monotonic() - load_end
    stop.set()
    sampler.join(10)
    dlq: dict[str, int] = dict(status.dlq_reasons(bootstrap) or {})
    during = [lag for at, lag in zip(samples.at, samples.consumer_lag, strict=False) if at <= load_end]
    ship = [lag for at, lag in zip(samples.at, samples.shipper_lag, strict=False) if at <= load_end]
    figures = {
        "label": args.label, "seconds": round(load_end - started, 1), "connections": args.connections,
        "served": served, "served_per_s": round(served / result.seconds, 1), "non_2xx": result.non_2xx,
        "stored_during_load": stored_load, "stored_after_drain": last,
        "stored_per_s_during_load": round(stored_load / result.seconds, 1),
        "drain_s": round(drain_s, 1), "dlq_by_reason": dict(dlq),
        "consumer_lag_p50": pct([float(x) for x in during], .5),
        "consumer_lag_p95": pct([float(x) for x in during], .95),
        "consumer_lag_max": max(during, default=0), "shipper_lag_lines_p50": pct(ship, .5),
        "shipper_lag_lines_p95": pct(ship, .95),
        # Between consecutive samples taken while the load ran (not the drain's); a sample can take over 1 s.
        "stored_per_s_mean_during_load": round(statistics.mean(
            [(b - a) / (t1 - t0) for t0, t1, a, b in zip(samples.at, samples.at[1:], samples.stored,
                                                          samples.stored[1:], strict=False)
             if t1 <= load_end and a >= 0 and t1 > t0] or [0]), 1),
    }
    print("SOAK " + json.dumps(figures), flush=True)
    print(f"| {args.label} | {served} ({figures['served_per_s']}/s) | {stored_load} "
          f"({figures['stored_per_s_during_load']}/s) | {last} | {figures['drain_s']} s | "
          f"{dict(dlq) or 'none'} | {figures['consumer_lag_p50']:.0f} / {figures['consumer_lag_p95']:.0f} / "
          f"{figures['consumer_lag_max']} | {figures['shipper_lag_lines_p50']:.0f} / "
          f"{figures['shipper_lag_lines_p95']:.0f} |", flush=True)
    return 0 if last >= served and not dlq.get("overloaded") else 1
