#!/bin/sh
# Stand-in: --create [--if-not-exists] --topic T --partitions N --replication-factor R, and --list.
exec /opt/kafka/venv/bin/python /opt/kafka/standin.py topics "$@"
