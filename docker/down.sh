#!/usr/bin/env bash
# Stops the local Titra cluster that docker/up.sh started (3 or 5 nodes).
#   docker/down.sh [-v]     -v: also delete the nodes' data volumes
set -euo pipefail
cd "$(dirname "$0")/.."

args=(down --remove-orphans)
case "${1-}" in
    "") ;;
    -v | --volumes) args+=(--volumes) ;;
    *) echo "down: unknown argument $1 (usage: docker/down.sh [-v])" >&2; exit 2 ;;
esac
# Compose interpolates the whole file even to stop it; the secret is not needed for that.
if ! grep -q '^TITRA_CLUSTER_SECRET=' .env 2>/dev/null; then
    export TITRA_CLUSTER_SECRET=${TITRA_CLUSTER_SECRET:-not-needed-to-stop-a-cluster}
fi
if ! grep -q '^COMPOSE_PROJECT_NAME=' .env 2>/dev/null; then
    export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-titra}
fi
# Both files, so that n4 and n5 of a five-node cluster go too.
docker-compose -f docker-compose.yml -f docker-compose.5.yml "${args[@]}"
