#!/bin/sh
# Stand-in: exits 0 when the broker named by --bootstrap-server answers an ApiVersions request.
exec /opt/kafka/venv/bin/python /opt/kafka/standin.py api-versions "$@"
