# User code image for the etl-sync code location (module `etl_defs`).
# Used by the Helm chart both for the gRPC code server and for the run pods (see helm-values.yaml).
#
#   docker build -t ghcr.io/example-shop/etl-sync:1.0.0 .
#   docker run --rm -p 3030:3030 --env-file .env ghcr.io/example-shop/etl-sync:1.0.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

# Fixed numeric uid/gid so Kubernetes can enforce runAsNonRoot (helm-values.yaml uses 10001).
RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid 10001 --home-dir /opt/dagster --no-create-home dagster \
    && mkdir -p /opt/dagster/app "${DAGSTER_HOME}" \
    && chown -R 10001:10001 /opt/dagster

WORKDIR /opt/dagster/app

# Only what the package build needs: the project file (README.md too when present, as
# pyproject.toml names it as the readme) and the two packages. The embedded local stack,
# tests and benchmarks stay out of the image.
COPY pyproject.toml README.md* ./
COPY etl_defs/ etl_defs/
COPY resources/ resources/
# The k8s extra: with SYNC_EXECUTOR=k8s the steps of a split sync run as pods (dagster-k8s).
RUN pip install --no-cache-dir ".[k8s]" \
    && rm -rf build ./*.egg-info

USER 10001:10001

EXPOSE 3030

# The chart overrides this with `dagster api grpc ... -m etl_defs` (dagsterApiGrpcArgs); this
# default makes `docker run` serve the same code location. No ENTRYPOINT, so the chart's args
# replace the whole command.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "3030", "-m", "etl_defs"]
