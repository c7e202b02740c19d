#!/bin/sh
# Bring up a Docker engine on a Debian host where none answers. Idempotent: an engine that
# already answers is left alone; Debian's docker.io is installed only when dockerd is missing.
#
#   sudo deploy/local/engine.sh          # then: docker info
#
# The flags suit a host (or a container) without kernel NAT or overlay support: the vfs storage
# driver (slow, needs no overlayfs), no iptables rules and no default bridge. Compose's own
# user-defined networks still work (containers reach each other by service name) and published
# ports go through docker-proxy; containers have no route out of the host, so images are built
# with `--network host` (deploy/local/build-images.sh). DOCKERD_FLAGS replaces the flags.
set -eu

DOCKERD_FLAGS="${DOCKERD_FLAGS:---storage-driver=vfs --iptables=false --ip6tables=false --bridge=none}"
LOG="${DOCKERD_LOG:-/var/log/dynaseal-dockerd.log}"
WAIT_S="${DOCKERD_WAIT_S:-60}"

answers() { docker info >/dev/null 2>&1; }

if answers; then
    echo "engine.sh: a Docker engine already answers"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "engine.sh: no engine answers and starting one needs root" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "engine.sh: installing Debian's docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! command -v docker >/dev/null 2>&1; then
    echo "engine.sh: no docker client on PATH" >&2
    exit 1
fi
# A dockerd that is starting (pid file present, process alive) is waited for, not started twice.
if ! { [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }; then
    echo "engine.sh: starting dockerd $DOCKERD_FLAGS (log: $LOG)"
    # shellcheck disable=SC2086  # the flags are words on purpose
    nohup dockerd $DOCKERD_FLAGS >>"$LOG" 2>&1 &
fi
i=0
while [ "$i" -lt "$WAIT_S" ]; do
    if answers; then
        echo "engine.sh: the engine answers"
        exit 0
    fi
    i=$((i + 1))
    sleep 1
done
echo "engine.sh: dockerd did not answer within ${WAIT_S}s; see $LOG" >&2
exit 1
