# cdc-scorer: the daemon as an ECS (Fargate) task.
# Build:  docker build -t cdc-scorer .
# Config: /etc/cdc-scorer/config.toml (the blog scenario by default; COPY your own over it in a
# derived image) plus CDC_SCORER_… environment overrides — the password always from a secret.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# Everything is installed here and only the finished virtualenv is copied on: no pip caches,
# sources or build tools reach the final image.
RUN python -m venv /opt/cdc-scorer
COPY pyproject.toml README.md ./
COPY cdc_scorer ./cdc_scorer
RUN /opt/cdc-scorer/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/cdc-scorer/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 cdc \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin cdc
COPY --from=build /opt/cdc-scorer /opt/cdc-scorer
COPY examples/aurora-ml-blog.toml /etc/cdc-scorer/config.toml
# The RDS CA bundle: [source.tls] verify-identity against it (deploy/ecs-service.yaml sets it).
ADD --chmod=444 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /etc/cdc-scorer/rds-global-bundle.pem
ENV PATH=/opt/cdc-scorer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 9400
# Liveness only: /healthz answers while the event loop runs. A standby is healthy but not
# ready (/readyz), and must not be killed for it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
# Exec form: the daemon is PID 1 and receives ECS's SIGTERM itself (then drains and exits 0).
ENTRYPOINT ["cdc-scorer"]
CMD ["run", "--config", "/etc/cdc-scorer/config.toml", "--log-format", "json"]
