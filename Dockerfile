# The Titra node image. Built by docker/build.sh, which first builds the wheels on the host
# (docker/wheels/), so nothing here needs the network: the image has no registry to reach.
# BASE_IMAGE is python:3.11-slim when it can be pulled, else titra-base:bookworm, which
# docker/build-base-image.sh makes offline from Debian packages; both give a Python 3.11 `python3`.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The chaos suite cuts links with iptables, delays them with tc and finds processes with ps/pkill.
# titra-base:bookworm has them already; python:3.11-slim does not, and only then is apt-get
# (and so the network) needed.
RUN if command -v iptables >/dev/null && command -v tc >/dev/null && command -v ip >/dev/null \
        && command -v ps >/dev/null && command -v pkill >/dev/null; then \
        echo "iptables, iproute2 and procps are present"; \
    else \
        apt-get update && apt-get install -y --no-install-recommends iptables iproute2 procps \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Everything that rarely changes comes before titra's own wheel: on this daemon (fuse-overlayfs)
# every layer after a changed one costs seconds to commit, even ENV or EXPOSE.
COPY docker/entrypoint.sh /usr/local/bin/titra-entrypoint
ENV PATH=/opt/titra/bin:$PATH
# 7070: client API (published); 7170: peer endpoint (cluster network only).
EXPOSE 7070 7170
ENTRYPOINT ["titra-entrypoint"]

# The dependencies in layers of their own, so that a code change re-installs only titra's wheel.
RUN python3 -m venv /opt/titra
COPY docker/wheels/deps/ /tmp/wheels/deps/
RUN pip install --no-index /tmp/wheels/deps/*.whl && rm -rf /tmp/wheels/deps
COPY docker/wheels/titra/ /tmp/wheels/titra/
RUN pip install --no-index --no-deps /tmp/wheels/titra/*.whl && pip check && rm -rf /tmp/wheels
