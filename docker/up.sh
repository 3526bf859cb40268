#!/usr/bin/env bash
# Starts a local Titra cluster in Docker and waits until every node is ready.
#   docker/up.sh [--nodes 3|5] [--no-build]
# Builds the image (docker/build.sh), writes .env (a random cluster secret and the compose project
# name) on first use, runs `docker-compose up -d`, then polls each node's healthcheck
# (GET /health/ready) until all are healthy; on timeout prints the failing nodes' logs, exits 1.
#   env TITRA_UP_TIMEOUT_S (default 120), TITRA_PORT_N1..N5 (client ports, default 7070..7074),
#   COMPOSE_PROJECT_NAME (default titra, from .env)
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=3
build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) nodes=${2-}; shift 2 || true ;;
        --nodes=*) nodes=${1#--nodes=}; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "up: unknown argument $1 (usage: docker/up.sh [--nodes 3|5] [--no-build])" >&2; exit 2 ;;
    esac
done
case "$nodes" in
    3) compose=(docker-compose -f docker-compose.yml) ;;
    5) compose=(docker-compose -f docker-compose.yml -f docker-compose.5.yml) ;;
    *) echo "up: --nodes must be 3 or 5, not '$nodes'" >&2; exit 2 ;;
esac
timeout_s=${TITRA_UP_TIMEOUT_S:-120}
started=$SECONDS

[ "$build" = 0 ] || docker/build.sh

# .env is read by docker-compose itself, so plain docker-compose commands in this folder find the
# same secret and project (it is gitignored). Lines already there are kept.
touch .env
if ! grep -q '^TITRA_CLUSTER_SECRET=' .env; then
    echo "TITRA_CLUSTER_SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" >>.env
fi
if ! grep -q '^COMPOSE_PROJECT_NAME=' .env; then
    echo "COMPOSE_PROJECT_NAME=titra" >>.env
fi

services=()
for i in $(seq 1 "$nodes"); do services+=("n$i"); done
echo "up: starting ${services[*]}"
"${compose[@]}" up -d --remove-orphans

health() {  # prints the service's container health: starting, healthy, unhealthy, or missing
    local id
    id=$("${compose[@]}" ps -q "$1" 2>/dev/null || true)
    if [ -z "$id" ]; then echo missing; return; fi
    docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null \
        || echo missing
}

deadline=$((SECONDS + timeout_s))
while :; do
    waiting=()
    for s in "${services[@]}"; do
        [ "$(health "$s")" = healthy ] || waiting+=("$s")
    done
    [ ${#waiting[@]} -eq 0 ] && break
    if [ $SECONDS -ge $deadline ]; then
        echo "up: after ${timeout_s} s these nodes are still not ready: ${waiting[*]}" >&2
        for s in "${waiting[@]}"; do
            id=$("${compose[@]}" ps -q "$s" 2>/dev/null || true)
            state=$(docker inspect -f '{{.State.Status}}, exit code {{.State.ExitCode}}, {{.RestartCount}} restarts' \
                "$id" 2>/dev/null || echo "no container")
            echo "---- $s: health $(health "$s") ($state); last log lines:" >&2
            "${compose[@]}" logs --no-color --tail 40 "$s" >&2 || true
        done
        exit 1
    fi
    sleep 1  # the pace of the poll, not a wait for something: the deadline bounds it
done

echo "up: ${#services[@]} nodes ready in $((SECONDS - started)) s"
echo
for i in $(seq 1 "$nodes"); do
    var=TITRA_PORT_N$i
    echo "  n$i  http://127.0.0.1:${!var:-$((7069 + i))}"
done
port1=${TITRA_PORT_N1:-7070}
port2=${TITRA_PORT_N2:-7071}
cat <<MSG

Try:
  curl -i -X PUT -H 'Content-Type: text/plain' --data-binary hello 'http://127.0.0.1:$port1/v1/kv/default/greeting?consistency=quorum'
  curl -i 'http://127.0.0.1:$port2/v1/kv/default/greeting?consistency=quorum'
Logs: ${compose[*]} logs -f      Stop: docker/down.sh (-v also deletes the data)
MSG
