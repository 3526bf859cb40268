#!/usr/bin/env bash
# Builds the node image titra:latest with no network inside the build:
#   1. wheels for titra and its dependencies, on the host, into docker/wheels/ (each set skipped
#      when its inputs, the sources or pyproject.toml, have not changed since the last build);
#   2. a base image: python:3.11-slim if present or pullable, else titra-base:bookworm, made offline
#      by docker/build-base-image.sh;
#   3. docker build (its layer cache makes an unchanged rebuild take seconds).
#   env BASE_IMAGE (skip step 2's choice), TITRA_IMAGE (default titra:latest), PYTHON (a Python 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

image=${TITRA_IMAGE:-titra:latest}
wheels=docker/wheels
started=$SECONDS

# 1. Wheels, into docker/wheels/deps/ and docker/wheels/titra/. Compiled dependencies (aiohttp,
# msgpack, crc32c, ...) must match the image's Python, 3.11 on both bases, so the host's must be 3.11.
is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
python=""
for candidate in ${PYTHON:-} .venv/bin/python python3.11 python3; do
    if is_py311 "$candidate"; then python=$candidate; break; fi
done
if [ -z "$python" ]; then
    echo "build: a Python 3.11 is needed to build wheels matching the image (set PYTHON=...)" >&2
    exit 2
fi
sources=(pyproject.toml node cluster chaos)
[ -f README.md ] && sources+=(README.md)
tree_hash() {
    find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}
staging=""
stage_sources() {
    # Build from a copy, so the build leaves no build/ or *.egg-info in the work tree.
    [ -n "$staging" ] && return
    staging=$(mktemp -d)
    trap 'rm -rf "$staging"' EXIT
    tar -c --exclude=__pycache__ --exclude='*.pyc' "${sources[@]}" | tar -x -C "$staging"
}
# A fixed SOURCE_DATE_EPOCH makes the same sources give the same wheel bytes (docker's cache).
pip_wheel() { SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel -q --disable-pip-version-check "$@"; }

# The dependencies change only with pyproject.toml; titra's own wheel with any source file.
deps_hash=$(tree_hash pyproject.toml)
if [ "$(cat "$wheels/deps/.hash" 2>/dev/null)" = "$deps_hash" ]; then
    echo "build: dependency wheels are up to date ($wheels/deps)"
else
    echo "build: building dependency wheels into $wheels/deps with $python"
    stage_sources
    rm -rf "$wheels/deps"
    pip_wheel --wheel-dir "$wheels/deps" "$staging"
    rm -f "$wheels"/deps/titra-*.whl
    echo "$deps_hash" >"$wheels/deps/.hash"
fi
source_hash=$(tree_hash "${sources[@]}")
if [ "$(cat "$wheels/titra/.hash" 2>/dev/null)" = "$source_hash" ]; then
    echo "build: titra's wheel is up to date ($wheels/titra)"
else
    echo "build: building titra's wheel into $wheels/titra"
    stage_sources
    rm -rf "$wheels/titra"
    pip_wheel --no-deps --wheel-dir "$wheels/titra" "$staging"
    echo "$source_hash" >"$wheels/titra/.hash"
fi

# 2. Base image.
if [ -n "${BASE_IMAGE:-}" ]; then
    base=$BASE_IMAGE
elif docker image inspect python:3.11-slim >/dev/null 2>&1; then
    base=python:3.11-slim
elif docker image inspect titra-base:bookworm >/dev/null 2>&1; then
    base=titra-base:bookworm
elif timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    base=python:3.11-slim
else
    echo "build: python:3.11-slim cannot be pulled; building titra-base:bookworm from Debian packages"
    TITRA_BASE_IMAGE=titra-base:bookworm docker/build-base-image.sh
    base=titra-base:bookworm
fi

# 3. The image.
echo "build: docker build -t $image (base $base)"
build_log=$(mktemp)
if ! docker build --build-arg BASE_IMAGE="$base" -t "$image" . >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    rm -f "$build_log"
    exit 1
fi
rm -f "$build_log"
echo "build: $image ready in $((SECONDS - started)) s"
