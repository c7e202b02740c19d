"""The stand-in Kafka image's commands: the broker (tansu) and the two official scripts compose uses."""

from __future__ import annotations

import argparse
import os
import sys


def listener(setting: str, default_host: str) -> str:
    """tansu's tcp:// URL for the PLAINTEXT entry of a KAFKA_*LISTENERS value."""
    for entry in setting.split(","):
        name, _, address = entry.strip().partition("://")
        if name.upper() == "PLAINTEXT":
            host, _, port = address.rpartition(":")
            return f"tcp://{host or default_host}:{port}"
    raise SystemExit(f"no PLAINTEXT listener in {setting!r}")


def broker() -> None:
    """Run tansu on the PLAINTEXT listener, advertising what the official image would advertise."""
    bind = listener(os.environ.get("KAFKA_LISTENERS", "PLAINTEXT://:9092"), "0.0.0.0")
    advertised = listener(os.environ.get("KAFKA_ADVERTISED_LISTENERS", "PLAINTEXT://localhost:9092"), "localhost")
    args = ["tansu", "broker", "--listener-url", bind, "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/", "--cluster-id", os.environ.get("CLUSTER_ID", "tansu_cluster")]
    print("kafka stand-in:", " ".join(args), flush=True)
    os.execvp(args[0], args)


def api_versions(argv: list[str]) -> int:
    """0 when the broker answers (kafka-broker-api-versions.sh --bootstrap-server HOST:PORT)."""
    from kafka import KafkaAdminClient

    parser = argparse.ArgumentParser(prog="kafka-broker-api-versions.sh")
    parser.add_argument("--bootstrap-server", required=True)
    opts = parser.parse_args(argv)
    try:
        KafkaAdminClient(bootstrap_servers=opts.bootstrap_server, request_timeout_ms=5000).close()
    except Exception as exc:  # any failure: not ready
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    return 0


def topics(argv: list[str]) -> int:
    """kafka-topics.sh --create/--list, the options deploy/compose.yaml passes."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    parser = argparse.ArgumentParser(prog="kafka-topics.sh")
    parser.add_argument("--bootstrap-server", required=True)
    parser.add_argument("--create", action="store_true")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--if-not-exists", action="store_true")
    parser.add_argument("--topic")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--replication-factor", type=int, default=1)
    opts = parser.parse_args(argv)
    admin = KafkaAdminClient(bootstrap_servers=opts.bootstrap_server, request_timeout_ms=10000)
    try:
        if opts.list:
            print("\n".join(sorted(admin.list_topics())))
            return 0
        if not opts.create or not opts.topic:
            parser.error("only --list and --create --topic T are supported")
        if opts.if_not_exists and opts.topic in admin.list_topics():
            return 0
        try:
            admin.create_topics([NewTopic(opts.topic, opts.partitions, opts.replication_factor)])
        except TopicAlreadyExistsError:
            if not opts.if_not_exists:
                raise
        print(f"Created topic {opts.topic}.")
        return 0
    finally:
        admin.close()


def main() -> int:
    """Dispatch on the first argument: broker, api-versions or topics."""
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "broker":
        broker()
    if command == "api-versions":
        return api_versions(rest)
    if command == "topics":
        return topics(rest)
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    sys.exit(main())
