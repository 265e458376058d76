# syntax=docker/dockerfile:1
# The geopin operator image: `geopin run` on CPython 3.11, as a non-root numeric user, with nothing
# written at run time (read-only root filesystem). Build from the repository root:
#   docker build -t geopin:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
# Dependencies come only from requirements/runtime.lock, every file checked against its hash.
# Without a Docker daemon: `make image` (buildah), which passes a PYTHON_IMAGE built from Debian's
# python3.11 when the official image cannot be pulled (docs/install.md).
ARG PYTHON_IMAGE=docker.io/library/python:3.11.17-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# PYTHONHASHSEED: a fixed string hash, so that the bytecode of set constants is the same in every
# build (reproducible layers).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONHASHSEED=0
# A venv keeps the runtime files in one directory that the final stage copies whole.
RUN python -m venv /opt/geopin
COPY requirements/runtime.lock /src/requirements/runtime.lock
# Wheels only (no compilers in the image); the lock pins every transitive dependency with hashes.
RUN /opt/geopin/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
        -r /src/requirements/runtime.lock
# The package's build backend (pyproject.toml [build-system]), hash-pinned in requirements/build.lock
# (regenerate: printf 'setuptools>=69\n' | uv pip compile --generate-hashes - -o requirements/build.lock).
COPY requirements/build.lock /src/requirements/build.lock
COPY pyproject.toml README.md /src/
COPY operator /src/operator
# The package itself, without dependencies (they are all above, hash-checked). The build backend
# lives in a throw-away venv, not in the image.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r /src/requirements/build.lock \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/wheels /src \
 && /opt/geopin/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/geopin-*.whl \
 && /opt/geopin/bin/pip uninstall --yes pip setuptools \
 && rm -rf /opt/build /tmp/wheels
# Bytecode now, so that nothing is written at run time. unchecked-hash: the interpreter trusts the
# .pyc without comparing source mtimes (the image is immutable anyway).
RUN python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/geopin/lib \
 && /opt/geopin/bin/geopin version

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/geopin/geopin
LABEL org.opencontainers.image.title="geopin" \
      org.opencontainers.image.description="Kubernetes operator that pins workload images to the nearest healthy Azure Container Registry geo-replica and fails over client-side." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.documentation="${SOURCE}/blob/main/docs/install.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/geopin/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/geopin /opt/geopin
# 65532 is the conventional "nonroot" UID/GID; numeric so that runAsNonRoot can verify it.
USER 65532:65532
# 8080: Prometheus /metrics; 8081: Kopf's liveness /healthz.
EXPOSE 8080 8081
ENTRYPOINT ["geopin"]
CMD ["run"]
