# The gitops-canary controller. Build context is the repository root:
#   docker build -t gitops-canary .
# Offline, from a local base and the cached render tools (hack/images/build.sh does this):
#   podman build --build-arg BASE=<image> --build-context tools=<kustomize+helm folder> .
#
# BASE is any Debian-like image whose `python` and `pip` are Python 3.11 (the public default,
# or the debootstrap image of hack/images/base.sh where no registry is reachable).
ARG BASE=python:3.11-slim
ARG GO_IMAGE=golang:1.26-bookworm

# The pinned renderers of app folders, kustomize and helm, built from their Go modules by the
# same script and pins as on a workstation (hack/render-tools: go.mod pins the release, go.sum
# every module; -mod=readonly). The stage leaves /kustomize, /helm and /VERSIONS at its root,
# the layout of the script's output folder, so that a build can replace this whole stage with
# that folder: `--build-context tools=$(bash hack/render-tools/build.sh)` (a build context
# named like a stage takes its place, in BuildKit and in buildah/podman). That is what the
# offline build here does: no Go image can be pulled, the binaries are already built and
# cached by hack/setup.sh, and rebuilding them in the image would cost minutes for the same
# bytes.
FROM ${GO_IMAGE} AS tools
WORKDIR /src
COPY hack/lib/ hack/lib/
COPY hack/render-tools/ hack/render-tools/
RUN built=$(GITOPS_CANARY_CACHE=/tmp/cache bash hack/render-tools/build.sh) \
    && cp "$built/kustomize" "$built/helm" "$built/VERSIONS" / \
    && rm -rf /tmp/cache /root/go /root/.cache

# The runtime dependencies, read from pyproject.toml: the layer that installs them is keyed by
# this list alone, so an edit elsewhere in pyproject.toml (tools, test extras) keeps it cached.
FROM ${BASE} AS requirements
COPY pyproject.toml /
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("/pyproject.toml", "rb"))["project"]["dependencies"]))' > /requirements.txt

FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# GitPython drives the git command line, so the image needs git itself; ssh:// remotes need the
# ssh client, and https:// remotes (and Prometheus, forges) the CA certificates.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# kustomize and helm render Kustomize and Helm app folders; the controller finds them on PATH.
COPY --from=tools /kustomize /helm /usr/local/bin/
COPY --from=tools /VERSIONS /usr/local/share/gitops-canary/render-tools

WORKDIR /src
# The dependencies first, in a layer of their own: a change to the controller's code rebuilds
# only the small layers below.
COPY --from=requirements /requirements.txt ./
RUN pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY controller/ controller/
RUN pip install --no-deps . && rm -rf /src

# A numeric user, so Kubernetes can enforce runAsNonRoot without a runAsUser.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin gitops-canary
USER 10001
WORKDIR /home/gitops-canary

ENTRYPOINT ["gitops-canary"]
CMD ["run"]
