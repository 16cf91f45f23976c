# instructure-auth-proxy as a container, e.g. a sidecar beside an application.
#   podman/docker build -t instructure-auth-proxy .
#   docker run -e DAP_CLIENT_ID -e DAP_CLIENT_SECRET -p 127.0.0.1:8080:8080 instructure-auth-proxy
# The entrypoint is the proxy: to run anything else, give another one, e.g.
#   docker run --rm --entrypoint python instructure-auth-proxy -c 'import proxy'
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies in their own layer: it is rebuilt only when pyproject.toml or constraints.txt
# changes. A stub package (and an empty README, which pyproject.toml names) lets pip resolve
# them from pyproject.toml alone, then goes away. constraints.txt (scripts/lock) pins every
# one of them to what CI tested.
COPY pyproject.toml constraints.txt ./
RUN mkdir proxy && echo '__version__ = "0"' > proxy/__init__.py && touch README.md \
    && pip install -c constraints.txt '.[fast]' \
    && pip uninstall -y instructure-auth-proxy \
    && rm -rf proxy README.md

COPY README.md ./
COPY proxy ./proxy
RUN pip install -c constraints.txt --no-deps . && rm -rf /app/build

# Inside the container the proxy must listen on all interfaces to be reachable at all, so
# the image opts in to a non-loopback address: the container's network namespace, not the
# address, is what keeps it private. Publish the port on the host's loopback only
# (-p 127.0.0.1:8080:8080), keep it on a private network, or require access keys
# (DAP_PROXY_ACCESS_KEYS_FILE). See "Security" in the README.
ENV DAP_PROXY_LISTEN=0.0.0.0:8080 \
    DAP_PROXY_ALLOW_NON_LOOPBACK=true

# uid and gid 10001: fixed numbers, so that runAsUser/runAsGroup/fsGroup in Kubernetes and
# the owner of a mounted secret file can be set without looking inside the image.
RUN groupadd --system --gid 10001 authproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin authproxy
USER 10001:10001

EXPOSE 8080
STOPSIGNAL SIGTERM
# Liveness: the process answers. It probes the port of DAP_PROXY_LISTEN (which, being
# environment, wins over a mounted config file's listen), so moving the port keeps it true.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('DAP_PROXY_LISTEN', '').rpartition(':')[2] or '8080'; urllib.request.urlopen(f'http://127.0.0.1:{port}/-/healthy', timeout=2)"]

# Credentials: DAP_CLIENT_ID with DAP_CLIENT_SECRET, or DAP_CLIENT_SECRET_FILE pointing at a
# mounted secret (e.g. /run/secrets/dap_client_secret). A config file: mount it and set
# DAP_PROXY_CONFIG=/path/to/config.yaml.
ENTRYPOINT ["instructure-auth-proxy"]
CMD ["serve"]
