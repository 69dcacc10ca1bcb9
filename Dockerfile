# improv-store server image.
#
#   docker build -t improv-store .
#   docker run -d --name improv-store --shm-size=2g --ipc=shareable \
#       -v improv-store-data:/var/lib/improv-store -v improv-store-sock:/run/improv-store \
#       -p 127.0.0.1:50051:50051 improv-store
#
# Any Debian-like image with Python >= 3.10, `python3 -m venv`, groupadd and useradd works as
# BASE_IMAGE. Builds without a registry pass the project's wheels instead of an index:
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels -v "$WHEELHOUSE:/wheels:ro"
# (podman build; scripts/container-test does exactly that).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
LABEL org.opencontainers.image.title="improv-store"
# Unset unless given: pip reads them as PIP_NO_INDEX / PIP_FIND_LINKS during the install below.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY service ./service
COPY client ./client
# A self-contained virtual environment, copied whole into the runtime stage.
RUN python3 -m venv /opt/improv-store \
    && /opt/improv-store/bin/python -m pip install --no-cache-dir /src \
    && /opt/improv-store/bin/improv-store --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="improv-store" \
      org.opencontainers.image.description="Object store for real-time experiments: zero-copy on one machine, gRPC across machines, LMDB underneath." \
      org.opencontainers.image.licenses="MIT"

# A fixed non-root uid/gid: clients in other containers that share the socket and the shared
# memory (both owner-only) run as the same uid, e.g. this image with --user 10001:10001.
RUN groupadd --gid 10001 improv \
    && useradd --uid 10001 --gid improv --no-create-home --home-dir /var/lib/improv-store \
       --shell /usr/sbin/nologin improv \
    && mkdir -p /var/lib/improv-store /run/improv-store \
    && chown improv:improv /var/lib/improv-store /run/improv-store \
    && chmod 0750 /var/lib/improv-store /run/improv-store

COPY --from=build /opt/improv-store /opt/improv-store

# The 0.0.0.0 listener needs credentials: mount a token file and set IMPROV_STORE_TOKEN_FILE
# (and/or IMPROV_STORE_TLS_CERT/_KEY), or set IMPROV_STORE_INSECURE=1 to accept an open port.
ENV PATH=/opt/improv-store/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IMPROV_STORE_LISTEN=0.0.0.0:50051 \
    IMPROV_STORE_SOCKET=/run/improv-store/improv-store.sock \
    IMPROV_STORE_DATA_DIR=/var/lib/improv-store \
    IMPROV_STORE_ADDRESS=unix:///run/improv-store/improv-store.sock

USER 10001:10001
WORKDIR /var/lib/improv-store
# The LMDB environment; and the unix socket's directory, to share with colocated clients.
VOLUME ["/var/lib/improv-store", "/run/improv-store"]
EXPOSE 50051

# The standard grpc.health.v1 service, asked through the project's own CLI (exit 0 = SERVING).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["improv-store", "health", "--address", "unix:///run/improv-store/improv-store.sock"]

# Exec form: the server is PID 1 and gets SIGTERM itself; it installs its own SIGTERM/SIGINT
# handlers (PID 1 ignores only signals left at their default action), stops cleanly, exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["improv-store"]
CMD ["serve"]
