#!/bin/sh
# The official image's contract: ENVOY_UID / ENVOY_GID pick the user Envoy runs as.
set -e
if [ "$(id -u)" = 0 ] && [ -n "${ENVOY_UID:-}" ] && [ "${ENVOY_UID}" != 0 ]; then
    exec setpriv --reuid="${ENVOY_UID}" --regid="${ENVOY_GID:-$ENVOY_UID}" --clear-groups "$@"
fi
exec "$@"
