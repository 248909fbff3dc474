# The code-location image: the recon_assets package and its dependencies, nothing else. On
# Kubernetes it runs as the gRPC code server of the official Dagster chart (see
# deploy/helm/values.yaml), with the K8sRunLauncher as every run's Job pod, and as the webserver
# and the daemon (they load the instance's launcher class, recon_assets.k8s_launcher). No secret is baked in: the database URL and the
# exchange keys come from a Kubernetes Secret at run time (docs/deployment.md).
#
#   docker build -t registry.example.com/recon-assets:$(git rev-parse --short HEAD) .
#
# (Not built on the development machines: they have the Docker client but no engine.)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home
WORKDIR /opt/dagster/app

# The locked versions, checked against their hashes (requirements.txt, `make lock`), then the
# package on top of them without resolving anything again.
COPY requirements.txt ./
RUN pip install --require-hashes -r requirements.txt
COPY pyproject.toml README.md ./
COPY recon_assets ./recon_assets
RUN pip install --no-deps . && mkdir -p "$DAGSTER_HOME" \
    && useradd --system --uid 10001 --home-dir /opt/dagster recon \
    && chown -R recon /opt/dagster
USER recon

EXPOSE 3030
# What the chart's user deployment runs (its dagsterApiGrpcArgs give the module and attribute).
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", \
     "-m", "recon_assets.definitions", "-a", "defs"]
