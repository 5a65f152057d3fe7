# The gitops-canary controller. Build context is the repository root:
#   docker build -t gitops-canary .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# GitPython drives the git command line, so the image needs git itself.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller/ controller/
RUN pip install . && rm -rf /src

# A numeric user, so Kubernetes can enforce runAsNonRoot without a runAsUser.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin gitops-canary
USER 10001
WORKDIR /home/gitops-canary

ENTRYPOINT ["gitops-canary"]
CMD ["run"]
