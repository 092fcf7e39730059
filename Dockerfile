# rinna-bot on an NVIDIA GPU. Build: docker build -t rinna-bot .   Run: docker compose up -d
# (see docs/operations.md). torch 2.13.0's Linux wheels on PyPI are built for CUDA 13.0 (they
# depend on cuda-toolkit 13.0.3 and bring its libraries with them), so the base is CUDA 13.0;
# the host needs an NVIDIA driver for CUDA 13 (580 or newer) and the NVIDIA Container Toolkit.
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    DATABASE_PATH=/app/data/rinna-bot.sqlite3 \
    METRICS_HOST=0.0.0.0

# Ubuntu's own Python 3.12; apt versions follow the base image's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.12 -m venv /opt/venv \
    && useradd --create-home --uid 10001 --user-group rinna \
    && mkdir -p /app/data /cache/huggingface \
    && chown rinna:rinna /app/data /cache/huggingface

WORKDIR /app

# Every dependency, transitive ones included, pinned with hashes (requirements.lock, for
# Linux x86_64 and Python 3.12; regenerate it with `make lock` after changing pyproject.toml).
COPY requirements.lock ./
RUN pip install --no-deps --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY bot ./bot
COPY adapters ./adapters
COPY storage ./storage
RUN pip install --no-deps --no-build-isolation . && rm -rf build

USER 10001:10001
VOLUME ["/app/data", "/cache/huggingface"]
# 3000: Slack HTTP mode (SLACK_PORT); 9100: METRICS_PORT as compose.yaml sets it.
EXPOSE 3000 9100

# /healthz when METRICS_PORT is set; with metrics off the check passes (nothing to ask).
# The start period covers the first start's model load (the download is `rinna-bot download`).
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["python", "-m", "bot.service.healthcheck"]

# SIGTERM (docker stop) lets answers in flight finish; give it more than SHUTDOWN_GRACE_S:
# docker stop --time 30 / compose's stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["rinna-bot"]
CMD ["run"]
